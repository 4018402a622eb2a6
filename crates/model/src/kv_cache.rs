//! The paged key/value cache.
//!
//! Memory is held in fixed-size blocks (`block_size` positions of every KV head of a group of
//! layers); every sequence has a table of blocks, so sequences of different lengths share the
//! memory, grow one block at a time, and can be truncated (speculative rollback) or dropped
//! without moving data. Full blocks are shared between sequences whose tokens begin the same
//! way (the prefix cache, [`crate::kv_blocks`]), by reference count; a write into a shared
//! block copies it first. Reserving room is all or nothing, and says whether the memory is
//! full now ([`CacheError::PoolExhausted`]) or the request can never fit
//! ([`CacheError::TooLong`]).
//!
//! Each layer keeps what it reads. Layers are grouped by their sliding window; each group has
//! its own block pool and its own table per sequence. A group that sees the whole context
//! (the *primary* group, whose blocks the scheduler counts) holds every position; a
//! sliding-window group gives back each block once every query still to come lies more than
//! its window (plus one block, so that a short rollback stays possible) past it, and its
//! table points such blocks at a *hole*, one zeroed block that is never written, so that the
//! attention kernels may address any position while the window mask keeps them from using
//! one. A window group's pool is sized for the sequences and step the caller names
//! ([`KvConfig::with_windows`]); a model whose every layer slides has only such groups, and
//! keeps them as large as a whole context's (the scheduler counts their blocks).
//!
//! Layout per group: keys `[layer][block][kv_head][slot][head_dim]`, values
//! `[layer][block][kv_head][head_dim][slot]` (transposed, so consecutive positions of one
//! dimension are contiguous, as the attention kernel reads them), or in rows like the keys
//! where flash attention reads them. Keys and values are stored as f16 (llama.cpp's default,
//! the reference numerics), f32 (`--precise`), or, for flash attention, Q8_0 or Q4_0
//! (`--kv-cache-dtype`), each of K and V its own type.
//! This module holds and addresses memory; it computes nothing.

use std::collections::BTreeMap;

use half::f16;

use crate::kv_blocks::{chain_hash, BlockPool, ROOT};

/// Identifies a sequence in the cache.
pub type SeqId = u32;

/// Element type of the cache's keys or values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvType {
    F16,
    F32,
    /// Blocks of 32: an f16 scale and 32 signed bytes (34 bytes).
    Q8_0,
    /// Blocks of 32: an f16 scale and 32 four-bit values (18 bytes).
    Q4_0,
}

impl KvType {
    /// Every type, in the order `info` lists them.
    pub const ALL: [KvType; 4] = [KvType::F32, KvType::F16, KvType::Q8_0, KvType::Q4_0];

    /// Bytes `n` elements take (quantized types: whole blocks of 32).
    pub fn bytes_for(self, n: usize) -> usize {
        match self {
            KvType::F16 => 2 * n,
            KvType::F32 => 4 * n,
            KvType::Q8_0 => torchless_kernels::flash::q8_0_bytes(n),
            KvType::Q4_0 => torchless_kernels::flash::q4_0_bytes(n),
        }
    }

    /// Whether elements are stored in blocks of 32 (rows only, read by flash attention).
    pub fn is_quantized(self) -> bool {
        matches!(self, KvType::Q8_0 | KvType::Q4_0)
    }

    /// The name the CLI takes and prints (`f16`, `q8_0` …).
    pub fn name(self) -> &'static str {
        match self {
            KvType::F16 => "f16",
            KvType::F32 => "f32",
            KvType::Q8_0 => "q8_0",
            KvType::Q4_0 => "q4_0",
        }
    }

    /// The type named `s` (as [`KvType::name`] spells it, any case).
    pub fn parse(s: &str) -> Option<KvType> {
        KvType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
    }
}

/// Storage of one of K or V.
pub enum KvStore {
    F16(Vec<f16>),
    F32(Vec<f32>),
    Q8_0(Vec<u8>),
    Q4_0(Vec<u8>),
}

