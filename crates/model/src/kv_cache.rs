//! The paged key/value cache.
//!
//! Memory is a pool of fixed-size blocks (`block_size` positions each, all layers and KV
//! heads); every sequence owns a table of blocks, so sequences of different lengths share one
//! pool, grow one block at a time, and can be truncated (speculative rollback) or dropped
//! without moving data. Layout: keys `[layer][block][kv_head][slot][head_dim]`, values
//! `[layer][block][kv_head][head_dim][slot]` (transposed, so consecutive positions of one
//! dimension are contiguous, as the attention kernel reads them).
//!
//! Values are stored as f16 (llama.cpp's default, the reference numerics) or f32 (`--precise`).
//! This module holds and addresses memory; it computes nothing.

use std::collections::BTreeMap;

use half::f16;

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
    #[error("the KV cache is full: {need} blocks needed, {free} free")]
    Full { need: usize, free: usize },
    #[error("position {pos} of sequence {seq} was not reserved in the KV cache")]
    NotReserved { seq: SeqId, pos: usize },
    #[error("{what} of {got} values do not fill the {need} of one position's KV heads")]
    Width {
        what: &'static str,
        got: usize,
        need: usize,
    },
}

struct SeqBlocks {
    blocks: Vec<u32>,
    len: usize,
}

/// The cache.
pub struct KvCache {
    cfg: KvConfig,
    k: KvStore,
    v: KvStore,
    free: Vec<u32>,
    seqs: BTreeMap<SeqId, SeqBlocks>,
}

impl KvCache {
    pub fn new(cfg: KvConfig) -> KvCache {
        let len = cfg.n_layers * cfg.n_blocks * cfg.n_kv_heads * cfg.block_size * cfg.head_dim;
        KvCache {
            cfg,
            k: KvStore::new(cfg.ty, len),
            v: KvStore::new(cfg.ty, len),
            // Pop from the end: blocks are handed out in ascending order.
            free: (0..cfg.n_blocks as u32).rev().collect(),
            seqs: BTreeMap::new(),
        }
    }

    pub fn config(&self) -> &KvConfig {
        &self.cfg
    }

    /// Positions the whole pool can hold.
    pub fn capacity(&self) -> usize {
        self.cfg.n_blocks * self.cfg.block_size
    }

    pub fn free_blocks(&self) -> usize {
        self.free.len()
    }

    /// Positions stored for `seq` (0 if unknown).
    pub fn seq_len(&self, seq: SeqId) -> usize {
        self.seqs.get(&seq).map_or(0, |s| s.len)
    }

    /// The block table of `seq`.
    pub fn blocks(&self, seq: SeqId) -> &[u32] {
        self.seqs.get(&seq).map_or(&[], |s| &s.blocks)
    }

    /// Makes room for positions `0..len` of `seq`, taking blocks from the pool.
    pub fn reserve(&mut self, seq: SeqId, len: usize) -> Result<(), CacheError> {
        let bs = self.cfg.block_size;
        let max_blocks = self.cfg.n_blocks;
        let have = self.seqs.get(&seq).map_or(0, |s| s.blocks.len());
        let need = len.div_ceil(bs).saturating_sub(have);
        if need > self.free.len() {
            return Err(CacheError::Full {
                need,
                free: self.free.len(),
            });
        }
        let entry = self.seqs.entry(seq).or_insert_with(|| SeqBlocks {
            blocks: Vec::with_capacity(max_blocks),
            len: 0,
        });
        for _ in 0..need {
            if let Some(b) = self.free.pop() {
                entry.blocks.push(b);
            }
        }
        Ok(())
    }

    /// Forgets positions `len..` of `seq` and returns whole unused blocks to the pool.
    pub fn truncate(&mut self, seq: SeqId, len: usize) {
        let bs = self.cfg.block_size;
        if let Some(s) = self.seqs.get_mut(&seq) {
            s.len = s.len.min(len);
            let keep = len.div_ceil(bs);
            while s.blocks.len() > keep {
                if let Some(b) = s.blocks.pop() {
                    self.free.push(b);
                }
            }
        }
    }

    /// Drops `seq` and frees its blocks.
    pub fn remove(&mut self, seq: SeqId) {
        if let Some(s) = self.seqs.remove(&seq) {
            self.free.extend(s.blocks.into_iter().rev());
        }
    }

    /// Drops every sequence.
    pub fn clear(&mut self) {
        self.seqs.clear();
        self.free = (0..self.cfg.n_blocks as u32).rev().collect();
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
        assert_eq!(c.reserve(7, 13), Err(CacheError::Full { need: 2, free: 1 }));
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
}
