//! Options shared by the commands that load a model, and the one place that turns them into a
//! loaded [`Model`].

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use torchless_gguf::LoadMode;
use torchless_model::{Dump, LoadOptions, Model, ModelError, Precision};

/// The error of a command: what went wrong, in one sentence.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Hub(#[from] torchless_hub::HubError),
    #[error("cannot load model '{path}': {source}")]
    Load { path: String, source: ModelError },
    #[error("{0}")]
    Model(#[from] ModelError),
    #[error("{0}")]
    Tokenizer(#[from] torchless_tokenizer::TokenizerError),
    #[error("cannot {what} '{path}': {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Usage(String),
}

/// File formats `--format` accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Decide from the file's contents (magic bytes, layout, extension, or a directory).
    Auto,
    Gguf,
    /// A HuggingFace directory (config.json, safetensors, tokenizer.json).
    Safetensors,
    /// The original torchless engine's `.bin` export.
    Bin,
}

impl Format {
    pub fn forced(self) -> Option<torchless_model::Format> {
        match self {
            Format::Auto => None,
            Format::Gguf => Some(torchless_model::Format::Gguf),
            Format::Safetensors => Some(torchless_model::Format::Safetensors),
            Format::Bin => Some(torchless_model::Format::Bin),
        }
    }
}

/// The draft's default vocabulary window, for a vocabulary of more than `DRAFT_VOCAB_MIN` ids.
/// Measured on Qwen2.5-Coder-0.5B drafting for 1.5B (151936 ids, four code prompts, two Xeon
/// threads): 32768 ids keep 74-96% of drafts accepted and make a draft token ~15% cheaper,
/// 1.41x plain decoding on average against 1.29x with the whole head; 8192 ids accept too few.
const DRAFT_VOCAB: usize = 32768;
const DRAFT_VOCAB_MIN: usize = 65536;

/// Speculative decoding (`generate`): which proposer drafts, and how many tokens.
#[derive(Args, Clone, Debug, Default)]
pub struct SpeculationOpts {
    /// Draft with this smaller model (a path or a known model name); its vocabulary must be
    /// the target's. Speculation computes in the batch-invariant numerics.
    #[arg(long = "draft-model", value_name = "MODEL", conflicts_with_all = ["speculative", "lookup"])]
    pub draft_model: Option<String>,
    /// Self-speculation: the model drafts for itself with some of its layers skipped.
    #[arg(long, conflicts_with = "lookup")]
    pub speculative: bool,
    /// Layers the self-speculative draft runs, e.g. 0-5,14-27 (default: the first fifth and
    /// the second half).
    #[arg(long, value_name = "LAYERS", requires = "speculative")]
    pub draft_layers: Option<String>,
    /// Prompt lookup: draft the tokens that followed the latest earlier occurrence of the
    /// text's last N tokens (the longest match of up to N).
    #[arg(long, value_name = "N")]
    pub lookup: Option<usize>,
    /// Tokens drafted per round (where adaptive, the first round's; it then moves between 2
    /// and 8).
    #[arg(long = "speculation-length", value_name = "K", default_value_t = 5)]
    pub length: usize,
    /// Keep the draft length at --speculation-length.
    #[arg(long)]
    pub no_adaptive_speculation: bool,
    /// A draft model or layer-skipping draft stops at a token it gives less than this
    /// probability (the target would likely reject it; 0: draft the full length).
    #[arg(long = "draft-p-min", value_name = "P", default_value_t = 0.0)]
    pub p_min: f32,
    /// The draft model computes the logits of the first N token ids only (a byte-level BPE
    /// numbers its tokens most frequent first); 0: the whole vocabulary. Default: 32768 for a
    /// vocabulary of more than 65536 ids, else the whole vocabulary. Drafts only: the output
    /// is the target's either way.
    #[arg(long = "draft-vocab", value_name = "N", requires = "draft_model")]
    pub draft_vocab: Option<usize>,
}

