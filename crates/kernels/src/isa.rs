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
    /// rest.
    Avx512,
    /// [`Isa::Avx512`] plus AVX-512 VNNI: `vpdpbusd` in the 32-element formats' dot products and
    /// batched panels (the same exact integer lane sums as AVX2's `maddubs` + `madd`).
    Avx512Vnni,
    /// [`Isa::Avx512Vnni`] plus AMX-INT8 tiles for batched products, where the kernel is granted
    /// the tile state (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`).
    Amx,
    /// AArch64 with NEON (dot-product instructions used where present).
    Neon,
}

/// Why a kernel set could not be chosen.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DispatchError {
    #[error(
        "unknown instruction set '{0}' (expected scalar, avx2, avx512, avx512vnni, amx or neon)"
    )]
    Unknown(String),
    #[error("this CPU does not support the {0} instruction set")]
    Unsupported(&'static str),
}

impl Isa {
    pub const ALL: [Isa; 6] = [
        Isa::Scalar,
        Isa::Avx2,
        Isa::Avx512,
        Isa::Avx512Vnni,
        Isa::Amx,
        Isa::Neon,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Avx512Vnni => "avx512vnni",
            Isa::Amx => "amx",
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
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => Isa::Avx512.is_supported() && is_x86_feature_detected!("avx512vnni"),
            #[cfg(target_arch = "x86_64")]
            Isa::Amx => Isa::Avx512Vnni.is_supported() && amx_granted(),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// Whether this family's kernels include the AVX-512 ones (and so the AVX2 ones too).
    pub fn has_avx512(self) -> bool {
        matches!(self, Isa::Avx512 | Isa::Avx512Vnni | Isa::Amx)
    }

    /// Whether this family's kernels include the VNNI ones.
    pub fn has_vnni(self) -> bool {
        matches!(self, Isa::Avx512Vnni | Isa::Amx)
    }

    /// Whether the project has kernels for this family (beyond the scalar fallbacks).
    pub fn is_implemented(self) -> bool {
        match self {
            Isa::Scalar | Isa::Avx2 => true,
            Isa::Neon => cfg!(target_arch = "aarch64"),
            // Its own single-token dot products; the AVX2 kernels for the rest.
            Isa::Avx512 | Isa::Avx512Vnni | Isa::Amx => cfg!(target_arch = "x86_64"),
        }
    }

    /// The best family this CPU supports and the project implements.
    pub fn best() -> Isa {
        [Isa::Amx, Isa::Avx512Vnni, Isa::Avx512, Isa::Avx2, Isa::Neon]
            .into_iter()
            .find(|i| i.is_implemented() && i.is_supported())
            .unwrap_or(Isa::Scalar)
    }
}

/// Whether the CPU has AMX-TILE and AMX-INT8 and Linux lets this process use the tile state.
/// The first call asks for it (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`, which
/// grants it to every thread of the process); the answer is kept.
#[cfg(target_arch = "x86_64")]
fn amx_granted() -> bool {
    static GRANTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *GRANTED.get_or_init(|| {
        // CPUID leaf 7, sub-leaf 0: EDX bit 24 AMX-TILE, bit 25 AMX-INT8.
        let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
        let cpu = leaf7.edx & (1 << 24) != 0 && leaf7.edx & (1 << 25) != 0;
        cpu && request_tile_state()
    })
}

/// Asks Linux for the AMX tile data state; whether it was granted.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_state() -> bool {
    const ARCH_GET_XCOMP_PERM: libc::c_long = 0x1022;
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    let mut bits: u64 = 0;
    // SAFETY: arch_prctl with these codes takes an integer, or a pointer to a u64 that lives
    // for the call; neither touches other memory.
    unsafe {
        if libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) != 0
        {
            return false;
        }
        if libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_GET_XCOMP_PERM,
            &mut bits as *mut u64,
        ) != 0
        {
            return false;
        }
    }
    bits & (1 << XFEATURE_XTILEDATA) != 0
}

/// Other systems: AMX is not used.
#[cfg(all(target_arch = "x86_64", not(target_os = "linux")))]
fn request_tile_state() -> bool {
    false
}
