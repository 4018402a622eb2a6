//! Speculation per sequence inside the continuous batch: a decoding sequence's pending token
//! goes into the step followed by a draft (prompt lookup: the tokens that followed the latest
//! earlier occurrence of its last n-gram), every row with its logits; the same step's rows
//! then decide, by the acceptance rule of `torchless_model::speculative::verify`, which
//! drafted tokens stand, and the cache is cut back past the first that does not.
//!
//! In the batch-invariant numerics a row's logits do not depend on the rest of the batch, so
//! a greedy request gets exactly the tokens it gets without speculation, and a sampled one
//! tokens distributed exactly as the target's. This module decides tokens; the engine owns
//! the batch, the cache and the output.

use torchless_model::speculative::verify::{self, Verdict, Verifier};
use torchless_model::speculative::{Draft, PromptLookup, MAX_DRAFT};
use torchless_model::Sampler;

/// Speculation settings of an engine (`serve --lookup N --speculation-length K`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpecConfig {
    /// Longest n-gram prompt lookup matches.
    pub lookup: usize,
    /// Most drafted tokens per sequence and step (at most [`MAX_DRAFT`]).
    pub length: usize,
}

/// One sequence's speculation state.
pub(crate) struct SeqSpec {
    lookup: PromptLookup,
    length: usize,
    draft: Draft,
    verifier: Verifier,
    dist: Vec<(u32, f64)>,
}

impl SeqSpec {
    pub(crate) fn new(cfg: SpecConfig, seed: u64) -> SeqSpec {
        SeqSpec {
            lookup: PromptLookup::new(cfg.lookup),
            length: cfg.length.clamp(1, MAX_DRAFT),
            draft: Draft::default(),
            verifier: Verifier::new(seed ^ 0x9e37_79b9_7f4a_7c15),
            dist: Vec::new(),
        }
    }

    /// Drafts at most `max` tokens to follow `tokens` (the last of which is pending);
    /// returns how many.
    pub(crate) fn propose(&mut self, tokens: &[u32], max: usize) -> usize {
        self.draft.clear();
        let want = self.length.min(max);
        if want > 0 {
            self.lookup.find(tokens, want, &mut self.draft);
            self.draft.truncate(want);
        }
        self.draft.len()
    }

    /// Forgets the draft (the step could not hold it).
    pub(crate) fn drop_draft(&mut self) {
        self.draft.clear();
    }

    pub(crate) fn drafted(&self) -> &[u32] {
        self.draft.tokens()
    }

    /// The token after row `i` of the step (`row`: its logits): drafted token `i` if it
    /// stands (then `true`), else the token the rule draws instead; past the draft, a token
    /// drawn from the target's distribution (the bonus). The sampler's shaping applies;
    /// accepting the token into the sampler is the caller's.
    pub(crate) fn choose(&mut self, sampler: &mut Sampler, row: &[f32], i: usize) -> (u32, bool) {
        sampler.distribution(row, &mut self.dist);
        match self.draft.tokens().get(i) {
            Some(&d) => match self.verifier.check(&self.dist, d, None) {
                Verdict::Accepted(t) => (t, true),
                Verdict::Replaced(t) => (t, false),
            },
            None => (verify::draw(&mut self.verifier.rng, &self.dist), false),
        }
    }
}
