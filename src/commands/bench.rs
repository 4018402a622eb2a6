//! `torchless bench`: prompt processing and generation speed, llama-bench style — mean and
//! standard deviation over repetitions, peak memory, the kernel path, and the memory-bandwidth
//! bound of generation (weight bytes read per token over a measured read bandwidth).

use std::time::Instant;

use torchless_kernels::Numerics;
use torchless_model::{GenerateOptions, Model, Session, SessionOptions, SpecOptions, SpecStats};

use torchless_model::attention_options::AttentionOptions;

use crate::options::{AttentionOpts, CliError, ModelOpts, SpeculationOpts};

/// The prompt of the speculative generation tests: code to continue.
const SPEC_PROMPT: &str = "# Python: parse a CSV file of transactions (date, account, amount) \
and total them by account and month.\nimport csv\nfrom collections import defaultdict\n\n\n\
def totals_by_account_month(path):\n";

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelOpts,
    /// Prompt tokens of the prompt-processing test (0 skips it).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
    pub n_prompt: usize,
    /// Tokens of the generation test (0 skips it).
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    pub n_gen: usize,
    /// Repetitions of each test.
    #[arg(short = 'r', long = "repetitions", default_value_t = 5)]
    pub reps: usize,
    /// Tokens already in the context when each test starts (llama-bench's depth): filled by an
    /// untimed prompt, so that generation and prompt speed are measured at that context length.
    #[arg(short = 'd', long = "n-depth", default_value_t = 0)]
    pub depth: usize,
    /// Prompt tokens per forward pass.
    #[arg(short = 'b', long = "batch-size", default_value_t = 512)]
    pub batch: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Measure the batch-invariant arithmetic order (what `serve` computes) instead of
    /// llama.cpp's.
    #[arg(long)]
    pub batch_invariant: bool,
    /// With a proposer (--draft-model, --speculative, --lookup): greedy generation of
    /// --n-gen tokens from --spec-prompt, plain and speculative, with the speculation's
    /// statistics.
    #[command(flatten)]
    pub speculation: SpeculationOpts,
    /// The prompt of the speculative generation tests.
    #[arg(long = "spec-prompt", default_value = SPEC_PROMPT)]
    pub spec_prompt: String,
    #[command(flatten)]
    pub attention: AttentionOpts,
    /// Skip the warm-up run before each test's repetitions.
    #[arg(long)]
    pub no_warmup: bool,
}

/// How each test's session computes.
#[derive(Clone, Copy)]
struct Setup {
    numerics: Numerics,
    attention: AttentionOptions,
}

/// Resident anonymous memory of this process in bytes (Linux), if known: the heap, where the
/// KV cache lives, without the pages of memory-mapped model files (a lookup of a token not
/// seen before faults in its embedding row, and the kernel reads ahead around it).
fn rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("RssAnon:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn stats(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 {
        xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// Peak resident memory of this process in bytes (Linux), if known.
pub fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Deterministic token ids spread over the vocabulary.
fn tokens(n: usize, vocab: usize) -> Vec<u32> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % vocab as u64) as u32
        })
        .collect()
}

/// A session with `depth` tokens already evaluated (untimed) and room for `n` more; forward
/// passes of at most `batch` tokens.
fn session_at_depth(
    model: &Model,
    depth: usize,
    n: usize,
    batch: usize,
    setup: Setup,
) -> Result<Session<'_>, CliError> {
    let mut s = Session::try_with_model(
        torchless_model::ModelRef::Borrowed(model),
        SessionOptions {
            n_ctx: depth + n + 1,
            n_batch: batch,
            numerics: setup.numerics,
            attention: setup.attention,
            ..SessionOptions::default()
        },
    )?;
    if depth > 0 {
        // Different ids from the timed tokens, so no test replays the fill.
        let fill: Vec<u32> = tokens(depth + n, model.config().vocab)
            .into_iter()
            .rev()
            .take(depth)
            .collect();
        s.eval(&fill)?;
    }
    Ok(s)
}

