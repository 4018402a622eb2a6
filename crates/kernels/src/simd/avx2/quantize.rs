//! Activation quantization (Q8_0, Q8_1, Q8_K, F16) as llama.cpp's x86 code does it.

#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use super::*;

// ---------------------------------------------------------------------------------------------
// Activation quantization, as llama.cpp's x86 code does it (scale max|x| / 127, multiplier
// 127 / max|x|, rounding half to even): identical to the scalar versions in `quant::legacy`.

/// Quantizes 32 floats at `x` into `qs`; returns (d, sum of quants).
#[inline(always)]
pub(super) unsafe fn quantize32(x: *const f32, qs: *mut u8) -> (f32, i32) {
    let v: [__m256; 4] = arr!(4, _mm256_setzero_ps(), |i| _mm256_loadu_ps(x.add(8 * i)));
    let sign = _mm256_set1_ps(-0.0);
    let mut m = _mm256_andnot_ps(sign, v[0]);
    for vi in &v[1..] {
        m = _mm256_max_ps(m, _mm256_andnot_ps(sign, *vi));
    }
    let mut m4 = _mm_max_ps(_mm256_extractf128_ps(m, 1), _mm256_castps256_ps128(m));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    let amax = _mm_cvtss_f32(m4);
    let d = amax / 127.0;
    let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
    let i: [__m256i; 4] = arr!(4, _mm256_setzero_si256(), |k| {
        _mm256_cvtps_epi32(_mm256_round_ps::<
            { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
        >(_mm256_mul_ps(v[k], id)))
    });
    let s = _mm256_add_epi32(_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3]));
    let s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    let s2 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
    let sum = _mm_cvtsi128_si32(_mm_add_epi32(s2, _mm_shuffle_epi32(s2, 0b10_11_00_01)));
    let p01 = _mm256_packs_epi32(i[0], i[1]);
    let p23 = _mm256_packs_epi32(i[2], i[3]);
    let bytes = _mm256_packs_epi16(p01, p23);
    let bytes = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(qs as *mut __m256i, bytes);
    (d, sum)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_q8_0(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(34)) {
        let (d, _) = quantize32(x.as_ptr(), b.as_mut_ptr().add(2));
        b[..2].copy_from_slice(&f16_bytes(d));
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_q8_1(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(36)) {
        let (d, sum) = quantize32(x.as_ptr(), b.as_mut_ptr().add(4));
        b[..2].copy_from_slice(&f16_bytes(d));
        b[2..4].copy_from_slice(&f16_bytes(d * sum as f32));
    }
}

/// f32 → f16 with the F16C instruction (round to nearest even, as the scalar conversion).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_f16(src: &[f32], dst: &mut [u8]) {
    let n = src.len().min(dst.len() / 2);
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    let mut i = 0;
    while i + 8 <= n {
        let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(s.add(i)));
        _mm_storeu_si128(d.add(2 * i) as *mut __m128i, h);
        i += 8;
    }
    for j in i..n {
        dst[2 * j..2 * j + 2].copy_from_slice(&f16_bytes(src[j]));
    }
}

/// The scalar Q8_K quantizer (llama.cpp uses its reference code on x86 too), compiled with
/// SSE4.1 rounding instructions instead of a library call.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_q8_k(src: &[f32], dst: &mut [u8]) {
    crate::quant::kquants::quantize_q8_k(src, dst)
}
