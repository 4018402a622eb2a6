//! The stages of the sampler chain and the candidates they work on (llama.cpp's sampler
//! design): each stage narrows or reshapes the candidates (`apply`), learns the tokens chosen
//! (`accept`) and forgets them (`reset`); a [`Chain`] runs stages in order and is a stage
//! itself. The last stage of a chain selects the token.
//!
//! Order and arithmetic follow llama.cpp's: penalties work on raw logits, top-p and min-p on
//! the softmax before the temperature, and the temperature divides the logits only when the
//! draw computes its weights (in f64, so no rounding of scaled logits enters).

use std::collections::HashMap;
use std::collections::VecDeque;

use super::rng::Rng;

/// The tokens still in the running, with their logits.
#[derive(Debug, Default)]
pub struct Candidates {
    /// (logit, token).
    pub items: Vec<(f32, u32)>,
    /// `items[i]` holds token i (nothing filtered or reordered yet): stages may index by id.
    pub by_id: bool,
    /// Sorted by logit, highest first, lower ids first on ties.
    pub sorted: bool,
    /// What divides the logits when the draw weighs them.
    pub temperature: f64,
    /// The chosen token, once a selecting stage ran.
    pub selected: Option<u32>,
}

/// Highest logit first, lower id first on ties.
pub fn by_logit(a: &(f32, u32), b: &(f32, u32)) -> std::cmp::Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

impl Candidates {
    /// Every token of `logits` but NaNs, in id order.
    pub fn fill(&mut self, logits: &[f32]) {
        self.items.clear();
        let valid = (logits.iter().enumerate()).filter(|(_, l)| !l.is_nan());
        self.items.extend(valid.map(|(i, &l)| (l, i as u32)));
        self.by_id = self.items.len() == logits.len();
        self.sorted = false;
        self.temperature = 1.0;
        self.selected = None;
    }

    pub fn sort(&mut self) {
        if !self.sorted {
            self.items.sort_unstable_by(by_logit);
            self.sorted = true;
        }
    }

    /// Changes the logit of each token of `tokens` to `f(token, logit)` where that gives one
    /// (every candidate is asked when they are no longer in id order).
    pub fn adjust(
        &mut self,
        tokens: impl Iterator<Item = u32>,
        f: impl Fn(u32, f32) -> Option<f32>,
    ) {
        if self.by_id {
            for t in tokens {
                if let Some(item) = self.items.get_mut(t as usize) {
                    if let Some(l) = f(t, item.0) {
                        item.0 = l;
                    }
                }
            }
        } else {
            for item in &mut self.items {
                if let Some(l) = f(item.1, item.0) {
                    item.0 = l;
                }
            }
        }
        self.sorted = false;
    }

    /// Changes the logit of `token`, wherever it is.
    pub fn adjust_one(&mut self, token: u32, f: impl Fn(f32) -> f32) {
        self.adjust(std::iter::once(token), |t, l| (t == token).then(|| f(l)));
    }

    /// Softmax probabilities of the (sorted) candidates before the temperature, in f64.
    fn probs(&self) -> impl Iterator<Item = f64> + '_ {
        let max = self.items.first().map_or(0.0, |c| c.0);
        let sum: f64 = self
            .items
            .iter()
            .map(|&(l, _)| ((l - max) as f64).exp())
            .sum();
        self.items
            .iter()
            .map(move |&(l, _)| ((l - max) as f64).exp() / sum)
    }
}

/// One step of the chain.
pub trait Stage: Send {
    fn name(&self) -> &'static str;
    /// Narrows, reshapes or selects among the candidates.
    fn apply(&mut self, c: &mut Candidates);
    /// Learns that `token` was chosen (or is part of the prompt).
    fn accept(&mut self, _token: u32) {}
    /// Forgets every token it learned.
    fn reset(&mut self) {}
}

/// Stages run in order; a chain is a stage too.
#[derive(Default)]
pub struct Chain {
    stages: Vec<Box<dyn Stage>>,
}

impl Chain {
    pub fn push(&mut self, s: impl Stage + 'static) {
        self.stages.push(Box::new(s));
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.stages.iter().map(|s| s.name()).collect()
    }
}

