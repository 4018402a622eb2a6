//! SIMD kernels, one module per instruction set, chosen at run time by [`crate::Kernels`].
//! They compute exactly what the scalar reference does (same operations, same order).

#[cfg(target_arch = "x86_64")]
pub(crate) mod amx;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512_flash;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512_tiles;
pub mod f16_attention;
#[cfg(target_arch = "aarch64")]
pub(crate) mod neon;

use crate::isa::Isa;
use crate::order::Order;
use crate::quant::{GgmlType, VecDotFn};

/// Wraps an `unsafe` target-feature kernel in a safe function pointer.
#[allow(unused_macros)]
macro_rules! checked {
    ($($name:ident => $path:path),* $(,)?) => {
        $(
            fn $name(n: usize, w: &[u8], a: &[u8]) -> f32 {
                // SAFETY: these wrappers are only handed out by `vec_dot` for an `Isa` whose
                // CPU support `Kernels::new` verified.
                unsafe { $path(n, w, a) }
            }
        )*
    };
}

#[cfg(target_arch = "x86_64")]
checked! {
    avx2_q4_0 => avx2::dot_q4_0_q8_0,
    avx2_q4_1 => avx2::dot_q4_1_q8_1,
    avx2_q5_0 => avx2::dot_q5_0_q8_0,
    avx2_q5_1 => avx2::dot_q5_1_q8_1,
    avx2_q8_0 => avx2::dot_q8_0_q8_0,
    avx2_q2_k => avx2::dot_q2_k_q8_k,
    avx2_q3_k => avx2::dot_q3_k_q8_k,
    avx2_q4_k => avx2::dot_q4_k_q8_k,
    avx2_q5_k => avx2::dot_q5_k_q8_k,
    avx2_q6_k => avx2::dot_q6_k_q8_k,
    avx2_iq4_nl => avx2::dot_iq4_nl_q8_0,
    avx2_iq4_xs => avx2::dot_iq4_xs_q8_k,
    avx2_mxfp4 => avx2::dot_mxfp4_q8_0,
    avx2_f32 => avx2::dot_f32,
    avx2_f16 => avx2::dot_f16,
    avx2_bf16 => avx2::dot_bf16,
    avx2_f32_b => avx2::dot_f32_batched,
    avx2_f16_b => avx2::dot_f16_batched,
    avx2_bf16_b => avx2::dot_bf16_batched,
}

#[cfg(target_arch = "x86_64")]
checked! {
    avx2_iq4_nl_r => avx2::dot_iq4_nl_q8_0_repacked,
    avx2_mxfp4_r => avx2::dot_mxfp4_q8_0_repacked,
    avx2_iq4_xs_t => avx2::dot_iq4_xs_q8_k_tiled,
}

/// The SIMD dot product for weights of type `ty` in one of llama.cpp's other orders (repacked,
/// tiled) on `isa`, where there is one; the tile kernels cover the rest.
pub(crate) fn vec_dot_in(isa: Isa, ty: GgmlType, order: Order) -> Option<VecDotFn> {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 | Isa::Avx512Vnni | Isa::Amx => match (order.canonical(ty), ty) {
            (Order::Gemv, GgmlType::IQ4_NL) => Some(avx2_iq4_nl_r),
            (Order::Gemv, GgmlType::MXFP4) => Some(avx2_mxfp4_r),
            (Order::Tiled, GgmlType::IQ4_XS) => Some(avx2_iq4_xs_t),
            _ => None,
        },
        _ => {
            let _ = (ty, order);
            None
        }
    }
}