impl KvStore {
    fn new(ty: KvType, len: usize) -> KvStore {
        // Zeroed allocations are lazily committed: memory becomes resident as it is used.
        match ty {
            // `vec![f16::ZERO; n]` would write every element (only primitive zeros come from
            // the allocator's zeroed pages): zeroed u16s, reinterpreted.
            KvType::F16 => KvStore::F16(bytemuck::allocation::cast_vec(vec![0u16; len])),
            KvType::F32 => KvStore::F32(vec![0.0; len]),
            KvType::Q8_0 => KvStore::Q8_0(vec![0; ty.bytes_for(len)]),
            KvType::Q4_0 => KvStore::Q4_0(vec![0; ty.bytes_for(len)]),
        }
    }

    /// The element type.
    pub fn ty(&self) -> KvType {
        match self {
            KvStore::F16(_) => KvType::F16,
            KvStore::F32(_) => KvType::F32,
            KvStore::Q8_0(_) => KvType::Q8_0,
            KvStore::Q4_0(_) => KvType::Q4_0,
        }
    }

    /// The elements as flash attention reads them.
    pub fn rows(&self) -> torchless_kernels::flash::Rows<'_> {
        use torchless_kernels::flash::Rows;
        match self {
            KvStore::F16(v) => Rows::F16(v),
            KvStore::F32(v) => Rows::F32(v),
            KvStore::Q8_0(v) => Rows::Q8_0(v),
            KvStore::Q4_0(v) => Rows::Q4_0(v),
        }
    }

    /// Writes `src` at `at`, `at + stride`, `at + 2 * stride` …; false where it cannot
    /// (quantized types: a stride other than 1, or not whole blocks inside the store).
    fn write(&mut self, at: usize, stride: usize, src: &[f32]) -> bool {
        use torchless_kernels::GgmlType;
        let encode = |ty: GgmlType, v: &mut Vec<u8>| {
            let (from, len) = (ty.row_bytes(at), ty.row_bytes(src.len()));
            match (from, len, stride) {
                (Some(from), Some(len), 1) => v
                    .get_mut(from..from + len)
                    .is_some_and(|dst| torchless_kernels::flash::encode_row(ty, src, dst)),
                _ => false,
            }
        };
        match self {
            KvStore::F16(v) => {
                for (i, s) in src.iter().enumerate() {
                    v[at + i * stride] = f16::from_f32(*s);
                }
                true
            }
            KvStore::F32(v) => {
                for (i, s) in src.iter().enumerate() {
                    v[at + i * stride] = *s;
                }
                true
            }
            KvStore::Q8_0(v) => encode(GgmlType::Q8_0, v),
            KvStore::Q4_0(v) => encode(GgmlType::Q4_0, v),
        }
    }

    fn zero(&mut self) {
        match self {
            KvStore::F16(v) => v.iter_mut().for_each(|x| *x = f16::ZERO),
            KvStore::F32(v) => v.iter_mut().for_each(|x| *x = 0.0),
            KvStore::Q8_0(v) | KvStore::Q4_0(v) => v.iter_mut().for_each(|x| *x = 0),
        }
    }

    /// Copies elements `src..src + n` to `dst` (quantized types: whole blocks).
    fn copy_within(&mut self, src: usize, n: usize, dst: usize) {
        match self {
            KvStore::F16(v) => v.copy_within(src..src + n, dst),
            KvStore::F32(v) => v.copy_within(src..src + n, dst),
            KvStore::Q8_0(v) => {
                let b = |e: usize| KvType::Q8_0.bytes_for(e);
                v.copy_within(b(src)..b(src + n), b(dst))
            }
            KvStore::Q4_0(v) => {
                let b = |e: usize| KvType::Q4_0.bytes_for(e);
                v.copy_within(b(src)..b(src + n), b(dst))
            }
        }
    }
}

/// Shape of a cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvConfig {
    pub n_layers: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Positions per block.
    pub block_size: usize,
    /// Blocks in the pool of the layers that see the whole context (and the most any group's
    /// pool holds).
    pub n_blocks: usize,
    /// Element types of keys and of values.
    pub k_ty: KvType,
    pub v_ty: KvType,
    /// Values stored as rows (`[slot][head_dim]`, what flash attention reads) instead of
    /// transposed.
    pub v_rows: bool,
    /// Each layer's sliding window: the keys a query sees, its own included (`None`, or no
    /// entry: the whole context).
    pub windows: Vec<Option<usize>>,
    /// Sequences held at once, and the most positions one forward pass adds to one of them:
    /// they bound what a sliding-window group can need, and so size its pool (0: unknown,
    /// then a window group's pool is as large as the primary one).
    pub max_seqs: usize,
    pub max_step: usize,
}

