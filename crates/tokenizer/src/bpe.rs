//! Byte-level BPE (GGUF `tokenizer.ggml.model = gpt2`), built on the HuggingFace `tokenizers`
//! crate: its BPE model with the file's vocabulary and merges, and a pre-tokenizer chosen by
//! `tokenizer.ggml.pre` that reproduces llama.cpp's regex splits for that name.
//!
//! Also the GPT-2 byte↔character table, used to turn token texts back into bytes.

use tokenizers::models::bpe::{Vocab as HfVocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{PreTokenizerWrapper, SplitDelimiterBehavior};

use torchless_gguf::StringArray;

use crate::vocab::Vocab;
use crate::TokenizerError;

/// GPT-2's split pattern (HF's ByteLevel uses it when `use_regex` is on).
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// GPT-2's pattern without its last `\s+` (as llama.cpp's tables write it when other
/// patterns follow; whitespace it leaves unmatched is a piece of its own either way).
const GPT2_INNER: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// DeepSeek LLM's Latin/Greek/Cyrillic/… letter runs (the ranges of its tokenizer.json;
/// code points that Unicode normalization would change are written as escapes).
const DEEPSEEK_LETTERS: &str = r"\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-\x{1f7d}ᾀ-ᾴᾶ-ᾼ\x{1fbe}ῂ-ῄῆ-ῌῐ-\x{1fd3}ῖ-\x{1fdb}ῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤ\x{2126}ℨ\x{212a}-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ\x{10400}-\x{1044f}𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+";
const DEEPSEEK_CJK: &str = r"[一-龥ࠀ-一가-퟿]+";
const DEEPSEEK_V3: &str = r"[!\x22#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Tekken (Mistral NeMo and later), in llama.cpp's spelling: upper-case runs as letters that
/// are not a-z, lower-case runs as letters that are not A-Z.
const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// How a named pre-tokenizer splits text before BPE: regexes applied in turn (each splitting
/// the pieces of the previous one), then whether GPT-2's own pattern runs last.
struct PreSplit {
    patterns: &'static [&'static str],
    gpt2_last: bool,
    ignore_merges: bool,
}

/// Every pre-tokenizer name this crate knows, one per split (aliases in [`pre_split`]).
const NAMES: &[&str] = &[
    "gpt-2",
    "smollm",
    "qwen2",
    "llama3",
    "tekken",
    "deepseek-llm",
    "deepseek-coder",
    "deepseek-v3",
    "falcon",
    "default",
];

/// llama.cpp's splits for a `tokenizer.ggml.pre` name (the regex tables of its vocabulary
/// code).
fn pre_split(pre: &str) -> Option<PreSplit> {
    let p = |patterns, gpt2_last, ignore_merges| PreSplit {
        patterns,
        gpt2_last,
        ignore_merges,
    };
    Some(match pre {
        "gpt2" | "gpt-2" | "mpt" | "olmo" | "jais" | "phi-2" | "stablelm2" | "trillion" => {
            p(&[], true, false)
        }
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva" => {
            p(&[r"\p{N}"], true, false)
        }
        "qwen2" | "deepseek-r1-qwen" | "qwen35" | "hunyuan" | "grok-2" => p(&[QWEN2], false, false),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" | "lfm2" | "dbrx"
        | "smaug-bpe" | "chatglm-bpe" => p(&[LLAMA3], false, true),
        "tekken" => p(&[TEKKEN], false, true),
        "deepseek-llm" => p(
            &[
                r"[\r\n]",
                DEEPSEEK_LETTERS,
                r"\s?[!-/:-~！-／：-～‘-‟　-。]+",
                r"\s+$",
                DEEPSEEK_CJK,
                r"\p{N}+",
            ],
            false,
            false,
        ),
        "deepseek-coder" => p(
            &[
                r"[\r\n]",
                r"\s?\p{L}+",
                r"\s?\p{P}+",
                DEEPSEEK_CJK,
                r"\p{N}",
            ],
            false,
            false,
        ),
        "deepseek-v3" | "hunyuan-dense" => p(
            &[r"\p{N}{1,3}", r"[一-龥぀-ゟ゠-ヿ]+", DEEPSEEK_V3],
            false,
            false,
        ),
        "falcon" => p(
            &[r"[\p{P}\$\+<=>\^~\|`]+", GPT2_INNER, r"[0-9][0-9][0-9]"],
            false,
            false,
        ),
        "default" => p(
            &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"],
            false,
            false,
        ),
        _ => return None,
    })
}

/// The splits of a pre-tokenizer name: its regexes, whether GPT-2's pattern runs last, and
/// whether whole words found in the vocabulary skip the merges.
pub fn pre_split_public(pre: &str) -> Option<(&'static [&'static str], bool, bool)> {
    pre_split(pre).map(|s| (s.patterns, s.gpt2_last, s.ignore_merges))
}

/// The pre-tokenizer name whose splits are `patterns` (tokenizer.json's regexes, in order)
/// followed, when `gpt2_last`, by GPT-2's pattern; `None` when no known name splits so.
/// tokenizer.json spells case-insensitive contractions `(?i:'s|…)` where llama.cpp's tables
/// spell out `'[sS]|…`; both are taken as the same.
pub fn pre_of_patterns(patterns: &[&str], gpt2_last: bool) -> Option<&'static str> {
    const CI: &str = "(?i:'s|'t|'re|'ve|'m|'ll|'d)";
    const SPELLED: &str = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])";
    let norm = |s: &str| s.replace(CI, SPELLED);
    let given: Vec<String> = patterns.iter().map(|p| norm(p)).collect();
    NAMES.iter().copied().find(|name| {
        pre_split(name).is_some_and(|s| {
            s.gpt2_last == gpt2_last
                && s.patterns.len() == given.len()
                && s.patterns.iter().zip(&given).all(|(a, b)| norm(a) == *b)
        })
    })
}

