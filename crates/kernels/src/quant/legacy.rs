//! The 32-element formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1): dequantization, activation
//! quantization (Q8_0, Q8_1) and the scalar dot products that every SIMD path is tested against.
//!
//! Activation quantization follows llama.cpp's x86 code exactly (scale 127 / max|x|, rounding
//! half to even), because matching its rounding is what makes our tokens match its tokens.

use super::blocks::*;
use crate::lanes::{hsum8, LANES};

/// Nibble `j` of a 16-byte array: elements 0..16 are the low nibbles, 16..32 the high ones.
#[inline(always)]
pub(crate) fn nibble(qs: &[u8; 16], j: usize) -> i32 {
    if j < 16 {
        (qs[j] & 0x0F) as i32
    } else {
        (qs[j - 16] >> 4) as i32
    }
}

/// The fifth bit of element `j` of a Q5 block, as 0 or 16.
#[inline(always)]
fn high_bit(qh: &[u8; 4], j: usize) -> i32 {
    let h = u32::from_le_bytes(*qh);
    (((h >> j) & 1) << 4) as i32
}

pub fn dequant_q4_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in as_blocks::<BlockQ4_0>(src)
        .iter()
        .zip(dst.chunks_exact_mut(QK))
    {
        let d = f16_at(b.d);
        for (j, v) in y.iter_mut().enumerate() {
            *v = (nibble(&b.qs, j) - 8) as f32 * d;
        }
    }
}

pub fn dequant_q4_1(src: &[u8], dst: &mut [f32]) {
    for (b, y) in as_blocks::<BlockQ4_1>(src)
        .iter()
        .zip(dst.chunks_exact_mut(QK))
    {
        let (d, m) = (f16_at(b.d), f16_at(b.m));
        for (j, v) in y.iter_mut().enumerate() {
            *v = nibble(&b.qs, j) as f32 * d + m;
        }
    }
}

pub fn dequant_q5_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in as_blocks::<BlockQ5_0>(src)
        .iter()
        .zip(dst.chunks_exact_mut(QK))
    {
        let d = f16_at(b.d);
        for (j, v) in y.iter_mut().enumerate() {
            *v = ((nibble(&b.qs, j) | high_bit(&b.qh, j)) - 16) as f32 * d;
        }
    }
}

pub fn dequant_q5_1(src: &[u8], dst: &mut [f32]) {
    for (b, y) in as_blocks::<BlockQ5_1>(src)
        .iter()
        .zip(dst.chunks_exact_mut(QK))
    {
        let (d, m) = (f16_at(b.d), f16_at(b.m));
        for (j, v) in y.iter_mut().enumerate() {
            *v = (nibble(&b.qs, j) | high_bit(&b.qh, j)) as f32 * d + m;
        }
    }
}

pub fn dequant_q8_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in as_blocks::<BlockQ8_0>(src)
        .iter()
        .zip(dst.chunks_exact_mut(QK))
    {
        let d = f16_at(b.d);
        for (v, q) in y.iter_mut().zip(b.qs) {
            *v = (q as i8) as f32 * d;
        }
    }
}

pub fn dequant_q8_1(src: &[u8], dst: &mut [f32]) {
    for (b, y) in as_blocks::<BlockQ8_1>(src)
        .iter()
        .zip(dst.chunks_exact_mut(QK))
    {
        let d = f16_at(b.d);
        for (v, q) in y.iter_mut().zip(b.qs) {
            *v = (q as i8) as f32 * d;
        }
    }
}

/// Quantizes 32 values to signed bytes with scale max|x| / 127; returns (d, sum of quants).
#[inline(always)]
fn quantize_block_8bit(x: &[f32], qs: &mut [u8; 32]) -> (f32, i32) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut sum = 0i32;
    for (q, v) in qs.iter_mut().zip(x) {
        let r = (v * id).round_ties_even().clamp(-128.0, 127.0) as i32;
        sum += r;
        *q = r as i8 as u8;
    }
    (d, sum)
}

pub fn quantize_q8_0(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK).zip(as_blocks_mut::<BlockQ8_0>(dst)) {
        let (d, _) = quantize_block_8bit(x, &mut b.qs);
        b.d = f16_bytes(d);
    }
}

pub fn quantize_q8_1(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK).zip(as_blocks_mut::<BlockQ8_1>(dst)) {
        let (d, sum) = quantize_block_8bit(x, &mut b.qs);
        b.d = f16_bytes(d);
        b.s = f16_bytes(d * sum as f32);
    }
}

#[inline(always)]
fn q8(qs: &[u8; 32], j: usize) -> i32 {
    qs[j] as i8 as i32
}

/// The eight lane sums of one 32-element block: lane l = Σ products 4l .. 4l+3 (what
/// `maddubs` + `madd` leave in each lane).
#[inline(always)]
fn lane_sums(prod: impl Fn(usize) -> i32) -> [f32; LANES] {
    let mut l = [0.0f32; LANES];
    for (i, v) in l.iter_mut().enumerate() {
        *v = (prod(4 * i) + prod(4 * i + 1) + prod(4 * i + 2) + prod(4 * i + 3)) as f32;
    }
    l
}

