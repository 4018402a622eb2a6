//! Model weights: the tensors of every part of the [`Plan`], taken by [`Role`] from a
//! [`WeightSource`], with every shape and type checked at load. Matrices stay views into the
//! (memory-mapped) file — a fused projection is split into row views, not copied; small vectors
//! (norms, biases) are converted to f32 once, Gemma's `1 + w` norms resolved here.
//!
//! No file format's names appear here: they are [`crate::source`]'s.

use torchless_gguf::GgufFile;
use torchless_kernels::Tensor;

use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::parts::{FeedForward, Mixer, NormKind};
use crate::source::{Role, WeightSource};

/// A norm's weight (and bias, for LayerNorm), `n` wide.
pub struct Norm {
    pub w: Vec<f32>,
    pub b: Option<Vec<f32>>,
}

/// Grouped-query attention's tensors.
// Shapes use GGML order: [row length (input), rows (output)].
pub struct AttnWeights {
    /// wq: [n_embd, n_head * head_dim]
    pub wq: Tensor,
    /// wk, wv: [n_embd, n_head_kv * head_dim]
    pub wk: Tensor,
    pub wv: Tensor,
    /// Optional biases of the three projections (Qwen2).
    pub bq: Option<Vec<f32>>,
    pub bk: Option<Vec<f32>>,
    pub bv: Option<Vec<f32>>,
    /// Per-head RMSNorm weights of queries and keys: [head_dim] (Qwen3, Gemma 3).
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    /// wo: [n_head * head_dim, n_embd]
    pub wo: Tensor,
}

/// The tensors of a layer's mixer.
pub enum MixerWeights {
    Attention(AttnWeights),
}

/// The tensors of a layer's feed-forward.
pub enum FfnWeights {
    /// w_gate, w_up: [n_embd, n_ff]; w_down: [n_ff, n_embd].
    Gated {
        w_gate: Tensor,
        w_up: Tensor,
        w_down: Tensor,
    },
}

/// One layer.
pub struct LayerWeights {
    pub attn_norm: Norm,
    pub mixer: MixerWeights,
    pub post_mixer_norm: Option<Norm>,
    pub ffn_norm: Norm,
    pub ffn: FfnWeights,
    pub post_ffn_norm: Option<Norm>,
}

impl LayerWeights {
    /// The layer's matrices, in a stable order.
    pub fn matrices_mut(&mut self) -> Vec<&mut Tensor> {
        let mut v: Vec<&mut Tensor> = Vec::new();
        match &mut self.mixer {
            MixerWeights::Attention(a) => v.extend([&mut a.wq, &mut a.wk, &mut a.wv, &mut a.wo]),
        }
        match &mut self.ffn {
            FfnWeights::Gated {
                w_gate,
                w_up,
                w_down,
            } => v.extend([w_gate, w_up, w_down]),
        }
        v
    }

    pub fn matrices(&self) -> Vec<&Tensor> {
        let mut v: Vec<&Tensor> = Vec::new();
        match &self.mixer {
            MixerWeights::Attention(a) => v.extend([&a.wq, &a.wk, &a.wv, &a.wo]),
        }
        match &self.ffn {
            FfnWeights::Gated {
                w_gate,
                w_up,
                w_down,
            } => v.extend([w_gate, w_up, w_down]),
        }
        v
    }
}

/// All weights of a model.
pub struct Weights {
    /// token_embd: [n_embd, vocab]; rows are looked up per token.
    pub token_embd: Tensor,
    pub layers: Vec<LayerWeights>,
    pub output_norm: Norm,
    /// output: [n_embd, vocab]; the embedding table itself when the model ties them.
    pub output: Tensor,
    pub tied_output: bool,
}

struct Loader<'a> {
    src: &'a dyn WeightSource,
    norm: NormKind,
}

