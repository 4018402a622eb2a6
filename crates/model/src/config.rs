//! Model hyper-parameters and the per-layer [`Plan`], read from GGUF metadata
//! (`{arch}.block_count` …) or from a HuggingFace config.json ([`crate::hf_config`]), and
//! validated so that the forward pass can trust them. Both formats are first put into the one
//! vocabulary of [`Settings`]; [`Settings::assemble`] turns it into the plan.

use torchless_gguf::{GgufFile, Metadata};
use torchless_kernels::ops::RopeStyle;

use crate::arch::{Arch, SlidingLayers};
use crate::error::ModelError;
use crate::parts::{Attention, FeedForward, Layer, Mixer, NormKind, Plan, Rope, RopeScaling};
use crate::source::Role;

/// The shape of a decoder-only network and the plan of its layers.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    /// The architecture name the file itself gives (GGUF `general.architecture`, HuggingFace
    /// `model_type`).
    pub meta_arch: String,
    pub name: Option<String>,
    pub n_layers: usize,
    pub n_embd: usize,
    /// Width of the widest feed-forward.
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub vocab: usize,
    /// Context length the model was trained for.
    pub n_ctx_train: usize,
    pub norm_eps: f32,
    pub plan: Plan,
    /// What the file said, in the one vocabulary of every format (for writing it back out).
    pub(crate) settings: Settings,
}

/// What a model file says about the network, in one vocabulary for every format.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Settings {
    pub name: Option<String>,
    pub n_layers: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub n_ctx_train: usize,
    pub norm_eps: f32,
    pub norm: NormKind,
    pub rope_style: RopeStyle,
    pub rope_dims: usize,
    pub rope_base: f32,
    pub rope_scaling: RopeScaling,
    /// The rotary embedding of sliding-window layers, where it differs (Gemma 3).
    pub local_rope: Option<(f32, RopeScaling)>,
    pub window: Option<usize>,
    /// Which layers slide, where the file lists them.
    pub sliding_layers: Option<Vec<bool>>,
    pub attn_softcap: Option<f32>,
    pub final_softcap: Option<f32>,
    /// Multiplies q·k (default 1/√head_dim).
    pub query_scale: Option<f32>,
}

fn positive(key: &str, v: u64) -> Result<usize, ModelError> {
    if v == 0 || v > (1 << 24) {
        return Err(ModelError::Config(format!("{key} = {v} is out of range")));
    }
    Ok(v as usize)
}

fn finite_positive(key: &str, v: f32) -> Result<f32, ModelError> {
    if !(v.is_finite() && v > 0.0) {
        return Err(ModelError::Config(format!("{key} = {v} is invalid")));
    }
    Ok(v)
}

