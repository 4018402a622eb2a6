//! The reference checks with flash attention on. Flash attention gives other bits than
//! llama.cpp's reference path (tiles and the online softmax reduce in another order), so the
//! bit-for-bit logit checks of `model_golden.rs` become tolerances here. How large: in f32
//! (`--precise`) flash and reference logits differ by 3e-5 at most on a 420-token prompt; in
//! llama.cpp's arithmetic, where activations are rounded to 8 bits before every product, that
//! last-bit difference moves logits by up to 0.85 (as llama.cpp's own AVX-512 build does
//! against its AVX2 build). So a greedy step counts as firm when llama.cpp's top two logits
//! lie at least 1.0 apart. Everything else holds as it does there: greedy tokens up to the
//! first step that is not firm, llama.cpp's greedy continuation of a 420-token prompt,
//! perplexity within 1%, the f32 path against transformers, logits that do not depend on the
//! batch or the thread count, speculative greedy output equal to plain greedy output. The KV
//! cache types are measured by their perplexity.

mod common;

use std::sync::OnceLock;

use torchless_kernels::Numerics;
use torchless_model::attention_options::{AttentionOptions, FlashMode};
use torchless_model::speculative::{self, LayerSkip, PromptLookup, Proposer};
use torchless_model::{
    generate, GenerateOptions, KvType, LoadOptions, Model, ModelRef, Precision, SamplerConfig,
    Session, SessionOptions, SpecOptions,
};

fn smollm2() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| Model::load(common::model("smollm2"), &LoadOptions::default()).expect("load"))
}

fn flash() -> AttentionOptions {
    AttentionOptions {
        flash: FlashMode::On,
        ..AttentionOptions::default()
    }
}

fn session(model: &Model, opts: SessionOptions) -> Session<'_> {
    let s = Session::try_with_model(ModelRef::Borrowed(model), opts).expect("session");
    assert!(s.attention().flash_tile.is_some(), "flash attention is on");
    s
}

/// The gap between the two largest logits of a row.
fn margin_of(row: &[f32]) -> f64 {
    let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &x in row {
        if x > a {
            b = a;
            a = x;
        } else if x > b {
            b = x;
        }
    }
    (a - b) as f64
}

fn top1(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best as u32
}

/// llama.cpp's greedy continuations fed back token by token (teacher forcing): at every step
/// where llama.cpp's margin is firm, flash attention picks llama.cpp's token.
fn greedy_where_firm(model: &Model, dir: &str) {
    let mut compared = 0;
    for case in common::read_jsonl(&format!("{dir}/greedy.jsonl")) {
        let prompt = common::ids(&case["prompt_ids"]);
        let want = common::ids(&case["generated_ids"]);
        let margins = case["top1_minus_top2_logit"].as_array().unwrap();
        let opts = SessionOptions {
            n_ctx: 512,
            attention: flash(),
            ..SessionOptions::default()
        };
        let mut s = session(model, opts);
        let mut row = s.eval(&prompt).unwrap().to_vec();
        for (k, (&tok, m)) in want.iter().zip(margins).enumerate() {
            if m.as_f64().unwrap() >= FIRM {
                assert_eq!(top1(&row), tok, "{:?} step {k}", case["prompt"]);
                compared += 1;
            }
            row = s.eval(&[tok]).unwrap().to_vec();
        }
    }
    eprintln!("{dir}: {compared} firm greedy steps compared");
    assert!(compared >= 16, "{dir}: only {compared} steps compared");
}

/// The least margin between llama.cpp's top two logits at which a greedy step is firm (see
/// the module's documentation).
const FIRM: f64 = 1.0;

#[test]
fn greedy_steps_match_llama_cpp_where_firm() {
    greedy_where_firm(smollm2(), "smollm2-q4_1");
    let qwen = Model::load(common::model("qwen2.5-coder-0.5b"), &LoadOptions::default()).unwrap();
    greedy_where_firm(&qwen, "qwen2.5-coder-0.5b-q4_k_m");
}