impl KvConfig {
    /// A cache in which every layer sees the whole context.
    pub fn new(
        n_layers: usize,
        n_kv_heads: usize,
        head_dim: usize,
        block_size: usize,
        n_blocks: usize,
        ty: KvType,
    ) -> KvConfig {
        KvConfig {
            n_layers,
            n_kv_heads,
            head_dim,
            block_size,
            n_blocks,
            k_ty: ty,
            v_ty: ty,
            v_rows: false,
            windows: Vec::new(),
            max_seqs: 0,
            max_step: 0,
        }
    }

    /// The same cache with each layer's sliding window, for at most `max_seqs` sequences
    /// growing by at most `max_step` positions a forward pass.
    pub fn with_windows(
        mut self,
        windows: Vec<Option<usize>>,
        max_seqs: usize,
        max_step: usize,
    ) -> KvConfig {
        self.windows = windows;
        self.max_seqs = max_seqs;
        self.max_step = max_step;
        self
    }

    /// The same cache with keys of type `k`, values of type `v`, values in rows or not.
    pub fn with_types(mut self, k: KvType, v: KvType, v_rows: bool) -> KvConfig {
        self.k_ty = k;
        self.v_ty = v;
        self.v_rows = v_rows;
        self
    }

    /// Whether this layout can be stored: quantized keys or values need a head size made of
    /// whole blocks of 32, quantized values need rows.
    pub fn check(&self) -> Result<(), String> {
        for (what, ty) in [("keys", self.k_ty), ("values", self.v_ty)] {
            if ty.is_quantized() && !self.head_dim.is_multiple_of(32) {
                return Err(format!(
                    "{what} in {} need a head size that is a multiple of 32, and this model's is {}",
                    ty.name(),
                    self.head_dim
                ));
            }
        }
        if self.v_ty.is_quantized() && !self.v_rows {
            return Err(format!(
                "values in {} are only read by flash attention",
                self.v_ty.name()
            ));
        }
        Ok(())
    }

    /// The sliding window of `layer`.
    pub fn window(&self, layer: usize) -> Option<usize> {
        self.windows.get(layer).copied().flatten()
    }

    /// The distinct windows, the whole context (`None`) first where a layer sees it, then the
    /// windows from the smallest: the groups' order.
    fn group_windows(&self) -> Vec<Option<usize>> {
        let mut ws: Vec<Option<usize>> = (0..self.n_layers).map(|l| self.window(l)).collect();
        ws.sort();
        ws.dedup();
        ws
    }

    /// Blocks in the pool of the group of layers with `window`: for a window, what
    /// `max_seqs` sequences can hold at once (the window, one step, a block kept for
    /// rollback, partial blocks at both ends and a copy of a shared one), at most `n_blocks`.
    pub fn pool_blocks(&self, window: Option<usize>) -> usize {
        let bs = self.block_size.max(1);
        // Where every layer slides, the scheduler counts this pool's blocks as a whole
        // context's: it stays as large.
        let some_full = (0..self.n_layers).any(|l| self.window(l).is_none());
        match window {
            Some(w) if some_full && self.max_seqs > 0 && self.max_step > 0 => {
                let per_seq = (w + self.max_step + 3 * bs).div_ceil(bs) + 1;
                self.max_seqs.saturating_mul(per_seq).min(self.n_blocks)
            }
            _ => self.n_blocks,
        }
    }

    /// Elements one block of one layer holds (of K, or of V).
    fn block_elems(&self) -> usize {
        self.n_kv_heads * self.block_size * self.head_dim
    }

    /// Bytes the cache occupies once every block is in use (a window group's hole included).
    pub fn bytes(&self) -> usize {
        let per_layer_block = self.block_bytes_of_layer();
        self.group_windows()
            .into_iter()
            .map(|w| {
                let layers = (0..self.n_layers).filter(|&l| self.window(l) == w).count();
                let blocks = self.pool_blocks(w) + usize::from(w.is_some());
                layers * blocks * per_layer_block
            })
            .sum()
    }

