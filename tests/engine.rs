//! The serving engine on real models: a request's greedy tokens and log-probabilities are the
//! same bits whether it runs alone or among 31 others, with its prompt prefilled in one chunk
//! or many, recomputed after preemption, or partly taken from the prefix cache.

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};

use torchless_engine::{
    Drafter, Engine, EngineOptions, Event, Finish, Params, Request, SpecConfig,
};
use torchless_model::attention_options::{AttentionOptions, FlashMode};
use torchless_model::{LoadOptions, Model};

fn model(name: &str) -> Arc<Model> {
    static SMOL: OnceLock<Arc<Model>> = OnceLock::new();
    static QWEN: OnceLock<Arc<Model>> = OnceLock::new();
    let cell = if name == "smollm2" { &SMOL } else { &QWEN };
    cell.get_or_init(|| {
        let opts = LoadOptions {
            threads: 2,
            ..LoadOptions::default()
        };
        Arc::new(Model::load(common::model(name), &opts).expect("load"))
    })
    .clone()
}

/// What one request returned: its tokens, their log-probabilities' bits, text and finish.
#[derive(Debug, Clone, PartialEq)]
struct Outcome {
    tokens: Vec<u32>,
    logprobs: Vec<u32>,
    text: String,
    finish: Option<Finish>,
}

fn prompts(model: &Model, n: usize) -> Vec<Vec<u32>> {
    let tok = model.tokenizer().unwrap();
    let topics = [
        "the history of the printing press",
        "how bees find flowers",
        "why the sky is blue",
        "a recipe for bread",
        "the rules of chess",
        "what a compiler does",
        "the water cycle",
        "how to tie a knot",
    ];
    (0..n)
        .map(|i| {
            // Shared openings (prefix-cache hits) and lengths from a few tokens to ~150.
            let mut text = String::new();
            if i % 3 == 0 {
                text.push_str("You are a helpful assistant who answers in full sentences and explains every step carefully, with examples where they help. ");
            }
            for r in 0..(i % 5) {
                text.push_str(&format!("Note {r}: keep it short. "));
            }
            text.push_str(&format!("Tell me about {}.", topics[i % topics.len()]));
            tok.encode(&text, true, true).unwrap()
        })
        .collect()
}

fn request(prompt: &[u32], i: usize) -> (Request, tokio::sync::mpsc::UnboundedReceiver<Event>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let req = Request {
        name: format!("r{i}"),
        prompt: prompt.to_vec(),
        params: Params {
            // One runs on alone at the end (where a lone token would take other kernels).
            max_tokens: if i == 5 { 40 } else { 8 + (i * 7) % 17 },
            logprobs: Some(2),
            ignore_eos: true,
            ..Params::default()
        },
        events: tx,
        panic_in_output: false,
    };
    (req, rx)
}

fn collect(mut rx: tokio::sync::mpsc::UnboundedReceiver<Event>) -> Outcome {
    let mut o = Outcome {
        tokens: Vec::new(),
        logprobs: Vec::new(),
        text: String::new(),
        finish: None,
    };
    while let Some(e) = rx.blocking_recv() {
        match e {
            Event::Token { id, text, logprobs } => {
                o.tokens.push(id);
                o.text.push_str(&text);
                let lp = logprobs.expect("logprobs were asked for");
                o.logprobs.push(lp.logprob.to_bits());
                o.logprobs.extend(lp.top.iter().map(|t| t.1.to_bits()));
            }
            Event::Done { finish, .. } => {
                o.finish = Some(finish);
                break;
            }
            Event::Error(e) => panic!("request failed: {e}"),
        }
    }
    o
}

fn solo(model: &Arc<Model>, prompts: &[Vec<u32>]) -> Vec<Outcome> {
    solo_with(model, prompts, AttentionOptions::default())
}

