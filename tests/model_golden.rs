//! The forward pass against llama.cpp (tests/data/*/, each made by the reference build): on
//! SmolLM2-135M-Instruct Q4_1, its Q4_0, Q4_K_M and F16 conversions, and the two Qwen2.5-Coder Q4_K_M
//! models, the top-20 logits at every prompt position and the whole last-position vector bit
//! for bit, greedy generation up to the first near-tie; decoding past 384 positions bit for
//! bit; perplexity on the GPL-2 text with context 128.

mod common;

use std::sync::OnceLock;

use torchless_model::{
    generate, GenerateOptions, LoadOptions, Model, Precision, SamplerConfig, Session,
    SessionOptions,
};

fn smollm2() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| Model::load(common::model("smollm2"), &LoadOptions::default()).expect("load"))
}

fn smollm2_precise() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| {
        Model::load(
            common::model("smollm2"),
            &LoadOptions {
                precision: Precision::F32,
                ..LoadOptions::default()
            },
        )
        .expect("load")
    })
}

/// Logits at every position of `ids`.
fn all_logits(model: &Model, ids: &[u32]) -> Vec<Vec<f32>> {
    all_logits_in_batches(model, ids, SessionOptions::default().n_batch)
}

/// Logits at every position of `ids`, evaluated in forward passes of at most `n_batch` tokens.
fn all_logits_in_batches(model: &Model, ids: &[u32], n_batch: usize) -> Vec<Vec<f32>> {
    let mut s = Session::new(
        model,
        SessionOptions {
            n_ctx: 512,
            n_batch,
            ..SessionOptions::default()
        },
    );
    let mut rows = Vec::new();
    s.eval_with(ids, true, |_, r| rows.push(r.to_vec()))
        .unwrap();
    rows
}

fn top_k(row: &[f32], k: usize) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..row.len() as u32).collect();
    idx.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

struct Diff {
    mean: f64,
    max: f64,
    cosine: f64,
}

fn diff(a: &[f32], b: &[f32]) -> Diff {
    let n = a.len() as f64;
    let mean = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() as f64)
        .sum::<f64>()
        / n;
    let max = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() as f64)
        .fold(0.0, f64::max);
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    Diff {
        mean,
        max,
        cosine: dot / (na * nb),
    }
}

/// Checks that row `row` holds the reference's 20 highest `(id, logit)` pairs `want`, in the
/// same order and bit for bit.
fn check_top20(row: &[f32], want: &serde_json::Value, what: &str) {
    let want: Vec<(u32, f32)> = want
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e[0].as_u64().unwrap() as u32, e[1].as_f64().unwrap() as f32))
        .collect();
    for &(id, v) in &want {
        let got = row[id as usize];
        assert_eq!(
            got.to_bits(),
            v.to_bits(),
            "{what}: logit of token {id} is {got}, llama.cpp's {v}"
        );
    }
    let ids: Vec<u32> = want.iter().map(|e| e.0).collect();
    assert_eq!(top_k(row, want.len()), ids, "{what}: top-20 order");
}

/// Checks that the whole vector `got` is `want` bit for bit.
fn check_vector(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let differ = got
        .iter()
        .zip(want)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    let d = diff(got, want);
    assert_eq!(
        differ,
        0,
        "{what}: {differ} of {} logits differ from llama.cpp's (max |d| {})",
        want.len(),
        d.max
    );
}

/// Checks that prompt `i` of the reference directory `dir` (tests/data/DIR/logits/) gets
/// llama.cpp's logits bit for bit: the 20 highest at every prompt position and the whole
/// last-position vector.
fn check_logits_exact(model: &Model, dir: &str, i: usize) {
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::data(&format!("{dir}/logits/prompt{i}_top20.json")))
            .unwrap(),
    )
    .unwrap();
    let ids = common::ids(&reference["prompt_ids"]);
    let rows = all_logits(model, &ids);
    let per_pos = reference["top20_per_position"].as_array().unwrap();
    assert_eq!(rows.len(), per_pos.len());
    for (p, (row, want)) in rows.iter().zip(per_pos).enumerate() {
        check_top20(row, want, &format!("{dir} prompt {i} position {p}"));
    }
    let last = common::read_f32(&format!("{dir}/logits/prompt{i}_last_logits.f32.bin"));
    check_vector(rows.last().unwrap(), &last, &format!("{dir} prompt {i}"));
}