impl SpeculationOpts {
    pub fn enabled(&self) -> bool {
        self.draft_model.is_some() || self.speculative || self.lookup.is_some()
    }

    pub fn options(&self) -> Result<torchless_model::SpecOptions, CliError> {
        let max = torchless_model::speculative::MAX_DRAFT;
        if !(1..=max).contains(&self.length) {
            return Err(CliError::Usage(format!(
                "--speculation-length must be between 1 and {max}"
            )));
        }
        if !(0.0..=1.0).contains(&self.p_min) {
            return Err(CliError::Usage("--draft-p-min must lie in [0, 1]".into()));
        }
        if self.lookup == Some(0) {
            return Err(CliError::Usage(
                "--lookup needs an n-gram size of at least 1".into(),
            ));
        }
        Ok(torchless_model::SpecOptions {
            length: self.length,
            adaptive: !self.no_adaptive_speculation,
        })
    }

    /// The proposer these options name for `target` (None: no speculation). A draft model is
    /// loaded as `load` says, on the target's threads.
    pub fn proposer<'m>(
        &self,
        target: &'m Model,
        load: &ModelOpts,
        n_ctx: usize,
        sampler: &torchless_model::SamplerConfig,
    ) -> Result<Option<Box<dyn torchless_model::speculative::Proposer + 'm>>, CliError> {
        use torchless_model::speculative::{parse_layers, DraftModel, LayerSkip, PromptLookup};
        let vocab = target.config().vocab;
        if let Some(n) = self.lookup {
            return Ok(Some(Box::new(PromptLookup::new(n))));
        }
        if self.speculative {
            let n_layers = target.config().n_layers;
            let keep = match &self.draft_layers {
                Some(spec) => parse_layers(spec)
                    .map_err(|e| CliError::Usage(format!("--draft-layers: {e}")))?,
                None => LayerSkip::default_layers(n_layers),
            };
            let mut p = LayerSkip::new(n_layers, &keep, sampler, vocab)?;
            p.p_min = self.p_min;
            return Ok(Some(Box::new(p)));
        }
        let Some(name) = &self.draft_model else {
            return Ok(None);
        };
        let draft = load_draft(name, target, load)?;
        let draft = torchless_model::ModelRef::Shared(draft);
        let mut p = DraftModel::new(draft, target, n_ctx, sampler)?;
        p.p_min = self.p_min;
        let ids = p.set_vocab_window(draft_window(self.draft_vocab, vocab));
        tracing::info!(ids, "draft vocabulary");
        Ok(Some(Box::new(p)))
    }
}

/// Loads the draft model `name` (a path or a known model name) as `load` says, on `target`'s
/// threads.
pub fn load_draft(
    name: &str,
    target: &Model,
    load: &ModelOpts,
) -> Result<std::sync::Arc<Model>, CliError> {
    let path = torchless_hub::resolve(Some(name))?;
    let opts = LoadOptions {
        pool: Some(target.shared_pool()),
        ..load.load_options()?
    };
    let draft = Model::load(&path, &opts).map_err(|source| CliError::Load {
        path: path.display().to_string(),
        source,
    })?;
    Ok(std::sync::Arc::new(draft))
}

/// The draft's vocabulary window from `--draft-vocab` (absent: the default for a vocabulary of
/// `vocab` ids; 0: none).
pub fn draft_window(flag: Option<usize>, vocab: usize) -> Option<usize> {
    match flag {
        Some(0) => None,
        Some(n) => Some(n),
        None => (vocab > DRAFT_VOCAB_MIN).then_some(DRAFT_VOCAB),
    }
}

