//! A loaded model: configuration, weights, tokenizer, and the compute context (kernels and
//! thread pool) its forward pass runs on, built from an opened [`Checkpoint`] (a GGUF file, a
//! HuggingFace directory or a `.bin` export).

use std::path::Path;

use torchless_gguf::{GgufFile, LoadMode};
use torchless_kernels::{Isa, Kernels, ThreadPool};
use torchless_tokenizer::Tokenizer;

use crate::checkpoint::{parse_arch, Checkpoint, Files, Format};
use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::kv_cache::KvType;
use crate::weights::Weights;

/// Which arithmetic the forward pass uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// llama.cpp's: activations quantized per block before quantized dot products, f16 KV
    /// cache. Fast, and the tokens match the reference engine.
    #[default]
    Reference,
    /// Everything in f32: weights dequantized, f32 activations and KV cache (`--precise`).
    F32,
}

impl Precision {
    pub fn kv_type(self) -> KvType {
        match self {
            Precision::Reference => KvType::F16,
            Precision::F32 => KvType::F32,
        }
    }
}

/// How to load a model.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    pub mode: LoadMode,
    /// Force an architecture instead of the one the files name (`--arch`).
    pub arch: Option<String>,
    /// Force a file format instead of detecting it (`--format`).
    pub format: Option<Format>,
    /// Quantize float matrices while loading (`--quantize`: Q8_0, Q4_0 or Q4_K).
    pub quantize: Option<torchless_kernels::GgmlType>,
    /// Threads of the compute pool (0 = physical cores).
    pub threads: usize,
    pub precision: Precision,
    /// Keep every weight in the file's layout (no repacking into the interleaved layouts that
    /// some kernels read faster; `--no-repack`).
    pub no_repack: bool,
    /// The kernel set to run (`None`: the best this CPU supports).
    pub isa: Option<Isa>,
    /// Whether (and where) the forward pass reports its intermediate tensors.
    pub dump: Dump,
    /// Run on this compute pool instead of starting one (a draft model, or a model swapped
    /// in, shares the engine's threads; `threads` is then the pool's).
    pub pool: Option<SharedPool>,
}

/// A thread pool several models can share.
#[derive(Clone)]
pub struct SharedPool(pub std::sync::Arc<ThreadPool>);

impl std::fmt::Debug for SharedPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedPool({} threads)", self.0.n_threads())
    }
}

/// The forward pass's report of every intermediate tensor (first and last values and sum, in
/// the format of llama.cpp's eval-callback tool), to find where two engines part ways.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Dump {
    #[default]
    Off,
    /// Print to stderr.
    Print,
    /// Print to stderr and write each tensor's f32 values to `DIR/NAME.bin`.
    PrintAndSave(std::path::PathBuf),
}

/// A model ready to run.
pub struct Model {
    pub(crate) config: ModelConfig,
    pub(crate) weights: Weights,
    tokenizer: Option<Tokenizer>,
    /// The GGUF file the model came from (None for a HuggingFace directory).
    gguf: Option<GgufFile>,
    file_bytes: u64,
    pub(crate) precision: Precision,
    pub(crate) kernels: Kernels,
    pub(crate) pool: std::sync::Arc<ThreadPool>,
    pub(crate) dump: Dump,
}

/// The number of physical cores (logical CPUs when that cannot be told).
pub fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
        return logical;
    };
    let mut cores = std::collections::HashSet::new();
    let mut phys = String::new();
    for line in info.lines() {
        if let Some((k, v)) = line.split_once(':') {
            match k.trim() {
                "physical id" => phys = v.trim().to_string(),
                "core id" => {
                    cores.insert((phys.clone(), v.trim().to_string()));
                }
                _ => {}
            }
        }
    }
    if cores.is_empty() {
        logical
    } else {
        cores.len().min(logical)
    }
}