/// Following llama.cpp's arithmetic operation for operation reproduces its logits exactly.
#[test]
fn logits_match_llama_cpp_on_both_prompts() {
    check_logits_exact(smollm2(), "smollm2-q4_1", 0);
    check_logits_exact(smollm2(), "smollm2-q4_1", 1);
}

/// A 420-token prompt and 48 decode steps after it (positions 420-467: single-token attention
/// past 384 positions splits each head's work over positions, heads and dimensions) give
/// llama.cpp's logits bit for bit at the last 16 prompt positions and after every step.
#[test]
fn long_context_matches_llama_cpp() {
    check_long(smollm2(), "smollm2-q4_1", "long");
}

/// The long-context check of `dir`'s `NAME.json` (see [`long_context_matches_llama_cpp`]),
/// the whole prompt in one batch as llama.cpp ran it.
fn check_long(model: &Model, dir: &str, name: &str) {
    check_long_in(model, dir, name, usize::MAX);
}

/// [`check_long`] with the prompt evaluated `n_batch` tokens at a time.
fn check_long_in(model: &Model, dir: &str, name: &str, n_batch: usize) {
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::data(&format!("{dir}/{name}.json"))).unwrap(),
    )
    .unwrap();
    let ids = common::ids(&reference["prompt_ids"]);
    assert!(ids.len() > 384);
    let n_ctx = (ids.len() + 64).next_power_of_two().max(512);
    let mut s = Session::new(
        model,
        SessionOptions {
            n_ctx,
            n_batch: ids.len().min(n_batch),
            ..SessionOptions::default()
        },
    );
    let mut rows = Vec::new();
    s.eval_with(&ids, true, |_, r| rows.push(r.to_vec()))
        .unwrap();
    let last16 = reference["top20_last16"].as_array().unwrap();
    for (k, want) in last16.iter().enumerate() {
        let p = ids.len() - last16.len() + k;
        check_top20(&rows[p], want, &format!("long prompt position {p}"));
    }
    let last = common::read_f32(&format!("{dir}/logits/{name}_last_logits.f32.bin"));
    check_vector(rows.last().unwrap(), &last, &format!("{dir} long prompt"));
    let generated = common::ids(&reference["generated_ids"]);
    let steps = reference["top20_after_each_step"].as_array().unwrap();
    assert_eq!(top_k(rows.last().unwrap(), 1)[0], generated[0]);
    for (k, (&tok, want)) in generated.iter().zip(steps).enumerate() {
        let mut row = Vec::new();
        s.eval_with(&[tok], true, |_, r| row = r.to_vec()).unwrap();
        let pos = ids.len() + k;
        check_top20(&row, want, &format!("decode step {k} (position {pos})"));
        if let Some(&next) = generated.get(k + 1) {
            assert_eq!(top_k(&row, 1)[0], next, "greedy step {}", k + 1);
        }
    }
}

#[test]
fn precise_path_matches_transformers_in_f32() {
    // The all-f32 path is checked against the f32 reference: transformers on the same weights
    // (rounded to bf16, which accounts for what is left of the difference).
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::data("hf-smollm2/reference.json")).unwrap(),
    )
    .unwrap();
    let ids = common::ids(&reference["prompt_ids"]);
    let rows = all_logits(smollm2_precise(), &ids);
    let hf = common::read_f32("hf-smollm2/last_logits.f32.bin");
    let last = rows.last().unwrap();
    let d = diff(last, &hf);
    eprintln!(
        "precise vs transformers: mean |d| {:.4}, max |d| {:.4}, cosine {:.6}",
        d.mean, d.max, d.cosine
    );
    assert!(
        d.mean < 0.05 && d.max < 0.25 && d.cosine > 0.9999,
        "mean {} max {} cos {}",
        d.mean,
        d.max,
        d.cosine
    );
    assert_eq!(top_k(last, 5), common::ids(&reference["last_top5_ids"]));
    // Against llama.cpp (8-bit activations) it sits where transformers does.
    let llama = common::read_f32("smollm2-q4_1/logits/prompt0_last_logits.f32.bin");
    let d = diff(last, &llama);
    assert!(
        d.mean < 0.15 && d.max < 1.0 && d.cosine > 0.999,
        "vs llama.cpp: mean {} max {}",
        d.mean,
        d.max
    );
}

