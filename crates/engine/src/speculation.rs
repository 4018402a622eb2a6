//! Speculation per sequence inside the continuous batch: a decoding sequence's pending token
//! goes into the step followed by a draft (prompt lookup: the tokens that followed the latest
//! earlier occurrence of its last n-gram; or a draft model's choices, see
//! [`crate::draft_runner`]), every row with its logits; the same step's rows then decide, by
//! the acceptance rule of `torchless_model::speculative::verify`, which drafted tokens stand,
//! and the cache is cut back past the first that does not.
//!
//! In the batch-invariant numerics a row's logits do not depend on the rest of the batch, so
//! a greedy request gets exactly the tokens it gets without speculation, and a sampled one
//! tokens distributed exactly as the target's. This module decides tokens; the engine owns
//! the batch, the cache and the output.

use torchless_model::speculative::verify::{self, Verdict, Verifier};
use torchless_model::speculative::{Draft, Picker, PromptLookup, MAX_DRAFT};
use torchless_model::{Sampler, SamplerConfig};

/// Where drafts come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drafter {
    /// Prompt lookup, matching n-grams of up to this many tokens (`serve --lookup N`).
    Lookup(usize),
    /// The engine's draft model (`serve --draft-model`, [`crate::Engine::start_with_draft`]),
    /// computing the logits of the first `vocab_window` ids only where set.
    Model { vocab_window: Option<usize> },
}

/// Speculation settings of an engine (`serve --lookup N` or `--draft-model M`, with
/// `--speculation-length K`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpecConfig {
    pub drafter: Drafter,
    /// Most drafted tokens per sequence and step (at most [`MAX_DRAFT`]).
    pub length: usize,
    /// A draft model drafts as many tokens as pay (see `Pace`), up to `length`; otherwise
    /// always `length`.
    pub adaptive: bool,
}

/// How one sequence drafts.
enum Source {
    Lookup(PromptLookup),
    /// A draft model: how it picks tokens, and how many leading positions of the draft
    /// model's cache hold the sequence's own tokens (the rest, if any, are stale).
    Model {
        picker: Box<Picker>,
        at: usize,
    },
}

/// One sequence's speculation state.
pub(crate) struct SeqSpec {
    source: Source,
    length: usize,
    adaptive: bool,
    draft: Draft,
    verifier: Verifier,
    dist: Vec<(u32, f64)>,
    pace: Pace,
}

/// How many tokens a draft model drafts for one sequence: one more than its rounds have kept
/// lately (decayed counts), as long as the tokens a round is expected to give pay for its
/// work under a fixed cost model — a draft token costs `cost` passes of the model (the bytes
/// of weights it reads), each verified token a little more than nothing. Drafts that do not
/// pay stop, and a probe of one token notices when they would again: after [`PROBE_EVERY`]
/// steps, then twice as many after each probe that does not change the verdict (up to
/// [`PROBE_MAX`]), since a probe costs a catch-up pass over the tokens the draft missed. The length depends only on the sequence's own tokens, never on timing or on the
/// rest of the batch. (Acceptance comes in runs, so the i.i.d. model of the `generate` path's
/// adaptation undervalues long drafts here; measured on Qwen2.5-Coder 0.5B drafting for 1.5B.)
struct Pace {
    cost: f64,
    /// Decayed sums of drafted tokens kept, and of rounds.
    kept: f64,
    rounds: f64,
    idle: usize,
    /// Steps from one probe to the next while drafts do not pay.
    probe_every: usize,
}

/// Decay of the counts per verification.
const DECAY: f64 = 0.8;
/// What each verified token adds to a pass of the model (measured in the engine with
/// Qwen2.5-Coder-1.5B on two cores: 4 tokens cost 1.3-1.5 passes).
const VERIFY_STEP: f64 = 0.15;
/// Steps before the first probe of a sequence that drafts nothing, and the most between two.
pub(crate) const PROBE_EVERY: usize = 16;
pub(crate) const PROBE_MAX: usize = 256;

