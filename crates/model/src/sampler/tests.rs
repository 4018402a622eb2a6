//! The sampler chain: each stage against hand-computed values and distributions, seeded runs.

use super::stages::{Candidates, Penalties, Stage};
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
        ..SamplerConfig::default()
    };
    let run = |cfg: SamplerConfig| {
        let mut s = Sampler::new(cfg, 100);
        (0..50).map(|_| s.sample(&logits)).collect::<Vec<_>>()
    };
    let a = run(cfg.clone());
    assert_eq!(a, run(cfg.clone()));
    assert_ne!(
        a,
        run(SamplerConfig {
            seed: 43,
            ..cfg.clone()
        })
    );
    let mut top5: Vec<u32> = (0..100u32).collect();
    top5.sort_by(|&x, &y| logits[y as usize].total_cmp(&logits[x as usize]));
    assert!(a.iter().all(|t| top5[..5].contains(t)), "top-k must hold");
    // top-p tiny keeps only the best; min-p 1 keeps only the best.
    let best = top5[0];
    let only = |cfg: SamplerConfig| run(cfg).iter().all(|&t| t == best);
    assert!(only(SamplerConfig {
        top_k: 0,
        top_p: 1e-6,
        ..cfg.clone()
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
            ..SamplerConfig::default()
        },
        2,
    );
    let n = 20_000;
    let zeros = (0..n).filter(|_| s.sample(&logits) == 0).count();
    let frac = zeros as f64 / n as f64;
    assert!((frac - 0.75).abs() < 0.02, "{frac}");
}

/// Frequencies of each token over `n` seeded draws.
fn freq(cfg: SamplerConfig, logits: &[f32], n: usize) -> Vec<f64> {
    let mut s = Sampler::new(cfg, logits.len());
    let mut counts = vec![0usize; logits.len()];
    for _ in 0..n {
        counts[s.sample(logits) as usize] += 1;
    }
    counts.iter().map(|&c| c as f64 / n as f64).collect()
}

fn close(got: &[f64], want: &[f64]) {
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 0.01, "got {got:?}, want {want:?}");
    }
}

/// Probabilities 0.5, 0.3, 0.15, 0.05 at temperature 1, nothing else filtering.
fn four() -> (Vec<f32>, SamplerConfig) {
    let logits = [0.5f32, 0.3, 0.15, 0.05].map(f32::ln).to_vec();
    let cfg = SamplerConfig {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        seed: 11,
        ..SamplerConfig::default()
    };
    (logits, cfg)
}

#[test]
fn each_filtering_stage_gives_the_hand_computed_distribution() {
    let (l, cfg) = four();
    let n = 40_000;
    close(&freq(cfg.clone(), &l, n), &[0.5, 0.3, 0.15, 0.05]);
    // top-k 2: 0.5 / 0.3 renormalized.
    let two = [0.625, 0.375, 0.0, 0.0];
    close(
        &freq(
            SamplerConfig {
                top_k: 2,
                ..cfg.clone()
            },
            &l,
            n,
        ),
        &two,
    );
    // top-p 0.79: 0.5 + 0.3 reaches it.
    close(
        &freq(
            SamplerConfig {
                top_p: 0.79,
                ..cfg.clone()
            },
            &l,
            n,
        ),
        &two,
    );
    // min-p 0.35: floor 0.175 keeps 0.5 and 0.3.
    close(
        &freq(
            SamplerConfig {
                min_p: 0.35,
                ..cfg.clone()
            },
            &l,
            n,
        ),
        &two,
    );
    // typical-p 0.85: entropy 1.142; surprises 0.693, 1.204, 1.897, 2.996 are 0.449, 0.062,
    // 0.755, 1.853 from it, so tokens 1, 0, 2 are taken (0.3, 0.8, 0.95 > 0.85).
    let typ = [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0.0];
    close(
        &freq(
            SamplerConfig {
                typical_p: 0.85,
                ..cfg.clone()
            },
            &l,
            n,
        ),
        &typ,
    );
    // Temperature 2: p^(1/2) renormalized.
    let r: Vec<f64> = [0.5f64, 0.3, 0.15, 0.05].iter().map(|p| p.sqrt()).collect();
    let sum: f64 = r.iter().sum();
    let hot: Vec<f64> = r.iter().map(|x| x / sum).collect();
    close(
        &freq(
            SamplerConfig {
                temperature: 2.0,
                ..cfg.clone()
            },
            &l,
            n,
        ),
        &hot,
    );
    // A bias of ln 3 on token 3 triples its weight: 0.15 / 1.1 after renormalizing.
    let biased = SamplerConfig {
        logit_bias: vec![(3, 3f32.ln())],
        ..cfg.clone()
    };
    close(
        &freq(biased, &l, n),
        &[0.5 / 1.1, 0.3 / 1.1, 0.15 / 1.1, 0.15 / 1.1],
    );
    // -inf bans a token.
    let banned = SamplerConfig {
        logit_bias: vec![(0, f32::NEG_INFINITY)],
        ..cfg
    };
    close(&freq(banned, &l, n), &[0.0, 0.6, 0.3, 0.1]);
}

