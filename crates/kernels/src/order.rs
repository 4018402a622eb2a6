//! The numerics policy of matrix products: which arithmetic order each product follows.
//!
//! A floating-point sum depends on its order, and llama.cpp multiplies a matrix through one
//! of several kernels, each with its own order, chosen by the weight type, the matrix's shape
//! and the number of tokens. To give its bits, torchless names those orders ([`Order`]),
//! states llama.cpp's rule for choosing them ([`llama_cpp`], the rule of its AVX2 build, the
//! reference numerics on every machine), and holds the scalar definition of each
//! ([`reference_dot`]). The matrix product asks this module for a [`Schedule`] and hands the
//! order to the kernels inside each [`crate::tile::Tile`]; kernels that do not implement an
//! order are not chosen for it.
//!
//! This module decides and defines; it holds no kernels of its own and runs nothing.

use crate::quant::{repacked, GgmlType, VecDotFn};

/// One of llama.cpp's arithmetic orders for `W · x`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Order {
    /// ggml's `vec_dot` for the type: the eight-lane accumulators of its AVX2 dot products.
    VecDot,
    /// llamafile's tiled `sgemm` (float weights, several tokens): the float types reduce
    /// differently there.
    Tiled,
    /// `repack.cpp`'s `gemv` (one token against eight interleaved rows): a block's products
    /// summed as one integer, added with one fused multiply-add per block.
    Gemv,
    /// `repack.cpp`'s `gemm` (four tokens at a time): as [`Order::Gemv`] for the 32-element
    /// formats; Q4_K adds per 64 elements instead of per super-block.
    Gemm,
}

impl Order {
    /// The order as it affects type `ty`: `Gemm` is `Gemv` except for Q4_K, `Tiled` is
    /// `VecDot` except for the float types. Two orders with the same canonical form give
    /// the same bits.
    pub fn canonical(self, ty: GgmlType) -> Order {
        match self {
            Order::Gemm if ty != GgmlType::Q4_K => Order::Gemv,
            Order::Tiled if !is_float(ty) => Order::VecDot,
            o => o,
        }
    }
}

fn is_float(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
}

/// Whether llama.cpp's AVX2 build multiplies a `ty` matrix of `rows` rows through its
/// repacked kernels (`ggml_repack_get_optimal_repack_type`: Q4_0, Q4_K, IQ4_NL and MXFP4,
/// rows a multiple of eight).
pub fn repacked_by_llama_cpp(ty: GgmlType, rows: usize) -> bool {
    matches!(
        ty,
        GgmlType::Q4_0 | GgmlType::Q4_K | GgmlType::IQ4_NL | GgmlType::MXFP4
    ) && rows.is_multiple_of(8)
}

/// How one product's tokens are computed: tokens `0..split` in order `head`, the rest in
/// order `tail`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub split: usize,
    pub head: Order,
    pub tail: Order,
}

/// llama.cpp's choice for a `ty` matrix of `rows` × `cols` against `tokens` activation rows
/// (one micro-batch). Repacked matrices: the first multiple of four tokens through `gemm`,
/// the rest one by one through `gemv` (`forward_mul_mat_one_chunk`). Float matrices with
/// several tokens, rows a multiple of 4 and columns of 8: llamafile's `sgemm`. Everything
/// else: `vec_dot`.
pub fn llama_cpp(ty: GgmlType, rows: usize, cols: usize, tokens: usize) -> Schedule {
    if repacked_by_llama_cpp(ty, rows) {
        let split = tokens / 4 * 4;
        return Schedule {
            split,
            head: Order::Gemm.canonical(ty),
            tail: Order::Gemv,
        };
    }
    let tiled = tokens >= 2 && rows.is_multiple_of(4) && cols.is_multiple_of(8);
    let order = if tiled { Order::Tiled } else { Order::VecDot };
    Schedule {
        split: tokens,
        head: order.canonical(ty),
        tail: Order::VecDot,
    }
}

/// The scalar definition of `ty`'s dot product in `order` (`None`: the engine cannot
/// compute with `ty`). SIMD kernels for that order are tested to equal it bit for bit.
pub fn reference_dot(ty: GgmlType, order: Order) -> Option<VecDotFn> {
    let t = ty.traits();
    match (order.canonical(ty), ty) {
        (Order::Tiled, _) => t.vec_dot_batched.or(t.vec_dot),
        (Order::Gemv, GgmlType::Q4_0) => Some(repacked::dot_q4_0_q8_0),
        (Order::Gemv, GgmlType::IQ4_NL) => Some(repacked::dot_iq4_nl_q8_0),
        (Order::Gemv, GgmlType::MXFP4) => Some(repacked::dot_mxfp4_q8_0),
        (Order::Gemv, GgmlType::Q4_K) => Some(repacked::dot_q4_k_q8_k_gemv),
        (Order::Gemm, GgmlType::Q4_K) => Some(repacked::dot_q4_k_q8_k_gemm),
        _ => t.vec_dot,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use GgmlType as T;

    #[test]
    fn llama_cpp_splits_repacked_batches_into_fours_and_the_rest() {
        let s = llama_cpp(T::Q4_K, 896, 896, 7);
        assert_eq!((s.split, s.head, s.tail), (4, Order::Gemm, Order::Gemv));
        let s = llama_cpp(T::Q4_0, 64, 576, 7);
        assert_eq!((s.split, s.head, s.tail), (4, Order::Gemv, Order::Gemv));
        assert_eq!(llama_cpp(T::Q4_K, 1, 256, 1).head, Order::VecDot);
        assert_eq!(
            llama_cpp(T::Q4_K, 12, 256, 8).head,
            Order::VecDot,
            "rows % 8"
        );
        assert_eq!(llama_cpp(T::Q6_K, 64, 256, 8).head, Order::VecDot);
        assert_eq!(llama_cpp(T::F16, 64, 256, 8).head, Order::Tiled);
        assert_eq!(llama_cpp(T::F16, 64, 256, 1).head, Order::VecDot);
        assert_eq!(llama_cpp(T::Q8_0, 64, 256, 8).head, Order::VecDot);
    }

    #[test]
    fn every_order_has_a_definition_for_every_computable_type() {
        for t in crate::quant::TRAITS {
            for o in [Order::VecDot, Order::Tiled, Order::Gemv, Order::Gemm] {
                assert_eq!(
                    reference_dot(t.ty, o).is_some(),
                    t.ty.is_supported(),
                    "{} {o:?}",
                    t.ty
                );
            }
        }
    }
}