#[test]
fn greedy_generation_matches_until_the_first_near_tie() {
    check_greedy_in(smollm2(), "smollm2-q4_1");
}

fn check_greedy_in(model: &Model, dir: &str) {
    for case in common::read_jsonl(&format!("{dir}/greedy.jsonl")) {
        let prompt = common::ids(&case["prompt_ids"]);
        let want = common::ids(&case["generated_ids"]);
        let margins: Vec<f64> = case["top1_minus_top2_logit"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_f64().unwrap())
            .collect();
        let firm = margins.iter().position(|&m| m < 0.05).unwrap_or(want.len());
        let mut s = Session::new(
            model,
            SessionOptions {
                n_ctx: 512,
                ..SessionOptions::default()
            },
        );
        let opts = GenerateOptions {
            max_tokens: want.len(),
            sampler: SamplerConfig::greedy(),
            stop_at_eog: true,
            record_logits: false,
        };
        let got = generate(&mut s, &prompt, &opts, |_| {}, |_| true)
            .unwrap()
            .generated;
        let n = firm.min(want.len());
        assert!(
            got.len() >= n,
            "{:?}: stopped after {} tokens",
            case["prompt"],
            got.len()
        );
        assert_eq!(
            &got[..n],
            &want[..n],
            "{:?}: tokens before the first near-tie (step {firm})",
            case["prompt"]
        );
    }
}

#[test]
fn perplexity_matches_llama_cpp_within_one_percent() {
    let model = smollm2();
    let text = std::fs::read_to_string(common::data("smollm2-q4_1/ppl_text_GPL-2.txt")).unwrap();
    let tokens = model
        .tokenizer()
        .unwrap()
        .encode(&text, true, false)
        .unwrap();
    let r =
        torchless_model::perplexity::perplexity(model, &tokens, 128, 128, |_, _, _| {}).unwrap();
    eprintln!(
        "perplexity {:.4} ± {:.4} over {} chunks (llama.cpp 22.0172 ± 1.468, 31 chunks)",
        r.ppl, r.ppl_err, r.chunks
    );
    assert_eq!(r.chunks, 31);
    assert!((r.ppl / 22.0172 - 1.0).abs() < 0.01, "perplexity {}", r.ppl);
    assert!(
        (r.ppl_err / 1.468 - 1.0).abs() < 0.05,
        "error estimate {}",
        r.ppl_err
    );
}

fn qwen() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| {
        Model::load(common::model("qwen2.5-coder-0.5b"), &LoadOptions::default()).expect("load")
    })
}

#[test]
fn qwen2_logits_match_llama_cpp() {
    check_logits_exact(qwen(), "qwen2.5-coder-0.5b-q4_k_m", 0);
    check_logits_exact(qwen(), "qwen2.5-coder-0.5b-q4_k_m", 1);
}

#[test]
fn qwen2_greedy_generation_matches_until_the_first_near_tie() {
    check_greedy_in(qwen(), "qwen2.5-coder-0.5b-q4_k_m");
}

