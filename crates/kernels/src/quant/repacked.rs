//! The scalar dot products in the order of llama.cpp's repacked CPU kernels
//! (`ggml-cpu/repack.cpp`, `arch/x86/repack.cpp`), which its AVX2 build takes for Q4_0, Q4_K,
//! IQ4_NL and MXFP4 matrices whose row count is a multiple of eight (see [`crate::order`]).
//!
//! Those kernels sum a block's products into one exact integer per row (the eight lanes of
//! `vec_dot` are never formed), then add it into one f32 accumulator per row with a fused
//! multiply-add, block after block:
//! - Q4_0, IQ4_NL, MXFP4 (against Q8_0): `acc = fma(isum, d_w * d_a, acc)` per 32-element
//!   block, the same in `gemv` (one token) and `gemm` (four tokens at a time);
//! - Q4_K (against Q8_K): two accumulators, `acc = fma(Σ scale·isum, d·d_a, acc)` and
//!   `mins = fma(Σ min·bsum, dmin·d_a, mins)`, the result `acc - mins`; `gemv` adds once per
//!   256-element super-block, `gemm` once per pair of sub-blocks (64 elements).
//!
//! These are the readable definitions the SIMD kernels are tested against. Nothing here
//! chooses when they apply.

use super::blocks::*;
use super::codebook::{e8m0_half, KVALUES_IQ4NL, KVALUES_MXFP4};
use super::legacy::nibble;

/// `Σ value(j) · a_j` over one 32-element block (exact).
#[inline(always)]
fn block_sum(qs: &[u8; 16], a: &[u8; 32], value: impl Fn(usize) -> i32) -> i32 {
    (0..QK)
        .map(|j| value(nibble(qs, j) as usize) * (a[j] as i8) as i32)
        .sum()
}

/// The shared body of the 32-element formats: block `b` has weight scale `dw(b)`, quants
/// `qs(b)` and values `value(nibble)`.
#[inline(always)]
fn dot_blocks<B>(
    n: usize,
    w: &[B],
    a: &[BlockQ8_0],
    dw: impl Fn(&B) -> f32,
    qs: impl Fn(&B) -> &[u8; 16],
    value: impl Fn(usize) -> i32 + Copy,
) -> f32 {
    let mut acc = 0.0f32;
    for (x, y) in w.iter().zip(a).take(n / QK) {
        let isum = block_sum(qs(x), &y.qs, value);
        acc = (isum as f32).mul_add(dw(x) * f16_at(y.d), acc);
    }
    acc
}

pub fn dot_q4_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_blocks(
        n,
        as_blocks::<BlockQ4_0>(w),
        as_blocks::<BlockQ8_0>(a),
        |x| f16_at(x.d),
        |x| &x.qs,
        |q| q as i32 - 8,
    )
}

pub fn dot_iq4_nl_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_blocks(
        n,
        as_blocks::<BlockIQ4NL>(w),
        as_blocks::<BlockQ8_0>(a),
        |x| f16_at(x.d),
        |x| &x.qs,
        |q| KVALUES_IQ4NL[q] as i32,
    )
}

pub fn dot_mxfp4_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_blocks(
        n,
        as_blocks::<BlockMXFP4>(w),
        as_blocks::<BlockQ8_0>(a),
        |x| e8m0_half(x.e),
        |x| &x.qs,
        |q| KVALUES_MXFP4[q] as i32,
    )
}

/// Q4_K against Q8_K, adding into the two accumulators every `SUBS` sub-blocks of 32
/// elements (8: once per super-block, `gemv`; 2: per pair, `gemm`).
#[inline(always)]
fn dot_q4_k<const SUBS: usize>(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (mut acc, mut mins) = (0.0f32, 0.0f32);
    for (x, y) in as_blocks::<BlockQ4K>(w)
        .iter()
        .zip(as_blocks::<BlockQ8K>(a))
        .take(n / QK_K)
    {
        let (sc, m) = k4_scales_mins(&x.scales);
        let (d, dmin) = (f16_at(x.d) * y.scale(), f16_at(x.dmin) * y.scale());
        for first in (0..8).step_by(SUBS) {
            let (mut isum, mut msum) = (0i32, 0i32);
            for s in first..first + SUBS {
                // Sub-block s: low nibbles of bytes 32(s/2).. for even s, high ones for odd.
                let bytes = &x.qs[32 * (s / 2)..32 * (s / 2) + 32];
                let dot: i32 = (0..32)
                    .map(|l| {
                        let q = if s % 2 == 0 {
                            bytes[l] & 0x0F
                        } else {
                            bytes[l] >> 4
                        };
                        q as i32 * y.q(32 * s + l)
                    })
                    .sum();
                isum += sc[s] as i32 * dot;
                msum += m[s] as i32 * (y.bsum(2 * s) + y.bsum(2 * s + 1));
            }
            acc = (isum as f32).mul_add(d, acc);
            mins = (msum as f32).mul_add(dmin, mins);
        }
    }
    acc - mins
}

