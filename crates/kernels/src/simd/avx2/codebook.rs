//! Dot products of the table formats (IQ4_NL, MXFP4 against Q8_0; IQ4_XS against Q8_K): each
//! nibble looks its value up with one byte shuffle, then the products are the signed 8-bit
//! ones of the legacy formats. Order as in `crate::quant::codebook`.

#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use super::*;
use crate::quant::codebook::{e8m0_half, KVALUES_IQ4NL, KVALUES_MXFP4};

/// The 32 table values of a block's nibbles: elements 0..16 (low nibbles) in the low half,
/// 16..32 (high nibbles) in the high half.
#[inline(always)]
unsafe fn lookup(table: __m128i, qs: &[u8; 16]) -> __m256i {
    let q = _mm_loadu_si128(qs.as_ptr() as *const __m128i);
    let m4 = _mm_set1_epi8(0x0F);
    let lo = _mm_shuffle_epi8(table, _mm_and_si128(q, m4));
    let hi = _mm_shuffle_epi8(table, _mm_and_si128(_mm_srli_epi16(q, 4), m4));
    _mm256_set_m128i(hi, lo)
}

#[inline(always)]
unsafe fn table(values: &[i8; 16]) -> __m128i {
    _mm_loadu_si128(values.as_ptr() as *const __m128i)
}

/// The shared body of the IQ4_NL and MXFP4 kernels (see `codebook::dot_table_q8_0`).
#[inline(always)]
unsafe fn dot_table_q8_0<B>(
    n: usize,
    values: &[i8; 16],
    w: &[B],
    a: &[BlockQ8_0],
    scale: impl Fn(&B, &BlockQ8_0) -> f32,
    qs: impl Fn(&B) -> &[u8; 16],
) -> f32 {
    let t = table(values);
    let nb = (n / QK).min(w.len()).min(a.len());
    let pairs = nb / 2 * 2;
    let (mut acc1, mut acc2) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for ib in (0..pairs).step_by(2) {
        let (x1, y1, x2, y2) = (&w[ib], &a[ib], &w[ib + 1], &a[ib + 1]);
        let p1 = dot_s8(lookup(t, qs(x1)), load32(&y1.qs));
        let p2 = dot_s8(lookup(t, qs(x2)), load32(&y2.qs));
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(scale(x1, y1)), p1, acc1);
        acc2 = _mm256_fmadd_ps(_mm256_set1_ps(scale(x2, y2)), p2, acc2);
    }
    let mut sum = hsum(_mm256_add_ps(acc1, acc2));
    for ib in pairs..nb {
        let (x, y) = (&w[ib], &a[ib]);
        let v = lookup(t, qs(x));
        let pairs =
            _mm256_maddubs_epi16(_mm256_sign_epi8(v, v), _mm256_sign_epi8(load32(&y.qs), v));
        let p = _mm256_madd_epi16(_mm256_set1_epi16(1), pairs);
        sum = scale(x, y).mul_add(hsum_i32(p) as f32, sum);
    }
    sum
}

/// The shared body of the IQ4_NL and MXFP4 kernels in llama.cpp's repacked order (see
/// `quant::repacked`): a block's products as one exact integer, `acc = fma(isum, d_w·d_a, acc)`.
#[inline(always)]
unsafe fn dot_table_repacked<B>(
    n: usize,
    values: &[i8; 16],
    w: &[B],
    a: &[BlockQ8_0],
    scale: impl Fn(&B, &BlockQ8_0) -> f32,
    qs: impl Fn(&B) -> &[u8; 16],
) -> f32 {
    let t = table(values);
    let nb = (n / QK).min(w.len()).min(a.len());
    let mut acc = 0.0f32;
    for (x, y) in w[..nb].iter().zip(&a[..nb]) {
        let v = lookup(t, qs(x));
        let pairs =
            _mm256_maddubs_epi16(_mm256_sign_epi8(v, v), _mm256_sign_epi8(load32(&y.qs), v));
        let isum = hsum_i32(_mm256_madd_epi16(_mm256_set1_epi16(1), pairs));
        acc = (isum as f32).mul_add(scale(x, y), acc);
    }
    acc
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_iq4_nl_q8_0_repacked(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_table_repacked(
        n,
        &KVALUES_IQ4NL,
        as_blocks::<BlockIQ4NL>(w),
        as_blocks::<BlockQ8_0>(a),
        |x, y| h(x.d) * h(y.d),
        |x| &x.qs,
    )
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_mxfp4_q8_0_repacked(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_table_repacked(
        n,
        &KVALUES_MXFP4,
        as_blocks::<BlockMXFP4>(w),
        as_blocks::<BlockQ8_0>(a),
        |x, y| e8m0_half(x.e) * h(y.d),
        |x| &x.qs,
    )
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_iq4_nl_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_table_q8_0(
        n,
        &KVALUES_IQ4NL,
        as_blocks::<BlockIQ4NL>(w),
        as_blocks::<BlockQ8_0>(a),
        |x, y| h(y.d) * h(x.d),
        |x| &x.qs,
    )
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_mxfp4_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_table_q8_0(
        n,
        &KVALUES_MXFP4,
        as_blocks::<BlockMXFP4>(w),
        as_blocks::<BlockQ8_0>(a),
        |x, y| h(y.d) * e8m0_half(x.e),
        |x| &x.qs,
    )
}

/// The eight exact lanes of one IQ4_XS super-block against its Q8_K block (see
/// `codebook::iq4_xs_lanes`).
#[inline(always)]
unsafe fn iq4_xs_lanes(t: __m128i, x: &BlockIQ4XS, y: &BlockQ8K) -> __m256i {
    let mut sums = _mm256_setzero_si256();
    let ys = y.qs.as_chunks::<QK>().0;
    for (i, (qs, yq)) in x.qs.as_chunks::<16>().0.iter().zip(ys).enumerate() {
        let v = lookup(t, qs);
        let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(v, v), _mm256_sign_epi8(load32(yq), v));
        let ls = crate::quant::codebook::iq4_xs_scale(x, i) as i16;
        sums = _mm256_add_epi32(sums, _mm256_madd_epi16(pairs, _mm256_set1_epi16(ls)));
    }
    sums
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_iq4_xs_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let t = table(&KVALUES_IQ4NL);
    let mut acc = _mm256_setzero_ps();
    for (x, y) in as_blocks::<BlockIQ4XS>(w)
        .iter()
        .zip(as_blocks::<BlockQ8K>(a))
        .take(n / QK_K)
    {
        let sums = iq4_xs_lanes(t, x, y);
        let d = h(x.d) * y.scale();
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sums), acc);
    }
    hsum(acc)
}

/// IQ4_XS in `ggml-cpu/tiled`'s order (see `codebook::dot_iq4_xs_q8_k_tiled`).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_iq4_xs_q8_k_tiled(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let t = table(&KVALUES_IQ4NL);
    let mut acc = 0.0f32;
    for (x, y) in as_blocks::<BlockIQ4XS>(w)
        .iter()
        .zip(as_blocks::<BlockQ8K>(a))
        .take(n / QK_K)
    {
        let s1 = hsum_i32(iq4_xs_lanes(t, x, y));
        acc = (h(x.d) * s1 as f32).mul_add(y.scale(), acc);
    }
    acc
}
