//! Attention over an f16 paged cache and the element-wise pieces it needs (exp, SwiGLU,
//! softmax), eight lanes at a time, in the arithmetic of `crate::attention`.

#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use super::*;
use crate::paged::{HeadScratch, PagedHead, Reduce};

// ---------------------------------------------------------------------------------------------
// Attention over an f16 paged cache, and the element-wise pieces it needs. Same arithmetic as
// `crate::attention` (which is the definition), eight lanes at a time.

/// ggml's `ggml_v_expf`, eight lanes (see `crate::lanes::expf_ggml`).
#[inline(always)]
pub(crate) unsafe fn expf8(x: __m256) -> __m256 {
    macro_rules! c {
        ($bits:expr) => {
            _mm256_set1_ps(f32::from_bits($bits))
        };
    }
    let r = _mm256_set1_ps(12_582_912.0);
    let z = _mm256_fmadd_ps(x, c!(0x3fb8_aa3b), r);
    let n = _mm256_sub_ps(z, r);
    let b = _mm256_fnmadd_ps(n, c!(0x35bf_be8e), _mm256_fnmadd_ps(n, c!(0x3f31_7200), x));
    let e = _mm256_slli_epi32(_mm256_castps_si256(z), 23);
    let k = _mm256_castsi256_ps(_mm256_add_epi32(
        e,
        _mm256_castps_si256(_mm256_set1_ps(1.0)),
    ));
    let abs_n = _mm256_andnot_ps(_mm256_set1_ps(-0.0), n);
    let cmask = _mm256_castps_si256(_mm256_cmp_ps(abs_n, _mm256_set1_ps(126.0), _CMP_GT_OQ));
    let u = _mm256_mul_ps(b, b);
    let j = _mm256_fmadd_ps(
        _mm256_fmadd_ps(
            _mm256_fmadd_ps(c!(0x3c07_2010), b, c!(0x3d2b_9f17)),
            u,
            _mm256_fmadd_ps(c!(0x3e2a_af33), b, c!(0x3eff_fedb)),
        ),
        u,
        _mm256_mul_ps(c!(0x3f7f_fff6), b),
    );
    if _mm256_movemask_ps(_mm256_castsi256_ps(cmask)) == 0 {
        return _mm256_fmadd_ps(j, k, k);
    }
    let g = _mm256_and_si256(
        _mm256_castps_si256(_mm256_cmp_ps(n, _mm256_setzero_ps(), _CMP_LE_OQ)),
        _mm256_set1_epi32(0x8200_0000u32 as i32),
    );
    let s1 = _mm256_castsi256_ps(_mm256_add_epi32(g, _mm256_set1_epi32(0x7f00_0000)));
    let s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, g));
    let dmask = _mm256_castps_si256(_mm256_cmp_ps(abs_n, _mm256_set1_ps(192.0), _CMP_GT_OQ));
    let cm = _mm256_castsi256_ps(cmask);
    let dm = _mm256_castsi256_ps(dmask);
    _mm256_or_ps(
        _mm256_and_ps(dm, _mm256_mul_ps(s1, s1)),
        _mm256_andnot_ps(
            dm,
            _mm256_or_ps(
                _mm256_and_ps(cm, _mm256_mul_ps(_mm256_fmadd_ps(s2, j, s2), s1)),
                _mm256_andnot_ps(cm, _mm256_fmadd_ps(k, j, k)),
            ),
        ),
    )
}

/// `gate[i] = silu(gate[i]) * up[i]` for the first `n / 8 * 8` elements (`n` the shorter
/// length), in the arithmetic of [`crate::lanes::silu_ggml`]; returns how many were done.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn swiglu8(gate: &mut [f32], up: &[f32]) -> usize {
    let n8 = gate.len().min(up.len()) / 8 * 8;
    let (g, u) = (gate.as_mut_ptr(), up.as_ptr());
    let one = _mm256_set1_ps(1.0);
    for i in (0..n8).step_by(8) {
        let x = _mm256_loadu_ps(g.add(i));
        let e = expf8(_mm256_sub_ps(_mm256_setzero_ps(), x));
        let silu = _mm256_div_ps(x, _mm256_add_ps(one, e));
        _mm256_storeu_ps(g.add(i), _mm256_mul_ps(silu, _mm256_loadu_ps(u.add(i))));
    }
    n8
}

/// `x` rounded to f16 and back.
#[inline(always)]
pub(super) unsafe fn round_f16(x: __m256) -> __m256 {
    _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x))
}

