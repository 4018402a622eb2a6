//! `torchless convert` on the real SmolLM2: to a bf16 HuggingFace directory (against
//! transformers on the same bf16 weights, and its tokenizer.json against the GGUF tokenizer),
//! to GGUF (the same tensors after dequantization), and to the `.bin` export (the same greedy
//! tokens in f32; perplexity in int8 within 2% of f32's).

mod common;

use std::path::{Path, PathBuf};

use torchless_gguf::{GgufFile, LoadMode};
use torchless_model::convert::{convert, ConvertOptions, OutType};
use torchless_model::perplexity::perplexity;
use torchless_model::{Checkpoint, Format, LoadOptions, Model, Precision, Session, SessionOptions};
use torchless_tokenizer::Tokenizer;

fn smollm2() -> Checkpoint {
    Checkpoint::open(&common::model("smollm2"), None, None, LoadMode::Mmap).unwrap()
}

fn write(ck: &Checkpoint, to: Format, dtype: OutType, out: &Path) {
    let mut calls = 0;
    let report = convert(
        ck,
        &ConvertOptions {
            to,
            dtype: Some(dtype),
        },
        out,
        &mut |done, total| {
            calls += 1;
            assert!(done <= total);
        },
    )
    .unwrap();
    assert_eq!(calls, report.tensors, "progress after every tensor");
    assert!(report.bytes > 0);
}

