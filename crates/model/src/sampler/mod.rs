//! Choosing the next token from logits: a chain of small stages with one interface
//! ([`stages::Stage`]: apply / accept / reset), composed as llama.cpp composes its samplers:
//! logit bias → repetition/frequency/presence penalties → DRY → top-k → typical-p → top-p →
//! min-p → temperature → seeded draw (or greedy at temperature 0). Same seed and settings,
//! same tokens. The candidate buffer is allocated once; with no penalty, bias or DRY set and
//! temperature 0 the choice is a plain argmax.

pub mod dry;
pub mod rng;
pub mod stages;

pub use rng::Rng;
use stages::{Candidates, Chain, Stage};

/// The longest window a penalty looks back over.
pub const MAX_WINDOW: usize = 1 << 20;

/// Sampling settings (each stage off at its neutral value).
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    /// `<= 0`: greedy.
    pub temperature: f32,
    /// Keep the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p (1 = all).
    pub top_p: f32,
    /// Drop tokens less likely than min_p times the most likely one (0 = none).
    pub min_p: f32,
    /// Locally typical sampling (1 = off).
    pub typical_p: f32,
    /// Divides the logit of tokens among the last `penalty_last_n` (1 = off).
    pub repeat_penalty: f32,
    /// Subtracted once from the logit of every token among the last `penalty_last_n`.
    pub presence_penalty: f32,
    /// Subtracted per occurrence among the last `penalty_last_n`.
    pub frequency_penalty: f32,
    pub penalty_last_n: usize,
    /// DRY: the penalty of a token that extends a repeat of `dry_allowed_length` tokens
    /// (0 = off), growing by `dry_base` per further token, over the last `dry_last_n` tokens
    /// (0: all), matches stopping at tokens holding one of `dry_breakers`.
    pub dry_multiplier: f32,
    pub dry_base: f32,
    pub dry_allowed_length: usize,
    pub dry_last_n: usize,
    pub dry_breakers: Vec<String>,
    /// Added to the logits of these tokens (`f32::NEG_INFINITY` bans one).
    pub logit_bias: Vec<(u32, f32)>,
    pub seed: u64,
}

impl SamplerConfig {
    pub fn greedy() -> SamplerConfig {
        SamplerConfig {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..SamplerConfig::default()
        }
    }

    fn penalizes(&self) -> bool {
        self.penalty_last_n > 0
            && (self.repeat_penalty != 1.0
                || self.presence_penalty != 0.0
                || self.frequency_penalty != 0.0)
    }

    /// Whether the chain needs more than the logits of this step (bias, penalties, DRY).
    fn reshapes(&self) -> bool {
        self.penalizes() || self.dry_multiplier > 0.0 || !self.logit_bias.is_empty()
    }

    /// The first setting out of its range, as (name, why).
    pub fn check(&self, vocab: usize) -> Result<(), (&'static str, String)> {
        let finite = |name, v: f32| {
            if v.is_finite() {
                Ok(())
            } else {
                Err((name, format!("{name} must be a finite number")))
            }
        };
        finite("temperature", self.temperature)?;
        finite("repeat_penalty", self.repeat_penalty)?;
        finite("presence_penalty", self.presence_penalty)?;
        finite("frequency_penalty", self.frequency_penalty)?;
        finite("dry_multiplier", self.dry_multiplier)?;
        for (name, v) in [
            ("top_p", self.top_p),
            ("min_p", self.min_p),
            ("typical_p", self.typical_p),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err((name, format!("{name} must lie in [0, 1]")));
            }
        }
        if self.repeat_penalty <= 0.0 {
            return Err(("repeat_penalty", "repeat_penalty must be above 0".into()));
        }
        for (name, n) in [
            ("penalty_last_n", self.penalty_last_n),
            ("dry_last_n", self.dry_last_n),
        ] {
            if n > MAX_WINDOW {
                return Err((name, format!("{name} must be at most {MAX_WINDOW}")));
            }
        }
        if !(self.dry_base.is_finite() && self.dry_base >= 1.0) {
            return Err(("dry_base", "dry_base must be at least 1".into()));
        }
        if let Some(&(t, _)) = self.logit_bias.iter().find(|b| b.0 as usize >= vocab) {
            return Err((
                "logit_bias",
                format!("token {t} is not in the vocabulary of {vocab}"),
            ));
        }
        if self
            .logit_bias
            .iter()
            .any(|b| b.1.is_nan() || b.1 == f32::INFINITY)
        {
            return Err((
                "logit_bias",
                "a bias must be a number (or -inf to ban a token)".into(),
            ));
        }
        Ok(())
    }
}

impl Default for SamplerConfig {
    /// llama.cpp's defaults.
    fn default() -> SamplerConfig {
        SamplerConfig {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            typical_p: 1.0,
            repeat_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            penalty_last_n: 64,
            dry_multiplier: 0.0,
            dry_base: 1.75,
            dry_allowed_length: 2,
            dry_last_n: 0,
            dry_breakers: ["\n", ":", "\"", "*"].map(String::from).to_vec(),
            logit_bias: Vec::new(),
            seed: 0,
        }
    }
}

/// The last stage: what picks the token from the shaped candidates.
enum Select {
    Greedy(stages::Greedy),
    Dist(stages::Dist),
}

