//! The one table of tensor element types (GGML's numbering, as stored in GGUF files).
//!
//! Every type a file may name is listed with its block geometry, so any file can be parsed and
//! described; the types the engine can compute with also carry their scalar kernels (to-f32,
//! activation quantization, dot product). Adding a type means adding one row to [`TRAITS`] and the
//! kernels it points to. SIMD variants of the dot products are chosen elsewhere
//! ([`crate::dispatch`]) and are checked against the scalar functions registered here.
//!
//! This module must not know about models or files: it describes bytes, nothing more.

use super::{codebook, float, kquants, legacy};

/// Element types, numbered as in GGML (the numbers are what GGUF files store).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    IQ2_XXS = 16,
    IQ2_XS = 17,
    IQ3_XXS = 18,
    IQ1_S = 19,
    IQ4_NL = 20,
    IQ3_S = 21,
    IQ2_S = 22,
    IQ4_XS = 23,
    I8 = 24,
    I16 = 25,
    I32 = 26,
    I64 = 27,
    F64 = 28,
    IQ1_M = 29,
    BF16 = 30,
    TQ1_0 = 34,
    TQ2_0 = 35,
    MXFP4 = 39,
    NVFP4 = 40,
    Q1_0 = 41,
}

/// Converts `n` values of a row (whole blocks) to f32: `src` holds `n / block_elems` blocks.
pub type ToF32Fn = fn(src: &[u8], dst: &mut [f32]);
/// Quantizes a row of f32 activations (a multiple of the block size) into blocks.
pub type FromF32Fn = fn(src: &[f32], dst: &mut [u8]);
/// Dot product of `n` elements: one row of weights against one row of activations that were
/// encoded in the weight type's `vec_dot_type`.
pub type VecDotFn = fn(n: usize, w: &[u8], a: &[u8]) -> f32;

/// What the engine knows about one element type.
#[derive(Debug)]
pub struct TypeTraits {
    pub ty: GgmlType,
    pub name: &'static str,
    /// Elements per block (1 for plain floats and integers).
    pub block_elems: usize,
    /// Bytes per block.
    pub block_bytes: usize,
    /// Dequantization to f32; `None` where the engine cannot compute with the type.
    pub to_f32: Option<ToF32Fn>,
    /// Quantization from f32; present for the types used to encode activations.
    pub from_f32: Option<FromF32Fn>,
    /// The encoding that activations must be in for [`TypeTraits::vec_dot`].
    pub vec_dot_type: GgmlType,
    /// The scalar (reference) dot product; SIMD versions must agree with it.
    pub vec_dot: Option<VecDotFn>,
    /// The dot product of batched tiles, where the reference engine reduces in another order
    /// than for a single token (float types); `None`: the same as `vec_dot`.
    pub vec_dot_batched: Option<VecDotFn>,
}

#[allow(clippy::too_many_arguments)]
const fn row(
    ty: GgmlType,
    name: &'static str,
    block_elems: usize,
    block_bytes: usize,
    to_f32: Option<ToF32Fn>,
    from_f32: Option<FromF32Fn>,
    vec_dot_type: GgmlType,
    vec_dot: Option<VecDotFn>,
) -> TypeTraits {
    TypeTraits {
        ty,
        name,
        block_elems,
        block_bytes,
        to_f32,
        from_f32,
        vec_dot_type,
        vec_dot,
        vec_dot_batched: None,
    }
}

const fn batched(t: TypeTraits, f: VecDotFn) -> TypeTraits {
    TypeTraits {
        vec_dot_batched: Some(f),
        ..t
    }
}

const fn shape_only(ty: GgmlType, name: &'static str, elems: usize, bytes: usize) -> TypeTraits {
    row(ty, name, elems, bytes, None, None, ty, None)
}

use GgmlType as T;