#[inline(always)]
pub(super) unsafe fn load_h8(p: *const half::f16) -> __m256 {
    _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
}

/// ggml's four-accumulator reduction (`GGML_F32x8_REDUCE`).
#[inline(always)]
pub(crate) unsafe fn reduce4(s: &[__m256; 4]) -> f32 {
    let x = _mm256_add_ps(_mm256_add_ps(s[0], s[2]), _mm256_add_ps(s[1], s[3]));
    let t0 = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    let t1 = _mm_hadd_ps(t0, t0);
    _mm_cvtss_f32(_mm_hadd_ps(t1, t1))
}

/// Softmax of `x` (a multiple of eight long) in ggml's arithmetic.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn softmax8(x: &mut [f32]) {
    let n = x.len() / 8 * 8;
    let p = x.as_mut_ptr();
    let mut mx = _mm256_set1_ps(f32::NEG_INFINITY);
    for i in (0..n).step_by(8) {
        mx = _mm256_max_ps(mx, _mm256_loadu_ps(p.add(i)));
    }
    let mut m = [0.0f32; 8];
    _mm256_storeu_ps(m.as_mut_ptr(), mx);
    let max = m.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        x.fill(0.0);
        return;
    }
    let mv = _mm256_set1_ps(max);
    let mut sum = 0.0f64;
    for i in (0..n).step_by(8) {
        let v = expf8(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), mv));
        _mm256_storeu_ps(p.add(i), v);
        sum += hsum(v) as f64;
    }
    let inv = _mm256_set1_ps((1.0 / sum) as f32);
    for i in (0..n).step_by(8) {
        _mm256_storeu_ps(p.add(i), _mm256_mul_ps(_mm256_loadu_ps(p.add(i)), inv));
    }
}

/// [`crate::attention::attend_head`] for an f16 cache whose head size and block size are
/// multiples of eight.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn attend_head_f16(
    q: &[f32],
    kv: &PagedHead<half::f16>,
    n_kv: usize,
    scale: f32,
    order: Reduce,
    s: HeadScratch<'_>,
    out: &mut [f32],
) {
    let (hd, bs) = (kv.head_dim, kv.block_size);
    let qr = s.qr.as_mut_ptr();
    for c in (0..hd).step_by(8) {
        _mm256_storeu_ps(qr.add(c), round_f16(_mm256_loadu_ps(q.as_ptr().add(c))));
    }
    // Block sizes here are powers of two (checked by the caller): shifts, not divisions.
    let (shift, mask) = (bs.trailing_zeros(), bs - 1);
    let start = |p: usize| kv.base + kv.blocks[p >> shift] as usize * kv.block_stride;
    let keys = kv.keys.as_ptr();
    let values = kv.values.as_ptr();
    let padded = n_kv.div_ceil(8) * 8;
    let sc = &mut s.scores[..padded];
    match order {
        Reduce::Gemm => {
            for (p, o) in sc[..n_kv].iter_mut().enumerate() {
                let k = keys.add(start(p) + (p & mask) * hd);
                let mut acc = _mm256_setzero_ps();
                for c in (0..hd).step_by(8) {
                    acc = _mm256_fmadd_ps(load_h8(k.add(c)), _mm256_loadu_ps(qr.add(c)), acc);
                }
                *o = hsum(acc) * scale;
            }
        }
        Reduce::Vec => scores_n::<1>([qr as *const f32], kv, 0..n_kv, scale, [sc.as_mut_ptr()]),
    }
    for v in sc[n_kv..].iter_mut() {
        *v = f32::NEG_INFINITY;
    }
    softmax8(sc);
    let w = sc.as_mut_ptr();
    for i in (0..padded).step_by(8) {
        _mm256_storeu_ps(w.add(i), round_f16(_mm256_loadu_ps(w.add(i))));
    }
    // Several dimensions at a time, so that independent accumulator chains fill the FMA units
    // (one dimension alone is a single chain of dependent adds); each dimension's sum is
    // exactly the one-at-a-time sum.
    let groups = padded / 8;
    let o = out.as_mut_ptr();
    match order {
        Reduce::Gemm => {
            for d0 in (0..hd).step_by(8) {
                let mut acc = [_mm256_setzero_ps(); 8];
                for g in 0..groups {
                    let p = 8 * g;
                    let wv = _mm256_loadu_ps(w.add(p));
                    let base = values.add(start(p) + d0 * bs + (p & mask));
                    for (j, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(load_h8(base.add(j * bs)), wv, *a);
                    }
                }
                _mm256_storeu_ps(o.add(d0), hsum_each(&acc));
            }
        }
        // Head sizes here are multiples of eight: two dimensions a pass cover them.
        Reduce::Vec => values_n::<1, 2>([w], kv, n_kv, 0..hd, 0, [o]),
    }
}

