//! Speculative decoding: a proposer drafts a few tokens, the target model checks them all in
//! ONE batched forward pass, and the cache is rolled back past the first rejected one.
//!
//! Kept tokens follow the rule of speculative sampling ([`verify`]), so the output is
//! distributed exactly as the target's own samples; at temperature 0 a draft stands only where
//! it is the target's greedy choice. The target session must compute in batch-invariant
//! numerics: then the rows of a verification pass are bit for bit the logits one-at-a-time
//! decoding gives, and greedy speculative output equals plain greedy output token for token.
//!
//! Proposers ([`Proposer`]): another model ([`draft_model`]), the target with some of its layers
//! skipped ([`layer_skip`]), and n-gram lookup in the context ([`lookup`]). This module runs the
//! rounds, chooses the draft length and counts; it knows nothing of how a proposer drafts.

pub mod draft_model;
pub mod layer_skip;
pub mod lookup;
pub mod verify;

use std::time::Instant;

use torchless_kernels::Numerics;

use crate::error::ModelError;
use crate::generate::{GenerateOptions, Generation, StopReason, Timings};
use crate::sampler::Sampler;
use crate::session::Session;

pub use draft_model::{check_vocab, DraftModel};
pub use layer_skip::{parse_layers, LayerSkip, Picker};
pub use lookup::PromptLookup;
use verify::{Verdict, Verifier};

/// The longest draft of one round.
pub const MAX_DRAFT: usize = 16;
/// The range adaptive drafting moves in.
pub const ADAPTIVE_MIN: usize = 2;
pub const ADAPTIVE_MAX: usize = 8;

/// Drafted tokens and the distributions they were drawn from.
#[derive(Debug, Default)]
pub struct Draft {
    tokens: Vec<u32>,
    /// `dists[i]`: the distribution `tokens[i]` was drawn from (empty: a point mass).
    dists: Vec<Vec<(u32, f64)>>,
}

impl Draft {
    pub fn clear(&mut self) {
        self.tokens.clear();
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// A token chosen deterministically (copied, or the draft's greedy choice).
    pub fn push(&mut self, token: u32) {
        self.push_drawn(token, &[]);
    }

    /// A token drawn from `dist`.
    pub fn push_drawn(&mut self, token: u32, dist: &[(u32, f64)]) {
        let i = self.tokens.len();
        self.tokens.push(token);
        if self.dists.len() <= i {
            self.dists.push(Vec::new());
        }
        self.dists[i].clear();
        self.dists[i].extend_from_slice(dist);
    }

    /// The distribution token `i` was drawn from (`None`: a point mass).
    pub fn dist(&self, i: usize) -> Option<&[(u32, f64)]> {
        let d = self.dists.get(i)?;
        (!d.is_empty()).then_some(d.as_slice())
    }

    /// Keeps the first `n` drafted tokens.
    pub fn truncate(&mut self, n: usize) {
        self.tokens.truncate(n);
    }
}

/// What drafts tokens for the target to check.
pub trait Proposer {
    /// A short name for statistics ("draft-model", "layer-skip", "lookup").
    fn name(&self) -> &'static str;

    /// Drafts up to `max` tokens continuing the target's text — `target`'s history followed by
    /// `pending`, which the target has not evaluated yet — into `draft` (empty on entry). The
    /// target session must be left holding what it held.
    fn propose(
        &mut self,
        target: &mut Session,
        pending: u32,
        max: usize,
        draft: &mut Draft,
    ) -> Result<(), ModelError>;
}

/// How to speculate.
#[derive(Clone, Copy, Debug)]
pub struct SpecOptions {
    /// Tokens drafted per round (the start when adaptive).
    pub length: usize,
    /// Move the draft length between [`ADAPTIVE_MIN`] and [`ADAPTIVE_MAX`] to what the running
    /// acceptance rate and the measured costs make best.
    pub adaptive: bool,
}

impl Default for SpecOptions {
    fn default() -> Self {
        SpecOptions {
            length: 5,
            adaptive: true,
        }
    }
}

/// Counts and times of a speculative generation.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SpecStats {
    /// Verification passes of the target.
    pub rounds: usize,
    pub drafted: usize,
    pub accepted: usize,
    /// Tokens emitted by the rounds.
    pub emitted: usize,
    pub draft_secs: f64,
    pub verify_secs: f64,
}

impl SpecStats {
    /// Drafted tokens that stood.
    pub fn acceptance(&self) -> f64 {
        ratio(self.accepted, self.drafted)
    }

    /// Tokens out per target pass.
    pub fn tokens_per_pass(&self) -> f64 {
        ratio(self.emitted, self.rounds)
    }

