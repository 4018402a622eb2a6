//! Attention of one query head over keys and values stored in fixed-size blocks (a paged KV
//! cache): scores, softmax, weighted sum of values.
//!
//! The arithmetic is llama.cpp's non-flash CPU path, in the order of [`crate::lanes`]: the
//! query is rounded to the cache's element type, Q·K runs in 8-lane fused multiply-adds,
//! scores are scaled, softmax uses ggml's exp in groups of eight, probabilities are rounded to
//! the cache type, and values accumulate per lane. llama.cpp reduces differently for a single
//! query (its `vec_dot` kernels: four 8-lane accumulators over 32-element steps) than for a
//! batch (its tiled GEMM: one 8-lane accumulator), so the caller says which [`Reduce`] order
//! applies.
//!
//! Layout, per (layer, KV head) and block: keys `[slot][head_dim]`, values transposed
//! `[head_dim][slot]` (so eight consecutive positions of one dimension are contiguous).

use std::ops::Range;

use half::f16;

use crate::lanes::{expf_ggml, hsum8, reduce4x8, LANES};
pub use crate::paged::{GroupQuery, HeadScratch, PagedHead, Reduce};

/// An element type of the KV cache.
pub trait KvElem: Copy + Send + Sync + 'static {
    fn to_f32(self) -> f32;
    /// `x` rounded to this type.
    fn round(x: f32) -> f32;
    /// Runs a SIMD version of [`attend_head`] if `k` has one for this element type and shape;
    /// returns false otherwise.
    #[allow(clippy::too_many_arguments)]
    fn attend_simd(
        _k: &crate::Kernels,
        _q: &[f32],
        _kv: &PagedHead<Self>,
        _n_kv: usize,
        _scale: f32,
        _order: Reduce,
        _s: &mut HeadScratch<'_>,
        _out: &mut [f32],
    ) -> bool {
        false
    }
    /// Runs a SIMD version of [`scores_vec`] (arguments checked); false where there is none.
    fn scores_simd(
        _k: &crate::Kernels,
        _qrs: &[&[f32]],
        _kv: &PagedHead<Self>,
        _positions: Range<usize>,
        _scale: f32,
        _outs: &mut [&mut [f32]],
    ) -> bool {
        false
    }
    /// Runs a SIMD version of [`values_vec`] (arguments checked); false where there is none.
    fn values_simd(
        _k: &crate::Kernels,
        _weights: &[&[f32]],
        _kv: &PagedHead<Self>,
        _n_kv: usize,
        _dims: Range<usize>,
        _outs: &mut [&mut [f32]],
    ) -> bool {
        false
    }
    /// Runs a SIMD version of [`attend_group`]; returns false where there is none.
    #[allow(clippy::too_many_arguments)]
    fn attend_group_simd(
        _k: &crate::Kernels,
        _queries: &[GroupQuery<'_>],
        _kv: &PagedHead<Self>,
        _scale: f32,
        _scores: &mut [f32],
        _stride: usize,
        _qr: &mut [f32],
        _outs: &mut [&mut [f32]],
    ) -> bool {
        false
    }
}

impl KvElem for f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline(always)]
    fn round(x: f32) -> f32 {
        f16::from_f32(x).to_f32()
    }
    fn attend_simd(
        k: &crate::Kernels,
        q: &[f32],
        kv: &PagedHead<Self>,
        n_kv: usize,
        scale: f32,
        order: Reduce,
        s: &mut HeadScratch<'_>,
        out: &mut [f32],
    ) -> bool {
        k.f16_attention()
            .is_some_and(|a| (a.attend_head)(q, kv, n_kv, scale, order, s, out))
    }

    fn scores_simd(
        k: &crate::Kernels,
        qrs: &[&[f32]],
        kv: &PagedHead<Self>,
        positions: Range<usize>,
        scale: f32,
        outs: &mut [&mut [f32]],
    ) -> bool {
        k.f16_attention()
            .is_some_and(|a| (a.scores_vec)(qrs, kv, positions, scale, outs))
    }

    fn values_simd(
        k: &crate::Kernels,
        weights: &[&[f32]],
        kv: &PagedHead<Self>,
        n_kv: usize,
        dims: Range<usize>,
        outs: &mut [&mut [f32]],
    ) -> bool {
        k.f16_attention()
            .is_some_and(|a| (a.values_vec)(weights, kv, n_kv, dims, outs))
    }

    fn attend_group_simd(
        k: &crate::Kernels,
        queries: &[GroupQuery<'_>],
        kv: &PagedHead<Self>,
        scale: f32,
        scores: &mut [f32],
        stride: usize,
        qr: &mut [f32],
        outs: &mut [&mut [f32]],
    ) -> bool {
        k.f16_attention()
            .is_some_and(|a| (a.attend_group)(queries, kv, scale, scores, stride, qr, outs))
    }
}