/// A byte-level BPE tokenizer for text without special tokens.
pub struct ByteLevelBpe {
    inner: tokenizers::Tokenizer,
}

impl ByteLevelBpe {
    pub fn new(
        vocab: &Vocab,
        merges: &StringArray,
        pre: &str,
    ) -> Result<ByteLevelBpe, TokenizerError> {
        let split = pre_split(pre).ok_or_else(|| TokenizerError::UnknownPre(pre.to_string()))?;
        let map: HfVocab = vocab
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect();
        let mut pairs = Vec::with_capacity(merges.len());
        let mut skipped = 0usize;
        let mut joined = String::new();
        for m in merges.iter() {
            let Some((a, b)) = m.split_once(' ') else {
                skipped += 1;
                continue;
            };
            joined.clear();
            joined.push_str(a);
            joined.push_str(b);
            // Hash look-ups in the map just built (a merge list is as long as the vocabulary).
            if map.contains_key(a) && map.contains_key(b) && map.contains_key(&joined) {
                pairs.push((a.to_string(), b.to_string()));
            } else {
                skipped += 1;
            }
        }
        if skipped > 0 {
            tracing::warn!(
                "{skipped} BPE merges name tokens that are not in the vocabulary; ignored"
            );
        }
        let model = BPE::builder()
            .vocab_and_merges(map, pairs)
            .ignore_merges(split.ignore_merges)
            .build()
            .map_err(|e| TokenizerError::Invalid(format!("BPE model: {e}")))?;
        let mut steps: Vec<PreTokenizerWrapper> = Vec::new();
        for pat in split.patterns {
            let s = Split::new(
                SplitPattern::Regex(pat.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| TokenizerError::Invalid(format!("pre-tokenizer regex: {e}")))?;
            steps.push(s.into());
        }
        steps.push(ByteLevel::new(false, false, split.gpt2_last).into());
        let mut inner = tokenizers::Tokenizer::new(model);
        inner.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(Sequence::new(steps))));
        Ok(ByteLevelBpe { inner })
    }

    pub fn encode(&self, text: &str, out: &mut Vec<u32>) -> Result<(), TokenizerError> {
        let enc = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        out.extend_from_slice(enc.get_ids());
        Ok(())
    }
}

/// GPT-2's reversible map from bytes to printable characters, inverted: character → byte.
/// Bytes that print as themselves keep their code point; the other 68 map, in order, to
/// U+0100, U+0101, …
fn char_to_byte(c: char) -> Option<u8> {
    static TABLE: std::sync::OnceLock<[u8; 68]> = std::sync::OnceLock::new();
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let c = c as u32;
    if c < 256 && printable(c) {
        return Some(c as u8);
    }
    let table = TABLE.get_or_init(|| {
        let mut t = [0u8; 68];
        for (slot, b) in t.iter_mut().zip((0u32..256).filter(|&b| !printable(b))) {
            *slot = b as u8;
        }
        t
    });
    table.get(c.checked_sub(256)? as usize).copied()
}

/// The bytes a byte-level token text stands for (characters outside the table pass through as
/// their own UTF-8).
pub fn token_bytes(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for ch in text.chars() {
        match char_to_byte(ch) {
            Some(b) => out.push(b),
            None => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_inverts_gpt2_mapping() {
        assert_eq!(token_bytes("Ġhello"), b" hello");
        assert_eq!(token_bytes("Ċ"), b"\n");
        assert_eq!(token_bytes("ĉ"), b"\t");
        assert_eq!(char_to_byte('Ā'), Some(0));
        assert_eq!(char_to_byte('Ń'), Some(0xAD)); // the last of the remapped bytes
        let all: Vec<u8> = (0u32..512)
            .filter_map(|c| char::from_u32(c).and_then(char_to_byte))
            .collect();
        let mut sorted = all.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 256);
    }

    #[test]
    fn every_named_pre_tokenizer_compiles() {
        for pre in NAMES.iter().chain(&["command-r", "llama-bpe", "dbrx"]) {
            let p = pre_split(pre).unwrap();
            for pat in p.patterns {
                Split::new(
                    SplitPattern::Regex(pat.to_string()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .unwrap_or_else(|e| panic!("{pre}: {pat}: {e:?}"));
            }
        }
        assert!(pre_split("no-such-thing").is_none());
    }

    #[test]
    fn tokenizer_json_splits_are_named_as_llama_cpp_names_them() {
        // llama.cpp refuses "gpt2"; its name is "gpt-2".
        assert_eq!(pre_of_patterns(&[], true), Some("gpt-2"));
        assert_eq!(pre_of_patterns(&[r"\p{N}"], true), Some("smollm"));
        // Qwen2's tokenizer.json spells the contractions case-insensitively.
        let qwen = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
        assert_eq!(pre_of_patterns(&[qwen], false), Some("qwen2"));
        assert_eq!(pre_of_patterns(&[qwen], true), None);
        assert_eq!(pre_of_patterns(&["x"], false), None);
    }
}
