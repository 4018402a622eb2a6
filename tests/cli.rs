//! The command line: every error case gives one clear sentence and a non-zero exit (no panic,
//! no backtrace), and the main commands produce what they promise.

mod common;

use std::process::{Command, Output};

use torchless_kernels::GgmlType;

fn torchless(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_torchless"))
        .args(args)
        .output()
        .expect("run torchless")
}

/// Asserts a failed run that printed exactly one line, starting with "error:", containing
/// every one of `needles`.
fn assert_clean_error(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr: {stderr}"
    );
    assert_eq!(out.status.code(), Some(1), "exit code; stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line on stderr, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
    for n in needles {
        assert!(stderr.contains(n), "stderr lacks {n:?}: {stderr}");
    }
}

#[test]
fn missing_file_is_a_clear_error() {
    let out = torchless(&["generate", "-m", "/no/such/model.gguf", "-p", "hi"]);
    assert_clean_error(&out, &["/no/such/model.gguf", "does not exist"]);
}

#[test]
fn a_file_that_is_not_a_model_is_a_clear_error() {
    let dir = common::temp_dir("notmodel");
    let p = dir.join("notes.txt");
    std::fs::write(&p, "hello, this is not a model").unwrap();
    let out = torchless(&["generate", "-m", p.to_str().unwrap(), "-p", "hi"]);
    assert_clean_error(&out, &["notes.txt", "not a GGUF file"]);
}

#[test]
fn a_truncated_model_is_a_clear_error() {
    let dir = common::temp_dir("truncated");
    let p = common::write_tiny(&dir, "tiny.gguf", common::Tiny::default());
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let out = torchless(&["generate", "-m", p.to_str().unwrap(), "--prompt-ids", "1,2"]);
    assert_clean_error(&out, &["tiny.gguf"]);
}

#[test]
fn an_unsupported_architecture_is_a_clear_error() {
    let dir = common::temp_dir("arch");
    let p = common::write_tiny(
        &dir,
        "gpt2.gguf",
        common::Tiny {
            arch: "gpt2",
            ..Default::default()
        },
    );
    let out = torchless(&["generate", "-m", p.to_str().unwrap(), "--prompt-ids", "1,2"]);
    assert_clean_error(&out, &["architecture 'gpt2' is not supported", "llama"]);
}

#[test]
fn an_unsupported_tensor_type_is_a_clear_error() {
    let dir = common::temp_dir("type");
    let p = common::write_tiny(
        &dir,
        "iq.gguf",
        common::Tiny {
            wq_type: GgmlType::IQ2_XXS,
            ..Default::default()
        },
    );
    let out = torchless(&["generate", "-m", p.to_str().unwrap(), "--prompt-ids", "1,2"]);
    assert_clean_error(&out, &["blk.0.attn_q.weight", "IQ2_XXS"]);
}

#[test]
fn a_prompt_longer_than_the_context_is_a_clear_error() {
    let dir = common::temp_dir("ctx");
    let p = common::write_tiny(&dir, "tiny.gguf", common::Tiny::default());
    let ids: Vec<String> = (0..40).map(|i| (i % 60).to_string()).collect();
    let out = torchless(&[
        "generate",
        "-m",
        p.to_str().unwrap(),
        "-c",
        "16",
        "--prompt-ids",
        &ids.join(","),
    ]);
    assert_clean_error(&out, &["40 positions", "16", "-c"]);
}

#[test]
fn token_ids_outside_the_vocabulary_are_a_clear_error() {
    let dir = common::temp_dir("badid");
    let p = common::write_tiny(&dir, "tiny.gguf", common::Tiny::default());
    let out = torchless(&[
        "generate",
        "-m",
        p.to_str().unwrap(),
        "--prompt-ids",
        "1,9999",
    ]);
    assert_clean_error(&out, &["9999", "vocabulary"]);
}

#[test]
fn a_model_without_tokenizer_needs_token_ids() {
    let dir = common::temp_dir("notok");
    let p = common::write_tiny(&dir, "tiny.gguf", common::Tiny::default());
    let out = torchless(&["generate", "-m", p.to_str().unwrap(), "-p", "hello"]);
    assert_clean_error(&out, &["no tokenizer"]);
}

