//! A HuggingFace `config.json` read into [`Settings`], in both schemas transformers writes:
//! version 4 (`rope_theta`, `rope_scaling`, `torch_dtype`, Gemma 3's `rope_local_base_freq`)
//! and version 5 (`rope_parameters`, per layer type where layers differ; `dtype`; infinities
//! as `{"__float__": "Infinity"}`).

use std::path::Path;

use serde_json::{Map, Value};
use torchless_kernels::ops::RopeStyle;

use crate::arch::Arch;
use crate::config::{ModelConfig, Settings};
use crate::error::ModelError;
use crate::parts::RopeScaling;

/// config.json, with typed lookups that name the field when it is wrong.
struct Json<'a> {
    map: &'a Map<String, Value>,
    path: &'a str,
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        // transformers 5 writes non-finite floats as {"__float__": "Infinity"}.
        Value::Object(o) => match o.get("__float__")?.as_str()? {
            "Infinity" | "inf" => Some(f64::INFINITY),
            "-Infinity" | "-inf" => Some(f64::NEG_INFINITY),
            _ => Some(f64::NAN),
        },
        _ => None,
    }
}

impl Json<'_> {
    fn bad(&self, key: &str, what: &str) -> ModelError {
        ModelError::Config(format!("{}: field \"{key}\" {what}", self.path))
    }

    /// A field that may be absent or null.
    fn present(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn f64_opt(&self, key: &str) -> Result<Option<f64>, ModelError> {
        self.present(key)
            .map(|v| number(v).ok_or_else(|| self.bad(key, "is not a number")))
            .transpose()
    }

    fn usize_opt(&self, key: &str) -> Result<Option<usize>, ModelError> {
        self.present(key)
            .map(|v| {
                v.as_u64()
                    .filter(|&n| n > 0 && n <= 1 << 24)
                    .map(|n| n as usize)
                    .ok_or_else(|| self.bad(key, "is not a positive count"))
            })
            .transpose()
    }

    fn usize(&self, key: &str) -> Result<usize, ModelError> {
        self.usize_opt(key)?
            .ok_or_else(|| self.bad(key, "is missing"))
    }

    fn str_opt(&self, key: &str) -> Option<&str> {
        self.present(key).and_then(Value::as_str)
    }

    fn bool_opt(&self, key: &str) -> Option<bool> {
        self.present(key).and_then(Value::as_bool)
    }
}

/// The family a config.json describes: `model_type`, or failing that `architectures[0]`.
pub fn arch_of(config: &Value) -> Result<(Arch, String), ModelError> {
    let model_type = config
        .get("model_type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if let Some(a) = Arch::from_name(&model_type) {
        return Ok((a, model_type));
    }
    let class = config
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(Value::as_str)
        .unwrap_or("");
    // "Qwen2ForCausalLM" → "qwen2".
    let stem = class.split("For").next().unwrap_or("").to_ascii_lowercase();
    Arch::from_name(&stem)
        .map(|a| (a, model_type.clone()))
        .ok_or_else(|| ModelError::UnsupportedArch {
            name: if model_type.is_empty() {
                class.to_string()
            } else {
                model_type
            },
            supported: Arch::supported(),
        })
}

/// Reads `dir/config.json`.
pub fn read(dir: &Path) -> Result<Value, ModelError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| ModelError::Config(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| ModelError::Config(format!("{}: not valid JSON: {e}", path.display())))
}

