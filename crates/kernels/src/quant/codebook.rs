//! The 4-bit formats whose nibbles index a table of values instead of standing for an
//! integer: IQ4_NL (32-element blocks, f16 scale), IQ4_XS (256-element super-blocks with
//! 6-bit sub-block scales) and MXFP4 (32-element blocks of E2M1 values with an E8M0
//! exponent; gpt-oss weights). Dequantization and the scalar dot products that every SIMD
//! path is tested against.
//!
//! The dot products follow llama.cpp's AVX2 `vec_dot` kernels (`ggml-cpu/arch/x86/quants.c`):
//! IQ4_NL and MXFP4 against Q8_0 activations, block pairs split over two 8-lane
//! accumulators (even blocks in one, odd in the other) that are added lane by lane before the
//! horizontal sum, and an odd last block added as `fma(d, sum, total)` (the scalar tail, which
//! the reference compiler contracts); IQ4_XS against Q8_K, the scaled integer lane sums of a
//! super-block exact, then one fused multiply-add per super-block into one 8-lane accumulator.

use super::blocks::*;
use crate::lanes::{hsum8, LANES};

/// IQ4_NL's (and IQ4_XS's) value table.
pub const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// MXFP4's table: the sixteen E2M1 values, doubled (so that they are integers).
pub const KVALUES_MXFP4: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// Half of the E8M0 scale `2^(e - 127)`, i.e. `2^(e - 128)`, as ggml computes it (the two
/// smallest exponents give subnormals; NaN, `e = 255`, is not special-cased).
#[inline(always)]
pub fn e8m0_half(e: u8) -> f32 {
    let bits = if e < 2 {
        0x0020_0000u32 << e
    } else {
        (e as u32 - 1) << 23
    };
    f32::from_bits(bits)
}

/// Table value of element `j` of a 16-byte nibble array (low nibbles 0..16, high 16..32).
#[inline(always)]
fn value(table: &[i8; 16], qs: &[u8; 16], j: usize) -> i32 {
    let q = if j < 16 {
        qs[j] & 0x0F
    } else {
        qs[j - 16] >> 4
    };
    table[q as usize] as i32
}

pub fn dequant_iq4_nl(src: &[u8], dst: &mut [f32]) {
    for (b, y) in as_blocks::<BlockIQ4NL>(src)
        .iter()
        .zip(dst.chunks_exact_mut(QK))
    {
        let d = f16_at(b.d);
        for (j, v) in y.iter_mut().enumerate() {
            *v = d * value(&KVALUES_IQ4NL, &b.qs, j) as f32;
        }
    }
}

pub fn dequant_mxfp4(src: &[u8], dst: &mut [f32]) {
    for (b, y) in as_blocks::<BlockMXFP4>(src)
        .iter()
        .zip(dst.chunks_exact_mut(QK))
    {
        let d = e8m0_half(b.e);
        for (j, v) in y.iter_mut().enumerate() {
            *v = d * value(&KVALUES_MXFP4, &b.qs, j) as f32;
        }
    }
}

/// The signed 6-bit scale of sub-block `i` (0..8) of an IQ4_XS super-block.
#[inline(always)]
pub fn iq4_xs_scale(b: &BlockIQ4XS, i: usize) -> i32 {
    let low = (b.scales_l[i / 2] >> (4 * (i % 2))) & 0x0F;
    let high = (u16::from_le_bytes(b.scales_h) >> (2 * i)) & 0x03;
    (low as i32 | (high as i32) << 4) - 32
}

/// Sub-block `i` (0..8) of an IQ4_XS super-block's quants, as a Q4_0-style nibble array.
#[inline(always)]
pub fn iq4_xs_quants(b: &BlockIQ4XS, i: usize) -> &[u8; 16] {
    &b.qs.as_chunks::<16>().0[i]
}

pub fn dequant_iq4_xs(src: &[u8], dst: &mut [f32]) {
    for (b, y) in as_blocks::<BlockIQ4XS>(src)
        .iter()
        .zip(dst.chunks_exact_mut(QK_K))
    {
        let d = f16_at(b.d);
        for (i, sub) in y.chunks_exact_mut(QK).enumerate() {
            let dl = d * iq4_xs_scale(b, i) as f32;
            let qs = iq4_xs_quants(b, i);
            for (j, v) in sub.iter_mut().enumerate() {
                *v = dl * value(&KVALUES_IQ4NL, qs, j) as f32;
            }
        }
    }
}

/// Lane `l` of a 32-element block's products: elements `4l..4l+4` (what `maddubs` + `madd`
/// leave in each 32-bit lane).
#[inline(always)]
fn lane_sums(table: &[i8; 16], qs: &[u8; 16], y: &[u8; 32]) -> [i32; LANES] {
    let mut l = [0i32; LANES];
    for (i, v) in l.iter_mut().enumerate() {
        for j in 4 * i..4 * i + 4 {
            *v += value(table, qs, j) * (y[j] as i8) as i32;
        }
    }
    l
}

