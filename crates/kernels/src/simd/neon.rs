//! AArch64 NEON kernels: the dot products of the 32-element formats (Q4_0, Q4_1, Q5_0, Q5_1,
//! Q8_0) against their 8-bit activations, in the reference order of [`crate::lanes`] — eight
//! lanes of four-element integer sums, one fused multiply-add per lane and block, the fixed
//! horizontal sum — so that every result is bit-identical to the scalar kernels. The eight
//! lanes are two 4-lane vectors. The K-quants (Q2_K … Q6_K) take the scalar kernels (their
//! eight-lane order has no NEON version yet). The float formats (F32, F16, BF16) have both reference orders (single token and batch).
//!
//! Integer sums are exact in any order; only the float steps are pinned down. This module
//! computes dot products only: dispatch and wrappers live in [`crate::simd`].

use std::arch::aarch64::*;

use crate::lanes::hsum8;
use crate::quant::blocks::*;

const QK: usize = 32;

/// The eight lane sums (elements 4l..4l+4) of a block: weights `w` (elements 0..16, 16..32)
/// times activations `y`, as two vectors of four f32 lanes.
#[inline(always)]
unsafe fn lane_sums(w: (int8x16_t, int8x16_t), y: &[u8; 32]) -> (float32x4_t, float32x4_t) {
    let y0 = vld1q_s8(y.as_ptr() as *const i8);
    let y1 = vld1q_s8(y.as_ptr().add(16) as *const i8);
    // Products of 8 elements widened to i16, pairs added to i32, then pairs of pairs: lane
    // sums of four consecutive elements in element order.
    let quad = |a: int8x16_t, b: int8x16_t| {
        let lo = vpaddlq_s16(vmull_s8(vget_low_s8(a), vget_low_s8(b)));
        let hi = vpaddlq_s16(vmull_high_s8(a, b));
        vcvtq_f32_s32(vpaddq_s32(lo, hi))
    };
    (quad(w.0, y0), quad(w.1, y1))
}

/// `acc += d · lanes` with fused multiply-adds, lane by lane.
#[inline(always)]
unsafe fn accumulate(
    acc: &mut (float32x4_t, float32x4_t),
    d: f32,
    lanes: (float32x4_t, float32x4_t),
) {
    acc.0 = vfmaq_n_f32(acc.0, lanes.0, d);
    acc.1 = vfmaq_n_f32(acc.1, lanes.1, d);
}

/// The reference horizontal sum of the eight lanes.
#[inline(always)]
unsafe fn finish(acc: (float32x4_t, float32x4_t)) -> f32 {
    let mut a = [0.0f32; 8];
    vst1q_f32(a.as_mut_ptr(), acc.0);
    vst1q_f32(a.as_mut_ptr().add(4), acc.1);
    hsum8(&a)
}

/// A block's 16 nibble bytes as elements 0..16 (low nibbles) and 16..32 (high nibbles).
#[inline(always)]
unsafe fn nibbles(qs: &[u8; 16]) -> (uint8x16_t, uint8x16_t) {
    let v = vld1q_u8(qs.as_ptr());
    (vandq_u8(v, vdupq_n_u8(0x0F)), vshrq_n_u8(v, 4))
}

/// The fifth bits of a Q5 block (`qh`, bit j for element j) as 16 or 0 per element.
#[inline(always)]
unsafe fn fifth_bits(qh: &[u8; 4]) -> (uint8x16_t, uint8x16_t) {
    let bits: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
    let m = vld1q_u8(bits.as_ptr());
    let spread = |a: u8, b: u8| {
        let v = vcombine_u8(vdup_n_u8(a), vdup_n_u8(b));
        vandq_u8(vtstq_u8(v, m), vdupq_n_u8(16))
    };
    (spread(qh[0], qh[1]), spread(qh[2], qh[3]))
}

#[inline(always)]
unsafe fn signed(v: (uint8x16_t, uint8x16_t), offset: i8) -> (int8x16_t, int8x16_t) {
    let o = vdupq_n_s8(offset);
    (
        vsubq_s8(vreinterpretq_s8_u8(v.0), o),
        vsubq_s8(vreinterpretq_s8_u8(v.1), o),
    )
}

#[inline(always)]
unsafe fn or2(
    a: (uint8x16_t, uint8x16_t),
    b: (uint8x16_t, uint8x16_t),
) -> (uint8x16_t, uint8x16_t) {
    (vorrq_u8(a.0, b.0), vorrq_u8(a.1, b.1))
}

