//! The 32-element formats' (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) single-row dot products.

#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use super::*;

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
