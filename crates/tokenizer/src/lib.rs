//! torchless-tokenizer: text ↔ token ids for models described by GGUF metadata.
//!
//! - [`vocab`]: tokens, kinds, scores, special ids and the end-of-generation set;
//! - [`special`]: cutting text at special tokens before tokenization;
//! - [`bpe`]: byte-level BPE on the HuggingFace `tokenizers` crate, with llama.cpp's
//!   pre-tokenizer splits by name;
//! - [`hf`]: a HuggingFace directory's tokenizer files, described as GGUF describes a
//!   vocabulary (its text is encoded by the `tokenizers` crate with the directory's own
//!   tokenizer.json);
//! - [`spm`]: SentencePiece-style score merging with byte fallback (hand-written: GGUF gives
//!   scores, not merges);
//! - [`stream`]: streaming detokenization that never splits a character;
//! - [`template`]: chat templates (minijinja).
//!
//! Behaviour follows llama.cpp's tokenizer for GGUF files and the `tokenizers` crate (the
//! transformers tokenizer) for HuggingFace directories: the references the tests compare
//! with. This crate knows nothing of model weights or compute.

pub mod bpe;
pub mod builtin_templates;
pub mod hf;
pub mod pyjson;
pub mod special;
pub mod spm;
pub mod stream;
pub mod template;
pub mod vocab;

use torchless_gguf::{Metadata, MetadataError};

pub use special::Fragment;
pub use stream::TextStream;
pub use template::{ChatTemplate, Message, RenderOptions};
pub use vocab::{TokenKind, Vocab};

/// Why a tokenizer could not be built or used.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error("tokenizer kind '{0}' (tokenizer.ggml.model) is not supported; supported: gpt2 (byte-level BPE), llama (SentencePiece)")]
    UnknownModel(String),
    #[error("pre-tokenizer '{0}' (tokenizer.ggml.pre) is not supported")]
    UnknownPre(String),
    #[error("invalid tokenizer data: {0}")]
    Invalid(String),
    #[error("tokenization failed: {0}")]
    Encode(String),
    #[error("the model has no tokenizer (no tokenizer.ggml.tokens); pass token ids instead")]
    Missing,
    #[error("chat template error: {0}")]
    Template(String),
    /// The template refused the conversation on purpose (`raise_exception`).
    #[error("the chat template refused the conversation: {0}")]
    TemplateRaised(String),
}

enum Model {
    Bpe(Box<bpe::ByteLevelBpe>),
    Spm,
    /// A directory's own tokenizer.json (special tokens are cut out before it sees text).
    Hf(Box<tokenizers::Tokenizer>),
}

/// A tokenizer built from a model file's metadata.
pub struct Tokenizer {
    vocab: Vocab,
    model: Model,
    model_name: String,
    pre: Option<String>,
    /// Token texts use `▁` for spaces (SentencePiece-style) rather than GPT-2's byte map.
    spm_style: bool,
    specials: Vec<u32>,
    /// Bytes of every token's text as it reads in output, concatenated; see `offsets`.
    pieces: Vec<u8>,
    offsets: Vec<u32>,
    chat_template: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tokenizer({}, {} tokens)",
            self.describe(),
            self.vocab.len()
        )
    }
}

fn escape_spaces(text: &str) -> String {
    text.replace(' ', "\u{2581}")
}

impl Tokenizer {
    /// Builds the tokenizer that `tokenizer.ggml.*` describes.
    pub fn from_metadata(m: &Metadata) -> Result<Tokenizer, TokenizerError> {
        if !m.contains("tokenizer.ggml.tokens") {
            return Err(TokenizerError::Missing);
        }
        let model_name = m.str("tokenizer.ggml.model")?.to_string();
        let vocab = Vocab::from_metadata(m, &model_name)?;
        let (model, pre) = match model_name.as_str() {
            "gpt2" => {
                let pre = m
                    .opt("tokenizer.ggml.pre", Metadata::str)?
                    .unwrap_or("default")
                    .to_string();
                let merges = m.strings("tokenizer.ggml.merges")?;
                let b = bpe::ByteLevelBpe::new(&vocab, merges, &pre)?;
                (Model::Bpe(Box::new(b)), Some(pre))
            }
            "llama" => (Model::Spm, None),
            other => return Err(TokenizerError::UnknownModel(other.to_string())),
        };
        let chat_template = m
            .opt("tokenizer.chat_template", Metadata::str)?
            .map(str::to_string);
        Ok(Tokenizer::assemble(
            vocab,
            model,
            model_name,
            pre,
            chat_template,
        ))
    }

