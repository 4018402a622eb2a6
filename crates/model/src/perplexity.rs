//! Perplexity as llama.cpp's perplexity tool computes it: the tokens are cut into chunks of
//! `n_ctx`; each chunk is evaluated from an empty cache and only its second half is scored
//! (every prediction has at least n_ctx/2 tokens of context). The ± figure is the standard
//! error of the mean negative log-likelihood, scaled by the perplexity.

use crate::attention_options::AttentionOptions;
use crate::error::ModelError;
use crate::model::Model;
use crate::session::{Session, SessionOptions};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Perplexity {
    pub ppl: f64,
    /// Standard error of the estimate.
    pub ppl_err: f64,
    pub chunks: usize,
    /// Predictions scored.
    pub scored: usize,
}

/// log p(tok | logits) as llama.cpp computes it: max in f32, sum of exp in f64.
pub fn log_softmax(logits: &[f32], tok: usize) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| (l - max).exp() as f64).sum();
    logits[tok] as f64 - max as f64 - sum.ln()
}

/// Perplexity of `model` on `tokens` with chunks of `n_ctx`; `progress(done, total, ppl)` is
/// called after each chunk.
pub fn perplexity(
    model: &Model,
    tokens: &[u32],
    n_ctx: usize,
    n_batch: usize,
    progress: impl FnMut(usize, usize, f64),
) -> Result<Perplexity, ModelError> {
    let att = AttentionOptions::default();
    perplexity_with(model, tokens, n_ctx, n_batch, att, progress)
}

/// [`perplexity`] with the given attention path and KV cache types.
pub fn perplexity_with(
    model: &Model,
    tokens: &[u32],
    n_ctx: usize,
    n_batch: usize,
    attention: AttentionOptions,
    mut progress: impl FnMut(usize, usize, f64),
) -> Result<Perplexity, ModelError> {
    if n_ctx < 4 {
        return Err(ModelError::Invalid(format!(
            "context {n_ctx} is too small for perplexity"
        )));
    }
    if tokens.len() < 2 * n_ctx {
        return Err(ModelError::Invalid(format!(
            "the text has {} tokens; perplexity with context {n_ctx} needs at least {}",
            tokens.len(),
            2 * n_ctx
        )));
    }
    let bos = model
        .tokenizer()
        .filter(|t| t.vocab().add_bos)
        .and_then(|t| t.vocab().bos);
    let chunks = tokens.len() / n_ctx;
    let first = n_ctx / 2;
    let mut session = Session::try_with_model(
        crate::session::ModelRef::Borrowed(model),
        SessionOptions {
            n_ctx,
            n_batch: n_batch.min(n_ctx),
            attention,
            ..SessionOptions::default()
        },
    )?;
    let (mut nll, mut nll2, mut count) = (0.0f64, 0.0f64, 0usize);
    let mut chunk_tokens = Vec::with_capacity(n_ctx);
    for c in 0..chunks {
        let start = c * n_ctx;
        chunk_tokens.clear();
        chunk_tokens.extend_from_slice(&tokens[start..start + n_ctx]);
        if let Some(b) = bos {
            chunk_tokens[0] = b;
        }
        session.reset();
        let (mut err, mut local, mut local2, mut n) = (None, 0.0, 0.0, 0usize);
        session.eval_with(&chunk_tokens, true, |i, row| {
            if i >= first && i + 1 < n_ctx {
                let next = tokens[start + i + 1] as usize;
                if next >= row.len() {
                    err = Some(ModelError::InvalidToken {
                        id: next as u32,
                        vocab: row.len(),
                    });
                    return;
                }
                let v = -log_softmax(row, next);
                local += v;
                local2 += v * v;
                n += 1;
            }
        })?;
        if let Some(e) = err {
            return Err(e);
        }
        nll += local;
        nll2 += local2;
        count += n;
        progress(c + 1, chunks, (nll / count as f64).exp());
    }
    let mean = nll / count as f64;
    let ppl = mean.exp();
    let var = nll2 / count as f64 - mean * mean;
    let ppl_err = if var > 0.0 && count > 1 {
        (var / (count - 1) as f64).sqrt() * ppl
    } else {
        0.0
    };
    Ok(Perplexity {
        ppl,
        ppl_err,
        chunks,
        scored: count,
    })
}