fn precise(path: &Path) -> Model {
    Model::load(
        path,
        &LoadOptions {
            precision: Precision::F32,
            ..LoadOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Greedy ids after `prompt` (end-of-generation does not stop).
fn greedy(model: &Model, prompt: &[u32], n: usize) -> (Vec<u32>, Vec<f32>) {
    let mut s = Session::new(
        model,
        SessionOptions {
            n_ctx: 256,
            ..SessionOptions::default()
        },
    );
    let first = s.eval(prompt).unwrap().to_vec();
    let mut out = Vec::new();
    let mut next = torchless_kernels::ops::argmax(&first) as u32;
    for _ in 0..n {
        out.push(next);
        let row = s.eval(&[next]).unwrap();
        next = torchless_kernels::ops::argmax(row) as u32;
    }
    (out, first)
}

#[test]
fn smollm2_as_bf16_directory_matches_transformers() {
    let dir = common::temp_dir("convert-hf").join("smollm2-bf16");
    write(&smollm2(), Format::Safetensors, OutType::BF16, &dir);
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert!(dir.join(f).is_file(), "{f} written");
    }
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::data("hf-smollm2/reference.json")).unwrap(),
    )
    .unwrap();
    let model = precise(&dir);
    let prompt = common::ids(&reference["prompt_ids"]);
    let (ids, last) = greedy(&model, &prompt, 32);
    assert_eq!(ids, common::ids(&reference["greedy_new_ids"]));
    let hf = common::read_f32("hf-smollm2/last_logits.f32.bin");
    let max = last
        .iter()
        .zip(&hf)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    eprintln!("bf16 directory vs transformers: max |d| {max}");
    assert!(max < 0.05, "last-position logits differ by {max}");
    // The directory's own tokenizer (tokenizer.json through the tokenizers crate) gives the
    // GGUF tokenizer's ids on every golden string.
    let hf_tok = model.tokenizer().expect("the directory has a tokenizer");
    let gguf = GgufFile::open(common::model("smollm2"), LoadMode::Mmap).unwrap();
    let gguf_tok = Tokenizer::from_metadata(gguf.metadata()).unwrap();
    let mut cases = 0;
    for case in common::read_jsonl("smollm2-q4_1/tokenize.jsonl")
        .into_iter()
        .chain(common::read_jsonl(
            "tokenizers/smollm2-135m-instruct/encodings.jsonl",
        ))
    {
        let text = case["text"].as_str().unwrap();
        for (bos, special) in [(false, false), (true, true), (false, true)] {
            assert_eq!(
                hf_tok.encode(text, bos, special).unwrap(),
                gguf_tok.encode(text, bos, special).unwrap(),
                "{text:?} bos={bos} special={special}"
            );
        }
        let ids = gguf_tok.encode(text, false, true).unwrap();
        assert_eq!(hf_tok.decode(&ids, true), gguf_tok.decode(&ids, true));
        cases += 1;
    }
    assert!(cases > 20);
    assert_eq!(hf_tok.is_eog(2), gguf_tok.is_eog(2));
    assert_eq!(
        hf_tok.chat_template_source(),
        gguf_tok.chat_template_source()
    );
    // --quantize q8_0 on the directory runs what a Q8_0 GGUF made from it runs (the same
    // reference quantizer; the GGUF's q/k rows permuted for its rotary layout).
    let q8_dir = Model::load(
        &dir,
        &LoadOptions {
            quantize: Some(torchless_kernels::GgmlType::Q8_0),
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let q8_path = dir.with_extension("q8_0.gguf");
    let ck = Checkpoint::open(&dir, None, None, LoadMode::Mmap).unwrap();
    write(&ck, Format::Gguf, OutType::Q8_0, &q8_path);
    let q8_gguf = Model::load(&q8_path, &LoadOptions::default()).unwrap();
    let (a, _) = greedy(&q8_dir, &prompt, 16);
    let (b, lb) = greedy(&q8_gguf, &prompt, 16);
    assert_eq!(a, b);
    assert_eq!(&a[..8], &common::ids(&reference["greedy_new_ids"])[..8]);
    // In one layout the two are the same bytes: a bf16 GGUF quantized while loading gives the
    // Q8_0 file's logits bit for bit.
    let bf16_path = dir.with_extension("bf16.gguf");
    write(&ck, Format::Gguf, OutType::BF16, &bf16_path);
    let q8_load = Model::load(
        &bf16_path,
        &LoadOptions {
            quantize: Some(torchless_kernels::GgmlType::Q8_0),
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let (c, lc) = greedy(&q8_load, &prompt, 16);
    assert_eq!(c, b);
    assert_eq!(lc, lb, "quantized while loading vs the Q8_0 file");
}

#[test]
fn smollm2_as_gguf_keeps_every_tensor() {
    let src = smollm2();
    let out = common::temp_dir("convert-gguf");
    let path = out.join("smollm2-f32.gguf");
    write(&src, Format::Gguf, OutType::F32, &path);
    let a = GgufFile::open(common::model("smollm2"), LoadMode::Mmap).unwrap();
    let b = GgufFile::open(&path, LoadMode::Mmap).unwrap();
    let names = |f: &GgufFile| {
        let mut n: Vec<String> = f.tensors().iter().map(|t| t.name.clone()).collect();
        n.sort();
        n
    };
    assert_eq!(names(&a), names(&b));
    for name in names(&a) {
        let (x, y) = (a.tensor(&name).unwrap(), b.tensor(&name).unwrap());
        assert_eq!(x.dims(), y.dims(), "{name}");
        assert_eq!(y.ty(), torchless_kernels::GgmlType::F32, "{name}");
        // Un-permuted to HuggingFace's rows and permuted back: the same values, bit for bit.
        assert_eq!(x.to_f32_vec(), y.to_f32_vec(), "{name}");
    }
    for key in [
        "llama.block_count",
        "llama.rope.freq_base",
        "tokenizer.ggml.pre",
        "tokenizer.chat_template",
    ] {
        assert_eq!(a.metadata().get(key), b.metadata().get(key), "{key}");
    }
    // Quantized output: Q8_0 matrices, f32 norms.
    let q8 = out.join("smollm2-q8_0.gguf");
    write(&src, Format::Gguf, OutType::Q8_0, &q8);
    let f = GgufFile::open(&q8, LoadMode::Mmap).unwrap();
    let ty = |n: &str| f.tensor(n).unwrap().ty();
    assert_eq!(ty("blk.0.attn_q.weight"), torchless_kernels::GgmlType::Q8_0);
    assert_eq!(
        ty("blk.0.attn_norm.weight"),
        torchless_kernels::GgmlType::F32
    );
    if let Some(script) = python_gguf() {
        let out = std::process::Command::new("python3")
            .arg(script)
            .arg(&q8)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "gguf package: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("tensors 272 architecture llama"));
        let mut seen = 0;
        for line in lines {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let name = v["name"].as_str().unwrap();
            let t = f.tensor(name).unwrap();
            assert_eq!(
                v["type"].as_str().unwrap(),
                t.ty().name().to_uppercase(),
                "{name}"
            );
            let sum: f64 = t.to_f32_vec().unwrap().iter().map(|&x| x as f64).sum();
            let theirs = v["sum"].as_f64().unwrap();
            assert!(
                (sum - theirs).abs() <= 1e-6 * (1.0 + sum.abs()),
                "{name}: gguf package sums {theirs}, torchless {sum}"
            );
            seen += 1;
        }
        assert_eq!(seen, 272);
    }
}

/// The gguf-package check script, when `TORCHLESS_PYTHON_GGUF=1` says the package is
/// installed (CI installs it; see .ci/run).
fn python_gguf() -> Option<PathBuf> {
    std::env::var_os("TORCHLESS_PYTHON_GGUF")?;
    Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/read_gguf.py"))
}

#[test]
fn smollm2_as_bin_generates_the_same_tokens_and_int8_keeps_perplexity() {
    let src = smollm2();
    let out = common::temp_dir("convert-bin");
    let f32_path = out.join("smollm2-f32.bin");
    let int8_path = out.join("smollm2-int8.bin");
    write(&src, Format::Bin, OutType::F32, &f32_path);
    write(&src, Format::Bin, OutType::Int8, &int8_path);
    let gguf = precise(&common::model("smollm2"));
    let bin = precise(&f32_path);
    assert!(bin.tokenizer().is_some(), "the .bin carries the tokenizer");
    let tok = gguf.require_tokenizer().unwrap();
    let prompt = tok
        .encode("The capital of France is", false, false)
        .unwrap();
    assert_eq!(
        bin.require_tokenizer()
            .unwrap()
            .encode("The capital of France is", false, false)
            .unwrap(),
        prompt
    );
    assert_eq!(greedy(&gguf, &prompt, 24).0, greedy(&bin, &prompt, 24).0);
    // Perplexity on the whole GPL-2 text, chunks of 512 (the default arithmetic).
    let text = std::fs::read_to_string(common::data("smollm2-q4_1/ppl_text_GPL-2.txt")).unwrap();
    let tokens = tok.encode(&text, true, false).unwrap();
    let ppl = |path: &Path| {
        let m = Model::load(path, &LoadOptions::default()).unwrap();
        perplexity(&m, &tokens, 512, 512, |_, _, _| {}).unwrap().ppl
    };
    let (p32, p8) = (ppl(&f32_path), ppl(&int8_path));
    eprintln!("perplexity: f32 {p32:.4}, int8 {p8:.4}");
    assert!(
        (p8 - p32).abs() / p32 < 0.02,
        "int8 perplexity {p8} vs f32 {p32}"
    );
}