impl KvElem for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn round(x: f32) -> f32 {
        x
    }
}

/// Dot product of `q` (already rounded) with `k` in the given order.
#[inline(always)]
fn dot<E: KvElem>(q: &[f32], k: &[E], order: Reduce) -> f32 {
    let n = q.len().min(k.len());
    match order {
        Reduce::Gemm => {
            let mut acc = [0.0f32; LANES];
            let n8 = n / LANES * LANES;
            for i in (0..n8).step_by(LANES) {
                for l in 0..LANES {
                    acc[l] = k[i + l].to_f32().mul_add(q[i + l], acc[l]);
                }
            }
            // llama.cpp only takes this path when n is a multiple of 8; keep a defined tail.
            let mut s = hsum8(&acc);
            for i in n8..n {
                s = k[i].to_f32().mul_add(q[i], s);
            }
            s
        }
        Reduce::Vec => {
            let mut acc = [[0.0f32; LANES]; 4];
            let np = n & !31;
            for i in (0..np).step_by(32) {
                for (j, a) in acc.iter_mut().enumerate() {
                    for l in 0..LANES {
                        let e = i + LANES * j + l;
                        a[l] = k[e].to_f32().mul_add(q[e], a[l]);
                    }
                }
            }
            let mut s = reduce4x8(&acc) as f64;
            for i in np..n {
                s += (k[i].to_f32() * q[i]) as f64;
            }
            s as f32
        }
    }
}

/// Softmax in ggml's arithmetic: exp by [`expf_ggml`] in groups of eight (each group summed
/// with [`hsum8`]) and the leftover with the C library's exp; the total in f64; then one
/// multiply by the rounded reciprocal. Entries equal to negative infinity become zero.
#[inline(always)]
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        x.fill(0.0);
        return;
    }
    let mut sum = 0.0f64;
    let mut groups = x.chunks_exact_mut(LANES);
    for g in &mut groups {
        let mut v = [0.0f32; LANES];
        for (o, e) in v.iter_mut().zip(g.iter()) {
            *o = expf_ggml(*e - max);
        }
        g.copy_from_slice(&v);
        sum += hsum8(&v) as f64;
    }
    for e in groups.into_remainder() {
        *e = (*e - max).exp();
        sum += *e as f64;
    }
    let inv = (1.0 / sum) as f32;
    for e in x.iter_mut() {
        *e *= inv;
    }
}

// ---------------------------------------------------------------------------------------------
// Single-query attention in phases, for long contexts: the scores of any range of positions,
// the softmax of each query, the outputs of any range of dimensions, each phase a separate job
// so that threads share one head's work; several queries of one KV head (grouped-query
// attention) go together, reading each key and value once. Every query's result is
// bit-identical to `attend_head` in `Reduce::Vec` order.

/// `qr = q` rounded to the cache's element type (the first step of attention).
pub fn round_query<E: KvElem>(q: &[f32], qr: &mut [f32]) {
    for (r, &x) in qr.iter_mut().zip(q) {
        *r = E::round(x);
    }
}

