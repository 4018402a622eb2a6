//! The tile steps of flash attention (`crate::flash`) with AVX-512: two queries side by side
//! in each 512-bit register, so every key or value row loaded serves two queries and the 32
//! registers hold the partial sums of four queries at once.
//!
//! A 512-bit register here is two of the AVX2 steps' 8-lane registers, one query in each half:
//! every lane computes the same fused multiply-adds in the same order as the AVX2 (and the
//! scalar) tile steps, and the halves are reduced by the same horizontal sums, so the bits are
//! those of [`crate::flash_tiles::Scalar`]. What is not paired (a lone query, shapes outside
//! the fast paths, the softmax steps) runs the AVX2 tile steps.

#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use half::f16;

use super::avx2::{hsum_each, Avx2};
use crate::flash_tiles::{
    accumulate_each, group_fits, scores_each, split_impl, FlashParams, FlashQuery, PagedRows,
    TileOps,
};

/// The widest head (in floats) whose query pairs [`Avx512::scores_group`] packs on its stack.
const MAX_HEAD: usize = 256;

/// AVX-512 F/VL (with AVX2/FMA/F16C) tile steps. Only [`flash_split`] makes one, inside a
/// function compiled for those features and called where the CPU has them.
#[derive(Clone, Copy)]
struct Avx512(());

impl Avx512 {
    fn avx2(self) -> Avx2 {
        Avx2(())
    }
}

/// `[lo | hi]`: two 8-lane registers as one.
#[inline(always)]
unsafe fn join(lo: __m256, hi: __m256) -> __m512 {
    let lo = _mm512_castpd256_pd512(_mm256_castps_pd(lo));
    _mm512_castpd_ps(_mm512_insertf64x4::<1>(lo, _mm256_castps_pd(hi)))
}

/// Eight floats from `p`, in both halves.
#[inline(always)]
unsafe fn both(p: *const f32) -> __m512 {
    _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(_mm256_loadu_ps(p))))
}

/// The upper eight lanes.
#[inline(always)]
unsafe fn high(x: __m512) -> __m256 {
    _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(x)))
}

/// Scores of `P` query pairs against keys `0..n8` (a multiple of 8) of `k` (rows of `hd`, a
/// multiple of 8 up to [`MAX_HEAD`]): `out[g·stride + j]` for query g of `qs` (`2·P` of them).
///
/// # Safety
/// AVX-512 F/VL and FMA; `qs` holds `2·P` queries of at least `hd` floats, `k` at least
/// `n8·hd` floats, `out` rows `g·stride..g·stride + n8` for every g.
#[inline(always)]
unsafe fn scores_pairs<const P: usize>(
    qs: &[FlashQuery<'_>],
    k: &[f32],
    hd: usize,
    n8: usize,
    out: &mut [f32],
    stride: usize,
) {
    let chunks = hd / 8;
    // The first `chunks` entries of each pair are written here and only they are read.
    let mut qp = [[MaybeUninit::<__m512>::uninit(); MAX_HEAD / 8]; P];
    for (p, pair) in qp.iter_mut().enumerate() {
        let (a, b) = (qs[2 * p].q.as_ptr(), qs[2 * p + 1].q.as_ptr());
        for (c, x) in pair.iter_mut().enumerate().take(chunks) {
            x.write(join(
                _mm256_loadu_ps(a.add(8 * c)),
                _mm256_loadu_ps(b.add(8 * c)),
            ));
        }
    }
    let kp = k.as_ptr();
    let mut j = 0;
    while j < n8 {
        let mut acc = [[_mm512_setzero_ps(); 8]; P];
        for c in 0..chunks {
            for r in 0..8 {
                let kv = both(kp.add((j + r) * hd + 8 * c));
                for p in 0..P {
                    acc[p][r] = _mm512_fmadd_ps(kv, qp[p][c].assume_init(), acc[p][r]);
                }
            }
        }
        for (p, a) in acc.iter().enumerate() {
            let lo: [__m256; 8] = std::array::from_fn(|r| _mm512_castps512_ps256(a[r]));
            let hi: [__m256; 8] = std::array::from_fn(|r| high(a[r]));
            let o = out.as_mut_ptr();
            _mm256_storeu_ps(o.add(2 * p * stride + j), hsum_each(&lo));
            _mm256_storeu_ps(o.add((2 * p + 1) * stride + j), hsum_each(&hi));
        }
        j += 8;
    }
}

/// Values of `P` query pairs: the 64 dimensions from `d0` of state g's values
/// (`states[g·sl + 2 + d0..]`) take `w[g·stride + j] · v[j·hd + d0..]` for keys j < n, in order.
///
/// # Safety
/// AVX-512 F/VL and FMA; `states` holds `2·P` states of `sl ≥ 2 + hd` floats, `w` rows
/// of `n` weights at `g·stride`, `v` at least `n·hd` floats, `d0 + 64 ≤ hd`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn values_pairs<const P: usize>(
    states: &mut [f32],
    sl: usize,
    w: &[f32],
    stride: usize,
    v: &[f32],
    n: usize,
    hd: usize,
    d0: usize,
) {
    let sp = states.as_mut_ptr();
    let acc_at = |g: usize, c: usize| sp.add(g * sl + 2 + d0 + 8 * c);
    let mut acc = [[_mm512_setzero_ps(); 8]; P];
    for (p, a) in acc.iter_mut().enumerate() {
        for (c, x) in a.iter_mut().enumerate() {
            *x = join(
                _mm256_loadu_ps(acc_at(2 * p, c)),
                _mm256_loadu_ps(acc_at(2 * p + 1, c)),
            );
        }
    }
    let (wp, vp) = (w.as_ptr(), v.as_ptr());
    for j in 0..n {
        let ws: [__m512; P] = std::array::from_fn(|p| {
            join(
                _mm256_set1_ps(*wp.add(2 * p * stride + j)),
                _mm256_set1_ps(*wp.add((2 * p + 1) * stride + j)),
            )
        });
        let row = vp.add(j * hd + d0);
        for c in 0..8 {
            let vv = both(row.add(8 * c));
            for p in 0..P {
                acc[p][c] = _mm512_fmadd_ps(ws[p], vv, acc[p][c]);
            }
        }
    }
    for (p, a) in acc.iter().enumerate() {
        for (c, x) in a.iter().enumerate() {
            _mm256_storeu_ps(acc_at(2 * p, c), _mm512_castps512_ps256(*x));
            _mm256_storeu_ps(acc_at(2 * p + 1, c), high(*x));
        }
    }
}