impl Settings {
    /// Validates the settings and lays out every layer's parts.
    pub fn assemble(self, arch: Arch, meta_arch: &str) -> Result<ModelConfig, ModelError> {
        let s = self;
        let info = arch.info();
        if s.n_head_kv == 0 || !s.n_head.is_multiple_of(s.n_head_kv) {
            return Err(ModelError::Config(format!(
                "{} attention heads cannot be shared by {} key/value heads",
                s.n_head, s.n_head_kv
            )));
        }
        if s.head_dim == 0 || !s.head_dim.is_multiple_of(2) || s.head_dim > 1024 {
            return Err(ModelError::Config(format!(
                "head size {} is not supported",
                s.head_dim
            )));
        }
        if s.rope_dims > s.head_dim || !s.rope_dims.is_multiple_of(2) {
            return Err(ModelError::Config(format!(
                "rotary dimension {} does not fit head size {}",
                s.rope_dims, s.head_dim
            )));
        }
        finite_positive("rope base", s.rope_base)?;
        if s.norm_eps.is_nan() || s.norm_eps < 0.0 {
            return Err(ModelError::Config(format!(
                "norm epsilon {} is invalid",
                s.norm_eps
            )));
        }
        for (what, v) in [
            ("attention soft-cap", s.attn_softcap),
            ("final soft-cap", s.final_softcap),
            ("query scale", s.query_scale),
        ] {
            if let Some(v) = v {
                finite_positive(what, v)?;
            }
        }
        check_scaling(&s.rope_scaling, s.rope_dims)?;
        let sliding: Vec<bool> = match (&s.sliding_layers, s.window) {
            (_, None) => vec![false; s.n_layers],
            (Some(list), Some(_)) => {
                if list.len() != s.n_layers {
                    return Err(ModelError::Config(format!(
                        "the layer types list {} layers but the model has {}",
                        list.len(),
                        s.n_layers
                    )));
                }
                list.clone()
            }
            (None, Some(_)) => (0..s.n_layers)
                .map(|i| match info.sliding {
                    SlidingLayers::None => false,
                    SlidingLayers::All => true,
                    SlidingLayers::Even => i % 2 == 0,
                    SlidingLayers::AllButEvery(n) => (i + 1) % n != 0,
                })
                .collect(),
        };
        if s.window == Some(0) {
            return Err(ModelError::Config("sliding window of 0 positions".into()));
        }
        let rope = |base, scaling| Rope {
            style: s.rope_style,
            dims: s.rope_dims,
            base,
            scaling,
        };
        let mut ropes = vec![rope(s.rope_base, s.rope_scaling.clone())];
        let local = match &s.local_rope {
            Some((base, scaling)) if sliding.iter().any(|&b| b) => {
                finite_positive("local rope base", *base)?;
                check_scaling(scaling, s.rope_dims)?;
                ropes.push(rope(*base, scaling.clone()));
                1
            }
            _ => 0,
        };
        let scale = s
            .query_scale
            .unwrap_or_else(|| 1.0 / (s.head_dim as f32).sqrt());
        let layers = sliding
            .iter()
            .map(|&slides| Layer {
                mixer: Mixer::Attention(Attention {
                    n_head: s.n_head,
                    n_head_kv: s.n_head_kv,
                    head_dim: s.head_dim,
                    scale: if info.scale_q { 1.0 } else { scale },
                    q_scale: info.scale_q.then_some(scale),
                    window: s.window.filter(|_| slides),
                    softcap: s.attn_softcap,
                    rope: (s.rope_dims > 0).then_some(if slides { local } else { 0 }),
                    qk_norm: info.qk_norm,
                }),
                ffn: FeedForward::Gated {
                    n_ff: s.n_ff,
                    act: info.act,
                },
                post_mixer_norm: info.sandwich_norms,
                post_ffn_norm: info.sandwich_norms,
            })
            .collect();
        Ok(ModelConfig {
            arch,
            meta_arch: meta_arch.to_string(),
            settings: s.clone(),
            name: s.name,
            n_layers: s.n_layers,
            n_embd: s.n_embd,
            n_ff: s.n_ff,
            n_head: s.n_head,
            n_head_kv: s.n_head_kv,
            head_dim: s.head_dim,
            vocab: s.vocab,
            n_ctx_train: s.n_ctx_train,
            norm_eps: s.norm_eps,
            plan: Plan {
                norm: s.norm,
                norm_eps: s.norm_eps,
                embd_scale: info.embd_scale.then(|| (s.n_embd as f32).sqrt()),
                final_softcap: s.final_softcap,
                layers,
                ropes,
            },
        })
    }
}

fn check_scaling(scaling: &RopeScaling, dims: usize) -> Result<(), ModelError> {
    let factors_fit =
        |f: &[f32]| f.len() == dims / 2 && f.iter().all(|v| v.is_finite() && *v > 0.0);
    let ok = match scaling {
        RopeScaling::None => true,
        RopeScaling::Linear { factor } => factor.is_finite() && *factor > 0.0,
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_ctx,
        } => {
            factor.is_finite()
                && *factor > 0.0
                && *low_freq_factor > 0.0
                && high_freq_factor > low_freq_factor
                && *original_ctx > 0
        }
        RopeScaling::Yarn {
            factor,
            original_ctx,
            beta_fast,
            beta_slow,
            attn_factor,
        } => {
            factor.is_finite()
                && *factor > 0.0
                && *original_ctx > 0
                && beta_fast.is_finite()
                && beta_slow.is_finite()
                && attn_factor.is_finite()
        }
        RopeScaling::LongRope {
            short,
            long,
            original_ctx,
            attn_factor,
        } => {
            factors_fit(short) && factors_fit(long) && *original_ctx > 0 && attn_factor.is_finite()
        }
        RopeScaling::Factors(f) => factors_fit(f),
    };
    if ok {
        Ok(())
    } else {
        Err(ModelError::Config(format!(
            "rope scaling {scaling:?} is invalid for {dims} rotary dimensions"
        )))
    }
}

