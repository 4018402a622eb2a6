//! The HuggingFace side of a conversion: a directory with `config.json` (the transformers 4
//! schema, which transformers 5 also reads), `model.safetensors`, and — when the source has
//! a tokenizer — `tokenizer.json`, `tokenizer_config.json` and `generation_config.json`. Also
//! the `.bin` export's tokenizer object, which is tokenizer.json's vocabulary and merges.

use std::path::Path;

use serde_json::{json, Value as Json};
use torchless_gguf::Metadata;
use torchless_kernels::GgmlType;

use super::Neutral;
use crate::arch::Arch;
use crate::checkpoint::Checkpoint;
use crate::error::ModelError;
use crate::parts::{Activation, RopeScaling};
use crate::source::Role;

/// transformers' class and `model_type` of a family.
fn hf_names(arch: Arch) -> (&'static str, &'static str) {
    match arch {
        Arch::Llama => ("LlamaForCausalLM", "llama"),
        Arch::Mistral => ("MistralForCausalLM", "mistral"),
        Arch::Qwen2 => ("Qwen2ForCausalLM", "qwen2"),
        Arch::Qwen3 => ("Qwen3ForCausalLM", "qwen3"),
        Arch::Phi3 => ("Phi3ForCausalLM", "phi3"),
        Arch::Gemma => ("GemmaForCausalLM", "gemma"),
        Arch::Gemma2 => ("Gemma2ForCausalLM", "gemma2"),
        Arch::Gemma3 => ("Gemma3ForCausalLM", "gemma3_text"),
    }
}

/// The checkpoint name of `role` (decoder tensors under `model.`).
pub fn tensor_name(arch: Arch, role: Role) -> Result<String, ModelError> {
    let n = role.hf_name(arch).ok_or_else(|| {
        ModelError::Invalid(format!(
            "{role:?} has no HuggingFace name for {}",
            arch.name()
        ))
    })?;
    Ok(if role == Role::Output {
        n
    } else {
        format!("model.{n}")
    })
}

fn rope_scaling_json(sc: &RopeScaling) -> Result<Json, ModelError> {
    Ok(match sc {
        RopeScaling::None => Json::Null,
        RopeScaling::Linear { factor } => json!({"rope_type": "linear", "factor": factor}),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_ctx,
        } => json!({"rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
            "high_freq_factor": high_freq_factor, "original_max_position_embeddings": original_ctx}),
        RopeScaling::Yarn {
            factor,
            original_ctx,
            beta_fast,
            beta_slow,
            attn_factor,
        } => {
            json!({"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": original_ctx,
            "beta_fast": beta_fast, "beta_slow": beta_slow, "attention_factor": attn_factor})
        }
        RopeScaling::LongRope {
            short,
            long,
            original_ctx,
            ..
        } => json!({"rope_type": "longrope", "short_factor": short, "long_factor": long,
            "original_max_position_embeddings": original_ctx}),
        RopeScaling::Factors(_) => {
            return Err(ModelError::Invalid(
                "the source's rotary divisors (rope_freqs.weight) have no config.json form".into(),
            ))
        }
    })
}

/// config.json for `ck`, tensors stored as `dtype`.
pub fn config_json(ck: &Checkpoint, dtype: &str, tied: bool) -> Result<Json, ModelError> {
    let c = &ck.config;
    let s = &c.settings;
    let (class, model_type) = hf_names(c.arch);
    let mut j = json!({
        "architectures": [class],
        "model_type": model_type,
        "hidden_size": c.n_embd,
        "intermediate_size": c.n_ff,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_head,
        "num_key_value_heads": c.n_head_kv,
        "head_dim": c.head_dim,
        "vocab_size": c.vocab,
        "max_position_embeddings": c.n_ctx_train,
        "rms_norm_eps": s.norm_eps,
        "rope_theta": s.rope_base,
        "tie_word_embeddings": tied,
        "torch_dtype": dtype,
    });
    let mut put = |k: &str, v: Json| {
        j[k] = v;
    };
    let act = match c.arch.info().act {
        Activation::Silu => "silu",
        Activation::GeluTanh => "gelu_pytorch_tanh",
    };
    put("hidden_act", json!(act));
    if matches!(c.arch, Arch::Gemma | Arch::Gemma2 | Arch::Gemma3) {
        put("hidden_activation", json!(act));
    }
    let sc = rope_scaling_json(&s.rope_scaling)?;
    if !sc.is_null() {
        put("rope_scaling", sc);
    }
    if s.rope_dims != c.head_dim {
        put(
            "partial_rotary_factor",
            json!(s.rope_dims as f64 / c.head_dim as f64),
        );
    }
    if c.arch == Arch::Qwen2 {
        put("attention_bias", json!(true));
    }
    let sliding: Vec<bool> = c
        .plan
        .layers
        .iter()
        .map(|l| l.attention().window.is_some())
        .collect();
    match s.window.filter(|_| sliding.iter().any(|&b| b)) {
        Some(w) => {
            put("sliding_window", json!(w));
            if matches!(c.arch, Arch::Gemma2 | Arch::Gemma3) {
                let types: Vec<&str> = sliding
                    .iter()
                    .map(|&b| {
                        if b {
                            "sliding_attention"
                        } else {
                            "full_attention"
                        }
                    })
                    .collect();
                put("layer_types", json!(types));
            }
        }
        None => put("sliding_window", Json::Null),
    }
    if let Some(v) = s.attn_softcap {
        put("attn_logit_softcapping", json!(v));
    }
    if let Some(v) = s.final_softcap {
        put("final_logit_softcapping", json!(v));
    }
    if matches!(c.arch, Arch::Gemma | Arch::Gemma2 | Arch::Gemma3) {
        let scale = c.plan.layers.first().map_or(1.0, |l| {
            let a = l.attention();
            a.q_scale.unwrap_or(a.scale)
        });
        put("query_pre_attn_scalar", json!(1.0 / (scale as f64).powi(2)));
    }
    if let Some((base, _)) = s.local_rope {
        put("rope_local_base_freq", json!(base));
    }
    if let Some(t) = &ck.tokenizer {
        let v = t.vocab();
        if let Some(b) = v.bos {
            put("bos_token_id", json!(b));
        }
        if let Some(e) = v.eos {
            put("eos_token_id", json!(e));
        }
    }
    Ok(j)
}

