//! The registry of architectures: names as GGUF files spell them, and the small parts in which
//! the families differ (rotary layout, projection biases …). The forward pass is shared; an
//! architecture is a row here, not a copy of a model file.

use torchless_kernels::ops::RopeStyle;

/// Architectures the forward pass implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    /// LLaMA 1/2/3, SmolLM (GGUF `llama`).
    Llama,
    /// Qwen2 / Qwen2.5: LLaMA with q/k/v biases and NeoX rotary layout.
    Qwen2,
}

/// What distinguishes one architecture on the shared forward path.
#[derive(Debug)]
pub struct ArchInfo {
    pub arch: Arch,
    /// `general.architecture` value.
    pub name: &'static str,
    /// Other names accepted by `--arch`.
    pub aliases: &'static [&'static str],
    pub rope: RopeStyle,
    /// Whether q/k/v projections carry biases (loaded when present in any case).
    pub qkv_bias: bool,
}

static LLAMA: ArchInfo = ArchInfo {
    arch: Arch::Llama,
    name: "llama",
    // Not "mistral": Mistral's sliding-window attention is not implemented yet, so naming it
    // would run such a model wrongly past its window instead of saying so.
    aliases: &["smollm", "smollm2"],
    rope: RopeStyle::Normal,
    qkv_bias: false,
};

static QWEN2: ArchInfo = ArchInfo {
    arch: Arch::Qwen2,
    name: "qwen2",
    aliases: &["qwen2.5", "qwen"],
    rope: RopeStyle::Neox,
    qkv_bias: true,
};

/// Every architecture's row.
pub static ARCHS: &[&ArchInfo] = &[&LLAMA, &QWEN2];

impl Arch {
    /// The architecture a name (GGUF spelling or alias) denotes.
    pub fn from_name(name: &str) -> Option<Arch> {
        let n = name.trim().to_ascii_lowercase();
        ARCHS
            .iter()
            .find(|a| a.name == n || a.aliases.contains(&n.as_str()))
            .map(|a| a.arch)
    }

    pub fn info(self) -> &'static ArchInfo {
        match self {
            Arch::Llama => &LLAMA,
            Arch::Qwen2 => &QWEN2,
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
    fn every_arch_has_a_row() {
        for a in [Arch::Llama, Arch::Qwen2] {
            assert_eq!(a.info().arch, a);
            assert_eq!(Arch::from_name(a.name()), Some(a));
        }
        assert_eq!(Arch::from_name("SmolLM2"), Some(Arch::Llama));
        assert_eq!(
            Arch::from_name("mistral"),
            None,
            "no sliding window yet: not offered as llama"
        );
        assert_eq!(ARCHS.len(), 2);
        assert_eq!(Arch::from_name("gpt2"), None);
    }
}