impl ModelConfig {
    /// Reads the configuration of a GGUF file; `arch` overrides `general.architecture`.
    pub fn from_gguf(file: &GgufFile, arch: Option<Arch>) -> Result<ModelConfig, ModelError> {
        let m = file.metadata();
        let meta_arch = m.str("general.architecture")?.to_string();
        let arch = match arch {
            Some(a) => a,
            // llama.cpp runs Mistral as `llama`; a file that states a window is one.
            None if meta_arch == "llama" && m.contains("llama.attention.sliding_window") => {
                Arch::Mistral
            }
            None => Arch::from_name(&meta_arch).ok_or_else(|| ModelError::UnsupportedArch {
                name: meta_arch.clone(),
                supported: Arch::supported(),
            })?,
        };
        let vocab = crate::weights::Weights::vocab_of(file)?;
        let mut s = settings_from_metadata(m, arch, &meta_arch, vocab)?;
        // Rotary divisors stored as tensors.
        let vector = |role: Role| -> Result<Option<Vec<f32>>, ModelError> {
            match file.tensor(&role.gguf_name()) {
                None => Ok(None),
                Some(t) => t.to_f32_vec().map(Some).ok_or(ModelError::UnsupportedType {
                    name: role.gguf_name(),
                    ty: t.ty(),
                }),
            }
        };
        let scaled = s.rope_scaling != RopeScaling::None;
        let tensor_scaling = |what: &str| {
            ModelError::Config(format!(
                "{what} together with a rope scaling type in the metadata is not supported yet"
            ))
        };
        if let Some(f) = vector(Role::RopeFreqs)? {
            if scaled {
                return Err(tensor_scaling("rope_freqs.weight"));
            }
            s.rope_scaling = RopeScaling::Factors(f);
        }
        match (vector(Role::RopeLong)?, vector(Role::RopeShort)?) {
            (Some(long), Some(short)) => {
                if s.rope_scaling != RopeScaling::None {
                    return Err(tensor_scaling("rope_factors_long/short"));
                }
                let key = |k: &str| format!("{meta_arch}.{k}");
                let original_ctx = m
                    .opt(&key("rope.scaling.original_context_length"), Metadata::u64)?
                    .unwrap_or(s.n_ctx_train as u64) as usize;
                let attn_factor = m
                    .opt(&key("rope.scaling.attn_factor"), Metadata::f32)?
                    .unwrap_or(1.0);
                s.rope_scaling = RopeScaling::LongRope {
                    short,
                    long,
                    original_ctx,
                    attn_factor,
                };
            }
            (None, None) => {}
            _ => {
                return Err(ModelError::Config(
                    "the file has only one of rope_factors_long and rope_factors_short".into(),
                ))
            }
        }
        s.assemble(arch, &meta_arch)
    }

    /// Width of all query heads together.
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }

    /// Width of all key (or value) heads together.
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }

    /// Each layer's sliding window (`None`: the layer sees the whole context).
    pub fn layer_windows(&self) -> Vec<Option<usize>> {
        self.plan
            .layers
            .iter()
            .map(|l| l.attention().window)
            .collect()
    }

    /// Bytes of K and V cache per token at `bytes_per_value`, every layer holding it.
    pub fn kv_bytes_per_token(&self, bytes_per_value: usize) -> usize {
        2 * self.n_layers * self.kv_dim() * bytes_per_value
    }

    /// Bytes of K and V cache one sequence of `n_ctx` positions needs at `bytes_per_value`:
    /// a sliding-window layer holds its window (and a block of 16 positions to spare), the
    /// others every position.
    pub fn kv_bytes(&self, n_ctx: usize, bytes_per_value: usize) -> usize {
        self.kv_elements(n_ctx) * 2 * bytes_per_value
    }

    /// Elements of K (as many of V) one sequence of `n_ctx` positions stores, windows as in
    /// [`ModelConfig::kv_bytes`].
    pub fn kv_elements(&self, n_ctx: usize) -> usize {
        self.layer_windows()
            .iter()
            .map(|w| w.map_or(n_ctx, |w| n_ctx.min(w + 16)) * self.kv_dim())
            .sum()
    }
}

