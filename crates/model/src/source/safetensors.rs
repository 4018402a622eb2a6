//! Weights from a HuggingFace model directory: `model.safetensors`, or the shards that
//! `model.safetensors.index.json` lists, memory-mapped (or read) and viewed in place. Tensor
//! names are transformers' ([`Role::hf_name`]); shapes are turned into GGML order (row length
//! first), which for a row-major `[out, in]` matrix is the same bytes.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use torchless_gguf::LoadMode;
use torchless_kernels::{GgmlType, Tensor};

use super::{Role, WeightSource};
use crate::arch::Arch;
use crate::error::ModelError;

/// The safetensors files of a HuggingFace directory as a [`WeightSource`].
pub struct HfSource {
    arch: Arch,
    tensors: HashMap<String, Tensor>,
    /// Tensors of element types the kernels do not take (name → dtype), for messages.
    skipped: HashMap<String, String>,
    bytes: u64,
}

fn bad(path: &Path, what: impl std::fmt::Display) -> ModelError {
    ModelError::Config(format!("{}: {what}", path.display()))
}

/// The safetensors files of `dir`, in a stable order.
pub fn shard_paths(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|e| bad(&index, e))?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(&index, e))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| bad(&index, "has no \"weight_map\" object"))?;
        let mut files = BTreeSet::new();
        for (name, file) in map {
            let file = file
                .as_str()
                .filter(|f| !f.contains('/') && !f.contains('\\') && !f.starts_with('.'))
                .ok_or_else(|| bad(&index, format!("tensor {name} has no plain file name")))?;
            files.insert(file.to_string());
        }
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| bad(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    found.sort();
    if found.is_empty() {
        return Err(bad(dir, "holds no .safetensors file"));
    }
    Ok(found)
}

impl HfSource {
    /// Opens every shard of `dir` for a model of family `arch`.
    pub fn open(dir: &Path, mode: LoadMode, arch: Arch) -> Result<HfSource, ModelError> {
        let mut tensors = HashMap::new();
        let mut skipped = HashMap::new();
        let mut bytes = 0u64;
        for path in shard_paths(dir)? {
            let storage = Arc::new(super::open_storage(&path, mode)?);
            let all = storage.bytes();
            bytes += all.len() as u64;
            let st = safetensors::SafeTensors::deserialize(all).map_err(|e| bad(&path, e))?;
            for (name, view) in st.tensors() {
                let ty = match view.dtype() {
                    safetensors::Dtype::F32 => GgmlType::F32,
                    safetensors::Dtype::F16 => GgmlType::F16,
                    safetensors::Dtype::BF16 => GgmlType::BF16,
                    other => {
                        skipped.insert(name, format!("{other:?}"));
                        continue;
                    }
                };
                // The crate has checked that the view lies inside the buffer.
                let offset = view.data().as_ptr() as usize - all.as_ptr() as usize;
                let mut dims: Vec<usize> = view.shape().iter().rev().copied().collect();
                if dims.is_empty() {
                    dims.push(1);
                }
                let t = Tensor::new(ty, &dims, storage.clone(), offset)
                    .map_err(|e| bad(&path, format!("tensor {name}: {e}")))?;
                if tensors.insert(name.clone(), t).is_some() {
                    return Err(bad(&path, format!("tensor {name} appears in two shards")));
                }
            }
        }
        Ok(HfSource {
            arch,
            tensors,
            skipped,
            bytes,
        })
    }

    /// The same tensors read as a model of family `arch`.
    pub fn with_arch(self, arch: Arch) -> HfSource {
        HfSource { arch, ..self }
    }

    /// The family whose tensor names these are, as far as names tell (the last resort when
    /// config.json names no architecture): fused projections → Phi-3; sandwich norms →
    /// Gemma 2, with q/k norms Gemma 3; q/k norms → Qwen3; q/k/v biases → Qwen2; else LLaMA.
    pub fn arch_from_names(&self) -> Arch {
        let has = |part: &str| self.tensors.keys().any(|n| n.contains(part));
        match (
            has("qkv_proj"),
            has("pre_feedforward_layernorm"),
            has("q_norm"),
            has("q_proj.bias"),
        ) {
            (true, ..) => Arch::Phi3,
            (_, true, true, _) => Arch::Gemma3,
            (_, true, false, _) => Arch::Gemma2,
            (_, _, true, _) => Arch::Qwen3,
            (_, _, _, true) => Arch::Qwen2,
            _ => Arch::Llama,
        }
    }

    /// Bytes of every shard together.
    pub fn file_bytes(&self) -> u64 {
        self.bytes
    }

    /// Every tensor, by transformers' name.
    pub fn tensors(&self) -> &HashMap<String, Tensor> {
        &self.tensors
    }
}

impl WeightSource for HfSource {
    fn tensor(&self, role: Role) -> Option<Tensor> {
        super::find_hf(&self.tensors, &role.hf_name(self.arch)?).cloned()
    }

    fn name(&self, role: Role) -> String {
        match role.hf_name(self.arch) {
            Some(n) if self.skipped.contains_key(&format!("model.{n}")) => {
                format!("model.{n} ({})", self.skipped[&format!("model.{n}")])
            }
            Some(n) => format!("model.{n}"),
            None => format!("{role:?} (no HuggingFace name)"),
        }
    }
}
