//! Safe entry points to the SIMD attention kernels for an f16 KV cache. Each checks every
//! bound its kernel reads or writes through raw pointers (and the block layout) and reports
//! `false` where the arguments do not fit a SIMD kernel, so the caller takes the scalar
//! definition in [`crate::attention`] instead. Handed out by [`crate::Kernels`] only for an
//! instruction set the CPU supports; nothing here chooses an instruction set.

use half::f16;
use std::ops::Range;

use crate::paged::{GroupQuery, HeadScratch, PagedHead, Reduce};

/// The f16-cache attention kernels of one instruction set, as safe functions.
#[derive(Clone, Copy, Debug)]
#[allow(clippy::type_complexity)]
pub struct F16Attention {
    /// [`crate::attention::attend_head`].
    pub attend_head: fn(
        q: &[f32],
        kv: &PagedHead<f16>,
        n_kv: usize,
        scale: f32,
        order: Reduce,
        s: &mut HeadScratch<'_>,
        out: &mut [f32],
    ) -> bool,
    /// [`crate::attention::scores_vec`].
    pub scores_vec: fn(
        qrs: &[&[f32]],
        kv: &PagedHead<f16>,
        positions: Range<usize>,
        scale: f32,
        outs: &mut [&mut [f32]],
    ) -> bool,
    /// [`crate::attention::values_vec`].
    pub values_vec: fn(
        weights: &[&[f32]],
        kv: &PagedHead<f16>,
        n_kv: usize,
        dims: Range<usize>,
        outs: &mut [&mut [f32]],
    ) -> bool,
    /// [`crate::attention::attend_group`].
    pub attend_group: fn(
        queries: &[GroupQuery<'_>],
        kv: &PagedHead<f16>,
        scale: f32,
        scores: &mut [f32],
        stride: usize,
        qr: &mut [f32],
        outs: &mut [&mut [f32]],
    ) -> bool,
}

/// Whether every position below `n` has a block.
#[cfg(target_arch = "x86_64")]
fn covered(kv: &PagedHead<f16>, n: usize) -> bool {
    kv.blocks
        .len()
        .checked_mul(kv.block_size)
        .is_some_and(|c| n <= c)
}

#[cfg(target_arch = "x86_64")]
pub(crate) const AVX2: F16Attention = F16Attention {
    attend_head: avx2_attend_head,
    scores_vec: avx2_scores_vec,
    values_vec: avx2_values_vec,
    attend_group: avx2_attend_group,
};

#[cfg(target_arch = "x86_64")]
fn avx2_attend_head(
    q: &[f32],
    kv: &PagedHead<f16>,
    n_kv: usize,
    scale: f32,
    order: Reduce,
    s: &mut HeadScratch<'_>,
    out: &mut [f32],
) -> bool {
    let fits = kv.simd_layout()
        && q.len() >= kv.head_dim
        && out.len() >= kv.head_dim
        && s.qr.len() >= kv.head_dim
        && s.scores.len() >= n_kv.div_ceil(8) * 8
        && covered(kv, n_kv);
    if fits {
        let s = HeadScratch {
            scores: &mut *s.scores,
            acc: &mut *s.acc,
            qr: &mut *s.qr,
        };
        // SAFETY: handed out only for a CPU with AVX2/FMA/F16C; every bound the kernel reads
        // or writes was checked above, the block layout by `simd_layout`.
        unsafe { super::avx2::attend_head_f16(q, kv, n_kv, scale, order, s, out) };
    }
    fits
}

#[cfg(target_arch = "x86_64")]
fn avx2_scores_vec(
    qrs: &[&[f32]],
    kv: &PagedHead<f16>,
    positions: Range<usize>,
    scale: f32,
    outs: &mut [&mut [f32]],
) -> bool {
    let fits = kv.simd_layout()
        && qrs.len() == outs.len()
        && qrs.iter().all(|q| q.len() >= kv.head_dim)
        && outs.iter().all(|o| o.len() >= positions.len())
        && covered(kv, positions.end);
    if fits {
        // SAFETY: as in `avx2_attend_head`.
        unsafe { super::avx2::scores_vec_f16(qrs, kv, positions, scale, outs) };
    }
    fits
}

#[cfg(target_arch = "x86_64")]
fn avx2_values_vec(
    weights: &[&[f32]],
    kv: &PagedHead<f16>,
    n_kv: usize,
    dims: Range<usize>,
    outs: &mut [&mut [f32]],
) -> bool {
    let padded = n_kv.div_ceil(8) * 8;
    let fits = kv.simd_layout()
        && weights.len() == outs.len()
        && weights.iter().all(|w| w.len() >= padded)
        && outs.iter().all(|o| o.len() >= dims.len())
        && dims.start <= dims.end
        && dims.end <= kv.head_dim
        && covered(kv, n_kv);
    if fits {
        // SAFETY: as in `avx2_attend_head`.
        unsafe { super::avx2::values_vec_f16(weights, kv, n_kv, dims, outs) };
    }
    fits
}

#[cfg(target_arch = "x86_64")]
fn avx2_attend_group(
    queries: &[GroupQuery<'_>],
    kv: &PagedHead<f16>,
    scale: f32,
    scores: &mut [f32],
    stride: usize,
    qr: &mut [f32],
    outs: &mut [&mut [f32]],
) -> bool {
    let hd = kv.head_dim;
    let n_max = queries.iter().map(|q| q.n_kv).max().unwrap_or(0);
    let fits = kv.simd_layout()
        && stride >= n_max.div_ceil(8) * 8
        && queries.len() == outs.len()
        && scores.len() >= queries.len() * stride
        && qr.len() >= queries.len() * hd
        && queries.iter().all(|q| q.q.len() >= hd)
        && outs.iter().all(|o| o.len() >= hd)
        && covered(kv, n_max);
    if !fits {
        return false;
    }
    for (c, chunk) in queries.chunks(4).enumerate() {
        let nq = chunk.len();
        let empty: &[f32] = &[];
        let mut qs = [empty; 4];
        let mut n_kv = [0usize; 4];
        let mut first = [0usize; 4];
        let mut o = [std::ptr::null_mut::<f32>(); 4];
        for (i, g) in chunk.iter().enumerate() {
            qs[i] = g.q;
            n_kv[i] = g.n_kv;
            first[i] = g.first.min(g.n_kv);
            o[i] = outs[4 * c + i].as_mut_ptr();
        }
        let sc = &mut scores[4 * c * stride..(4 * c + nq) * stride];
        let q = &mut qr[4 * c * hd..(4 * c + nq) * hd];
        // SAFETY: as in `avx2_attend_head`; the output pointers come from distinct `&mut`
        // slices of at least `head_dim` elements.
        unsafe {
            super::avx2::attend_group4_f16(qs, (first, n_kv), nq, kv, scale, sc, stride, q, o)
        };
    }
    true
}
