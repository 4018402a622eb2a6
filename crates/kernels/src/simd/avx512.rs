//! x86-64 AVX-512 (F + BW) kernels: the single-token dot products of the 32-element formats
//! (two blocks per 512-bit register) and the float formats (sixteen elements per register).
//!
//! Each computes exactly what its scalar counterpart in [`crate::quant`] computes, in the same
//! order (see [`crate::lanes`]), so results are bit-identical to the scalar and AVX2 kernels:
//! the integer sums of a block are exact whatever the register width, and the floating-point
//! accumulation keeps the reference's 8-lane accumulators — a 512-bit product of two blocks is
//! added half by half, in block order; a 512-bit float accumulator is two of the reference's
//! four 8-lane ones side by side. The property tests hold them to it (on this project's
//! machines only under emulation: see `.ci/avx512`).
//!
//! What is not here, an AVX-512 CPU runs with the AVX2 kernels ([`super::vec_dot`] falls back
//! to them): the k-quants (whose eight-lane order the AVX2 kernels hold directly), the tile
//! kernels, attention, the activation encoders.
//! With AVX-512 VNNI ([`crate::Isa::Avx512Vnni`]) the same dot products take `vpdpbusd`, which
//! sums each lane's four byte products straight into a dword: the lane sums of `maddubs` +
//! `madd` (no i16 step saturates for these formats' ranges), so the same bits.
//!
//! Every function here is `unsafe` and `#[target_feature]`: callers must have checked that the
//! CPU supports AVX-512 F/BW/VL and AVX2/FMA/F16C ([`crate::Isa::Avx512`]); [`crate::Kernels`]
//! only hands them out after that check.

#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use super::avx2::{h, hsum, load32, reduce4};
use crate::quant::blocks::*;
use crate::quant::float::{vec_tail, Elem, BF16, F16, F32};

/// Two 256-bit halves as one register, `lo` in the low half.
#[inline(always)]
unsafe fn join(lo: __m256i, hi: __m256i) -> __m512i {
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
}

#[inline(always)]
unsafe fn low(p: __m512) -> __m256 {
    _mm512_castps512_ps256(p)
}

#[inline(always)]
unsafe fn high(p: __m512) -> __m256 {
    _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(p)))
}

/// The nibbles of two blocks as bytes: for each block, as the AVX2 kernels' `nibbles` (low
/// nibbles of its 16 bytes, then the high ones), the first block in the low half.
#[inline(always)]
unsafe fn nibbles2(a: &[u8; 16], b: &[u8; 16]) -> __m512i {
    let t = _mm256_set_m128i(
        _mm_loadu_si128(b.as_ptr() as *const __m128i),
        _mm_loadu_si128(a.as_ptr() as *const __m128i),
    );
    // [a, b, a >> 4, b >> 4] in 128-bit lanes, reordered to [a, a >> 4, b, b >> 4].
    let z = join(t, _mm256_srli_epi16::<4>(t));
    _mm512_and_si512(
        _mm512_shuffle_i64x2::<0b11_01_10_00>(z, z),
        _mm512_set1_epi8(0x0F),
    )
}

/// The fifth bits of two Q5 blocks as a byte mask: bit j of `a`'s `qh` is byte j, bit j of
/// `b`'s is byte 32 + j.
#[inline(always)]
fn high_bits2(a: &[u8; 4], b: &[u8; 4]) -> __mmask64 {
    u32::from_le_bytes(*a) as u64 | (u32::from_le_bytes(*b) as u64) << 32
}

/// An 8-bit activation block: Q8_0 for the symmetric weight formats (signed quants), Q8_1 for
/// those with a minimum (unsigned quants; `m · s` summed apart from the products).
trait ActBlock: bytemuck::Pod {
    const WITH_MIN: bool;
    fn qs(&self) -> &[u8; 32];
    fn d(&self) -> [u8; 2];
    /// The sum term `s` (Q8_1 only).
    fn s(&self) -> [u8; 2] {
        [0; 2]
    }
}

impl ActBlock for BlockQ8_0 {
    const WITH_MIN: bool = false;
    fn qs(&self) -> &[u8; 32] {
        &self.qs
    }
    fn d(&self) -> [u8; 2] {
        self.d
    }
}

impl ActBlock for BlockQ8_1 {
    const WITH_MIN: bool = true;
    fn qs(&self) -> &[u8; 32] {
        &self.qs
    }
    fn d(&self) -> [u8; 2] {
        self.d
    }
    fn s(&self) -> [u8; 2] {
        self.s
    }
}

/// A 32-element weight format, two blocks at a time.
trait Pair: bytemuck::Pod {
    /// The activation block type it is multiplied with (which says whether it is signed and
    /// has a minimum).
    type Act: ActBlock;
    fn d(&self) -> [u8; 2];
    /// The minimum `m` (formats paired with Q8_1 only).
    fn m(&self) -> [u8; 2] {
        [0; 2]
    }
    /// The quants of two blocks as bytes, `a`'s in the low half.
    unsafe fn quants2(a: &Self, b: &Self) -> __m512i;
}

