//! The GGUF side of a conversion: metadata keys as llama.cpp's converter writes them
//! (`general.*`, `{arch}.*`, `tokenizer.*`) and tensors taken from the neutral form into
//! llama.cpp's layout (LLaMA-family q/k rows in adjacent pairs, Gemma norms as `1 + w`).

use torchless_gguf::{GgufWriter, Value};
use torchless_kernels::ops::RopeStyle;

use super::{permute_rows, permuted_heads, Neutral, OutType};
use crate::arch::Arch;
use crate::checkpoint::Checkpoint;
use crate::error::ModelError;
use crate::parts::{NormKind, Rope, RopeScaling};

/// The `general.architecture` a family is written under: llama.cpp runs Mistral as `llama`
/// (torchless reads the window from `llama.attention.sliding_window`).
pub fn gguf_arch(arch: Arch) -> &'static str {
    match arch {
        Arch::Mistral => "llama",
        a => a.name(),
    }
}

/// llama.cpp's `general.file_type` for a uniform output type.
fn file_type(t: Option<OutType>) -> u32 {
    match t {
        Some(OutType::F32) => 0,
        None | Some(OutType::F16) => 1,
        Some(OutType::Q4_0) => 2,
        Some(OutType::Q8_0) | Some(OutType::Int8) => 7,
        Some(OutType::Q4K) => 14,
        Some(OutType::BF16) => 32,
    }
}

/// A writer holding the metadata of `ck`.
pub fn header(ck: &Checkpoint, dtype: Option<OutType>) -> Result<GgufWriter, ModelError> {
    let c = &ck.config;
    let s = &c.settings;
    let a = gguf_arch(c.arch);
    let mut w = GgufWriter::new();
    let k = |key: &str| format!("{a}.{key}");
    let u = |v: usize| Value::U32(v as u32);
    w.meta("general.architecture", Value::String(a.into()));
    if let Some(name) = &c.name {
        w.meta("general.name", Value::String(name.clone()));
    }
    w.meta("general.file_type", Value::U32(file_type(dtype)));
    w.meta("general.quantization_version", Value::U32(2));
    w.meta(k("context_length"), u(c.n_ctx_train));
    w.meta(k("embedding_length"), u(c.n_embd));
    w.meta(k("block_count"), u(c.n_layers));
    w.meta(k("feed_forward_length"), u(c.n_ff));
    w.meta(k("attention.head_count"), u(c.n_head));
    w.meta(k("attention.head_count_kv"), u(c.n_head_kv));
    w.meta(k("attention.key_length"), u(c.head_dim));
    w.meta(k("attention.value_length"), u(c.head_dim));
    w.meta(k("vocab_size"), u(c.vocab));
    let eps_key = match s.norm {
        NormKind::Layer => "attention.layer_norm_epsilon",
        _ => "attention.layer_norm_rms_epsilon",
    };
    w.meta(k(eps_key), Value::F32(s.norm_eps));
    w.meta(k("rope.freq_base"), Value::F32(s.rope_base));
    w.meta(k("rope.dimension_count"), u(s.rope_dims));
    match &s.rope_scaling {
        RopeScaling::None | RopeScaling::Factors(_) | RopeScaling::Llama3 { .. } => {}
        RopeScaling::Linear { factor } => {
            w.meta(k("rope.scaling.type"), Value::String("linear".into()));
            w.meta(k("rope.scaling.factor"), Value::F32(*factor));
        }
        RopeScaling::Yarn {
            factor,
            original_ctx,
            beta_fast,
            beta_slow,
            attn_factor,
        } => {
            w.meta(k("rope.scaling.type"), Value::String("yarn".into()));
            w.meta(k("rope.scaling.factor"), Value::F32(*factor));
            w.meta(k("rope.scaling.original_context_length"), u(*original_ctx));
            w.meta(k("rope.scaling.yarn_beta_fast"), Value::F32(*beta_fast));
            w.meta(k("rope.scaling.yarn_beta_slow"), Value::F32(*beta_slow));
            w.meta(k("rope.scaling.attn_factor"), Value::F32(*attn_factor));
        }
        RopeScaling::LongRope {
            original_ctx,
            attn_factor,
            ..
        } => {
            w.meta(k("rope.scaling.original_context_length"), u(*original_ctx));
            w.meta(k("rope.scaling.attn_factor"), Value::F32(*attn_factor));
        }
    }
    if let Some((base, _)) = s.local_rope {
        w.meta(k("rope.freq_base_swa"), Value::F32(base));
    }
    let windows: Vec<bool> = c
        .plan
        .layers
        .iter()
        .map(|l| l.attention().window.is_some())
        .collect();
    if let Some(win) = s.window.filter(|_| windows.iter().any(|&b| b)) {
        w.meta(k("attention.sliding_window"), u(win));
        if c.arch == Arch::Gemma3 {
            let n = (1..=c.n_layers)
                .find(|&n| {
                    windows
                        .iter()
                        .enumerate()
                        .all(|(i, &b)| b == ((i + 1) % n != 0))
                })
                .ok_or_else(|| {
                    ModelError::Invalid(
                        "this Gemma 3's sliding layers follow no period GGUF can state".into(),
                    )
                })?;
            w.meta(k("attention.sliding_window_pattern"), u(n));
        }
    }
    if let Some(v) = s.attn_softcap {
        w.meta(k("attn_logit_softcapping"), Value::F32(v));
    }
    if let Some(v) = s.final_softcap {
        w.meta(k("final_logit_softcapping"), Value::F32(v));
    }
    // llama.cpp takes Gemma's query scale from the model size; a checkpoint that departs
    // from that rule carries its own.
    if let Some(q) = s.query_scale {
        let rule = if matches!(c.n_embd, 4608 | 5376) {
            1.0 / ((c.n_embd / c.n_head) as f32).sqrt()
        } else {
            1.0 / (c.head_dim as f32).sqrt()
        };
        if q != rule {
            w.meta(k("attention.scale"), Value::F32(q));
        }
    }
    if let Some(t) = &ck.tokenizer_metadata {
        for (key, v) in t.iter() {
            w.meta(key, v.clone());
        }
    }
    // Rotary divisors as tensors, where llama.cpp keeps them so.
    let factors = match &s.rope_scaling {
        RopeScaling::Factors(f) => Some(f.clone()),
        sc @ RopeScaling::Llama3 { .. } => {
            Rope {
                style: RopeStyle::Normal,
                dims: s.rope_dims,
                base: s.rope_base,
                scaling: sc.clone(),
            }
            .freqs(c.n_ctx_train)
            .factors
        }
        _ => None,
    };
    if let Some(f) = factors {
        w.tensor_f32("rope_freqs.weight", &[f.len() as u64], &f);
    }
    if let RopeScaling::LongRope { short, long, .. } = &s.rope_scaling {
        w.tensor_f32("rope_factors_long.weight", &[long.len() as u64], long);
        w.tensor_f32("rope_factors_short.weight", &[short.len() as u64], short);
    }
    Ok(w)
}

/// Takes a neutral tensor into llama.cpp's layout.
pub fn from_neutral(ck: &Checkpoint, n: &mut Neutral) {
    let arch = ck.config.arch;
    if let Some(heads) = permuted_heads(arch, ck, n.role) {
        permute_rows(&mut n.values, super::row_len(&n.dims), heads, true);
    }
    if super::is_norm(n.role) && arch.info().norm == NormKind::RmsOnePlus {
        n.values.iter_mut().for_each(|v| *v += 1.0);
    }
}