impl TileOps for Avx512 {
    #[inline(always)]
    fn dot(self, q: &[f32], k: &[f32]) -> f32 {
        self.avx2().dot(q, k)
    }

    #[inline(always)]
    fn scores(self, q: &[f32], k: &[f32], hd: usize, out: &mut [f32]) {
        self.avx2().scores(q, k, hd, out)
    }

    #[inline(always)]
    fn scores_group(
        self,
        qs: &[FlashQuery<'_>],
        k: &[f32],
        hd: usize,
        out: &mut [f32],
        stride: usize,
    ) {
        let n = k.len() / hd.max(1);
        let n8 = n / 8 * 8;
        let m = qs.len();
        let fits = hd.is_multiple_of(8)
            && hd <= MAX_HEAD
            && n8 > 0
            && qs.iter().all(|q| q.q.len() >= hd)
            && group_fits(m, n, stride, out.len(), None);
        if !fits {
            return scores_each(self, qs, 0, k, hd, out, stride);
        }
        // SAFETY: an `Avx512` exists only where the CPU has AVX-512 F/VL and FMA; the
        // shapes were checked above (queries of `hd` floats, `n8 ≤ n` rows of `k`, rows of
        // `out` of `stride ≥ n` floats).
        unsafe {
            match m {
                2 | 3 => scores_pairs::<1>(qs, k, hd, n8, out, stride),
                _ => scores_pairs::<2>(qs, k, hd, n8, out, stride),
            }
        }
        let paired = m.min(4) / 2 * 2;
        for (g, q) in qs.iter().enumerate().take(paired) {
            let q = &q.q[..hd];
            for j in n8..n {
                out[g * stride + j] = self.dot(q, &k[j * hd..(j + 1) * hd]);
            }
        }
        scores_each(self, qs, paired, k, hd, out, stride)
    }

    #[inline(always)]
    fn accumulate(self, acc: &mut [f32], w: &[f32], v: &[f32], hd: usize) {
        self.avx2().accumulate(acc, w, v, hd)
    }

    #[inline(always)]
    fn accumulate_group(
        self,
        m: usize,
        states: &mut [f32],
        sl: usize,
        w: &[f32],
        stride: usize,
        v: &[f32],
        hd: usize,
    ) {
        let n = v.len() / hd.max(1);
        let fits = hd.is_multiple_of(64)
            && group_fits(m, n, stride, w.len(), Some((states.len(), sl, hd)));
        let paired = if fits { m.min(4) / 2 * 2 } else { 0 };
        if paired > 0 {
            for d0 in (0..hd).step_by(64) {
                // SAFETY: as in `scores_group`; states of `sl ≥ hd + 2` floats, weight rows
                // of `n ≤ stride` and `n` value rows of `hd` floats (checked above).
                unsafe {
                    if paired == 4 {
                        values_pairs::<2>(states, sl, w, stride, v, n, hd, d0);
                    } else {
                        values_pairs::<1>(states, sl, w, stride, v, n, hd, d0);
                    }
                }
            }
        }
        accumulate_each(self, paired..m, states, sl, w, stride, v, hd)
    }

    #[inline(always)]
    fn max(self, s: &[f32]) -> f32 {
        self.avx2().max(s)
    }

    #[inline(always)]
    fn exp(self, s: &mut [f32], m: f32) {
        self.avx2().exp(s, m)
    }

    #[inline(always)]
    fn scale(self, acc: &mut [f32], a: f32) {
        self.avx2().scale(acc, a)
    }

    #[inline(always)]
    fn axpy(self, acc: &mut [f32], w: f32, v: &[f32]) {
        self.avx2().axpy(acc, w, v)
    }

    #[inline(always)]
    fn widen(self, src: &[f16], dst: &mut [f32]) {
        self.avx2().widen(src, dst)
    }

    #[inline(always)]
    fn widen_q8_0(self, blk: &[u8], out: &mut [f32]) {
        self.avx2().widen_q8_0(blk, out)
    }

    #[inline(always)]
    fn widen_q4_0(self, blk: &[u8], out: &mut [f32]) {
        self.avx2().widen_q4_0(blk, out)
    }
}

/// `crate::flash::split_partials` with AVX-512.
///
/// # Safety
/// The CPU must support AVX-512 F/VL, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn flash_split(
    p: &FlashParams,
    qs: &[FlashQuery<'_>],
    keys: &PagedRows<'_>,
    values: &PagedRows<'_>,
    split: usize,
    states: &mut [f32],
    scratch: &mut [f32],
) -> bool {
    split_impl(Avx512(()), p, qs, keys, values, split, states, scratch)
}