/// The 420-token prompt (past one split of 256 positions) and llama.cpp's 48 greedy steps
/// after it, fed back token by token: llama.cpp's token at every firm step, and the last
/// prompt position's logits within 1.0 of llama.cpp's, 0.25 on average (measured: 0.67 and
/// 0.16; the reference path matches them bit for bit).
#[test]
fn long_context_follows_llama_cpp() {
    let dir = "smollm2-q4_1";
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::data(&format!("{dir}/long.json"))).unwrap(),
    )
    .unwrap();
    let ids = common::ids(&reference["prompt_ids"]);
    let opts = SessionOptions {
        n_ctx: 512,
        attention: flash(),
        ..SessionOptions::default()
    };
    let mut s = session(smollm2(), opts);
    let mut last = Vec::new();
    s.eval_with(&ids, false, |_, r| last = r.to_vec()).unwrap();
    let want = common::read_f32(&format!("{dir}/logits/long_last_logits.f32.bin"));
    let max = last
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    let mean = last
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .sum::<f32>()
        / want.len() as f32;
    eprintln!("flash vs llama.cpp, last prompt logits: max |d| {max}, mean |d| {mean}");
    assert!(max < 1.0 && mean < 0.25, "max |d| {max}, mean |d| {mean}");
    let generated = common::ids(&reference["generated_ids"]);
    // llama.cpp's margin before each generated token: the last prompt position's, then each
    // step's.
    let steps = reference["top20_after_each_step"].as_array().unwrap();
    let margin = |row: &serde_json::Value| {
        let r = row.as_array().unwrap();
        r[0][1].as_f64().unwrap() - r[1][1].as_f64().unwrap()
    };
    let mut row = last;
    let mut firm = margin_of(&want) >= FIRM;
    let mut k = 0;
    for (i, &tok) in generated.iter().enumerate() {
        if firm {
            assert_eq!(top1(&row), tok, "greedy step {i}");
            k += 1;
        }
        row = s.eval(&[tok]).unwrap().to_vec();
        firm = steps.get(i).is_some_and(|st| margin(st) >= FIRM);
    }
    eprintln!("{k} firm greedy steps of {} compared", generated.len());
    assert!(k >= 8, "only {k} steps compared");
}

fn ppl(model: &Model, n_ctx: usize, attention: AttentionOptions) -> (f64, usize) {
    let text = std::fs::read_to_string(common::data("smollm2-q4_1/ppl_text_GPL-2.txt")).unwrap();
    let tokens = model
        .require_tokenizer()
        .unwrap()
        .encode(&text, true, false)
        .unwrap();
    let r = torchless_model::perplexity::perplexity_with(
        model,
        &tokens,
        n_ctx,
        n_ctx,
        attention,
        |_, _, _| {},
    )
    .unwrap();
    (r.ppl, r.chunks)
}

/// Perplexity with flash attention and each KV cache type against llama.cpp's 22.0172 (its
/// f16 cache, context 128), the cost of each type measured: f16 and Q8_0 within 1%, Q8_0
/// keys with Q4_0 values within 3%; Q4_0 keys cost far more on this small model (measured
/// +28% to +31%, bounded at 35%), which is why keys and values take separate types. F16 and
/// Q8_0 are not ordered: on 4039 tokens their difference is below what rounding alone moves
/// this figure (the flash tile size, which only moves roundings, spreads f16 over
/// 22.03–22.16 and Q8_0 over 22.16–22.28).
#[test]
fn perplexity_per_kv_cache_type() {
    use KvType::*;
    let want = 22.0172;
    let mut got = Vec::new();
    for (k, v, tol) in [
        (F16, F16, 0.01),
        (Q8_0, Q8_0, 0.01),
        (Q8_0, Q4_0, 0.03),
        (Q4_0, Q4_0, 0.35),
    ] {
        let att = AttentionOptions {
            k_type: Some(k),
            v_type: Some(v),
            ..flash()
        };
        let (p, chunks) = ppl(smollm2(), 128, att);
        eprintln!(
            "flash, keys {} values {}: perplexity {p:.4} ({:+.2}% against llama.cpp)",
            k.name(),
            v.name(),
            100.0 * (p / want - 1.0)
        );
        assert_eq!(chunks, 31);
        assert!(
            (p / want - 1.0).abs() < tol,
            "{}/{}: {p}",
            k.name(),
            v.name()
        );
        got.push(p);
    }
    // Four-bit values cost more than either eight-bit cache, four-bit keys more again.
    assert!(got[2] > got[0].max(got[1]) && got[3] > got[2], "{got:?}");
}

/// Gemma 3 (256-wide heads, sliding-window layers, scaled queries) with flash attention:
/// perplexity within 1% of llama.cpp's 11.6082.
#[test]
fn gemma3_perplexity_within_one_percent() {
    let model = Model::load(common::model("gemma-3-270m"), &LoadOptions::default()).unwrap();
    let (p, chunks) = ppl(&model, 512, flash());
    eprintln!("gemma 3, flash: perplexity {p:.4} (llama.cpp 11.6082)");
    assert_eq!(chunks, 7);
    assert!((p / 11.6082 - 1.0).abs() < 0.01, "{p}");
}

