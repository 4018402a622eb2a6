//! The registry of architectures: names as GGUF files and HuggingFace configs spell them, and
//! the parts in which the families differ (rotary layout, norms, activation, biases, sliding
//! windows …). The forward pass is shared; an architecture is a row here, not a copy of a model
//! file. What a particular file sets (window size, soft-caps, rope bases) is read by
//! [`crate::config`].

use torchless_kernels::ops::RopeStyle;

use crate::parts::{Activation, NormKind};

/// Architectures the forward pass implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    /// LLaMA 1/2/3, SmolLM (GGUF `llama`).
    Llama,
    /// Mistral: LLaMA with a sliding attention window.
    Mistral,
    /// Qwen2 / Qwen2.5: LLaMA with q/k/v biases and NeoX rotary layout.
    Qwen2,
    /// Qwen3: per-head q/k RMSNorm, no biases.
    Qwen3,
    /// Phi-3: fused qkv and gate/up projections.
    Phi3,
    /// Gemma: GELU-tanh, embeddings scaled by √d, norms `x·(1+w)`.
    Gemma,
    /// Gemma 2: Gemma with sandwich norms, soft-caps and alternating sliding layers.
    Gemma2,
    /// Gemma 3: Gemma 2's layout with q/k norms, 5 local : 1 global layers, two rope bases.
    Gemma3,
}

/// Which layers attend through a sliding window (when the file gives a window size and no
/// per-layer list).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlidingLayers {
    None,
    All,
    /// Layers 0, 2, 4 … (Gemma 2).
    Even,
    /// All but every n-th (layer i is global when (i + 1) % n == 0; Gemma 3: n = 6).
    AllButEvery(usize),
}

/// What distinguishes one architecture on the shared forward path.
#[derive(Debug)]
pub struct ArchInfo {
    pub arch: Arch,
    /// `general.architecture` value.
    pub name: &'static str,
    /// Other names accepted by `--arch`.
    pub aliases: &'static [&'static str],
    /// HuggingFace `model_type` values.
    pub hf_types: &'static [&'static str],
    /// Rotary layout of a GGUF file (HuggingFace checkpoints are always NeoX: llama.cpp's
    /// converter permutes LLaMA's q/k rows into the adjacent-pairs layout).
    pub rope: RopeStyle,
    /// Whether q/k/v projections carry biases (loaded when present in any case).
    pub qkv_bias: bool,
    /// The norm as HuggingFace checkpoints store it.
    pub norm: NormKind,
    pub act: Activation,
    /// Embeddings multiplied by √n_embd.
    pub embd_scale: bool,
    /// Per-head q/k RMSNorm.
    pub qk_norm: bool,
    /// Norms after the attention and the feed-forward as well (Gemma 2/3).
    pub sandwich_norms: bool,
    /// q/k/v in one matrix and gate/up in one matrix, where the file has them so.
    pub fused: bool,
    pub sliding: SlidingLayers,
    /// The attention scale multiplies the rotated queries, not the scores (Gemma).
    pub scale_q: bool,
}

const fn row(arch: Arch, name: &'static str) -> ArchInfo {
    ArchInfo {
        arch,
        name,
        aliases: &[],
        hf_types: &[],
        rope: RopeStyle::Neox,
        qkv_bias: false,
        norm: NormKind::Rms,
        act: Activation::Silu,
        embd_scale: false,
        qk_norm: false,
        sandwich_norms: false,
        fused: false,
        sliding: SlidingLayers::None,
        scale_q: false,
    }
}

static LLAMA: ArchInfo = ArchInfo {
    aliases: &["smollm", "smollm2"],
    hf_types: &["llama"],
    rope: RopeStyle::Normal,
    ..row(Arch::Llama, "llama")
};

static MISTRAL: ArchInfo = ArchInfo {
    hf_types: &["mistral"],
    rope: RopeStyle::Normal,
    sliding: SlidingLayers::All,
    ..row(Arch::Mistral, "mistral")
};

static QWEN2: ArchInfo = ArchInfo {
    aliases: &["qwen2.5", "qwen"],
    hf_types: &["qwen2"],
    qkv_bias: true,
    ..row(Arch::Qwen2, "qwen2")
};

static QWEN3: ArchInfo = ArchInfo {
    hf_types: &["qwen3"],
    qk_norm: true,
    ..row(Arch::Qwen3, "qwen3")
};

static PHI3: ArchInfo = ArchInfo {
    hf_types: &["phi3"],
    fused: true,
    sliding: SlidingLayers::All,
    ..row(Arch::Phi3, "phi3")
};

static GEMMA: ArchInfo = ArchInfo {
    hf_types: &["gemma"],
    norm: NormKind::RmsOnePlus,
    act: Activation::GeluTanh,
    embd_scale: true,
    scale_q: true,
    ..row(Arch::Gemma, "gemma")
};

static GEMMA2: ArchInfo = ArchInfo {
    hf_types: &["gemma2"],
    norm: NormKind::RmsOnePlus,
    act: Activation::GeluTanh,
    embd_scale: true,
    scale_q: true,
    sandwich_norms: true,
    sliding: SlidingLayers::Even,
    ..row(Arch::Gemma2, "gemma2")
};

static GEMMA3: ArchInfo = ArchInfo {
    hf_types: &["gemma3_text", "gemma3"],
    norm: NormKind::RmsOnePlus,
    act: Activation::GeluTanh,
    embd_scale: true,
    scale_q: true,
    sandwich_norms: true,
    qk_norm: true,
    sliding: SlidingLayers::AllButEvery(6),
    ..row(Arch::Gemma3, "gemma3")
};

/// Every architecture's row.
pub static ARCHS: &[&ArchInfo] = &[
    &LLAMA, &MISTRAL, &QWEN2, &QWEN3, &PHI3, &GEMMA, &GEMMA2, &GEMMA3,
];

impl Arch {
    /// The architecture a name (GGUF spelling, alias or HuggingFace `model_type`) denotes.
    pub fn from_name(name: &str) -> Option<Arch> {
        let n = name.trim().to_ascii_lowercase();
        ARCHS
            .iter()
            .find(|a| {
                a.name == n || a.aliases.contains(&n.as_str()) || a.hf_types.contains(&n.as_str())
            })
            .map(|a| a.arch)
    }

    pub fn info(self) -> &'static ArchInfo {
        match self {
            Arch::Llama => &LLAMA,
            Arch::Mistral => &MISTRAL,
            Arch::Qwen2 => &QWEN2,
            Arch::Qwen3 => &QWEN3,
            Arch::Phi3 => &PHI3,
            Arch::Gemma => &GEMMA,
            Arch::Gemma2 => &GEMMA2,
            Arch::Gemma3 => &GEMMA3,
        }
    }

    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// Names of every supported architecture, for messages.
    pub fn supported() -> String {
        ARCHS.iter().map(|a| a.name).collect::<Vec<_>>().join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_arch_has_its_own_row() {
        for a in ARCHS {
            assert_eq!(a.arch.info().name, a.name);
            assert_eq!(Arch::from_name(a.name), Some(a.arch));
            for t in a.hf_types {
                assert_eq!(Arch::from_name(t), Some(a.arch), "{t}");
            }
        }
        assert_eq!(Arch::from_name("SmolLM2"), Some(Arch::Llama));
        assert_eq!(Arch::from_name("gemma3_text"), Some(Arch::Gemma3));
        assert_eq!(GEMMA2.norm, NormKind::RmsOnePlus);
        assert_eq!(GEMMA2.arch, Arch::Gemma2);
        assert_eq!(Arch::from_name("gpt2"), None);
    }
}