    /// The share of the rounds' time spent drafting.
    pub fn draft_share(&self) -> f64 {
        let total = self.draft_secs + self.verify_secs;
        if total > 0.0 {
            self.draft_secs / total
        } else {
            0.0
        }
    }

    pub fn add(&mut self, o: &SpecStats) {
        self.rounds += o.rounds;
        self.drafted += o.drafted;
        self.accepted += o.accepted;
        self.emitted += o.emitted;
        self.draft_secs += o.draft_secs;
        self.verify_secs += o.verify_secs;
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b > 0 {
        a as f64 / b as f64
    } else {
        0.0
    }
}

/// Chooses each round's draft length from the running acceptance rate and measured costs:
/// the length in range that maximizes expected tokens per second, where a round that drafts
/// k tokens at acceptance rate a emits (1 − a^(k+1)) / (1 − a) tokens and costs k drafted
/// tokens plus one verification of k + 1 tokens. It moves one step per round.
#[derive(Clone, Debug)]
struct Adapt {
    k: usize,
    adaptive: bool,
    /// Decayed counts of drafts kept and of rejections.
    kept: f64,
    rejected: f64,
    /// Seconds per drafted token.
    draft_cost: Option<f64>,
    /// Seconds per verification pass of n tokens, by n.
    verify_cost: [Option<f64>; MAX_DRAFT + 2],
}

const DECAY: f64 = 0.9;

impl Adapt {
    fn new(o: &SpecOptions) -> Adapt {
        let k = if o.adaptive {
            o.length.clamp(ADAPTIVE_MIN, ADAPTIVE_MAX)
        } else {
            o.length.clamp(1, MAX_DRAFT)
        };
        Adapt {
            k,
            adaptive: o.adaptive,
            kept: 0.0,
            rejected: 0.0,
            draft_cost: None,
            verify_cost: [None; MAX_DRAFT + 2],
        }
    }

    fn ema(slot: &mut Option<f64>, v: f64) {
        *slot = Some(slot.map_or(v, |old| 0.8 * old + 0.2 * v));
    }

    fn record(&mut self, drafted: usize, kept: usize, draft_secs: f64, verify_secs: f64) {
        self.kept = self.kept * DECAY + kept as f64;
        self.rejected = self.rejected * DECAY + (kept < drafted) as usize as f64;
        if drafted > 0 {
            Adapt::ema(&mut self.draft_cost, draft_secs / drafted as f64);
        }
        Adapt::ema(&mut self.verify_cost[drafted + 1], verify_secs);
        if self.adaptive && drafted == self.k {
            self.k = self.best_next();
        }
    }

    /// The verification cost of `n` tokens: measured, or extrapolated from the nearest
    /// measured size as a pass whose cost grows by a tenth per token.
    fn verify(&self, n: usize) -> Option<f64> {
        if let Some(c) = self.verify_cost[n] {
            return Some(c);
        }
        let near = (1..self.verify_cost.len())
            .filter_map(|m| self.verify_cost[m].map(|c| (m, c)))
            .min_by_key(|&(m, _)| m.abs_diff(n))?;
        Some(near.1 * (1.0 + 0.1 * (n as f64 - near.0 as f64)).max(0.5))
    }

