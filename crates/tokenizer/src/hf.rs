//! The tokenizer files of a HuggingFace model directory (`tokenizer.json`,
//! `tokenizer_config.json`, `chat_template.jinja`, `generation_config.json`) read into the
//! vocabulary description GGUF files carry (`tokenizer.ggml.*` keys), so that a directory and a
//! GGUF file feed one [`Vocab`](crate::Vocab) and `torchless convert` can write those keys.
//!
//! Encoding a directory's text goes through the `tokenizers` crate with the directory's own
//! `tokenizer.json` (see [`Tokenizer::from_hf_dir`](crate::Tokenizer::from_hf_dir)); this module
//! only reads files and describes them. It knows nothing of weights.

use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use torchless_gguf::{Array, Metadata, StringArray, Value};

use crate::TokenizerError;

/// Added tokens as (id, special).
type AddedTokens = Vec<(u32, bool)>;

/// What a model directory says about its tokenizer.
pub struct HfTokenizerFiles {
    /// `tokenizer.json`, as text (the `tokenizers` crate parses it again).
    pub json_text: String,
    pub json: Json,
    pub path: PathBuf,
    config: Option<Json>,
    generation: Option<Json>,
    template_file: Option<String>,
}

fn read_json(path: &Path) -> Result<Option<(String, Json)>, TokenizerError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(TokenizerError::Invalid(format!(
                "cannot read {}: {e}",
                path.display()
            )))
        }
    };
    let json = serde_json::from_str(&text).map_err(|e| {
        TokenizerError::Invalid(format!("{} is not valid JSON: {e}", path.display()))
    })?;
    Ok(Some((text, json)))
}