impl Select {
    fn stage(&mut self) -> &mut dyn Stage {
        match self {
            Select::Greedy(s) => s,
            Select::Dist(s) => s,
        }
    }
}

/// A sampler: its chain of stages and candidate buffer.
pub struct Sampler {
    cfg: SamplerConfig,
    /// Every stage before the selection.
    chain: Chain,
    select: Select,
    cand: Candidates,
    /// No stage needs more than an argmax.
    plain_greedy: bool,
}

impl Sampler {
    /// The chain `cfg` describes (no token breaks a DRY match: see [`Sampler::with_texts`]).
    pub fn new(cfg: SamplerConfig, vocab: usize) -> Sampler {
        Sampler::with_texts(cfg, vocab, |_| None)
    }

    /// [`Sampler::new`] with each token's decoded text (for DRY's sequence breakers).
    pub fn with_texts<'t>(
        cfg: SamplerConfig,
        vocab: usize,
        token_text: impl Fn(u32) -> Option<std::borrow::Cow<'t, str>>,
    ) -> Sampler {
        let mut chain = Chain::default();
        if !cfg.logit_bias.is_empty() {
            chain.push(stages::LogitBias::new(&cfg.logit_bias));
        }
        if cfg.penalizes() {
            chain.push(stages::Penalties::new(
                cfg.penalty_last_n,
                cfg.repeat_penalty,
                cfg.frequency_penalty,
                cfg.presence_penalty,
            ));
        }
        if cfg.dry_multiplier > 0.0 {
            let breaker = (0..vocab as u32)
                .map(|t| {
                    token_text(t)
                        .is_some_and(|s| cfg.dry_breakers.iter().any(|b| s.contains(b.as_str())))
                })
                .collect();
            chain.push(dry::Dry::new(
                cfg.dry_multiplier,
                cfg.dry_base,
                cfg.dry_allowed_length,
                cfg.dry_last_n,
                breaker,
            ));
        }
        let select = if cfg.temperature <= 0.0 {
            Select::Greedy(stages::Greedy)
        } else {
            chain.push(stages::TopK(cfg.top_k));
            chain.push(stages::Typical(cfg.typical_p));
            chain.push(stages::TopP(cfg.top_p));
            chain.push(stages::MinP(cfg.min_p));
            chain.push(stages::Temperature(cfg.temperature));
            Select::Dist(stages::Dist::new(cfg.seed))
        };
        Sampler {
            plain_greedy: cfg.temperature <= 0.0 && !cfg.reshapes(),
            cfg,
            chain,
            select,
            cand: Candidates {
                items: Vec::with_capacity(vocab),
                ..Candidates::default()
            },
        }
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// The stages in order.
    pub fn stages(&self) -> Vec<&'static str> {
        let mut names = self.chain.names();
        names.push(match &self.select {
            Select::Greedy(s) => s.name(),
            Select::Dist(s) => s.name(),
        });
        names
    }

    /// Picks a token from `logits` (one per vocabulary entry). It is not accepted: call
    /// [`Sampler::accept`] with the token that is kept.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.plain_greedy || logits.len() <= 1 {
            return greedy(logits);
        }
        self.cand.fill(logits);
        self.chain.apply(&mut self.cand);
        if self.cand.selected.is_none() && !self.cand.items.is_empty() {
            self.select.stage().apply(&mut self.cand);
        }
        self.cand.selected.unwrap_or(0)
    }

    /// The distribution [`Sampler::sample`] would draw from, given the tokens accepted so
    /// far: (token, probability) pairs summing to 1, most likely first. Greedy: the one token
    /// it picks, with probability 1. The generator is not advanced.
    pub fn distribution(&mut self, logits: &[f32], out: &mut Vec<(u32, f64)>) {
        out.clear();
        if self.plain_greedy || logits.len() <= 1 {
            out.push((greedy(logits), 1.0));
            return;
        }
        self.cand.fill(logits);
        self.chain.apply(&mut self.cand);
        let c = &mut self.cand;
        if c.selected.is_none() && !c.items.is_empty() {
            if let Select::Greedy(g) = &mut self.select {
                g.apply(c);
            }
        }
        if let Some(t) = c.selected {
            out.push((t, 1.0));
            return;
        }
        if c.items.is_empty() {
            out.push((0, 1.0));
            return;
        }
        c.sort();
        let (max, t) = (c.items[0].0, c.temperature);
        out.extend((c.items.iter()).map(|&(l, id)| (id, stages::Dist::weight(l, max, t))));
        let sum: f64 = out.iter().map(|x| x.1).sum();
        out.iter_mut().for_each(|x| x.1 /= sum);
        out.retain(|x| x.1 > 0.0);
    }

    /// Tells the stages that `token` is part of the text (prompt or output).
    pub fn accept(&mut self, token: u32) {
        self.chain.accept(token);
    }

    /// Forgets every accepted token and restarts the generator.
    pub fn reset(&mut self) {
        self.chain.reset();
        self.select.stage().reset();
    }
}

/// The index of the largest logit (the lowest id on ties).
pub fn greedy(logits: &[f32]) -> u32 {
    torchless_kernels::ops::argmax(logits) as u32
}

#[cfg(test)]
mod tests;
