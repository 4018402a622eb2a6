//! Run-time choice of kernel implementations (instruction set), made once at start-up.
//!
//! [`Kernels`] answers "which function computes a dot product for weights of type T" for one
//! instruction set; every answer falls back to the scalar reference in [`crate::quant`] where
//! no SIMD version exists. The caller names the instruction set (the binary reads
//! `TORCHLESS_ISA`); nothing here reads the environment or computes.

pub use crate::isa::{DispatchError, Isa};
use crate::order::Order;
use crate::quant::{FromF32Fn, GgmlType, VecDotFn};
use crate::simd::f16_attention::F16Attention;

/// The kernels of one instruction set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kernels {
    isa: Isa,
}

impl Kernels {
    /// Kernels for `isa`; an error if the CPU cannot run them.
    pub fn new(isa: Isa) -> Result<Kernels, DispatchError> {
        if !isa.is_supported() {
            return Err(DispatchError::Unsupported(isa.name()));
        }
        Ok(Kernels { isa })
    }

    /// The best kernels for this CPU.
    pub fn best() -> Kernels {
        Kernels { isa: Isa::best() }
    }

    pub fn scalar() -> Kernels {
        Kernels { isa: Isa::Scalar }
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Whether kernels may use fused multiply-add instructions (same results, faster).
    pub fn has_fma(&self) -> bool {
        matches!(
            self.isa,
            Isa::Avx2 | Isa::Avx512 | Isa::Avx512Vnni | Isa::Amx
        )
    }

    /// The dot product for weights of type `ty` (against activations in its `vec_dot_type`).
    pub fn vec_dot(&self, ty: GgmlType) -> Option<VecDotFn> {
        crate::simd::vec_dot(self.isa, ty).or(ty.traits().vec_dot)
    }

    /// The dot product of batched tiles for weights of type `ty` (see
    /// [`crate::quant::TypeTraits::vec_dot_batched`]).
    pub fn vec_dot_batched(&self, ty: GgmlType) -> Option<VecDotFn> {
        ty.traits().vec_dot_batched.and_then(|_| {
            crate::simd::vec_dot_batched(self.isa, ty).or(ty.traits().vec_dot_batched)
        })
    }

    /// The dot product for weights of type `ty` in arithmetic order `order` (see
    /// [`crate::order`]): this ISA's SIMD version where it has one, else the scalar definition.
    pub fn dot(&self, ty: GgmlType, order: Order) -> Option<VecDotFn> {
        match order.canonical(ty) {
            Order::VecDot => self.vec_dot(ty),
            Order::Sgemm => self.vec_dot_batched(ty).or(self.vec_dot(ty)),
            o => crate::simd::vec_dot_in(self.isa, ty, o).or(crate::order::reference_dot(ty, o)),
        }
    }

    /// The whole-tile kernel for weights of type `ty` in `order`, where this ISA has one.
    pub fn gemm(&self, ty: GgmlType, order: Order) -> Option<crate::tile::GemmFn> {
        crate::simd::gemm(self.isa, ty, order)
    }

    /// The tile kernel for weights of type `ty` in the eight-row interleaved layout in
    /// `order`: the SIMD one for this ISA, else the scalar reference (`None`: the type has no
    /// such layout).
    pub fn gemm_rows8(&self, ty: GgmlType, order: Order) -> Option<crate::tile::GemmFn> {
        crate::simd::gemm_rows8(self.isa, ty, order)
            .or(crate::quant::interleave::gemm_scalar_fn(ty))
    }

    /// Whether repacking weights of type `ty` into the interleaved layout pays on this ISA
    /// (it has a SIMD kernel for it).
    pub fn prefers_rows8(&self, ty: GgmlType) -> bool {
        [Order::VecDot, Order::Gemv]
            .iter()
            .any(|&o| crate::simd::gemm_rows8(self.isa, ty, o).is_some())
    }

    /// `gate[i] = silu(gate[i]) * up[i]` in ggml's arithmetic over the first multiple of
    /// eight elements (returns how many), where this ISA has a SIMD version.
    pub fn swiglu8(&self) -> Option<crate::simd::SwigluFn> {
        crate::simd::swiglu8(self.isa)
    }

    /// Softmax in ggml's arithmetic of a slice whose length is a multiple of eight, where
    /// this ISA has a SIMD version.
    pub fn softmax8(&self) -> Option<fn(&mut [f32])> {
        crate::simd::softmax8(self.isa)
    }

    /// The attention kernels for an f16 KV cache, where this ISA has SIMD versions.
    pub fn f16_attention(&self) -> Option<&'static F16Attention> {
        crate::simd::f16_attention(self.isa)
    }

    /// The encoder for activations of type `ty` (Q8_0, Q8_1, Q8_K, F16, BF16, F32).
    pub fn quantize(&self, ty: GgmlType) -> Option<FromF32Fn> {
        crate::simd::quantize(self.isa, ty).or(ty.traits().from_f32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_support() {
        assert_eq!(Isa::parse("AVX2"), Ok(Isa::Avx2));
        assert!(Isa::parse("sse9").is_err());
        assert!(Isa::Scalar.is_supported());
        assert!(Isa::best().is_supported());
        assert!(Kernels::new(Isa::Scalar).is_ok());
    }
}
