//! Model weights: GGUF tensor names mapped to the parts of the network, with every shape and
//! type checked at load. Matrices stay views into the (memory-mapped) file; small vectors
//! (norms, biases) are converted to f32 once.
//!
//! GGUF's naming lives here and only here (`blk.{i}.attn_q.weight` …).

use torchless_gguf::GgufFile;
use torchless_kernels::Tensor;

use crate::config::ModelConfig;
use crate::error::ModelError;

/// One transformer block.
// Shapes use GGML order: [row length (input), rows (output)].
pub struct LayerWeights {
    /// attn_norm: [n_embd]
    pub attn_norm: Vec<f32>,
    /// wq: [n_embd, n_head * head_dim]
    pub wq: Tensor,
    /// wk, wv: [n_embd, n_head_kv * head_dim]
    pub wk: Tensor,
    pub wv: Tensor,
    /// Optional biases of the three projections (Qwen2).
    pub bq: Option<Vec<f32>>,
    pub bk: Option<Vec<f32>>,
    pub bv: Option<Vec<f32>>,
    /// wo: [n_head * head_dim, n_embd]
    pub wo: Tensor,
    /// ffn_norm: [n_embd]
    pub ffn_norm: Vec<f32>,
    /// w_gate, w_up: [n_embd, n_ff]
    pub w_gate: Tensor,
    pub w_up: Tensor,
    /// w_down: [n_ff, n_embd]
    pub w_down: Tensor,
}

/// All weights of a model.
pub struct Weights {
    /// token_embd: [n_embd, vocab]; rows are looked up per token.
    pub token_embd: Tensor,
    pub layers: Vec<LayerWeights>,
    /// output_norm: [n_embd]
    pub output_norm: Vec<f32>,
    /// output: [n_embd, vocab]; the embedding table itself when the model ties them.
    pub output: Tensor,
    pub tied_output: bool,
}

struct Loader<'a> {
    file: &'a GgufFile,
}

impl Loader<'_> {
    fn get(&self, name: &str, dims: &[usize]) -> Result<Tensor, ModelError> {
        let t = self
            .file
            .tensor(name)
            .ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
        self.check(name, t, dims)
    }

    fn get_opt(&self, name: &str, dims: &[usize]) -> Result<Option<Tensor>, ModelError> {
        self.file
            .tensor(name)
            .map(|t| self.check(name, t, dims))
            .transpose()
    }

    fn check(&self, name: &str, t: Tensor, dims: &[usize]) -> Result<Tensor, ModelError> {
        // Trailing dimensions of size 1 are insignificant.
        let mut found = t.dims().to_vec();
        while found.len() > dims.len() && found.last() == Some(&1) {
            found.pop();
        }
        if found != dims {
            return Err(ModelError::TensorShape {
                name: name.to_string(),
                expected: dims.to_vec(),
                found: t.dims().to_vec(),
            });
        }
        if !t.ty().is_supported() {
            return Err(ModelError::UnsupportedType {
                name: name.to_string(),
                ty: t.ty(),
            });
        }
        Ok(t)
    }

    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
        let t = self.get(name, &[len])?;
        t.to_f32_vec().ok_or(ModelError::UnsupportedType {
            name: name.to_string(),
            ty: t.ty(),
        })
    }

    fn vector_opt(&self, name: &str, len: usize) -> Result<Option<Vec<f32>>, ModelError> {
        match self.get_opt(name, &[len])? {
            Some(t) => t.to_f32_vec().map(Some).ok_or(ModelError::UnsupportedType {
                name: name.to_string(),
                ty: t.ty(),
            }),
            None => Ok(None),
        }
    }
}

impl Weights {
    /// The vocabulary size, from the embedding table's shape.
    pub fn vocab_of(file: &GgufFile) -> Result<usize, ModelError> {
        let t = file
            .tensor_info("token_embd.weight")
            .ok_or_else(|| ModelError::MissingTensor("token_embd.weight".into()))?;
        match t.dims.as_slice() {
            [_, v] | [_, v, 1] if *v > 0 => Ok(*v as usize),
            _ => Err(ModelError::Config(format!(
                "token_embd.weight has shape {:?}, expected [n_embd, vocab]",
                t.dims
            ))),
        }
    }

    pub fn load(file: &GgufFile, c: &ModelConfig) -> Result<Weights, ModelError> {
        let l = Loader { file };
        let (d, q, kv, ff) = (c.n_embd, c.q_dim(), c.kv_dim(), c.n_ff);
        let token_embd = l.get("token_embd.weight", &[d, c.vocab])?;
        let output = l.get_opt("output.weight", &[d, c.vocab])?;
        let tied_output = output.is_none();
        let mut layers = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            let n = |s: &str| format!("blk.{i}.{s}");
            layers.push(LayerWeights {
                attn_norm: l.vector(&n("attn_norm.weight"), d)?,
                wq: l.get(&n("attn_q.weight"), &[d, q])?,
                wk: l.get(&n("attn_k.weight"), &[d, kv])?,
                wv: l.get(&n("attn_v.weight"), &[d, kv])?,
                bq: l.vector_opt(&n("attn_q.bias"), q)?,
                bk: l.vector_opt(&n("attn_k.bias"), kv)?,
                bv: l.vector_opt(&n("attn_v.bias"), kv)?,
                wo: l.get(&n("attn_output.weight"), &[q, d])?,
                ffn_norm: l.vector(&n("ffn_norm.weight"), d)?,
                w_gate: l.get(&n("ffn_gate.weight"), &[d, ff])?,
                w_up: l.get(&n("ffn_up.weight"), &[d, ff])?,
                w_down: l.get(&n("ffn_down.weight"), &[ff, d])?,
            });
        }
        Ok(Weights {
            output: output.unwrap_or_else(|| token_embd.clone()),
            token_embd,
            layers,
            output_norm: l.vector("output_norm.weight", d)?,
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
            for t in [
                &mut l.wq,
                &mut l.wk,
                &mut l.wv,
                &mut l.wo,
                &mut l.w_gate,
                &mut l.w_up,
                &mut l.w_down,
            ] {
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
            v.extend([&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down]);
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