#[cfg(target_arch = "x86_64")]
checked! {
    avx512_q4_0 => avx512::dot_q4_0_q8_0,
    avx512_q4_1 => avx512::dot_q4_1_q8_1,
    avx512_q5_0 => avx512::dot_q5_0_q8_0,
    avx512_q5_1 => avx512::dot_q5_1_q8_1,
    avx512_q8_0 => avx512::dot_q8_0_q8_0,
    avx512_f32 => avx512::dot_f32,
    avx512_f16 => avx512::dot_f16,
    avx512_bf16 => avx512::dot_bf16,
    vnni_q4_0 => avx512::dot_q4_0_q8_0_vnni,
    vnni_q4_1 => avx512::dot_q4_1_q8_1_vnni,
    vnni_q5_0 => avx512::dot_q5_0_q8_0_vnni,
    vnni_q5_1 => avx512::dot_q5_1_q8_1_vnni,
    vnni_q8_0 => avx512::dot_q8_0_q8_0_vnni,
}

#[cfg(target_arch = "aarch64")]
checked! {
    neon_q4_0 => neon::dot_q4_0_q8_0,
    neon_q4_1 => neon::dot_q4_1_q8_1,
    neon_q5_0 => neon::dot_q5_0_q8_0,
    neon_q5_1 => neon::dot_q5_1_q8_1,
    neon_q8_0 => neon::dot_q8_0_q8_0,
    neon_f32 => neon::dot_f32,
    neon_f16 => neon::dot_f16,
    neon_bf16 => neon::dot_bf16,
    neon_f32_b => neon::dot_f32_batched,
    neon_f16_b => neon::dot_f16_batched,
    neon_bf16_b => neon::dot_bf16_batched,
}

/// Wraps an `unsafe` target-feature tile kernel in a safe function pointer.
#[allow(unused_macros)]
macro_rules! checked_tile {
    ($($name:ident => $path:path),* $(,)?) => {
        $(
            fn $name(t: &crate::tile::Tile) {
                // SAFETY: handed out by `gemm` only for an `Isa` whose CPU support
                // `Kernels::new` verified; every `Tile` names only bytes inside its slices.
                unsafe { $path(t) }
            }
        )*
    };
}

#[cfg(target_arch = "x86_64")]
checked_tile! {
    avx2_gemm_q4_0 => avx2::gemm_q4_0,
    avx2_gemm_q4_1 => avx2::gemm_q4_1,
    avx2_gemm_q5_0 => avx2::gemm_q5_0,
    avx2_gemm_q5_1 => avx2::gemm_q5_1,
    avx2_gemm_q8_0 => avx2::gemm_q8_0,
    avx2_gemm_q2_k => avx2::gemm_q2_k,
    avx2_gemm_q3_k => avx2::gemm_q3_k,
    avx2_gemm_q4_k => avx2::gemm_q4_k,
    avx2_gemm_q5_k => avx2::gemm_q5_k,
    avx2_gemm_q6_k => avx2::gemm_q6_k,
    avx2_gemm_f32 => avx2::gemm_f32,
    avx2_gemm_f16 => avx2::gemm_f16,
    avx2_gemm_bf16 => avx2::gemm_bf16,
    avx2_rows8_q4_0 => avx2::gemm_rows8_q4_0,
    avx2_rows8_q4_1 => avx2::gemm_rows8_q4_1,
    avx2_rows8_q5_0 => avx2::gemm_rows8_q5_0,
    avx2_rows8_q5_1 => avx2::gemm_rows8_q5_1,
    avx2_rows8_q8_0 => avx2::gemm_rows8_q8_0,
    avx2_rows8_q4_k => avx2::gemm_rows8_q4_k,
    avx2_rows8_q6_k => avx2::gemm_rows8_q6_k,
}

#[cfg(target_arch = "x86_64")]
checked_tile! {
    amx_rows8_q4_k => amx::gemm_rows8_q4_k,
    amx_rows8_q6_k => amx::gemm_rows8_q6_k,
    amx_rows8_q4_0 => amx::gemm_rows8_q4_0,
    vnni_rows8_q4_1 => avx512_tiles::gemm_rows8_q4_1,
    vnni_rows8_q5_0 => avx512_tiles::gemm_rows8_q5_0,
    vnni_rows8_q5_1 => avx512_tiles::gemm_rows8_q5_1,
    vnni_rows8_q8_0 => avx512_tiles::gemm_rows8_q8_0,
}