    /// Bytes of one block of every layer: what one more block of the primary pool costs at
    /// most, with its share of the window groups.
    pub fn block_bytes(&self) -> usize {
        self.n_layers * self.block_bytes_of_layer()
    }

    /// Bytes of one block of one layer, keys and values.
    fn block_bytes_of_layer(&self) -> usize {
        self.k_ty.bytes_for(self.block_elems()) + self.v_ty.bytes_for(self.block_elems())
    }
}

/// Why positions could not be stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    /// Not enough free blocks now: a scheduler can wait or preempt another sequence.
    #[error("the KV cache has no room now: {need} blocks needed, {free} free")]
    PoolExhausted { need: usize, free: usize },
    /// More positions than the whole pool holds: no waiting helps.
    #[error("{need} positions do not fit in the KV cache's {capacity}; use a larger cache or a shorter prompt")]
    TooLong { need: usize, capacity: usize },
    #[error("position {pos} of sequence {seq} was not reserved in the KV cache")]
    NotReserved { seq: SeqId, pos: usize },
    #[error("position {pos} of sequence {seq} lies in a block other sequences share")]
    Shared { seq: SeqId, pos: usize },
    #[error("sequence {seq} already holds positions; a prefix can only be attached to a new one")]
    NotEmpty { seq: SeqId },
    #[error("the KV cache cannot store this layout: {0}")]
    Layout(String),
    #[error("{what} of {got} values do not fill the {need} of one position's KV heads")]
    Width {
        what: &'static str,
        got: usize,
        need: usize,
    },
}

/// The layers that share one sliding window (or none), with their memory and pool.
struct Group {
    window: Option<usize>,
    /// Blocks of the pool; a window group's hole is block `n_blocks`, past the pool.
    n_blocks: usize,
    layers: usize,
    /// Blocks of one layer in the stores (the hole included).
    per_layer: usize,
    k: KvStore,
    v: KvStore,
    pool: BlockPool,
}

impl Group {
    fn hole(&self) -> u32 {
        self.n_blocks as u32
    }

    /// The first block a sequence of `len` positions keeps: the ones before it lie more than
    /// the window, plus one block, behind every query from `len` on.
    fn keep_from(&self, len: usize, bs: usize) -> usize {
        self.window
            .map_or(0, |w| (len + 1).saturating_sub(w + bs) / bs)
    }

    /// The first block that queries from position `len` on read.
    fn read_from(&self, len: usize, bs: usize) -> usize {
        self.window.map_or(0, |w| (len + 1).saturating_sub(w) / bs)
    }
}

/// One sequence's tables, one per group; entries before `released[g]` are the hole.
#[derive(Default)]
struct SeqBlocks {
    tables: Vec<Vec<u32>>,
    released: Vec<usize>,
    len: usize,
    /// The chain hash through each leading full block whose tokens were committed.
    chain: Vec<u64>,
}

impl SeqBlocks {
    fn new(groups: usize) -> SeqBlocks {
        SeqBlocks {
            tables: vec![Vec::new(); groups],
            released: vec![0; groups],
            ..SeqBlocks::default()
        }
    }
}

/// The cache.
pub struct KvCache {
    cfg: KvConfig,
    groups: Vec<Group>,
    /// (group, index in the group) of every layer.
    layer_at: Vec<(usize, usize)>,
    seqs: BTreeMap<SeqId, SeqBlocks>,
}

impl KvCache {
    pub fn new(cfg: KvConfig) -> KvCache {
        let windows = cfg.group_windows();
        let mut layer_at = Vec::with_capacity(cfg.n_layers);
        let mut counts = vec![0; windows.len()];
        for l in 0..cfg.n_layers {
            let g = windows
                .iter()
                .position(|&w| w == cfg.window(l))
                .unwrap_or(0);
            layer_at.push((g, counts[g]));
            counts[g] += 1;
        }
        let groups = windows
            .iter()
            .zip(counts)
            .map(|(&window, layers)| {
                let n_blocks = cfg.pool_blocks(window);
                let per_layer = n_blocks + usize::from(window.is_some());
                let len = layers * per_layer * cfg.block_elems();
                Group {
                    window,
                    n_blocks,
                    layers,
                    per_layer,
                    k: KvStore::new(cfg.k_ty, len),
                    v: KvStore::new(cfg.v_ty, len),
                    pool: BlockPool::new(n_blocks),
                }
            })
            .collect();
        KvCache {
            cfg,
            groups,
            layer_at,
            seqs: BTreeMap::new(),
        }
    }