impl Stage for Chain {
    fn name(&self) -> &'static str {
        "chain"
    }

    fn apply(&mut self, c: &mut Candidates) {
        for s in &mut self.stages {
            if c.items.is_empty() || c.selected.is_some() {
                return;
            }
            s.apply(c);
        }
    }

    fn accept(&mut self, token: u32) {
        self.stages.iter_mut().for_each(|s| s.accept(token));
    }

    fn reset(&mut self) {
        self.stages.iter_mut().for_each(|s| s.reset());
    }
}

/// Adds a fixed bias to some tokens' logits (OpenAI's `logit_bias`; -inf bans a token).
pub struct LogitBias(Vec<(u32, f32)>);

impl LogitBias {
    /// Biases of the same token add up.
    pub fn new(biases: &[(u32, f32)]) -> LogitBias {
        let mut v: Vec<(u32, f32)> = Vec::with_capacity(biases.len());
        for &(t, b) in biases {
            match v.iter_mut().find(|x| x.0 == t) {
                Some(x) => x.1 += b,
                None => v.push((t, b)),
            }
        }
        LogitBias(v)
    }
}

impl Stage for LogitBias {
    fn name(&self) -> &'static str {
        "logit-bias"
    }

    fn apply(&mut self, c: &mut Candidates) {
        let map: &[(u32, f32)] = &self.0;
        let bias = |t: u32| map.iter().find(|b| b.0 == t).map(|b| b.1);
        c.adjust(map.iter().map(|b| b.0), |t, l| bias(t).map(|b| l + b));
    }
}

/// Repetition, frequency and presence penalties over the last `last_n` tokens: a logit is
/// divided by `repeat` (multiplied where it is negative), then lowered by `count · frequency
/// + presence` (llama.cpp's arithmetic).
pub struct Penalties {
    pub last_n: usize,
    pub repeat: f32,
    pub frequency: f32,
    pub presence: f32,
    window: VecDeque<u32>,
    counts: HashMap<u32, u32>,
}

impl Penalties {
    pub fn new(last_n: usize, repeat: f32, frequency: f32, presence: f32) -> Penalties {
        Penalties {
            last_n,
            repeat,
            frequency,
            presence,
            window: VecDeque::with_capacity(last_n.min(4096)),
            counts: HashMap::with_capacity(last_n.min(4096)),
        }
    }
}

impl Stage for Penalties {
    fn name(&self) -> &'static str {
        "penalties"
    }

    fn apply(&mut self, c: &mut Candidates) {
        let (repeat, freq, pres) = (self.repeat, self.frequency, self.presence);
        let counts = &self.counts;
        c.adjust(counts.keys().copied(), |t, l| {
            let n = *counts.get(&t)?;
            let l = if l <= 0.0 { l * repeat } else { l / repeat };
            Some(l - n as f32 * freq - if n > 0 { pres } else { 0.0 })
        });
    }

    fn accept(&mut self, token: u32) {
        if self.last_n == 0 {
            return;
        }
        if self.window.len() == self.last_n {
            if let Some(old) = self.window.pop_front() {
                if let Some(n) = self.counts.get_mut(&old) {
                    *n -= 1;
                    if *n == 0 {
                        self.counts.remove(&old);
                    }
                }
            }
        }
        self.window.push_back(token);
        *self.counts.entry(token).or_insert(0) += 1;
    }

    fn reset(&mut self) {
        self.window.clear();
        self.counts.clear();
    }
}

/// Keeps the `k` most likely tokens (0: all), leaving them sorted.
pub struct TopK(pub usize);

impl Stage for TopK {
    fn name(&self) -> &'static str {
        "top-k"
    }

    fn apply(&mut self, c: &mut Candidates) {
        let k = if self.0 == 0 {
            c.items.len()
        } else {
            self.0.min(c.items.len())
        };
        if k < c.items.len() {
            c.items.select_nth_unstable_by(k - 1, by_logit);
            c.items.truncate(k);
            c.sorted = false;
        }
        c.by_id = false;
        c.sort();
    }
}

/// Locally typical sampling: keeps the tokens whose surprise is closest to the entropy, up
/// to probability `p` (1: all).
pub struct Typical(pub f32);

