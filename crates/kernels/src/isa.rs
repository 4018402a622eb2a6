//! Instruction-set families: the tags that name a kernel set, and the CPU checks that say
//! whether this machine can run one. Shared by [`crate::dispatch`] (which picks kernels by
//! tag) and [`crate::simd`] (which is organised by tag); it computes nothing and chooses
//! nothing.

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