/// The all-f32 path with flash attention against transformers, as the reference path is.
#[test]
fn precise_path_matches_transformers() {
    let model = Model::load(
        common::model("smollm2"),
        &LoadOptions {
            precision: Precision::F32,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::data("hf-smollm2/reference.json")).unwrap(),
    )
    .unwrap();
    let ids = common::ids(&reference["prompt_ids"]);
    let opts = SessionOptions {
        n_ctx: 256,
        attention: flash(),
        ..SessionOptions::default()
    };
    let mut s = session(&model, opts);
    let last = s.eval(&ids).unwrap().to_vec();
    let hf = common::read_f32("hf-smollm2/last_logits.f32.bin");
    let n = last.len() as f32;
    let mean = last
        .iter()
        .zip(&hf)
        .map(|(a, b)| (a - b).abs())
        .sum::<f32>()
        / n;
    let max = last
        .iter()
        .zip(&hf)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    eprintln!("flash f32 vs transformers: mean |d| {mean}, max |d| {max}");
    assert!(mean < 0.05 && max < 0.25, "mean {mean} max {max}");
}

/// In the batch-invariant numerics with flash attention, a prompt evaluated in one pass gives
/// every position exactly the logits of one token at a time, and two threads those of one.
#[test]
fn flash_logits_do_not_depend_on_the_batch_or_threads() {
    let ids: Vec<u32> = (0..300u32).map(|i| (i * 7919 + 13) % 49000).collect();
    let opts = |n_batch| SessionOptions {
        n_ctx: 512,
        n_batch,
        numerics: Numerics::BatchInvariant,
        attention: flash(),
        ..SessionOptions::default()
    };
    let bits = |r: &[f32]| r.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let mut batched = Vec::new();
    let mut s = session(smollm2(), opts(512));
    s.eval_with(&ids, true, |_, r| batched.push(bits(r)))
        .unwrap();
    let mut one = session(smollm2(), opts(1));
    for (p, &t) in ids.iter().enumerate() {
        let row = one.eval(&[t]).unwrap();
        assert_eq!(bits(row), batched[p], "position {p}");
    }
    let single = Model::load(
        common::model("smollm2"),
        &LoadOptions {
            threads: 1,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let mut s1 = session(&single, opts(512));
    let mut rows = Vec::new();
    s1.eval_with(&ids, true, |_, r| rows.push(bits(r))).unwrap();
    assert_eq!(rows, batched, "one thread against two");
}

/// Speculative greedy output equals plain greedy output with flash attention too.
#[test]
fn speculation_with_flash_equals_plain_greedy() {
    let model = smollm2();
    let tok = model.tokenizer().unwrap();
    let prompt = tok
        .encode_chat_with(
            None,
            &[torchless_tokenizer::Message::new(
                "user",
                "Rewrite this function so that it returns the largest value instead of the sum:\n\n\
                 def total(values):\n    result = 0\n    for v in values:\n        result = result + v\n    return result\n",
            )],
        )
        .unwrap();
    let opts = SessionOptions {
        n_ctx: 1024,
        numerics: Numerics::BatchInvariant,
        attention: flash(),
        ..SessionOptions::default()
    };
    let g = GenerateOptions {
        max_tokens: 48,
        sampler: SamplerConfig::greedy(),
        stop_at_eog: false,
        record_logits: false,
    };
    let mut s = session(model, opts);
    let want = generate(&mut s, &prompt, &g, |_| {}, |_| true)
        .unwrap()
        .generated;
    let c = model.config();
    let greedy = SamplerConfig::greedy();
    let mut proposers: Vec<Box<dyn Proposer>> = vec![
        Box::new(PromptLookup::new(3)),
        Box::new(
            LayerSkip::new(
                c.n_layers,
                &LayerSkip::default_layers(c.n_layers),
                &greedy,
                c.vocab,
            )
            .unwrap(),
        ),
    ];
    for p in &mut proposers {
        let mut s = session(model, opts);
        let (got, stats) = speculative::generate(
            &mut s,
            p.as_mut(),
            &prompt,
            &g,
            &SpecOptions::default(),
            |_| true,
        )
        .unwrap();
        assert_eq!(got.generated, want, "{}", p.name());
        assert!(stats.drafted > 0);
    }
}
