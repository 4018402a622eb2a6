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

/// `[f(0), f(1), …]` built with a plain loop: closures passed to `std::array::from_fn` are
/// compiled without the caller's target features, so intrinsics in them are not inlined.
macro_rules! arr {
    ($n:expr, $zero:expr, |$i:ident| $e:expr) => {{
        let mut a = [$zero; $n];
        let mut $i = 0;
        while $i < $n {
            a[$i] = $e;
            $i += 1;
        }
        a
    }};
}

/// Half to float with F16C.
#[inline(always)]
pub(crate) unsafe fn h(b: [u8; 2]) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(
        _mm_cvtsi32_si128(u16::from_le_bytes(b) as i32),
    ))
}

#[inline(always)]
pub(crate) unsafe fn hsum(x: __m256) -> f32 {
    let mut r = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    _mm_cvtss_f32(r)
}

/// 32 nibbles as bytes: low nibbles of the 16 bytes first, then the high ones.
#[inline(always)]
pub(super) unsafe fn nibbles(qs: &[u8; 16]) -> __m256i {
    let t = _mm_loadu_si128(qs.as_ptr() as *const __m128i);
    let both = _mm256_set_m128i(_mm_srli_epi16(t, 4), t);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}

/// 0xFF in byte j where bit j of `qh` is set.
#[inline(always)]
pub(super) unsafe fn bits_to_bytes(qh: &[u8; 4]) -> __m256i {
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
pub(super) unsafe fn dot_us8(ux: __m256i, sy: __m256i) -> __m256 {
    let pairs = _mm256_maddubs_epi16(ux, sy);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_set1_epi16(1), pairs))
}

/// Signed × signed bytes, summed in fours, as floats.
#[inline(always)]
pub(super) unsafe fn dot_s8(x: __m256i, y: __m256i) -> __m256 {
    dot_us8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
}

#[inline(always)]
pub(crate) unsafe fn load32(qs: &[u8; 32]) -> __m256i {
    _mm256_loadu_si256(qs.as_ptr() as *const __m256i)
}

/// Target-feature wrappers `$name(t)` around generic tile kernels `$kernel::<$t>(t)`.
macro_rules! avx2_tiles {
    ($($name:ident => $kernel:ident::<$t:ty>),* $(,)?) => {
        $(
            #[target_feature(enable = "avx2,fma,f16c")]
            pub unsafe fn $name(t: &Tile) {
                $kernel::<$t>(t)
            }
        )*
    };
}

mod attention;
mod codebook;
mod flash;
mod float;
mod kquants;
mod kquants_rows8;
mod q32_dots;
mod q32_panels;
mod q32_tiles;
mod q6k_rows8;
mod quantize;

pub(crate) use attention::*;
pub(crate) use codebook::*;
pub(crate) use flash::*;
pub(crate) use float::*;
pub(crate) use kquants::*;
pub(crate) use kquants_rows8::*;
pub(crate) use q32_dots::*;
pub(crate) use q32_panels::*;
pub(crate) use q32_tiles::*;
pub(crate) use q6k_rows8::*;
pub(crate) use quantize::*;
