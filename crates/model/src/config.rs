//! Model hyper-parameters read from GGUF metadata (`{arch}.block_count` …), validated so that
//! the forward pass can trust them.

use torchless_gguf::Metadata;
use torchless_kernels::ops::RopeStyle;

use crate::arch::Arch;
use crate::error::ModelError;

/// How positions are encoded.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RopeConfig {
    pub style: RopeStyle,
    /// Leading elements of each head that are rotated.
    pub dims: usize,
    pub freq_base: f32,
    /// 1 / linear scaling factor.
    pub freq_scale: f32,
}

/// The shape of a decoder-only transformer.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    /// The `general.architecture` name the metadata keys use.
    pub meta_arch: String,
    pub name: Option<String>,
    pub n_layers: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub vocab: usize,
    /// Context length the model was trained for.
    pub n_ctx_train: usize,
    pub norm_eps: f32,
    pub rope: RopeConfig,
}

fn positive(key: &str, v: u64) -> Result<usize, ModelError> {
    if v == 0 || v > (1 << 24) {
        return Err(ModelError::Config(format!("{key} = {v} is out of range")));
    }
    Ok(v as usize)
}

impl ModelConfig {
    /// Reads the hyper-parameters of `arch` from metadata whose keys use the prefix
    /// `meta_arch` (normally `general.architecture`); `vocab` comes from the embedding tensor.
    pub fn from_metadata(
        m: &Metadata,
        arch: Arch,
        meta_arch: &str,
        vocab: usize,
    ) -> Result<ModelConfig, ModelError> {
        let key = |k: &str| format!("{meta_arch}.{k}");
        let get = |k: &str| -> Result<usize, ModelError> { positive(&key(k), m.u64(&key(k))?) };
        let opt = |k: &str| -> Result<Option<usize>, ModelError> {
            m.opt(&key(k), Metadata::u64)?
                .map(|v| positive(&key(k), v))
                .transpose()
        };
        let n_embd = get("embedding_length")?;
        let n_head = get("attention.head_count")?;
        let n_head_kv = opt("attention.head_count_kv")?.unwrap_or(n_head);
        let head_dim = opt("attention.key_length")?.unwrap_or(n_embd / n_head);
        let v_dim = opt("attention.value_length")?.unwrap_or(head_dim);
        if v_dim != head_dim {
            return Err(ModelError::Config(format!(
                "value head size {v_dim} differs from key head size {head_dim}, which is not supported"
            )));
        }
        if n_head % n_head_kv != 0 {
            return Err(ModelError::Config(format!(
                "{n_head} attention heads cannot be shared by {n_head_kv} key/value heads"
            )));
        }
        if head_dim % 2 != 0 || head_dim > 1024 {
            return Err(ModelError::Config(format!(
                "head size {head_dim} is not supported"
            )));
        }
        let rope_dims = opt("rope.dimension_count")?.unwrap_or(head_dim);
        if rope_dims > head_dim || rope_dims % 2 != 0 {
            return Err(ModelError::Config(format!(
                "rotary dimension {rope_dims} does not fit head size {head_dim}"
            )));
        }
        let freq_base = m
            .opt(&key("rope.freq_base"), Metadata::f32)?
            .unwrap_or(10_000.0);
        let scaling = m
            .opt(&key("rope.scaling.type"), Metadata::str)?
            .unwrap_or("none");
        let freq_scale = match scaling {
            "none" => 1.0,
            "linear" => {
                let f = m
                    .opt(&key("rope.scaling.factor"), Metadata::f32)?
                    .unwrap_or(1.0);
                if f.is_nan() || f <= 0.0 {
                    return Err(ModelError::Config(format!(
                        "rope scaling factor {f} is invalid"
                    )));
                }
                1.0 / f
            }
            other => {
                return Err(ModelError::Config(format!(
                    "rope scaling '{other}' ({}) is not supported yet",
                    key("rope.scaling.type")
                )))
            }
        };
        let norm_eps = m
            .opt(&key("attention.layer_norm_rms_epsilon"), Metadata::f32)?
            .unwrap_or(1e-5);
        if freq_base.is_nan() || freq_base <= 0.0 || norm_eps.is_nan() || norm_eps < 0.0 {
            return Err(ModelError::Config(
                "rope base or norm epsilon is invalid".into(),
            ));
        }
        Ok(ModelConfig {
            arch,
            meta_arch: meta_arch.to_string(),
            name: m.opt("general.name", Metadata::str)?.map(str::to_string),
            n_layers: get("block_count")?,
            n_embd,
            n_ff: get("feed_forward_length")?,
            n_head,
            n_head_kv,
            head_dim,
            vocab,
            n_ctx_train: opt("context_length")?.unwrap_or(2048),
            norm_eps,
            rope: RopeConfig {
                style: arch.info().rope,
                dims: rope_dims,
                freq_base,
                freq_scale,
            },
        })
    }

    /// Width of all query heads together.
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }

    /// Width of all key (or value) heads together.
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }

    /// Bytes of K and V cache per token at `bytes_per_value`.
    pub fn kv_bytes_per_token(&self, bytes_per_value: usize) -> usize {
        2 * self.n_layers * self.kv_dim() * bytes_per_value
    }
}