/// The table. Geometry rows come first for every type; kernels where the engine has them.
pub static TRAITS: &[TypeTraits] = &[
    batched(
        row(
            T::F32,
            "F32",
            1,
            4,
            Some(float::f32_to_f32),
            Some(float::f32_from_f32),
            T::F32,
            Some(float::dot_f32),
        ),
        float::dot_f32_batched,
    ),
    batched(
        row(
            T::F16,
            "F16",
            1,
            2,
            Some(float::f16_to_f32),
            Some(float::f16_from_f32),
            T::F16,
            Some(float::dot_f16),
        ),
        float::dot_f16_batched,
    ),
    batched(
        row(
            T::BF16,
            "BF16",
            1,
            2,
            Some(float::bf16_to_f32),
            Some(float::bf16_from_f32),
            T::BF16,
            Some(float::dot_bf16),
        ),
        float::dot_bf16_batched,
    ),
    row(
        T::Q4_0,
        "Q4_0",
        32,
        18,
        Some(legacy::dequant_q4_0),
        None,
        T::Q8_0,
        Some(legacy::dot_q4_0_q8_0),
    ),
    row(
        T::Q4_1,
        "Q4_1",
        32,
        20,
        Some(legacy::dequant_q4_1),
        None,
        T::Q8_1,
        Some(legacy::dot_q4_1_q8_1),
    ),
    row(
        T::Q5_0,
        "Q5_0",
        32,
        22,
        Some(legacy::dequant_q5_0),
        None,
        T::Q8_0,
        Some(legacy::dot_q5_0_q8_0),
    ),
    row(
        T::Q5_1,
        "Q5_1",
        32,
        24,
        Some(legacy::dequant_q5_1),
        None,
        T::Q8_1,
        Some(legacy::dot_q5_1_q8_1),
    ),
    row(
        T::Q8_0,
        "Q8_0",
        32,
        34,
        Some(legacy::dequant_q8_0),
        Some(legacy::quantize_q8_0),
        T::Q8_0,
        Some(legacy::dot_q8_0_q8_0),
    ),
    row(
        T::Q8_1,
        "Q8_1",
        32,
        36,
        Some(legacy::dequant_q8_1),
        Some(legacy::quantize_q8_1),
        T::Q8_1,
        None,
    ),
    row(
        T::Q2_K,
        "Q2_K",
        256,
        84,
        Some(kquants::dequant_q2_k),
        None,
        T::Q8_K,
        Some(kquants::dot_q2_k_q8_k),
    ),
    row(
        T::Q3_K,
        "Q3_K",
        256,
        110,
        Some(kquants::dequant_q3_k),
        None,
        T::Q8_K,
        Some(kquants::dot_q3_k_q8_k),
    ),
    row(
        T::Q4_K,
        "Q4_K",
        256,
        144,
        Some(kquants::dequant_q4_k),
        None,
        T::Q8_K,
        Some(kquants::dot_q4_k_q8_k),
    ),
    row(
        T::Q5_K,
        "Q5_K",
        256,
        176,
        Some(kquants::dequant_q5_k),
        None,
        T::Q8_K,
        Some(kquants::dot_q5_k_q8_k),
    ),
    row(
        T::Q6_K,
        "Q6_K",
        256,
        210,
        Some(kquants::dequant_q6_k),
        None,
        T::Q8_K,
        Some(kquants::dot_q6_k_q8_k),
    ),
    row(
        T::Q8_K,
        "Q8_K",
        256,
        292,
        Some(kquants::dequant_q8_k),
        Some(kquants::quantize_q8_k),
        T::Q8_K,
        None,
    ),
    shape_only(T::IQ2_XXS, "IQ2_XXS", 256, 66),
    shape_only(T::IQ2_XS, "IQ2_XS", 256, 74),
    shape_only(T::IQ3_XXS, "IQ3_XXS", 256, 98),
    shape_only(T::IQ1_S, "IQ1_S", 256, 50),
    row(
        T::IQ4_NL,
        "IQ4_NL",
        32,
        18,
        Some(codebook::dequant_iq4_nl),
        None,
        T::Q8_0,
        Some(codebook::dot_iq4_nl_q8_0),
    ),
    shape_only(T::IQ3_S, "IQ3_S", 256, 110),
    shape_only(T::IQ2_S, "IQ2_S", 256, 82),
    row(
        T::IQ4_XS,
        "IQ4_XS",
        256,
        136,
        Some(codebook::dequant_iq4_xs),
        None,
        T::Q8_K,
        Some(codebook::dot_iq4_xs_q8_k),
    ),
    shape_only(T::I8, "I8", 1, 1),
    shape_only(T::I16, "I16", 1, 2),
    shape_only(T::I32, "I32", 1, 4),
    shape_only(T::I64, "I64", 1, 8),
    shape_only(T::F64, "F64", 1, 8),
    shape_only(T::IQ1_M, "IQ1_M", 256, 56),
    shape_only(T::TQ1_0, "TQ1_0", 256, 54),
    shape_only(T::TQ2_0, "TQ2_0", 256, 66),
    row(
        T::MXFP4,
        "MXFP4",
        32,
        17,
        Some(codebook::dequant_mxfp4),
        None,
        T::Q8_0,
        Some(codebook::dot_mxfp4_q8_0),
    ),
    shape_only(T::NVFP4, "NVFP4", 64, 36),
    shape_only(T::Q1_0, "Q1_0", 128, 18),
];

