//! The tile steps of flash attention (`crate::flash`), eight lanes at a time: the same
//! arithmetic as its scalar `TileOps`, bit for bit.

#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use half::f16;

use super::{expf8, hsum, hsum_each};
use crate::flash_tiles::{split_impl, FlashParams, FlashQuery, PagedRows, TileOps};
use crate::lanes::expf_ggml;

/// AVX2/FMA/F16C tile steps. Only [`flash_split`] makes one, inside a function compiled for
/// those features and called where the CPU has them.
#[derive(Clone, Copy)]
struct Avx2(());

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
    fn exp_sum(self, s: &mut [f32], m: f32) -> f32 {
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
        let mut sum = 0.0f32;
        for &w in s.iter() {
            sum += w;
        }
        sum
    }

    #[inline(always)]
    fn scale(self, acc: &mut [f32], a: f32) {
        let n8 = acc.len() / 8 * 8;
        // SAFETY: as in `exp_sum`.
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
        // SAFETY: as in `exp_sum`; loads of `v` stay inside `v[..n8]`.
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
        // SAFETY: as in `exp_sum` (F16C); each load reads eight halves inside `src[..n8]`.
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
        // SAFETY: as in `exp_sum`; the block holds 32 quants after its scale and `out` 32
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