impl Pace {
    fn new(cost: f64) -> Pace {
        // Prior: two drafts kept a round.
        Pace {
            cost,
            kept: 2.0,
            rounds: 1.0,
            idle: 0,
            probe_every: PROBE_EVERY,
        }
    }

    /// The length for a step in which `batch` sequences decode. A pass over `n` tokens costs
    /// `1 + VERIFY_STEP (n - 1)` passes of one token; every sequence is taken to draft alike,
    /// so the verification pass grows by `batch` tokens per drafted position and each draft
    /// pass costs `cost` times a pass over `batch` tokens: the larger the batch, the cheaper
    /// its plain step per token and the less drafts pay.
    fn best(&self, length: usize, batch: usize) -> usize {
        let m = self.kept / self.rounds.max(1e-9);
        let k = (m.round() as usize + 1).clamp(1, length.max(1));
        let (b, kf) = (batch.max(1) as f64, k as f64);
        let pass = |n: f64| 1.0 + VERIFY_STEP * (n - 1.0);
        let speculative = (m.min(kf) + 1.0) / (pass(b * (kf + 1.0)) + kf * self.cost * pass(b));
        let gain = speculative * pass(b);
        if gain < 1.0 {
            0
        } else {
            k.min(length)
        }
    }

    fn record(&mut self, kept: usize) {
        self.kept = self.kept * DECAY + kept as f64;
        self.rounds = self.rounds * DECAY + 1.0;
    }
}

impl SeqSpec {
    /// The state of a request sampled as `sampler` says; `draft_vocab` is the draft model's
    /// vocabulary and `draft_cost` what a draft token costs in target passes (where a draft
    /// model drafts).
    pub(crate) fn new(
        cfg: SpecConfig,
        sampler: &SamplerConfig,
        draft_vocab: usize,
        draft_cost: f64,
    ) -> SeqSpec {
        let source = match cfg.drafter {
            Drafter::Lookup(n) => Source::Lookup(PromptLookup::new(n)),
            Drafter::Model { .. } => Source::Model {
                picker: Box::new(Picker::new(sampler, draft_vocab)),
                at: 0,
            },
        };
        SeqSpec {
            source,
            length: cfg.length.clamp(1, MAX_DRAFT),
            adaptive: cfg.adaptive,
            draft: Draft::default(),
            verifier: Verifier::new(sampler.seed ^ 0x9e37_79b9_7f4a_7c15),
            dist: Vec::new(),
            pace: Pace::new(draft_cost),
        }
    }

    /// Whether a draft model drafts for this sequence (then [`SeqSpec::propose`] drafts
    /// nothing: the draft runner does).
    pub(crate) fn uses_model(&self) -> bool {
        matches!(self.source, Source::Model { .. })
    }

    /// The most tokens this step drafts, given `max` left in its budget and `batch`
    /// sequences decoding: the configured length for prompt lookup, the paced length for a
    /// draft model.
    pub(crate) fn want(&mut self, max: usize, batch: usize) -> usize {
        if !self.uses_model() || !self.adaptive {
            return self.length.min(max);
        }
        let p = &mut self.pace;
        let k = p.best(self.length, batch);
        if k > 0 {
            p.idle = 0;
            p.probe_every = PROBE_EVERY;
            return k.min(max);
        }
        p.idle += 1;
        if p.idle >= p.probe_every {
            p.idle = 0;
            p.probe_every = (p.probe_every * 2).min(PROBE_MAX);
            return max.min(1);
        }
        0
    }

    /// Counts a verification in which `kept` drafted tokens stood.
    pub(crate) fn record(&mut self, kept: usize) {
        self.pace.record(kept);
    }

