//! The shapes attention kernels share: where one KV head's blocks lie in a paged cache
//! ([`PagedHead`]), which of the reference engine's reduction orders to follow ([`Reduce`]),
//! and a head's scratch buffers ([`HeadScratch`]). Used by [`crate::attention`] (the
//! definition) and the SIMD kernels; it holds types only and computes nothing.

/// Which of the reference engine's reduction orders to reproduce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduce {
    /// A batch of queries (llama.cpp's tiled GEMM): one 8-lane accumulator.
    Gemm,
    /// A single query (llama.cpp's `vec_dot`): four 8-lane accumulators over 32-element steps.
    Vec,
}

/// One query of a batched attention group: its vector and the positions it sees,
/// `first..n_kv` (a causal query sees `0..=pos`; a sliding window starts later).
#[derive(Clone, Copy, Debug)]
pub struct GroupQuery<'a> {
    pub q: &'a [f32],
    pub first: usize,
    pub n_kv: usize,
}

/// Where one KV head's blocks are: block `b` starts at `base + b * block_stride` in both the
/// key and the value arrays.
#[derive(Clone, Copy, Debug)]
pub struct PagedHead<'a, E> {
    pub keys: &'a [E],
    pub values: &'a [E],
    pub blocks: &'a [u32],
    pub base: usize,
    pub block_stride: usize,
    pub block_size: usize,
    pub head_dim: usize,
}

impl<E> PagedHead<'_, E> {
    /// Whether the SIMD kernels can address this head: head and block sizes multiples of
    /// eight, power-of-two blocks that hold their `block_size × head_dim` elements, and every
    /// listed block inside both arrays (no arithmetic overflow on the way).
    pub fn simd_layout(&self) -> bool {
        let len = self.keys.len().min(self.values.len());
        let inside = |b: u32| {
            (b as usize)
                .checked_add(1)
                .and_then(|n| n.checked_mul(self.block_stride))
                .and_then(|e| e.checked_add(self.base))
                .is_some_and(|end| end <= len)
        };
        self.head_dim.is_multiple_of(8)
            && self.block_size.is_multiple_of(8)
            && self.block_size.is_power_of_two()
            && self
                .head_dim
                .checked_mul(self.block_size)
                .is_some_and(|n| n <= self.block_stride)
            && self.blocks.iter().all(|&b| inside(b))
    }

    #[inline(always)]
    pub fn start(&self, p: usize) -> Option<usize> {
        let b = *self.blocks.get(p / self.block_size)? as usize;
        Some(self.base + b * self.block_stride)
    }
}

/// Per-head scratch: `scores` holds at least `n_kv` rounded up to 8, `acc` at least
/// `32 * head_dim`, `qr` at least `head_dim`.
pub struct HeadScratch<'a> {
    pub scores: &'a mut [f32],
    pub acc: &'a mut [f32],
    pub qr: &'a mut [f32],
}