impl GgmlType {
    /// The type with GGML number `id`, if there is one.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        TRAITS.iter().find(|t| t.ty as u32 == id).map(|t| t.ty)
    }

    /// The type whose name is `name` (as GGML spells it, case-insensitive: `q4_k`, `Q8_0`, `f16`).
    pub fn from_name(name: &str) -> Option<GgmlType> {
        TRAITS
            .iter()
            .find(|t| t.name.eq_ignore_ascii_case(name))
            .map(|t| t.ty)
    }

    /// This type's row of the table.
    pub fn traits(self) -> &'static TypeTraits {
        // Every variant has exactly one row; the table test checks it.
        TRAITS.iter().find(|t| t.ty == self).unwrap_or(&TRAITS[0])
    }

    pub fn name(self) -> &'static str {
        self.traits().name
    }

    pub fn block_elems(self) -> usize {
        self.traits().block_elems
    }

    pub fn block_bytes(self) -> usize {
        self.traits().block_bytes
    }

    /// Whether the engine can compute with weights of this type (dequantize and dot).
    pub fn is_supported(self) -> bool {
        let t = self.traits();
        t.to_f32.is_some() && t.vec_dot.is_some()
    }

    /// Bytes needed for `n` elements, or `None` when `n` is not a whole number of blocks or the
    /// size overflows.
    pub fn row_bytes(self, n: usize) -> Option<usize> {
        let t = self.traits();
        if !n.is_multiple_of(t.block_elems) {
            return None;
        }
        (n / t.block_elems).checked_mul(t.block_bytes)
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_has_one_row_and_a_unique_id() {
        let mut ids: Vec<u32> = TRAITS.iter().map(|t| t.ty as u32).collect();
        ids.sort_unstable();
        let n = ids.len();
        ids.dedup();
        assert_eq!(ids.len(), n, "duplicate rows in TRAITS");
        for t in TRAITS {
            assert_eq!(GgmlType::from_id(t.ty as u32), Some(t.ty));
            assert_eq!(t.ty.traits().name, t.name);
            assert_eq!(GgmlType::from_name(&t.name.to_lowercase()), Some(t.ty));
        }
        assert_eq!(GgmlType::from_id(4), None);
        assert_eq!(GgmlType::from_id(1000), None);
    }

    #[test]
    fn the_block_sizes_match_the_block_structs() {
        use super::super::blocks::*;
        use std::mem::size_of;
        assert_eq!(T::Q4_0.block_bytes(), size_of::<BlockQ4_0>());
        assert_eq!(T::Q4_1.block_bytes(), size_of::<BlockQ4_1>());
        assert_eq!(T::Q5_0.block_bytes(), size_of::<BlockQ5_0>());
        assert_eq!(T::Q5_1.block_bytes(), size_of::<BlockQ5_1>());
        assert_eq!(T::Q8_0.block_bytes(), size_of::<BlockQ8_0>());
        assert_eq!(T::Q8_1.block_bytes(), size_of::<BlockQ8_1>());
        assert_eq!(T::Q2_K.block_bytes(), size_of::<BlockQ2K>());
        assert_eq!(T::Q3_K.block_bytes(), size_of::<BlockQ3K>());
        assert_eq!(T::Q4_K.block_bytes(), size_of::<BlockQ4K>());
        assert_eq!(T::Q5_K.block_bytes(), size_of::<BlockQ5K>());
        assert_eq!(T::Q6_K.block_bytes(), size_of::<BlockQ6K>());
        assert_eq!(T::Q8_K.block_bytes(), size_of::<BlockQ8K>());
        assert_eq!(T::IQ4_NL.block_bytes(), size_of::<BlockIQ4NL>());
        assert_eq!(T::IQ4_XS.block_bytes(), size_of::<BlockIQ4XS>());
        assert_eq!(T::MXFP4.block_bytes(), size_of::<BlockMXFP4>());
    }

    #[test]
    fn row_bytes_rejects_partial_blocks_and_overflow() {
        assert_eq!(T::Q4_K.row_bytes(512), Some(288));
        assert_eq!(T::Q4_K.row_bytes(100), None);
        assert_eq!(T::F32.row_bytes(usize::MAX), None);
    }
}
