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

use crate::quant::{codebook, kquants, repacked, GgmlType, VecDotFn};

/// One of llama.cpp's arithmetic orders for `W · x`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Order {
    /// ggml's `vec_dot` for the type: the eight-lane accumulators of its AVX2 dot products.
    VecDot,
    /// llamafile's `sgemm` (several tokens): the float types reduce differently there.
    Sgemm,
    /// `ggml-cpu/tiled` (K-quants and IQ4_XS that are not repacked, eight tokens or more): per
    /// super-block the exact integer sum `s1` (and the minimums' `s2`), `r = d·s1 − dmin·s2`
    /// (fused), `acc = fma(r, d_y, acc)`.
    Tiled,
    /// `repack.cpp`'s `gemv` (one token against eight interleaved rows): a block's products
    /// summed as one integer, added with one fused multiply-add per block.
    Gemv,
    /// `repack.cpp`'s `gemm` (four tokens at a time): as [`Order::Gemv`] for the 32-element
    /// formats; Q4_K adds per 64 elements instead of per super-block.
    Gemm,
}

impl Order {
    /// The order as it affects type `ty`: `Gemm` is `Gemv` except for Q4_K, `Sgemm` is
    /// `VecDot` except for the float types, `Tiled` is `VecDot` except for the types that have
    /// it. Two orders with the same canonical form give the same bits.
    pub fn canonical(self, ty: GgmlType) -> Order {
        match self {
            Order::Gemm if ty != GgmlType::Q4_K => Order::Gemv,
            Order::Sgemm if !is_float(ty) => Order::VecDot,
            Order::Tiled if !tiled_by_llama_cpp(ty) => Order::VecDot,
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

/// Whether llama.cpp's AVX2 build multiplies a batch of eight or more tokens with a `ty`
/// matrix through `ggml-cpu/tiled` (`ggml_tiled_supported`, for the types torchless computes
/// with), where the matrix is not repacked.
pub fn tiled_by_llama_cpp(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q2_K
            | GgmlType::Q3_K
            | GgmlType::Q4_K
            | GgmlType::Q5_K
            | GgmlType::Q6_K
            | GgmlType::IQ4_XS
    )
}

/// Fewest tokens that take `ggml-cpu/tiled` (`ggml_tiled_min_batch`).
pub const TILED_MIN_TOKENS: usize = 8;

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
/// the rest one by one through `gemv` (`forward_mul_mat_one_chunk`). K-quant matrices with
/// eight tokens or more: `ggml-cpu/tiled`. Float matrices with several tokens, rows a
/// multiple of 4 and columns of 8: llamafile's `sgemm`. Everything else: `vec_dot`.
pub fn llama_cpp(ty: GgmlType, rows: usize, cols: usize, tokens: usize) -> Schedule {
    if repacked_by_llama_cpp(ty, rows) {
        let split = tokens / 4 * 4;
        return Schedule {
            split,
            head: Order::Gemm.canonical(ty),
            tail: Order::Gemv,
        };
    }
    if tiled_by_llama_cpp(ty) && tokens >= TILED_MIN_TOKENS {
        return Schedule {
            split: tokens,
            head: Order::Tiled,
            tail: Order::VecDot,
        };
    }
    let sgemm = tokens >= 2 && rows.is_multiple_of(4) && cols.is_multiple_of(8);
    let order = if sgemm { Order::Sgemm } else { Order::VecDot };
    Schedule {
        split: tokens,
        head: order.canonical(ty),
        tail: Order::VecDot,
    }
}

/// Which rule chooses the arithmetic order of a product: the numerics policy, passed
/// explicitly to every matrix product and attention call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Numerics {
    /// llama.cpp's rule ([`llama_cpp`]): the order depends on the number of tokens in the
    /// micro-batch, as the reference engine's does, so results equal its bits.
    #[default]
    LlamaCpp,
    /// One order per matrix whatever the batch ([`batch_invariant`]): a row's result does not
    /// depend on how many other rows share its product (serving, reproducible runs).
    BatchInvariant,
}

impl Numerics {
    pub fn name(self) -> &'static str {
        match self {
            Numerics::LlamaCpp => "llama.cpp",
            Numerics::BatchInvariant => "batch-invariant",
        }
    }
}

