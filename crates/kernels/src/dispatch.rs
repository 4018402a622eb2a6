//! Run-time choice of kernel implementations (instruction set), made once at start-up.
//!
//! [`Kernels`] answers "which function computes a dot product for weights of type T" for one
//! instruction set; every answer falls back to the scalar reference in [`crate::quant`] where
//! no SIMD version exists. `TORCHLESS_ISA` (scalar, avx2, avx512, neon) forces a path so each
//! can be tested and benchmarked. Nothing here computes.

use crate::quant::{FromF32Fn, GgmlType, VecDotFn};

/// An instruction-set family with its own kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable Rust; the test oracle.
    Scalar,
    /// x86-64 with AVX2, FMA and F16C.
    Avx2,
    /// x86-64 with AVX-512 F/BW/VL: its own single-token dot products, the AVX2 kernels for the
    /// rest (VNNI not used: see `simd/avx512.rs`).
    Avx512,
    /// AArch64 with NEON (dot-product instructions used where present).
    Neon,
}

/// Why a kernel set could not be chosen.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DispatchError {
    #[error("unknown instruction set '{0}' (expected scalar, avx2, avx512 or neon)")]
    Unknown(String),
    #[error("this CPU does not support the {0} instruction set")]
    Unsupported(&'static str),
}

impl Isa {
    pub const ALL: [Isa; 4] = [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
        }
    }

    pub fn parse(s: &str) -> Result<Isa, DispatchError> {
        Isa::ALL
            .into_iter()
            .find(|i| i.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| DispatchError::Unknown(s.to_string()))
    }

    /// Whether this CPU can run the kernels of this family.
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                Isa::Avx2.is_supported()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// Whether the project has kernels for this family (beyond the scalar fallbacks).
    pub fn is_implemented(self) -> bool {
        match self {
            Isa::Scalar | Isa::Avx2 => true,
            Isa::Neon => cfg!(target_arch = "aarch64"),
            // Its own single-token dot products; the AVX2 kernels for the rest.
            Isa::Avx512 => cfg!(target_arch = "x86_64"),
        }
    }

    /// The best family this CPU supports and the project implements.
    pub fn best() -> Isa {
        [Isa::Avx512, Isa::Avx2, Isa::Neon]
            .into_iter()
            .find(|i| i.is_implemented() && i.is_supported())
            .unwrap_or(Isa::Scalar)
    }
}

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

    /// The best kernels for this CPU, unless `TORCHLESS_ISA` names a family.
    pub fn from_env() -> Result<Kernels, DispatchError> {
        match std::env::var("TORCHLESS_ISA") {
            Ok(v) if !v.trim().is_empty() => Kernels::new(Isa::parse(&v)?),
            _ => Ok(Kernels { isa: Isa::best() }),
        }
    }

    pub fn scalar() -> Kernels {
        Kernels { isa: Isa::Scalar }
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Whether kernels may use fused multiply-add instructions (same results, faster).
    pub fn has_fma(&self) -> bool {
        matches!(self.isa, Isa::Avx2 | Isa::Avx512)
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

    /// The whole-tile kernel for weights of type `ty`, where one exists for this ISA.
    pub fn gemm(&self, ty: GgmlType) -> Option<crate::matmul::GemmFn> {
        crate::simd::gemm(self.isa, ty)
    }

    /// The tile kernel for weights of type `ty` in the eight-row interleaved layout: the SIMD
    /// one for this ISA, else the scalar reference (`None`: the type has no such layout).
    pub fn gemm_rows8(&self, ty: GgmlType) -> Option<crate::matmul::GemmFn> {
        crate::simd::gemm_rows8(self.isa, ty).or(crate::quant::interleave::gemm_scalar_fn(ty))
    }

    /// Whether repacking weights of type `ty` into the interleaved layout pays on this ISA
    /// (it has a SIMD kernel for it).
    pub fn prefers_rows8(&self, ty: GgmlType) -> bool {
        crate::simd::gemm_rows8(self.isa, ty).is_some()
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