/// How tokens are drawn (`generate`, `chat`).
#[derive(Args, Clone, Debug)]
pub struct SamplingOpts {
    /// Sampling temperature; 0 picks the most likely token every time.
    #[arg(long = "temp", default_value_t = 0.8)]
    pub temperature: f32,
    /// Keep only the K most likely tokens (0 = all).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches P.
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens less likely than P times the most likely one.
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Locally typical sampling with probability P (1 = off).
    #[arg(long = "typical", default_value_t = 1.0)]
    pub typical_p: f32,
    /// Divide the logits of tokens seen among the last --repeat-last-n (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Tokens the repetition, presence and frequency penalties look back over.
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: usize,
    /// Lower the logit of every token seen among the last --repeat-last-n by this, once.
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    pub presence_penalty: f32,
    /// Lower the logit of a token seen among the last --repeat-last-n by this per occurrence.
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    pub frequency_penalty: f32,
    /// DRY: penalize tokens that extend a repeated sequence (0 = off).
    #[arg(long, default_value_t = 0.0)]
    pub dry_multiplier: f32,
    /// DRY: growth of the penalty per token of the repeat beyond --dry-allowed-length.
    #[arg(long, default_value_t = 1.75)]
    pub dry_base: f32,
    /// DRY: repeats this long go unpenalized.
    #[arg(long, default_value_t = 2)]
    pub dry_allowed_length: usize,
    /// DRY: tokens looked back over (0 = all).
    #[arg(long, default_value_t = 0)]
    pub dry_penalty_last_n: usize,
    /// DRY: a text that ends a repeat (repeatable; default: newline, ':', '"', '*').
    #[arg(long = "dry-sequence-breaker")]
    pub dry_breakers: Vec<String>,
    /// Add a bias to a token's logit: TOKEN_ID(+/-)BIAS, e.g. 15043+1 or 2-inf (repeatable).
    #[arg(short = 'l', long = "logit-bias", allow_hyphen_values = true)]
    pub logit_bias: Vec<String>,
}

impl SamplingOpts {
    /// The sampler these options describe, checked against a vocabulary of `vocab` tokens.
    pub fn config(
        &self,
        seed: u64,
        vocab: usize,
    ) -> Result<torchless_model::SamplerConfig, CliError> {
        let mut c = torchless_model::SamplerConfig {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            typical_p: self.typical_p,
            repeat_penalty: self.repeat_penalty,
            penalty_last_n: self.repeat_last_n,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            dry_multiplier: self.dry_multiplier,
            dry_base: self.dry_base,
            dry_allowed_length: self.dry_allowed_length,
            dry_last_n: self.dry_penalty_last_n,
            logit_bias: self
                .logit_bias
                .iter()
                .map(|b| parse_bias(b))
                .collect::<Result<_, _>>()?,
            seed,
            ..torchless_model::SamplerConfig::default()
        };
        if !self.dry_breakers.is_empty() {
            c.dry_breakers = self.dry_breakers.clone();
        }
        c.check(vocab).map_err(|(field, why)| {
            let flag = match field {
                "temperature" => "temp".to_string(),
                "typical_p" => "typical".to_string(),
                f => f.replace('_', "-"),
            };
            CliError::Usage(format!("--{flag}: {why}"))
        })?;
        Ok(c)
    }
}

/// `TOKEN_ID(+/-)BIAS`, as llama.cpp's `--logit-bias` takes it.
fn parse_bias(s: &str) -> Result<(u32, f32), CliError> {
    let bad = || {
        CliError::Usage(format!(
            "--logit-bias {s}: expected TOKEN_ID+BIAS or TOKEN_ID-BIAS, e.g. 15043+1"
        ))
    };
    let at = s.find(['+', '-']).ok_or_else(bad)?;
    let id = s[..at].trim().parse::<u32>().map_err(|_| bad())?;
    let bias = s[at..].trim().parse::<f32>().map_err(|_| bad())?;
    if bias.is_nan() || bias == f32::INFINITY {
        return Err(bad());
    }
    Ok((id, bias))
}