impl Pair for BlockQ4_0 {
    type Act = BlockQ8_0;
    fn d(&self) -> [u8; 2] {
        self.d
    }
    #[inline(always)]
    unsafe fn quants2(a: &Self, b: &Self) -> __m512i {
        _mm512_sub_epi8(nibbles2(&a.qs, &b.qs), _mm512_set1_epi8(8))
    }
}

impl Pair for BlockQ4_1 {
    type Act = BlockQ8_1;
    fn d(&self) -> [u8; 2] {
        self.d
    }
    fn m(&self) -> [u8; 2] {
        self.m
    }
    #[inline(always)]
    unsafe fn quants2(a: &Self, b: &Self) -> __m512i {
        nibbles2(&a.qs, &b.qs)
    }
}

impl Pair for BlockQ5_0 {
    type Act = BlockQ8_0;
    fn d(&self) -> [u8; 2] {
        self.d
    }
    #[inline(always)]
    unsafe fn quants2(a: &Self, b: &Self) -> __m512i {
        // 0xF0 (the value minus 16) where the fifth bit is clear.
        let k = high_bits2(&a.qh, &b.qh);
        let hi = _mm512_maskz_mov_epi8(!k, _mm512_set1_epi8(0xF0u8 as i8));
        _mm512_or_si512(nibbles2(&a.qs, &b.qs), hi)
    }
}

impl Pair for BlockQ5_1 {
    type Act = BlockQ8_1;
    fn d(&self) -> [u8; 2] {
        self.d
    }
    fn m(&self) -> [u8; 2] {
        self.m
    }
    #[inline(always)]
    unsafe fn quants2(a: &Self, b: &Self) -> __m512i {
        let k = high_bits2(&a.qh, &b.qh);
        let hi = _mm512_maskz_mov_epi8(k, _mm512_set1_epi8(0x10));
        _mm512_or_si512(nibbles2(&a.qs, &b.qs), hi)
    }
}

impl Pair for BlockQ8_0 {
    type Act = BlockQ8_0;
    fn d(&self) -> [u8; 2] {
        self.d
    }
    #[inline(always)]
    unsafe fn quants2(a: &Self, b: &Self) -> __m512i {
        join(load32(&a.qs), load32(&b.qs))
    }
}

/// Weight × activation bytes summed in fours, as floats (one lane per four products): the
/// lanes of the AVX2 kernels' `dot_s8` / `dot_us8` for each half.
#[inline(always)]
unsafe fn products<B: Pair, const VNNI: bool>(x: __m512i, y: __m512i) -> __m512 {
    // Formats without a minimum have signed quants.
    let (ux, sy) = if !B::Act::WITH_MIN {
        // |x| × (y with x's sign): the products of AVX2's sign trick (a zero x zeroes the
        // product either way).
        let negative = _mm512_movepi8_mask(x);
        let sy = _mm512_mask_sub_epi8(y, negative, _mm512_setzero_si512(), y);
        (_mm512_abs_epi8(x), sy)
    } else {
        (x, y)
    };
    if VNNI {
        return _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), ux, sy));
    }
    let pairs = _mm512_maddubs_epi16(ux, sy);
    _mm512_cvtepi32_ps(_mm512_madd_epi16(_mm512_set1_epi16(1), pairs))
}

/// The dot product of the first `n` elements in the reference order: one 8-lane accumulator,
/// one fused multiply-add per block in block order, the minimum terms summed apart.
#[inline(always)]
unsafe fn dot_pairs<B: Pair, const VNNI: bool>(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let xs = as_blocks::<B>(w);
    let ys = as_blocks::<B::Act>(a);
    let nb = (n / QK).min(xs.len()).min(ys.len());
    let mut acc = _mm256_setzero_ps();
    let mut summs = 0.0f32;
    let mut i = 0;
    while i < nb {
        let (x0, y0) = (&xs[i], &ys[i]);
        // A lone last block is paired with itself; its second half is not used.
        let pair = i + 1 < nb;
        let (x1, y1) = if pair {
            (&xs[i + 1], &ys[i + 1])
        } else {
            (x0, y0)
        };
        let p = products::<B, VNNI>(B::quants2(x0, x1), join(load32(y0.qs()), load32(y1.qs())));
        let halves = [(x0, y0, low(p)), (x1, y1, high(p))];
        for &(x, y, q) in &halves[..if pair { 2 } else { 1 }] {
            if B::Act::WITH_MIN {
                summs += h(x.m()) * h(y.s());
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(h(x.d()) * h(y.d())), q, acc);
        }
        i += 2;
    }
    if B::Act::WITH_MIN {
        hsum(acc) + summs
    } else {
        hsum(acc)
    }
}

/// A float element type's sixteen-element load.
trait Wide: Elem {
    unsafe fn load16(p: *const u8) -> __m512;
}

impl Wide for F32 {
    #[inline(always)]
    unsafe fn load16(p: *const u8) -> __m512 {
        _mm512_loadu_ps(p as *const f32)
    }
}

