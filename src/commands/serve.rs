//! `torchless serve`: the OpenAI-compatible server. Loads the model, sizes the engine from
//! the flags, binds, and serves until SIGINT/SIGTERM (then running requests get a grace
//! period and the process exits 0).

use std::sync::Arc;
use std::time::Duration;

use torchless_engine::{Engine, EngineOptions, SpecConfig};
use torchless_kernels::Numerics;
use torchless_server::{AppState, ServerOptions};

use crate::options::{AttentionOpts, CliError, ModelOpts};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelOpts,
    #[command(flatten)]
    pub attention: AttentionOpts,
    /// Speculate per sequence by prompt lookup: draft the tokens that followed the latest
    /// earlier occurrence of the context's last n-gram (up to N tokens long), verified in the
    /// same batch. Greedy requests get the same tokens as without it.
    #[arg(long, value_name = "N", conflicts_with = "draft_model")]
    pub lookup: Option<usize>,
    /// Speculate per sequence with this smaller model of the same vocabulary (a path or a
    /// known model name): it drafts for every decoding sequence in batched passes of its own,
    /// and the drafts are verified in the same batch. Greedy requests get the same tokens as
    /// without it.
    #[arg(long = "draft-model", value_name = "MODEL")]
    pub draft_model: Option<String>,
    /// The draft model computes the logits of the first N token ids only (0: all; default
    /// 32768 for vocabularies over 65536 ids).
    #[arg(long = "draft-vocab", value_name = "N", requires = "draft_model")]
    pub draft_vocab: Option<usize>,
    /// Most tokens drafted per sequence and step (1 to 16). A draft model drafts as many as
    /// its acceptance and cost make pay, up to K, unless --no-adaptive-speculation.
    #[arg(long = "speculation-length", value_name = "K", default_value_t = 5)]
    pub speculation_length: usize,
    /// A draft model always drafts --speculation-length tokens.
    #[arg(long, requires = "draft_model")]
    pub no_adaptive_speculation: bool,
    /// Address to bind (127.0.0.1: this machine only).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Positions one sequence may hold (0: the model's training context, at most 4096).
    #[arg(short = 'c', long = "ctx-size", default_value_t = 0)]
    pub ctx_size: usize,
    /// Most sequences running at once.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Most tokens in one forward pass (decoded tokens and prompt chunks together).
    #[arg(long, default_value_t = 128)]
    pub batch_tokens: usize,
    /// Most prompt tokens in a step while other sequences decode (or as many as decode, if
    /// more); smaller keeps inter-token latency low while prompts are prefilled, larger gives
    /// a faster first token. 0: only --batch-tokens limits them.
    #[arg(long, default_value_t = 32)]
    pub chunk_tokens: usize,
    /// Positions per KV cache block.
    #[arg(long, default_value_t = 16)]
    pub block_size: usize,
    /// Blocks in the KV cache pool.
    #[arg(long, conflicts_with = "kv_memory")]
    pub cache_blocks: Option<usize>,
    /// Memory for the KV cache pool, e.g. 512MiB or 2GiB.
    #[arg(long)]
    pub kv_memory: Option<String>,
    /// Most requests waiting for admission; more get 429.
    #[arg(long, default_value_t = 256)]
    pub max_queue: usize,
    /// Require 'Authorization: Bearer KEY' on every route but /health.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Never preempt a running sequence: admission waits until a request's whole generation
    /// fits.
    #[arg(long)]
    pub no_preemption: bool,
    /// Do not reuse the KV blocks of earlier requests that share a prefix.
    #[arg(long)]
    pub no_prefix_cache: bool,
    /// Seconds running requests may go on after SIGINT/SIGTERM.
    #[arg(long, default_value_t = 30)]
    pub shutdown_grace: u64,
    /// The name /v1/models gives the model (default: its file name).
    #[arg(long)]
    pub alias: Option<String>,
    /// Chat template instead of the model's own: chatml, llama2, llama3, mistral, phi3,
    /// gemma, or a Jinja file.
    #[arg(long)]
    pub template: Option<String>,
    /// Follow llama.cpp's arithmetic order (its bits for a lone request) instead of the
    /// batch-invariant one (results independent of the other requests).
    #[arg(long)]
    pub llama_cpp_numerics: bool,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 8 << 20)]
    pub body_limit: usize,
    /// Test hook: requests with "user": "panic-test" panic in their output path.
    #[arg(long, hide = true)]
    pub test_panic_hook: bool,
}