#[derive(Args, Clone, Debug)]
pub struct ModelOpts {
    /// Model: a GGUF file, a HuggingFace directory, a `.bin` export, or a known model name
    /// (fetched on first use). Default: SmolLM2-135M-Instruct.
    #[arg(short = 'm', long = "model")]
    pub model: Option<String>,
    /// Force an architecture instead of the one the file names (e.g. llama, qwen2).
    #[arg(long)]
    pub arch: Option<String>,
    /// File format.
    #[arg(long, value_enum, default_value = "auto")]
    pub format: Format,
    /// Read the whole file into memory instead of memory-mapping it.
    #[arg(long)]
    pub no_mmap: bool,
    /// Compute threads (default: the number of physical cores).
    #[arg(short = 't', long, default_value_t = 0)]
    pub threads: usize,
    /// Compute everything in f32 (dequantized weights, f32 activations and KV cache) instead of
    /// llama.cpp's quantized-activation arithmetic.
    #[arg(long)]
    pub precise: bool,
    /// Keep every weight memory-mapped in the file's layout instead of repacking Q4_0, Q4_1,
    /// Q5_0, Q5_1 and Q8_0 matrices into the interleaved layout the SIMD kernels read faster
    /// (faster start, slower generation).
    #[arg(long)]
    pub no_repack: bool,
    /// Quantize float matrices while loading (q8_0, q4_0 or q4_k), e.g. a HuggingFace
    /// checkpoint's bf16 weights, with llama-quantize's reference quantizers.
    #[arg(long)]
    pub quantize: Option<String>,
}

impl ModelOpts {
    /// The model file, fetched first if it is a known name not yet in the cache.
    pub fn path(&self) -> Result<PathBuf, CliError> {
        Ok(torchless_hub::resolve(self.model.as_deref())?)
    }

    /// The model file opened (memory-mapped) for its metadata, without building the model.
    pub fn open_file(&self) -> Result<(PathBuf, torchless_gguf::GgufFile), CliError> {
        let path = self.path()?;
        let file =
            torchless_gguf::GgufFile::open(&path, LoadMode::Mmap).map_err(|e| CliError::Load {
                path: path.display().to_string(),
                source: e.into(),
            })?;
        Ok((path, file))
    }

    /// How `load` loads the model (the chat reloads with them on `/lazy` and `/model`).
    pub fn load_options(&self) -> Result<LoadOptions, CliError> {
        Ok(LoadOptions {
            mode: if self.no_mmap {
                LoadMode::Read
            } else {
                LoadMode::Mmap
            },
            arch: self.arch.clone(),
            format: self.format.forced(),
            quantize: self
                .quantize
                .as_deref()
                .map(|q| {
                    torchless_kernels::GgmlType::from_name(q)
                        .filter(|t| torchless_model::source::quantizing::TYPES.contains(t))
                        .ok_or_else(|| {
                            CliError::Usage(format!("--quantize {q}: expected q8_0, q4_0 or q4_k"))
                        })
                })
                .transpose()?,
            threads: self.threads,
            precision: if self.precise {
                Precision::F32
            } else {
                Precision::Reference
            },
            no_repack: self.no_repack,
            isa: isa_from_env()?,
            dump: dump_from_env(),
            pool: None,
        })
    }

    pub fn load(&self) -> Result<Model, CliError> {
        let path = self.path()?;
        let opts = self.load_options()?;
        Model::load(&path, &opts).map_err(|source| CliError::Load {
            path: path.display().to_string(),
            source,
        })
    }
}

/// The kernel set `TORCHLESS_ISA` names (scalar, avx2, avx512, neon), if it is set.
fn isa_from_env() -> Result<Option<torchless_kernels::Isa>, CliError> {
    match std::env::var("TORCHLESS_ISA") {
        Ok(v) if !v.trim().is_empty() => torchless_kernels::Isa::parse(&v)
            .map(Some)
            .map_err(|e| CliError::Usage(format!("TORCHLESS_ISA: {e}"))),
        _ => Ok(None),
    }
}

