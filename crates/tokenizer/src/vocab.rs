//! The vocabulary as a GGUF file describes it: token texts, kinds and scores, the special ids
//! (BOS, EOS, end-of-turn …), the end-of-generation set, and the flags that shape encoding.

use std::collections::BTreeSet;

use torchless_gguf::{Array, Metadata, StringArray};

use crate::TokenizerError;

/// What a token is, from `tokenizer.ggml.token_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenKind {
    fn from_gguf(v: i64) -> TokenKind {
        match v {
            2 => TokenKind::Unknown,
            3 => TokenKind::Control,
            4 => TokenKind::UserDefined,
            5 => TokenKind::Unused,
            6 => TokenKind::Byte,
            _ => TokenKind::Normal,
        }
    }
}

/// Texts that mark the end of a turn or of generation (as llama.cpp recognises them).
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<｜end▁of▁sentence｜>",
];

/// A vocabulary read from GGUF metadata.
#[derive(Clone, Debug)]
pub struct Vocab {
    pub tokens: StringArray,
    pub kinds: Vec<TokenKind>,
    /// Merge priorities for SentencePiece-style models (empty for BPE files without scores).
    pub scores: Vec<f32>,
    /// Token ids ordered by text (ties by id), for look-ups by binary search: a quarter of
    /// the memory of a hash map of owned strings on a 150,000-token vocabulary.
    by_text: Vec<u32>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    /// Tokens that end generation.
    pub eog: BTreeSet<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    pub add_space_prefix: bool,
}

impl Vocab {
    /// Reads the `tokenizer.ggml.*` keys. `model` is the tokenizer kind (`gpt2`, `llama`).
    pub fn from_metadata(m: &Metadata, model: &str) -> Result<Vocab, TokenizerError> {
        let tokens = m.strings("tokenizer.ggml.tokens")?.clone();
        let n = tokens.len();
        if n == 0 {
            return Err(TokenizerError::Invalid(
                "tokenizer.ggml.tokens is empty".into(),
            ));
        }
        let kinds = match m.opt("tokenizer.ggml.token_type", Metadata::array)? {
            Some(a) if a.len() == n => (0..n)
                .map(|i| TokenKind::from_gguf(a.int_at(i).unwrap_or(1)))
                .collect(),
            Some(a) => {
                return Err(TokenizerError::Invalid(format!(
                    "tokenizer.ggml.token_type has {} entries for {n} tokens",
                    a.len()
                )))
            }
            None => vec![TokenKind::Normal; n],
        };
        let scores = match m.opt("tokenizer.ggml.scores", Metadata::array)? {
            Some(a) if a.len() == n => (0..n)
                .map(|i| a.float_at(i).unwrap_or(0.0) as f32)
                .collect(),
            Some(Array::F32(v)) if v.is_empty() => Vec::new(),
            Some(a) => {
                return Err(TokenizerError::Invalid(format!(
                    "tokenizer.ggml.scores has {} entries for {n} tokens",
                    a.len()
                )))
            }
            None => Vec::new(),
        };
        let mut by_text: Vec<u32> = (0..n as u32).collect();
        // Equal texts in id order, so a look-up finds the first id, as llama.cpp's token_to_id
        // map keeps the first of duplicates.
        by_text.sort_unstable_by(|&a, &b| {
            (tokens.get(a as usize), a).cmp(&(tokens.get(b as usize), b))
        });
        let id = |key: &str| -> Result<Option<u32>, TokenizerError> {
            match m.opt(key, Metadata::u32)? {
                Some(v) if (v as usize) < n => Ok(Some(v)),
                Some(v) => {
                    tracing::warn!("{key} = {v} is outside the vocabulary of {n} tokens; ignored");
                    Ok(None)
                }
                None => Ok(None),
            }
        };
        let spm = model == "llama";
        let mut v = Vocab {
            bos: id("tokenizer.ggml.bos_token_id")?,
            eos: id("tokenizer.ggml.eos_token_id")?,
            unk: id("tokenizer.ggml.unknown_token_id")?,
            pad: id("tokenizer.ggml.padding_token_id")?,
            add_bos: m
                .opt("tokenizer.ggml.add_bos_token", Metadata::bool)?
                .unwrap_or(spm),
            add_eos: m
                .opt("tokenizer.ggml.add_eos_token", Metadata::bool)?
                .unwrap_or(false),
            add_space_prefix: m
                .opt("tokenizer.ggml.add_space_prefix", Metadata::bool)?
                .unwrap_or(spm),
            tokens,
            kinds,
            scores,
            by_text,
            eog: BTreeSet::new(),
        };
        if v.add_bos && v.bos.is_none() {
            return Err(TokenizerError::Invalid(
                "tokenizer.ggml.add_bos_token is set but there is no tokenizer.ggml.bos_token_id"
                    .into(),
            ));
        }
        for text in EOG_TEXTS {
            if let Some(t) = v.id(text) {
                v.eog.insert(t);
                if v.kinds[t as usize] == TokenKind::Normal {
                    v.kinds[t as usize] = TokenKind::Control;
                }
            }
        }
        for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
            if let Some(t) = id(key)? {
                v.eog.insert(t);
            }
        }
        if let Some(e) = v.eos {
            v.eog.insert(e);
        }
        Ok(v)
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn id(&self, text: &str) -> Option<u32> {
        let at = self.by_text.partition_point(|&i| self.text(i) < text);
        let &i = self.by_text.get(at)?;
        (self.text(i) == text).then_some(i)
    }

    /// The text of token `id` (empty past the end of the vocabulary).
    pub fn text(&self, id: u32) -> &str {
        self.tokens.get(id as usize).unwrap_or("")
    }

    pub fn kind(&self, id: u32) -> Option<TokenKind> {
        self.kinds.get(id as usize).copied()
    }

    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// Tokens that are matched in raw text before tokenization: control and unknown tokens
    /// when `parse_special` is asked, user-defined ones always. Longest first.
    pub fn special_tokens(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = (0..self.len() as u32)
            .filter(|&i| {
                matches!(
                    self.kinds[i as usize],
                    TokenKind::Control | TokenKind::UserDefined | TokenKind::Unknown
                ) && !self.text(i).is_empty()
            })
            .collect();
        // Stable sort: equal lengths keep id order.
        ids.sort_by_key(|&i| std::cmp::Reverse(self.text(i).len()));
        ids
    }
}

#[cfg(test)]
mod tests {
    use torchless_gguf::{Array, Metadata, Value};

    use super::Vocab;

    #[test]
    fn look_ups_by_text_find_the_first_id() {
        let texts = ["b", "a", "ab", "", "a", "ü", "aa", "b"];
        let mut m = Metadata::new();
        m.insert(
            "tokenizer.ggml.tokens",
            Value::Array(Array::String(texts.iter().collect())),
        );
        let v = Vocab::from_metadata(&m, "gpt2").unwrap();
        assert_eq!(v.id("b"), Some(0));
        assert_eq!(v.id("a"), Some(1));
        assert_eq!(v.id("ab"), Some(2));
        assert_eq!(v.id(""), Some(3));
        assert_eq!(v.id("ü"), Some(5));
        assert_eq!(v.id("aa"), Some(6));
        for missing in ["c", "ba", "abc", "A", " a", "üü"] {
            assert_eq!(v.id(missing), None, "{missing:?}");
        }
    }
}
