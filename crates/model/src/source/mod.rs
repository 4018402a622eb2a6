//! Where weights come from. A [`WeightSource`] hands out tensors by [`Role`] — what a tensor
//! is for in the network — whatever the file calls it; the one table of names (llama.cpp's
//! GGUF names and HuggingFace's names for the same role) is [`Role::gguf_name`] and
//! [`Role::hf_name`]. Sources: [`gguf::GgufSource`] (a GGUF file),
//! [`safetensors::HfSource`] (a HuggingFace directory: config.json + safetensors shards), and
//! [`native::NativeSource`] (the original torchless engine's `.bin` export).
//!
//! A source only finds and views tensors (no compute, and no copies except the `.bin` format's
//! int8 tensors, which have no kernel type); the shapes the network needs are checked by
//! [`crate::weights`].

pub mod gguf;
pub mod native;
pub mod quantizing;
pub mod safetensors;

use std::collections::HashMap;
use std::path::Path;

use torchless_gguf::LoadMode;
use torchless_kernels::{Storage, Tensor};

use crate::arch::Arch;
use crate::error::ModelError;

/// What a tensor is for. Layer roles carry the layer's index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    TokenEmbd,
    OutputNorm,
    OutputNormBias,
    /// The output head (absent when tied to the embeddings).
    Output,
    /// Per-pair divisors of the rotary angles (Llama 3 in GGUF).
    RopeFreqs,
    /// LongRoPE's long and short divisors (Phi-3 in GGUF).
    RopeLong,
    RopeShort,
    AttnNorm(usize),
    AttnNormBias(usize),
    Q(usize),
    K(usize),
    V(usize),
    /// q, k and v in one matrix (Phi-3), rows in that order.
    Qkv(usize),
    QBias(usize),
    KBias(usize),
    VBias(usize),
    /// Per-head RMSNorm weights of queries and keys (Qwen3, Gemma 3).
    QNorm(usize),
    KNorm(usize),
    O(usize),
    /// Norm of the attention output before the residual (Gemma 2/3).
    PostAttnNorm(usize),
    FfnNorm(usize),
    FfnNormBias(usize),
    Gate(usize),
    Up(usize),
    /// gate and up in one matrix (Phi-3), gate rows first.
    GateUp(usize),
    Down(usize),
    /// Norm of the feed-forward output before the residual (Gemma 2/3).
    PostFfnNorm(usize),
}

impl Role {
    /// llama.cpp's name of this tensor in a GGUF file.
    pub fn gguf_name(self) -> String {
        let b = |l: usize, s: &str| format!("blk.{l}.{s}");
        match self {
            Role::TokenEmbd => "token_embd.weight".into(),
            Role::OutputNorm => "output_norm.weight".into(),
            Role::OutputNormBias => "output_norm.bias".into(),
            Role::Output => "output.weight".into(),
            Role::RopeFreqs => "rope_freqs.weight".into(),
            Role::RopeLong => "rope_factors_long.weight".into(),
            Role::RopeShort => "rope_factors_short.weight".into(),
            Role::AttnNorm(l) => b(l, "attn_norm.weight"),
            Role::AttnNormBias(l) => b(l, "attn_norm.bias"),
            Role::Q(l) => b(l, "attn_q.weight"),
            Role::K(l) => b(l, "attn_k.weight"),
            Role::V(l) => b(l, "attn_v.weight"),
            Role::Qkv(l) => b(l, "attn_qkv.weight"),
            Role::QBias(l) => b(l, "attn_q.bias"),
            Role::KBias(l) => b(l, "attn_k.bias"),
            Role::VBias(l) => b(l, "attn_v.bias"),
            Role::QNorm(l) => b(l, "attn_q_norm.weight"),
            Role::KNorm(l) => b(l, "attn_k_norm.weight"),
            Role::O(l) => b(l, "attn_output.weight"),
            Role::PostAttnNorm(l) => b(l, "post_attention_norm.weight"),
            Role::FfnNorm(l) => b(l, "ffn_norm.weight"),
            Role::FfnNormBias(l) => b(l, "ffn_norm.bias"),
            Role::Gate(l) => b(l, "ffn_gate.weight"),
            Role::Up(l) => b(l, "ffn_up.weight"),
            // llama.cpp keeps Phi-3's fused gate/up under the up projection's name.
            Role::GateUp(l) => b(l, "ffn_up.weight"),
            Role::Down(l) => b(l, "ffn_down.weight"),
            Role::PostFfnNorm(l) => b(l, "post_ffw_norm.weight"),
        }
    }