/// Q4_K in `gemv`'s order (one token against eight rows).
pub fn dot_q4_k_q8_k_gemv(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_q4_k::<8>(n, w, a)
}

/// Q4_K in `gemm`'s order (four tokens at a time).
pub fn dot_q4_k_q8_k_gemm(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_q4_k::<2>(n, w, a)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The orders differ from `vec_dot`'s only in rounding: on integer-valued data whose sums
    /// stay exact in f32, every order gives the same number.
    #[test]
    fn exact_data_gives_the_vec_dot_result() {
        let mut w = vec![0u8; 18 * 4];
        let mut a = vec![0u8; 34 * 4];
        for b in 0..4 {
            w[18 * b..18 * b + 2].copy_from_slice(&f16_bytes(1.0));
            a[34 * b..34 * b + 2].copy_from_slice(&f16_bytes(0.5));
            for j in 0..16 {
                w[18 * b + 2 + j] = j as u8 * 7 + b as u8;
            }
            for j in 0..32 {
                a[34 * b + 2 + j] = ((j as i32 * 5 - 60) as i8) as u8;
            }
        }
        let want = super::super::legacy::dot_q4_0_q8_0(128, &w, &a);
        assert_eq!(dot_q4_0_q8_0(128, &w, &a), want);
        assert_ne!(want, 0.0);
    }

    /// A case where the orders part: block 0's products cancel between lanes 0 and 1 at a
    /// size where block 1's small product, in lane 2, is below their rounding. `vec_dot` adds
    /// the lanes pairwise at the end and loses it; the repacked order cancels block 0 in
    /// integers first and keeps it.
    #[test]
    fn the_order_is_block_by_block() {
        let mut w = vec![0x88u8; 18 * 2];
        let mut a = vec![0u8; 34 * 2];
        w[0..2].copy_from_slice(&f16_bytes(32768.0));
        w[18..20].copy_from_slice(&f16_bytes(1.0 / 1024.0));
        w[2] = 0x89; // element 0: +1
        w[2 + 4] = 0x87; // element 4: -1
        w[18 + 2 + 8] = 0x89; // block 1, element 8: +1
        for b in 0..2 {
            a[34 * b..34 * b + 2].copy_from_slice(&f16_bytes(1.0));
        }
        a[2] = 127;
        a[2 + 4] = 127;
        a[34 + 2 + 8] = 1;
        assert_eq!(dot_q4_0_q8_0(64, &w, &a), 1.0 / 1024.0);
        assert_eq!(super::super::legacy::dot_q4_0_q8_0(64, &w, &a), 0.0);
    }

    #[test]
    fn q4_k_orders_agree_on_exact_data() {
        let mut w = vec![0u8; 144];
        let mut a = vec![0u8; 292];
        w[0..2].copy_from_slice(&f16_bytes(0.25));
        w[2..4].copy_from_slice(&f16_bytes(0.5));
        for (i, s) in w[4..16].iter_mut().enumerate() {
            *s = (i as u8 * 5 + 1) & 0x3F;
        }
        for (i, q) in w[16..].iter_mut().enumerate() {
            *q = (i * 37 % 256) as u8;
        }
        a[0..4].copy_from_slice(&1.0f32.to_le_bytes());
        for j in 0..256 {
            a[4 + j] = ((j as i32 % 19 - 9) as i8) as u8;
        }
        for g in 0..16 {
            let s: i32 = (0..16).map(|l| a[4 + 16 * g + l] as i8 as i32).sum();
            a[260 + 2 * g..262 + 2 * g].copy_from_slice(&(s as i16).to_le_bytes());
        }
        let want = super::super::kquants::dot_q4_k_q8_k(256, &w, &a);
        assert_eq!(dot_q4_k_q8_k_gemv(256, &w, &a), want);
        assert_eq!(dot_q4_k_q8_k_gemm(256, &w, &a), want);
    }
}
