//! The parts a decoder layer is made of, and the per-layer plan that says which parts each
//! layer uses. Every family is a choice of parts (a row of [`crate::arch`] plus what its file
//! says), never a copy of the forward pass:
//!
//! ```text
//! layer:  x += post_attn_norm?( mixer( norm(x) ) )
//!         x += post_ffn_norm?( ffn( ffn_norm(x) ) )
//! mixer:  attention (GQA; bias, q/k norm, query scale, soft-cap, window, rope per layer)
//! ffn:    gated feed-forward (SiLU or GELU-tanh)
//! ```
//!
//! A later mixer (latent attention, a state-space layer) or feed-forward (a mixture of experts)
//! is a new variant of [`Mixer`] or [`FeedForward`]; the forward pass matches on them per layer.
//! This module holds descriptions only: no weights, no compute.

use torchless_kernels::ops::{RopeFreqs, RopeStyle};

/// How a layer normalizes its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormKind {
    /// `x / rms(x) * w`.
    Rms,
    /// `x / rms(x) * (1 + w)` (Gemma's checkpoints store `w`; GGUF files store `1 + w`, so
    /// they load as [`NormKind::Rms`]). The loader adds the 1 once, so the forward pass only
    /// ever runs `Rms`.
    RmsOnePlus,
    /// `(x - mean) / std * w + b`.
    Layer,
}

/// The non-linearity of a gated feed-forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `silu(gate) * up` (SwiGLU).
    Silu,
    /// `gelu_tanh(gate) * up` (GeGLU, Gemma).
    GeluTanh,
}

/// How rotary angles are stretched for contexts past the trained one.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear {
        factor: f32,
    },
    /// Llama 3: low frequencies divided by `factor`, high ones kept, a smooth blend between
    /// (from `low_freq_factor`, `high_freq_factor` and the original context).
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_ctx: usize,
    },
    /// YaRN: interpolation by `factor` below the correction range, extrapolation above it.
    Yarn {
        factor: f32,
        original_ctx: usize,
        beta_fast: f32,
        beta_slow: f32,
        /// Multiplies cos/sin besides YaRN's own `1 + 0.1 ln(factor)`.
        attn_factor: f32,
    },
    /// LongRoPE (Phi-3): per-pair divisors, the long set when the context exceeds the
    /// original one, and a cos/sin factor.
    LongRope {
        short: Vec<f32>,
        long: Vec<f32>,
        original_ctx: usize,
        attn_factor: f32,
    },
    /// Per-pair divisors read from the model file (GGUF `rope_freqs.weight`).
    Factors(Vec<f32>),
}

/// One rotary embedding (a model has one per layer type: Gemma 3's local and global layers
/// differ in base).
#[derive(Clone, Debug, PartialEq)]
pub struct Rope {
    pub style: RopeStyle,
    /// Leading elements of each head that are rotated.
    pub dims: usize,
    pub base: f32,
    pub scaling: RopeScaling,
}

impl Rope {
    /// The angle parameters for a context of `n_ctx` positions, in the kernels' terms.
    pub fn freqs(&self, n_ctx: usize) -> RopeFreqs {
        let plain = RopeFreqs::plain(self.base);
        let pairs = self.dims / 2;
        match &self.scaling {
            RopeScaling::None => plain,
            RopeScaling::Linear { factor } => RopeFreqs {
                freq_scale: 1.0 / factor,
                ..plain
            },
            RopeScaling::Factors(f) => RopeFreqs {
                factors: Some(f.clone()),
                ..plain
            },
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_ctx,
            } => {
                let (lo_wave, hi_wave) = (
                    *original_ctx as f32 / low_freq_factor,
                    *original_ctx as f32 / high_freq_factor,
                );
                let factors = (0..pairs)
                    .map(|i| {
                        let freq = self.base.powf(-2.0 * i as f32 / self.dims as f32);
                        let wave = 2.0 * std::f32::consts::PI / freq;
                        if wave < hi_wave {
                            1.0
                        } else if wave > lo_wave {
                            *factor
                        } else {
                            let smooth = (*original_ctx as f32 / wave - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            1.0 / ((1.0 - smooth) / factor + smooth)
                        }
                    })
                    .collect();
                RopeFreqs {
                    factors: Some(factors),
                    ..plain
                }
            }
            RopeScaling::Yarn {
                factor,
                original_ctx,
                beta_fast,
                beta_slow,
                attn_factor,
            } => RopeFreqs {
                freq_scale: 1.0 / factor,
                ext_factor: 1.0,
                attn_factor: *attn_factor,
                corr_dims: torchless_kernels::ops::yarn_corr_dims(
                    self.dims,
                    *original_ctx,
                    self.base,
                    *beta_fast,
                    *beta_slow,
                ),
                ..plain
            },
            RopeScaling::LongRope {
                short,
                long,
                original_ctx,
                attn_factor,
            } => RopeFreqs {
                factors: Some(if n_ctx > *original_ctx { long } else { short }.clone()),
                attn_factor: *attn_factor,
                ..plain
            },
        }
    }
}

