//! The tile steps of flash attention (`crate::flash`), eight lanes at a time: the same
//! arithmetic as its scalar `TileOps`, bit for bit.

#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use half::f16;

use super::{expf8, hsum, hsum_each};
use crate::flash_tiles::{
    accumulate_each, group_fits, scores_each, split_impl, FlashParams, FlashQuery, PagedRows,
    TileOps,
};
use crate::lanes::expf_ggml;

/// AVX2/FMA/F16C tile steps. Only [`flash_split`] and the AVX-512 tile steps make one, inside
/// functions compiled for those features and called where the CPU has them.
#[derive(Clone, Copy)]
pub(in crate::simd) struct Avx2(pub(in crate::simd) ());

impl TileOps for Avx2 {
    #[inline(always)]
    fn dot(self, q: &[f32], k: &[f32]) -> f32 {
        let n = q.len().min(k.len());
        let n8 = n / 8 * 8;
        // SAFETY: an `Avx2` exists only where the CPU has AVX2 and FMA; every load reads
        // eight floats inside `q[..n8]` and `k[..n8]`.
        let mut s = unsafe {
            let mut acc = _mm256_setzero_ps();
            let mut i = 0;
            while i < n8 {
                let kv = _mm256_loadu_ps(k.as_ptr().add(i));
                let qv = _mm256_loadu_ps(q.as_ptr().add(i));
                acc = _mm256_fmadd_ps(kv, qv, acc);
                i += 8;
            }
            hsum(acc)
        };
        for i in n8..n {
            s = k[i].mul_add(q[i], s);
        }
        s
    }

    #[inline(always)]
    fn scores(self, q: &[f32], k: &[f32], hd: usize, out: &mut [f32]) {
        let n = out.len();
        if !hd.is_multiple_of(8) || q.len() < hd || k.len() < n * hd {
            for (j, o) in out.iter_mut().enumerate() {
                *o = self.dot(q, &k[j * hd..(j + 1) * hd]);
            }
            return;
        }
        let n8 = n / 8 * 8;
        // SAFETY: an `Avx2` exists only where the CPU has AVX2 and FMA; keys j < n are
        // inside `k` (checked above), `q` holds `hd` floats, stores stay inside `out[..n8]`.
        unsafe {
            let mut j = 0;
            while j < n8 {
                let mut acc = [_mm256_setzero_ps(); 8];
                let mut i = 0;
                while i < hd {
                    let qv = _mm256_loadu_ps(q.as_ptr().add(i));
                    for (r, a) in acc.iter_mut().enumerate() {
                        let kv = _mm256_loadu_ps(k.as_ptr().add((j + r) * hd + i));
                        *a = _mm256_fmadd_ps(kv, qv, *a);
                    }
                    i += 8;
                }
                _mm256_storeu_ps(out.as_mut_ptr().add(j), hsum_each(&acc));
                j += 8;
            }
        }
        for j in n8..n {
            out[j] = self.dot(q, &k[j * hd..(j + 1) * hd]);
        }
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
        let (m, n) = (qs.len(), k.len() / hd.max(1));
        let n4 = n / 4 * 4;
        let fits = hd.is_multiple_of(8)
            && n4 > 0
            && qs.iter().all(|q| q.q.len() >= hd)
            && group_fits(m, n, stride, out.len(), None);
        let paired = if fits { m / 2 * 2 } else { 0 };
        for g in (0..paired).step_by(2) {
            // SAFETY: an `Avx2` exists only where the CPU has AVX2 and FMA; the shapes were
            // checked above.
            unsafe { scores_pair(&qs[g..g + 2], k, hd, n4, &mut out[g * stride..], stride) };
            for h in g..g + 2 {
                let q = &qs[h].q[..hd];
                for j in n4..n {
                    out[h * stride + j] = self.dot(q, &k[j * hd..(j + 1) * hd]);
                }
            }
        }
        scores_each(self, qs, paired, k, hd, out, stride)
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
        let fits = hd.is_multiple_of(32)
            && group_fits(m, n, stride, w.len(), Some((states.len(), sl, hd)));
        let paired = if fits { m / 2 * 2 } else { 0 };
        for g in (0..paired).step_by(2) {
            for d0 in (0..hd).step_by(32) {
                // SAFETY: as in `scores_group`; states g and g + 1 hold `hd + 2 ≤ sl` floats,
                // weight rows `n ≤ stride`, `n` value rows of `hd` floats (checked above).
                unsafe {
                    values_pair(
                        &mut states[g * sl..],
                        sl,
                        &w[g * stride..],
                        stride,
                        v,
                        n,
                        hd,
                        d0,
                    )
                };
            }
        }
        accumulate_each(self, paired..m, states, sl, w, stride, v, hd)
    }

