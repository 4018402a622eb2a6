//! The paged key/value cache.
//!
//! Memory is a pool of fixed-size blocks (`block_size` positions each, all layers and KV
//! heads); every sequence has a table of blocks, so sequences of different lengths share one
//! pool, grow one block at a time, and can be truncated (speculative rollback) or dropped
//! without moving data. Full blocks are shared between sequences whose tokens begin the same
//! way (the prefix cache, [`crate::kv_blocks`]), by reference count; a write into a shared
//! block copies it first. Reserving room is all or nothing, and says whether the pool is
//! full now ([`CacheError::PoolExhausted`]) or the request can never fit
//! ([`CacheError::TooLong`]). Layout: keys `[layer][block][kv_head][slot][head_dim]`, values
//! `[layer][block][kv_head][head_dim][slot]` (transposed, so consecutive positions of one
//! dimension are contiguous, as the attention kernel reads them).
//!
//! Values are stored as f16 (llama.cpp's default, the reference numerics) or f32 (`--precise`).
//! This module holds and addresses memory; it computes nothing.

use std::collections::BTreeMap;

use half::f16;

use crate::kv_blocks::BlockPool;

/// Identifies a sequence in the cache.
pub type SeqId = u32;

/// Element type of the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvType {
    F16,
    F32,
}

impl KvType {
    pub fn bytes(self) -> usize {
        match self {
            KvType::F16 => 2,
            KvType::F32 => 4,
        }
    }
}

/// Storage of one of K or V.
pub enum KvStore {
    F16(Vec<f16>),
    F32(Vec<f32>),
}

impl KvStore {
    fn new(ty: KvType, len: usize) -> KvStore {
        // Zeroed allocations are lazily committed: memory becomes resident as it is used.
        match ty {
            KvType::F16 => KvStore::F16(vec![f16::ZERO; len]),
            KvType::F32 => KvStore::F32(vec![0.0; len]),
        }
    }

    /// Writes `src` at `at`, `at + stride`, `at + 2 * stride` …
    fn write(&mut self, at: usize, stride: usize, src: &[f32]) {
        match self {
            KvStore::F16(v) => {
                for (i, s) in src.iter().enumerate() {
                    v[at + i * stride] = f16::from_f32(*s);
                }
            }
            KvStore::F32(v) => {
                for (i, s) in src.iter().enumerate() {
                    v[at + i * stride] = *s;
                }
            }
        }
    }
}

/// Shape of a cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvConfig {
    pub n_layers: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Positions per block.
    pub block_size: usize,
    /// Blocks in the pool.
    pub n_blocks: usize,
    pub ty: KvType,
}

impl KvConfig {
    /// Bytes the pool occupies once every block is in use.
    pub fn bytes(&self) -> usize {
        2 * self.n_layers
            * self.n_blocks
            * self.n_kv_heads
            * self.block_size
            * self.head_dim
            * self.ty.bytes()
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
    #[error("{what} of {got} values do not fill the {need} of one position's KV heads")]
    Width {
        what: &'static str,
        got: usize,
        need: usize,
    },
}

#[derive(Default)]
struct SeqBlocks {
    blocks: Vec<u32>,
    len: usize,
    /// The chain hash through each leading full block whose tokens were committed.
    chain: Vec<u64>,
}

/// The cache.
pub struct KvCache {
    cfg: KvConfig,
    k: KvStore,
    v: KvStore,
    pool: BlockPool,
    seqs: BTreeMap<SeqId, SeqBlocks>,
}

impl KvCache {
    pub fn new(cfg: KvConfig) -> KvCache {
        let len = cfg.n_layers * cfg.n_blocks * cfg.n_kv_heads * cfg.block_size * cfg.head_dim;
        KvCache {
            cfg,
            k: KvStore::new(cfg.ty, len),
            v: KvStore::new(cfg.ty, len),
            pool: BlockPool::new(cfg.n_blocks),
            seqs: BTreeMap::new(),
        }
    }

    pub fn config(&self) -> &KvConfig {
        &self.cfg
    }

    /// Whether full blocks are remembered for later sequences (on by default; turning it
    /// off stops new registrations, what is remembered stays findable until evicted).
    pub fn set_prefix_caching(&mut self, on: bool) {
        self.pool.prefix_caching = on;
    }

    /// Writes every value of the pool once, so that its memory is resident from the start
    /// (a server's footprint then stays where it was after loading).
    pub fn commit_memory(&mut self) {
        for store in [&mut self.k, &mut self.v] {
            match store {
                KvStore::F16(v) => v.iter_mut().for_each(|x| *x = f16::ZERO),
                KvStore::F32(v) => v.iter_mut().for_each(|x| *x = 0.0),
            }
        }
    }

