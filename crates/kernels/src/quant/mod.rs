//! Quantized and floating-point tensor formats: the type table, block layouts, and the scalar
//! reference kernels (dequantize, activation quantization, dot products).

pub mod blocks;
pub mod codebook;
pub mod float;
pub mod interleave;
pub mod kquants;
pub mod legacy;
pub mod repacked;
pub mod types;
pub mod weights;

pub use types::{FromF32Fn, GgmlType, ToF32Fn, TypeTraits, VecDotFn, TRAITS};

/// Dequantizes `dst.len()` elements (whole blocks) of type `ty` from `src`.
/// Returns false when the type cannot be dequantized or the lengths do not match.
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> bool {
    let t = ty.traits();
    match (t.to_f32, ty.row_bytes(dst.len())) {
        (Some(f), Some(bytes)) if bytes == src.len() => {
            f(src, dst);
            true
        }
        _ => false,
    }
}

/// Encodes `src` (whole blocks) as `ty` into `dst`; returns false when `ty` is not an
/// activation format or the lengths do not match.
pub fn quantize(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> bool {
    let t = ty.traits();
    match (t.from_f32, ty.row_bytes(src.len())) {
        (Some(f), Some(bytes)) if bytes == dst.len() => {
            f(src, dst);
            true
        }
        _ => false,
    }
}