/// `TORCHLESS_DUMP` (print every intermediate tensor) and `TORCHLESS_DUMP_DIR` (also save them).
fn dump_from_env() -> Dump {
    match (
        std::env::var_os("TORCHLESS_DUMP"),
        std::env::var_os("TORCHLESS_DUMP_DIR"),
    ) {
        (None, _) => Dump::Off,
        (Some(_), Some(dir)) => Dump::PrintAndSave(dir.into()),
        (Some(_), None) => Dump::Print,
    }
}

/// Parses "1,2,3" (spaces allowed) into token ids.
pub fn parse_ids(s: &str) -> Result<Vec<u32>, CliError> {
    s.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<u32>()
                .map_err(|_| CliError::Usage(format!("'{t}' in --prompt-ids is not a token id")))
        })
        .collect()
}

/// Attention and KV cache settings (`generate`, `chat`, `serve`, `bench`, `perplexity`).
#[derive(Args, Clone, Debug)]
pub struct AttentionOpts {
    /// Flash attention (tiles with the online softmax; other bits than llama.cpp's reference
    /// path): on, off, or auto (on for contexts above 4096 positions and for quantized KV
    /// caches).
    #[arg(
        long = "flash-attn",
        value_name = "on|off|auto",
        default_value = "auto"
    )]
    pub flash_attn: String,
    /// Positions per flash attention tile (a power of two from 8 to 256).
    #[arg(long = "flash-tile-size", value_name = "N", default_value_t = torchless_kernels::flash::DEFAULT_TILE)]
    pub flash_tile_size: usize,
    /// Element type of the KV cache, keys and values: f32, f16, q8_0 or q4_0 (the quantized
    /// types run flash attention). Default: f16 (f32 with --precise).
    #[arg(long = "kv-cache-dtype", value_name = "TYPE")]
    pub kv_cache_dtype: Option<String>,
    /// Element type of the keys alone (overrides --kv-cache-dtype for them).
    #[arg(long = "cache-type-k", value_name = "TYPE")]
    pub cache_type_k: Option<String>,
    /// Element type of the values alone (overrides --kv-cache-dtype for them).
    #[arg(long = "cache-type-v", value_name = "TYPE")]
    pub cache_type_v: Option<String>,
}

impl Default for AttentionOpts {
    fn default() -> Self {
        AttentionOpts {
            flash_attn: "auto".into(),
            flash_tile_size: torchless_kernels::flash::DEFAULT_TILE,
            kv_cache_dtype: None,
            cache_type_k: None,
            cache_type_v: None,
        }
    }
}

impl AttentionOpts {
    /// The options these flags give; an error naming the flag that does not parse.
    pub fn options(
        &self,
    ) -> Result<torchless_model::attention_options::AttentionOptions, CliError> {
        use torchless_model::attention_options::{AttentionOptions, FlashMode};
        use torchless_model::KvType;
        let flash = FlashMode::parse(&self.flash_attn).ok_or_else(|| {
            CliError::Usage(format!(
                "--flash-attn {}: expected on, off or auto",
                self.flash_attn
            ))
        })?;
        let ty = |flag: &str, v: &Option<String>| -> Result<Option<KvType>, CliError> {
            v.as_deref()
                .map(|s| {
                    KvType::parse(s).ok_or_else(|| {
                        CliError::Usage(format!("{flag} {s}: expected f32, f16, q8_0 or q4_0"))
                    })
                })
                .transpose()
        };
        let both = ty("--kv-cache-dtype", &self.kv_cache_dtype)?;
        Ok(AttentionOptions {
            flash,
            flash_tile: self.flash_tile_size,
            k_type: ty("--cache-type-k", &self.cache_type_k)?.or(both),
            v_type: ty("--cache-type-v", &self.cache_type_v)?.or(both),
        })
    }
}
