//! Splitting raw text at special tokens before the tokenizer model sees it.
//!
//! As in llama.cpp: every special token (longest text first) cuts the remaining text fragments
//! at each of its occurrences. Control and unknown tokens take part only when the caller asks
//! for special-token parsing; user-defined tokens always do.

use crate::vocab::{TokenKind, Vocab};

/// A piece of the input: text still to be tokenized, or a token already decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fragment<'a> {
    Text(&'a str),
    Token(u32),
}

/// Splits `text` at the special tokens `specials` (ids, longest text first).
pub fn partition<'a>(
    text: &'a str,
    vocab: &Vocab,
    specials: &[u32],
    parse_special: bool,
) -> Vec<Fragment<'a>> {
    let mut frags = vec![Fragment::Text(text)];
    if text.is_empty() {
        return Vec::new();
    }
    for &id in specials {
        let kind = vocab.kind(id).unwrap_or(TokenKind::Normal);
        if !parse_special && matches!(kind, TokenKind::Control | TokenKind::Unknown) {
            continue;
        }
        let Some(tok) = vocab.tokens.get(id as usize) else {
            continue;
        };
        if !frags
            .iter()
            .any(|f| matches!(f, Fragment::Text(t) if t.contains(tok)))
        {
            continue;
        }
        let mut next = Vec::with_capacity(frags.len() + 2);
        for f in frags {
            match f {
                Fragment::Text(mut t) => {
                    while let Some(at) = t.find(tok) {
                        if at > 0 {
                            next.push(Fragment::Text(&t[..at]));
                        }
                        next.push(Fragment::Token(id));
                        t = &t[at + tok.len()..];
                    }
                    if !t.is_empty() {
                        next.push(Fragment::Text(t));
                    }
                }
                token => next.push(token),
            }
        }
        frags = next;
    }
    frags
}