    /// Positions the whole pool can hold.
    pub fn capacity(&self) -> usize {
        self.cfg.n_blocks * self.cfg.block_size
    }

    /// Blocks that can be handed out now (including free blocks the prefix cache still
    /// remembers).
    pub fn free_blocks(&self) -> usize {
        self.pool.available()
    }

    /// Blocks some sequence holds.
    pub fn used_blocks(&self) -> usize {
        self.pool.used()
    }

    /// Free blocks the prefix cache still remembers.
    pub fn cached_blocks(&self) -> usize {
        self.pool.cached()
    }

    /// Positions stored for `seq` (0 if unknown).
    pub fn seq_len(&self, seq: SeqId) -> usize {
        self.seqs.get(&seq).map_or(0, |s| s.len)
    }

    /// The block table of `seq`.
    pub fn blocks(&self, seq: SeqId) -> &[u32] {
        self.seqs.get(&seq).map_or(&[], |s| &s.blocks)
    }

    /// Blocks [`KvCache::reserve`] would take from the pool to grow `seq` to `len` positions
    /// (a copy of a shared block that the next write lands in included).
    pub fn blocks_needed(&self, seq: SeqId, len: usize) -> usize {
        let bs = self.cfg.block_size;
        let Some(s) = self.seqs.get(&seq) else {
            return len.div_ceil(bs);
        };
        let grow = len.div_ceil(bs).saturating_sub(s.blocks.len());
        let cow = len > s.len
            && !s.len.is_multiple_of(bs)
            && s.blocks
                .get(s.len / bs)
                .is_some_and(|&b| self.pool.refs(b) > 1);
        grow + usize::from(cow)
    }

    /// Makes room for positions `0..len` of `seq`: all of it or, with an error, nothing. The
    /// block the next position lands in becomes the sequence's own (copied if others share
    /// it, forgotten by the prefix cache if it was remembered).
    pub fn reserve(&mut self, seq: SeqId, len: usize) -> Result<(), CacheError> {
        if len > self.capacity() {
            return Err(CacheError::TooLong {
                need: len,
                capacity: self.capacity(),
            });
        }
        let need = self.blocks_needed(seq, len);
        let free = self.pool.available();
        if need > free {
            return Err(CacheError::PoolExhausted { need, free });
        }
        let bs = self.cfg.block_size;
        let mut s = self.seqs.remove(&seq).unwrap_or_default();
        if len > s.len && !s.len.is_multiple_of(bs) {
            let i = s.len / bs;
            if let Some(&b) = s.blocks.get(i) {
                if self.pool.refs(b) > 1 {
                    if let Some(copy) = self.pool.alloc() {
                        self.copy_block(b, copy);
                        self.pool.release(b);
                        s.blocks[i] = copy;
                    }
                } else {
                    self.pool.unregister(b);
                }
                s.chain.truncate(i);
            }
        }
        while s.blocks.len() < len.div_ceil(bs) {
            match self.pool.alloc() {
                Some(b) => s.blocks.push(b),
                None => break,
            }
        }
        self.seqs.insert(seq, s);
        Ok(())
    }

    /// Copies every layer's keys and values of block `from` into block `to`.
    fn copy_block(&mut self, from: u32, to: u32) {
        let n = self.block_stride();
        for l in 0..self.cfg.n_layers {
            let (src, dst) = (self.offset(l, from, 0, 0), self.offset(l, to, 0, 0));
            for store in [&mut self.k, &mut self.v] {
                match store {
                    KvStore::F16(v) => v.copy_within(src..src + n, dst),
                    KvStore::F32(v) => v.copy_within(src..src + n, dst),
                }
            }
        }
    }

    /// Starts the new sequence `seq` with the blocks the prefix cache holds for the longest
    /// run of whole blocks `tokens` begins with, leaving at least the last token to compute
    /// (its logits are needed). Returns the positions now held (a multiple of the block size).
    pub fn attach_prefix(&mut self, seq: SeqId, tokens: &[u32]) -> Result<usize, CacheError> {
        if self.seq_len(seq) > 0 || !self.blocks(seq).is_empty() {
            return Err(CacheError::NotEmpty { seq });
        }
        let bs = self.cfg.block_size;
        let mut s = SeqBlocks::default();
        let mut parent = crate::kv_blocks::ROOT;
        for chunk in tokens[..tokens.len().saturating_sub(1)].chunks_exact(bs) {
            let Some((b, hash)) = self.pool.lookup(parent, chunk) else {
                break;
            };
            s.blocks.push(b);
            s.chain.push(hash);
            parent = hash;
        }
        s.len = s.blocks.len() * bs;
        let held = s.len;
        self.seqs.insert(seq, s);
        Ok(held)
    }