/// Gemma 3 270M Q4_K_M, through the parts its family takes: embeddings scaled by √d, q/k
/// norms, queries scaled after the rotary (llama.cpp's order), GELU through ggml's f16 table,
/// sandwich norms, local and global layers with their own rope bases and 512-position
/// windows, tied head.
#[test]
fn gemma3_matches_llama_cpp() {
    let model = Model::load(common::model("gemma-3-270m"), &LoadOptions::default()).expect("load");
    let c = model.config();
    assert_eq!(c.arch, torchless_model::Arch::Gemma3);
    assert_eq!(
        c.plan.ropes.len(),
        2,
        "a local and a global rotary embedding"
    );
    let windows = c
        .plan
        .layers
        .iter()
        .filter(|l| l.attention().window.is_some());
    assert_eq!(windows.count(), c.n_layers - c.n_layers / 6);
    // What the cache holds: the 15 local layers their window, the 3 global ones everything.
    let per_layer_token = 2 * c.kv_dim() * 2;
    assert_eq!(
        c.kv_bytes(32768, 2),
        (15 * (512 + 16) + 3 * 32768) * per_layer_token
    );
    let s = Session::new(
        &model,
        SessionOptions {
            n_ctx: 4096,
            n_batch: 512,
            ..SessionOptions::default()
        },
    );
    // Blocks of 16: 256 for a global layer; (512 + 512 + 48) / 16 + 1 = 68, and the hole, for
    // a local one.
    assert_eq!(s.kv_bytes(), (3 * 256 + 15 * 69) * 16 * per_layer_token);
    drop(s);
    check_logits_exact(&model, "gemma-3-270m-q4_k_m", 0);
    check_logits_exact(&model, "gemma-3-270m-q4_k_m", 1);
    check_greedy_in(&model, "gemma-3-270m-q4_k_m");
    check_long(&model, "gemma-3-270m-q4_k_m", "long");
    // 700 positions: the local layers' 512-position window now leaves keys out, in the prompt
    // batch (each query its own window) and in the 24 decode steps after it.
    check_long(&model, "gemma-3-270m-q4_k_m", "long_window");
    // The same prompt in batches of 64: from the ninth batch on, the local layers' cache has
    // given back the blocks that slid out of every later query's window.
    check_long_in(&model, "gemma-3-270m-q4_k_m", "long_window", 64);
    // 1000 tokens of the GPL-2 text in one batch: the local layers' 512-position windows
    // leave nearly half the keys out.
    check_long(&model, "gemma-3-270m-q4_k_m", "long_1000");
}

/// Gemma 3's perplexity on the GPL-2 text, chunks of 512, against llama.cpp's perplexity tool
/// on the same file (AVX2 reference build: 11.6082 ± 0.72902 over 7 chunks). The logits of all
/// 7 chunks are llama.cpp's bit for bit (computed from llama.cpp's own logits through its Python
/// bindings, the perplexity is 11.6180, torchless's); the tool's figure differs by its own
/// bookkeeping.
#[test]
fn gemma3_perplexity_matches_llama_cpp_within_one_percent() {
    let model = Model::load(common::model("gemma-3-270m"), &LoadOptions::default()).unwrap();
    let text = std::fs::read_to_string(common::data("smollm2-q4_1/ppl_text_GPL-2.txt")).unwrap();
    let tokens = model
        .require_tokenizer()
        .unwrap()
        .encode(&text, true, false)
        .unwrap();
    let r =
        torchless_model::perplexity::perplexity(&model, &tokens, 512, 512, |_, _, _| {}).unwrap();
    eprintln!(
        "gemma 3 perplexity {:.4} ± {:.4} over {} chunks (llama.cpp 11.6082 ± 0.72902, 7)",
        r.ppl, r.ppl_err, r.chunks
    );
    assert_eq!(r.chunks, 7);
    assert!((r.ppl / 11.6082 - 1.0).abs() < 0.01, "perplexity {}", r.ppl);
}

/// Qwen2.5-Coder-1.5B Q4_K_M: every Q4_K matrix through llama.cpp's repacked kernels, Q6_K
/// through its eight-lane `vec_dot`.
#[test]
fn qwen2_1_5b_matches_llama_cpp() {
    let model =
        Model::load(common::model("qwen2.5-coder-1.5b"), &LoadOptions::default()).expect("load");
    check_logits_exact(&model, "qwen2.5-coder-1.5b-q4_k_m", 0);
    check_logits_exact(&model, "qwen2.5-coder-1.5b-q4_k_m", 1);
    check_greedy_in(&model, "qwen2.5-coder-1.5b-q4_k_m");
}

/// SmolLM2 requantized to Q4_0 (llama.cpp multiplies Q4_0 through its repacked kernels), to
/// Q4_K_M (Q4_K through the repacked kernels, Q6_K through `vec_dot` and, for batches of eight
/// or more, `ggml-cpu/tiled`, Q5_0 and Q8_0 elsewhere) and converted to F16 (float weights:
/// llamafile's `sgemm` for the prompt, `vec_dot` for decoding), rebuilt by the test as
/// `llama-quantize` makes them.
#[test]
fn requantized_smollm2_matches_llama_cpp() {
    use common::Recipe;
    for (recipe, dir) in [
        (Recipe::Q4_0, "smollm2-q4_0"),
        (Recipe::Q4KM, "smollm2-q4_k_m"),
        (Recipe::F16, "smollm2-f16"),
    ] {
        let model =
            Model::load(common::derived_smollm2(recipe), &LoadOptions::default()).expect("load");
        check_logits_exact(&model, dir, 0);
        check_logits_exact(&model, dir, 1);
        check_greedy_in(&model, dir);
    }
}

