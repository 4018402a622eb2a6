//! x86-64 AVX2 + FMA + F16C kernels. Each computes exactly what its scalar counterpart in
//! [`crate::quant`] computes, in the same order (see [`crate::lanes`]), so results are
//! bit-identical; the property tests hold them to it.
//!
//! Every function here is `unsafe` and `#[target_feature]`: callers must have checked that the
//! CPU supports AVX2, FMA and F16C ([`crate::Isa::Avx2`]); [`crate::Kernels`] only hands
//! them out after that check.

#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use crate::quant::blocks::*;

/// Half to float with F16C.
#[inline(always)]
unsafe fn h(b: [u8; 2]) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(
        _mm_cvtsi32_si128(u16::from_le_bytes(b) as i32),
    ))
}

#[inline(always)]
unsafe fn hsum(x: __m256) -> f32 {
    let mut r = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    _mm_cvtss_f32(r)
}

/// 32 nibbles as bytes: low nibbles of the 16 bytes first, then the high ones.
#[inline(always)]
unsafe fn nibbles(qs: &[u8; 16]) -> __m256i {
    let t = _mm_loadu_si128(qs.as_ptr() as *const __m128i);
    let both = _mm256_set_m128i(_mm_srli_epi16(t, 4), t);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}

/// 0xFF in byte j where bit j of `qh` is set.
#[inline(always)]
unsafe fn bits_to_bytes(qh: &[u8; 4]) -> __m256i {
    let x = u32::from_le_bytes(*qh) as i32;
    let shuf = _mm256_set_epi64x(
        0x0303030303030303,
        0x0202020202020202,
        0x0101010101010101,
        0,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(x), shuf);
    let bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1))
}

/// Unsigned × signed bytes, summed in fours, as floats (one lane per four products).
#[inline(always)]
unsafe fn dot_us8(ux: __m256i, sy: __m256i) -> __m256 {
    let pairs = _mm256_maddubs_epi16(ux, sy);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_set1_epi16(1), pairs))
}

/// Signed × signed bytes, summed in fours, as floats.
#[inline(always)]
unsafe fn dot_s8(x: __m256i, y: __m256i) -> __m256 {
    dot_us8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
}

#[inline(always)]
unsafe fn load32(qs: &[u8; 32]) -> __m256i {
    _mm256_loadu_si256(qs.as_ptr() as *const __m256i)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (x, y) in as_blocks::<BlockQ4_0>(w)
        .iter()
        .zip(as_blocks::<BlockQ8_0>(a))
        .take(n / QK)
    {
        let d = _mm256_set1_ps(h(x.d) * h(y.d));
        let qx = _mm256_sub_epi8(nibbles(&x.qs), _mm256_set1_epi8(8));
        acc = _mm256_fmadd_ps(d, dot_s8(qx, load32(&y.qs)), acc);
    }
    hsum(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_1_q8_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut summs = 0.0f32;
    for (x, y) in as_blocks::<BlockQ4_1>(w)
        .iter()
        .zip(as_blocks::<BlockQ8_1>(a))
        .take(n / QK)
    {
        summs += h(x.m) * h(y.s);
        let d = _mm256_set1_ps(h(x.d) * h(y.d));
        acc = _mm256_fmadd_ps(d, dot_us8(nibbles(&x.qs), load32(&y.qs)), acc);
    }
    hsum(acc) + summs
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q5_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (x, y) in as_blocks::<BlockQ5_0>(w)
        .iter()
        .zip(as_blocks::<BlockQ8_0>(a))
        .take(n / QK)
    {
        let d = _mm256_set1_ps(h(x.d) * h(y.d));
        let hi = _mm256_andnot_si256(bits_to_bytes(&x.qh), _mm256_set1_epi8(0xF0u8 as i8));
        let qx = _mm256_or_si256(nibbles(&x.qs), hi);
        acc = _mm256_fmadd_ps(d, dot_s8(qx, load32(&y.qs)), acc);
    }
    hsum(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q5_1_q8_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut summs = 0.0f32;
    for (x, y) in as_blocks::<BlockQ5_1>(w)
        .iter()
        .zip(as_blocks::<BlockQ8_1>(a))
        .take(n / QK)
    {
        summs += h(x.m) * h(y.s);
        let hi = _mm256_and_si256(bits_to_bytes(&x.qh), _mm256_set1_epi8(0x10));
        let qx = _mm256_or_si256(nibbles(&x.qs), hi);
        let d = _mm256_set1_ps(h(x.d) * h(y.d));
        acc = _mm256_fmadd_ps(d, dot_us8(qx, load32(&y.qs)), acc);
    }
    hsum(acc) + summs
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q8_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (x, y) in as_blocks::<BlockQ8_0>(w)
        .iter()
        .zip(as_blocks::<BlockQ8_0>(a))
        .take(n / QK)
    {
        let d = _mm256_set1_ps(h(x.d) * h(y.d));
        acc = _mm256_fmadd_ps(d, dot_s8(load32(&x.qs), load32(&y.qs)), acc);
    }
    hsum(acc)
}
