//! torchless-tokenizer: text ↔ token ids for models described by GGUF metadata.
//!
//! - [`vocab`]: tokens, kinds, scores, special ids and the end-of-generation set;
//! - [`special`]: cutting text at special tokens before tokenization;
//! - [`bpe`]: byte-level BPE on the HuggingFace `tokenizers` crate, with llama.cpp's
//!   pre-tokenizer splits by name;
//! - [`spm`]: SentencePiece-style score merging with byte fallback (hand-written: GGUF gives
//!   scores, not merges);
//! - [`stream`]: streaming detokenization that never splits a character;
//! - [`template`]: chat templates (minijinja).
//!
//! Behaviour follows llama.cpp's tokenizer, the reference the tests compare with. This crate
//! knows nothing of model weights or compute.

pub mod bpe;
pub mod special;
pub mod spm;
pub mod stream;
pub mod template;
pub mod vocab;

use torchless_gguf::{Metadata, MetadataError};

pub use special::Fragment;
pub use stream::TextStream;
pub use template::{ChatTemplate, Message};
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
}

enum Model {
    Bpe(Box<bpe::ByteLevelBpe>),
    Spm,
}

/// A tokenizer built from a model file's metadata.
pub struct Tokenizer {
    vocab: Vocab,
    model: Model,
    model_name: String,
    pre: Option<String>,
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
        let mut pieces = Vec::new();
        let mut offsets = Vec::with_capacity(vocab.len() + 1);
        offsets.push(0u32);
        for (i, text) in vocab.tokens.iter().enumerate() {
            let bytes: Vec<u8> = match (vocab.kinds[i], &model) {
                (TokenKind::Byte, _) => parse_byte_token(text).map(|b| vec![b]).unwrap_or_default(),
                (TokenKind::Normal, Model::Bpe(_)) => bpe::token_bytes(text),
                (TokenKind::Normal, Model::Spm) => text.replace('\u{2581}', " ").into_bytes(),
                (TokenKind::Unused, _) => Vec::new(),
                _ => text.as_bytes().to_vec(),
            };
            pieces.extend_from_slice(&bytes);
            offsets.push(pieces.len() as u32);
        }
        let specials = vocab.special_tokens();
        let chat_template = m
            .opt("tokenizer.chat_template", Metadata::str)?
            .map(str::to_string);
        Ok(Tokenizer {
            vocab,
            model,
            model_name,
            pre,
            specials,
            pieces,
            offsets,
            chat_template,
        })
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
            Some(pre) => format!(
                "byte-level BPE ({} model, pre-tokenizer {pre})",
                self.model_name
            ),
            None => format!("SentencePiece ({} model)", self.model_name),
        }
    }

    pub fn chat_template_source(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The model's chat template, compiled.
    pub fn chat_template(&self) -> Result<Option<ChatTemplate>, TokenizerError> {
        let text = |id: Option<u32>| {
            id.and_then(|i| self.vocab.tokens.get(i as usize))
                .map(str::to_string)
                .unwrap_or_default()
        };
        self.chat_template
            .as_deref()
            .map(|src| ChatTemplate::new(src, &text(self.vocab.bos), &text(self.vocab.eos)))
            .transpose()
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
            let piece = if k == 0 && self.vocab.add_space_prefix && matches!(self.model, Model::Spm)
            {
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

fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    u8::from_str_radix(hex, 16).ok()
}