/// The [`Settings`] of GGUF metadata whose keys use the prefix `meta_arch`.
fn settings_from_metadata(
    m: &Metadata,
    arch: Arch,
    meta_arch: &str,
    vocab: usize,
) -> Result<Settings, ModelError> {
    let key = |k: &str| format!("{meta_arch}.{k}");
    let get = |k: &str| -> Result<usize, ModelError> { positive(&key(k), m.u64(&key(k))?) };
    let opt = |k: &str| -> Result<Option<usize>, ModelError> {
        m.opt(&key(k), Metadata::u64)?
            .map(|v| positive(&key(k), v))
            .transpose()
    };
    let optf = |k: &str| m.opt(&key(k), Metadata::f32);
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
    let n_ctx_train = opt("context_length")?.unwrap_or(2048);
    let scaling = m
        .opt(&key("rope.scaling.type"), Metadata::str)?
        .unwrap_or("none");
    let factor = optf("rope.scaling.factor")?.unwrap_or(1.0);
    let original_ctx = opt("rope.scaling.original_context_length")?.unwrap_or(n_ctx_train);
    let rope_scaling = match scaling {
        "none" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor },
        "yarn" => RopeScaling::Yarn {
            factor,
            original_ctx,
            beta_fast: optf("rope.scaling.yarn_beta_fast")?.unwrap_or(32.0),
            beta_slow: optf("rope.scaling.yarn_beta_slow")?.unwrap_or(1.0),
            attn_factor: optf("rope.scaling.attn_factor")?.unwrap_or(1.0),
        },
        other => {
            return Err(ModelError::Config(format!(
                "rope scaling '{other}' ({}) is not supported yet",
                key("rope.scaling.type")
            )))
        }
    };
    let n_layers = get("block_count")?;
    // llama.cpp's rule for Gemma 2/3 (the GGUF keeps no query_pre_attn_scalar): 1/√head_dim,
    // except the 27B models, whose scalar is n_embd / n_head.
    // `attention.scale` where a file gives it (torchless's converter writes it where a
    // checkpoint's query_pre_attn_scalar departs from the rule below).
    let query_scale = match (arch, optf("attention.scale")?) {
        (_, Some(scale)) => Some(scale),
        (Arch::Gemma2 | Arch::Gemma3, None) if matches!(n_embd, 4608 | 5376) => {
            Some(1.0 / ((n_embd / n_head) as f32).sqrt())
        }
        _ => None,
    };
    let local_rope = match arch {
        Arch::Gemma3 => Some((
            optf("rope.freq_base_swa")?.unwrap_or(10_000.0),
            RopeScaling::None,
        )),
        _ => None,
    };
    // llama.cpp runs Phi-3 without its window (the reference this engine follows).
    let window = match arch.info().sliding {
        SlidingLayers::None => None,
        _ if arch == Arch::Phi3 => None,
        _ => opt("attention.sliding_window")?,
    };
    let sliding_layers = match (arch, opt("attention.sliding_window_pattern")?) {
        (Arch::Gemma3, Some(n)) => Some((0..n_layers).map(|i| (i + 1) % n != 0).collect()),
        _ => None,
    };
    Ok(Settings {
        name: m.opt("general.name", Metadata::str)?.map(str::to_string),
        n_layers,
        n_embd,
        n_ff: get("feed_forward_length")?,
        n_head,
        n_head_kv,
        head_dim,
        vocab,
        n_ctx_train,
        norm_eps: optf("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5),
        // Gemma's converter stores 1 + w: every GGUF norm is a plain one.
        norm: NormKind::Rms,
        rope_style: arch.info().rope,
        rope_dims: opt("rope.dimension_count")?.unwrap_or(head_dim),
        rope_base: optf("rope.freq_base")?.unwrap_or(10_000.0),
        rope_scaling,
        local_rope,
        window,
        sliding_layers,
        attn_softcap: optf("attn_logit_softcapping")?,
        final_softcap: optf("final_logit_softcapping")?,
        query_scale,
    })
}