impl Wide for F16 {
    #[inline(always)]
    unsafe fn load16(p: *const u8) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }
}

impl Wide for BF16 {
    #[inline(always)]
    unsafe fn load16(p: *const u8) -> __m512 {
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(
            _mm256_loadu_si256(p as *const __m256i),
        )))
    }
}

/// The `vec_dot` order over the first `n` elements of `w` and `x` (at most what they hold):
/// the reference's four 8-lane accumulators over 32-element steps, held as two 16-lane ones.
#[inline(always)]
unsafe fn fdot_vec<E: Wide>(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let n = n.min(w.len() / E::BYTES).min(x.len() / E::BYTES);
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let mut acc = [_mm512_setzero_ps(); 2];
    let np = n & !31;
    for i in (0..np).step_by(32) {
        for (j, a) in acc.iter_mut().enumerate() {
            let e = (i + 16 * j) * E::BYTES;
            *a = _mm512_fmadd_ps(E::load16(wp.add(e)), E::load16(xp.add(e)), *a);
        }
    }
    let four = [low(acc[0]), high(acc[0]), low(acc[1]), high(acc[1])];
    vec_tail::<E>(reduce4(&four), w, x, np..n)
}

/// Declares the public dot-product kernels, one per weight type.
macro_rules! dots {
    ($features:literal: $($name:ident => $f:ident::<$($t:tt),+>),* $(,)?) => {
        $(
            #[target_feature(enable = $features)]
            pub unsafe fn $name(n: usize, w: &[u8], a: &[u8]) -> f32 {
                $f::<$($t),+>(n, w, a)
            }
        )*
    };
}

dots! {
    "avx512f,avx512bw,avx512vl,avx2,fma,f16c":
    dot_q4_0_q8_0 => dot_pairs::<BlockQ4_0, false>,
    dot_q4_1_q8_1 => dot_pairs::<BlockQ4_1, false>,
    dot_q5_0_q8_0 => dot_pairs::<BlockQ5_0, false>,
    dot_q5_1_q8_1 => dot_pairs::<BlockQ5_1, false>,
    dot_q8_0_q8_0 => dot_pairs::<BlockQ8_0, false>,
    dot_f32 => fdot_vec::<F32>,
    dot_f16 => fdot_vec::<F16>,
    dot_bf16 => fdot_vec::<BF16>,
}

dots! {
    "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c":
    dot_q4_0_q8_0_vnni => dot_pairs::<BlockQ4_0, true>,
    dot_q4_1_q8_1_vnni => dot_pairs::<BlockQ4_1, true>,
    dot_q5_0_q8_0_vnni => dot_pairs::<BlockQ5_0, true>,
    dot_q5_1_q8_1_vnni => dot_pairs::<BlockQ5_1, true>,
    dot_q8_0_q8_0_vnni => dot_pairs::<BlockQ8_0, true>,
}

/// Q8_K activation quantization, sixteen values per register: exactly the scalar
/// [`crate::quant::kquants::quantize_q8_k`] (the largest |x| and the first value that has it,
/// `iscale = -127 / max`, round half to even, at most 127, group sums of sixteen).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn quantize_q8_k(src: &[f32], dst: &mut [u8]) {
    let sign = _mm512_set1_ps(-0.0);
    for (x, b) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(292)) {
        let p = x.as_ptr();
        let mut v = [_mm512_setzero_ps(); 16];
        let mut m = _mm512_setzero_ps();
        for (g, vg) in v.iter_mut().enumerate() {
            *vg = _mm512_loadu_ps(p.add(16 * g));
            // A NaN |x| loses to the running maximum (the second operand), as the scalar
            // comparison skips it.
            m = _mm512_max_ps(_mm512_andnot_ps(sign, *vg), m);
        }
        let amax = _mm512_reduce_max_ps(m);
        if amax == 0.0 {
            b.fill(0);
            continue;
        }
        // The first value whose |x| is the largest.
        let am = _mm512_set1_ps(amax);
        let mut max = 0.0f32;
        for (g, vg) in v.iter().enumerate() {
            let k = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(_mm512_andnot_ps(sign, *vg), am);
            if k != 0 {
                max = x[16 * g + k.trailing_zeros() as usize];
                break;
            }
        }
        let iscale = -127.0f32 / max;
        let is = _mm512_set1_ps(iscale);
        let qs = b.as_mut_ptr().add(4);
        let bs = b.as_mut_ptr().add(260);
        for (g, vg) in v.iter().enumerate() {
            let r = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm512_mul_ps(is, *vg),
            );
            let q = _mm512_min_epi32(_mm512_cvtps_epi32(r), _mm512_set1_epi32(127));
            _mm_storeu_si128(qs.add(16 * g) as *mut __m128i, _mm512_cvtepi32_epi8(q));
            let s = _mm512_reduce_add_epi32(q) as i16;
            bs.add(2 * g)
                .copy_from_nonoverlapping(s.to_le_bytes().as_ptr(), 2);
        }
        b[..4].copy_from_slice(&(1.0f32 / iscale).to_le_bytes());
    }
}
