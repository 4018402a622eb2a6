//! A model's files opened and described, before any weight is prepared for compute: which
//! format they are in (detected, or forced by `--format`), the configuration, the tokenizer,
//! and a [`WeightSource`] over the tensors. [`crate::Model`] builds on it to run a model,
//! [`crate::convert`] to write it in another format.
//!
//! Detection: a directory is a HuggingFace checkpoint; a file starting with `GGUF` is GGUF; a
//! file whose first 8 bytes give a header size that fits and a JSON object after it is the
//! original engine's `.bin` export; a `.safetensors` file is a checkpoint's weights (its
//! directory is opened). This module computes nothing.

use std::path::{Path, PathBuf};

use torchless_gguf::{GgufFile, LoadMode, Metadata};
use torchless_tokenizer::Tokenizer;

use crate::arch::Arch;
use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::source::gguf::GgufSource;
use crate::source::native::{self, NativeFile, NativeSource};
use crate::source::safetensors::HfSource;
use crate::source::WeightSource;

/// The file formats torchless reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    Gguf,
    /// A HuggingFace directory: config.json, safetensors, tokenizer files.
    Safetensors,
    /// The original torchless engine's export.
    Bin,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Gguf => "gguf",
            Format::Safetensors => "safetensors",
            Format::Bin => "bin",
        }
    }

    pub fn from_name(name: &str) -> Option<Format> {
        match name.to_ascii_lowercase().as_str() {
            "gguf" => Some(Format::Gguf),
            "safetensors" | "hf" | "huggingface" => Some(Format::Safetensors),
            "bin" | "native" | "torchless" => Some(Format::Bin),
            _ => None,
        }
    }

    /// The format of `path`, from its layout, magic bytes or extension.
    pub fn detect(path: &Path) -> Result<Format, ModelError> {
        if path.is_dir() {
            return Ok(Format::Safetensors);
        }
        let mut head = [0u8; 64];
        let (n, len) = match std::fs::File::open(path) {
            Ok(mut f) => {
                use std::io::Read;
                let n = f.read(&mut head).map_err(|e| io(path, e))?;
                (n, f.metadata().map(|m| m.len()).unwrap_or(0))
            }
            Err(e) => return Err(io(path, e)),
        };
        if &head[..4.min(n)] == b"GGUF" {
            return Ok(Format::Gguf);
        }
        if native::looks_native(&head[..n], len) {
            // A safetensors file also starts with a header size and JSON; its name tells.
            if path.extension().is_some_and(|e| e == "safetensors") {
                return Ok(Format::Safetensors);
            }
            return Ok(Format::Bin);
        }
        // Not recognisable: let the GGUF reader give its precise error.
        Ok(Format::Gguf)
    }
}

fn io(path: &Path, e: std::io::Error) -> ModelError {
    ModelError::Config(format!("cannot read {}: {e}", path.display()))
}

/// The opened files of a model, by format.
pub enum Files {
    Gguf(GgufFile),
    Hf { dir: PathBuf, source: HfSource },
    Bin(NativeFile),
}

/// A model's files opened, described and checked, weights not yet prepared.
pub struct Checkpoint {
    pub config: ModelConfig,
    pub files: Files,
    pub tokenizer: Option<Tokenizer>,
    /// The `tokenizer.*` keys a GGUF file carries (or would carry) for this tokenizer.
    pub tokenizer_metadata: Option<Metadata>,
    pub file_bytes: u64,
    /// config.json said `tie_word_embeddings: false` (HuggingFace only).
    pub untied: bool,
}

/// The architecture `forced` names, if any.
pub fn parse_arch(forced: Option<&str>) -> Result<Option<Arch>, ModelError> {
    forced
        .map(|name| {
            Arch::from_name(name).ok_or_else(|| ModelError::UnsupportedArch {
                name: name.to_string(),
                supported: Arch::supported(),
            })
        })
        .transpose()
}

impl Checkpoint {
    /// Opens `path` in `format` (detected when None) with architecture `arch` (the file's own
    /// when None).
    pub fn open(
        path: &Path,
        format: Option<Format>,
        arch: Option<Arch>,
        mode: LoadMode,
    ) -> Result<Checkpoint, ModelError> {
        let format = match format {
            Some(f) => f,
            None => Format::detect(path)?,
        };
        match format {
            Format::Gguf => Checkpoint::gguf(GgufFile::open(path, mode)?, arch),
            Format::Safetensors => {
                let dir = if path.is_dir() {
                    path
                } else {
                    path.parent().unwrap_or(Path::new("."))
                };
                Checkpoint::hf(dir, arch, mode)
            }
            Format::Bin => Checkpoint::bin(path, arch, mode),
        }
    }

    pub fn gguf(file: GgufFile, arch: Option<Arch>) -> Result<Checkpoint, ModelError> {
        let config = ModelConfig::from_gguf(&file, arch)?;
        let m = file.metadata();
        let tokenizer = match Tokenizer::from_metadata(m) {
            Ok(t) => Some(t),
            Err(torchless_tokenizer::TokenizerError::Missing) => None,
            Err(e) => return Err(e.into()),
        };
        let tokenizer_metadata = tokenizer.as_ref().map(|_| {
            let mut t = Metadata::new();
            for (k, v) in m.iter() {
                if k.starts_with("tokenizer.") {
                    t.insert(k, v.clone());
                }
            }
            t
        });
        let file_bytes = file.file_size();
        Ok(Checkpoint {
            config,
            files: Files::Gguf(file),
            tokenizer,
            tokenizer_metadata,
            file_bytes,
            untied: false,
        })
    }