#[test]
fn prompt_ids_json_and_logits_out_work_on_a_tiny_model() {
    let dir = common::temp_dir("json");
    let p = common::write_tiny(&dir, "tiny.gguf", common::Tiny::default());
    let logits = dir.join("logits.bin");
    let out = torchless(&[
        "generate",
        "-m",
        p.to_str().unwrap(),
        "--prompt-ids",
        "3,4,5",
        "-n",
        "4",
        "--temp",
        "0",
        "--json",
        "--logits-out",
        logits.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["prompt_ids"], serde_json::json!([3, 4, 5]));
    let gen = j["generated_ids"].as_array().unwrap();
    assert_eq!(gen.len(), 4);
    assert_eq!(j["stop_reason"], "max_tokens");
    assert!(j["timings"]["prompt_tokens_per_s"].as_f64().unwrap() > 0.0);
    // 3 prompt positions + 3 fed-back tokens, 64 logits each.
    let bytes = std::fs::read(&logits).unwrap();
    assert_eq!(bytes.len(), 6 * 64 * 4);
    // Greedy: every generated token is the argmax of the row before it.
    let rows: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    for (k, g) in gen.iter().enumerate() {
        let row = &rows[(2 + k) * 64..(3 + k) * 64];
        let best = (0..64)
            .max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)))
            .unwrap();
        assert_eq!(g.as_u64().unwrap() as usize, best, "step {k}");
    }
}

#[test]
fn generation_on_the_real_model_streams_text_and_reports_speed() {
    let m = common::model("smollm2");
    let m = m.to_str().unwrap();
    let out = torchless(&[
        "generate",
        "-m",
        m,
        "-p",
        "The capital of France is",
        "-n",
        "8",
        "--temp",
        "0",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(" Paris."));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tokens/s") && err.contains("prompt: 5 tokens"),
        "{err}"
    );
    // Same seed, same text; the chat template renders and generation stops at <|im_end|>.
    let run = |seed: &str| -> serde_json::Value {
        let out = torchless(&[
            "generate",
            "-m",
            m,
            "-p",
            "Name a color.",
            "--chat",
            "-n",
            "24",
            "--seed",
            seed,
            "--json",
        ]);
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let (a, b, c) = (run("7"), run("7"), run("8"));
    assert_eq!(a["generated_ids"], b["generated_ids"]);
    assert_eq!(a["text"], b["text"]);
    assert_ne!(
        a["generated_ids"], c["generated_ids"],
        "another seed, another sample"
    );
    assert_eq!(
        a["prompt_ids"][0], 1,
        "chat prompts start with <|im_start|>"
    );
}

#[test]
fn tokenize_and_info_describe_the_real_model() {
    let m = common::model("smollm2");
    let m = m.to_str().unwrap();
    let out = torchless(&["tokenize", "-m", m, "--special", "<|im_start|>Hello world"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1 19556 905");
    let out = torchless(&["tokenize", "-m", m, "--json", "Hello world"]);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["pieces"], serde_json::json!(["Hello", " world"]));
    let out = torchless(&["info", "-m", m, "--json"]);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["architecture"], "llama");
    assert_eq!(j["config"]["layers"], 30);
    assert_eq!(j["tokenizer"]["tokens"], 49152);
    assert_eq!(j["tokenizer"]["chat_template"], true);
    let q41 = j["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type"] == "Q4_1")
        .unwrap();
    assert_eq!(q41["count"], 210);
    assert!(j["kv_cache_bytes_at_context_f16"].as_u64().unwrap() == 8192 * 2 * 30 * 192 * 2);
}