    #[inline(always)]
    fn accumulate(self, acc: &mut [f32], w: &[f32], v: &[f32], hd: usize) {
        if !hd.is_multiple_of(64) || acc.len() < hd || v.len() < w.len() * hd {
            for (j, &wj) in w.iter().enumerate() {
                self.axpy(acc, wj, &v[j * hd..(j + 1) * hd]);
            }
            return;
        }
        // Sixty-four dimensions at a time held in registers across the keys.
        // SAFETY: as in `scores`; rows j < w.len() of `hd` floats are inside `v` and `acc`
        // holds `hd` floats (checked).
        unsafe {
            for d0 in (0..hd).step_by(64) {
                let mut r = [_mm256_setzero_ps(); 8];
                for (d, x) in r.iter_mut().enumerate() {
                    *x = _mm256_loadu_ps(acc.as_ptr().add(d0 + 8 * d));
                }
                for (j, &wj) in w.iter().enumerate() {
                    let wv = _mm256_set1_ps(wj);
                    let row = v.as_ptr().add(j * hd + d0);
                    for (d, x) in r.iter_mut().enumerate() {
                        *x = _mm256_fmadd_ps(wv, _mm256_loadu_ps(row.add(8 * d)), *x);
                    }
                }
                for (d, x) in r.iter().enumerate() {
                    _mm256_storeu_ps(acc.as_mut_ptr().add(d0 + 8 * d), *x);
                }
            }
        }
    }

    #[inline(always)]
    fn exp(self, s: &mut [f32], m: f32) {
        let n8 = s.len() / 8 * 8;
        // SAFETY: as in `dot`; each store writes eight floats inside `s[..n8]`.
        unsafe {
            let mv = _mm256_set1_ps(m);
            let mut i = 0;
            while i < n8 {
                let p = s.as_mut_ptr().add(i);
                _mm256_storeu_ps(p, expf8(_mm256_sub_ps(_mm256_loadu_ps(p), mv)));
                i += 8;
            }
        }
        for w in &mut s[n8..] {
            *w = expf_ggml(*w - m);
        }
    }

    #[inline(always)]
    fn max(self, s: &[f32]) -> f32 {
        let n8 = s.len() / 8 * 8;
        // `max_ps(x, m)` gives `m` where `x` is NaN and `m` is never NaN: the NaN-ignoring
        // maximum of each lane, then of the lanes.
        // SAFETY: as in `dot`; each load reads eight floats inside `s[..n8]`.
        let mut mx = unsafe {
            let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
            let mut i = 0;
            while i < n8 {
                m = _mm256_max_ps(_mm256_loadu_ps(s.as_ptr().add(i)), m);
                i += 8;
            }
            let h = _mm_max_ps(_mm256_extractf128_ps::<1>(m), _mm256_castps256_ps128(m));
            let h = _mm_max_ps(_mm_movehl_ps(h, h), h);
            _mm_cvtss_f32(_mm_max_ss(_mm_movehdup_ps(h), h))
        };
        for &x in &s[n8..] {
            mx = mx.max(x);
        }
        mx
    }

    #[inline(always)]
    fn scale(self, acc: &mut [f32], a: f32) {
        let n8 = acc.len() / 8 * 8;
        // SAFETY: as in `exp`.
        unsafe {
            let av = _mm256_set1_ps(a);
            let mut i = 0;
            while i < n8 {
                let p = acc.as_mut_ptr().add(i);
                _mm256_storeu_ps(p, _mm256_mul_ps(_mm256_loadu_ps(p), av));
                i += 8;
            }
        }
        for x in &mut acc[n8..] {
            *x *= a;
        }
    }

    #[inline(always)]
    fn axpy(self, acc: &mut [f32], w: f32, v: &[f32]) {
        let n = acc.len().min(v.len());
        let n8 = n / 8 * 8;
        // SAFETY: as in `exp`; loads of `v` stay inside `v[..n8]`.
        unsafe {
            let wv = _mm256_set1_ps(w);
            let mut i = 0;
            while i < n8 {
                let p = acc.as_mut_ptr().add(i);
                let vv = _mm256_loadu_ps(v.as_ptr().add(i));
                _mm256_storeu_ps(p, _mm256_fmadd_ps(wv, vv, _mm256_loadu_ps(p)));
                i += 8;
            }
        }
        for i in n8..n {
            acc[i] = w.mul_add(v[i], acc[i]);
        }
    }

    #[inline(always)]
    fn widen(self, src: &[f16], dst: &mut [f32]) {
        let n = src.len().min(dst.len());
        let n8 = n / 8 * 8;
        // SAFETY: as in `exp` (F16C); each load reads eight halves inside `src[..n8]`.
        unsafe {
            let mut i = 0;
            while i < n8 {
                let h = _mm_loadu_si128(src.as_ptr().add(i) as *const __m128i);
                _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
                i += 8;
            }
        }
        for i in n8..n {
            dst[i] = src[i].to_f32();
        }
    }

