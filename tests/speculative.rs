//! Speculative decoding through real models: greedy output token for token equal to plain
//! greedy output for every proposer (SmolLM2; the Qwen2.5-Coder pair, 0.5B drafting for 1.5B),
//! sampled output distributed as the target's (chi-square against the exact distribution of
//! the first two tokens), and the errors a user can cause.

mod common;

use std::process::Command;
use std::sync::Arc;

use torchless_kernels::Numerics;
use torchless_model::speculative::{self, DraftModel, LayerSkip, PromptLookup, Proposer};
use torchless_model::{
    generate, GenerateOptions, LoadOptions, Model, ModelRef, Precision, Sampler, SamplerConfig,
    Session, SessionOptions, SpecOptions, SpecStats,
};

fn invariant() -> SessionOptions {
    SessionOptions {
        n_ctx: 1024,
        numerics: Numerics::BatchInvariant,
        ..SessionOptions::default()
    }
}

fn greedy(max_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        max_tokens,
        sampler: SamplerConfig::greedy(),
        stop_at_eog: false,
        record_logits: false,
    }
}

fn chat_prompt(model: &Model, text: &str) -> Vec<u32> {
    let tok = model.tokenizer().expect("tokenizer");
    tok.encode_chat_with(None, &[torchless_tokenizer::Message::new("user", text)])
        .expect("render")
}

const REWRITE: &str = "Rewrite this function so that it returns the largest value instead of \
the sum, and change nothing else:\n\ndef total(values):\n    result = 0\n    for v in values:\n        \
result = result + v\n    return result\n";

const PROSE: &str = "Explain in three sentences why the sky is blue.";

fn plain(model: &Model, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut s = Session::new(model, invariant());
    generate(&mut s, prompt, &greedy(n), |_| {}, |_| true)
        .expect("plain")
        .generated
}

fn speculate(
    model: &Model,
    proposer: &mut dyn Proposer,
    prompt: &[u32],
    n: usize,
    spec: SpecOptions,
) -> (Vec<u32>, SpecStats) {
    let mut s = Session::new(model, invariant());
    let (g, stats) = speculative::generate(&mut s, proposer, prompt, &greedy(n), &spec, |_| true)
        .unwrap_or_else(|e| panic!("{}: {e}", proposer.name()));
    // The session holds everything but the last token, as after plain generation.
    assert_eq!(s.n_past(), prompt.len() + g.generated.len() - 1);
    (g.generated, stats)
}

/// Each proposer, adaptive and at a fixed length of 8, against plain greedy output.
fn check_all(target: &Model, draft: Option<&Arc<Model>>, prompts: &[Vec<u32>], n: usize) {
    let c = target.config();
    let mut totals = SpecStats::default();
    for prompt in prompts {
        let want = plain(target, prompt, n);
        assert_eq!(want.len(), n);
        for spec in [
            SpecOptions::default(),
            SpecOptions {
                length: 8,
                adaptive: false,
            },
        ] {
            let g = SamplerConfig::greedy();
            let mut proposers: Vec<Box<dyn Proposer>> = vec![
                Box::new(PromptLookup::new(3)),
                Box::new(
                    LayerSkip::new(
                        c.n_layers,
                        &LayerSkip::default_layers(c.n_layers),
                        &g,
                        c.vocab,
                    )
                    .unwrap(),
                ),
            ];
            if let Some(d) = draft {
                let m = ModelRef::Shared(d.clone());
                proposers.push(Box::new(DraftModel::new(m, target, 1024, &g).unwrap()));
                if spec.adaptive {
                    // A draft that computes the first quarter of its vocabulary only.
                    let m = ModelRef::Shared(d.clone());
                    let mut windowed = DraftModel::new(m, target, 1024, &g).unwrap();
                    let ids = windowed.set_vocab_window(Some(c.vocab / 4));
                    assert_eq!(ids, (c.vocab / 4).next_multiple_of(8));
                    proposers.push(Box::new(windowed));
                }
            }
            for p in &mut proposers {
                let (got, stats) = speculate(target, p.as_mut(), prompt, n, spec);
                assert_eq!(got, want, "{} ({spec:?}) parts from plain greedy", p.name());
                assert!(stats.drafted > 0, "{}: nothing drafted", p.name());
                assert_eq!(stats.emitted, n);
                totals.add(&stats);
            }
        }
    }
    // Both paths ran: drafts kept and drafts replaced.
    assert!(
        totals.accepted > 0 && totals.accepted < totals.drafted,
        "{totals:?}"
    );
}