/// One rotary embedding's base, scaling and partial factor from a rope-parameters object
/// (transformers 5) or from the top level (transformers 4: `rope_theta`, `rope_scaling`).
fn rope_of(
    j: &Json<'_>,
    params: Option<&Map<String, Value>>,
    n_ctx_train: usize,
) -> Result<(f32, RopeScaling, Option<f64>), ModelError> {
    let top = j;
    let p = params.map(|map| Json { map, path: j.path });
    let scaling_map = match &p {
        Some(p) => Some(p.map),
        None => top.present("rope_scaling").and_then(Value::as_object),
    };
    let base = match &p {
        Some(p) => p.f64_opt("rope_theta")?,
        None => None,
    }
    .or(top.f64_opt("rope_theta")?)
    .unwrap_or(10_000.0) as f32;
    let partial = match &p {
        Some(p) => p.f64_opt("partial_rotary_factor")?,
        None => None,
    }
    .or(top.f64_opt("partial_rotary_factor")?);
    let Some(sc) = scaling_map else {
        return Ok((base, RopeScaling::None, partial));
    };
    let s = Json {
        map: sc,
        path: j.path,
    };
    let kind = s
        .str_opt("rope_type")
        .or(s.str_opt("type"))
        .unwrap_or("default");
    let f = |k: &str, d: f64| -> Result<f32, ModelError> { Ok(s.f64_opt(k)?.unwrap_or(d) as f32) };
    let factor = f("factor", 1.0)?;
    let original = s
        .usize_opt("original_max_position_embeddings")?
        .or(top.usize_opt("original_max_position_embeddings")?)
        .unwrap_or(n_ctx_train);
    let list = |k: &str| -> Result<Vec<f32>, ModelError> {
        s.present(k)
            .and_then(Value::as_array)
            .ok_or_else(|| s.bad(k, "is missing or not a list"))?
            .iter()
            .map(|v| {
                number(v)
                    .map(|x| x as f32)
                    .ok_or_else(|| s.bad(k, "holds a non-number"))
            })
            .collect()
    };
    let scaling = match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor },
        "llama3" => RopeScaling::Llama3 {
            factor,
            low_freq_factor: f("low_freq_factor", 1.0)?,
            high_freq_factor: f("high_freq_factor", 4.0)?,
            original_ctx: original,
        },
        "yarn" => RopeScaling::Yarn {
            factor,
            original_ctx: original,
            beta_fast: f("beta_fast", 32.0)?,
            beta_slow: f("beta_slow", 1.0)?,
            attn_factor: f("attention_factor", 1.0)?,
        },
        "longrope" => {
            // transformers: sqrt(1 + ln(s) / ln(original)), s = max positions / original.
            let s_ratio = n_ctx_train as f64 / original as f64;
            let default = if s_ratio <= 1.0 {
                1.0
            } else {
                (1.0 + s_ratio.ln() / (original as f64).ln()).sqrt()
            };
            RopeScaling::LongRope {
                short: list("short_factor")?,
                long: list("long_factor")?,
                original_ctx: original,
                attn_factor: f("attention_factor", default)?,
            }
        }
        other => {
            return Err(s.bad(
                "rope_type",
                &format!("is '{other}', which torchless does not support yet"),
            ))
        }
    };
    Ok((base, scaling, partial))
}