#[test]
fn bench_reports_each_test_at_the_asked_depth() {
    let dir = common::temp_dir("bench");
    let p = common::write_tiny(&dir, "tiny.gguf", common::Tiny::default());
    let out = torchless(&[
        "bench",
        "-m",
        p.to_str().unwrap(),
        "-p",
        "8",
        "-n",
        "4",
        "-d",
        "16",
        "-r",
        "2",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let results = j["results"].as_array().unwrap();
    let names: Vec<&str> = results
        .iter()
        .map(|r| r["test"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["pp8 @ d16", "tg4 @ d16"]);
    for r in results {
        assert_eq!(r["samples"].as_array().unwrap().len(), 2);
        assert!(r["tokens_per_s"].as_f64().unwrap() > 0.0, "{r}");
    }
    assert!(j["peak_rss_bytes"].as_u64().unwrap() > 0);
}

#[test]
fn convert_and_info_work_on_every_format() {
    let dir = common::temp_dir("cli-convert");
    let hf = common::data("tiny/gemma2");
    let gguf = dir.join("gemma2.gguf");
    let bin = dir.join("gemma2.bin");
    for (to, out) in [("gguf", &gguf), ("bin", &bin)] {
        let run = torchless(&[
            "convert",
            "-m",
            hf.to_str().unwrap(),
            "--to",
            to,
            "--dtype",
            "f32",
            "-o",
            out.to_str().unwrap(),
        ]);
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
    }
    let back = dir.join("back");
    let run = torchless(&[
        "convert",
        "-m",
        gguf.to_str().unwrap(),
        "--to",
        "safetensors",
        "-o",
        back.to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    // Every form describes the same Gemma 2: window, soft-caps, per-family norm.
    for (path, format) in [
        (hf.clone(), "HuggingFace safetensors"),
        (gguf.clone(), "GGUF v3"),
        (bin.clone(), "torchless .bin"),
        (back.clone(), "HuggingFace safetensors"),
    ] {
        let out = torchless(&["info", "-m", path.to_str().unwrap(), "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let c = &j["config"];
        assert_eq!(j["format"], format, "{}", path.display());
        assert_eq!(c["layers"], 4, "{}", path.display());
        assert_eq!(c["sliding_window"], 8, "{}", path.display());
        assert_eq!(c["sliding_layers"], 2, "{}", path.display());
        assert_eq!(c["attn_softcap"], 10.0, "{}", path.display());
        assert_eq!(c["final_softcap"], 5.0, "{}", path.display());
    }
    // Overrides and their errors.
    let out = torchless(&["info", "-m", gguf.to_str().unwrap(), "--format", "bin"]);
    assert_clean_error(&out, &["gemma2.gguf"]);
    let out = torchless(&["info", "-m", hf.to_str().unwrap(), "--arch", "nonsense"]);
    assert_clean_error(&out, &["nonsense", "gemma3", "qwen2"]);
    let out = torchless(&[
        "convert",
        "-m",
        hf.to_str().unwrap(),
        "--to",
        "onnx",
        "-o",
        "x",
    ]);
    assert_clean_error(&out, &["--to onnx"]);
    let out = torchless(&[
        "convert",
        "-m",
        hf.to_str().unwrap(),
        "--to",
        "safetensors",
        "--dtype",
        "q4_0",
        "-o",
        dir.join("q").to_str().unwrap(),
    ]);
    assert_clean_error(&out, &["q4_0"]);
}

#[test]
fn sampler_flags_take_llama_cpp_forms_and_bad_ones_are_clear() {
    let m = common::model("smollm2");
    let m = m.to_str().unwrap();
    let gen = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            "-m",
            m,
            "-p",
            "The capital of France is",
            "-n",
            "8",
            "--temp",
            "0",
        ];
        args.extend_from_slice(extra);
        torchless(&args)
    };
    // " Paris" is token 7042 in SmolLM2: banned, another word comes first.
    let plain = gen(&[]);
    assert!(String::from_utf8_lossy(&plain.stdout).starts_with(" Paris."));
    let banned = gen(&[
        "--logit-bias",
        "7042-inf",
        "--repeat-penalty",
        "1.1",
        "--dry-multiplier",
        "0.8",
    ]);
    assert!(
        banned.status.success(),
        "{}",
        String::from_utf8_lossy(&banned.stderr)
    );
    assert!(!String::from_utf8_lossy(&banned.stdout).starts_with(" Paris"));
    assert_clean_error(&gen(&["--logit-bias", "7042"]), &["--logit-bias 7042"]);
    assert_clean_error(
        &gen(&["--logit-bias", "99999999+1"]),
        &["--logit-bias", "vocabulary"],
    );
    assert_clean_error(&gen(&["--typical", "2"]), &["--typical:", "[0, 1]"]);
}

/// Attention flags: a bad value, a tile that is not a power of two, an unknown cache type and a
/// quantized cache with flash attention off are one-line errors naming the flag; a quantized
/// cache generates.
#[test]
fn attention_flags_are_checked() {
    let m = common::model("smollm2");
    let m = m.to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["generate", "-m", m, "-p", "Hello", "-n", "4", "--temp", "0"];
        args.extend_from_slice(extra);
        torchless(&args)
    };
    assert_clean_error(&run(&["--flash-attn", "maybe"]), &["--flash-attn maybe"]);
    assert_clean_error(
        &run(&["--flash-tile-size", "24"]),
        &["--flash-tile-size 24"],
    );
    assert_clean_error(&run(&["--kv-cache-dtype", "q9"]), &["--kv-cache-dtype q9"]);
    assert_clean_error(
        &run(&["--kv-cache-dtype", "q8_0", "--flash-attn", "off"]),
        &["q8_0", "--flash-attn off"],
    );
    let out = run(&["--cache-type-k", "q8_0", "--cache-type-v", "q4_0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).trim().is_empty());
    let out = torchless(&["info", "-m", m, "--json"]);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kv = &j["kv_cache_bytes_at_context"];
    assert_eq!(kv["f16"].as_u64().unwrap(), 8192 * 2 * 30 * 192 * 2);
    assert_eq!(kv["q8_0"].as_u64().unwrap(), 8192 * 2 * 30 * 192 / 32 * 34);
    assert_eq!(kv["q4_0"].as_u64().unwrap(), 8192 * 2 * 30 * 192 / 32 * 18);
}