impl HfTokenizerFiles {
    /// Reads the tokenizer files of `dir`; `None` when it has no `tokenizer.json`.
    pub fn read(dir: &Path) -> Result<Option<HfTokenizerFiles>, TokenizerError> {
        let path = dir.join("tokenizer.json");
        let Some((json_text, json)) = read_json(&path)? else {
            return Ok(None);
        };
        let config = read_json(&dir.join("tokenizer_config.json"))?.map(|(_, j)| j);
        let generation = read_json(&dir.join("generation_config.json"))?.map(|(_, j)| j);
        let template_file = match std::fs::read_to_string(dir.join("chat_template.jinja")) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(TokenizerError::Invalid(format!(
                    "cannot read {}: {e}",
                    dir.join("chat_template.jinja").display()
                )))
            }
        };
        Ok(Some(HfTokenizerFiles {
            json_text,
            json,
            path,
            config,
            generation,
            template_file,
        }))
    }

    fn bad(&self, what: impl std::fmt::Display) -> TokenizerError {
        TokenizerError::Invalid(format!("{}: {what}", self.path.display()))
    }

    /// Whether the model is SentencePiece-style (`▁` for spaces, byte-fallback tokens) rather
    /// than byte-level BPE.
    pub fn spm_style(&self) -> bool {
        let m = &self.json["model"];
        if m["byte_fallback"].as_bool() == Some(true) {
            return true;
        }
        let text = |v: &Json| v.to_string();
        text(&self.json["decoder"]).contains("Metaspace")
            || text(&self.json["pre_tokenizer"]).contains("Metaspace")
            || text(&self.json["decoder"]).contains("ByteFallback")
    }

    /// Whether encoding puts `▁` before the text (a Prepend normalizer or a Metaspace
    /// pre-tokenizer that prepends).
    fn adds_space_prefix(&self) -> bool {
        let n = self.json["normalizer"].to_string();
        if n.contains("\"Prepend\"") {
            return true;
        }
        let p = &self.json["pre_tokenizer"];
        let metaspace = |v: &Json| {
            v["type"] == "Metaspace"
                && (v["add_prefix_space"].as_bool() == Some(true)
                    || matches!(v["prepend_scheme"].as_str(), Some("always" | "first")))
        };
        metaspace(p)
            || p["pretokenizers"]
                .as_array()
                .is_some_and(|a| a.iter().any(metaspace))
    }

    /// The chat template: `tokenizer_config.json`'s `chat_template` (a string, or a list of
    /// named templates of which `default` or the first is taken), else `chat_template.jinja`.
    pub fn chat_template(&self) -> Option<String> {
        let t = self.config.as_ref().map(|c| &c["chat_template"]);
        match t {
            Some(Json::String(s)) => return Some(s.clone()),
            Some(Json::Array(list)) => {
                let named = list
                    .iter()
                    .find(|e| e["name"] == "default")
                    .or_else(|| list.first());
                if let Some(s) = named.and_then(|e| e["template"].as_str()) {
                    return Some(s.to_string());
                }
            }
            _ => {}
        }
        self.template_file.clone()
    }

    /// The text of a special token named in `tokenizer_config.json` (a string or an object with
    /// `content`).
    fn config_token(&self, key: &str) -> Option<String> {
        let v = &self.config.as_ref()?[key];
        v.as_str()
            .or_else(|| v["content"].as_str())
            .map(str::to_string)
    }

    /// Token ids `generation_config.json` names as `eos_token_id` (a number or a list).
    pub fn generation_eos(&self) -> Vec<u32> {
        let Some(g) = &self.generation else {
            return Vec::new();
        };
        let v = &g["eos_token_id"];
        let one = |v: &Json| v.as_u64().and_then(|x| u32::try_from(x).ok());
        match v {
            Json::Array(a) => a.iter().filter_map(one).collect(),
            v => one(v).into_iter().collect(),
        }
    }

    /// The token texts in id order (ids missing from the file become `[PAD{id}]`), and the
    /// added tokens as (id, special).
    fn tokens(&self) -> Result<(Vec<String>, AddedTokens), TokenizerError> {
        let vocab = self.json["model"]["vocab"]
            .as_object()
            .ok_or_else(|| self.bad("model.vocab is not an object of token → id"))?;
        let mut pairs: Vec<(u32, String)> = Vec::with_capacity(vocab.len());
        for (text, id) in vocab {
            let id = id
                .as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .ok_or_else(|| self.bad(format!("model.vocab[{text:?}] is not a token id")))?;
            pairs.push((id, text.clone()));
        }
        let mut added = Vec::new();
        if let Some(list) = self.json["added_tokens"].as_array() {
            for a in list {
                let (Some(id), Some(text)) = (
                    a["id"].as_u64().and_then(|x| u32::try_from(x).ok()),
                    a["content"].as_str(),
                ) else {
                    return Err(self.bad("an added_tokens entry lacks a numeric id or content"));
                };
                pairs.push((id, text.to_string()));
                added.push((id, a["special"].as_bool().unwrap_or(false)));
            }
        }
        let n = pairs.iter().map(|p| p.0 as usize + 1).max().unwrap_or(0);
        const MAX_VOCAB: usize = 1 << 24;
        if n == 0 || n > MAX_VOCAB {
            return Err(self.bad(format!(
                "the vocabulary has {n} ids (expected 1 … {MAX_VOCAB})"
            )));
        }
        let mut tokens: Vec<Option<String>> = vec![None; n];
        for (id, text) in pairs {
            tokens[id as usize] = Some(text);
        }
        let tokens = tokens
            .into_iter()
            .enumerate()
            .map(|(i, t)| t.unwrap_or_else(|| format!("[PAD{i}]")))
            .collect();
        Ok((tokens, added))
    }

    /// The merges as "a b" strings, in priority order (both file spellings: strings, or
    /// two-element lists).
    fn merges(&self) -> Result<Vec<String>, TokenizerError> {
        let Some(list) = self.json["model"]["merges"].as_array() else {
            return Ok(Vec::new());
        };
        list.iter()
            .map(|m| match m {
                Json::String(s) => Ok(s.clone()),
                Json::Array(p) if p.len() == 2 => match (p[0].as_str(), p[1].as_str()) {
                    (Some(a), Some(b)) => Ok(format!("{a} {b}")),
                    _ => Err(self.bad("a merge is not a pair of strings")),
                },
                _ => Err(self.bad("a merge is neither \"a b\" nor [a, b]")),
            })
            .collect()
    }

    /// The `tokenizer.ggml.*` keys that describe this tokenizer, as a GGUF converter writes
    /// them. `probe` tells which ids the tokenizer's post-processor puts before and after a
    /// text (BOS/EOS), as the `tokenizers` crate computes them.
    pub fn to_metadata(&self, probe: (&[u32], &[u32])) -> Result<Metadata, TokenizerError> {
        let kind = self.json["model"]["type"].as_str().unwrap_or("BPE");
        if kind != "BPE" {
            return Err(self.bad(format!(
                "tokenizer model '{kind}' is not supported (supported: BPE, byte-level or with byte fallback)"
            )));
        }
        let spm = self.spm_style();
        let (tokens, added) = self.tokens()?;
        let n = tokens.len();
        let unk = self.json["model"]["unk_token"].as_str();
        let mut types: Vec<i32> = tokens
            .iter()
            .map(|t| {
                if spm && is_byte_token(t) {
                    6
                } else if Some(t.as_str()) == unk {
                    2
                } else if t.starts_with("[PAD") && t.ends_with(']') {
                    5
                } else {
                    1
                }
            })
            .collect();
        for &(id, special) in &added {
            types[id as usize] = if special { 3 } else { 4 };
        }
        let merges = self.merges()?;
        let mut m = Metadata::new();
        m.insert(
            "tokenizer.ggml.model",
            Value::String(if spm { "llama" } else { "gpt2" }.into()),
        );
        if spm {
            // SentencePiece-style merging by score: the token a merge makes scores by the
            // merge's rank (earlier merges score higher); tokens no merge makes score lower
            // than every merge result.
            let mut scores = vec![f32::NAN; n];
            let index: std::collections::HashMap<&str, usize> = tokens
                .iter()
                .enumerate()
                .map(|(i, t)| (t.as_str(), i))
                .collect();
            for (rank, mg) in merges.iter().enumerate() {
                let joined: String = mg.split(' ').collect();
                if let Some(&i) = index.get(joined.as_str()) {
                    if scores[i].is_nan() {
                        scores[i] = -(rank as f32);
                    }
                }
            }
            let floor = -(merges.len() as f32) - 1.0;
            for s in scores.iter_mut().filter(|s| s.is_nan()) {
                *s = floor;
            }
            m.insert("tokenizer.ggml.scores", Value::Array(Array::F32(scores)));
        } else {
            let mut arr = StringArray::with_capacity(merges.len(), 0);
            for mg in &merges {
                arr.push(mg);
            }
            m.insert("tokenizer.ggml.merges", Value::Array(Array::String(arr)));
            if let Some(pre) = detect_pre(&self.json["pre_tokenizer"]) {
                m.insert("tokenizer.ggml.pre", Value::String(pre.into()));
            }
        }
        let mut arr = StringArray::with_capacity(n, 0);
        for t in &tokens {
            arr.push(t);
        }
        let find = |text: &str| tokens.iter().position(|t| t == text).map(|i| i as u32);
        let mut id_key = |key: &str, id: Option<u32>| {
            if let Some(id) = id {
                m.insert(key, Value::U32(id));
            }
        };
        let (before, after) = probe;
        let bos = match before {
            [b] => Some(*b),
            _ => self.config_token("bos_token").and_then(|t| find(&t)),
        };
        let eos = match after {
            [e] => Some(*e),
            _ => self.config_token("eos_token").and_then(|t| find(&t)),
        };
        id_key("tokenizer.ggml.bos_token_id", bos);
        id_key("tokenizer.ggml.eos_token_id", eos);
        id_key(
            "tokenizer.ggml.unknown_token_id",
            unk.and_then(find)
                .or_else(|| self.config_token("unk_token").and_then(|t| find(&t))),
        );
        id_key(
            "tokenizer.ggml.padding_token_id",
            self.config_token("pad_token").and_then(|t| find(&t)),
        );
        m.insert("tokenizer.ggml.tokens", Value::Array(Array::String(arr)));
        m.insert("tokenizer.ggml.token_type", Value::Array(Array::I32(types)));
        m.insert(
            "tokenizer.ggml.add_bos_token",
            Value::Bool(before.len() == 1),
        );
        m.insert(
            "tokenizer.ggml.add_eos_token",
            Value::Bool(after.len() == 1),
        );
        if spm {
            m.insert(
                "tokenizer.ggml.add_space_prefix",
                Value::Bool(self.adds_space_prefix()),
            );
        }
        if let Some(t) = self.chat_template() {
            m.insert("tokenizer.chat_template", Value::String(t));
        }
        Ok(m)
    }
}