    /// The tokenizer of a HuggingFace model directory (`tokenizer.json` and the files beside
    /// it), or `None` when the directory has no `tokenizer.json`. Text is encoded by the
    /// `tokenizers` crate with that file; `generation_config.json`'s `eos_token_id`s join the
    /// end-of-generation set.
    pub fn from_hf_dir(dir: &std::path::Path) -> Result<Option<Tokenizer>, TokenizerError> {
        Ok(Tokenizer::from_hf_dir_described(dir)?.map(|(t, _)| t))
    }

    /// [`Tokenizer::from_hf_dir`], and the `tokenizer.ggml.*` keys a GGUF file would carry for
    /// that tokenizer (the files read and parsed once).
    pub fn from_hf_dir_described(
        dir: &std::path::Path,
    ) -> Result<Option<(Tokenizer, Metadata)>, TokenizerError> {
        let Some(files) = hf::HfTokenizerFiles::read(dir)? else {
            return Ok(None);
        };
        Tokenizer::from_files(&files).map(Some)
    }

    /// The tokenizer a `.bin` export carries (`vocab`: token → id, `merges`), read at `path`,
    /// and its GGUF-style description. SentencePiece-style when the vocabulary has byte
    /// tokens (`<0x00>` …, as Mistral's has), byte-level otherwise.
    pub fn from_tokenizer_json(
        tok: &serde_json::Value,
        path: &std::path::Path,
    ) -> Result<(Tokenizer, Metadata), TokenizerError> {
        let bad =
            |what: &str| TokenizerError::Invalid(format!("{}: tokenizer {what}", path.display()));
        let map = tok["vocab"]
            .as_object()
            .ok_or_else(|| bad("vocab is not an object of token → id"))?;
        let n = map
            .values()
            .filter_map(|v| v.as_u64())
            .max()
            .map_or(0, |m| m as usize + 1);
        if n == 0 || n > 1 << 24 || map.values().any(|v| v.as_u64().is_none()) {
            return Err(bad("vocab ids are not token ids"));
        }
        let mut tokens: Vec<String> = (0..n).map(|i| format!("[PAD{i}]")).collect();
        for (t, id) in map {
            tokens[id.as_u64().unwrap_or(0) as usize] = t.clone();
        }
        let merges: Vec<String> = match tok["merges"].as_array() {
            None => Vec::new(),
            Some(list) => list
                .iter()
                .map(|m| match m {
                    serde_json::Value::String(s) => Some(s.clone()),
                    serde_json::Value::Array(p) => match (p.first(), p.get(1)) {
                        (Some(a), Some(b)) => Some(format!("{} {}", a.as_str()?, b.as_str()?)),
                        _ => None,
                    },
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad("merges are neither \"a b\" strings nor pairs"))?,
        };
        let spm = tokens.iter().any(|t| t == "<0x00>");
        let is_control = |t: &str| {
            (t.starts_with('<') && t.ends_with('>') && !t.starts_with("<0x") && t.len() > 2)
                || (t.starts_with("[")
                    && t.ends_with(']')
                    && t.len() > 2
                    && t[1..t.len() - 1]
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c == '_'))
        };
        let added: Vec<(u32, bool)> = tokens
            .iter()
            .enumerate()
            .filter(|(_, t)| is_control(t) && !t.starts_with("[PAD"))
            .map(|(i, _)| (i as u32, true))
            .collect();
        let find = |text: &str| tokens.iter().position(|t| t == text).map(|i| i as u32);
        let bos = find("<s>");
        let json = hf::tokenizer_json(&hf::JsonVocab {
            tokens: &tokens,
            added: &added,
            merges: &merges,
            spm,
            pre: None,
            bos,
            add_bos: spm && bos.is_some(),
            add_space_prefix: spm,
            unk: find("<unk>").map(|_| "<unk>"),
        })?;
        let config =
            serde_json::json!({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"});
        let files = hf::HfTokenizerFiles::from_json(json, path, Some(config));
        Tokenizer::from_files(&files)
    }

    fn from_files(files: &hf::HfTokenizerFiles) -> Result<(Tokenizer, Metadata), TokenizerError> {
        let (inner, meta) = hf_parts(files)?;
        let model_name = meta.str("tokenizer.ggml.model")?.to_string();
        let mut vocab = Vocab::from_metadata(&meta, &model_name)?;
        for id in files.generation_eos() {
            if (id as usize) < vocab.len() {
                vocab.eog.insert(id);
            }
        }
        let chat_template = files.chat_template();
        let mut t = Tokenizer::assemble(
            vocab,
            Model::Hf(Box::new(inner)),
            model_name,
            None,
            chat_template,
        );
        t.pre = Some("tokenizer.json".into());
        Ok((t, meta))
    }

    fn assemble(
        vocab: Vocab,
        model: Model,
        model_name: String,
        pre: Option<String>,
        chat_template: Option<String>,
    ) -> Tokenizer {
        let spm_style = model_name == "llama";
        let mut pieces = Vec::new();
        let mut offsets = Vec::with_capacity(vocab.len() + 1);
        offsets.push(0u32);
        for (i, text) in vocab.tokens.iter().enumerate() {
            let bytes: Vec<u8> = match vocab.kinds[i] {
                TokenKind::Byte => parse_byte_token(text).map(|b| vec![b]).unwrap_or_default(),
                TokenKind::Normal if spm_style => text.replace('\u{2581}', " ").into_bytes(),
                TokenKind::Normal => bpe::token_bytes(text),
                TokenKind::Unused => Vec::new(),
                _ => text.as_bytes().to_vec(),
            };
            pieces.extend_from_slice(&bytes);
            offsets.push(pieces.len() as u32);
        }
        let specials = vocab.special_tokens();
        Tokenizer {
            vocab,
            model,
            model_name,
            pre,
            spm_style,
            specials,
            pieces,
            offsets,
            chat_template,
        }
    }

    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    pub fn len(&self) -> usize {
        self.vocab.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vocab.is_empty()
    }

    /// "byte-level BPE (pre-tokenizer smollm)" or "SentencePiece (llama)".
    pub fn describe(&self) -> String {
        match &self.pre {
            Some(pre) if !self.spm_style => format!(
                "byte-level BPE ({} model, pre-tokenizer {pre})",
                self.model_name
            ),
            Some(pre) => format!("SentencePiece-style BPE with byte fallback ({pre})"),
            None => format!("SentencePiece ({} model)", self.model_name),
        }
    }

    pub fn chat_template_source(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The texts of the BOS and EOS tokens (empty where the model has none), as templates
    /// receive them.
    pub fn bos_eos_text(&self) -> (String, String) {
        let text = |id: Option<u32>| {
            id.and_then(|i| self.vocab.tokens.get(i as usize))
                .map(str::to_string)
                .unwrap_or_default()
        };
        (text(self.vocab.bos), text(self.vocab.eos))
    }

    /// The model's chat template, compiled.
    pub fn chat_template(&self) -> Result<Option<ChatTemplate>, TokenizerError> {
        let (bos, eos) = self.bos_eos_text();
        self.chat_template
            .as_deref()
            .map(|src| ChatTemplate::new(src, &bos, &eos))
            .transpose()
    }

    /// The ids of a conversation rendered with the model's chat template, ending where the
    /// assistant's reply begins (special-token texts parsed; BOS added unless the template
    /// writes it itself). An error when the model has no template.
    pub fn encode_chat(&self, messages: &[Message]) -> Result<Vec<u32>, TokenizerError> {
        self.encode_chat_with(None, messages)
    }

    /// [`Tokenizer::encode_chat`] with `template` instead of the model's own, where given.
    pub fn encode_chat_with(
        &self,
        template: Option<&ChatTemplate>,
        messages: &[Message],
    ) -> Result<Vec<u32>, TokenizerError> {
        let own;
        let template = match template {
            Some(t) => t,
            None => {
                own = self.chat_template()?.ok_or_else(|| {
                    TokenizerError::Template(format!(
                        "the model has no chat template (tokenizer.chat_template); choose one with --template ({})",
                        builtin_templates::NAMES.join(", ")
                    ))
                })?;
                &own
            }
        };
        Ok(self.render_chat(template, messages, true)?.1)
    }

    /// The text of a conversation rendered with `template` (ending where the assistant's reply
    /// begins with `add_generation_prompt`) and its ids: special-token texts parsed, BOS added
    /// unless the template writes it itself.
    pub fn render_chat(
        &self,
        template: &ChatTemplate,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<(String, Vec<u32>), TokenizerError> {
        let text = template.render(messages, add_generation_prompt)?;
        let bos_text = self
            .vocab
            .bos
            .and_then(|b| self.token_text(b))
            .unwrap_or_default();
        let add_special = bos_text.is_empty() || !text.starts_with(bos_text);
        let ids = self.encode(&text, add_special, true)?;
        Ok((text, ids))
    }

    /// The template `--template` names ([`ChatTemplate::named`]), with this model's BOS/EOS
    /// texts.
    pub fn template_named(&self, name: &str) -> Result<ChatTemplate, TokenizerError> {
        let (bos, eos) = self.bos_eos_text();
        ChatTemplate::named(name, &bos, &eos)
    }

    /// Token ids for `text`. `add_special` adds BOS/EOS where the model asks for them;
    /// `parse_special` turns control-token texts such as `<|im_start|>` into their ids.
    pub fn encode(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, TokenizerError> {
        let mut out = Vec::new();
        if add_special && self.vocab.add_bos {
            out.extend(self.vocab.bos);
        }
        let frags = special::partition(text, &self.vocab, &self.specials, parse_special);
        let mut prev_special = true;
        for f in frags {
            match f {
                Fragment::Token(id) => {
                    out.push(id);
                    prev_special = true;
                }
                Fragment::Text(t) => {
                    match &self.model {
                        Model::Bpe(b) => b.encode(t, &mut out)?,
                        Model::Spm => {
                            let prefixed;
                            let t = if self.vocab.add_space_prefix && prev_special {
                                prefixed = format!(" {t}");
                                prefixed.as_str()
                            } else {
                                t
                            };
                            spm::encode(&self.vocab, &escape_spaces(t), &mut out);
                        }
                        Model::Hf(h) => {
                            let enc = h
                                .encode_fast(t, false)
                                .map_err(|e| TokenizerError::Encode(e.to_string()))?;
                            out.extend_from_slice(enc.get_ids());
                        }
                    }
                    prev_special = false;
                }
            }
        }
        if add_special && self.vocab.add_eos {
            out.extend(self.vocab.eos);
        }
        Ok(out)
    }

    /// The bytes token `id` contributes to output text. Control and unknown tokens contribute
    /// their text only when `render_special` is set. Unknown ids give nothing.
    pub fn token_bytes(&self, id: u32, render_special: bool) -> &[u8] {
        let i = id as usize;
        let Some(kind) = self.vocab.kind(id) else {
            return &[];
        };
        if !render_special && matches!(kind, TokenKind::Control | TokenKind::Unknown) {
            return &[];
        }
        &self.pieces[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }

    /// The text of `ids`, as llama.cpp detokenizes it (special tokens rendered when asked).
    pub fn decode(&self, ids: &[u32], render_special: bool) -> String {
        let mut bytes = Vec::new();
        for (k, &id) in ids.iter().enumerate() {
            let piece = self.token_bytes(id, render_special);
            // SentencePiece models that prefix a space strip it from the first token.
            let piece = if k == 0 && self.vocab.add_space_prefix && self.spm_style {
                piece.strip_prefix(b" ").unwrap_or(piece)
            } else {
                piece
            };
            bytes.extend_from_slice(piece);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The raw vocabulary text of a token (for display), `None` for unknown ids.
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.vocab.tokens.get(id as usize)
    }

    pub fn is_eog(&self, id: u32) -> bool {
        self.vocab.is_eog(id)
    }
}

/// The `tokenizers` crate's tokenizer of `files` (told to leave special-token texts to this
/// crate's own partition) and the GGUF-style description of its vocabulary, with BOS/EOS as
/// its post-processor adds them.
fn hf_parts(
    files: &hf::HfTokenizerFiles,
) -> Result<(tokenizers::Tokenizer, Metadata), TokenizerError> {
    let mut inner: tokenizers::Tokenizer = files
        .json_text
        .parse()
        .map_err(|e| TokenizerError::Invalid(format!("{}: {e}", files.path.display())))?;
    let encode = |t: &tokenizers::Tokenizer, add: bool| -> Result<Vec<u32>, TokenizerError> {
        t.encode_fast("a", add)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TokenizerError::Encode(e.to_string()))
    };
    let plain = encode(&inner, false)?;
    let with = encode(&inner, true)?;
    // The ids the post-processor puts around a text: where `plain` sits inside `with`.
    let (before, after) = match (0..=with.len().saturating_sub(plain.len()))
        .find(|&i| with[i..].starts_with(&plain))
    {
        Some(i) => (with[..i].to_vec(), with[i + plain.len()..].to_vec()),
        None => (Vec::new(), Vec::new()),
    };
    let meta = files.to_metadata((&before, &after))?;
    inner.set_encode_special_tokens(true);
    Ok((inner, meta))
}

fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    u8::from_str_radix(hex, 16).ok()
}
