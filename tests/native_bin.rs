//! The original torchless engine's `.bin` format: a Mistral checkpoint written in it (f32 and
//! int8) loads through the same forward path as the HuggingFace directory it came from.

mod common;

use std::collections::BTreeMap;

use torchless_gguf::LoadMode;
use torchless_model::source::native::{self, NativeTensor, NativeType};
use torchless_model::source::safetensors::HfSource;
use torchless_model::{Arch, LoadOptions, Model, Precision, Session, SessionOptions};

fn opts() -> LoadOptions {
    LoadOptions {
        precision: Precision::F32,
        threads: 2,
        ..LoadOptions::default()
    }
}

/// Writes the tiny Mistral checkpoint as a `.bin`, projections in `proj`, the rest f32.
fn export(proj: NativeType, name: &str) -> std::path::PathBuf {
    let dir = common::data("tiny/mistral");
    let src = HfSource::open(&dir, LoadMode::Read, Arch::Mistral).unwrap();
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = src
        .tensors()
        .iter()
        .map(|(n, t)| {
            let shape: Vec<usize> = t.dims().iter().rev().copied().collect();
            (n.clone(), shape, t.to_f32_vec().unwrap())
        })
        .collect();
    let list: Vec<NativeTensor> = tensors
        .iter()
        .map(|(n, shape, v)| NativeTensor {
            name: n,
            shape,
            values: v,
            ty: if n.contains("_proj") {
                proj
            } else {
                NativeType::F32
            },
        })
        .collect();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let s = |k: &str| match &config[k] {
        serde_json::Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    let meta: BTreeMap<String, String> = [
        ("hidden_size", s("hidden_size")),
        ("intermediate_size", s("intermediate_size")),
        ("n_layers", s("num_hidden_layers")),
        ("n_heads", s("num_attention_heads")),
        ("n_kv_heads", s("num_key_value_heads")),
        ("vocab_size", s("vocab_size")),
        ("max_position_embeddings", s("max_position_embeddings")),
        ("sliding_window", s("sliding_window")),
        (
            "rope_theta",
            config["rope_parameters"]["rope_theta"].to_string(),
        ),
        ("norm_eps", s("rms_norm_eps")),
        ("act_type", s("hidden_act")),
        (
            "quant",
            if proj == NativeType::Int8 {
                "int8"
            } else {
                "f32"
            }
            .into(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let path = common::temp_dir(name).join("model.bin");
    native::write(&path, &meta, None, &list).unwrap();
    path
}

fn prompt_logits(model: &Model) -> Vec<Vec<f32>> {
    let r: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::data("tiny/mistral/reference.json")).unwrap(),
    )
    .unwrap();
    let ids = common::ids(&r["input_ids"]);
    let mut s = Session::new(
        model,
        SessionOptions {
            n_ctx: 64,
            ..SessionOptions::default()
        },
    );
    let mut rows = Vec::new();
    s.eval_with(&ids, true, |_, row| rows.push(row.to_vec()))
        .unwrap();
    rows
}

#[test]
fn f32_export_runs_exactly_as_its_checkpoint() {
    let path = export(NativeType::F32, "bin-f32");
    let bytes = std::fs::read(&path).unwrap();
    let h = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!((8 + h) % 64, 0, "the payload starts on a 64-byte boundary");
    let bin = Model::load(&path, &opts()).unwrap();
    assert_eq!(bin.config().arch, Arch::Mistral);
    let hf = Model::load(common::data("tiny/mistral"), &opts()).unwrap();
    assert_eq!(bin.config().plan, hf.config().plan);
    let (a, b) = (prompt_logits(&bin), prompt_logits(&hf));
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        let same = x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits());
        assert!(same, "position {i}");
    }
}

#[test]
fn int8_export_dequantizes_as_the_format_says() {
    let path = export(NativeType::Int8, "bin-int8");
    let bin = Model::load(&path, &opts()).unwrap();
    let hf = Model::load(common::data("tiny/mistral"), &opts()).unwrap();
    // Every projection: q / s per group of 64, s = 127 / max |x| (computed here on its own).
    let (bl, hl) = (&bin.weights().layers, &hf.weights().layers);
    let mut checked = 0;
    for (b, h) in bl.iter().zip(hl) {
        for (tb, th) in b.matrices().into_iter().zip(h.matrices()) {
            let (got, x) = (tb.to_f32_vec().unwrap(), th.to_f32_vec().unwrap());
            for (g, xs) in got.chunks(64).zip(x.chunks(64)) {
                let s = 127.0 / xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                for (v, x) in g.iter().zip(xs) {
                    let want = (x * s).round() / s;
                    // Equal as numbers: an int8 zero has no sign.
                    assert_eq!(*v, want);
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 2 * 7);
    // 8-bit weights move the logits a little, not the predictions.
    let (a, b) = (prompt_logits(&bin), prompt_logits(&hf));
    let mut max = 0.0f32;
    let mut same = 0;
    for (x, y) in a.iter().zip(&b) {
        max = x
            .iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs())
            .fold(max, f32::max);
        same += (torchless_kernels::ops::argmax(x) == torchless_kernels::ops::argmax(y)) as usize;
    }
    eprintln!(
        "int8 vs f32: max |d| {max}, {same}/{} argmax equal",
        a.len()
    );
    assert!(max < 0.5, "max |d| {max}");
    assert!(same >= a.len() - 2, "{same} of {}", a.len());
}

#[test]
fn hostile_bin_files_are_refused() {
    let path = export(NativeType::Int8, "bin-hostile");
    let good = std::fs::read(&path).unwrap();
    let h = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&good[8..8 + h]).unwrap().to_string();
    let with_header = |text: &str| {
        let mut out = (text.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(&good[8 + h..]);
        out
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated payload", good[..good.len() - 100].to_vec()),
        (
            "offset past the end",
            with_header(&header.replacen("\"offset\":0", "\"offset\":99999999999", 1)),
        ),
        (
            "bad dtype",
            with_header(&header.replacen("\"dtype\":\"f32\"", "\"dtype\":\"q4\"", 1)),
        ),
        (
            "missing metadata",
            with_header(&header.replacen("\"hidden_size\"", "\"hidden\"", 1)),
        ),
        (
            "scale size",
            with_header(&header.replacen("\"scale_size\":", "\"scale_size\":1", 1)),
        ),
    ];
    let dir = common::temp_dir("bin-hostile-cases");
    for (what, bytes) in cases {
        let p = dir.join("m.bin");
        std::fs::write(&p, bytes).unwrap();
        match Model::load(&p, &opts()) {
            Ok(_) => panic!("{what}: loaded"),
            Err(e) => assert!(!e.to_string().is_empty(), "{what}"),
        }
    }
}