    /// Positions [`KvCache::attach_prefix`] would give a new sequence of `tokens` now.
    pub fn cached_prefix_len(&self, tokens: &[u32]) -> usize {
        let bs = self.cfg.block_size;
        let mut parent = crate::kv_blocks::ROOT;
        let mut n = 0;
        for chunk in tokens[..tokens.len().saturating_sub(1)].chunks_exact(bs) {
            match self.pool.peek(parent, chunk) {
                Some(h) => parent = h,
                None => break,
            }
            n += bs;
        }
        n
    }

    /// Blocks of `seq` that no other sequence holds (given back if it were dropped).
    pub fn exclusive_blocks(&self, seq: SeqId) -> usize {
        self.blocks(seq)
            .iter()
            .filter(|&&b| self.pool.refs(b) == 1)
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
            let parent = s.chain.last().copied().unwrap_or(crate::kv_blocks::ROOT);
            let hash = self
                .pool
                .register(s.blocks[i], parent, &tokens[i * bs..(i + 1) * bs]);
            s.chain.push(hash);
        }
    }

    /// Forgets positions `len..` of `seq` and gives back the blocks it no longer needs.
    pub fn truncate(&mut self, seq: SeqId, len: usize) {
        let bs = self.cfg.block_size;
        if let Some(s) = self.seqs.get_mut(&seq) {
            s.len = s.len.min(len);
            let keep = len.div_ceil(bs);
            while s.blocks.len() > keep {
                if let Some(b) = s.blocks.pop() {
                    self.pool.release(b);
                }
            }
            s.chain.truncate(s.len / bs);
        }
    }

    /// Drops `seq` and gives back its blocks.
    pub fn remove(&mut self, seq: SeqId) {
        if let Some(s) = self.seqs.remove(&seq) {
            for &b in s.blocks.iter().rev() {
                self.pool.release(b);
            }
        }
    }

    /// Drops every sequence and everything the prefix cache remembers.
    pub fn clear(&mut self) {
        self.seqs.clear();
        self.pool.reset();
    }

    /// Index of the first key element of (layer, block, kv_head, slot); the value of that slot's
    /// first dimension is at `offset(layer, block, head, 0) + slot`.
    #[inline(always)]
    pub fn offset(&self, layer: usize, block: u32, head: usize, slot: usize) -> usize {
        let c = &self.cfg;
        (((layer * c.n_blocks + block as usize) * c.n_kv_heads + head) * c.block_size + slot)
            * c.head_dim
    }

    /// Distance between consecutive blocks of one (layer, head).
    pub fn block_stride(&self) -> usize {
        self.cfg.n_kv_heads * self.cfg.block_size * self.cfg.head_dim
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
        let block = self
            .seqs
            .get_mut(&seq)
            .and_then(|s| Some((s.blocks.get(pos / bs).copied()?, s)));
        let Some((block, s)) = block.filter(|_| layer < self.cfg.n_layers) else {
            return Err(CacheError::NotReserved { seq, pos });
        };
        if self.pool.refs(block) > 1 || self.pool.is_registered(block) {
            return Err(CacheError::Shared { seq, pos });
        }
        s.len = s.len.max(pos + 1);
        for h in 0..self.cfg.n_kv_heads {
            let at = self.offset(layer, block, h, pos % bs);
            self.k.write(at, 1, &k[h * hd..(h + 1) * hd]);
            let vat = self.offset(layer, block, h, 0) + pos % bs;
            self.v.write(vat, bs, &v[h * hd..(h + 1) * hd]);
        }
        Ok(())
    }

    pub fn keys(&self) -> &KvStore {
        &self.k
    }