fn solo_with(
    model: &Arc<Model>,
    prompts: &[Vec<u32>],
    attention: AttentionOptions,
) -> Vec<Outcome> {
    let engine = Engine::start(
        model.clone(),
        EngineOptions {
            prefix_cache: false,
            n_ctx: 512,
            attention,
            ..EngineOptions::default()
        },
    )
    .unwrap();
    prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (req, rx) = request(p, i);
            engine.submit(req).unwrap();
            collect(rx)
        })
        .collect()
}

/// What the metrics counted of a run: preemptions, drafted and accepted tokens.
struct Counts {
    preemptions: u64,
    drafted: u64,
    accepted: u64,
}

fn together(
    model: &Arc<Model>,
    prompts: &[Vec<u32>],
    opts: EngineOptions,
) -> (Vec<Outcome>, Counts) {
    together_with(model, None, prompts, opts)
}

/// [`together`] with a draft model.
fn together_with(
    model: &Arc<Model>,
    draft: Option<Arc<Model>>,
    prompts: &[Vec<u32>],
    opts: EngineOptions,
) -> (Vec<Outcome>, Counts) {
    let engine = Engine::start_with_draft(model.clone(), draft, opts).unwrap();
    let rxs: Vec<_> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (req, rx) = request(p, i);
            engine.submit(req).unwrap();
            rx
        })
        .collect();
    let out = rxs.into_iter().map(collect).collect();
    let m = engine.metrics();
    // The gauges are set after the step that sent the last event.
    let t0 = std::time::Instant::now();
    while m.kv_blocks_used.load(Relaxed) > 0 && t0.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(m.kv_blocks_used.load(Relaxed), 0, "every block given back");
    let counts = Counts {
        preemptions: m.preemptions.load(Relaxed),
        drafted: m.spec_drafted.load(Relaxed),
        accepted: m.spec_accepted.load(Relaxed),
    };
    (out, counts)
}

fn check_invariance(name: &str) {
    let model = model(name);
    let ps = prompts(&model, 32);
    let alone = solo(&model, &ps);
    assert!(alone.iter().all(|o| o.finish == Some(Finish::Length)));
    let base = EngineOptions {
        n_ctx: 512,
        ..EngineOptions::default()
    };
    let cases = [
        ("32 at once", base),
        (
            "prefill in chunks of a few tokens",
            EngineOptions {
                batch_tokens: 37,
                chunk_tokens: 5,
                ..base
            },
        ),
        (
            "a pool small enough to preempt",
            EngineOptions {
                n_blocks: Some(40),
                batch_tokens: 64,
                ..base
            },
        ),
    ];
    let lookup = Some(SpecConfig {
        drafter: Drafter::Lookup(3),
        length: 5,
        adaptive: true,
    });
    let cases = cases.into_iter().chain([
        (
            "speculating by prompt lookup",
            EngineOptions {
                speculation: lookup,
                ..base
            },
        ),
        (
            "speculating in a pool small enough to preempt",
            EngineOptions {
                speculation: lookup,
                n_blocks: Some(40),
                batch_tokens: 64,
                ..base
            },
        ),
    ]);
    for (what, opts) in cases {
        let (got, counts) = together(&model, &ps, opts);
        if what.contains("preempt") {
            assert!(counts.preemptions > 0, "{what}: no preemption happened");
        }
        if what.contains("speculating") {
            let (d, a) = (counts.drafted, counts.accepted);
            eprintln!("{name}, {what}: {a} of {d} drafted tokens accepted");
            assert!(a > 0 && a < d, "{what}: {a} of {d} drafted tokens accepted");
        }
        for (i, (g, a)) in got.iter().zip(&alone).enumerate() {
            assert_eq!(
                g, a,
                "{name}, {what}: request {i} differs from its solo run"
            );
        }
    }
}