/// [`crate::attention::scores_vec`] for an f16 cache (bounds checked by the caller, block
/// shape by `PagedHead::simd_layout`): up to four queries per pass over the keys, each key
/// converted once; every score in exactly [`attend_head_f16`]'s `Reduce::Vec` arithmetic.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn scores_vec_f16(
    qrs: &[&[f32]],
    kv: &PagedHead<half::f16>,
    positions: std::ops::Range<usize>,
    scale: f32,
    outs: &mut [&mut [f32]],
) {
    for (qc, oc) in qrs.chunks(4).zip(outs.chunks_mut(4)) {
        let (q, o) = pointers4(qc, oc);
        let r = positions.clone();
        match qc.len() {
            1 => scores_n::<1>(first(q), kv, r, scale, first(o)),
            2 => scores_n::<2>(first(q), kv, r, scale, first(o)),
            3 => scores_n::<3>(first(q), kv, r, scale, first(o)),
            _ => scores_n::<4>(q, kv, r, scale, o),
        }
    }
}

/// Up to four inputs' and outputs' pointers (null past the end).
#[inline(always)]
pub(super) fn pointers4(
    ins: &[&[f32]],
    outs: &mut [&mut [f32]],
) -> ([*const f32; 4], [*mut f32; 4]) {
    let mut i = [std::ptr::null::<f32>(); 4];
    let mut o = [std::ptr::null_mut::<f32>(); 4];
    for (p, x) in i.iter_mut().zip(ins) {
        *p = x.as_ptr();
    }
    for (p, x) in o.iter_mut().zip(outs.iter_mut()) {
        *p = x.as_mut_ptr();
    }
    (i, o)
}

/// The first `N` of four.
#[inline(always)]
pub(super) fn first<T: Copy, const N: usize>(a: [T; 4]) -> [T; N] {
    std::array::from_fn(|i| a[i])
}

#[inline(always)]
pub(super) unsafe fn scores_n<const N: usize>(
    q: [*const f32; N],
    kv: &PagedHead<half::f16>,
    positions: std::ops::Range<usize>,
    scale: f32,
    o: [*mut f32; N],
) {
    let (hd, bs) = (kv.head_dim, kv.block_size);
    let (shift, mask) = (bs.trailing_zeros(), bs - 1);
    let keys = kv.keys.as_ptr();
    let np = hd & !31;
    let p0 = positions.start;
    for p in positions {
        let start = kv.base + kv.blocks[p >> shift] as usize * kv.block_stride;
        let k = keys.add(start + (p & mask) * hd);
        let mut acc = [[_mm256_setzero_ps(); 4]; N];
        for i in (0..np).step_by(32) {
            for j in 0..4 {
                let e = i + 8 * j;
                let kx = load_h8(k.add(e));
                for n in 0..N {
                    acc[n][j] = _mm256_fmadd_ps(kx, _mm256_loadu_ps(q[n].add(e)), acc[n][j]);
                }
            }
        }
        for n in 0..N {
            let mut sum = reduce4(&acc[n]) as f64;
            for i in np..hd {
                sum += ((*k.add(i)).to_f32() * *q[n].add(i)) as f64;
            }
            *o[n].add(p - p0) = (sum as f32) * scale;
        }
    }
}

/// [`crate::attention::values_vec`] for an f16 cache (bounds checked by the caller): up to
/// four queries per pass over the values, each value vector converted once; every output in
/// exactly [`attend_head_f16`]'s `Reduce::Vec` arithmetic.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn values_vec_f16(
    weights: &[&[f32]],
    kv: &PagedHead<half::f16>,
    n_kv: usize,
    dims: std::ops::Range<usize>,
    outs: &mut [&mut [f32]],
) {
    for (wc, oc) in weights.chunks(4).zip(outs.chunks_mut(4)) {
        let (w, o) = pointers4(wc, oc);
        let (d, at) = (dims.clone(), dims.start);
        match wc.len() {
            // One query: two dimensions a pass, for eight independent chains.
            1 => {
                let pairs = d.start..d.start + d.len() / 2 * 2;
                values_n::<1, 2>(first(w), kv, n_kv, pairs.clone(), at, first(o));
                values_n::<1, 1>(first(w), kv, n_kv, pairs.end..d.end, at, first(o));
            }
            2 => values_n::<2, 1>(first(w), kv, n_kv, d, at, first(o)),
            3 => values_n::<3, 1>(first(w), kv, n_kv, d, at, first(o)),
            _ => values_n::<4, 1>(w, kv, n_kv, d, at, o),
        }
    }
}

