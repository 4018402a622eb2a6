//! Flash attention: attention of queries over a paged KV cache in tiles, with the online
//! softmax (a running maximum and sum, earlier work rescaled when the maximum grows), so that
//! no score row as long as the context is ever held.
//!
//! The arithmetic of one query is fixed by the positions it sees and nothing else (not the
//! batch, not the thread count): positions are cut into *splits* of [`SPLIT`] positions at
//! absolute multiples of [`SPLIT`], each split into tiles of the chosen tile size, also at
//! absolute multiples. Each split yields a partial state (maximum, sum, weighted values) from
//! a fresh start; the partials are folded into the query's running state in split order. A
//! caller may compute the splits of one query on different threads and fold them later, or
//! one after another on one thread: the bits are the same.
//!
//! Per tile: scores in eight-lane fused multiply-adds over the head dimension (the batched
//! order of [`crate::lanes`]) times the scale, an optional soft-cap, the tile maximum, the
//! rescale factor and weights by ggml's exp, the sum in position order, values accumulated
//! by fused multiply-adds position after position. Keys and values are read as rows
//! (`[slot][head_dim]`) in f32, f16, Q8_0 or Q4_0, converted to f32 one tile at a time.
//!
//! This module computes; it does not decide which queries go together or where a sequence's
//! blocks are (the model's attention module does).

pub use crate::flash_tiles::{
    encode_row, q4_0_bytes, q8_0_bytes, splits, state_len, tile_scratch_len, valid_tile,
    FlashParams, FlashQuery, PagedRows, Rows, DEFAULT_TILE, SPLIT,
};
use crate::flash_tiles::{split_impl, Scalar};
use crate::lanes::expf_ggml;

/// Computes, for every query of `qs`, the partial state of split `split` into `states`
/// (`qs.len()` states of [`state_len`] floats): maximum, sum and weighted values of the
/// positions of the split the query sees, from a fresh start (maximum −∞ where it sees none).
/// `scratch` holds [`tile_scratch_len`] floats. Returns false where a key or value row
/// cannot be read (a position without a block, data too short, a quantized row not made of
/// whole blocks): the states are then unspecified.
///
/// # Panics
/// If `states` or `scratch` is too short, or a query is shorter than `head_dim` (a caller's
/// bug).
#[allow(clippy::too_many_arguments)]
pub fn split_partials(
    k: &crate::Kernels,
    p: &FlashParams,
    qs: &[FlashQuery<'_>],
    keys: &PagedRows<'_>,
    values: &PagedRows<'_>,
    split: usize,
    states: &mut [f32],
    scratch: &mut [f32],
) -> bool {
    let hd = keys.head_dim;
    let fits = states.len() >= qs.len() * state_len(hd)
        && scratch.len() >= tile_scratch_len(p.tile, hd)
        && qs.iter().all(|q| q.q.len() >= hd)
        && values.head_dim == hd
        && valid_tile(p.tile);
    assert!(
        fits,
        "split_partials: states, scratch or queries do not fit"
    );
    #[cfg(target_arch = "x86_64")]
    if k.isa().has_avx512() {
        // SAFETY: an AVX-512 `Isa` says the CPU supports AVX-512 F/BW/VL, AVX2, FMA and F16C.
        return unsafe {
            crate::simd::avx512_flash::flash_split(p, qs, keys, values, split, states, scratch)
        };
    }
    #[cfg(target_arch = "x86_64")]
    if k.has_fma() {
        // SAFETY: `has_fma` says the CPU supports AVX2, FMA and F16C.
        return unsafe {
            crate::simd::avx2::flash_split(p, qs, keys, values, split, states, scratch)
        };
    }
    let _ = k;
    split_impl(Scalar, p, qs, keys, values, split, states, scratch)
}

/// Folds a partial state into a running one (both [`state_len`] floats): the larger maximum,
/// each side rescaled to it by ggml's exp, sums and values added. Folding the splits of a
/// query in order gives the same bits whichever thread computed each.
pub fn fold(k: &crate::Kernels, run: &mut [f32], part: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if k.has_fma() {
        // SAFETY: `has_fma` says the CPU supports AVX2 and FMA.
        unsafe { fold_fma(run, part) };
        return;
    }
    let _ = k;
    fold_impl(run, part)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fold_fma(run: &mut [f32], part: &[f32]) {
    fold_impl(run, part)
}

#[inline(always)]
fn fold_impl(run: &mut [f32], part: &[f32]) {
    let n = run.len().min(part.len());
    let (m1, m2) = (run[0], part[0]);
    if m2 == f32::NEG_INFINITY {
        return;
    }
    if m1 == f32::NEG_INFINITY {
        run[..n].copy_from_slice(&part[..n]);
        return;
    }
    let m = m1.max(m2);
    let (a, b) = (expf_ggml(m1 - m), expf_ggml(m2 - m));
    run[0] = m;
    run[1] = run[1].mul_add(a, part[1] * b);
    for (x, &y) in run[2..n].iter_mut().zip(&part[2..n]) {
        *x = x.mul_add(a, y * b);
    }
}

/// The attention output of a finished running state: the weighted values over the sum
/// (zeros where the query saw no position).
pub fn finish(state: &[f32], out: &mut [f32]) {
    let l = state[1];
    let inv = if l > 0.0 { 1.0 / l } else { 0.0 };
    for (o, &x) in out.iter_mut().zip(&state[2..]) {
        *o = x * inv;
    }
}

#[cfg(test)]
#[path = "flash_tests.rs"]
mod tests;