fn is_byte_token(t: &str) -> bool {
    t.len() == 6
        && t.starts_with("<0x")
        && t.ends_with('>')
        && t[3..5].chars().all(|c| c.is_ascii_hexdigit())
}

/// llama.cpp's pre-tokenizer name for a `tokenizer.json` pre-tokenizer, for the splits this
/// crate knows (see [`crate::bpe`]); `None` when it is not one of them.
pub fn detect_pre(p: &Json) -> Option<&'static str> {
    let byte_level = |v: &Json| v["type"] == "ByteLevel";
    if byte_level(p) && p["use_regex"].as_bool() != Some(false) {
        // llama.cpp's spelling (it refuses "gpt2").
        return Some("gpt-2");
    }
    let steps = p["pretokenizers"].as_array()?;
    let regexes: Vec<&str> = steps
        .iter()
        .filter(|s| s["type"] == "Split" || s["type"] == "Digits")
        .map(|s| {
            if s["type"] == "Digits" {
                r"\p{N}"
            } else {
                s["pattern"]["Regex"].as_str().unwrap_or("")
            }
        })
        .collect();
    let last_regex = steps
        .last()
        .is_some_and(|s| byte_level(s) && s["use_regex"].as_bool() != Some(false));
    crate::bpe::pre_of_patterns(&regexes, last_regex)
}