fn pp(model: &Model, n: usize, depth: usize, batch: usize, nm: Setup) -> Result<f64, CliError> {
    let toks = tokens(n, model.config().vocab);
    let mut s = session_at_depth(model, depth, n, batch, nm)?;
    let t = Instant::now();
    s.eval(&toks)?;
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

fn tg(model: &Model, n: usize, depth: usize, batch: usize, nm: Setup) -> Result<f64, CliError> {
    let toks = tokens(n, model.config().vocab);
    // Without a depth to fill, the workspace is sized for one token, as generation needs.
    let batch = if depth == 0 { 1 } else { batch };
    let mut s = session_at_depth(model, depth, n, batch, nm)?;
    let t = Instant::now();
    for tok in &toks {
        s.eval(std::slice::from_ref(tok))?;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// Greedy generation of `n` tokens after `prompt`: tokens per second of generation, and the
/// speculation's statistics when `proposer` drafts.
fn greedy_gen(
    model: &Model,
    prompt: &[u32],
    n: usize,
    nm: Numerics,
    proposer: Option<(&mut dyn torchless_model::speculative::Proposer, SpecOptions)>,
) -> Result<(f64, Option<SpecStats>), CliError> {
    let mut s = Session::new(
        model,
        SessionOptions {
            n_ctx: prompt.len() + n + 1,
            numerics: nm,
            ..SessionOptions::default()
        },
    );
    let opts = GenerateOptions {
        max_tokens: n,
        sampler: torchless_model::SamplerConfig::greedy(),
        stop_at_eog: false,
        record_logits: false,
    };
    Ok(match proposer {
        None => {
            let g = torchless_model::generate(&mut s, prompt, &opts, |_| {}, |_| true)?;
            (g.timings.gen_tps(), None)
        }
        Some((p, spec)) => {
            let (g, st) =
                torchless_model::speculative::generate(&mut s, p, prompt, &opts, &spec, |_| true)?;
            (g.timings.gen_tps(), Some(st))
        }
    })
}

pub fn run(a: Args) -> Result<(), CliError> {
    let model = a.model.load()?;
    let path = a.model.path()?;
    let nm = Setup {
        numerics: if a.batch_invariant {
            Numerics::BatchInvariant
        } else {
            Numerics::LlamaCpp
        },
        attention: a.attention.options()?,
    };
    // The cache a test builds, and what filling it makes resident (measured once, untimed).
    // The cache a test builds, and what filling it makes resident: positions past the first
    // pass (which also touches the weights and the workspace) measured, untimed.
    let kv = {
        let n = a.n_prompt.max(a.n_gen);
        let mut s = session_at_depth(&model, 0, a.depth + n, a.batch, nm)?;
        let fill: Vec<u32> = tokens(a.depth, model.config().vocab);
        let first = a.batch.min(a.depth);
        let mut grown = None;
        if a.depth > first {
            s.eval(&fill[..first])?;
            let before = rss();
            s.eval(&fill[first..])?;
            let after = rss();
            let per_position = s.kv_bytes() as f64 / s.n_ctx() as f64;
            let positions = a.depth - first;
            grown = before.zip(after).map(|(b, r)| {
                let predicted = (per_position * positions as f64) as u64;
                (positions, predicted, r.saturating_sub(b))
            });
        }
        let att = s.attention();
        let kv_desc = format!(
            "{}/{} (keys/values), {} attention",
            att.k_type.name(),
            att.v_type.name(),
            if att.flash_tile.is_some() {
                "flash"
            } else {
                "reference"
            }
        );
        (kv_desc, s.kv_bytes(), grown)
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let size = model.file_bytes();
    let mut results = Vec::new();
    let mut run_test =
        |label: String, f: &dyn Fn() -> Result<f64, CliError>| -> Result<(), CliError> {
            if !a.no_warmup {
                eprint!("bench: {label} warm-up");
                f()?;
            }
            let mut xs = Vec::with_capacity(a.reps);
            for r in 0..a.reps.max(1) {
                eprint!("\rbench: {label} run {}/{}   ", r + 1, a.reps.max(1));
                xs.push(f()?);
            }
            eprintln!();
            let (mean, sd) = stats(&xs);
            results.push((label, mean, sd, xs));
            Ok(())
        };
    let at = if a.depth > 0 {
        format!(" @ d{}", a.depth)
    } else {
        String::new()
    };
    if a.n_prompt > 0 {
        run_test(format!("pp{}{at}", a.n_prompt), &|| {
            pp(&model, a.n_prompt, a.depth, a.batch, nm)
        })?;
    }
    if a.n_gen > 0 {
        run_test(format!("tg{}{at}", a.n_gen), &|| {
            tg(&model, a.n_gen, a.depth, a.batch, nm)
        })?;
    }
    let mut spec_stats = None;
    if a.speculation.enabled() && a.n_gen > 0 {
        let spec = &a.speculation;
        let spec_opts = spec.options()?;
        let prompt = model
            .require_tokenizer()?
            .encode(&a.spec_prompt, true, true)?;
        let n_ctx = prompt.len() + a.n_gen + 1;
        let greedy = torchless_model::SamplerConfig::greedy();
        let proposer = std::cell::RefCell::new(
            spec.proposer(&model, &a.model, n_ctx, &greedy)?
                .ok_or_else(|| CliError::Usage("no proposer".into()))?,
        );
        let name = proposer.borrow().name();
        let last = std::cell::Cell::new(None);
        let inv = Numerics::BatchInvariant;
        run_test(format!("greedy tg{} (batch-invariant)", a.n_gen), &|| {
            Ok(greedy_gen(&model, &prompt, a.n_gen, inv, None)?.0)
        })?;
        run_test(format!("greedy tg{} +{name}", a.n_gen), &|| {
            let mut p = proposer.borrow_mut();
            let (tps, st) =
                greedy_gen(&model, &prompt, a.n_gen, inv, Some((p.as_mut(), spec_opts)))?;
            last.set(st);
            Ok(tps)
        })?;
        spec_stats = last.get().map(|s| (name, s));
    }
    // Peak memory of the tests themselves, before the bandwidth probe allocates its buffer.
    let peak = peak_rss();
    let pool = torchless_kernels::ThreadPool::new(model.threads());
    let bw = torchless_kernels::bandwidth::measure_read(&pool, 256 << 20, 5);
    let bytes_per_token = model.weights().bytes_per_token();
    let bound = bw / bytes_per_token as f64;
    let isa = model.kernels().isa().name();
    if a.json {
        let j = serde_json::json!({
            "model": name, "model_bytes": size, "threads": model.threads(), "kernels": isa,
            "results": results.iter().map(|(l, m, s, xs)| serde_json::json!({"test": l, "tokens_per_s": m, "stddev": s, "samples": xs})).collect::<Vec<_>>(),
            "peak_rss_bytes": peak, "read_bandwidth_bytes_per_s": bw,
            "weight_bytes_per_token": bytes_per_token, "generation_bound_tokens_per_s": bound,
            "kv_cache": {"types": kv.0, "bytes": kv.1, "fill": kv.2.map(|(n, p, r)| serde_json::json!({"positions": n, "predicted_bytes": p, "resident_growth_bytes": r}))},
            "speculation": spec_stats.map(|(name, s)| serde_json::json!({
                "proposer": name, "acceptance": s.acceptance(),
                "tokens_per_pass": s.tokens_per_pass(), "draft_share": s.draft_share(),
            })),
        });
        println!("{j:#}");
        return Ok(());
    }
    println!("| model | size | threads | kernels | test | t/s |");
    println!("| --- | ---: | ---: | --- | ---: | ---: |");
    for (label, mean, sd, _) in &results {
        println!(
            "| {name} | {:.1} MiB | {} | {isa} | {label} | {mean:.2} ± {sd:.2} |",
            size as f64 / 1048576.0,
            model.threads()
        );
    }
    println!();
    println!(
        "peak memory: {}",
        peak.map(|p| format!("{:.1} MiB", p as f64 / 1048576.0))
            .unwrap_or_else(|| "unknown".into())
    );
    println!(
        "read bandwidth: {:.1} GB/s; weights read per token: {:.1} MiB; generation bound: {:.1} t/s",
        bw / 1e9,
        bytes_per_token as f64 / 1048576.0,
        bound
    );
    println!(
        "KV cache: {}; {:.1} MiB for {} positions{}",
        kv.0,
        kv.1 as f64 / 1048576.0,
        a.depth + a.n_prompt.max(a.n_gen) + 1,
        kv.2.map(|(n, p, r)| format!(
            "; filling {n} more positions: predicted {:.1} MiB, resident anonymous memory grew {:.1} MiB",
            p as f64 / 1048576.0,
            r as f64 / 1048576.0
        ))
        .unwrap_or_default()
    );
    if let Some((name, s)) = spec_stats {
        println!(
            "speculation ({name}, last run): {:.1}% of {} drafted tokens accepted, {:.2} tokens \
             per target pass, drafting {:.0}% of the time",
            100.0 * s.acceptance(),
            s.drafted,
            s.tokens_per_pass(),
            100.0 * s.draft_share()
        );
    }
    if let Some((_, mean, _, _)) = results.iter().find(|r| r.0.starts_with("tg")) {
        println!(
            "generation at {:.0}% of the bandwidth bound",
            100.0 * mean / bound
        );
    }
    Ok(())
}
