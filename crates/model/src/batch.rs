//! A batch of tokens for one forward pass: each entry is (token, position, sequence, whether
//! its logits are wanted). Prompt prefill, single-token decode and many sequences at once are
//! all batches; the forward pass does not distinguish them. The batch also names the numerics
//! policy its pass follows.

use torchless_kernels::Numerics;

use crate::kv_cache::SeqId;

#[derive(Clone, Debug, Default)]
pub struct Batch {
    pub tokens: Vec<u32>,
    pub pos: Vec<usize>,
    pub seq: Vec<SeqId>,
    pub logits: Vec<bool>,
    /// The arithmetic-order policy of every operation of this pass (llama.cpp's by default;
    /// [`Numerics::BatchInvariant`] makes each entry's results independent of the others).
    pub numerics: Numerics,
    /// Layers this pass skips (`skip_layers[l]`; empty: none): a self-speculative draft runs
    /// the model with some layers left out, which write no keys or values for its tokens.
    pub skip_layers: Vec<bool>,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    pub fn with_capacity(n: usize) -> Batch {
        Batch {
            tokens: Vec::with_capacity(n),
            pos: Vec::with_capacity(n),
            seq: Vec::with_capacity(n),
            logits: Vec::with_capacity(n),
            numerics: Numerics::default(),
            skip_layers: Vec::new(),
        }
    }

    pub fn clear(&mut self) {
        self.tokens.clear();
        self.pos.clear();
        self.seq.clear();
        self.logits.clear();
    }

    pub fn push(&mut self, token: u32, pos: usize, seq: SeqId, logits: bool) {
        self.tokens.push(token);
        self.pos.push(pos);
        self.seq.push(seq);
        self.logits.push(logits);
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Number of entries whose logits are wanted.
    pub fn n_outputs(&self) -> usize {
        self.logits.iter().filter(|&&l| l).count()
    }
}