/// `outs[i][j] = scale · qrs[i]·K[positions.start + j]` ([`Reduce::Vec`] order) for queries
/// `qrs` (rounded by [`round_query`], `head_dim` long) of one KV head.
///
/// # Panics
/// If `qrs` and `outs` differ in count or a slice is too short (a caller's bug).
pub fn scores_vec<E: KvElem>(
    k: &crate::Kernels,
    qrs: &[&[f32]],
    kv: &PagedHead<E>,
    positions: Range<usize>,
    scale: f32,
    outs: &mut [&mut [f32]],
) {
    let (hd, n) = (kv.head_dim, positions.len());
    let fits = qrs.len() == outs.len()
        && qrs.iter().all(|q| q.len() >= hd)
        && outs.iter().all(|o| o.len() >= n);
    assert!(fits, "scores_vec: queries or outputs do not fit the head");
    // The SIMD kernels need every position's block listed; the loop below scores positions
    // without a block as masked.
    let covered = positions.end <= kv.blocks.len() * kv.block_size;
    if covered && E::scores_simd(k, qrs, kv, positions.clone(), scale, outs) {
        return;
    }
    for (q, out) in qrs.iter().zip(outs.iter_mut()) {
        for (p, o) in positions.clone().zip(out.iter_mut()) {
            *o = match kv.start(p) {
                Some(start) => {
                    let at = start + (p % kv.block_size) * hd;
                    match kv.keys.get(at..at + hd) {
                        Some(key) => dot(&q[..hd], key, Reduce::Vec) * scale,
                        None => f32::NEG_INFINITY,
                    }
                }
                None => f32::NEG_INFINITY,
            };
        }
    }
}

/// Turns the first `n_kv` scores of `x` into attention weights: the rest up to a multiple of
/// eight masked, softmax, each weight rounded to the cache's element type.
///
/// # Panics
/// If `x` is shorter than `n_kv` rounded up to eight (a caller's bug).
pub fn softmax_weights<E: KvElem>(k: &crate::Kernels, x: &mut [f32], n_kv: usize) {
    let padded = n_kv.div_ceil(LANES) * LANES;
    let x = &mut x[..padded];
    x[n_kv..].fill(f32::NEG_INFINITY);
    softmax_with(k, x);
    for w in x.iter_mut() {
        *w = E::round(*w);
    }
}

/// `outs[i][j]` = dimension `dims.start + j` of `Σ_p weights[i][p] · V[p]` over the first
/// `n_kv` positions ([`Reduce::Vec`] order), for weights from [`softmax_weights`] (each at
/// least `n_kv` rounded up to eight long).
///
/// # Panics
/// If `weights` and `outs` differ in count, a slice is too short or `dims` is not inside
/// the head (a caller's bug).
pub fn values_vec<E: KvElem>(
    k: &crate::Kernels,
    weights: &[&[f32]],
    kv: &PagedHead<E>,
    n_kv: usize,
    dims: Range<usize>,
    outs: &mut [&mut [f32]],
) {
    let (bs, padded) = (kv.block_size, n_kv.div_ceil(LANES) * LANES);
    let fits = weights.len() == outs.len()
        && weights.iter().all(|w| w.len() >= padded)
        && outs.iter().all(|o| o.len() >= dims.len())
        && dims.end <= kv.head_dim;
    assert!(fits, "values_vec: weights or outputs do not fit the head");
    // As in `scores_vec`: the loop below stops at the first position without a block.
    let covered = n_kv <= kv.blocks.len() * bs;
    if covered && E::values_simd(k, weights, kv, n_kv, dims.clone(), outs) {
        return;
    }
    const L: usize = 4 * LANES;
    for (w, out) in weights.iter().zip(outs.iter_mut()) {
        for (d, o) in dims.clone().zip(out.iter_mut()) {
            let mut acc = [[0.0f32; LANES]; 4];
            for (p, &wp) in w[..n_kv].iter().enumerate() {
                let Some(v) = kv.start(p).and_then(|s| kv.values.get(s + d * bs + p % bs)) else {
                    break;
                };
                let a = &mut acc[(p % L) / LANES][p % LANES];
                *a = v.to_f32().mul_add(wp, *a);
            }
            *o = reduce4x8(&acc);
        }
    }
}