    pub fn values(&self) -> &KvStore {
        &self.v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(n_blocks: usize) -> KvCache {
        KvCache::new(KvConfig {
            n_layers: 2,
            n_kv_heads: 2,
            head_dim: 4,
            block_size: 4,
            n_blocks,
            ty: KvType::F32,
        })
    }

    #[test]
    fn sequences_take_and_return_blocks() {
        let mut c = cache(4);
        c.reserve(7, 6).unwrap();
        assert_eq!(c.blocks(7), &[0, 1]);
        c.reserve(9, 4).unwrap();
        assert_eq!(c.blocks(9), &[2]);
        assert_eq!(
            c.reserve(7, 13),
            Err(CacheError::PoolExhausted { need: 2, free: 1 })
        );
        c.truncate(7, 3);
        assert_eq!(c.blocks(7), &[0]);
        assert_eq!(c.free_blocks(), 2);
        c.remove(9);
        assert_eq!(c.free_blocks(), 3);
        c.reserve(7, 13).unwrap();
        assert_eq!(c.blocks(7).len(), 4);
        assert_eq!(c.free_blocks(), 0);
        c.clear();
        assert_eq!(c.free_blocks(), 4);
    }

    #[test]
    fn writes_land_where_the_table_points() {
        let mut c = cache(3);
        c.reserve(1, 8).unwrap();
        let k: Vec<f32> = (0..8).map(|i| i as f32).collect();
        let v: Vec<f32> = (0..8).map(|i| -(i as f32)).collect();
        c.write(1, 1, 5, &k, &v).unwrap();
        assert_eq!(c.seq_len(1), 6);
        // Positions that were not reserved, unknown sequences and short rows are errors.
        let not = |seq, pos| Err(CacheError::NotReserved { seq, pos });
        assert_eq!(c.write(1, 1, 8, &k, &v), not(1, 8));
        assert_eq!(c.write(1, 2, 0, &k, &v), not(2, 0));
        assert_eq!(c.write(3, 1, 0, &k, &v), not(1, 0));
        assert!(matches!(
            c.write(1, 1, 0, &k[..7], &v),
            Err(CacheError::Width { what: "keys", .. })
        ));
        assert_eq!(c.seq_len(1), 6);
        let at = c.offset(1, c.blocks(1)[1], 1, 1);
        let vat = c.offset(1, c.blocks(1)[1], 1, 0) + 1;
        match (c.keys(), c.values()) {
            (KvStore::F32(ks), KvStore::F32(vs)) => {
                assert_eq!(&ks[at..at + 4], &[4.0, 5.0, 6.0, 7.0]);
                let v: Vec<f32> = (0..4).map(|d| vs[vat + d * 4]).collect();
                assert_eq!(v, [-4.0, -5.0, -6.0, -7.0]);
            }
            _ => unreachable!(),
        }
    }

    fn fill(c: &mut KvCache, seq: SeqId, from: usize, to: usize, val: impl Fn(usize) -> f32) {
        c.reserve(seq, to).unwrap();
        for pos in from..to {
            let k = vec![val(pos); 8];
            for l in 0..2 {
                c.write(l, seq, pos, &k, &k).unwrap();
            }
        }
    }

    fn key(c: &KvCache, seq: SeqId, pos: usize) -> f32 {
        let b = c.blocks(seq)[pos / 4];
        match c.keys() {
            KvStore::F32(ks) => ks[c.offset(1, b, 1, pos % 4)],
            _ => unreachable!(),
        }
    }

    #[test]
    fn a_shared_prefix_is_reused_and_copied_before_a_write() {
        let mut c = cache(6);
        let tokens: Vec<u32> = (0..10).collect();
        fill(&mut c, 1, 0, 10, |p| p as f32);
        c.commit(1, &tokens);
        // Two full blocks are findable; the last token is always left to compute.
        assert_eq!(c.cached_prefix_len(&tokens[..9]), 8);
        assert_eq!(c.attach_prefix(2, &tokens[..9]), Ok(8));
        assert_eq!((c.exclusive_blocks(1), c.exclusive_blocks(2)), (1, 0));
        assert_eq!(c.blocks(2), &c.blocks(1)[..2]);
        assert_eq!(c.attach_prefix(3, &tokens[..8]), Ok(4));
        assert_eq!(
            c.attach_prefix(3, &tokens),
            Err(CacheError::NotEmpty { seq: 3 })
        );
        let other: Vec<u32> = (100..110).collect();
        assert_eq!(c.attach_prefix(4, &other), Ok(0));
        // Writing into a shared block is refused; reserving copies it first.
        assert_eq!(
            c.write(0, 2, 7, &[0.0; 8], &[0.0; 8]),
            Err(CacheError::Shared { seq: 2, pos: 7 })
        );
        c.truncate(2, 6);
        assert_eq!(c.blocks_needed(2, 8), 1);
        let shared = c.blocks(1)[1];
        fill(&mut c, 2, 6, 8, |p| -(p as f32));
        assert_ne!(c.blocks(2)[1], shared);
        assert_eq!(key(&c, 2, 5), 5.0, "copied from the shared block");
        assert_eq!(key(&c, 2, 6), -6.0);
        assert_eq!(key(&c, 1, 6), 6.0, "the other sequence keeps its values");
        // Freed sequences leave their blocks findable until the space is needed.
        for s in [1, 2, 3, 4] {
            c.remove(s);
        }
        assert_eq!((c.used_blocks(), c.free_blocks()), (0, 6));
        assert_eq!(c.cached_blocks(), 2);
        assert_eq!(c.attach_prefix(5, &tokens), Ok(8));
        assert_eq!(
            c.reserve(5, 25),
            Err(CacheError::TooLong {
                need: 25,
                capacity: 24
            })
        );
        c.clear();
        assert_eq!((c.cached_blocks(), c.attach_prefix(6, &tokens)), (0, Ok(0)));
    }
}