fn st_dtype(t: GgmlType) -> Result<safetensors::Dtype, ModelError> {
    Ok(match t {
        GgmlType::F32 => safetensors::Dtype::F32,
        GgmlType::F16 => safetensors::Dtype::F16,
        GgmlType::BF16 => safetensors::Dtype::BF16,
        other => {
            return Err(ModelError::Invalid(format!(
                "safetensors cannot hold {}",
                other.name()
            )))
        }
    })
}

fn write_json(path: &Path, v: &Json) -> Result<(), ModelError> {
    let text = serde_json::to_string_pretty(v).map_err(|e| ModelError::Config(e.to_string()))?;
    std::fs::write(path, text)
        .map_err(|e| ModelError::Config(format!("cannot write {}: {e}", path.display())))
}

/// Writes the directory `out`; returns the bytes of its safetensors file.
pub fn write_dir(
    ck: &Checkpoint,
    items: &[(Neutral, GgmlType)],
    out: &Path,
) -> Result<u64, ModelError> {
    std::fs::create_dir_all(out)
        .map_err(|e| ModelError::Config(format!("cannot create {}: {e}", out.display())))?;
    let arch = ck.config.arch;
    let mut tensors = Vec::with_capacity(items.len());
    for (n, ty) in items {
        let name = tensor_name(arch, n.role)?;
        let data = super::encode(*ty, &n.values, &name)?;
        let shape: Vec<usize> = n.dims.iter().rev().copied().collect();
        tensors.push((name, st_dtype(*ty)?, shape, data));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, dt, shape, data)| {
            safetensors::tensor::TensorView::new(*dt, shape.clone(), data)
                .map(|v| (name.clone(), v))
                .map_err(|e| ModelError::Config(format!("{name}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    let path = out.join("model.safetensors");
    let mut info = std::collections::HashMap::new();
    info.insert("format".to_string(), "pt".to_string());
    safetensors::serialize_to_file(views, Some(info), &path)
        .map_err(|e| ModelError::Config(format!("cannot write {}: {e}", path.display())))?;
    let dtype = items
        .iter()
        .find(|(n, _)| n.dims.len() >= 2)
        .map_or("float32", |(_, t)| match t {
            GgmlType::F16 => "float16",
            GgmlType::BF16 => "bfloat16",
            _ => "float32",
        });
    let tied = !items.iter().any(|(n, _)| n.role == Role::Output);
    write_json(&out.join("config.json"), &config_json(ck, dtype, tied)?)?;
    if let Some(m) = &ck.tokenizer_metadata {
        write_tokenizer(ck, m, out)?;
    }
    Ok(std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0))
}

fn write_tokenizer(ck: &Checkpoint, m: &Metadata, out: &Path) -> Result<(), ModelError> {
    let tj = torchless_tokenizer::hf::tokenizer_json_from_metadata(m)?;
    let text = serde_json::to_string(&tj).map_err(|e| ModelError::Config(e.to_string()))?;
    let path = out.join("tokenizer.json");
    std::fs::write(&path, text)
        .map_err(|e| ModelError::Config(format!("cannot write {}: {e}", path.display())))?;
    let cfg = torchless_tokenizer::hf::tokenizer_config_from_metadata(m)?;
    write_json(&out.join("tokenizer_config.json"), &cfg)?;
    if let Some(t) = &ck.tokenizer {
        let v = t.vocab();
        let eog: Vec<u32> = v.eog.iter().copied().collect();
        let mut g = json!({"eos_token_id": eog});
        if let Some(b) = v.bos {
            g["bos_token_id"] = json!(b);
        }
        write_json(&out.join("generation_config.json"), &g)?;
    }
    Ok(())
}

/// The `.bin` header's tokenizer object (tokenizer.json's vocabulary and merges).
pub fn native_tokenizer(m: &Metadata) -> Result<Json, ModelError> {
    let tj = torchless_tokenizer::hf::tokenizer_json_from_metadata(m)?;
    Ok(json!({"vocab": tj["model"]["vocab"], "merges": tj["model"]["merges"]}))
}