    fn best_next(&self) -> usize {
        let a = (self.kept + 0.5) / (self.kept + self.rejected + 1.0);
        let rate = |k: usize| -> Option<f64> {
            let emitted = (1.0 - a.powi(k as i32 + 1)) / (1.0 - a);
            Some(emitted / (k as f64 * self.draft_cost? + self.verify(k + 1)?))
        };
        let lo = (self.k - 1).max(ADAPTIVE_MIN);
        let hi = (self.k + 1).min(ADAPTIVE_MAX);
        (lo..=hi)
            .filter_map(|k| rate(k).map(|r| (k, r)))
            .max_by(|x, y| x.1.total_cmp(&y.1))
            .map_or(self.k, |b| b.0)
    }
}

/// Generates a continuation of `prompt` as [`crate::generate`] does, drafting with `proposer`
/// and verifying each draft in one pass of the target `session` (which must compute in
/// batch-invariant numerics). Returns the generation and the speculation's statistics.
pub fn generate(
    session: &mut Session,
    proposer: &mut dyn Proposer,
    prompt: &[u32],
    opts: &GenerateOptions,
    spec: &SpecOptions,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<(Generation, SpecStats), ModelError> {
    if prompt.is_empty() {
        return Err(ModelError::Invalid("the prompt is empty".into()));
    }
    if session.numerics() != Numerics::BatchInvariant {
        return Err(ModelError::Speculation(
            "the target session must compute in batch-invariant numerics, so that a \
             verification pass gives the logits of one-at-a-time decoding"
                .into(),
        ));
    }
    if opts.record_logits {
        return Err(ModelError::Speculation(
            "logits are not recorded while speculating".into(),
        ));
    }
    let model = session.model_ref();
    let vocab = model.config().vocab;
    let tokenizer = model.tokenizer();
    let mut sampler = Sampler::with_texts(opts.sampler.clone(), vocab, |t| {
        tokenizer.map(|tok| String::from_utf8_lossy(tok.token_bytes(t, false)))
    });
    (session.history().iter().chain(prompt)).for_each(|&t| sampler.accept(t));
    let mut verifier = Verifier::new(opts.sampler.seed ^ 0x9e37_79b9_7f4a_7c15);
    let mut adapt = Adapt::new(spec);
    let mut stats = SpecStats::default();
    let mut timings = Timings {
        prompt_tokens: prompt.len(),
        ..Timings::default()
    };
    let mut generated = Vec::with_capacity(opts.max_tokens.min(session.n_ctx()));
    let mut draft = Draft::default();
    let mut p = Vec::new();
    let max_rows = MAX_DRAFT + 1;
    let mut rows = vec![0.0f32; max_rows * vocab];
    let mut input = Vec::with_capacity(max_rows);

    // The prompt but its last token; that one opens the first round, as every round opens
    // with the token the target has not evaluated yet.
    let t0 = Instant::now();
    let (head, last) = prompt.split_at(prompt.len() - 1);
    if !head.is_empty() {
        session.eval_with(head, false, |_, _| {})?;
    }
    timings.prompt_secs = t0.elapsed().as_secs_f64();
    let mut pending = last[0];

    let t1 = Instant::now();
    let mut stop = StopReason::MaxTokens;
    'rounds: while generated.len() < opts.max_tokens {
        let n0 = session.n_past();
        if n0 >= session.n_ctx() {
            stop = StopReason::ContextFull;
            break;
        }
        let room = session.n_ctx() - n0 - 1;
        let useful = opts.max_tokens - generated.len() - 1;
        let want = adapt.k.min(room).min(useful);
        draft.clear();
        let td = Instant::now();
        if want > 0 {
            proposer.propose(session, pending, want, &mut draft)?;
            draft.truncate(want);
            if session.n_past() != n0 {
                return Err(ModelError::Speculation(format!(
                    "the {} proposer left the target session changed",
                    proposer.name()
                )));
            }
        }
        let draft_secs = td.elapsed().as_secs_f64();

        let tv = Instant::now();
        input.clear();
        input.push(pending);
        input.extend_from_slice(draft.tokens());
        session.eval_with(&input, true, |i, row| {
            rows[i * vocab..(i + 1) * vocab].copy_from_slice(row)
        })?;
        let verify_secs = tv.elapsed().as_secs_f64();
        stats.rounds += 1;
        stats.drafted += draft.len();
        stats.draft_secs += draft_secs;
        stats.verify_secs += verify_secs;

        let mut kept = 0;
        for i in 0..=draft.len() {
            sampler.distribution(&rows[i * vocab..(i + 1) * vocab], &mut p);
            let (tok, stands) = match draft.tokens().get(i) {
                Some(&d) => match verifier.check(&p, d, draft.dist(i)) {
                    Verdict::Accepted(t) => (t, true),
                    Verdict::Replaced(t) => (t, false),
                },
                None => (verify::draw(&mut verifier.rng, &p), false),
            };
            kept += stands as usize;
            sampler.accept(tok);
            generated.push(tok);
            stats.emitted += 1;
            let keep_going = on_token(tok);
            let ending = if opts.stop_at_eog && tokenizer.is_some_and(|t| t.is_eog(tok)) {
                Some(StopReason::EndOfGeneration)
            } else if !keep_going {
                Some(StopReason::Cancelled)
            } else if generated.len() == opts.max_tokens {
                Some(StopReason::MaxTokens)
            } else {
                None
            };
            if !stands || ending.is_some() {
                // The session keeps `pending` and the drafts before this token; this token
                // opens the next round.
                let n_keep = n0 + 1 + i;
                if session.truncate(n_keep) != n_keep {
                    return Err(ModelError::Speculation(format!(
                        "cannot roll the cache back to {n_keep} positions"
                    )));
                }
                pending = tok;
                stats.accepted += kept;
                adapt.record(draft.len(), kept, draft_secs, verify_secs);
                if let Some(s) = ending {
                    stop = s;
                    break 'rounds;
                }
                continue 'rounds;
            }
        }
        // (The last row never stands: every round ends inside the loop above.)
    }
    timings.gen_tokens = generated.len();
    timings.gen_secs = t1.elapsed().as_secs_f64();
    Ok((
        Generation {
            generated,
            stop,
            timings,
        },
        stats,
    ))
}

#[cfg(test)]
mod tests;