/// With flash attention (and prompt-lookup speculation) a request's tokens and
/// log-probabilities are the bits of its solo run with flash attention.
#[test]
fn flash_attention_results_do_not_depend_on_the_batch() {
    let model = model("smollm2");
    let ps = prompts(&model, 16);
    let flash = AttentionOptions {
        flash: FlashMode::On,
        ..AttentionOptions::default()
    };
    let alone = solo_with(&model, &ps, flash);
    let opts = EngineOptions {
        n_ctx: 512,
        attention: flash,
        speculation: Some(SpecConfig {
            drafter: Drafter::Lookup(3),
            length: 5,
            adaptive: true,
        }),
        ..EngineOptions::default()
    };
    let (got, _) = together(&model, &ps, opts);
    for (i, (g, a)) in got.iter().zip(&alone).enumerate() {
        assert_eq!(g, a, "request {i} differs from its solo run");
    }
}

/// Speculating with a draft model (SmolLM2's own weights computed in f32: mostly the same
/// choices, some different), with its whole vocabulary or a window of it, and in a pool small
/// enough to preempt, every request gets the bits of its solo run without speculation.
#[test]
fn a_draft_model_leaves_every_result_as_it_was() {
    let model = model("smollm2");
    let draft = Arc::new(
        Model::load(
            common::model("smollm2"),
            &LoadOptions {
                threads: 2,
                precision: torchless_model::Precision::F32,
                pool: Some(model.shared_pool()),
                ..LoadOptions::default()
            },
        )
        .unwrap(),
    );
    let ps = prompts(&model, 16);
    let alone = solo(&model, &ps);
    let base = EngineOptions {
        n_ctx: 512,
        ..EngineOptions::default()
    };
    let spec = |vocab_window| {
        Some(SpecConfig {
            drafter: Drafter::Model { vocab_window },
            length: 4,
            // The draft computes in f32: far too dear to pay, the pace would never draft.
            adaptive: false,
        })
    };
    let cases = [
        (
            "whole vocabulary",
            EngineOptions {
                speculation: spec(None),
                ..base
            },
        ),
        (
            "a window of 8192 ids, in a pool small enough to preempt",
            EngineOptions {
                speculation: spec(Some(8192)),
                n_blocks: Some(24),
                batch_tokens: 64,
                ..base
            },
        ),
    ];
    for (what, opts) in cases {
        let (got, counts) = together_with(&model, Some(draft.clone()), &ps, opts);
        let (d, a) = (counts.drafted, counts.accepted);
        eprintln!("draft model, {what}: {a} of {d} drafted tokens accepted");
        assert!(a > 0 && a < d, "{what}: {a} of {d} drafted tokens accepted");
        if what.contains("preempt") {
            assert!(counts.preemptions > 0, "{what}: no preemption happened");
        }
        for (i, (g, a)) in got.iter().zip(&alone).enumerate() {
            assert_eq!(g, a, "{what}: request {i} differs from its solo run");
        }
    }
    // A draft of another vocabulary, or settings that do not name the draft, are refused.
    let gemma =
        Arc::new(Model::load(common::model("gemma-3-270m"), &LoadOptions::default()).unwrap());
    let err = Engine::start_with_draft(
        model.clone(),
        Some(gemma),
        EngineOptions {
            speculation: spec(None),
            ..base
        },
    )
    .err()
    .expect("another vocabulary");
    assert!(err.to_string().contains("vocabulary"), "{err}");
    let err = Engine::start_with_draft(model.clone(), Some(draft), base)
        .err()
        .expect("unnamed draft");
    assert!(err.to_string().contains("draft"), "{err}");
    let err = Engine::start(
        model.clone(),
        EngineOptions {
            speculation: spec(None),
            ..base
        },
    )
    .err()
    .expect("no draft");
    assert!(err.to_string().contains("draft model"), "{err}");
}

#[test]
fn smollm2_results_do_not_depend_on_the_batch() {
    check_invariance("smollm2");
}

#[test]
fn qwen2_results_do_not_depend_on_the_batch() {
    check_invariance("qwen2.5-coder-0.5b-instruct");
}