/// Whether the order is one of llama.cpp's repacked ones for `ty`.
fn repacked(ty: GgmlType, order: Order) -> bool {
    matches!(order.canonical(ty), Order::Gemv | Order::Gemm)
}

/// The tile kernel for interleaved (eight-row) weights of type `ty` in `order` on `isa`, if
/// there is one (Q4_0 and Q4_K have the repacked orders too).
pub(crate) fn gemm_rows8(isa: Isa, ty: GgmlType, order: Order) -> Option<crate::tile::GemmFn> {
    // Q4_K's interleaved kernel has only the repacked orders (llama.cpp repacks every Q4_K
    // matrix that has the eight-row layout's shape).
    let repacked = repacked(ty, order);
    if (repacked && ty != GgmlType::Q4_0 && ty != GgmlType::Q4_K)
        || (!repacked && ty == GgmlType::Q4_K)
    {
        return None;
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Amx if ty == GgmlType::Q4_K => Some(amx_rows8_q4_k),
        #[cfg(target_arch = "x86_64")]
        Isa::Amx if ty == GgmlType::Q6_K => Some(amx_rows8_q6_k),
        #[cfg(target_arch = "x86_64")]
        Isa::Amx if ty == GgmlType::Q4_0 => Some(amx_rows8_q4_0),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni | Isa::Amx => match ty {
            GgmlType::Q4_1 => Some(vnni_rows8_q4_1),
            GgmlType::Q5_0 => Some(vnni_rows8_q5_0),
            GgmlType::Q5_1 => Some(vnni_rows8_q5_1),
            GgmlType::Q8_0 => Some(vnni_rows8_q8_0),
            _ => gemm_rows8(Isa::Avx512, ty, order),
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 => match ty {
            GgmlType::Q4_0 => Some(avx2_rows8_q4_0),
            GgmlType::Q4_1 => Some(avx2_rows8_q4_1),
            GgmlType::Q5_0 => Some(avx2_rows8_q5_0),
            GgmlType::Q5_1 => Some(avx2_rows8_q5_1),
            GgmlType::Q8_0 => Some(avx2_rows8_q8_0),
            GgmlType::Q4_K => Some(avx2_rows8_q4_k),
            GgmlType::Q6_K => Some(avx2_rows8_q6_k),
            _ => None,
        },
        _ => {
            let _ = ty;
            None
        }
    }
}

/// The whole-tile kernel for weights of type `ty` in `order` on `isa`, if there is one
/// (Q4_0's has the repacked order too).
pub(crate) fn gemm(isa: Isa, ty: GgmlType, order: Order) -> Option<crate::tile::GemmFn> {
    if repacked(ty, order) && ty != GgmlType::Q4_0 {
        return None;
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 | Isa::Avx512Vnni | Isa::Amx => match ty {
            GgmlType::Q4_0 => Some(avx2_gemm_q4_0),
            GgmlType::Q4_1 => Some(avx2_gemm_q4_1),
            GgmlType::Q5_0 => Some(avx2_gemm_q5_0),
            GgmlType::Q5_1 => Some(avx2_gemm_q5_1),
            GgmlType::Q8_0 => Some(avx2_gemm_q8_0),
            GgmlType::Q2_K => Some(avx2_gemm_q2_k),
            GgmlType::Q3_K => Some(avx2_gemm_q3_k),
            GgmlType::Q4_K => Some(avx2_gemm_q4_k),
            GgmlType::Q5_K => Some(avx2_gemm_q5_k),
            GgmlType::Q6_K => Some(avx2_gemm_q6_k),
            GgmlType::F32 => Some(avx2_gemm_f32),
            GgmlType::F16 => Some(avx2_gemm_f16),
            GgmlType::BF16 => Some(avx2_gemm_bf16),
            _ => None,
        },
        _ => {
            let _ = ty;
            None
        }
    }
}

/// Wraps an `unsafe` target-feature quantizer in a safe function pointer.
#[allow(unused_macros)]
macro_rules! checked_quant {
    ($($name:ident => $path:path),* $(,)?) => {
        $(
            fn $name(src: &[f32], dst: &mut [u8]) {
                // SAFETY: handed out by `quantize` only for a verified `Isa`.
                unsafe { $path(src, dst) }
            }
        )*
    };
}

#[cfg(target_arch = "x86_64")]
checked_quant! {
    avx2_quant_q8_0 => avx2::quantize_q8_0,
    avx2_quant_q8_1 => avx2::quantize_q8_1,
    avx2_quant_q8_k => avx2::quantize_q8_k,
    avx2_quant_f16 => avx2::quantize_f16,
}

#[cfg(target_arch = "x86_64")]
checked_quant! {
    avx512_quant_q8_k => avx512::quantize_q8_k,
}

/// The SIMD activation quantizer for `ty` on `isa`, if there is one.
pub(crate) fn quantize(isa: Isa, ty: GgmlType) -> Option<crate::quant::FromF32Fn> {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx512Vnni | Isa::Amx if ty == GgmlType::Q8_K => Some(avx512_quant_q8_k),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 | Isa::Avx512Vnni | Isa::Amx => match ty {
            GgmlType::Q8_0 => Some(avx2_quant_q8_0),
            GgmlType::Q8_1 => Some(avx2_quant_q8_1),
            GgmlType::Q8_K => Some(avx2_quant_q8_k),
            GgmlType::F16 => Some(avx2_quant_f16),
            _ => None,
        },
        _ => {
            let _ = ty;
            None
        }
    }
}