/// Grouped-query self-attention and its options.
#[derive(Clone, Debug, PartialEq)]
pub struct Attention {
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    /// Multiplies q·k (1/√head_dim, or Gemma 2's `query_pre_attn_scalar`^-½).
    pub scale: f32,
    /// Multiplies the queries after the rotary instead (then `scale` is 1): llama.cpp's order
    /// for the Gemma families.
    pub q_scale: Option<f32>,
    /// Keys at most this many positions back, the query's own included (`None`: all).
    pub window: Option<usize>,
    /// `cap · tanh(s / cap)` on the scaled scores before the softmax.
    pub softcap: Option<f32>,
    /// Index of this layer's rotary embedding in [`Plan::ropes`] (`None`: no rotary).
    pub rope: Option<usize>,
    /// RMSNorm of each query and key head (weights of `head_dim`) before the rotary.
    pub qk_norm: bool,
}

impl Attention {
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }

    /// Whether the scores need more than the plain causal softmax (a window or a cap).
    pub fn is_masked(&self) -> bool {
        self.window.is_some() || self.softcap.is_some()
    }
}

/// What mixes information between positions.
#[derive(Clone, Debug, PartialEq)]
pub enum Mixer {
    Attention(Attention),
}

/// The position-wise part of a layer.
#[derive(Clone, Debug, PartialEq)]
pub enum FeedForward {
    /// `down(act(gate(x)) * up(x))`, `n_ff` wide.
    Gated { n_ff: usize, act: Activation },
}

impl FeedForward {
    pub fn width(&self) -> usize {
        match self {
            FeedForward::Gated { n_ff, .. } => *n_ff,
        }
    }
}

/// One layer's parts.
#[derive(Clone, Debug, PartialEq)]
pub struct Layer {
    pub mixer: Mixer,
    pub ffn: FeedForward,
    /// A norm on the mixer's output before the residual add (Gemma 2/3's sandwich norms).
    pub post_mixer_norm: bool,
    /// A norm on the feed-forward's output before the residual add.
    pub post_ffn_norm: bool,
}

impl Layer {
    pub fn attention(&self) -> &Attention {
        match &self.mixer {
            Mixer::Attention(a) => a,
        }
    }
}

/// The whole network's plan: the parts of every layer and what surrounds them.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Norm of every layer and of the output (as the forward pass runs it).
    pub norm: NormKind,
    pub norm_eps: f32,
    /// Multiplies the embeddings (Gemma: √n_embd).
    pub embd_scale: Option<f32>,
    /// `cap · tanh(logit / cap)` on the output (Gemma 2).
    pub final_softcap: Option<f32>,
    pub layers: Vec<Layer>,
    /// The distinct rotary embeddings, referred to by index from the layers.
    pub ropes: Vec<Rope>,
}

impl Plan {
    /// The widest rotary table (floats per token of one table).
    pub fn max_rope_dims(&self) -> usize {
        self.ropes.iter().map(|r| r.dims).max().unwrap_or(0)
    }
}
