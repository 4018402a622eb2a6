//! Self-speculation by layer skipping: the target model itself, with some of its layers left
//! out, drafts for the full model. It shares the target's weights and KV cache: the draft's
//! passes write keys and values (for the layers they run) at the positions ahead, and the
//! draft rolls them back before the full model verifies those positions.

use crate::error::ModelError;
use crate::sampler::{Rng, Sampler, SamplerConfig};
use crate::session::Session;

use super::{verify, Draft, Proposer};

pub struct LayerSkip {
    /// `skip[l]`: layer `l` is left out of the draft.
    skip: Vec<bool>,
    picker: Picker,
    /// Stop drafting at a token the draft gives less than this probability.
    pub p_min: f32,
}

impl LayerSkip {
    /// Drafts with the layers `keep` names (each below `n_layers`; at least one, not all
    /// needed), choosing tokens as `sampler` would (greedy, or drawn with its filters).
    pub fn new(
        n_layers: usize,
        keep: &[usize],
        sampler: &SamplerConfig,
        vocab: usize,
    ) -> Result<LayerSkip, ModelError> {
        let mut skip = vec![true; n_layers];
        for &l in keep {
            match skip.get_mut(l) {
                Some(s) => *s = false,
                None => {
                    return Err(ModelError::Speculation(format!(
                        "draft layer {l} does not exist: the model has {n_layers} layers \
                         (0 to {})",
                        n_layers.saturating_sub(1)
                    )))
                }
            }
        }
        if skip.iter().all(|&s| s) {
            return Err(ModelError::Speculation(
                "the draft needs at least one layer".into(),
            ));
        }
        Ok(LayerSkip {
            skip,
            picker: Picker::new(sampler, vocab),
            p_min: 0.0,
        })
    }

    /// The layers the draft runs.
    pub fn kept(&self) -> Vec<usize> {
        (0..self.skip.len()).filter(|&l| !self.skip[l]).collect()
    }

    /// The default subset: the first fifth of the layers and the second half (measured on
    /// SmolLM2 and Qwen2.5-Coder-1.5B: the late layers cannot be skipped, the early middle
    /// ones can).
    pub fn default_layers(n_layers: usize) -> Vec<usize> {
        let head = n_layers.div_ceil(5);
        let tail = n_layers / 2;
        (0..n_layers).filter(|&l| l < head || l >= tail).collect()
    }
}

/// Parses a layer list: comma-separated layers and ranges, `0-11,22,23`.
pub fn parse_layers(spec: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let num = |s: &str| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| format!("'{s}' in '{spec}' is not a layer number"))
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    return Err(format!("the range '{part}' runs backwards"));
                }
                out.extend(a..=b);
            }
            None => out.push(num(part)?),
        }
    }
    if out.is_empty() {
        return Err(format!("'{spec}' names no layer"));
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

impl Proposer for LayerSkip {
    fn name(&self) -> &'static str {
        "layer-skip"
    }

    fn propose(
        &mut self,
        target: &mut Session,
        pending: u32,
        max: usize,
        draft: &mut Draft,
    ) -> Result<(), ModelError> {
        let n0 = target.n_past();
        let mut tok = pending;
        let result = (|| {
            for _ in 0..max {
                if target.n_past() >= target.n_ctx() {
                    break;
                }
                let logits = target.eval_skipping(std::slice::from_ref(&tok), &self.skip)?;
                match self.picker.pick(logits, draft, self.p_min) {
                    Some(t) => tok = t,
                    None => break,
                }
            }
            Ok(())
        })();
        if target.truncate(n0) != n0 {
            return Err(ModelError::Speculation(format!(
                "cannot roll the draft back to {n0} positions"
            )));
        }
        result
    }
}

/// How a draft chooses its tokens: the target's greedy choice at temperature 0, otherwise a
/// draw from the target's filters (top-k, top-p, min-p, temperature; penalties and DRY, whose
/// state the draft cannot roll back, left out — any proposal distribution is exact).
pub struct Picker {
    sampler: Sampler,
    rng: Rng,
    dist: Vec<(u32, f64)>,
    greedy: bool,
}

impl Picker {
    pub fn new(cfg: &SamplerConfig, vocab: usize) -> Picker {
        let cfg = SamplerConfig {
            repeat_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            dry_multiplier: 0.0,
            ..cfg.clone()
        };
        Picker {
            greedy: cfg.temperature <= 0.0,
            rng: Rng::new(cfg.seed ^ 0xd1b5_4a32_d192_ed03),
            sampler: Sampler::new(cfg, vocab),
            dist: Vec::new(),
        }
    }

    /// Chooses the next draft token from `logits` and appends it to `draft`; None (nothing
    /// appended) when the draft's own probability of its choice is below `p_min`, a token
    /// the target would likely reject (drafting it and what follows would be wasted work).
    pub fn pick(&mut self, logits: &[f32], draft: &mut Draft, p_min: f32) -> Option<u32> {
        if self.greedy {
            let t = self.sampler.sample(logits);
            if p_min > 0.0 && softmax_of(logits, t) < p_min as f64 {
                return None;
            }
            draft.push(t);
            return Some(t);
        }
        self.sampler.distribution(logits, &mut self.dist);
        let t = verify::draw(&mut self.rng, &self.dist);
        if verify::prob(&self.dist, t) < p_min as f64 {
            return None;
        }
        draft.push_drawn(t, &self.dist);
        Some(t)
    }
}

/// The softmax probability of `token` among `logits`.
fn softmax_of(logits: &[f32], token: u32) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    logits
        .get(token as usize)
        .map_or(0.0, |&l| ((l - max) as f64).exp() / sum)
}