/// The one order a `ty` matrix of `rows` × `cols` takes under [`Numerics::BatchInvariant`],
/// whatever the number of tokens: the order llama.cpp gives a large batch (its prompt
/// processing), which every kernel of the type also computes for a single token.
pub fn batch_invariant(ty: GgmlType, rows: usize, cols: usize) -> Order {
    if repacked_by_llama_cpp(ty, rows) {
        return Order::Gemm.canonical(ty);
    }
    if tiled_by_llama_cpp(ty) {
        return Order::Tiled;
    }
    if rows.is_multiple_of(4) && cols.is_multiple_of(8) {
        return Order::Sgemm.canonical(ty);
    }
    Order::VecDot
}

/// The schedule of a product under `numerics`.
pub fn schedule(
    numerics: Numerics,
    ty: GgmlType,
    rows: usize,
    cols: usize,
    tokens: usize,
) -> Schedule {
    match numerics {
        Numerics::LlamaCpp => llama_cpp(ty, rows, cols, tokens),
        Numerics::BatchInvariant => {
            let order = batch_invariant(ty, rows, cols);
            Schedule {
                split: tokens,
                head: order,
                tail: order,
            }
        }
    }
}

/// The scalar definition of `ty`'s dot product in `order` (`None`: the engine cannot
/// compute with `ty`). SIMD kernels for that order are tested to equal it bit for bit.
pub fn reference_dot(ty: GgmlType, order: Order) -> Option<VecDotFn> {
    let t = ty.traits();
    match (order.canonical(ty), ty) {
        (Order::Sgemm, _) => t.vec_dot_batched.or(t.vec_dot),
        (Order::Tiled, GgmlType::Q2_K) => Some(kquants::dot_q2_k_q8_k_tiled),
        (Order::Tiled, GgmlType::Q3_K) => Some(kquants::dot_q3_k_q8_k_tiled),
        (Order::Tiled, GgmlType::Q4_K) => Some(kquants::dot_q4_k_q8_k_tiled),
        (Order::Tiled, GgmlType::Q5_K) => Some(kquants::dot_q5_k_q8_k_tiled),
        (Order::Tiled, GgmlType::Q6_K) => Some(kquants::dot_q6_k_q8_k_tiled),
        (Order::Tiled, GgmlType::IQ4_XS) => Some(codebook::dot_iq4_xs_q8_k_tiled),
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
            llama_cpp(T::Q4_K, 12, 256, 7).head,
            Order::VecDot,
            "rows % 8"
        );
        assert_eq!(llama_cpp(T::F16, 64, 256, 8).head, Order::Sgemm);
        assert_eq!(llama_cpp(T::Q6_K, 64, 256, 8).head, Order::Tiled);
        assert_eq!(llama_cpp(T::Q6_K, 64, 256, 7).head, Order::VecDot);
        assert_eq!(
            llama_cpp(T::Q4_K, 12, 256, 8).head,
            Order::Tiled,
            "not repacked"
        );
        assert_eq!(llama_cpp(T::F16, 64, 256, 1).head, Order::VecDot);
        assert_eq!(llama_cpp(T::Q8_0, 64, 256, 8).head, Order::VecDot);
    }

    #[test]
    fn the_batch_invariant_order_is_llama_cpps_large_batch_order() {
        for t in crate::quant::TRAITS.iter().filter(|t| t.ty.is_supported()) {
            for (rows, cols) in [(896, 896), (64, 576), (12, 256), (30, 100)] {
                let big = llama_cpp(t.ty, rows, cols, 64);
                let one = schedule(Numerics::BatchInvariant, t.ty, rows, cols, 1);
                assert_eq!(one.head, big.head, "{} {rows}x{cols}", t.ty);
                assert_eq!((one.split, one.tail), (1, one.head));
            }
        }
    }

    #[test]
    fn every_order_has_a_definition_for_every_computable_type() {
        for t in crate::quant::TRAITS {
            for o in [
                Order::VecDot,
                Order::Sgemm,
                Order::Tiled,
                Order::Gemv,
                Order::Gemm,
            ] {
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