impl Loader<'_> {
    fn get(&self, role: Role, dims: &[usize]) -> Result<Tensor, ModelError> {
        let t = self
            .src
            .tensor(role)
            .ok_or_else(|| ModelError::MissingTensor(self.src.name(role)))?;
        self.check(role, t, dims)
    }

    fn get_opt(&self, role: Role, dims: &[usize]) -> Result<Option<Tensor>, ModelError> {
        self.src
            .tensor(role)
            .map(|t| self.check(role, t, dims))
            .transpose()
    }

    fn check(&self, role: Role, t: Tensor, dims: &[usize]) -> Result<Tensor, ModelError> {
        // Trailing dimensions of size 1 are insignificant.
        let mut found = t.dims().to_vec();
        while found.len() > dims.len() && found.last() == Some(&1) {
            found.pop();
        }
        if found != dims {
            return Err(ModelError::TensorShape {
                name: self.src.name(role),
                expected: dims.to_vec(),
                found: t.dims().to_vec(),
            });
        }
        if !t.ty().is_supported() {
            return Err(ModelError::UnsupportedType {
                name: self.src.name(role),
                ty: t.ty(),
            });
        }
        Ok(t)
    }

    fn to_vec(&self, role: Role, t: Tensor) -> Result<Vec<f32>, ModelError> {
        t.to_f32_vec().ok_or(ModelError::UnsupportedType {
            name: self.src.name(role),
            ty: t.ty(),
        })
    }

    fn vector_opt(&self, role: Role, len: usize) -> Result<Option<Vec<f32>>, ModelError> {
        match self.get_opt(role, &[len])? {
            Some(t) => self.to_vec(role, t).map(Some),
            None => Ok(None),
        }
    }

    /// A norm's weight as the forward pass applies it (`1 + w` resolved).
    fn norm_weight(&self, role: Role, len: usize) -> Result<Vec<f32>, ModelError> {
        let t = self.get(role, &[len])?;
        let mut w = self.to_vec(role, t)?;
        if self.norm == NormKind::RmsOnePlus {
            w.iter_mut().for_each(|v| *v += 1.0);
        }
        Ok(w)
    }

    fn norm(&self, w: Role, b: Option<Role>, len: usize) -> Result<Norm, ModelError> {
        let b = match (self.norm, b) {
            (NormKind::Layer, Some(b)) => self.vector_opt(b, len)?,
            _ => None,
        };
        Ok(Norm {
            w: self.norm_weight(w, len)?,
            b,
        })
    }

    /// `parts` consecutive row ranges of one fused matrix `[cols, sum(rows)]`.
    fn split(&self, role: Role, cols: usize, rows: &[usize]) -> Result<Vec<Tensor>, ModelError> {
        let t = self.get(role, &[cols, rows.iter().sum()])?;
        let mut at = 0;
        rows.iter()
            .map(|&n| {
                let v = t.rows_view(at, n).ok_or_else(|| ModelError::TensorShape {
                    name: self.src.name(role),
                    expected: vec![cols, rows.iter().sum()],
                    found: t.dims().to_vec(),
                });
                at += n;
                v
            })
            .collect()
    }
}

/// The vocabulary size of a source, from its embedding table's shape.
pub fn vocab_of_source(src: &dyn WeightSource) -> Result<usize, ModelError> {
    let t = src
        .tensor(Role::TokenEmbd)
        .ok_or_else(|| ModelError::MissingTensor(src.name(Role::TokenEmbd)))?;
    match t.dims() {
        [_, v] | [_, v, 1] if *v > 0 => Ok(*v),
        d => Err(ModelError::Config(format!(
            "{} has shape {d:?}, expected [n_embd, vocab]",
            src.name(Role::TokenEmbd)
        ))),
    }
}

impl Weights {
    /// The vocabulary size of a GGUF file, from the embedding table's shape.
    pub fn vocab_of(file: &GgufFile) -> Result<usize, ModelError> {
        let name = Role::TokenEmbd.gguf_name();
        let t = file
            .tensor_info(&name)
            .ok_or_else(|| ModelError::MissingTensor(name.clone()))?;
        match t.dims.as_slice() {
            [_, v] | [_, v, 1] if *v > 0 => Ok(*v as usize),
            _ => Err(ModelError::Config(format!(
                "{name} has shape {:?}, expected [n_embd, vocab]",
                t.dims
            ))),
        }
    }

