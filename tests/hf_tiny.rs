//! HuggingFace checkpoints of every dense family (tiny random models, `tests/data/tiny/`),
//! loaded from config.json + safetensors and run in f32 against transformers' own logits:
//! every prompt position (one batch, and token by token through the cache) and 16 greedy
//! decode steps. Each family exercises its parts of the forward path: sliding windows
//! (mistral, gemma2, gemma3), q/k/v biases (qwen2), q/k norms (qwen3, gemma3), fused
//! projections (phi3), GELU-tanh, √d embeddings and (1+w) norms (gemma*), soft-caps and
//! sandwich norms (gemma2), per-layer-type rope bases (gemma3).

mod common;

use torchless_model::{LoadOptions, Model, ModelError, Precision, Session, SessionOptions};

/// transformers' own cached and uncached passes agree to ~1e-5 (see the data's README).
const TOLERANCE: f32 = 1e-4;
const VOCAB: usize = 256;

fn load(name: &str) -> Result<Model, ModelError> {
    Model::load(
        common::data(&format!("tiny/{name}")),
        &LoadOptions {
            precision: Precision::F32,
            threads: 2,
            ..LoadOptions::default()
        },
    )
}

fn reference(name: &str) -> serde_json::Value {
    let text =
        std::fs::read_to_string(common::data(&format!("tiny/{name}/reference.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn rows(name: &str, file: &str) -> Vec<Vec<f32>> {
    common::read_f32(&format!("tiny/{name}/{file}"))
        .chunks_exact(VOCAB)
        .map(<[f32]>::to_vec)
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn argmax(r: &[f32]) -> u32 {
    torchless_kernels::ops::argmax(r) as u32
}

fn session(model: &Model, n_batch: usize, block_size: usize) -> Session<'_> {
    Session::new(
        model,
        SessionOptions {
            n_ctx: 64,
            n_batch,
            block_size,
            ..SessionOptions::default()
        },
    )
}

fn check(name: &str) {
    let model = load(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    check_model(name, &model, TOLERANCE);
}

/// `model` (the tiny `name` checkpoint, however loaded) against transformers' logits.
fn check_model(name: &str, model: &Model, tolerance: f32) {
    let r = reference(name);
    let ids = common::ids(&r["input_ids"]);
    let want = rows(name, "logits.f32");
    assert_eq!(want.len(), ids.len());
    // The whole prompt in one batch, one token at a time, and in batches of 5 over blocks
    // of 8 positions (sliding-window layers then give back blocks during the prompt).
    for (n_batch, block_size) in [(ids.len(), 16), (1, 16), (5, 8)] {
        let mut s = session(model, n_batch, block_size);
        let mut got = Vec::new();
        s.eval_with(&ids, true, |_, row| got.push(row.to_vec()))
            .unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let d = max_diff(g, w);
            assert!(
                d < tolerance,
                "{name}, batch {n_batch}: position {i} differs by {d}"
            );
        }
        let argmaxes: Vec<u32> = got.iter().map(|g| argmax(g)).collect();
        assert_eq!(argmaxes, common::ids(&r["prompt_argmax"]), "{name}");
    }
    // Greedy decoding through the cache.
    let new = common::ids(&r["greedy_new_tokens"]);
    let decode = rows(name, "decode_logits.f32");
    let mut s = session(model, 32, 8);
    let mut last = s.eval(&ids).unwrap().to_vec();
    for (k, &tok) in new.iter().enumerate() {
        let d = max_diff(&last, &decode[k]);
        assert!(d < tolerance, "{name}: decode step {k} differs by {d}");
        assert_eq!(argmax(&last), tok, "{name}: decode step {k}");
        last = s.eval(&[tok]).unwrap().to_vec();
    }
}

/// The eight dense families written by `torchless convert` as GGUF (f32) and as `.bin`, read
/// back, and run against transformers' logits (within 1e-3: f32 arithmetic, with Gemma's norms
/// stored as 1 + w in GGUF) with the same greedy tokens.
#[test]
fn every_family_survives_conversion_to_gguf_and_bin() {
    use torchless_gguf::LoadMode;
    use torchless_model::convert::{convert, ConvertOptions, OutType};
    use torchless_model::{Checkpoint, Format};
    let out = common::temp_dir("hf_tiny_convert");
    for name in [
        "llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "gemma3",
    ] {
        let src = Checkpoint::open(
            &common::data(&format!("tiny/{name}")),
            None,
            None,
            LoadMode::Mmap,
        )
        .unwrap();
        let arch = src.config.arch;
        for (to, file) in [(Format::Gguf, "gguf"), (Format::Bin, "bin")] {
            let path = out.join(format!("{name}.{file}"));
            let opts = ConvertOptions {
                to,
                dtype: Some(OutType::F32),
            };
            convert(&src, &opts, &path, &mut |_, _| {}).unwrap();
            let model = Model::load(
                &path,
                &LoadOptions {
                    precision: Precision::F32,
                    threads: 2,
                    ..LoadOptions::default()
                },
            )
            .unwrap_or_else(|e| panic!("{name} as {file}: {e}"));
            assert_eq!(model.config().arch, arch, "{name} as {file}");
            // The same layers (GGUF's own rotary layout and 1 + w norms aside).
            let (got, want) = (&model.config().plan, &src.config.plan);
            assert_eq!(got.layers, want.layers, "{name} as {file}");
            assert_eq!(
                (got.embd_scale, got.final_softcap, got.norm_eps),
                (want.embd_scale, want.final_softcap, want.norm_eps),
                "{name} as {file}"
            );
            let bases = |p: &torchless_model::parts::Plan| {
                p.ropes
                    .iter()
                    .map(|r| (r.base, r.dims, r.scaling.clone()))
                    .collect::<Vec<_>>()
            };
            assert_eq!(bases(got), bases(want), "{name} as {file}");
            check_model(name, &model, 1e-3);
        }
    }
}

#[test]
fn llama_matches_transformers() {
    check("llama");
}

#[test]
fn mistral_sliding_window_matches_transformers() {
    check("mistral");
}

#[test]
fn qwen2_biases_match_transformers() {
    check("qwen2");
}

#[test]
fn qwen3_qk_norms_match_transformers() {
    check("qwen3");
}

#[test]
fn phi3_fused_projections_match_transformers() {
    check("phi3");
}

#[test]
fn gemma_matches_transformers() {
    check("gemma");
}

#[test]
fn gemma2_softcaps_and_sandwich_norms_match_transformers() {
    check("gemma2");
}

#[test]
fn gemma3_local_and_global_layers_match_transformers() {
    check("gemma3");
}

/// Families whose layers are not built yet are refused with a message naming them, not run
/// wrongly and not a panic.
#[test]
fn unbuilt_families_are_refused_by_name() {
    for name in [
        "mixtral",
        "qwen2_moe",
        "deepseek_v3",
        "mamba2",
        "granitemoehybrid",
    ] {
        match load(name) {
            Err(ModelError::UnsupportedArch { name: got, .. }) => {
                assert!(!got.is_empty(), "{name}")
            }
            Err(e) => panic!("{name}: expected an unsupported-architecture error, got {e}"),
            Ok(_) => panic!("{name}: loaded a family whose layers do not exist yet"),
        }
    }
}

/// Broken checkpoints give errors that say what is wrong, never a panic.
#[test]
fn broken_checkpoints_are_refused() {
    let src = common::data("tiny/llama");
    let dir = common::temp_dir("hf-broken");
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let weights = std::fs::read(src.join("model.safetensors")).unwrap();
    let opts = LoadOptions {
        precision: Precision::F32,
        threads: 1,
        ..LoadOptions::default()
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", weights[..weights.len() / 2].to_vec()),
        ("header only", weights[..64].to_vec()),
        ("empty", Vec::new()),
        ("huge header size", {
            let mut w = weights.clone();
            w[..8].copy_from_slice(&u64::MAX.to_le_bytes());
            w
        }),
        ("garbage header", {
            let mut w = weights.clone();
            w[8..40].fill(b'#');
            w
        }),
    ];
    for (what, bytes) in cases {
        std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
        let e = Model::load(&dir, &opts).err();
        let e = e.unwrap_or_else(|| panic!("{what}: loaded"));
        assert!(e.to_string().contains("model.safetensors"), "{what}: {e}");
    }
    // Weights that do not fit the configuration are named with both shapes.
    std::fs::write(dir.join("model.safetensors"), &weights).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    config["intermediate_size"] = 96.into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    match Model::load(&dir, &opts) {
        Err(ModelError::TensorShape { name, .. }) => assert!(name.contains("mlp"), "{name}"),
        Err(e) => panic!("expected a shape error, got {e}"),
        Ok(_) => panic!("loaded weights of the wrong shape"),
    }
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let e = Model::load(&dir, &opts).err().unwrap().to_string();
    assert!(e.contains("config.json"), "{e}");
}

/// The reference precision (llama.cpp's: f16 KV cache, its reduction orders) on the same
/// checkpoints: every family within 0.03 of transformers' f32 logits (the f16 cache's
/// rounding) and the same argmax at every prompt position.
#[test]
fn reference_precision_stays_near_transformers() {
    for name in [
        "llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "gemma3",
    ] {
        let model = Model::load(
            common::data(&format!("tiny/{name}")),
            &LoadOptions {
                threads: 2,
                ..LoadOptions::default()
            },
        )
        .unwrap();
        assert_eq!(model.precision(), Precision::Reference);
        let ids = common::ids(&reference(name)["input_ids"]);
        let want = rows(name, "logits.f32");
        let mut s = session(&model, ids.len(), 16);
        let mut got = Vec::new();
        s.eval_with(&ids, true, |_, row| got.push(row.to_vec()))
            .unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let d = max_diff(g, w);
            assert!(d < 0.03, "{name}: position {i} differs by {d}");
            assert_eq!(argmax(g), argmax(w), "{name}: position {i}");
        }
    }
}

/// Directories with missing shards, config.json values of the wrong types, and broken
/// tokenizer files give one-sentence errors that name the file (and the field), never a panic.
#[test]
fn hostile_configs_shards_and_tokenizers_are_refused() {
    let src = common::data("tiny/llama");
    let dir = common::temp_dir("hf-hostile");
    let opts = LoadOptions {
        precision: Precision::F32,
        threads: 1,
        ..LoadOptions::default()
    };
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let reset = || {
        std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
        std::fs::copy(src.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
        for f in [
            "model.safetensors.index.json",
            "tokenizer.json",
            "tokenizer_config.json",
        ] {
            let _ = std::fs::remove_file(dir.join(f));
        }
    };
    let refused = |what: &str, needle: &str| {
        let e = match Model::load(&dir, &opts) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{what}: loaded"),
        };
        assert!(e.contains(needle), "{what}: {e}");
        assert!(!e.contains('\n'), "{what}: not one sentence: {e}");
    };
    // Config values of the wrong types or out of range.
    for (field, value) in [
        ("num_hidden_layers", serde_json::json!("two")),
        ("num_hidden_layers", serde_json::json!(-1)),
        ("hidden_size", serde_json::json!(1e30)),
        ("num_attention_heads", serde_json::json!(0)),
        ("num_key_value_heads", serde_json::json!(3)),
        ("rms_norm_eps", serde_json::json!("small")),
        ("rope_parameters", serde_json::json!([1, 2])),
        ("max_position_embeddings", serde_json::json!(null)),
        ("model_type", serde_json::json!(7)),
    ] {
        reset();
        let mut c = config.clone();
        c[field] = value.clone();
        std::fs::write(dir.join("config.json"), c.to_string()).unwrap();
        let e = match Model::load(&dir, &opts) {
            Err(e) => e.to_string(),
            // A null context length falls back to a default; nothing else may load.
            Ok(_) if field == "max_position_embeddings" => continue,
            Ok(_) => panic!("{field} = {value}: loaded"),
        };
        assert!(!e.contains('\n'), "{field}: {e}");
        assert!(
            e.contains("config.json") || e.contains("architecture") || e.contains("heads"),
            "{field} = {value}: {e}"
        );
    }
    reset();
    std::fs::write(dir.join("config.json"), "{\"model_type\": \"llama\", ").unwrap();
    refused("truncated config.json", "config.json");
    // An index naming a shard that is not there.
    reset();
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        r#"{"weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors"}}"#,
    )
    .unwrap();
    refused("missing shard", "model-00001-of-00002.safetensors");
    reset();
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        r#"{"weight_map": {"model.embed_tokens.weight": "../../etc/passwd"}}"#,
    )
    .unwrap();
    refused("shard outside the directory", "index.json");
    reset();
    std::fs::write(dir.join("model.safetensors.index.json"), "[]").unwrap();
    refused("index without a weight map", "weight_map");
    // Broken tokenizer files.
    for (what, text) in [
        ("garbage", "not json"),
        ("no model", r#"{"added_tokens": []}"#),
        (
            "vocab of strings",
            r#"{"model": {"type": "BPE", "vocab": {"a": "b"}, "merges": []}}"#,
        ),
        (
            "huge id",
            r#"{"model": {"type": "BPE", "vocab": {"a": 4294967295}, "merges": []}}"#,
        ),
        (
            "unigram",
            r#"{"model": {"type": "Unigram", "vocab": [["a", 0.0]]}}"#,
        ),
        (
            "bad merge",
            r#"{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [[1, 2, 3]]}}"#,
        ),
    ] {
        reset();
        std::fs::write(dir.join("tokenizer.json"), text).unwrap();
        refused(what, "tokenizer.json");
    }
}

/// A config.json that names no architecture: the tensor names choose it (the last resort),
/// and `--arch` overrides any choice.
#[test]
fn architecture_from_tensor_names_and_arch_override() {
    use torchless_model::Arch;
    for (name, arch) in [
        ("llama", Arch::Llama),
        ("qwen2", Arch::Qwen2),
        ("qwen3", Arch::Qwen3),
        ("phi3", Arch::Phi3),
        ("gemma2", Arch::Gemma2),
        ("gemma3", Arch::Gemma3),
    ] {
        let src = common::data(&format!("tiny/{name}"));
        let dir = common::temp_dir(&format!("hf-nameless-{name}"));
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap())
                .unwrap();
        let o = config.as_object_mut().unwrap();
        o.remove("model_type");
        o.remove("architectures");
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        std::fs::copy(src.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
        let model = Model::load(
            &dir,
            &LoadOptions {
                precision: Precision::F32,
                threads: 2,
                ..LoadOptions::default()
            },
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(model.config().arch, arch, "{name}");
        check_model(name, &model, TOLERANCE);
    }
    // Gemma's tensors are LLaMA's names: only --arch tells them apart.
    let forced = Model::load(
        common::data("tiny/gemma"),
        &LoadOptions {
            arch: Some("gemma".into()),
            precision: Precision::F32,
            threads: 2,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    check_model("gemma", &forced, TOLERANCE);
}