#[test]
fn penalties_follow_llama_cpp_arithmetic_over_their_window() {
    let mut p = Penalties::new(3, 2.0, 0.1, 0.5);
    for t in [0, 1, 0] {
        p.accept(t);
    }
    let mut c = Candidates::default();
    c.fill(&[2.0, -1.0, 0.5, 1.0]);
    p.apply(&mut c);
    // Token 0 (twice): 2 / 2 - 2 · 0.1 - 0.5; token 1 (once, negative): -1 · 2 - 0.1 - 0.5.
    let got: Vec<f32> = c.items.iter().map(|x| x.0).collect();
    assert_eq!(got, [2.0f32 / 2.0 - 0.2 - 0.5, -2.0 - 0.1 - 0.5, 0.5, 1.0]);
    // The window holds the last 3: accepting 2 and 3 pushes both 0s out... one of them now.
    p.accept(2);
    p.accept(3);
    c.fill(&[2.0, -1.0, 0.5, 1.0]);
    p.apply(&mut c);
    let got: Vec<f32> = c.items.iter().map(|x| x.0).collect();
    assert_eq!(
        got,
        [
            2.0f32 / 2.0 - 0.1 - 0.5,
            -1.0,
            0.5 / 2.0 - 0.1 - 0.5,
            1.0 / 2.0 - 0.1 - 0.5
        ]
    );
    p.reset();
    c.fill(&[2.0, -1.0, 0.5, 1.0]);
    p.apply(&mut c);
    assert_eq!(c.items[0].0, 2.0);
}

#[test]
fn greedy_with_a_penalty_moves_off_the_repeated_token() {
    let cfg = SamplerConfig {
        repeat_penalty: 1.5,
        ..SamplerConfig::greedy()
    };
    let mut s = Sampler::new(cfg, 3);
    let logits = [1.0, 0.8, 0.1];
    assert_eq!(s.sample(&logits), 0);
    s.accept(0);
    assert_eq!(s.sample(&logits), 1, "1.0 / 1.5 < 0.8");
    assert_eq!(s.stages(), ["penalties", "greedy"]);
}

#[test]
fn a_seeded_chain_reproduces_its_tokens() {
    let logits: Vec<f32> = (0..200).map(|i| (i as f32 * 0.13).cos() * 4.0).collect();
    let cfg = SamplerConfig {
        repeat_penalty: 1.3,
        frequency_penalty: 0.2,
        presence_penalty: 0.1,
        dry_multiplier: 0.8,
        typical_p: 0.95,
        logit_bias: vec![(5, 2.0)],
        seed: 99,
        ..SamplerConfig::default()
    };
    let run = |cfg: SamplerConfig| {
        let mut s = Sampler::new(cfg, 200);
        (0..100)
            .map(|_| {
                let t = s.sample(&logits);
                s.accept(t);
                t
            })
            .collect::<Vec<_>>()
    };
    let a = run(cfg.clone());
    assert_eq!(a, run(cfg.clone()));
    assert_ne!(
        a,
        run(SamplerConfig {
            seed: 100,
            ..cfg.clone()
        })
    );
    // reset() starts over: the same tokens again.
    let mut s = Sampler::new(cfg, 200);
    let first: Vec<u32> = (0..20)
        .map(|_| {
            let t = s.sample(&logits);
            s.accept(t);
            t
        })
        .collect();
    s.reset();
    let again: Vec<u32> = (0..20)
        .map(|_| {
            let t = s.sample(&logits);
            s.accept(t);
            t
        })
        .collect();
    assert_eq!(first, again);
}

#[test]
fn settings_out_of_range_are_named() {
    let bad = |c: SamplerConfig| c.check(10).unwrap_err().0;
    assert_eq!(
        bad(SamplerConfig {
            top_p: 1.5,
            ..SamplerConfig::default()
        }),
        "top_p"
    );
    assert_eq!(
        bad(SamplerConfig {
            repeat_penalty: 0.0,
            ..SamplerConfig::default()
        }),
        "repeat_penalty"
    );
    assert_eq!(
        bad(SamplerConfig {
            logit_bias: vec![(10, 1.0)],
            ..SamplerConfig::default()
        }),
        "logit_bias"
    );
    assert!(SamplerConfig::default().check(10).is_ok());
}