/// The SIMD batched-order dot product for float weights of type `ty` on `isa`.
pub(crate) fn vec_dot_batched(isa: Isa, ty: GgmlType) -> Option<VecDotFn> {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 | Isa::Avx512Vnni | Isa::Amx => match ty {
            GgmlType::F32 => Some(avx2_f32_b),
            GgmlType::F16 => Some(avx2_f16_b),
            GgmlType::BF16 => Some(avx2_bf16_b),
            _ => None,
        },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => match ty {
            GgmlType::F32 => Some(neon_f32_b),
            GgmlType::F16 => Some(neon_f16_b),
            GgmlType::BF16 => Some(neon_bf16_b),
            _ => None,
        },
        _ => {
            let _ = ty;
            None
        }
    }
}

/// The AVX-512 VNNI dot product for weights of type `ty`, if there is one.
#[cfg(target_arch = "x86_64")]
fn vnni_dot(ty: GgmlType) -> Option<VecDotFn> {
    match ty {
        GgmlType::Q4_0 => Some(vnni_q4_0),
        GgmlType::Q4_1 => Some(vnni_q4_1),
        GgmlType::Q5_0 => Some(vnni_q5_0),
        GgmlType::Q5_1 => Some(vnni_q5_1),
        GgmlType::Q8_0 => Some(vnni_q8_0),
        _ => None,
    }
}