/// Several queries of one KV head (same sequence), batched order: `out[i]` as
/// [`attend_head`] with [`Reduce::Gemm`] would compute for `queries[i]` over its positions
/// `first..n_kv` (the ones before `first` take no weight: exactly what a -inf mask gives, as
/// in llama.cpp's masked softmax), sharing key and value conversions where a SIMD path can.
/// `scores` holds `queries.len()` rows of `stride` floats (`stride` ≥ the largest `n_kv`
/// rounded up to 8) and `qr` as many rows of head_dim; `acc` is scratch for the scalar path
/// (32 × head_dim).
#[allow(clippy::too_many_arguments)]
pub fn attend_group<E: KvElem>(
    k: &crate::Kernels,
    queries: &[GroupQuery<'_>],
    kv: &PagedHead<E>,
    scale: f32,
    scores: &mut [f32],
    stride: usize,
    qr: &mut [f32],
    acc: &mut [f32],
    outs: &mut [&mut [f32]],
) {
    let hd = kv.head_dim;
    if E::attend_group_simd(k, queries, kv, scale, scores, stride, qr, outs) {
        return;
    }
    for (i, g) in queries.iter().enumerate() {
        let s = HeadScratch {
            scores: &mut scores[i * stride..(i + 1) * stride],
            acc: &mut *acc,
            qr: &mut qr[..hd],
        };
        let out = &mut *outs[i];
        let (q, window) = (g.q, g.first..g.n_kv);
        #[cfg(target_arch = "x86_64")]
        if k.has_fma() {
            // SAFETY: `has_fma` says the CPU supports FMA.
            unsafe { attend_head_fma(q, kv, window, scale, Reduce::Gemm, s, out) };
            continue;
        }
        attend_head_impl(q, kv, window, scale, Reduce::Gemm, s, out);
    }
}

/// [`softmax`] on the fastest path `k` offers (bit-identical results).
pub fn softmax_with(k: &crate::Kernels, x: &mut [f32]) {
    match k.softmax8() {
        Some(simd) if x.len().is_multiple_of(LANES) => simd(x),
        _ => softmax(x),
    }
}

/// `out = softmax(scale · q·Kᵀ) · V` over the first `n_kv` positions of one KV head.
#[allow(clippy::too_many_arguments)]
pub fn attend_head<E: KvElem>(
    k: &crate::Kernels,
    q: &[f32],
    kv: &PagedHead<E>,
    n_kv: usize,
    scale: f32,
    order: Reduce,
    s: HeadScratch<'_>,
    out: &mut [f32],
) {
    let mut s = s;
    if E::attend_simd(k, q, kv, n_kv, scale, order, &mut s, out) {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if k.has_fma() {
        // SAFETY: `has_fma` says the CPU supports FMA.
        unsafe { attend_head_fma(q, kv, 0..n_kv, scale, order, s, out) };
        return;
    }
    let _ = k;
    attend_head_impl(q, kv, 0..n_kv, scale, order, s, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn attend_head_fma<E: KvElem>(
    q: &[f32],
    kv: &PagedHead<E>,
    window: Range<usize>,
    scale: f32,
    order: Reduce,
    s: HeadScratch<'_>,
    out: &mut [f32],
) {
    attend_head_impl(q, kv, window, scale, order, s, out);
}

#[inline(always)]
fn attend_head_impl<E: KvElem>(
    q: &[f32],
    kv: &PagedHead<E>,
    window: Range<usize>,
    scale: f32,
    order: Reduce,
    s: HeadScratch<'_>,
    out: &mut [f32],
) {
    let (first, n_kv) = (window.start, window.end);
    let hd = kv.head_dim;
    let bs = kv.block_size;
    let qr = &mut s.qr[..hd];
    round_query::<E>(q, qr);
    let padded = n_kv.div_ceil(LANES) * LANES;
    let scores = &mut s.scores[..padded];
    for (p, sc) in scores.iter_mut().enumerate() {
        *sc = match (first <= p && p < n_kv).then(|| kv.start(p)).flatten() {
            Some(start) => {
                let at = start + (p % bs) * hd;
                dot(qr, &kv.keys[at..at + hd], order) * scale
            }
            None => f32::NEG_INFINITY,
        };
    }
    softmax(scores);
    // Values: accumulate per output dimension in the order's lanes.
    let lanes = match order {
        Reduce::Gemm => LANES,
        Reduce::Vec => 4 * LANES,
    };
    let acc = &mut s.acc[..hd * lanes];
    acc.fill(0.0);
    for (p, &w) in scores[..n_kv].iter().enumerate() {
        let Some(start) = kv.start(p) else { break };
        let w = E::round(w);
        let lane = p % lanes;
        let slot = p % bs;
        for d in 0..hd {
            let v = kv.values[start + d * bs + slot].to_f32();
            let a = &mut acc[d * lanes + lane];
            *a = v.mul_add(w, *a);
        }
    }
    for (d, o) in out[..hd].iter_mut().enumerate() {
        let a = &acc[d * lanes..(d + 1) * lanes];
        *o = match order {
            Reduce::Gemm => hsum8(a.try_into().unwrap_or(&[0.0; LANES])),
            Reduce::Vec => {
                let mut four = [[0.0f32; LANES]; 4];
                for (j, f) in four.iter_mut().enumerate() {
                    f.copy_from_slice(&a[j * LANES..(j + 1) * LANES]);
                }
                reduce4x8(&four)
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain f64 attention to compare against.
    fn naive(q: &[f32], k: &[Vec<f32>], v: &[Vec<f32>], scale: f32) -> Vec<f32> {
        let s: Vec<f64> = k
            .iter()
            .map(|kr| {
                kr.iter()
                    .zip(q)
                    .map(|(a, b)| (*a as f64) * (*b as f64))
                    .sum::<f64>()
                    * scale as f64
            })
            .collect();
        let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
        let z: f64 = e.iter().sum();
        (0..q.len())
            .map(|d| (e.iter().zip(v).map(|(p, vr)| p * vr[d] as f64).sum::<f64>() / z) as f32)
            .collect()
    }

    #[test]
    fn paged_attention_matches_a_plain_one() {
        let (hd, bs, n_kv) = (16, 8, 21);
        let blocks = [2u32, 0, 1];
        let stride = bs * hd;
        let mut keys = vec![0.0f32; 3 * stride];
        let mut values = vec![0.0f32; 3 * stride];
        let mut krows = Vec::new();
        let mut vrows = Vec::new();
        for p in 0..n_kv {
            let kr: Vec<f32> = (0..hd)
                .map(|d| ((p * 7 + d * 3) % 11) as f32 * 0.1 - 0.5)
                .collect();
            let vr: Vec<f32> = (0..hd)
                .map(|d| ((p * 5 + d) % 13) as f32 * 0.2 - 1.0)
                .collect();
            let b = blocks[p / bs] as usize;
            for d in 0..hd {
                keys[b * stride + (p % bs) * hd + d] = kr[d];
                values[b * stride + d * bs + p % bs] = vr[d];
            }
            krows.push(kr);
            vrows.push(vr);
        }
        let q: Vec<f32> = (0..hd).map(|d| (d as f32 * 0.37).sin()).collect();
        let want = naive(&q, &krows, &vrows, 0.25);
        for order in [Reduce::Gemm, Reduce::Vec] {
            let kv = PagedHead {
                keys: &keys,
                values: &values,
                blocks: &blocks,
                base: 0,
                block_stride: stride,
                block_size: bs,
                head_dim: hd,
            };
            let (mut sc, mut acc, mut qr) = (vec![0.0; 32], vec![0.0; 32 * hd], vec![0.0; hd]);
            let mut out = vec![0.0; hd];
            attend_head(
                &crate::Kernels::scalar(),
                &q,
                &kv,
                n_kv,
                0.25,
                order,
                HeadScratch {
                    scores: &mut sc,
                    acc: &mut acc,
                    qr: &mut qr,
                },
                &mut out,
            );
            for d in 0..hd {
                assert!(
                    (out[d] - want[d]).abs() < 1e-5,
                    "{order:?} dim {d}: {} vs {}",
                    out[d],
                    want[d]
                );
            }
        }
    }

    #[test]
    fn softmax_sums_to_one_and_masks() {
        let mut x = [
            1.0f32,
            2.0,
            f32::NEG_INFINITY,
            0.5,
            3.0,
            1.0,
            1.0,
            1.0,
            2.0,
            0.0,
        ];
        softmax(&mut x);
        assert_eq!(x[2], 0.0);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }
}