/// The shared body of the IQ4_NL and MXFP4 dot products: block `b` has scale `scale(b)`
/// (weight scale times activation scale) and quants `qs(b)`.
#[inline(always)]
fn dot_table_q8_0<B>(
    n: usize,
    table: &[i8; 16],
    w: &[B],
    a: &[BlockQ8_0],
    scale: impl Fn(&B, &BlockQ8_0) -> f32,
    qs: impl Fn(&B) -> &[u8; 16],
) -> f32 {
    let nb = (n / QK).min(w.len()).min(a.len());
    let mut acc = [[0.0f32; LANES]; 2];
    let pairs = nb / 2 * 2;
    for (ib, (x, y)) in w[..pairs].iter().zip(&a[..pairs]).enumerate() {
        let d = scale(x, y);
        let l = lane_sums(table, qs(x), &y.qs);
        for (s, &v) in acc[ib % 2].iter_mut().zip(&l) {
            *s = d.mul_add(v as f32, *s);
        }
    }
    let mut both = [0.0f32; LANES];
    for (i, v) in both.iter_mut().enumerate() {
        *v = acc[0][i] + acc[1][i];
    }
    let mut sum = hsum8(&both);
    for (x, y) in w[pairs..nb].iter().zip(&a[pairs..nb]) {
        let total: i32 = lane_sums(table, qs(x), &y.qs).iter().sum();
        sum = scale(x, y).mul_add(total as f32, sum);
    }
    sum
}

pub fn dot_iq4_nl_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_table_q8_0(
        n,
        &KVALUES_IQ4NL,
        as_blocks::<BlockIQ4NL>(w),
        as_blocks::<BlockQ8_0>(a),
        |x, y| f16_at(y.d) * f16_at(x.d),
        |x| &x.qs,
    )
}

pub fn dot_mxfp4_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_table_q8_0(
        n,
        &KVALUES_MXFP4,
        as_blocks::<BlockMXFP4>(w),
        as_blocks::<BlockQ8_0>(a),
        |x, y| f16_at(y.d) * e8m0_half(x.e),
        |x| &x.qs,
    )
}

/// The eight exact lane sums of one IQ4_XS super-block against its Q8_K activations:
/// lane `l` = Σ over sub-blocks of scale × (elements `4l..4l+4` of the sub-block's products).
#[inline(always)]
pub fn iq4_xs_lanes(x: &BlockIQ4XS, y: &BlockQ8K) -> [i32; LANES] {
    let mut lanes = [0i32; LANES];
    for i in 0..QK_K / QK {
        let ys = &y.qs.as_chunks::<QK>().0[i];
        let l = lane_sums(&KVALUES_IQ4NL, iq4_xs_quants(x, i), ys);
        let ls = iq4_xs_scale(x, i);
        for (s, v) in lanes.iter_mut().zip(l) {
            *s += ls * v;
        }
    }
    lanes
}

pub fn dot_iq4_xs_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = [0.0f32; LANES];
    for (x, y) in as_blocks::<BlockIQ4XS>(w)
        .iter()
        .zip(as_blocks::<BlockQ8K>(a))
        .take(n / QK_K)
    {
        let d = f16_at(x.d) * y.scale();
        for (s, v) in acc.iter_mut().zip(iq4_xs_lanes(x, y)) {
            *s = d.mul_add(v as f32, *s);
        }
    }
    hsum8(&acc)
}

/// IQ4_XS against Q8_K in `ggml-cpu/tiled`'s order (see [`crate::order::Order::Tiled`]): per
/// super-block the exact Σ scale·Σ value·y, times `d`, then `acc = fma(r, d_y, acc)`.
pub fn dot_iq4_xs_q8_k_tiled(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = 0.0f32;
    for (x, y) in as_blocks::<BlockIQ4XS>(w)
        .iter()
        .zip(as_blocks::<BlockQ8K>(a))
        .take(n / QK_K)
    {
        let s1: i32 = iq4_xs_lanes(x, y).iter().sum();
        acc = (f16_at(x.d) * s1 as f32).mul_add(y.scale(), acc);
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e8m0_halves_are_powers_of_two() {
        assert_eq!(e8m0_half(128), 1.0);
        assert_eq!(e8m0_half(127), 0.5);
        assert_eq!(e8m0_half(2), 2f32.powi(-126));
        assert_eq!(e8m0_half(1), 2f32.powi(-127));
        assert_eq!(e8m0_half(0), 2f32.powi(-128));
        assert_eq!(e8m0_half(254), 2f32.powi(126));
    }

    #[test]
    fn iq4_xs_scales_take_low_and_high_bits() {
        let mut b = BlockIQ4XS {
            d: [0; 2],
            scales_h: 0b11_10_01_00_11_10_01_00u16.to_le_bytes(),
            scales_l: [0x21, 0x43, 0x65, 0x87],
            qs: [0; 128],
        };
        let want = [1, 2 | 16, 3 | 32, 4 | 48, 5, 6 | 16, 7 | 32, 8 | 48];
        for (i, w) in want.iter().enumerate() {
            assert_eq!(iq4_xs_scale(&b, i), w - 32, "sub-block {i}");
        }
        b.scales_l = [0xFF; 4];
        b.scales_h = [0xFF; 2];
        assert_eq!(iq4_xs_scale(&b, 7), 31);
    }
}
