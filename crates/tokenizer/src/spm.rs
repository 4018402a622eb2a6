//! SentencePiece-style tokenization from a GGUF vocabulary with scores
//! (`tokenizer.ggml.model = llama`, as LLaMA 1/2, Mistral and Gemma files use).
//!
//! GGUF carries scores, not merges, and the HuggingFace BPE model needs merges, so this is
//! written here, following llama.cpp: start from single characters, repeatedly join the
//! adjacent pair whose joined text is the highest-scoring vocabulary entry (leftmost on ties),
//! and spell any leftover character that is not a token as byte tokens `<0xXX>`.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::vocab::Vocab;

struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Bigram {
    /// Highest score first; on equal scores the leftmost pair first.
    fn cmp(&self, o: &Self) -> Ordering {
        self.score
            .total_cmp(&o.score)
            .then_with(|| o.left.cmp(&self.left))
    }
}

/// The id of byte `b` as a token: `<0xXX>`, else the one-byte text, else the unknown token.
pub fn byte_token(vocab: &Vocab, b: u8) -> Option<u32> {
    vocab
        .id(&format!("<0x{b:02X}>"))
        .or_else(|| std::str::from_utf8(&[b]).ok().and_then(|s| vocab.id(s)))
        .or(vocab.unk)
}

/// Tokenizes `text` (spaces already escaped as U+2581) and appends the ids to `out`.
pub fn encode(vocab: &Vocab, text: &str, out: &mut Vec<u32>) {
    let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
    for (i, (start, ch)) in text.char_indices().enumerate() {
        symbols.push(Symbol {
            start,
            len: ch.len_utf8(),
            prev: i.checked_sub(1),
            next: None,
        });
    }
    let n = symbols.len();
    for (i, s) in symbols.iter_mut().enumerate() {
        s.next = (i + 1 < n).then_some(i + 1);
    }
    let mut queue = BinaryHeap::new();
    let score = |id: u32| vocab.scores.get(id as usize).copied().unwrap_or(0.0);
    let try_add = |symbols: &[Symbol],
                   left: Option<usize>,
                   right: Option<usize>,
                   queue: &mut BinaryHeap<Bigram>| {
        let (Some(l), Some(r)) = (left, right) else {
            return;
        };
        let (a, b) = (&symbols[l], &symbols[r]);
        let piece = &text[a.start..b.start + b.len];
        if let Some(id) = vocab.id(piece) {
            queue.push(Bigram {
                score: score(id),
                left: l,
                right: r,
                size: piece.len(),
            });
        }
    };
    for i in 1..n {
        try_add(&symbols, Some(i - 1), Some(i), &mut queue);
    }
    while let Some(bg) = queue.pop() {
        let (l, r) = (bg.left, bg.right);
        if symbols[l].len == 0 || symbols[r].len == 0 || symbols[l].len + symbols[r].len != bg.size
        {
            continue;
        }
        symbols[l].len += symbols[r].len;
        symbols[r].len = 0;
        symbols[l].next = symbols[r].next;
        if let Some(nx) = symbols[r].next {
            symbols[nx].prev = Some(l);
        }
        let (prev, next) = (symbols[l].prev, symbols[l].next);
        try_add(&symbols, prev, Some(l), &mut queue);
        try_add(&symbols, Some(l), next, &mut queue);
    }
    // A symbol is a vocabulary entry unless it is a lone character the vocabulary lacks
    // (joins only happen when the joined text is a token): spell those as bytes.
    let mut i = if n > 0 { Some(0) } else { None };
    while let Some(k) = i {
        let s = &symbols[k];
        let piece = &text[s.start..s.start + s.len];
        match vocab.id(piece) {
            Some(id) => out.push(id),
            None => out.extend(piece.bytes().filter_map(|b| byte_token(vocab, b))),
        }
        i = s.next;
    }
}