/// The model configuration of a HuggingFace config.json (`config`, read from `path`), with
/// `vocab` rows in the embedding table; `arch` overrides the family.
pub fn config_from_json(
    config: &Value,
    path: &str,
    arch: Option<Arch>,
    vocab: usize,
) -> Result<ModelConfig, ModelError> {
    let (detected, model_type) = arch_of(config)?;
    let arch = arch.unwrap_or(detected);
    // Multimodal Gemma 3 keeps the language model's settings under "text_config".
    let root = config
        .as_object()
        .ok_or_else(|| ModelError::Config(format!("{path}: not a JSON object")))?;
    let map = root
        .get("text_config")
        .and_then(Value::as_object)
        .unwrap_or(root);
    let j = Json { map, path };
    let n_embd = j.usize("hidden_size")?;
    let n_head = j.usize("num_attention_heads")?;
    let n_head_kv = j.usize_opt("num_key_value_heads")?.unwrap_or(n_head);
    let head_dim = j.usize_opt("head_dim")?.unwrap_or(n_embd / n_head);
    let n_layers = j.usize("num_hidden_layers")?;
    let n_ctx_train = j.usize_opt("max_position_embeddings")?.unwrap_or(2048);
    if let Some(v) = j.usize_opt("vocab_size")? {
        if v != vocab {
            tracing::warn!(
                "{path}: vocab_size {v} differs from the embedding table's {vocab} rows"
            );
        }
    }
    let layer_types: Option<Vec<String>> =
        j.present("layer_types").and_then(Value::as_array).map(|a| {
            a.iter()
                .map(|v| v.as_str().unwrap_or("").to_string())
                .collect()
        });
    if let Some(t) = layer_types
        .iter()
        .flatten()
        .find(|t| !matches!(t.as_str(), "full_attention" | "sliding_attention"))
    {
        return Err(j.bad(
            "layer_types",
            &format!("holds '{t}', a layer torchless does not run yet"),
        ));
    }
    let sliding_layers = layer_types
        .as_ref()
        .map(|t| t.iter().map(|t| t == "sliding_attention").collect());
    // Sliding windows: Mistral's "sliding_window" (null when off); Qwen2 only with
    // "use_sliding_window"; Gemma 2/3 per layer type.
    let window = match arch {
        Arch::Qwen2 | Arch::Qwen3 if j.bool_opt("use_sliding_window") != Some(true) => None,
        _ if arch.info().sliding == crate::arch::SlidingLayers::None && layer_types.is_none() => {
            None
        }
        _ => j.usize_opt("sliding_window")?,
    };
    // Rotary: transformers 5 may give one rope_parameters per layer type.
    let params = j.present("rope_parameters").and_then(Value::as_object);
    let per_type = params.is_some_and(|p| p.contains_key("full_attention"));
    let global_params = match params {
        Some(p) if per_type => p.get("full_attention").and_then(Value::as_object),
        other => other,
    };
    let (rope_base, rope_scaling, partial) = rope_of(&j, global_params, n_ctx_train)?;
    let local_rope = if per_type {
        let local = params
            .and_then(|p| p.get("sliding_attention"))
            .and_then(Value::as_object);
        let (b, sc, _) = rope_of(&j, local, n_ctx_train)?;
        Some((b, sc))
    } else {
        // transformers 4's Gemma 3: the local layers take no scaling.
        j.f64_opt("rope_local_base_freq")?
            .map(|b| (b as f32, RopeScaling::None))
    };
    let rope_dims = match partial {
        Some(p) if p > 0.0 && p <= 1.0 => ((head_dim as f64 * p) as usize) & !1,
        Some(_) => return Err(j.bad("partial_rotary_factor", "is outside (0, 1]")),
        None => head_dim,
    };
    let act = j
        .str_opt("hidden_activation")
        .or(j.str_opt("hidden_act"))
        .unwrap_or("silu");
    let want = arch.info().act;
    let act_ok = match want {
        crate::parts::Activation::Silu => matches!(act, "silu" | "swish"),
        crate::parts::Activation::GeluTanh => {
            matches!(act, "gelu_pytorch_tanh" | "gelu_tanh" | "gelu_new" | "gelu")
        }
    };
    if !act_ok {
        return Err(j.bad(
            "hidden_act",
            &format!("is '{act}', which the {} layers do not use", arch.name()),
        ));
    }
    let query_scale = j
        .f64_opt("query_pre_attn_scalar")?
        .map(|q| (1.0 / q.sqrt()) as f32);
    let softcap =
        |k: &str| -> Result<Option<f32>, ModelError> { Ok(j.f64_opt(k)?.map(|v| v as f32)) };
    let settings = Settings {
        name: j.str_opt("_name_or_path").map(str::to_string),
        n_layers,
        n_embd,
        n_ff: j.usize("intermediate_size")?,
        n_head,
        n_head_kv,
        head_dim,
        vocab,
        n_ctx_train,
        norm_eps: j
            .f64_opt("rms_norm_eps")?
            .or(j.f64_opt("layer_norm_eps")?)
            .unwrap_or(1e-6) as f32,
        norm: arch.info().norm,
        // transformers rotates halves (NeoX) in every family.
        rope_style: RopeStyle::Neox,
        rope_dims,
        rope_base,
        rope_scaling,
        local_rope,
        window,
        sliding_layers,
        attn_softcap: softcap("attn_logit_softcapping")?,
        final_softcap: softcap("final_logit_softcapping")?,
        query_scale,
    };
    settings.assemble(arch, &model_type)
}