impl Model {
    /// Opens a model — a GGUF file, a HuggingFace directory, or a `.bin` export, as
    /// [`Checkpoint::open`] detects (or `opts.format` says) — and builds it.
    pub fn load(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<Model, ModelError> {
        let arch = parse_arch(opts.arch.as_deref())?;
        let ck = Checkpoint::open(path.as_ref(), opts.format, arch, opts.mode)?;
        Model::from_checkpoint(ck, opts)
    }

    pub fn from_gguf(file: GgufFile, opts: &LoadOptions) -> Result<Model, ModelError> {
        let arch = parse_arch(opts.arch.as_deref())?;
        Model::from_checkpoint(Checkpoint::gguf(file, arch)?, opts)
    }

    /// Prepares the weights of an opened checkpoint for compute.
    pub fn from_checkpoint(ck: Checkpoint, opts: &LoadOptions) -> Result<Model, ModelError> {
        let config = ck.config.clone();
        let weights = match opts.quantize {
            Some(ty) => {
                if !crate::source::quantizing::TYPES.contains(&ty) {
                    return Err(ModelError::Invalid(format!(
                        "--quantize {} is not one of q8_0, q4_0, q4_k",
                        ty.name()
                    )));
                }
                let src = crate::source::quantizing::Quantizing {
                    inner: ck.source(),
                    ty,
                };
                Weights::load(&src, &config)?
            }
            None => Weights::load(&*ck.source(), &config)?,
        };
        if ck.untied && weights.tied_output {
            return Err(ModelError::MissingTensor(
                "lm_head.weight (config.json says tie_word_embeddings: false)".into(),
            ));
        }
        if let Some(t) = &ck.tokenizer {
            if t.len() > config.vocab {
                tracing::warn!(
                    "the tokenizer has {} tokens but the model only {} rows",
                    t.len(),
                    config.vocab
                );
            }
        }
        let gguf = match ck.files {
            Files::Gguf(file) => Some(file),
            _ => None,
        };
        Model::assemble(config, weights, ck.tokenizer, gguf, ck.file_bytes, opts)
    }

    fn assemble(
        config: ModelConfig,
        mut weights: Weights,
        tokenizer: Option<Tokenizer>,
        gguf: Option<GgufFile>,
        file_bytes: u64,
        opts: &LoadOptions,
    ) -> Result<Model, ModelError> {
        let kernels = match opts.isa {
            Some(isa) => Kernels::new(isa).map_err(|e| ModelError::Config(e.to_string()))?,
            None => Kernels::best(),
        };
        if opts.precision == Precision::Reference && !opts.no_repack {
            let n = weights.repack(&kernels);
            if n > 0 {
                tracing::info!(matrices = n, "weights repacked into the interleaved layout");
            }
        }
        let pool = match &opts.pool {
            Some(p) => p.0.clone(),
            None => std::sync::Arc::new(ThreadPool::new(if opts.threads == 0 {
                physical_cores()
            } else {
                opts.threads
            })),
        };
        let threads = pool.n_threads();
        tracing::info!(
            arch = config.arch.name(),
            layers = config.n_layers,
            n_embd = config.n_embd,
            threads,
            isa = kernels.isa().name(),
            "model loaded"
        );
        Ok(Model {
            config,
            weights,
            tokenizer,
            gguf,
            file_bytes,
            precision: opts.precision,
            kernels,
            pool,
            dump: opts.dump.clone(),
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn weights(&self) -> &Weights {
        &self.weights
    }

    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        self.tokenizer.as_ref()
    }

    /// The tokenizer, or an error saying the model has none.
    pub fn require_tokenizer(&self) -> Result<&Tokenizer, ModelError> {
        self.tokenizer.as_ref().ok_or(ModelError::Tokenizer(
            torchless_tokenizer::TokenizerError::Missing,
        ))
    }

    /// The GGUF file the model was loaded from (None for a HuggingFace directory).
    pub fn gguf(&self) -> Option<&GgufFile> {
        self.gguf.as_ref()
    }

    /// Bytes of the model's files.
    pub fn file_bytes(&self) -> u64 {
        self.file_bytes
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    pub fn kernels(&self) -> &Kernels {
        &self.kernels
    }

    pub fn threads(&self) -> usize {
        self.pool.n_threads()
    }

    /// The compute pool, to share with another model (see [`LoadOptions::pool`]).
    pub fn shared_pool(&self) -> SharedPool {
        SharedPool(self.pool.clone())
    }
}
