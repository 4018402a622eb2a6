//! Choosing the next token from logits: greedy, or a chain top-k → top-p → min-p →
//! temperature → draw, in llama.cpp's order, with a seeded generator (same seed, same text).
//! The candidate buffer is allocated once; sampling allocates nothing.

/// Sampling settings. `temperature <= 0` means greedy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplerConfig {
    pub temperature: f32,
    /// Keep the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p (1 = all).
    pub top_p: f32,
    /// Drop tokens less likely than min_p times the most likely one (0 = none).
    pub min_p: f32,
    pub seed: u64,
}

impl SamplerConfig {
    pub fn greedy() -> SamplerConfig {
        SamplerConfig {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 0,
        }
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
            seed: 0,
        }
    }
}

/// xoshiro256** seeded through splitmix64: small, fast, and stable across versions.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let r = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        r
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A sampler with its own generator and candidate buffer.
pub struct Sampler {
    cfg: SamplerConfig,
    rng: Rng,
    cand: Vec<(f32, u32)>,
}

impl Sampler {
    pub fn new(cfg: SamplerConfig, vocab: usize) -> Sampler {
        Sampler {
            cfg,
            rng: Rng::new(cfg.seed),
            cand: Vec::with_capacity(vocab),
        }
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// Picks a token from `logits` (one per vocabulary entry).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.cfg.temperature <= 0.0 || logits.len() <= 1 {
            return greedy(logits);
        }
        let c = &mut self.cand;
        c.clear();
        c.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, l)| !l.is_nan())
                .map(|(i, &l)| (l, i as u32)),
        );
        if c.is_empty() {
            return 0;
        }
        let by_logit = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        // Top-k: partition, then sort only the survivors.
        let k = if self.cfg.top_k == 0 {
            c.len()
        } else {
            self.cfg.top_k.min(c.len())
        };
        if k < c.len() {
            c.select_nth_unstable_by(k - 1, by_logit);
            c.truncate(k);
        }
        c.sort_unstable_by(by_logit);
        // Softmax of the candidates (before temperature, as llama.cpp's top-p/min-p see them).
        let max = c[0].0;
        let probs_sum: f64 = c.iter().map(|&(l, _)| ((l - max) as f64).exp()).sum();
        // Top-p.
        if self.cfg.top_p < 1.0 {
            let mut cum = 0.0f64;
            let mut keep = c.len();
            for (i, &(l, _)) in c.iter().enumerate() {
                cum += ((l - max) as f64).exp() / probs_sum;
                if cum >= self.cfg.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            c.truncate(keep.max(1));
        }
        // Min-p.
        if self.cfg.min_p > 0.0 {
            let floor = max + self.cfg.min_p.ln();
            let keep = c.iter().take_while(|&&(l, _)| l >= floor).count();
            c.truncate(keep.max(1));
        }
        // Temperature, then draw.
        let t = self.cfg.temperature as f64;
        let weights_sum: f64 = c.iter().map(|&(l, _)| ((l - max) as f64 / t).exp()).sum();
        let mut r = self.rng.next_f64() * weights_sum;
        for &(l, id) in c.iter() {
            r -= ((l - max) as f64 / t).exp();
            if r <= 0.0 {
                return id;
            }
        }
        c[c.len() - 1].1
    }
}

/// The index of the largest logit (the lowest id on ties).
pub fn greedy(logits: &[f32]) -> u32 {
    torchless_kernels::ops::argmax(logits) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(greedy(&[0.0, 3.0, 3.0, 1.0]), 1);
        let mut s = Sampler::new(SamplerConfig::greedy(), 4);
        assert_eq!(s.sample(&[0.0, 1.0, 5.0, 1.0]), 2);
    }

    #[test]
    fn same_seed_same_choices_and_filters_hold() {
        let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let cfg = SamplerConfig {
            temperature: 1.0,
            top_k: 5,
            top_p: 1.0,
            min_p: 0.0,
            seed: 42,
        };
        let run = |cfg| {
            let mut s = Sampler::new(cfg, 100);
            (0..50).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        let a = run(cfg);
        assert_eq!(a, run(cfg));
        assert_ne!(a, run(SamplerConfig { seed: 43, ..cfg }));
        let mut top5: Vec<u32> = (0..100u32).collect();
        top5.sort_by(|&x, &y| logits[y as usize].total_cmp(&logits[x as usize]));
        assert!(a.iter().all(|t| top5[..5].contains(t)), "top-k must hold");
        // top-p tiny keeps only the best; min-p 1 keeps only the best.
        let best = top5[0];
        let only = |cfg| run(cfg).iter().all(|&t| t == best);
        assert!(only(SamplerConfig {
            top_k: 0,
            top_p: 1e-6,
            ..cfg
        }));
        assert!(only(SamplerConfig {
            top_k: 0,
            min_p: 1.0,
            ..cfg
        }));
    }

    #[test]
    fn draws_follow_the_distribution() {
        // Two tokens with probabilities 0.75 / 0.25 at temperature 1.
        let logits = [3f32.ln(), 0.0];
        let mut s = Sampler::new(
            SamplerConfig {
                temperature: 1.0,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                seed: 7,
            },
            2,
        );
        let n = 20_000;
        let zeros = (0..n).filter(|_| s.sample(&logits) == 0).count();
        let frac = zeros as f64 / n as f64;
        assert!((frac - 0.75).abs() < 0.02, "{frac}");
    }
}
