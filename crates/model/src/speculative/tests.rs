//! The acceptance rule against exact distributions (chi-square), n-gram lookup, layer lists and
//! the draft-length controller. Runs through real models are in tests/speculative.rs.

use super::verify::{draw, Verdict, Verifier};
use super::*;
use crate::sampler::Rng;

/// Pearson's statistic of `counts` against probabilities `p` over `n` samples.
fn chi_square(counts: &[usize], p: &[f64], n: usize) -> f64 {
    (counts.iter().zip(p))
        .map(|(&c, &pi)| {
            let e = pi * n as f64;
            (c as f64 - e).powi(2) / e
        })
        .sum()
}

/// The 0.999 quantile of chi-square with `dof` degrees of freedom (Wilson–Hilferty).
fn chi_square_999(dof: usize) -> f64 {
    let k = dof as f64;
    let z = 3.090_232;
    k * (1.0 - 2.0 / (9.0 * k) + z * (2.0 / (9.0 * k)).sqrt()).powi(3)
}

fn sparse(p: &[f64]) -> Vec<(u32, f64)> {
    (p.iter().enumerate())
        .filter(|x| *x.1 > 0.0)
        .map(|(i, &v)| (i as u32, v))
        .collect()
}

/// One verified token: draw the draft from q, then check it against p.
fn one_token(v: &mut Verifier, rng: &mut Rng, p: &[(u32, f64)], q: &[(u32, f64)]) -> (u32, bool) {
    let d = draw(rng, q);
    match v.check(p, d, Some(q)) {
        Verdict::Accepted(t) => (t, true),
        Verdict::Replaced(t) => (t, false),
    }
}

#[test]
fn kept_and_replaced_tokens_follow_the_target_distribution() {
    // Target and draft disagree, including tokens only one of them can give.
    let p = [0.4, 0.25, 0.2, 0.1, 0.05, 0.0];
    let q = [0.1, 0.5, 0.0, 0.1, 0.1, 0.2];
    let (ps, qs) = (sparse(&p), sparse(&q));
    let mut v = Verifier::new(7);
    let mut rng = Rng::new(11);
    let n = 200_000;
    let mut counts = [0usize; 6];
    let mut accepted = 0;
    for _ in 0..n {
        let (t, kept) = one_token(&mut v, &mut rng, &ps, &qs);
        counts[t as usize] += 1;
        accepted += kept as usize;
    }
    assert_eq!(counts[5], 0, "a token the target never gives came out");
    let stat = chi_square(&counts[..5], &p[..5], n);
    assert!(stat < chi_square_999(4), "chi-square {stat}: {counts:?}");
    // The acceptance rate is Σ min(p, q) = 0.1 + 0.25 + 0 + 0.1 + 0.05 = 0.5.
    let rate = accepted as f64 / n as f64;
    assert!((rate - 0.5).abs() < 0.01, "acceptance {rate}");
}

#[test]
fn a_point_mass_draft_is_kept_with_the_target_probability() {
    let p = [0.6, 0.3, 0.1];
    let ps = sparse(&p);
    let mut v = Verifier::new(3);
    let n = 100_000;
    let mut counts = [0usize; 3];
    let mut kept = 0;
    for _ in 0..n {
        let t = match v.check(&ps, 1, None) {
            Verdict::Accepted(t) => {
                kept += 1;
                t
            }
            Verdict::Replaced(t) => {
                assert_ne!(t, 1, "the rejected draft came back");
                t
            }
        };
        counts[t as usize] += 1;
    }
    assert!(chi_square(&counts, &p, n) < chi_square_999(2), "{counts:?}");
    assert!((kept as f64 / n as f64 - 0.3).abs() < 0.01);
}

#[test]
fn greedy_keeps_exactly_the_argmax() {
    let mut v = Verifier::new(0);
    for _ in 0..100 {
        assert_eq!(v.check(&[(4, 1.0)], 4, None), Verdict::Accepted(4));
        assert_eq!(v.check(&[(4, 1.0)], 2, None), Verdict::Replaced(4));
    }
}

#[test]
fn lookup_copies_what_followed_the_longest_latest_match() {
    let l = PromptLookup::new(3);
    let mut d = Draft::default();
    // "1 2 3 9 | 5 2 3 7 8 | 2 3": the 2-gram "2 3" last occurred before "7 8".
    l.find(&[1, 2, 3, 9, 5, 2, 3, 7, 8, 2, 3], 4, &mut d);
    assert_eq!(d.tokens(), &[7, 8, 2, 3]);
    // A longer match wins over a later shorter one: "1 2 3" → 4.
    d.clear();
    l.find(&[1, 2, 3, 4, 2, 3, 5, 1, 2, 3], 2, &mut d);
    assert_eq!(d.tokens(), &[4, 2]);
    // No match, no draft.
    d.clear();
    l.find(&[1, 2, 3, 4], 4, &mut d);
    assert!(d.is_empty());
    d.clear();
    l.find(&[5], 4, &mut d);
    assert!(d.is_empty());
}

#[test]
fn layer_lists_parse_and_refuse() {
    assert_eq!(parse_layers("0-3,7, 5").unwrap(), vec![0, 1, 2, 3, 5, 7]);
    assert_eq!(parse_layers("2").unwrap(), vec![2]);
    for bad in ["", "a", "3-1", "1-x", ","] {
        assert!(parse_layers(bad).is_err(), "{bad:?}");
    }
    let g = crate::SamplerConfig::greedy();
    assert!(LayerSkip::new(4, &[4], &g, 10).is_err());
    assert_eq!(
        LayerSkip::new(30, &LayerSkip::default_layers(30), &g, 10)
            .unwrap()
            .kept(),
        (0..6).chain(15..30).collect::<Vec<_>>()
    );
}

#[test]
fn the_draft_length_follows_acceptance_and_cost() {
    let opts = SpecOptions::default();
    // Cheap drafts, every one accepted: the length climbs to the maximum.
    let mut a = Adapt::new(&opts);
    for _ in 0..20 {
        let k = a.k;
        a.record(k, k, 0.001 * k as f64, 0.01 * (1.0 + 0.05 * k as f64));
    }
    assert_eq!(a.k, ADAPTIVE_MAX);
    // Costly drafts, mostly rejected: down to the minimum.
    let mut a = Adapt::new(&opts);
    for _ in 0..20 {
        let k = a.k;
        a.record(k, 0, 0.005 * k as f64, 0.01 * (1.0 + 0.05 * k as f64));
    }
    assert_eq!(a.k, ADAPTIVE_MIN);
    // Fixed when not adaptive.
    let mut a = Adapt::new(&SpecOptions {
        length: 11,
        adaptive: false,
    });
    a.record(11, 11, 0.001, 0.01);
    assert_eq!(a.k, 11);
}