    /// HuggingFace transformers' name of this tensor for `arch` (without the `model.` prefix
    /// of the decoder's own tensors, which [`safetensors::HfSource`] tries both with and
    /// without). None where the format has no such tensor.
    pub fn hf_name(self, arch: Arch) -> Option<String> {
        let b = |l: usize, s: &str| Some(format!("layers.{l}.{s}"));
        // Gemma 2/3 norm around both halves of a layer; elsewhere "post_attention_layernorm"
        // is the feed-forward's input norm.
        let sandwich = arch.info().sandwich_norms;
        match self {
            Role::TokenEmbd => Some("embed_tokens.weight".into()),
            Role::OutputNorm => Some("norm.weight".into()),
            Role::OutputNormBias => Some("norm.bias".into()),
            Role::Output => Some("lm_head.weight".into()),
            Role::RopeFreqs | Role::RopeLong | Role::RopeShort => None,
            Role::AttnNorm(l) => b(l, "input_layernorm.weight"),
            Role::AttnNormBias(l) => b(l, "input_layernorm.bias"),
            Role::Q(l) => b(l, "self_attn.q_proj.weight"),
            Role::K(l) => b(l, "self_attn.k_proj.weight"),
            Role::V(l) => b(l, "self_attn.v_proj.weight"),
            Role::Qkv(l) => b(l, "self_attn.qkv_proj.weight"),
            Role::QBias(l) => b(l, "self_attn.q_proj.bias"),
            Role::KBias(l) => b(l, "self_attn.k_proj.bias"),
            Role::VBias(l) => b(l, "self_attn.v_proj.bias"),
            Role::QNorm(l) => b(l, "self_attn.q_norm.weight"),
            Role::KNorm(l) => b(l, "self_attn.k_norm.weight"),
            Role::O(l) => b(l, "self_attn.o_proj.weight"),
            Role::PostAttnNorm(l) if sandwich => b(l, "post_attention_layernorm.weight"),
            Role::PostAttnNorm(_) => None,
            Role::FfnNorm(l) if sandwich => b(l, "pre_feedforward_layernorm.weight"),
            Role::FfnNorm(l) => b(l, "post_attention_layernorm.weight"),
            Role::FfnNormBias(l) => b(l, "post_attention_layernorm.bias"),
            Role::Gate(l) => b(l, "mlp.gate_proj.weight"),
            Role::Up(l) => b(l, "mlp.up_proj.weight"),
            Role::GateUp(l) => b(l, "mlp.gate_up_proj.weight"),
            Role::Down(l) => b(l, "mlp.down_proj.weight"),
            Role::PostFfnNorm(l) if sandwich => b(l, "post_feedforward_layernorm.weight"),
            Role::PostFfnNorm(_) => None,
        }
    }
}

/// Tensors by role, from one model file or directory.
pub trait WeightSource {
    /// The tensor playing `role`, with GGML-order dimensions (row length first), or None when
    /// the source has none.
    fn tensor(&self, role: Role) -> Option<Tensor>;
    /// The source's own name of `role`, for messages.
    fn name(&self, role: Role) -> String;
}

impl<T: WeightSource + ?Sized> WeightSource for &T {
    fn tensor(&self, role: Role) -> Option<Tensor> {
        (**self).tensor(role)
    }

    fn name(&self, role: Role) -> String {
        (**self).name(role)
    }
}

impl<T: WeightSource + ?Sized> WeightSource for Box<T> {
    fn tensor(&self, role: Role) -> Option<Tensor> {
        (**self).tensor(role)
    }

    fn name(&self, role: Role) -> String {
        (**self).name(role)
    }
}

/// The bytes of a model file, memory-mapped or read, as `mode` says.
pub(crate) fn open_storage(path: &Path, mode: LoadMode) -> Result<Storage, ModelError> {
    let io = |e: std::io::Error| ModelError::Config(format!("{}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(io)?;
    Ok(match mode {
        LoadMode::Mmap => {
            // SAFETY: the map is read-only; as with every memory-mapped reader, the file must
            // not be truncated or rewritten by another process while it is open.
            Storage::Mapped(unsafe { memmap2::Mmap::map(&file) }.map_err(io)?)
        }
        LoadMode::Read => Storage::from_bytes(&std::fs::read(path).map_err(io)?),
    })
}

/// The tensor HuggingFace calls `name` among `tensors`: decoder tensors sit under "model." in
/// causal-LM checkpoints (under the language model's prefix in multimodal ones); lm_head not.
pub(crate) fn find_hf<'a>(tensors: &'a HashMap<String, Tensor>, name: &str) -> Option<&'a Tensor> {
    [
        "model.",
        "language_model.model.",
        "model.language_model.",
        "",
    ]
    .iter()
    .find_map(|p| tensors.get(&format!("{p}{name}")))
}