    pub fn config(&self) -> &KvConfig {
        &self.cfg
    }

    /// The pool whose blocks a scheduler counts: the whole-context layers', else the
    /// smallest window's.
    fn primary(&self) -> &BlockPool {
        &self.groups[0].pool
    }

    /// Whether full blocks are remembered for later sequences (on by default; turning it
    /// off stops new registrations, what is remembered stays findable until evicted).
    pub fn set_prefix_caching(&mut self, on: bool) {
        for g in &mut self.groups {
            g.pool.prefix_caching = on;
        }
    }

    /// Writes every value once, so that the cache's memory is resident from the start (a
    /// server's footprint then stays where it was after loading).
    pub fn commit_memory(&mut self) {
        for g in &mut self.groups {
            g.k.zero();
            g.v.zero();
        }
    }

    /// Positions one sequence can hold.
    pub fn capacity(&self) -> usize {
        self.cfg.n_blocks * self.cfg.block_size
    }

    /// Blocks of the primary pool that can be handed out now (including free blocks the
    /// prefix cache still remembers).
    pub fn free_blocks(&self) -> usize {
        self.primary().available()
    }

    /// Blocks of the primary pool some sequence holds.
    pub fn used_blocks(&self) -> usize {
        self.primary().used()
    }

    /// Free blocks of the primary pool the prefix cache still remembers.
    pub fn cached_blocks(&self) -> usize {
        self.primary().cached()
    }

    /// Blocks held in the pool of `layer`'s group (the live part of every sequence's window
    /// for a sliding-window layer).
    pub fn used_blocks_of(&self, layer: usize) -> usize {
        let g = self.layer_at.get(layer).map_or(0, |&(g, _)| g);
        self.groups[g].pool.used()
    }

    /// Positions stored for `seq` (0 if unknown).
    pub fn seq_len(&self, seq: SeqId) -> usize {
        self.seqs.get(&seq).map_or(0, |s| s.len)
    }

    /// The block table of `seq` in `layer`'s group (blocks that slid out of a window point
    /// at the hole).
    pub fn blocks(&self, layer: usize, seq: SeqId) -> &[u32] {
        let Some(&(g, _)) = self.layer_at.get(layer) else {
            return &[];
        };
        self.seqs.get(&seq).map_or(&[], |s| &s.tables[g])
    }

    /// Blocks group `g`'s pool must hand out to grow `seq` to `len` positions (a copy of the
    /// shared block the next write lands in included), and blocks it would give back first
    /// (those that slide out of the window and nobody else holds).
    fn group_need(&self, g: usize, seq: SeqId, len: usize) -> (usize, usize) {
        let bs = self.cfg.block_size;
        let group = &self.groups[g];
        let Some(s) = self.seqs.get(&seq) else {
            return (len.div_ceil(bs), 0);
        };
        let table = &s.tables[g];
        let grow = len.div_ceil(bs).saturating_sub(table.len());
        let cow = len > s.len
            && !s.len.is_multiple_of(bs)
            && table
                .get(s.len / bs)
                .is_some_and(|&b| group.pool.refs(b) > 1);
        let keep = group.keep_from(s.len, bs).min(table.len());
        let freed = table[s.released[g].min(keep)..keep]
            .iter()
            .filter(|&&b| group.pool.refs(b) == 1)
            .count();
        (grow + usize::from(cow), freed)
    }

    /// Blocks [`KvCache::reserve`] would take from the primary pool to grow `seq` to `len`
    /// positions.
    pub fn blocks_needed(&self, seq: SeqId, len: usize) -> usize {
        self.group_need(0, seq, len).0
    }