/// Adds one block's lane sums, scaled by `d`, into the accumulator with fused multiply-adds.
#[inline(always)]
fn accumulate(acc: &mut [f32; LANES], d: f32, lanes: &[f32; LANES]) {
    for (a, &v) in acc.iter_mut().zip(lanes) {
        *a = d.mul_add(v, *a);
    }
}

// Every dot product below follows llama.cpp's AVX2 kernels: per block, d = d_w * d_a and
// acc[lane] = fma(d, lane_sum, acc[lane]); at the end hsum8(acc), plus, for the formats with a
// minimum, the sequential f32 sum of m_w * s_a.

pub fn dot_q4_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = [0.0f32; LANES];
    for (x, y) in as_blocks::<BlockQ4_0>(w)
        .iter()
        .zip(as_blocks::<BlockQ8_0>(a))
        .take(n / QK)
    {
        let l = lane_sums(|j| (nibble(&x.qs, j) - 8) * q8(&y.qs, j));
        accumulate(&mut acc, f16_at(x.d) * f16_at(y.d), &l);
    }
    hsum8(&acc)
}

pub fn dot_q4_1_q8_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut summs = 0.0f32;
    for (x, y) in as_blocks::<BlockQ4_1>(w)
        .iter()
        .zip(as_blocks::<BlockQ8_1>(a))
        .take(n / QK)
    {
        summs += f16_at(x.m) * f16_at(y.s);
        let l = lane_sums(|j| nibble(&x.qs, j) * q8(&y.qs, j));
        accumulate(&mut acc, f16_at(x.d) * f16_at(y.d), &l);
    }
    hsum8(&acc) + summs
}

pub fn dot_q5_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = [0.0f32; LANES];
    for (x, y) in as_blocks::<BlockQ5_0>(w)
        .iter()
        .zip(as_blocks::<BlockQ8_0>(a))
        .take(n / QK)
    {
        let l = lane_sums(|j| ((nibble(&x.qs, j) | high_bit(&x.qh, j)) - 16) * q8(&y.qs, j));
        accumulate(&mut acc, f16_at(x.d) * f16_at(y.d), &l);
    }
    hsum8(&acc)
}

pub fn dot_q5_1_q8_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut summs = 0.0f32;
    for (x, y) in as_blocks::<BlockQ5_1>(w)
        .iter()
        .zip(as_blocks::<BlockQ8_1>(a))
        .take(n / QK)
    {
        summs += f16_at(x.m) * f16_at(y.s);
        let l = lane_sums(|j| (nibble(&x.qs, j) | high_bit(&x.qh, j)) * q8(&y.qs, j));
        accumulate(&mut acc, f16_at(x.d) * f16_at(y.d), &l);
    }
    hsum8(&acc) + summs
}

pub fn dot_q8_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = [0.0f32; LANES];
    for (x, y) in as_blocks::<BlockQ8_0>(w)
        .iter()
        .zip(as_blocks::<BlockQ8_0>(a))
        .take(n / QK)
    {
        let l = lane_sums(|j| q8(&x.qs, j) * q8(&y.qs, j));
        accumulate(&mut acc, f16_at(x.d) * f16_at(y.d), &l);
    }
    hsum8(&acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_rounds_half_to_even_with_scale_127_over_max() {
        // max 127 gives id = 1 exactly, so 2.5 -> 2 and 3.5 -> 4 (ties to even), -0.5 -> 0.
        let mut x = [0.0f32; 32];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = 3.5;
        x[3] = -0.5;
        x[4] = -127.0;
        let mut out = [0u8; 34];
        quantize_q8_0(&x, &mut out);
        let b = as_blocks::<BlockQ8_0>(&out)[0];
        assert_eq!(f16_at(b.d), 1.0);
        assert_eq!(b.qs[0] as i8, 127);
        assert_eq!(b.qs[1] as i8, 2);
        assert_eq!(b.qs[2] as i8, 4);
        assert_eq!(b.qs[3] as i8, 0);
        assert_eq!(b.qs[4] as i8, -127);
    }

    #[test]
    fn q8_1_stores_scaled_sum() {
        let x: Vec<f32> = (0..32).map(|i| i as f32 - 10.0).collect();
        let mut out = [0u8; 36];
        quantize_q8_1(&x, &mut out);
        let b = as_blocks::<BlockQ8_1>(&out)[0];
        let d = 21.0f32 / 127.0;
        let sum: i32 = b.qs.iter().map(|&q| q as i8 as i32).sum();
        assert_eq!(f16_at(b.s), half::f16::from_f32(d * sum as f32).to_f32());
        assert_eq!(b.qs[31] as i8, 127);
    }

    #[test]
    fn all_zero_block_quantizes_to_zero() {
        let x = [0.0f32; 32];
        let mut out = [0xAAu8; 36];
        quantize_q8_1(&x, &mut out);
        assert!(out.iter().all(|&b| b == 0));
    }
}