impl Stage for Typical {
    fn name(&self) -> &'static str {
        "typical-p"
    }

    fn apply(&mut self, c: &mut Candidates) {
        if self.0 >= 1.0 {
            return;
        }
        c.sort();
        let probs: Vec<f64> = c.probs().collect();
        let entropy: f64 = -probs
            .iter()
            .filter(|&&p| p > 0.0)
            .map(|p| p * p.ln())
            .sum::<f64>();
        let mut order: Vec<usize> = (0..probs.len()).collect();
        let shift = |i: usize| (-probs[i].ln() - entropy).abs();
        order.sort_by(|&a, &b| shift(a).total_cmp(&shift(b)).then(a.cmp(&b)));
        let mut cum = 0.0;
        let mut keep = order.len();
        for (n, &i) in order.iter().enumerate() {
            cum += probs[i];
            if cum > self.0 as f64 {
                keep = n + 1;
                break;
            }
        }
        let kept: Vec<(f32, u32)> = order[..keep].iter().map(|&i| c.items[i]).collect();
        c.items.clear();
        c.items.extend(kept);
        c.by_id = false;
        c.sorted = false;
        c.sort();
    }
}

/// Keeps the most likely tokens up to probability `p` (1: all; at least one).
pub struct TopP(pub f32);

impl Stage for TopP {
    fn name(&self) -> &'static str {
        "top-p"
    }

    fn apply(&mut self, c: &mut Candidates) {
        if self.0 >= 1.0 {
            return;
        }
        c.sort();
        let mut cum = 0.0f64;
        let mut keep = c.items.len();
        for (i, p) in c.probs().enumerate() {
            cum += p;
            if cum >= self.0 as f64 {
                keep = i + 1;
                break;
            }
        }
        c.items.truncate(keep.max(1));
        c.by_id = false;
    }
}

/// Drops the tokens less likely than `p` times the most likely one (0: none).
pub struct MinP(pub f32);

impl Stage for MinP {
    fn name(&self) -> &'static str {
        "min-p"
    }

    fn apply(&mut self, c: &mut Candidates) {
        if self.0 <= 0.0 {
            return;
        }
        c.sort();
        let floor = c.items[0].0 + self.0.ln();
        let keep = c.items.iter().take_while(|&&(l, _)| l >= floor).count();
        c.items.truncate(keep.max(1));
        c.by_id = false;
    }
}

/// Divides the logits by `t` for the draw.
pub struct Temperature(pub f32);

impl Stage for Temperature {
    fn name(&self) -> &'static str {
        "temperature"
    }

    fn apply(&mut self, c: &mut Candidates) {
        c.temperature *= self.0 as f64;
    }
}

/// Selects the most likely token (the lowest id on ties).
pub struct Greedy;

impl Stage for Greedy {
    fn name(&self) -> &'static str {
        "greedy"
    }

    fn apply(&mut self, c: &mut Candidates) {
        let best = c
            .items
            .iter()
            .copied()
            .reduce(|a, b| match by_logit(&a, &b) {
                std::cmp::Ordering::Greater => b,
                _ => a,
            });
        c.selected = best.map(|b| b.1);
    }
}

/// Draws a token in proportion to `exp(logit / temperature)`, from a seeded generator.
pub struct Dist {
    seed: u64,
    rng: Rng,
}

impl Dist {
    pub fn new(seed: u64) -> Dist {
        Dist {
            seed,
            rng: Rng::new(seed),
        }
    }

    /// A candidate's unnormalized weight: `exp((logit - max) / temperature)`, in f64.
    pub fn weight(logit: f32, max: f32, temperature: f64) -> f64 {
        ((logit - max) as f64 / temperature).exp()
    }
}

impl Stage for Dist {
    fn name(&self) -> &'static str {
        "dist"
    }

    fn apply(&mut self, c: &mut Candidates) {
        c.sort();
        let (max, t) = (c.items[0].0, c.temperature);
        let weight = |l: f32| Dist::weight(l, max, t);
        let sum: f64 = c.items.iter().map(|&(l, _)| weight(l)).sum();
        let mut r = self.rng.next_f64() * sum;
        for &(l, id) in &c.items {
            r -= weight(l);
            if r <= 0.0 {
                c.selected = Some(id);
                return;
            }
        }
        // Rounding left a sliver: the last token that has any weight.
        c.selected = (c.items.iter().rev())
            .find(|&&(l, _)| weight(l) > 0.0)
            .or(c.items.first())
            .map(|x| x.1);
    }

    fn reset(&mut self) {
        self.rng = Rng::new(self.seed);
    }
}