impl HfTokenizerFiles {
    /// A tokenizer described by a `tokenizer.json` value made elsewhere (a GGUF vocabulary, a
    /// `.bin` export's vocabulary), with `tokenizer_config.json`-style `config`.
    pub fn from_json(json: Json, path: &Path, config: Option<Json>) -> HfTokenizerFiles {
        HfTokenizerFiles {
            json_text: json.to_string(),
            json,
            path: path.to_path_buf(),
            config,
            generation: None,
            template_file: None,
        }
    }
}

/// What [`tokenizer_json`] needs to know of a vocabulary.
pub struct JsonVocab<'a> {
    /// Token texts in id order.
    pub tokens: &'a [String],
    /// Ids of tokens cut out of text before the model sees it, and whether each is a control
    /// (special) token.
    pub added: &'a [(u32, bool)],
    /// Merges "a b" in priority order.
    pub merges: &'a [String],
    /// SentencePiece-style (`▁` for spaces, byte fallback) rather than byte-level.
    pub spm: bool,
    /// llama.cpp's pre-tokenizer name (byte-level only).
    pub pre: Option<&'a str>,
    pub bos: Option<u32>,
    pub add_bos: bool,
    pub add_space_prefix: bool,
    pub unk: Option<&'a str>,
}

/// A `tokenizer.json` (the HuggingFace `tokenizers` file format) for `v`.
pub fn tokenizer_json(v: &JsonVocab<'_>) -> Result<Json, TokenizerError> {
    use serde_json::json;
    let vocab: serde_json::Map<String, Json> = v
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let added: Vec<Json> = v
        .added
        .iter()
        .filter_map(|&(id, special)| {
            let text = v.tokens.get(id as usize)?;
            Some(
                json!({"id": id, "content": text, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": special}),
            )
        })
        .collect();
    let bos_text = v.bos.and_then(|b| v.tokens.get(b as usize));
    let post = match (v.add_bos, bos_text, v.bos) {
        (true, Some(text), Some(id)) => json!({"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": text, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": text, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": text, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {text.as_str(): {"id": text, "ids": [id], "tokens": [text]}}}),
        _ => Json::Null,
    };
    let (normalizer, pre_tokenizer, decoder) = if v.spm {
        let mut norms = Vec::new();
        if v.add_space_prefix {
            norms.push(json!({"type": "Prepend", "prepend": "\u{2581}"}));
        }
        norms.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}));
        let mut decs = vec![
            json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
            json!({"type": "ByteFallback"}),
            json!({"type": "Fuse"}),
        ];
        if v.add_space_prefix {
            decs.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
        }
        (
            json!({"type": "Sequence", "normalizers": norms}),
            Json::Null,
            json!({"type": "Sequence", "decoders": decs}),
        )
    } else {
        let pre = v.pre.unwrap_or("default");
        let split = crate::bpe::pre_split_public(pre)
            .ok_or_else(|| TokenizerError::UnknownPre(pre.to_string()))?;
        let mut steps: Vec<Json> = split
            .0
            .iter()
            .map(|p| json!({"type": "Split", "pattern": {"Regex": p}, "behavior": "Isolated", "invert": false}))
            .collect();
        steps.push(json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": split.1}));
        (
            Json::Null,
            json!({"type": "Sequence", "pretokenizers": steps}),
            json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}),
        )
    };
    let ignore_merges =
        !v.spm && crate::bpe::pre_split_public(v.pre.unwrap_or("default")).is_some_and(|s| s.2);
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post,
        "decoder": decoder,
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": v.unk,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": v.spm,
            "byte_fallback": v.spm,
            "ignore_merges": ignore_merges,
            "vocab": vocab,
            "merges": v.merges,
        }
    }))
}