/// The SIMD dot product for weights of type `ty` on `isa`, if there is one.
pub(crate) fn vec_dot(isa: Isa, ty: GgmlType) -> Option<VecDotFn> {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni | Isa::Amx if vnni_dot(ty).is_some() => vnni_dot(ty),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx512Vnni | Isa::Amx => match ty {
            GgmlType::Q4_0 => Some(avx512_q4_0),
            GgmlType::Q4_1 => Some(avx512_q4_1),
            GgmlType::Q5_0 => Some(avx512_q5_0),
            GgmlType::Q5_1 => Some(avx512_q5_1),
            GgmlType::Q8_0 => Some(avx512_q8_0),
            GgmlType::Q2_K => Some(avx2_q2_k),
            GgmlType::Q3_K => Some(avx2_q3_k),
            GgmlType::Q4_K => Some(avx2_q4_k),
            GgmlType::Q5_K => Some(avx2_q5_k),
            GgmlType::Q6_K => Some(avx2_q6_k),
            // No AVX-512 versions of the table formats: the AVX2 ones.
            GgmlType::IQ4_NL => Some(avx2_iq4_nl),
            GgmlType::IQ4_XS => Some(avx2_iq4_xs),
            GgmlType::MXFP4 => Some(avx2_mxfp4),
            GgmlType::F32 => Some(avx512_f32),
            GgmlType::F16 => Some(avx512_f16),
            GgmlType::BF16 => Some(avx512_bf16),
            _ => None,
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => match ty {
            GgmlType::Q4_0 => Some(avx2_q4_0),
            GgmlType::Q4_1 => Some(avx2_q4_1),
            GgmlType::Q5_0 => Some(avx2_q5_0),
            GgmlType::Q5_1 => Some(avx2_q5_1),
            GgmlType::Q8_0 => Some(avx2_q8_0),
            GgmlType::Q2_K => Some(avx2_q2_k),
            GgmlType::Q3_K => Some(avx2_q3_k),
            GgmlType::Q4_K => Some(avx2_q4_k),
            GgmlType::Q5_K => Some(avx2_q5_k),
            GgmlType::Q6_K => Some(avx2_q6_k),
            GgmlType::IQ4_NL => Some(avx2_iq4_nl),
            GgmlType::IQ4_XS => Some(avx2_iq4_xs),
            GgmlType::MXFP4 => Some(avx2_mxfp4),
            GgmlType::F32 => Some(avx2_f32),
            GgmlType::F16 => Some(avx2_f16),
            GgmlType::BF16 => Some(avx2_bf16),
            _ => None,
        },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => match ty {
            GgmlType::Q4_0 => Some(neon_q4_0),
            GgmlType::Q4_1 => Some(neon_q4_1),
            GgmlType::Q5_0 => Some(neon_q5_0),
            GgmlType::Q5_1 => Some(neon_q5_1),
            GgmlType::Q8_0 => Some(neon_q8_0),
            GgmlType::F32 => Some(neon_f32),
            GgmlType::F16 => Some(neon_f16),
            GgmlType::BF16 => Some(neon_bf16),
            _ => None,
        },
        _ => {
            let _ = ty;
            None
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn avx2_swiglu8(gate: &mut [f32], up: &[f32]) -> usize {
    // SAFETY: handed out by `swiglu8` only for a verified `Isa`; the kernel bounds itself by
    // the slices' lengths.
    unsafe { avx2::swiglu8(gate, up) }
}

#[cfg(target_arch = "x86_64")]
fn avx2_softmax8(x: &mut [f32]) {
    // SAFETY: as above.
    unsafe { avx2::softmax8(x) }
}

/// `gate[i] = silu(gate[i]) * up[i]` over the first multiple of eight elements, returning how
/// many were done.
pub type SwigluFn = fn(gate: &mut [f32], up: &[f32]) -> usize;

/// The [`SwigluFn`] of `isa`, if it has one.
pub(crate) fn swiglu8(isa: Isa) -> Option<SwigluFn> {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 | Isa::Avx512Vnni | Isa::Amx => Some(avx2_swiglu8),
        _ => None,
    }
}

/// Softmax of a slice whose length is a multiple of eight on `isa`.
pub(crate) fn softmax8(isa: Isa) -> Option<fn(&mut [f32])> {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 | Isa::Avx512Vnni | Isa::Amx => Some(avx2_softmax8),
        _ => None,
    }
}

/// The f16-cache attention kernels on `isa`.
pub(crate) fn f16_attention(isa: Isa) -> Option<&'static f16_attention::F16Attention> {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 | Isa::Avx512Vnni | Isa::Amx => Some(&f16_attention::AVX2),
        _ => None,
    }
}