/// Several sequences of different lengths in one forward pass, their tokens interleaved (so
/// the sequence changes in the middle of a run of queries), give each sequence the logits it
/// gets alone. This is the shape of work that continuous batching hands the forward pass.
#[test]
fn interleaved_sequences_in_one_batch_match_separate_runs() {
    interleaved_sequences(smollm2(), torchless_kernels::Numerics::LlamaCpp);
}

/// The same in the batch-invariant numerics, on SmolLM2 and on Qwen2.5-Coder (Q4_K, Q6_K):
/// every row's logits are exactly those of its sequence run one token at a time.
#[test]
fn interleaved_sequences_are_bit_identical_in_batch_invariant_numerics() {
    interleaved_sequences(smollm2(), torchless_kernels::Numerics::BatchInvariant);
    interleaved_sequences(qwen(), torchless_kernels::Numerics::BatchInvariant);
}

/// Logits at every position of `ids`, one token per forward pass, in `numerics`.
fn logits_token_by_token(
    model: &Model,
    ids: &[u32],
    numerics: torchless_kernels::Numerics,
) -> Vec<Vec<f32>> {
    let mut s = Session::new(
        model,
        SessionOptions {
            n_ctx: 64,
            n_batch: 1,
            numerics,
            ..SessionOptions::default()
        },
    );
    ids.iter()
        .map(|&t| s.eval(&[t]).unwrap().to_vec())
        .collect()
}

fn interleaved_sequences(model: &Model, numerics: torchless_kernels::Numerics) {
    use torchless_model::{Batch, KvCache, KvConfig, Workspace};
    let exact = numerics == torchless_kernels::Numerics::BatchInvariant;
    let c = model.config();
    let prompts: [Vec<u32>; 3] = [
        vec![1, 504, 3458, 282, 4649, 314, 1345, 30, 216],
        vec![28, 9007, 1111, 42, 7],
        vec![2, 17, 880, 12000, 3, 65, 901, 44, 5000, 6, 99, 1024],
    ];
    let alone: Vec<Vec<Vec<f32>>> = prompts
        .iter()
        .map(|p| {
            if exact {
                logits_token_by_token(model, p, numerics)
            } else {
                all_logits(model, p)
            }
        })
        .collect();

    let n_ctx = 32;
    let mut cache = KvCache::new(KvConfig::new(
        c.n_layers,
        c.n_head_kv,
        c.head_dim,
        4,
        3 * n_ctx / 4,
        model.precision().kv_type(),
    ));
    let mut ws = Workspace::new(c, 32, n_ctx, model.threads());
    // Two passes; each takes a prefix of what is left of every sequence, interleaved.
    let plans: [&[(usize, usize)]; 2] = [
        &[(0, 2), (1, 3), (0, 2), (2, 1), (1, 1), (2, 5)],
        &[(2, 3), (0, 5), (1, 1), (2, 3)],
    ];
    let mut next = [0usize; 3];
    let mut got: Vec<Vec<Vec<f32>>> = vec![Vec::new(); 3];
    for plan in plans {
        let mut batch = Batch::new();
        batch.numerics = numerics;
        let mut owners = Vec::new();
        for &(s, count) in plan {
            for _ in 0..count {
                batch.push(prompts[s][next[s]], next[s], s as u32, true);
                owners.push(s);
                next[s] += 1;
            }
        }
        model.forward(&batch, &mut cache, &mut ws).unwrap();
        for (row, &s) in owners.iter().enumerate() {
            got[s].push(ws.logits_row(row).to_vec());
        }
    }
    for s in 0..3 {
        assert_eq!(next[s], prompts[s].len(), "plan covers sequence {s}");
        for (pos, (a, b)) in got[s].iter().zip(&alone[s]).enumerate() {
            let d = diff(a, b);
            if exact {
                let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "sequence {s} position {pos}: max |d| {}", d.max);
                continue;
            }
            assert!(
                d.max < 1e-3,
                "sequence {s} position {pos}: max |d| {}",
                d.max
            );
        }
    }
}

