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
    let model_type = match config.get("model_type") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(ModelError::Config(format!(
                "config.json: field \"model_type\" is {other}, not a name"
            )))
        }
    };
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
        None => match top.present("rope_scaling") {
            None => None,
            Some(Value::Object(m)) => Some(m),
            Some(_) => return Err(top.bad("rope_scaling", "is not an object")),
        },
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
            // transformers' attention_factor replaces its default 0.1 ln(factor) + 1, which
            // the kernels apply themselves (as ggml does): divide it back out.
            attn_factor: match s.f64_opt("attention_factor")? {
                Some(a) => (a / (1.0 + 0.1 * (factor as f64).ln())) as f32,
                None => 1.0,
            },
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
    let (arch, model_type) = match arch {
        // A forced family needs no name in the file.
        Some(a) => (
            a,
            arch_of(config)
                .map(|(_, t)| t)
                .unwrap_or_else(|_| a.name().to_string()),
        ),
        None => arch_of(config)?,
    };
    let model_type = if model_type.is_empty() {
        arch.name().to_string()
    } else {
        model_type
    };
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
    // Without a list, transformers 4's Gemma 3 gives the period of its global layers.
    let pattern = match j.usize_opt("sliding_window_pattern")? {
        Some(n) => Some(n),
        None => j.usize_opt("_sliding_window_pattern")?,
    };
    let sliding_layers = match (&layer_types, pattern) {
        (Some(t), _) => Some(t.iter().map(|t| t == "sliding_attention").collect()),
        (None, Some(n)) if arch == Arch::Gemma3 => {
            Some((0..n_layers).map(|i| (i + 1) % n != 0).collect())
        }
        _ => None,
    };
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
    let params = match j.present("rope_parameters") {
        None => None,
        Some(Value::Object(p)) => Some(p),
        Some(_) => return Err(j.bad("rope_parameters", "is not an object")),
    };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parts::Rope;

    fn tiny(name: &str) -> Value {
        let path = format!(
            "{}/../../tests/data/tiny/{name}/config.json",
            env!("CARGO_MANIFEST_DIR")
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn config(v: &Value) -> Result<ModelConfig, ModelError> {
        config_from_json(v, "config.json", None, 256)
    }

    /// The same checkpoint described in transformers 4's keys gives the same plan.
    #[test]
    fn both_schemas_give_the_same_plan() {
        for name in ["llama", "mistral", "qwen3", "phi3", "gemma2", "gemma3"] {
            let v5 = tiny(name);
            let mut v4 = v5.clone();
            let o = v4.as_object_mut().unwrap();
            let params = o.remove("rope_parameters").unwrap();
            o.remove("dtype");
            o.insert("torch_dtype".into(), "float32".into());
            o.remove("layer_types");
            o.remove("_sliding_window_pattern");
            match params.get("full_attention") {
                Some(full) => {
                    // Gemma 3: the global base on top, the local one under its own key.
                    o.insert("rope_theta".into(), full["rope_theta"].clone());
                    let local = params["sliding_attention"]["rope_theta"].clone();
                    o.insert("rope_local_base_freq".into(), local);
                    o.insert("sliding_window_pattern".into(), 4.into());
                }
                None => {
                    o.insert("rope_theta".into(), params["rope_theta"].clone());
                    if let Some(p) = params.get("partial_rotary_factor") {
                        o.insert("partial_rotary_factor".into(), p.clone());
                    }
                }
            }
            let (a, mut b) = (config(&v5).unwrap(), config(&v4).unwrap());
            // What each file said differs (a layer list, or a pattern); what it means may not.
            b.settings = a.settings.clone();
            assert_eq!(a, b, "{name}");
        }
        // What the plans say, for the families whose parts differ.
        let g3 = config(&tiny("gemma3")).unwrap();
        let windows: Vec<_> = g3
            .plan
            .layers
            .iter()
            .map(|l| l.attention().window)
            .collect();
        assert_eq!(windows, [Some(8), Some(8), Some(8), None]);
        let ropes: Vec<_> = g3.plan.layers.iter().map(|l| l.attention().rope).collect();
        assert_eq!(ropes, [Some(1), Some(1), Some(1), Some(0)]);
        assert_eq!((g3.plan.ropes[0].base, g3.plan.ropes[1].base), (1e6, 1e4));
        assert_eq!(g3.plan.embd_scale, Some(8.0));
        let g2 = config(&tiny("gemma2")).unwrap();
        let a = g2.plan.layers[1].attention();
        // Gemma scales the queries (by query_pre_attn_scalar^-½), not the scores.
        let scaled = (a.softcap, a.window, a.q_scale, a.scale);
        assert_eq!(scaled, (Some(10.0), None, Some(32f32.powf(-0.5)), 1.0));
        assert_eq!(g2.plan.layers[0].attention().window, Some(8));
        assert_eq!(g2.plan.final_softcap, Some(5.0));
        assert!(g2.plan.layers[0].post_mixer_norm && g2.plan.layers[0].post_ffn_norm);
        let llama = config(&tiny("llama")).unwrap();
        assert!(llama.plan.layers.iter().all(|l| !l.attention().is_masked()));
    }

    #[test]
    fn rope_scaling_is_read_from_either_schema() {
        let mut v = tiny("llama");
        let o = v.as_object_mut().unwrap();
        o.remove("rope_parameters");
        o.insert("rope_theta".into(), 500000.0.into());
        o.insert(
            "rope_scaling".into(),
            serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
        );
        let c = config(&v).unwrap();
        let want = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_ctx: 8192,
        };
        assert_eq!(
            (c.plan.ropes[0].base, &c.plan.ropes[0].scaling),
            (5e5, &want)
        );
        // transformers 5 keeps the same fields inside rope_parameters.
        let mut v5 = tiny("llama");
        v5["rope_parameters"] = serde_json::json!({"rope_type": "yarn", "rope_theta": 1e4,
            "factor": 4.0, "original_max_position_embeddings": 64, "beta_fast": 32, "beta_slow": 1});
        let c = config(&v5).unwrap();
        assert!(matches!(
            c.plan.ropes[0].scaling,
            RopeScaling::Yarn {
                factor: 4.0,
                original_ctx: 64,
                ..
            }
        ));
        // An explicit attention_factor replaces transformers' default 0.1 ln(factor) + 1,
        // which the kernels apply: the default given explicitly leaves a factor of 1.
        v5["rope_parameters"]["attention_factor"] = (1.0 + 0.1 * 4f64.ln()).into();
        match config(&v5).unwrap().plan.ropes[0].scaling {
            RopeScaling::Yarn { attn_factor, .. } => assert!((attn_factor - 1.0).abs() < 1e-6),
            ref other => panic!("{other:?}"),
        }
        v5["rope_parameters"] = serde_json::json!({"rope_type": "dynamic", "factor": 2.0});
        let e = config(&v5).unwrap_err().to_string();
        assert!(e.contains("rope_type") && e.contains("dynamic"), "{e}");
    }

    /// Llama 3's divisors as transformers computes its scaled inverse frequencies, in f64.
    #[test]
    fn llama3_divisors_follow_transformers() {
        let rope = Rope {
            style: RopeStyle::Neox,
            dims: 128,
            base: 500000.0,
            scaling: RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_ctx: 8192,
            },
        };
        let f = rope.freqs(8192).factors.unwrap();
        for (i, &got) in f.iter().enumerate() {
            let inv = 1.0 / 500000f64.powf(2.0 * i as f64 / 128.0);
            let wave = 2.0 * std::f64::consts::PI / inv;
            let (lo, hi) = (8192.0 / 1.0, 8192.0 / 4.0);
            let scaled = if wave < hi {
                inv
            } else if wave > lo {
                inv / 8.0
            } else {
                let s = (8192.0 / wave - 1.0) / (4.0 - 1.0);
                (1.0 - s) * inv / 8.0 + s * inv
            };
            let want = inv / scaled;
            assert!(
                (got as f64 - want).abs() < 1e-4 * want,
                "pair {i}: {got} vs {want}"
            );
        }
        assert_eq!(f[0], 1.0);
        assert_eq!(f[63], 8.0);
    }

    #[test]
    fn bad_configs_name_the_field() {
        let mut v = tiny("llama");
        v.as_object_mut().unwrap().remove("hidden_size");
        let e = config(&v).unwrap_err().to_string();
        assert!(e.contains("hidden_size") && e.contains("missing"), "{e}");
        let mut v = tiny("llama");
        v["num_key_value_heads"] = 3.into();
        assert!(config(&v)
            .unwrap_err()
            .to_string()
            .contains("key/value heads"));
        let mut v = tiny("llama");
        v["num_attention_heads"] = 0.into();
        assert!(config(&v)
            .unwrap_err()
            .to_string()
            .contains("num_attention_heads"));
        let mut v = tiny("llama");
        v.as_object_mut().unwrap().remove("head_dim");
        v["hidden_size"] = 2.into();
        let e = config(&v).unwrap_err().to_string();
        assert!(e.contains("head size 0"), "{e}");
        let mut v = tiny("gemma2");
        v["layer_types"] = serde_json::json!([
            "sliding_attention",
            "linear_attention",
            "sliding_attention",
            "full_attention"
        ]);
        assert!(config(&v)
            .unwrap_err()
            .to_string()
            .contains("linear_attention"));
        let mut v = tiny("gemma2");
        v["attn_logit_softcapping"] = serde_json::json!({"__float__": "Infinity"});
        assert!(config(&v).unwrap_err().to_string().contains("soft-cap"));
        let mut v = tiny("llama");
        v["model_type"] = "gpt_bigcode".into();
        v["architectures"] = serde_json::json!(["GPTBigCodeForCausalLM"]);
        assert!(matches!(
            config(&v),
            Err(ModelError::UnsupportedArch { .. })
        ));
    }
}