/// One dot product over `n / 32` blocks: `$quants(x)` gives a weight block's signed elements;
/// `$min` adds the formats' `m_w · s_a` term (sequential f32 sum, added after the lanes).
macro_rules! dot32 {
    ($name:ident, $wblock:ty, $ablock:ty, |$x:ident| $quants:expr, $min:expr) => {
        #[target_feature(enable = "neon")]
        pub unsafe fn $name(n: usize, w: &[u8], a: &[u8]) -> f32 {
            let mut acc = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
            let mut summs = 0.0f32;
            for ($x, y) in as_blocks::<$wblock>(w)
                .iter()
                .zip(as_blocks::<$ablock>(a))
                .take(n / QK)
            {
                if $min {
                    summs += min_term($x, y);
                }
                let l = lane_sums($quants, &y.qs);
                accumulate(&mut acc, f16_at($x.d) * f16_at(y.d), l);
            }
            if $min {
                finish(acc) + summs
            } else {
                finish(acc)
            }
        }
    };
}

trait MinTerm<A> {
    fn min_term(&self, y: &A) -> f32;
}
impl MinTerm<BlockQ8_1> for BlockQ4_1 {
    #[inline(always)]
    fn min_term(&self, y: &BlockQ8_1) -> f32 {
        f16_at(self.m) * f16_at(y.s)
    }
}
impl MinTerm<BlockQ8_1> for BlockQ5_1 {
    #[inline(always)]
    fn min_term(&self, y: &BlockQ8_1) -> f32 {
        f16_at(self.m) * f16_at(y.s)
    }
}
impl MinTerm<BlockQ8_0> for BlockQ4_0 {
    #[inline(always)]
    fn min_term(&self, _: &BlockQ8_0) -> f32 {
        0.0
    }
}
impl MinTerm<BlockQ8_0> for BlockQ5_0 {
    #[inline(always)]
    fn min_term(&self, _: &BlockQ8_0) -> f32 {
        0.0
    }
}
impl MinTerm<BlockQ8_0> for BlockQ8_0 {
    #[inline(always)]
    fn min_term(&self, _: &BlockQ8_0) -> f32 {
        0.0
    }
}

#[inline(always)]
fn min_term<W: MinTerm<A>, A>(x: &W, y: &A) -> f32 {
    x.min_term(y)
}

dot32!(
    dot_q4_0_q8_0,
    BlockQ4_0,
    BlockQ8_0,
    |x| signed(nibbles(&x.qs), 8),
    false
);
dot32!(
    dot_q4_1_q8_1,
    BlockQ4_1,
    BlockQ8_1,
    |x| signed(nibbles(&x.qs), 0),
    true
);
dot32!(
    dot_q5_0_q8_0,
    BlockQ5_0,
    BlockQ8_0,
    |x| signed(or2(nibbles(&x.qs), fifth_bits(&x.qh)), 16),
    false
);
dot32!(
    dot_q5_1_q8_1,
    BlockQ5_1,
    BlockQ8_1,
    |x| signed(or2(nibbles(&x.qs), fifth_bits(&x.qh)), 0),
    true
);
dot32!(
    dot_q8_0_q8_0,
    BlockQ8_0,
    BlockQ8_0,
    |x| (
        vld1q_s8(x.qs.as_ptr() as *const i8),
        vld1q_s8(x.qs.as_ptr().add(16) as *const i8)
    ),
    false
);

// ---------------------------------------------------------------------------------------------
// Float weights (F32, F16, BF16) against activations of the same type, in the two reference
// orders of `crate::quant::float`: each 8-lane accumulator of the scalar code is a pair of
// 4-lane vectors, multiply-adds fused as there, the reductions and tails done by the scalar
// helpers on the stored lanes. Conversions to f32 are exact.

use crate::lanes::reduce4x8;
use crate::quant::float::{vec_tail, Elem, BF16, F16, F32};

/// A float element type's eight-element loads.
trait Lanes8: Elem {
    /// Elements `0..4` and `4..8` at `p` as f32.
    unsafe fn load8(p: *const u8) -> (float32x4_t, float32x4_t);
}

impl Lanes8 for F32 {
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> (float32x4_t, float32x4_t) {
        let f = p as *const f32;
        (vld1q_f32(f), vld1q_f32(f.add(4)))
    }
}