    /// Takes every tensor the plan of `c` needs from `src`.
    pub fn load(src: &dyn WeightSource, c: &ModelConfig) -> Result<Weights, ModelError> {
        // Fused projections where the file has them (Phi-3 always in HuggingFace's files,
        // in GGUF files as the converter chose): q/k/v in one matrix; gate/up in one matrix
        // where there is no separate gate (GGUF keeps the pair under the up projection's name).
        let fused = c.arch.info().fused;
        let l = Loader {
            src,
            norm: c.plan.norm,
        };
        let d = c.n_embd;
        let token_embd = l.get(Role::TokenEmbd, &[d, c.vocab])?;
        let output = l.get_opt(Role::Output, &[d, c.vocab])?;
        let tied_output = output.is_none();
        let mut layers = Vec::with_capacity(c.n_layers);
        for (i, layer) in c.plan.layers.iter().enumerate() {
            let mixer = match &layer.mixer {
                Mixer::Attention(a) => {
                    let (q, kv) = (a.q_dim(), a.kv_dim());
                    let (wq, wk, wv) = if fused && src.tensor(Role::Qkv(i)).is_some() {
                        let mut p = l.split(Role::Qkv(i), d, &[q, kv, kv])?.into_iter();
                        match (p.next(), p.next(), p.next()) {
                            (Some(a), Some(b), Some(c)) => (a, b, c),
                            _ => return Err(ModelError::MissingTensor(src.name(Role::Qkv(i)))),
                        }
                    } else {
                        (
                            l.get(Role::Q(i), &[d, q])?,
                            l.get(Role::K(i), &[d, kv])?,
                            l.get(Role::V(i), &[d, kv])?,
                        )
                    };
                    let (q_norm, k_norm) = if a.qk_norm {
                        (
                            Some(l.norm_weight(Role::QNorm(i), a.head_dim)?),
                            Some(l.norm_weight(Role::KNorm(i), a.head_dim)?),
                        )
                    } else {
                        (None, None)
                    };
                    MixerWeights::Attention(AttnWeights {
                        wq,
                        wk,
                        wv,
                        bq: l.vector_opt(Role::QBias(i), q)?,
                        bk: l.vector_opt(Role::KBias(i), kv)?,
                        bv: l.vector_opt(Role::VBias(i), kv)?,
                        q_norm,
                        k_norm,
                        wo: l.get(Role::O(i), &[q, d])?,
                    })
                }
            };
            let ffn = match &layer.ffn {
                FeedForward::Gated { n_ff, .. } => {
                    let ff = *n_ff;
                    let (w_gate, w_up) = if fused && src.tensor(Role::Gate(i)).is_none() {
                        let mut p = l.split(Role::GateUp(i), d, &[ff, ff])?.into_iter();
                        match (p.next(), p.next()) {
                            (Some(g), Some(u)) => (g, u),
                            _ => return Err(ModelError::MissingTensor(src.name(Role::GateUp(i)))),
                        }
                    } else {
                        (
                            l.get(Role::Gate(i), &[d, ff])?,
                            l.get(Role::Up(i), &[d, ff])?,
                        )
                    };
                    FfnWeights::Gated {
                        w_gate,
                        w_up,
                        w_down: l.get(Role::Down(i), &[ff, d])?,
                    }
                }
            };
            let post = |on: bool, role| -> Result<Option<Norm>, ModelError> {
                Ok(if on {
                    Some(Norm {
                        w: l.norm_weight(role, d)?,
                        b: None,
                    })
                } else {
                    None
                })
            };
            layers.push(LayerWeights {
                attn_norm: l.norm(Role::AttnNorm(i), Some(Role::AttnNormBias(i)), d)?,
                mixer,
                post_mixer_norm: post(layer.post_mixer_norm, Role::PostAttnNorm(i))?,
                ffn_norm: l.norm(Role::FfnNorm(i), Some(Role::FfnNormBias(i)), d)?,
                ffn,
                post_ffn_norm: post(layer.post_ffn_norm, Role::PostFfnNorm(i))?,
            });
        }
        Ok(Weights {
            output: output.unwrap_or_else(|| token_embd.clone()),
            token_embd,
            layers,
            output_norm: l.norm(Role::OutputNorm, Some(Role::OutputNormBias), d)?,
            tied_output,
        })
    }

    /// Repacks the matrices that the kernels read faster in the eight-row interleaved layout
    /// (llama.cpp's "repack" buffers do the same); the mapped pages of the originals are
    /// released, so the resident memory stays about the size of the file. An embedding table
    /// is repacked only when the output head is tied to it (its rows are then looked up through
    /// the interleaved layout). Returns the number of matrices repacked.
    pub fn repack(&mut self, kernels: &torchless_kernels::Kernels) -> usize {
        let mut n = 0;
        let mut one = |t: &mut Tensor| {
            // Only mapped weights: their pages can be given back after the copy. A file read
            // into memory (`--no-mmap`) would be held twice.
            if !kernels.prefers_rows8(t.ty()) || !t.is_mapped() {
                return;
            }
            if let Some(packed) = t.interleaved_with(true) {
                *t = packed;
                n += 1;
            }
        };
        for l in &mut self.layers {
            for t in l.matrices_mut() {
                one(t);
            }
        }
        if self.tied_output {
            // Embedding rows are looked up from either layout; the head shares the table.
            one(&mut self.token_embd);
            self.output = self.token_embd.clone();
        } else {
            one(&mut self.output);
        }
        n
    }

    /// Every matrix, for accounting (bytes read per token, types in use).
    pub fn matrices(&self) -> Vec<&Tensor> {
        let mut v: Vec<&Tensor> = Vec::new();
        for l in &self.layers {
            v.extend(l.matrices());
        }
        v.push(&self.output);
        v
    }

    /// Bytes of weights read to produce one token: every matrix once, plus one embedding row.
    pub fn bytes_per_token(&self) -> u64 {
        let m: u64 = self.matrices().iter().map(|t| t.bytes().len() as u64).sum();
        m + self.token_embd.row_bytes() as u64
    }
}