/// Dimensions `dims` (a multiple of `D` long) of `N` queries' outputs; output `d` of query
/// `n` goes to `o[n] + (d - at)`.
#[inline(always)]
pub(super) unsafe fn values_n<const N: usize, const D: usize>(
    w: [*const f32; N],
    kv: &PagedHead<half::f16>,
    n_kv: usize,
    dims: std::ops::Range<usize>,
    at: usize,
    o: [*mut f32; N],
) {
    let bs = kv.block_size;
    let (shift, mask) = (bs.trailing_zeros(), bs - 1);
    let values = kv.values.as_ptr();
    let groups = n_kv.div_ceil(8);
    for d0 in dims.step_by(D) {
        let mut acc = [[[_mm256_setzero_ps(); 4]; D]; N];
        for g in 0..groups {
            let p = 8 * g;
            let start = kv.base + kv.blocks[p >> shift] as usize * kv.block_stride;
            let base = values.add(start + d0 * bs + (p & mask));
            let v: [__m256; D] = arr!(D, _mm256_setzero_ps(), |j| load_h8(base.add(j * bs)));
            for n in 0..N {
                let wv = _mm256_loadu_ps(w[n].add(p));
                for j in 0..D {
                    acc[n][j][g % 4] = _mm256_fmadd_ps(v[j], wv, acc[n][j][g % 4]);
                }
            }
        }
        for n in 0..N {
            for j in 0..D {
                *o[n].add(d0 + j - at) = reduce4(&acc[n][j]);
            }
        }
    }
}

/// Up to four queries attending to the same f16 KV head (one head group of a batch), each to
/// its positions `first[i]..n_kv[i]`, in the batched (`Gemm`) order: each key and value vector is converted once for all of them. Per
/// query, exactly the arithmetic of [`attend_head_f16`].
///
/// `scores` holds 4 × `stride` floats (`stride` ≥ max `n_kv` rounded up to 8), `qr` 4 × head_dim.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn attend_group4_f16(
    qs: [&[f32]; 4],
    (first, n_kv): ([usize; 4], [usize; 4]),
    nq: usize,
    kv: &PagedHead<half::f16>,
    scale: f32,
    scores: &mut [f32],
    stride: usize,
    qr: &mut [f32],
    outs: [*mut f32; 4],
) {
    let (hd, bs) = (kv.head_dim, kv.block_size);
    let n_max = (0..nq).map(|i| n_kv[i]).max().unwrap_or(0);
    let padded = n_max.div_ceil(8) * 8;
    let qp = qr.as_mut_ptr();
    for i in 0..nq {
        for c in (0..hd).step_by(8) {
            _mm256_storeu_ps(
                qp.add(i * hd + c),
                round_f16(_mm256_loadu_ps(qs[i].as_ptr().add(c))),
            );
        }
    }
    // Block sizes here are powers of two (checked by the caller): shifts, not divisions.
    let (shift, mask) = (bs.trailing_zeros(), bs - 1);
    let start = |p: usize| kv.base + kv.blocks[p >> shift] as usize * kv.block_stride;
    let keys = kv.keys.as_ptr();
    let values = kv.values.as_ptr();
    let sp = scores.as_mut_ptr();
    // Scores, two keys at a time: each key converted once and dotted with all four queries
    // (8 accumulators, one transposed reduction). Absent queries reuse query 0's row and are
    // not stored; an odd last key is paired with itself (its second copy lands in the padding,
    // which is overwritten below).
    let qrow: [*const f32; 4] = arr!(4, qp as *const f32, |i| qp.add(i.min(nq.max(1) - 1) * hd));
    let mut p = 0;
    while p < n_max {
        let k0 = keys.add(start(p) + (p & mask) * hd);
        let k1 = if p + 1 < n_max {
            keys.add(start(p + 1) + ((p + 1) & mask) * hd)
        } else {
            k0
        };
        let mut acc = [_mm256_setzero_ps(); 8];
        for c in (0..hd).step_by(8) {
            let (a, b) = (load_h8(k0.add(c)), load_h8(k1.add(c)));
            for i in 0..4 {
                let qv = _mm256_loadu_ps(qrow[i].add(c));
                acc[2 * i] = _mm256_fmadd_ps(a, qv, acc[2 * i]);
                acc[2 * i + 1] = _mm256_fmadd_ps(b, qv, acc[2 * i + 1]);
            }
        }
        let sums = _mm256_mul_ps(hsum_each(&acc), _mm256_set1_ps(scale));
        store_pairs(sums, nq, |i| sp.add(i * stride + p));
        p += 2;
    }
    for i in 0..nq {
        let row = std::slice::from_raw_parts_mut(sp.add(i * stride), padded);
        for v in row[n_kv[i].min(padded)..].iter_mut() {
            *v = f32::NEG_INFINITY;
        }
        // Positions before the query's window take no weight (first ≤ n_kv).
        row[..first[i].min(padded)].fill(f32::NEG_INFINITY);
        softmax8(row);
        for g in (0..padded).step_by(8) {
            let w = sp.add(i * stride + g);
            _mm256_storeu_ps(w, round_f16(_mm256_loadu_ps(w)));
        }
    }
    // Values, two dimensions at a time: each 8-position slice of a dimension converted once,
    // each slice of probabilities loaded once for both dimensions.
    let groups = padded / 8;
    let prow: [*const f32; 4] = arr!(
        4,
        sp as *const f32,
        |i| sp.add(i.min(nq.max(1) - 1) * stride) as *const f32
    );
    for d in (0..hd).step_by(2) {
        let mut acc = [_mm256_setzero_ps(); 8];
        for g in 0..groups {
            let p = 8 * g;
            let base = values.add(start(p) + d * bs + (p & mask));
            let (a, b) = (load_h8(base), load_h8(base.add(bs)));
            for i in 0..4 {
                let w = _mm256_loadu_ps(prow[i].add(p));
                acc[2 * i] = _mm256_fmadd_ps(a, w, acc[2 * i]);
                acc[2 * i + 1] = _mm256_fmadd_ps(b, w, acc[2 * i + 1]);
            }
        }
        store_pairs(hsum_each(&acc), nq, |i| outs[i].add(d));
    }
}