/// Four halves as f32, exactly (with integer steps: the f16 conversion intrinsics are newer
/// than the project's minimum Rust). The exponent and mantissa, moved to an f32's places and
/// scaled by 2^112, give every finite value, subnormals included; infinities and NaNs (all
/// exponent bits set) get the f32 exponent field set instead; then the sign.
#[inline(always)]
unsafe fn halves_to_f32(h: uint16x4_t) -> float32x4_t {
    let bits = vmovl_u16(h);
    let sign = vshlq_n_u32::<16>(vandq_u32(bits, vdupq_n_u32(0x8000)));
    let em = vandq_u32(bits, vdupq_n_u32(0x7fff));
    let moved = vshlq_n_u32::<13>(em);
    let finite = vreinterpretq_u32_f32(vmulq_f32(
        vreinterpretq_f32_u32(moved),
        vdupq_n_f32(f32::from_bits(0x7780_0000)), // 2^112
    ));
    let special = vorrq_u32(moved, vdupq_n_u32(0x7f80_0000));
    let is_special = vcgeq_u32(em, vdupq_n_u32(0x7c00));
    vreinterpretq_f32_u32(vorrq_u32(vbslq_u32(is_special, special, finite), sign))
}

impl Lanes8 for F16 {
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> (float32x4_t, float32x4_t) {
        let h = vld1q_u16(p as *const u16);
        (
            halves_to_f32(vget_low_u16(h)),
            halves_to_f32(vget_high_u16(h)),
        )
    }
}

impl Lanes8 for BF16 {
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> (float32x4_t, float32x4_t) {
        let h = vld1q_u16(p as *const u16);
        let wide = |v: uint16x4_t| vreinterpretq_f32_u32(vshlq_n_u32::<16>(vmovl_u16(v)));
        (wide(vget_low_u16(h)), wide(vget_high_u16(h)))
    }
}

#[inline(always)]
unsafe fn store8(v: (float32x4_t, float32x4_t)) -> [f32; 8] {
    let mut a = [0.0f32; 8];
    vst1q_f32(a.as_mut_ptr(), v.0);
    vst1q_f32(a.as_mut_ptr().add(4), v.1);
    a
}

/// [`crate::quant::float::dot_vec`]: four 8-lane accumulators over 32-element steps.
#[inline(always)]
unsafe fn float_dot_vec<E: Lanes8>(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let n = n.min(w.len() / E::BYTES).min(a.len() / E::BYTES);
    let zero = vdupq_n_f32(0.0);
    let mut acc = [(zero, zero); 4];
    let np = n & !31;
    let (wp, ap) = (w.as_ptr(), a.as_ptr());
    for i in (0..np).step_by(32) {
        for (j, s) in acc.iter_mut().enumerate() {
            let e = (i + 8 * j) * E::BYTES;
            let (w0, w1) = E::load8(wp.add(e));
            let (a0, a1) = E::load8(ap.add(e));
            *s = (vfmaq_f32(s.0, w0, a0), vfmaq_f32(s.1, w1, a1));
        }
    }
    let r = reduce4x8(&[
        store8(acc[0]),
        store8(acc[1]),
        store8(acc[2]),
        store8(acc[3]),
    ]);
    vec_tail::<E>(r, w, a, np..n)
}

/// [`crate::quant::float::dot_gemm`]: one 8-lane accumulator over 8-element steps.
#[inline(always)]
unsafe fn float_dot_gemm<E: Lanes8>(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let n = n.min(w.len() / E::BYTES).min(a.len() / E::BYTES);
    let zero = vdupq_n_f32(0.0);
    let mut acc = (zero, zero);
    let (wp, ap) = (w.as_ptr(), a.as_ptr());
    for i in (0..n / 8 * 8).step_by(8) {
        let (w0, w1) = E::load8(wp.add(i * E::BYTES));
        let (a0, a1) = E::load8(ap.add(i * E::BYTES));
        acc = (vfmaq_f32(acc.0, w0, a0), vfmaq_f32(acc.1, w1, a1));
    }
    hsum8(&store8(acc))
}

macro_rules! float_neon {
    ($e:ty, $dot:ident, $dotb:ident) => {
        #[target_feature(enable = "neon")]
        pub unsafe fn $dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
            float_dot_vec::<$e>(n, w, a)
        }

        #[target_feature(enable = "neon")]
        pub unsafe fn $dotb(n: usize, w: &[u8], a: &[u8]) -> f32 {
            float_dot_gemm::<$e>(n, w, a)
        }
    };
}

float_neon!(F32, dot_f32, dot_f32_batched);
float_neon!(F16, dot_f16, dot_f16_batched);
float_neon!(BF16, dot_bf16, dot_bf16_batched);