#[test]
fn greedy_speculation_equals_plain_greedy_on_smollm2() {
    let target = Model::load(common::model("smollm2"), &LoadOptions::default()).unwrap();
    // The draft: the same weights computed in f32 (near-ties go the other way sometimes).
    let draft = Model::load(
        common::model("smollm2"),
        &LoadOptions {
            precision: Precision::F32,
            pool: Some(target.shared_pool()),
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let prompts = [chat_prompt(&target, REWRITE), chat_prompt(&target, PROSE)];
    check_all(&target, Some(&Arc::new(draft)), &prompts, 64);
}

#[test]
fn greedy_speculation_equals_plain_greedy_on_the_qwen_pair() {
    let target = Model::load(common::model("qwen2.5-coder-1.5b"), &LoadOptions::default()).unwrap();
    let draft = Model::load(
        common::model("qwen2.5-coder-0.5b"),
        &LoadOptions {
            pool: Some(target.shared_pool()),
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let prompts = [chat_prompt(&target, REWRITE)];
    check_all(&target, Some(&Arc::new(draft)), &prompts, 40);
}

/// Pearson's statistic and degrees of freedom, cells expecting fewer than 5 pooled.
fn chi_square(counts: &[usize], p: &[f64], n: usize) -> (f64, usize) {
    let (mut stat, mut cells, mut pooled_c, mut pooled_e) = (0.0, 0, 0.0, 0.0);
    for (&c, &pi) in counts.iter().zip(p) {
        let e = pi * n as f64;
        if e < 5.0 {
            pooled_c += c as f64;
            pooled_e += e;
        } else {
            stat += (c as f64 - e).powi(2) / e;
            cells += 1;
        }
    }
    if pooled_e > 0.0 {
        stat += (pooled_c - pooled_e).powi(2) / pooled_e.max(1e-9);
        cells += 1;
    }
    (stat, cells - 1)
}

/// The 0.999 quantile of chi-square (Wilson–Hilferty).
fn chi_square_999(dof: usize) -> f64 {
    let k = dof as f64;
    k * (1.0 - 2.0 / (9.0 * k) + 3.090_232 * (2.0 / (9.0 * k)).sqrt()).powi(3)
}

#[test]
fn speculative_sampling_follows_the_target_distribution() {
    let model = Model::load(common::model("smollm2"), &LoadOptions::default()).unwrap();
    let c = model.config();
    let prompt = chat_prompt(&model, "Name a colour.");
    let cfg = SamplerConfig {
        temperature: 1.5,
        top_k: 4,
        top_p: 1.0,
        min_p: 0.0,
        ..SamplerConfig::default()
    };
    // The exact distribution of the first two tokens: p(a) p(b | a).
    let mut s = Session::new(&model, invariant());
    let mut sampler = Sampler::new(cfg.clone(), c.vocab);
    let mut first = Vec::new();
    sampler.distribution(s.eval(&prompt).unwrap(), &mut first);
    let mut cells: Vec<((u32, u32), f64)> = Vec::new();
    let mut second = Vec::new();
    for &(a, pa) in &first {
        s.truncate(prompt.len());
        sampler.distribution(s.eval(&[a]).unwrap(), &mut second);
        cells.extend(second.iter().map(|&(b, pb)| ((a, b), pa * pb)));
    }
    assert!(cells.len() >= 8, "too few outcomes to test: {cells:?}");

    let (head, last) = prompt.split_at(prompt.len() - 1);
    // A draft model (the same weights) whose vocabulary window cuts the possible first tokens
    // in two: the target's likely tokens past it have a draft probability of zero.
    let mut ids: Vec<u32> = first.iter().map(|x| x.0).collect();
    ids.sort_unstable();
    let mid = ids.len() / 2;
    let window = (ids[mid - 1] as usize + 1).next_multiple_of(8);
    assert!(window <= ids[mid] as usize, "no window splits {ids:?}");
    let same = Arc::new(Model::load(common::model("smollm2"), &LoadOptions::default()).unwrap());
    let mut windowed = DraftModel::new(ModelRef::Shared(same), &model, 512, &cfg).unwrap();
    windowed.set_vocab_window(Some(window));
    let proposers: Vec<Box<dyn Proposer>> = vec![
        // A poor draft (many rejections): ten middle layers skipped, sampling its own way.
        Box::new(LayerSkip::new(c.n_layers, &parse("0-9,20-29"), &cfg, c.vocab).unwrap()),
        // A copying draft: a point mass wherever the text repeats.
        Box::new(PromptLookup::new(2)),
        Box::new(windowed),
    ];
    for mut proposer in proposers {
        let mut s = Session::new(&model, invariant());
        s.eval_with(head, false, |_, _| {}).unwrap();
        let n = 1500;
        let mut counts = vec![0usize; cells.len()];
        let mut stats = SpecStats::default();
        for seed in 0..n {
            s.truncate(head.len());
            let opts = GenerateOptions {
                max_tokens: 2,
                sampler: SamplerConfig {
                    seed: seed as u64,
                    ..cfg.clone()
                },
                stop_at_eog: false,
                record_logits: false,
            };
            let spec = SpecOptions {
                length: 2,
                adaptive: false,
            };
            let (gen, st) =
                speculative::generate(&mut s, proposer.as_mut(), last, &opts, &spec, |_| true)
                    .unwrap();
            stats.add(&st);
            let pair = (gen.generated[0], gen.generated[1]);
            let i = cells
                .iter()
                .position(|x| x.0 == pair)
                .unwrap_or_else(|| panic!("{pair:?} is not a possible outcome"));
            counts[i] += 1;
        }
        let p: Vec<f64> = cells.iter().map(|x| x.1).collect();
        let (stat, dof) = chi_square(&counts, &p, n);
        assert!(
            stat < chi_square_999(dof),
            "{}: chi-square {stat:.1} with {dof} degrees of freedom; {stats:?}",
            proposer.name()
        );
        if proposer.name() != "lookup" {
            assert!(
                stats.accepted > 0 && stats.accepted < stats.drafted,
                "both outcomes of the rule must occur: {stats:?}"
            );
        }
    }
}

fn parse(spec: &str) -> Vec<usize> {
    speculative::parse_layers(spec).unwrap()
}

#[test]
fn a_draft_of_another_vocabulary_and_a_session_in_llama_cpp_numerics_are_refused() {
    let target = Model::load(common::model("smollm2"), &LoadOptions::default()).unwrap();
    let gemma = Model::load(common::model("gemma-3-270m"), &LoadOptions::default()).unwrap();
    let err = DraftModel::new(
        ModelRef::Borrowed(&gemma),
        &target,
        512,
        &SamplerConfig::greedy(),
    )
    .err()
    .expect("a draft of another vocabulary");
    assert!(err.to_string().contains("vocabulary"), "{err}");

    let mut s = Session::new(&target, SessionOptions::default());
    let err = speculative::generate(
        &mut s,
        &mut PromptLookup::new(2),
        &[1, 2, 3],
        &greedy(4),
        &SpecOptions::default(),
        |_| true,
    )
    .unwrap_err();
    assert!(err.to_string().contains("batch-invariant"), "{err}");
}

fn torchless(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_torchless"))
        .args(args)
        .output()
        .expect("run torchless")
}

#[test]
fn the_cli_speculates_and_reports_and_refuses_bad_settings() {
    let smollm2 = common::model("smollm2");
    let m = smollm2.to_str().unwrap();
    let base = [
        "generate",
        "-m",
        m,
        "-p",
        "one two three one two three one two",
        "-n",
        "16",
    ];
    let run = |extra: &[&str]| {
        let mut a: Vec<&str> = base.to_vec();
        a.extend_from_slice(&["--temp", "0", "--json", "--ignore-eos"]);
        a.extend_from_slice(extra);
        let out = torchless(&a);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let j: serde_json::Value =
            serde_json::from_slice(out.stdout.split(|&b| b == b'\n').next().unwrap()).unwrap();
        j
    };
    let plain = run(&["--batch-invariant"]);
    for extra in [&["--lookup", "3"][..], &["--speculative"][..]] {
        let j = run(extra);
        assert_eq!(j["generated_ids"], plain["generated_ids"], "{extra:?}");
        let s = &j["speculation"];
        assert!(s["rounds"].as_u64().unwrap() > 0, "{j}");
        assert!(s["acceptance"].as_f64().is_some(), "{j}");
    }
    let out = torchless(&[
        "bench", "-m", m, "-p", "0", "-n", "8", "-r", "1", "--lookup", "2",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("greedy tg8 +lookup"), "{text}");
    assert!(text.contains("speculation (lookup"), "{text}");
    let gemma = common::model("gemma-3-270m");
    for (extra, says) in [
        (vec!["--draft-model", gemma.to_str().unwrap()], "vocabulary"),
        (
            vec!["--speculative", "--draft-layers", "0-99"],
            "does not exist",
        ),
        (vec!["--lookup", "0"], "at least 1"),
        (
            vec!["--lookup", "2", "--speculation-length", "40"],
            "between 1 and",
        ),
    ] {
        let mut a: Vec<&str> = base.to_vec();
        a.extend(extra.iter().copied());
        let out = torchless(&a);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} succeeded");
        assert!(err.contains(says), "{extra:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{extra:?}: {err}");
    }
}

/// A vocabulary window computes the first ids' logits exactly as the whole head does (the same
/// bits, for one output row and for several) and gives the others -inf.
#[test]
fn a_vocabulary_window_keeps_the_first_logits_bit_for_bit() {
    let model = Model::load(common::model("smollm2"), &LoadOptions::default()).unwrap();
    let prompt = chat_prompt(&model, PROSE);
    let rows = |window: Option<usize>| {
        let mut s = Session::new(&model, invariant());
        assert_eq!(
            s.set_vocab_window(window),
            window.unwrap_or(model.config().vocab)
        );
        let mut out = Vec::new();
        s.eval_with(&prompt, true, |_, row| out.push(row.to_vec()))
            .unwrap();
        out.push(s.eval(&[prompt[0]]).unwrap().to_vec());
        out
    };
    let whole = rows(None);
    let window = 1000;
    let cut = rows(Some(window));
    assert_eq!(whole.len(), cut.len());
    for (w, c) in whole.iter().zip(&cut) {
        assert_eq!(w.len(), c.len());
        let same = w[..window].iter().zip(&c[..window]);
        assert!(same.clone().all(|(a, b)| a.to_bits() == b.to_bits()));
        assert!(c[window..].iter().all(|&v| v == f32::NEG_INFINITY));
    }
    // A window as large as the vocabulary computes every id.
    let mut s = Session::new(&model, invariant());
    assert_eq!(s.set_vocab_window(Some(1 << 20)), model.config().vocab);
}