/// Merges that reproduce SentencePiece's score-driven merging as BPE ranks: every split of a
/// token into two tokens of the vocabulary is a merge, ranked by the score of the token it
/// makes (higher first; equal scores by that token's id).
pub fn merges_from_scores(tokens: &[String], scores: &[f32], mergeable: &[bool]) -> Vec<String> {
    let index: std::collections::HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| mergeable[*i])
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut found: Vec<(f32, usize, usize, usize)> = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        if !mergeable[i] {
            continue;
        }
        for (k, _) in t.char_indices().skip(1) {
            let (a, b) = t.split_at(k);
            if let (Some(&ia), Some(&ib)) = (index.get(a), index.get(b)) {
                found.push((scores.get(i).copied().unwrap_or(0.0), i, ia, ib));
            }
        }
    }
    found.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
    found
        .into_iter()
        .map(|(_, _, a, b)| format!("{} {}", tokens[a], tokens[b]))
        .collect()
}

/// A `tokenizer.json` for the vocabulary that `tokenizer.ggml.*` keys describe.
pub fn tokenizer_json_from_metadata(m: &Metadata) -> Result<Json, TokenizerError> {
    let model = m.str("tokenizer.ggml.model")?;
    let vocab = crate::Vocab::from_metadata(m, model)?;
    let spm = match model {
        "gpt2" => false,
        "llama" => true,
        other => return Err(TokenizerError::UnknownModel(other.to_string())),
    };
    let tokens: Vec<String> = vocab.tokens.iter().map(str::to_string).collect();
    let added: Vec<(u32, bool)> = (0..tokens.len() as u32)
        .filter_map(|i| match vocab.kinds[i as usize] {
            crate::TokenKind::Control | crate::TokenKind::Unknown => Some((i, true)),
            crate::TokenKind::UserDefined => Some((i, false)),
            _ => None,
        })
        .collect();
    let merges: Vec<String> = if spm {
        let mergeable: Vec<bool> = vocab
            .kinds
            .iter()
            .map(|k| *k == crate::TokenKind::Normal)
            .collect();
        merges_from_scores(&tokens, &vocab.scores, &mergeable)
    } else {
        m.strings("tokenizer.ggml.merges")?
            .iter()
            .map(str::to_string)
            .collect()
    };
    let pre = m.opt("tokenizer.ggml.pre", Metadata::str)?;
    let unk = vocab.unk.map(|u| tokens[u as usize].clone());
    tokenizer_json(&JsonVocab {
        tokens: &tokens,
        added: &added,
        merges: &merges,
        spm,
        pre,
        bos: vocab.bos,
        add_bos: vocab.add_bos,
        add_space_prefix: vocab.add_space_prefix,
        unk: unk.as_deref(),
    })
}

/// `tokenizer_config.json` for the vocabulary `m` describes: special tokens by text, the
/// chat template, whether BOS/EOS are added.
pub fn tokenizer_config_from_metadata(m: &Metadata) -> Result<Json, TokenizerError> {
    let model = m.str("tokenizer.ggml.model")?;
    let vocab = crate::Vocab::from_metadata(m, model)?;
    let text = |id: Option<u32>| id.map(|i| vocab.text(i).to_string());
    let mut c = serde_json::Map::new();
    let mut put = |k: &str, v: Json| {
        c.insert(k.to_string(), v);
    };
    put("add_bos_token", Json::Bool(vocab.add_bos));
    put("add_eos_token", Json::Bool(vocab.add_eos));
    for (k, id) in [
        ("bos_token", vocab.bos),
        ("eos_token", vocab.eos),
        ("unk_token", vocab.unk),
        ("pad_token", vocab.pad),
    ] {
        if let Some(t) = text(id) {
            put(k, Json::String(t));
        }
    }
    if let Some(t) = m.opt("tokenizer.chat_template", Metadata::str)? {
        put("chat_template", Json::String(t.to_string()));
    }
    put(
        "tokenizer_class",
        Json::String("PreTrainedTokenizerFast".into()),
    );
    Ok(Json::Object(c))
}