    fn hf(dir: &Path, arch: Option<Arch>, mode: LoadMode) -> Result<Checkpoint, ModelError> {
        let json = crate::hf_config::read(dir)?;
        let names_arch = json.get("model_type").is_none() && json.get("architectures").is_none();
        let (arch, source) = match arch {
            Some(a) => (a, HfSource::open(dir, mode, a)?),
            // No name at all in config.json: the tensor names tell.
            None if names_arch => {
                let s = HfSource::open(dir, mode, Arch::Llama)?;
                let a = s.arch_from_names();
                tracing::warn!(
                    arch = a.name(),
                    "config.json names no architecture; chosen from the tensor names"
                );
                (a, s.with_arch(a))
            }
            None => {
                let a = crate::hf_config::arch_of(&json)?.0;
                (a, HfSource::open(dir, mode, a)?)
            }
        };
        let vocab = crate::weights::vocab_of_source(&source)?;
        let path = dir.join("config.json").display().to_string();
        let config = crate::hf_config::config_from_json(&json, &path, Some(arch), vocab)?;
        let untied = json
            .get("tie_word_embeddings")
            .and_then(serde_json::Value::as_bool)
            == Some(false);
        let (tokenizer, tokenizer_metadata) = match Tokenizer::from_hf_dir_described(dir)? {
            Some((t, m)) => (Some(t), Some(m)),
            None => (None, None),
        };
        let file_bytes = source.file_bytes();
        Ok(Checkpoint {
            config,
            files: Files::Hf {
                dir: dir.to_path_buf(),
                source,
            },
            tokenizer,
            tokenizer_metadata,
            file_bytes,
            untied,
        })
    }

    fn bin(path: &Path, arch: Option<Arch>, mode: LoadMode) -> Result<Checkpoint, ModelError> {
        let file = NativeFile::open(path, mode)?;
        // Files torchless writes carry the whole config.json; the original engine's describe
        // a Mistral with their own keys.
        let json = match file.metadata().get("config_json") {
            Some(text) => Some(
                serde_json::from_str::<serde_json::Value>(text).map_err(|e| {
                    ModelError::Config(format!(
                        "{}: metadata \"config_json\" is not JSON: {e}",
                        path.display()
                    ))
                })?,
            ),
            None => None,
        };
        let arch = match (arch, &json) {
            (Some(a), _) => a,
            (None, Some(j)) => crate::hf_config::arch_of(j)?.0,
            (None, None) => Arch::Mistral,
        };
        let src = NativeSource { file: &file, arch };
        let vocab = crate::weights::vocab_of_source(&src)?;
        let config = match &json {
            Some(j) => crate::hf_config::config_from_json(
                j,
                &format!("{} (config_json)", path.display()),
                Some(arch),
                vocab,
            )?,
            None => file.config(arch, vocab)?,
        };
        let (tokenizer, tokenizer_metadata) = match file.tokenizer_json() {
            Some(json) => {
                let (t, m) = Tokenizer::from_tokenizer_json(json, path)?;
                (Some(t), Some(m))
            }
            None => (None, None),
        };
        let file_bytes = file.file_bytes();
        let untied = json
            .as_ref()
            .and_then(|j| j.get("tie_word_embeddings"))
            .and_then(serde_json::Value::as_bool)
            == Some(false);
        Ok(Checkpoint {
            config,
            files: Files::Bin(file),
            tokenizer,
            tokenizer_metadata,
            file_bytes,
            untied,
        })
    }

    pub fn format(&self) -> Format {
        match self.files {
            Files::Gguf(_) => Format::Gguf,
            Files::Hf { .. } => Format::Safetensors,
            Files::Bin(_) => Format::Bin,
        }
    }

    /// Every tensor of the files as (name, type, elements, bytes), sorted by name.
    pub fn tensor_list(&self) -> Vec<(String, torchless_kernels::GgmlType, u64, u64)> {
        let from_map = |m: &std::collections::HashMap<String, torchless_kernels::Tensor>| {
            m.iter()
                .map(|(n, t)| {
                    (
                        n.clone(),
                        t.ty(),
                        t.n_elements() as u64,
                        t.bytes().len() as u64,
                    )
                })
                .collect::<Vec<_>>()
        };
        let mut v = match &self.files {
            Files::Gguf(f) => f
                .tensors()
                .iter()
                .map(|t| (t.name.clone(), t.ty, t.n_elements(), t.size))
                .collect(),
            Files::Hf { source, .. } => from_map(source.tensors()),
            Files::Bin(f) => from_map(f.tensors()),
        };
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The tensors, by role.
    pub fn source(&self) -> Box<dyn WeightSource + '_> {
        match &self.files {
            Files::Gguf(file) => Box::new(GgufSource { file }),
            Files::Hf { source, .. } => Box::new(source),
            Files::Bin(file) => Box::new(NativeSource {
                file,
                arch: self.config.arch,
            }),
        }
    }
}