/// `[hsum(a[0]), …, hsum(a[7])]`: eight horizontal sums at once, each in exactly [`hsum`]'s
/// order (`((x0+x4) + (x2+x6)) + ((x1+x5) + (x3+x7))`).
#[inline(always)]
pub(crate) unsafe fn hsum_each(a: &[__m256; 8]) -> __m256 {
    // Lanes j and j+4 of each vector: s = [s(a_i) | s(a_i+4)].
    let s = |i: usize| {
        _mm256_add_ps(
            _mm256_permute2f128_ps::<0x20>(a[i], a[i + 4]),
            _mm256_permute2f128_ps::<0x31>(a[i], a[i + 4]),
        )
    };
    let (s04, s15, s26, s37) = (s(0), s(1), s(2), s(3));
    // (s0+s2, s1+s3) of two vectors per 128-bit half.
    let u = |x: __m256, y: __m256| {
        let (xd, yd) = (_mm256_castps_pd(x), _mm256_castps_pd(y));
        _mm256_add_ps(
            _mm256_castpd_ps(_mm256_unpacklo_pd(xd, yd)),
            _mm256_castpd_ps(_mm256_unpackhi_pd(xd, yd)),
        )
    };
    let (u01, u23) = (u(s04, s15), u(s26, s37));
    _mm256_add_ps(
        _mm256_shuffle_ps::<0x88>(u01, u23),
        _mm256_shuffle_ps::<0xDD>(u01, u23),
    )
}

/// Stores lanes `2i, 2i+1` of `v` at `at(i)` for each `i < n` (n ≤ 4), as 8-byte integer
/// stores straight from the register halves (no trip through the stack).
#[inline(always)]
pub(super) unsafe fn store_pairs(v: __m256, n: usize, at: impl Fn(usize) -> *mut f32) {
    let lo = _mm_castps_si128(_mm256_castps256_ps128(v));
    let hi = _mm_castps_si128(_mm256_extractf128_ps::<1>(v));
    let put = |i: usize, bits: i64| (at(i) as *mut i64).write_unaligned(bits);
    if n > 0 {
        put(0, _mm_cvtsi128_si64(lo));
    }
    if n > 1 {
        put(1, _mm_extract_epi64::<1>(lo));
    }
    if n > 2 {
        put(2, _mm_cvtsi128_si64(hi));
    }
    if n > 3 {
        put(3, _mm_extract_epi64::<1>(hi));
    }
}