    /// Whether every sequence of `wants` (sequence, positions) can be grown at once: the
    /// first shortfall of any group's pool as an error.
    pub fn check_room<I>(&self, wants: I) -> Result<(), CacheError>
    where
        I: IntoIterator<Item = (SeqId, usize)> + Clone,
    {
        for (_, len) in wants.clone() {
            if len > self.capacity() {
                return Err(CacheError::TooLong {
                    need: len,
                    capacity: self.capacity(),
                });
            }
        }
        for (g, group) in self.groups.iter().enumerate() {
            let (mut need, mut freed) = (0, 0);
            for (seq, len) in wants.clone() {
                let (n, f) = self.group_need(g, seq, len);
                need += n;
                freed += f;
            }
            let free = group.pool.available() + freed;
            if need > free {
                return Err(CacheError::PoolExhausted { need, free });
            }
        }
        Ok(())
    }

    /// Makes room for positions `0..len` of `seq`: all of it or, with an error, nothing
    /// (beyond giving back blocks that slid out of a window). The block the next position
    /// lands in becomes the sequence's own (copied if others share it, forgotten by the prefix
    /// cache if it was remembered).
    pub fn reserve(&mut self, seq: SeqId, len: usize) -> Result<(), CacheError> {
        self.release_slid(seq);
        self.check_room([(seq, len)])?;
        let bs = self.cfg.block_size;
        let n_groups = self.groups.len();
        let mut s = self
            .seqs
            .remove(&seq)
            .unwrap_or_else(|| SeqBlocks::new(n_groups));
        if len > s.len && !s.len.is_multiple_of(bs) {
            let i = s.len / bs;
            for g in 0..n_groups {
                let Some(&b) = s.tables[g].get(i) else {
                    continue;
                };
                if self.groups[g].pool.refs(b) > 1 {
                    if let Some(copy) = self.groups[g].pool.alloc() {
                        self.copy_block(g, b, copy);
                        self.groups[g].pool.release(b);
                        s.tables[g][i] = copy;
                    }
                } else {
                    self.groups[g].pool.unregister(b);
                }
            }
            s.chain.truncate(i);
        }
        for (g, table) in s.tables.iter_mut().enumerate() {
            while table.len() < len.div_ceil(bs) {
                match self.groups[g].pool.alloc() {
                    Some(b) => table.push(b),
                    None => break,
                }
            }
        }
        self.seqs.insert(seq, s);
        Ok(())
    }

    /// Gives back the blocks of `seq` that slid out of every window group's reach.
    fn release_slid(&mut self, seq: SeqId) {
        let bs = self.cfg.block_size;
        let Some(s) = self.seqs.get_mut(&seq) else {
            return;
        };
        for (g, group) in self.groups.iter_mut().enumerate() {
            let keep = group.keep_from(s.len, bs).min(s.tables[g].len());
            let hole = group.hole();
            for i in s.released[g]..keep {
                let b = std::mem::replace(&mut s.tables[g][i], hole);
                group.pool.release(b);
            }
            s.released[g] = s.released[g].max(keep);
        }
    }

    /// Copies every layer's keys and values of block `from` into block `to` in group `g`.
    fn copy_block(&mut self, g: usize, from: u32, to: u32) {
        let n = self.block_stride();
        let group = &mut self.groups[g];
        let per_layer = group.per_layer * n;
        for li in 0..group.layers {
            let at = |b: u32| li * per_layer + b as usize * n;
            let (src, dst) = (at(from), at(to));
            group.k.copy_within(src, n, dst);
            group.v.copy_within(src, n, dst);
        }
    }

