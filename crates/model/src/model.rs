//! A loaded model: configuration, weights, tokenizer, and the compute context (kernels and
//! thread pool) its forward pass runs on. A path to a file loads a GGUF file; a path to a
//! directory loads a HuggingFace checkpoint (config.json + safetensors).

use std::path::Path;

use torchless_gguf::{GgufFile, LoadMode};
use torchless_kernels::{Isa, Kernels, ThreadPool};
use torchless_tokenizer::Tokenizer;

use crate::arch::Arch;
use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::kv_cache::KvType;
use crate::source::gguf::GgufSource;
use crate::source::native;
use crate::source::safetensors::HfSource;
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
    /// Force an architecture instead of `general.architecture`.
    pub arch: Option<String>,
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
    pub(crate) pool: ThreadPool,
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

/// The architecture `--arch` names, if any.
fn forced_arch(opts: &LoadOptions) -> Result<Option<Arch>, ModelError> {
    opts.arch
        .as_deref()
        .map(|name| {
            Arch::from_name(name).ok_or_else(|| ModelError::UnsupportedArch {
                name: name.to_string(),
                supported: Arch::supported(),
            })
        })
        .transpose()
}

impl Model {
    /// Opens a GGUF file, or a HuggingFace directory, and builds the model it describes.
    pub fn load(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<Model, ModelError> {
        let path = path.as_ref();
        if path.is_dir() {
            return Model::from_hf_dir(path, opts);
        }
        // GGUF by its magic; the `.bin` export by its layout (a header size, then JSON).
        let mut head = [0u8; 64];
        let (n, len) = match std::fs::File::open(path) {
            Ok(mut f) => {
                use std::io::Read;
                let n = f.read(&mut head).unwrap_or(0);
                (n, f.metadata().map(|m| m.len()).unwrap_or(0))
            }
            Err(_) => (0, 0),
        };
        if &head[..4.min(n)] != b"GGUF" && native::looks_native(&head[..n], len) {
            return Model::from_native(path, opts);
        }
        let file = GgufFile::open(path, opts.mode)?;
        Model::from_gguf(file, opts)
    }

    /// Loads a `.bin` file of the original torchless engine (Mistral-family weights; int8
    /// tensors dequantized to f32). Its tokenizer is not read yet: such a model runs on ids.
    pub fn from_native(path: &Path, opts: &LoadOptions) -> Result<Model, ModelError> {
        let file = native::NativeFile::open(path, opts.mode)?;
        let arch = forced_arch(opts)?.unwrap_or(Arch::Mistral);
        let src = native::NativeSource { file: &file, arch };
        let vocab = crate::weights::vocab_of_source(&src)?;
        let config = file.config(arch, vocab)?;
        let weights = Weights::load(&src, &config)?;
        let bytes = file.file_bytes();
        Model::assemble(config, weights, None, None, bytes, opts)
    }

    pub fn from_gguf(file: GgufFile, opts: &LoadOptions) -> Result<Model, ModelError> {
        let config = ModelConfig::from_gguf(&file, forced_arch(opts)?)?;
        let weights = Weights::load(&GgufSource { file: &file }, &config)?;
        let m = file.metadata();
        let tokenizer = match Tokenizer::from_metadata(m) {
            Ok(t) => Some(t),
            Err(torchless_tokenizer::TokenizerError::Missing) => None,
            Err(e) => return Err(e.into()),
        };
        if let Some(t) = &tokenizer {
            if t.len() > config.vocab {
                tracing::warn!(
                    "the tokenizer has {} tokens but the model only {} rows",
                    t.len(),
                    config.vocab
                );
            }
        }
        let file_bytes = file.file_size();
        Model::assemble(config, weights, tokenizer, Some(file), file_bytes, opts)
    }

    /// Loads a HuggingFace checkpoint: `dir/config.json` and its safetensors files (F32, F16
    /// or BF16 weights, viewed in place). The tokenizer files are not read yet: such a model
    /// runs on token ids.
    pub fn from_hf_dir(dir: &Path, opts: &LoadOptions) -> Result<Model, ModelError> {
        let json = crate::hf_config::read(dir)?;
        let arch = match forced_arch(opts)? {
            Some(a) => a,
            None => crate::hf_config::arch_of(&json)?.0,
        };
        let src = HfSource::open(dir, opts.mode, arch)?;
        let vocab = crate::weights::vocab_of_source(&src)?;
        let path = dir.join("config.json").display().to_string();
        let config = crate::hf_config::config_from_json(&json, &path, Some(arch), vocab)?;
        let weights = Weights::load(&src, &config)?;
        let untied = json
            .get("tie_word_embeddings")
            .and_then(serde_json::Value::as_bool)
            == Some(false);
        if untied && weights.tied_output {
            return Err(ModelError::MissingTensor(
                "lm_head.weight (config.json says tie_word_embeddings: false)".into(),
            ));
        }
        let bytes = src.file_bytes();
        Model::assemble(config, weights, None, None, bytes, opts)
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
        let threads = if opts.threads == 0 {
            physical_cores()
        } else {
            opts.threads
        };
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
            pool: ThreadPool::new(threads),
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
}