/// Bytes from a size such as 512MiB, 2GiB, 100MB or 4096.
pub fn parse_size(s: &str) -> Result<usize, CliError> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| CliError::Usage(format!("--kv-memory '{s}' is not a size such as 512MiB")))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1048576.0,
        "g" | "gb" => 1e9,
        "gib" => 1073741824.0,
        u => {
            return Err(CliError::Usage(format!(
                "--kv-memory '{s}': unknown unit '{u}' (use B, KiB, MiB, GiB, KB, MB or GB)"
            )))
        }
    };
    Ok((n * mult) as usize)
}

pub fn run(a: Args) -> Result<(), CliError> {
    let path = a.model.path()?;
    let model = Arc::new(a.model.load()?);
    let kv_memory = a.kv_memory.as_deref().map(parse_size).transpose()?;
    let chat_template = match &a.template {
        Some(t) => Some(Arc::new(model.require_tokenizer()?.template_named(t)?)),
        None => None,
    };
    let speculation = speculation(&a, model.config().vocab)?;
    let draft = match &a.draft_model {
        Some(name) => Some(crate::options::load_draft(name, &model, &a.model)?),
        None => None,
    };
    let engine = Engine::start_with_draft(
        model.clone(),
        draft,
        EngineOptions {
            n_ctx: a.ctx_size,
            max_running: a.batch_size,
            batch_tokens: a.batch_tokens,
            chunk_tokens: a.chunk_tokens,
            block_size: a.block_size,
            n_blocks: a.cache_blocks,
            kv_memory,
            max_queue: a.max_queue,
            preemption: !a.no_preemption,
            prefix_cache: !a.no_prefix_cache,
            numerics: if a.llama_cpp_numerics {
                Numerics::LlamaCpp
            } else {
                Numerics::BatchInvariant
            },
            attention: a.attention.options()?,
            speculation,
        },
    )?;
    let name = a.alias.clone().unwrap_or_else(|| {
        let file = path.file_name().map(|f| f.to_string_lossy().into_owned());
        let file = file.unwrap_or_else(|| "model".into());
        file.strip_suffix(".gguf")
            .map(str::to_string)
            .unwrap_or(file)
    });
    let n_ctx = engine.n_ctx();
    let kv_mib = engine.kv_bytes() >> 20;
    let st = AppState::new(
        engine,
        model,
        ServerOptions {
            model_name: name.clone(),
            api_key: a.api_key.clone(),
            shutdown_grace: Duration::from_secs(a.shutdown_grace),
            body_limit: a.body_limit,
            panic_hook: a.test_panic_hook,
            chat_template,
        },
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::Usage(format!("cannot start the server runtime: {e}")))?;
    let addr = format!("{}:{}", a.host, a.port);
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| CliError::Io {
                what: "listen on",
                path: addr.clone(),
                source: e,
            })?;
        eprintln!(
            "torchless serving '{name}' on http://{addr} (context {n_ctx} per sequence, KV cache {kv_mib} MiB)"
        );
        torchless_server::serve(listener, st, torchless_server::shutdown_signal())
            .await
            .map_err(|e| CliError::Io {
                what: "serve on",
                path: addr,
                source: e,
            })
    })?;
    // Requests still running past the grace period are cut off here.
    std::process::exit(0);
}

/// The speculation `--lookup`, `--draft-model` and `--speculation-length` ask for (`vocab`: the
/// model's vocabulary, for the draft's default window).
fn speculation(a: &Args, vocab: usize) -> Result<Option<SpecConfig>, CliError> {
    use torchless_engine::Drafter;
    let drafter = match (a.lookup, &a.draft_model) {
        (Some(0), _) => {
            return Err(CliError::Usage(
                "--lookup 0: the n-gram needs at least one token".into(),
            ))
        }
        (Some(n), _) => Drafter::Lookup(n),
        (None, Some(_)) => Drafter::Model {
            vocab_window: crate::options::draft_window(a.draft_vocab, vocab),
        },
        (None, None) => return Ok(None),
    };
    let max = torchless_model::speculative::MAX_DRAFT;
    if !(1..=max).contains(&a.speculation_length) {
        return Err(CliError::Usage(format!(
            "--speculation-length {}: expected 1 to {max}",
            a.speculation_length
        )));
    }
    Ok(Some(SpecConfig {
        drafter,
        length: a.speculation_length,
        adaptive: !a.no_adaptive_speculation,
    }))
}