    #[inline(always)]
    fn widen_q8_0(self, blk: &[u8], out: &mut [f32]) {
        if blk.len() < 34 || out.len() < 32 {
            return crate::flash_tiles::scalar_q8_0(blk, out);
        }
        let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
        // SAFETY: as in `exp`; the block holds 32 quants after its scale and `out` 32
        // floats (checked above); each load reads eight bytes inside them.
        unsafe {
            let dv = _mm256_set1_ps(d);
            for i in (0..32).step_by(8) {
                let q = _mm_loadl_epi64(blk.as_ptr().add(2 + i) as *const __m128i);
                let f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
                _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_mul_ps(f, dv));
            }
        }
    }

    #[inline(always)]
    fn widen_q4_0(self, blk: &[u8], out: &mut [f32]) {
        if blk.len() < 18 || out.len() < 32 {
            return crate::flash_tiles::scalar_q4_0(blk, out);
        }
        let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
        // SAFETY: as in `widen_q8_0`; the block holds 16 bytes of nibbles after its scale.
        unsafe {
            let dv = _mm256_set1_ps(d);
            let eight = _mm256_set1_epi32(8);
            for i in (0..16).step_by(8) {
                let b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(
                    blk.as_ptr().add(2 + i) as *const __m128i
                ));
                let lo = _mm256_sub_epi32(_mm256_and_si256(b, _mm256_set1_epi32(0x0f)), eight);
                let hi = _mm256_sub_epi32(_mm256_srli_epi32::<4>(b), eight);
                let (lo, hi) = (_mm256_cvtepi32_ps(lo), _mm256_cvtepi32_ps(hi));
                _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_mul_ps(lo, dv));
                _mm256_storeu_ps(out.as_mut_ptr().add(16 + i), _mm256_mul_ps(hi, dv));
            }
        }
    }
}

/// `crate::flash::split_partials` in AVX2.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
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
    split_impl(Avx2(()), p, qs, keys, values, split, states, scratch)
}

/// Scores of the two queries of `qs` against keys `0..n4` (a multiple of 4) of `k` (rows of
/// `hd`, a multiple of 8): four keys at a time, each key row loaded once for both queries;
/// query g's scores go to `out[g·stride..]`.
///
/// # Safety
/// AVX2 and FMA; both queries hold `hd` floats, `k` `n4·hd`, `out` `stride + n4`.
#[inline(always)]
unsafe fn scores_pair(
    qs: &[FlashQuery<'_>],
    k: &[f32],
    hd: usize,
    n4: usize,
    out: &mut [f32],
    stride: usize,
) {
    let (a, b, kp) = (qs[0].q.as_ptr(), qs[1].q.as_ptr(), k.as_ptr());
    let o = out.as_mut_ptr();
    let mut j = 0;
    while j < n4 {
        // acc[r]: query a and key j + r; acc[4 + r]: query b.
        let mut acc = [_mm256_setzero_ps(); 8];
        let mut i = 0;
        while i < hd {
            let (qa, qb) = (_mm256_loadu_ps(a.add(i)), _mm256_loadu_ps(b.add(i)));
            for r in 0..4 {
                let kv = _mm256_loadu_ps(kp.add((j + r) * hd + i));
                acc[r] = _mm256_fmadd_ps(kv, qa, acc[r]);
                acc[4 + r] = _mm256_fmadd_ps(kv, qb, acc[4 + r]);
            }
            i += 8;
        }
        let h = hsum_each(&acc);
        _mm_storeu_ps(o.add(j), _mm256_castps256_ps128(h));
        _mm_storeu_ps(o.add(stride + j), _mm256_extractf128_ps::<1>(h));
        j += 4;
    }
}

/// Values of two queries: 32 dimensions from `d0` of states 0 and 1 (`states[g·sl + 2 + d0..]`)
/// take `w[g·stride + j] · v[j·hd + d0..]` for keys j < n in order, each value row loaded
/// once for both.
///
/// # Safety
/// AVX2 and FMA; `states` holds two states of `sl ≥ hd + 2` floats, `w` two rows of `n`
/// weights `stride` apart, `v` `n·hd` floats, `d0 + 32 ≤ hd`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn values_pair(
    states: &mut [f32],
    sl: usize,
    w: &[f32],
    stride: usize,
    v: &[f32],
    n: usize,
    hd: usize,
    d0: usize,
) {
    let (pa, pb) = (
        states.as_mut_ptr().add(2 + d0),
        states.as_mut_ptr().add(sl + 2 + d0),
    );
    let mut a: [__m256; 4] = std::array::from_fn(|c| _mm256_loadu_ps(pa.add(8 * c)));
    let mut b: [__m256; 4] = std::array::from_fn(|c| _mm256_loadu_ps(pb.add(8 * c)));
    let (wp, vp) = (w.as_ptr(), v.as_ptr());
    for j in 0..n {
        let (wa, wb) = (
            _mm256_set1_ps(*wp.add(j)),
            _mm256_set1_ps(*wp.add(stride + j)),
        );
        let row = vp.add(j * hd + d0);
        for c in 0..4 {
            let vv = _mm256_loadu_ps(row.add(8 * c));
            a[c] = _mm256_fmadd_ps(wa, vv, a[c]);
            b[c] = _mm256_fmadd_ps(wb, vv, b[c]);
        }
    }
    for c in 0..4 {
        _mm256_storeu_ps(pa.add(8 * c), a[c]);
        _mm256_storeu_ps(pb.add(8 * c), b[c]);
    }
}