    /// Drafts by prompt lookup at most `max` tokens to follow `tokens` (the last of which is
    /// pending); returns how many. A draft model's sequence starts an empty draft here.
    pub(crate) fn propose(&mut self, tokens: &[u32], max: usize) -> usize {
        self.draft.clear();
        let want = self.length.min(max);
        if let (Source::Lookup(lookup), true) = (&mut self.source, want > 0) {
            lookup.find(tokens, want, &mut self.draft);
            self.draft.truncate(want);
        }
        self.draft.len()
    }

    /// Forgets the draft (the step could not hold it); `len`: the sequence's tokens.
    pub(crate) fn drop_draft(&mut self, len: usize) {
        self.draft.clear();
        self.rewind(len);
    }

    /// The draft model's cache holds at most the first `len` tokens of the sequence's text
    /// from now on (what it holds beyond them is no longer the text).
    pub(crate) fn rewind(&mut self, len: usize) {
        if let Source::Model { at, .. } = &mut self.source {
            *at = (*at).min(len);
        }
    }

    /// The draft model's state: positions of its cache that hold the text, its picker and
    /// the draft (None for prompt lookup).
    pub(crate) fn model_parts(&mut self) -> Option<(&mut usize, &mut Picker, &mut Draft)> {
        match &mut self.source {
            Source::Model { picker, at } => Some((at, picker, &mut self.draft)),
            Source::Lookup(_) => None,
        }
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
            Some(&d) => match self.verifier.check(&self.dist, d, self.draft.dist(i)) {
                Verdict::Accepted(t) => (t, true),
                Verdict::Replaced(t) => (t, false),
            },
            None => (verify::draw(&mut self.verifier.rng, &self.dist), false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paced(cost: f64, kept_per_round: &[usize]) -> Pace {
        let mut p = Pace::new(cost);
        for &k in kept_per_round {
            p.record(k);
        }
        p
    }

    #[test]
    fn the_pace_drafts_one_more_than_its_rounds_keep() {
        // A cheap draft whose rounds keep 4 tokens drafts 5 (capped by the length).
        assert_eq!(paced(0.3, &[4; 20]).best(8, 1), 5);
        assert_eq!(paced(0.3, &[4; 20]).best(3, 1), 3);
        // Rounds that keep one token: two drafted, still worth it for a cheap draft alone.
        assert_eq!(paced(0.3, &[1; 20]).best(8, 1), 2);
        // The prior (two kept a round) at the start.
        assert_eq!(Pace::new(0.3).best(8, 1), 3);
    }

    #[test]
    fn drafts_that_do_not_pay_stop() {
        // Nothing kept: no draft pays.
        assert_eq!(paced(0.3, &[0; 20]).best(8, 1), 0);
        // A draft as dear as the model pays only if nearly everything is kept.
        assert_eq!(paced(1.0, &[1; 20]).best(8, 1), 0);
        // The same rounds pay alone but not in a batch of eight decoding sequences; rounds
        // that keep six tokens pay in a batch of two.
        assert_eq!(paced(0.3, &[1; 20]).best(8, 8), 0);
        assert_eq!(paced(0.3, &[6; 20]).best(8, 2), 7);
    }

    #[test]
    fn a_sequence_whose_drafts_do_not_pay_probes_ever_more_rarely() {
        let cfg = SpecConfig {
            drafter: Drafter::Model { vocab_window: None },
            length: 5,
            adaptive: true,
        };
        let mut s = SeqSpec::new(cfg, &SamplerConfig::greedy(), 100, 0.3);
        for _ in 0..20 {
            s.record(0);
        }
        let mut probes = Vec::new();
        for step in 0..(PROBE_EVERY * 7) {
            match s.want(5, 1) {
                0 => {}
                k => {
                    assert_eq!(k, 1);
                    probes.push(step + 1);
                }
            }
        }
        // After 16 steps, then 32, then 64 more.
        assert_eq!(probes, vec![16, 48, 112]);
        // Probes that keep their token make drafts pay again.
        for _ in 0..20 {
            s.record(1);
        }
        assert!(s.want(5, 1) > 0);
    }
}