    /// Each whole block of `tokens` before its last token (the last is always computed: its
    /// logits are needed), with the chain hash of the blocks before it.
    fn chunks<'t>(&self, tokens: &'t [u32]) -> Vec<(u64, &'t [u32])> {
        let mut parent = ROOT;
        tokens[..tokens.len().saturating_sub(1)]
            .chunks_exact(self.cfg.block_size)
            .map(|c| {
                let at = (parent, c);
                parent = chain_hash(parent, c);
                at
            })
            .collect()
    }

    /// The most whole blocks of `chunks` every group can give a new sequence: a
    /// whole-context group every block up to there, a window group the blocks its window
    /// reads from there on.
    fn prefix_blocks(&self, chunks: &[(u64, &[u32])]) -> usize {
        let bs = self.cfg.block_size;
        let found = |g: &Group, i: usize| g.pool.peek(chunks[i].0, chunks[i].1).is_some();
        let mut n = chunks.len();
        for g in self.groups.iter().filter(|g| g.window.is_none()) {
            n = (0..n).take_while(|&i| found(g, i)).count();
        }
        let holds = |n: usize| {
            self.groups
                .iter()
                .filter(|g| g.window.is_some())
                .all(|g| (g.read_from(n * bs, bs)..n).all(|i| found(g, i)))
        };
        while n > 0 && !holds(n) {
            n -= 1;
        }
        n
    }

    /// Starts the new sequence `seq` with the blocks the prefix cache holds for the longest
    /// run of whole blocks `tokens` begins with, leaving at least the last token to compute
    /// (its logits are needed). Returns the positions now held (a multiple of the block size).
    pub fn attach_prefix(&mut self, seq: SeqId, tokens: &[u32]) -> Result<usize, CacheError> {
        let held = self
            .seqs
            .get(&seq)
            .is_some_and(|s| s.len > 0 || s.tables.iter().any(|t| !t.is_empty()));
        if held {
            return Err(CacheError::NotEmpty { seq });
        }
        let bs = self.cfg.block_size;
        let chunks = self.chunks(tokens);
        let n = self.prefix_blocks(&chunks);
        let mut s = SeqBlocks::new(self.groups.len());
        for (g, group) in self.groups.iter_mut().enumerate() {
            let from = group.read_from(n * bs, bs);
            s.tables[g] = vec![group.hole(); from];
            s.released[g] = from;
            for &(parent, chunk) in &chunks[from..n] {
                // Found by `prefix_blocks` a moment ago: nothing can have evicted it.
                if let Some((b, _)) = group.pool.lookup(parent, chunk) {
                    s.tables[g].push(b);
                }
            }
        }
        s.chain = chunks[..n]
            .iter()
            .map(|&(parent, c)| chain_hash(parent, c))
            .collect();
        s.len = n * bs;
        self.seqs.insert(seq, s);
        Ok(n * bs)
    }

    /// Positions [`KvCache::attach_prefix`] would give a new sequence of `tokens` now.
    pub fn cached_prefix_len(&self, tokens: &[u32]) -> usize {
        self.prefix_blocks(&self.chunks(tokens)) * self.cfg.block_size
    }

    /// Blocks of `seq` in the primary pool that no other sequence holds (given back if it
    /// were dropped).
    pub fn exclusive_blocks(&self, seq: SeqId) -> usize {
        let Some(s) = self.seqs.get(&seq) else {
            return 0;
        };
        let g = &self.groups[0];
        s.tables[0][s.released[0]..]
            .iter()
            .filter(|&&b| g.pool.refs(b) == 1)
            .count()
    }

    /// Tells the cache which tokens `seq` holds (`tokens[i]` at position i, at least its
    /// length): its full blocks become findable by later sequences that begin the same way.
    pub fn commit(&mut self, seq: SeqId, tokens: &[u32]) {
        let bs = self.cfg.block_size;
        let Some(s) = self.seqs.get_mut(&seq) else {
            return;
        };
        let full = s.len.min(tokens.len()) / bs;
        while s.chain.len() < full {
            let i = s.chain.len();
            let parent = s.chain.last().copied().unwrap_or(ROOT);
            let chunk = &tokens[i * bs..(i + 1) * bs];
            for (g, group) in self.groups.iter_mut().enumerate() {
                match s.tables[g].get(i) {
                    Some(&b) if i >= s.released[g] => {
                        group.pool.register(b, parent, chunk);
                    }
                    _ => {}
                }
            }
            s.chain.push(chain_hash(parent, chunk));
        }
    }

    /// Forgets positions `len..` of `seq` and gives back the blocks it no longer needs.
    /// Returns the positions it holds now: fewer than `len` (none) where a window group
    /// already gave back blocks that positions from `len` on would read.
    pub fn truncate(&mut self, seq: SeqId, len: usize) -> usize {
        let bs = self.cfg.block_size;
        let Some(s) = self.seqs.get_mut(&seq) else {
            return 0;
        };
        let kept = s.len.min(len);
        let lost =
            (self.groups.iter().enumerate()).any(|(g, gr)| s.released[g] > gr.read_from(kept, bs));
        if lost {
            self.remove(seq);
            return 0;
        }
        for (g, group) in self.groups.iter_mut().enumerate() {
            let table = &mut s.tables[g];
            while table.len() > len.div_ceil(bs).max(s.released[g]) {
                if let Some(b) = table.pop() {
                    group.pool.release(b);
                }
            }
        }
        s.len = kept;
        s.chain.truncate(kept / bs);
        kept
    }

    /// Drops `seq` and gives back its blocks.
    pub fn remove(&mut self, seq: SeqId) {
        if let Some(s) = self.seqs.remove(&seq) {
            for (g, group) in self.groups.iter_mut().enumerate() {
                for &b in s.tables[g][s.released[g]..].iter().rev() {
                    group.pool.release(b);
                }
            }
        }
    }

    /// Drops every sequence and everything the prefix cache remembers.
    pub fn clear(&mut self) {
        self.seqs.clear();
        for g in &mut self.groups {
            g.pool.reset();
        }
    }

    /// Index of the first key element of (layer, block, kv_head, slot) in the stores of
    /// `layer` ([`KvCache::keys`]); the value of that slot's first dimension is at
    /// `offset(layer, block, head, 0) + slot`.
    #[inline(always)]
    pub fn offset(&self, layer: usize, block: u32, head: usize, slot: usize) -> usize {
        let c = &self.cfg;
        let (g, li) = self.layer_at[layer];
        let per_layer = self.groups[g].per_layer;
        (((li * per_layer + block as usize) * c.n_kv_heads + head) * c.block_size + slot)
            * c.head_dim
    }

    /// Distance between consecutive blocks of one (layer, head).
    pub fn block_stride(&self) -> usize {
        self.cfg.block_elems()
    }

    /// Stores the keys and values of all KV heads (`k`, `v`: n_kv_heads × head_dim) of position
    /// `pos` of `seq` in `layer`; an error where the position was not reserved or the rows
    /// are too short.
    pub fn write(
        &mut self,
        layer: usize,
        seq: SeqId,
        pos: usize,
        k: &[f32],
        v: &[f32],
    ) -> Result<(), CacheError> {
        let (bs, hd) = (self.cfg.block_size, self.cfg.head_dim);
        let need = self.cfg.n_kv_heads * hd;
        for (what, got) in [("keys", k.len()), ("values", v.len())] {
            if got < need {
                return Err(CacheError::Width { what, got, need });
            }
        }
        let not_reserved = CacheError::NotReserved { seq, pos };
        let &(g, _) = self.layer_at.get(layer).ok_or(not_reserved.clone())?;
        let s = self.seqs.get_mut(&seq).ok_or(not_reserved.clone())?;
        let group = &self.groups[g];
        let block = s.tables[g]
            .get(pos / bs)
            .copied()
            .filter(|&b| b != group.hole())
            .ok_or(not_reserved)?;
        if group.pool.refs(block) > 1 || group.pool.is_registered(block) {
            return Err(CacheError::Shared { seq, pos });
        }
        s.len = s.len.max(pos + 1);
        for h in 0..self.cfg.n_kv_heads {
            let at = self.offset(layer, block, h, pos % bs);
            let (vat, vstride) = if self.cfg.v_rows {
                (at, 1)
            } else {
                (self.offset(layer, block, h, 0) + pos % bs, bs)
            };
            let group = &mut self.groups[g];
            let ok = group.k.write(at, 1, &k[h * hd..(h + 1) * hd])
                && group.v.write(vat, vstride, &v[h * hd..(h + 1) * hd]);
            if !ok {
                return Err(CacheError::Layout(self.cfg.check().err().unwrap_or_else(
                    || "a position could not be encoded in the cache's element type".into(),
                )));
            }
        }
        Ok(())
    }

    /// The keys of `layer`'s group.
    pub fn keys(&self, layer: usize) -> &KvStore {
        &self.groups[self.layer_at[layer].0].k
    }

    /// The values of `layer`'s group.
    pub fn values(&self, layer: usize) -> &KvStore {
        &self.groups[self.layer_at[layer].0].v
    }
}
#[cfg(test)]
#[path = "kv_cache_tests.rs"]
mod tests;
