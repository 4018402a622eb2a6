//! Tokenization against the references: llama.cpp's ids for SmolLM2 (tests/data/smollm2-q4_1/
//! tokenize.jsonl, with add_bos and special-token parsing on and off, and its detokenization),
//! and HuggingFace's ids for SmolLM2, Qwen2.5-Coder and Gemma 3 (tests/data/tokenizers/).

mod common;

use torchless_gguf::{GgufFile, LoadMode};
use torchless_tokenizer::{TextStream, Tokenizer};

fn tokenizer(model: &str) -> Tokenizer {
    let f = GgufFile::open(common::model(model), LoadMode::Mmap).unwrap();
    Tokenizer::from_metadata(f.metadata()).unwrap()
}

#[test]
fn smollm2_matches_llama_cpp_on_every_line() {
    let tok = tokenizer("smollm2");
    let mut failures = Vec::new();
    for case in common::read_jsonl("smollm2-q4_1/tokenize.jsonl") {
        let text = case["text"].as_str().unwrap();
        let add_bos = case["add_bos"].as_bool().unwrap();
        let special = case["parse_special"].as_bool().unwrap();
        let want = common::ids(&case["ids"]);
        let got = tok.encode(text, add_bos, special).unwrap();
        if got != want {
            failures.push(format!(
                "{text:?} bos={add_bos} special={special}: got {got:?}, want {want:?}"
            ));
        }
        // Detokenization (special tokens rendered) round-trips where llama.cpp's does.
        let detok = tok.decode(&want, true);
        assert_eq!(
            detok,
            case["detok"].as_str().unwrap(),
            "detokenizing {text:?}"
        );
        // Streaming the same ids gives the same text, never half a character.
        let mut stream = TextStream::new();
        let mut streamed = String::new();
        for &id in &want {
            streamed.push_str(&stream.push(tok.token_bytes(id, true)));
        }
        streamed.push_str(&stream.finish());
        assert_eq!(streamed, detok);
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn check_hf_encodings(model: &str, dir: &str) {
    let tok = tokenizer(model);
    let mut failures = Vec::new();
    for case in common::read_jsonl(&format!("tokenizers/{dir}/encodings.jsonl")) {
        let text = case["text"].as_str().unwrap();
        let want = common::ids(&case["ids"]);
        // HuggingFace splits out added (special) tokens even without add_special_tokens.
        let got = tok.encode(text, false, true).unwrap();
        if got != want {
            failures.push(format!("{text:?}: got {got:?}, want {want:?}"));
        }
        assert_eq!(
            tok.decode(&want, true),
            case["decoded"].as_str().unwrap(),
            "decoding {text:?}"
        );
    }
    assert!(
        failures.is_empty(),
        "{model}: {} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn smollm2_matches_huggingface() {
    check_hf_encodings("smollm2", "smollm2-135m-instruct");
}

#[test]
fn qwen2_matches_huggingface() {
    check_hf_encodings("qwen2.5-coder-0.5b", "qwen2.5-coder-0.5b-instruct");
}

#[test]
fn gemma3_matches_huggingface() {
    check_hf_encodings("gemma-3-270m", "gemma-3-270m");
}

#[test]
fn special_ids_and_bos_come_from_the_metadata() {
    let s = tokenizer("smollm2");
    assert_eq!(s.encode("<|im_start|>", false, true).unwrap(), [1]);
    assert!(
        s.is_eog(2) && s.is_eog(0),
        "<|im_end|> and <|endoftext|> end generation"
    );
    assert!(!s.vocab().add_bos);
    let g = tokenizer("gemma-3-270m");
    assert!(g.vocab().add_bos);
    assert_eq!(
        g.encode("Hello world", true, true).unwrap(),
        [2, 9259, 1902]
    );
    let q = tokenizer("qwen2.5-coder-0.5b");
    assert_eq!(q.encode("Hello world", true, true).unwrap(), [9707, 1879]);
    assert!(q.is_eog(151645) && q.is_eog(151643));
    // Chat templates render as HuggingFace renders them.
    let t = q.chat_template().unwrap().expect("qwen ships a template");
    let msgs = [
        torchless_tokenizer::Message::new("system", "You are helpful."),
        torchless_tokenizer::Message::new("user", "hi"),
    ];
    assert_eq!(
        t.render(&msgs, true).unwrap(),
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    );
}

/// The pre-tokenizers checked against llama.cpp's splits (tests/data/pre-tokenizers/).
const PRES: &[&str] = &[
    "gpt-2",
    "smollm",
    "qwen2",
    "llama3",
    "default",
    "deepseek-llm",
    "deepseek-coder",
    "deepseek-v3",
    "falcon",
    "command-r",
    "tekken",
];

/// SmolLM2's vocabulary and merges under another `tokenizer.ggml.pre` (a vocabulary-only
/// GGUF: the metadata, no tensors), so that only the pre-tokenizer's splits differ.
fn vocab_with_pre(pre: &str) -> torchless_gguf::GgufWriter {
    let f = GgufFile::open(common::model("smollm2"), LoadMode::Mmap).unwrap();
    let mut w = torchless_gguf::GgufWriter::new();
    for (k, v) in f.metadata().iter() {
        if k == "tokenizer.ggml.pre" {
            continue;
        }
        w.meta(k, v.clone());
    }
    w.meta(
        "tokenizer.ggml.pre",
        torchless_gguf::Value::String(pre.into()),
    );
    w
}

/// Writes the vocabulary-only files that `bench/pre_tokenizer_reference.sh` tokenizes with
/// llama.cpp: `TORCHLESS_PRE_VOCAB_DIR=DIR cargo test --release --test tokenizer_golden
/// write_pre_tokenizer_vocabs -- --ignored`.
#[test]
#[ignore]
fn write_pre_tokenizer_vocabs() {
    let dir = std::path::PathBuf::from(std::env::var_os("TORCHLESS_PRE_VOCAB_DIR").unwrap());
    for pre in PRES {
        vocab_with_pre(pre)
            .write(dir.join(format!("{pre}.gguf")))
            .unwrap();
    }
}

/// Every named pre-tokenizer splits as llama.cpp does: SmolLM2's vocabulary under each name
/// gives llama.cpp's ids on texts of many scripts, digits, contractions and whitespace runs.
#[test]
fn pre_tokenizers_split_as_llama_cpp() {
    let mut failures = Vec::new();
    let mut checked = 0;
    let mut tokenizers = std::collections::HashMap::new();
    for case in common::read_jsonl("pre-tokenizers/reference.jsonl") {
        let pre = case["pre"].as_str().unwrap().to_string();
        let text = case["text"].as_str().unwrap();
        let want = common::ids(&case["ids"]);
        let tok = tokenizers.entry(pre.clone()).or_insert_with(|| {
            let bytes = vocab_with_pre(&pre).to_bytes();
            let storage = std::sync::Arc::new(torchless_kernels::Storage::from_bytes(&bytes));
            let f = GgufFile::from_storage(storage).unwrap();
            Tokenizer::from_metadata(f.metadata()).unwrap()
        });
        let got = tok.encode(text, false, false).unwrap();
        if got != want {
            failures.push(format!("{pre} {text:?}: got {got:?}, want {want:?}"));
        }
        checked += 1;
    }
    assert!(checked >= PRES.len() * 20, "{checked} cases");
    assert!(
        failures.is_empty(),
        "{} of {checked} differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// GGUF vocabularies written as tokenizer.json (what `convert --to safetensors` writes) and run
/// by the `tokenizers` crate give the reference ids: Gemma 3's SentencePiece-style vocabulary
/// (merges ranked by its scores) and SmolLM2's byte-level one.
#[test]
fn tokenizer_json_from_gguf_encodes_as_the_references() {
    for (model, dir) in [
        ("gemma-3-270m", "gemma-3-270m"),
        ("smollm2", "smollm2-135m-instruct"),
    ] {
        let f = GgufFile::open(common::model(model), LoadMode::Mmap).unwrap();
        let out = common::temp_dir(&format!("tokenizer-json-{model}"));
        let json = torchless_tokenizer::hf::tokenizer_json_from_metadata(f.metadata()).unwrap();
        std::fs::write(out.join("tokenizer.json"), json.to_string()).unwrap();
        let config = torchless_tokenizer::hf::tokenizer_config_from_metadata(f.metadata()).unwrap();
        std::fs::write(out.join("tokenizer_config.json"), config.to_string()).unwrap();
        let tok = Tokenizer::from_hf_dir(&out).unwrap().unwrap();
        let gguf = Tokenizer::from_metadata(f.metadata()).unwrap();
        assert_eq!(tok.vocab().add_bos, gguf.vocab().add_bos, "{model}");
        assert_eq!(tok.vocab().bos, gguf.vocab().bos, "{model}");
        for case in common::read_jsonl(&format!("tokenizers/{dir}/encodings.jsonl")) {
            let text = case["text"].as_str().unwrap();
            let want = common::ids(&case["ids"]);
            assert_eq!(
                tok.encode(text, false, true).unwrap(),
                want,
                "{model} {text:?}"
            );
            assert_eq!(
                tok.encode(text, true, true).unwrap(),
                gguf.encode(text, true, true).unwrap(),
                "{model} {text:?} with BOS"
            );
            assert_eq!(
                tok.decode(&want, true),
                case["decoded"].as_str().unwrap(),
                "{model} decoding {text:?}"
            );
        }
    }
}