/// A batch that wants the logits of only some of its rows (the last one of each sequence, as a
/// server asks, and one in the middle) gets exactly those rows' logits, in order: the last
/// layer drops the other rows after attention.
#[test]
fn logits_of_chosen_rows_match_all_rows() {
    use torchless_model::{Batch, KvCache, KvConfig, Workspace};
    let model = smollm2();
    let c = model.config();
    let prompt = [1u32, 504, 3458, 282, 4649, 314, 1345, 30, 216, 17];
    let want = all_logits(model, &prompt);
    let mut cache = KvCache::new(KvConfig::new(
        c.n_layers,
        c.n_head_kv,
        c.head_dim,
        4,
        4,
        model.precision().kv_type(),
    ));
    let mut ws = Workspace::new(c, 16, 16, model.threads());
    let chosen = [2usize, 5, prompt.len() - 1];
    let mut batch = Batch::new();
    for (pos, &tok) in prompt.iter().enumerate() {
        batch.push(tok, pos, 0, chosen.contains(&pos));
    }
    model.forward(&batch, &mut cache, &mut ws).unwrap();
    for (row, &pos) in chosen.iter().enumerate() {
        let d = diff(ws.logits_row(row), &want[pos]);
        assert!(d.max < 1e-3, "position {pos}: max |d| {}", d.max);
    }
}

/// A prompt batch longer than the feed-forward block's chunk (128 rows) gives every position
/// the logits that small batches give: each chunk reads and updates its own rows of the
/// residual stream.
#[test]
fn long_batches_match_small_batches() {
    let model = smollm2();
    let vocab = model.config().vocab as u32;
    let prompt: Vec<u32> = (0..300u32).map(|i| (i * 7919 + 13) % vocab).collect();
    let whole = all_logits_in_batches(model, &prompt, 512);
    let small = all_logits_in_batches(model, &prompt, 50);
    assert_eq!(whole.len(), prompt.len());
    assert_eq!(small.len(), prompt.len());
    for (pos, (a, b)) in whole.iter().zip(&small).enumerate() {
        let d = diff(a, b);
        assert!(d.max < 1e-3, "position {pos}: max |d| {}", d.max);
    }
}

/// Rows of a batch get the batched products' arithmetic however the batch is cut into
/// feed-forward chunks: position 128 of a 129-token batch (where a naive cut leaves a one-row
/// chunk, which would take the single-token kernels) has exactly the logits it has in a
/// 130-token batch. Float weights, whose batched and single-token orders differ.
#[test]
fn feed_forward_chunks_keep_the_batched_arithmetic() {
    let dir = common::temp_dir("ffn_chunks");
    let path = common::write_tiny(&dir, "tiny.gguf", common::Tiny::default());
    let model = Model::load(&path, &LoadOptions::default()).expect("load");
    let prompt: Vec<u32> = (0..130u32).map(|i| (i * 37 + 5) % 64).collect();
    let short = all_logits(&model, &prompt[..129]);
    let long = all_logits(&model, &prompt);
    for pos in [0, 127, 128] {
        for (a, b) in short[pos].iter().zip(&long[pos]) {
            assert_eq!(a.to_bits(), b.to_bits(), "position {pos}: {a} vs {b}");
        }
    }
}

/// A workspace made for fewer threads than the model's pool is an error, not a worker's panic.
#[test]
fn a_workspace_for_fewer_threads_is_an_error() {
    use torchless_model::{Batch, KvCache, KvConfig, Workspace};
    let dir = common::temp_dir("ws_threads");
    let path = common::write_tiny(&dir, "tiny.gguf", common::Tiny::default());
    let opts = LoadOptions {
        threads: 2,
        ..LoadOptions::default()
    };
    let model = Model::load(&path, &opts).expect("load");
    let c = model.config();
    let mut cache = KvCache::new(KvConfig::new(
        c.n_layers,
        c.n_head_kv,
        c.head_dim,
        16,
        2,
        model.precision().kv_type(),
    ));
    let mut batch = Batch::new();
    batch.push(1, 0, 0, true);
    let mut ws = Workspace::new(c, 4, 16, 1);
    let err = model.forward(&batch, &mut cache, &mut ws).unwrap_err();
    assert!(err.to_string().contains("made for 1 threads"), "{err}");
    let mut ws = Workspace::new(c, 4, 16, model.threads());
    model.forward(&batch, &mut cache, &mut ws).expect("forward");
}
