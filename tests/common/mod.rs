//! Shared helpers of the end-to-end tests: data paths and the real models (fetched into the
//! user cache on first use, as `torchless` itself does).
#![allow(dead_code)]

use std::path::PathBuf;

pub fn data(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(rel)
}

/// Path of a known model, fetched if needed.
pub fn model(name: &str) -> PathBuf {
    let m = torchless_hub::find(name).unwrap_or_else(|| panic!("unknown model {name}"));
    torchless_hub::ensure(m).unwrap_or_else(|e| panic!("cannot fetch {name}: {e}"))
}

pub fn read_jsonl(rel: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(data(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

pub fn read_f32(rel: &str) -> Vec<f32> {
    let b = std::fs::read(data(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Options of a tiny LLaMA-architecture GGUF written by the tests themselves.
pub struct Tiny {
    pub arch: &'static str,
    /// Type of the attention query matrix (the others are F32).
    pub wq_type: torchless_kernels::GgmlType,
    pub with_tokenizer: bool,
}

impl Default for Tiny {
    fn default() -> Self {
        Tiny {
            arch: "llama",
            wq_type: torchless_kernels::GgmlType::F32,
            with_tokenizer: false,
        }
    }
}

/// Writes a 2-layer model (d 32, 2 heads / 1 KV head, ff 64, vocab 64) with seeded random
/// f32 weights and returns its path.
pub fn write_tiny(dir: &std::path::Path, name: &str, t: Tiny) -> PathBuf {
    use torchless_gguf::{Array, GgufWriter, Value};
    let (d, ff, vocab, layers, heads, kv) = (32u64, 64u64, 64u64, 2u32, 2u32, 1u32);
    let mut state = 0x1234_5678_9abc_def1u64;
    let mut rnd = |n: u64| -> Vec<f32> {
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.5
            })
            .collect()
    };
    let a = t.arch;
    let mut w = GgufWriter::new();
    w.meta("general.architecture", Value::String(a.into()))
        .meta(format!("{a}.block_count"), Value::U32(layers))
        .meta(format!("{a}.embedding_length"), Value::U32(d as u32))
        .meta(format!("{a}.feed_forward_length"), Value::U32(ff as u32))
        .meta(format!("{a}.attention.head_count"), Value::U32(heads))
        .meta(format!("{a}.attention.head_count_kv"), Value::U32(kv))
        .meta(format!("{a}.context_length"), Value::U32(256))
        .meta(
            format!("{a}.attention.layer_norm_rms_epsilon"),
            Value::F32(1e-5),
        );
    if t.with_tokenizer {
        let mut tokens: Vec<String> = vec!["<s>".into(), "</s>".into()];
        tokens.extend((0..62).map(|i| {
            char::from_u32(0x61 + (i % 26))
                .unwrap()
                .to_string()
                .repeat(1 + i as usize / 26)
        }));
        let types: Vec<i32> = (0..64).map(|i| if i < 2 { 3 } else { 1 }).collect();
        w.meta("tokenizer.ggml.model", Value::String("llama".into()))
            .meta(
                "tokenizer.ggml.tokens",
                Value::Array(Array::String(tokens.into())),
            )
            .meta("tokenizer.ggml.token_type", Value::Array(Array::I32(types)))
            .meta(
                "tokenizer.ggml.scores",
                Value::Array(Array::F32((0..64).map(|i| -(i as f32)).collect())),
            )
            .meta("tokenizer.ggml.bos_token_id", Value::U32(0))
            .meta("tokenizer.ggml.eos_token_id", Value::U32(1));
    }
    w.tensor_f32("token_embd.weight", &[d, vocab], &rnd(d * vocab));
    w.tensor_f32("output_norm.weight", &[d], &vec![1.0; d as usize]);
    for l in 0..layers {
        let n = |s: &str| format!("blk.{l}.{s}");
        w.tensor_f32(n("attn_norm.weight"), &[d], &vec![1.0; d as usize]);
        let wq = rnd(d * d);
        match t.wq_type {
            torchless_kernels::GgmlType::F32 => {
                w.tensor_f32(n("attn_q.weight"), &[d, d], &wq);
            }
            other => {
                let bytes = other.row_bytes((d * d) as usize).unwrap_or(0);
                w.tensor(n("attn_q.weight"), other, &[d, d], vec![0x11; bytes]);
            }
        }
        w.tensor_f32(n("attn_k.weight"), &[d, d / 2], &rnd(d * d / 2));
        w.tensor_f32(n("attn_v.weight"), &[d, d / 2], &rnd(d * d / 2));
        w.tensor_f32(n("attn_output.weight"), &[d, d], &rnd(d * d));
        w.tensor_f32(n("ffn_norm.weight"), &[d], &vec![1.0; d as usize]);
        w.tensor_f32(n("ffn_gate.weight"), &[d, ff], &rnd(d * ff));
        w.tensor_f32(n("ffn_up.weight"), &[d, ff], &rnd(d * ff));
        w.tensor_f32(n("ffn_down.weight"), &[ff, d], &rnd(ff * d));
    }
    let path = dir.join(name);
    w.write(&path).unwrap();
    path
}

/// A fresh temporary directory for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("torchless-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The file types `derived_smollm2` can make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recipe {
    Q4_0,
    F16,
    Q4KM,
}

impl Recipe {
    fn name(self) -> &'static str {
        match self {
            Recipe::Q4_0 => "Q4_0",
            Recipe::F16 => "F16",
            Recipe::Q4KM => "Q4_K_M",
        }
    }

    /// sha256 of every tensor's data, in name order, of `llama-quantize`'s output.
    fn digest(self) -> &'static str {
        match self {
            Recipe::Q4_0 => "00f34beb9a5693b3655a0dd3d4bdc2b19144533b019e67539365bc84168d3308",
            Recipe::F16 => "401ef28c75bc475bd83c9880ae9ab61a59d87cbadecf330ec64de68639ea1d8f",
            Recipe::Q4KM => "9117fc2329ef85ebaa413bdc45beb5b7d55949d34ad84441bfd75ef27582d0df",
        }
    }

    /// The type `llama-quantize` gives tensor `name` (of a 30-layer SmolLM2 whose rows are 576
    /// long, too short for the K-quants except in `ffn_down`); `None`: copied as it is.
    fn type_for(
        self,
        name: &str,
        ty: torchless_kernels::GgmlType,
    ) -> Option<torchless_kernels::GgmlType> {
        use torchless_kernels::GgmlType as T;
        if ty == T::F32 {
            return None;
        }
        let layer: Option<usize> = name
            .strip_prefix("blk.")
            .and_then(|r| r.split('.').next())
            .and_then(|n| n.parse().ok());
        // llama-quantize's `use_more_bits`: the first and last eighth of the layers and every
        // third one between.
        let more_bits =
            layer.is_some_and(|i| !(30 / 8..7 * 30 / 8).contains(&i) || (i - 30 / 8) % 3 == 2);
        match self {
            Recipe::F16 => Some(T::F16),
            // The tied embedding table keeps its Q8_0 (the type the rule picks for it).
            _ if name == "token_embd.weight" => None,
            Recipe::Q4_0 => Some(T::Q4_0),
            // Q4_K and Q6_K fall back to Q5_0 and Q8_0 where a row is not a whole number of
            // super-blocks.
            Recipe::Q4KM if name.ends_with("ffn_down.weight") => {
                Some(if more_bits { T::Q6_K } else { T::Q4_K })
            }
            Recipe::Q4KM if name.ends_with("attn_v.weight") => {
                Some(if more_bits { T::Q8_0 } else { T::Q5_0 })
            }
            Recipe::Q4KM => Some(T::Q5_0),
        }
    }
}

/// SmolLM2-135M-Instruct requantized from its Q4_1 file the way llama.cpp's `llama-quantize`
/// does it for `recipe` (Q4_0, F16, Q4_K_M): every tensor of a block type dequantized to f32
/// and quantized again with the reference quantizers (`quant::weights`) into the type the
/// tool's rule picks, F32 tensors and tensors already of the picked type copied. Written once
/// next to the fetched model. The tensor bytes are checked against those of `llama-quantize`'s
/// own output (sha256 of every tensor's data, in name order), so the file is the one the
/// reference data were made from.
pub fn derived_smollm2(recipe: Recipe) -> PathBuf {
    use sha2::{Digest, Sha256};
    use torchless_gguf::{GgufFile, GgufWriter, LoadMode};
    let src = model("smollm2");
    let out = src.with_file_name(format!(
        "SmolLM2-135M-Instruct.{}.torchless.gguf",
        recipe.name()
    ));
    if !out.exists() {
        let f = GgufFile::open(&src, LoadMode::Mmap).expect("open SmolLM2");
        let mut w = GgufWriter::new();
        for (k, v) in f.metadata().iter() {
            w.meta(k, v.clone());
        }
        for t in f.tensors() {
            let bytes = f.tensor_bytes(&t.name).expect("tensor bytes");
            let Some(target) = recipe.type_for(&t.name, t.ty).filter(|&ty| ty != t.ty) else {
                w.tensor(&t.name, t.ty, &t.dims, bytes.to_vec());
                continue;
            };
            let n = t.n_elements() as usize;
            let mut x = vec![0.0f32; n];
            assert!(torchless_kernels::quant::dequantize(t.ty, bytes, &mut x));
            let mut q = vec![0u8; target.row_bytes(n).expect("whole blocks")];
            assert!(torchless_kernels::quant::weights::quantize_weights(
                target, &x, &mut q
            ));
            w.tensor(&t.name, target, &t.dims, q);
        }
        let tmp = out.with_extension(format!("tmp{}", std::process::id()));
        w.write(&tmp).expect("write the requantized model");
        std::fs::rename(&tmp, &out).expect("rename");
    }
    let f = GgufFile::open(&out, LoadMode::Mmap).expect("open the requantized model");
    let mut names: Vec<&str> = f.tensors().iter().map(|t| t.name.as_str()).collect();
    names.sort_unstable();
    let mut h = Sha256::new();
    for n in names {
        h.update(f.tensor_bytes(n).unwrap());
    }
    let got: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        got,
        recipe.digest(),
        "{}: not the tensors llama-quantize writes",
        out.display()
    );
    out
}
