//! Activation buffers for one forward pass, allocated once for the largest batch and reused:
//! nothing is allocated per token (llama2.c's `RunState`).

use torchless_kernels::Activations;

use crate::config::ModelConfig;

/// The most rows the feed-forward block takes at a time. Its intermediate rows (`n_ff` wide,
/// several times the model width) are the largest activations of a prompt batch; taking them
/// in chunks keeps a 512-token batch's workspace small, and costs no speed, since the batched
/// products re-read each weight panel once per block of tokens anyway.
pub(crate) const FFN_CHUNK: usize = 128;

/// Scratch space of a forward pass of at most `max_batch` tokens over at most `max_ctx`
/// positions per sequence.
pub struct Workspace {
    pub(crate) max_batch: usize,
    pub(crate) max_ctx: usize,
    /// Pool threads the attention scratch has room for.
    pub(crate) threads: usize,
    /// x: [max_batch, n_embd], the residual stream.
    pub(crate) x: Vec<f32>,
    /// xn: [max_batch, n_embd], the normalized stream (input of projections).
    pub(crate) xn: Vec<f32>,
    /// q: [max_batch, n_head * head_dim]; k, v: [max_batch, n_head_kv * head_dim].
    pub(crate) q: Vec<f32>,
    pub(crate) k: Vec<f32>,
    pub(crate) v: Vec<f32>,
    /// att: [max_batch, n_head * head_dim], attention output before the output projection.
    pub(crate) att: Vec<f32>,
    /// proj: [max_batch, n_embd], output of wo and of the down projection.
    pub(crate) proj: Vec<f32>,
    /// gate, up: [min(max_batch, FFN_CHUNK), n_ff].
    pub(crate) gate: Vec<f32>,
    pub(crate) up: Vec<f32>,
    /// rope: [n_ropes][max_batch, max_rope_dims] interleaved cos/sin per token, one table per
    /// distinct rotary embedding of the plan.
    pub(crate) rope: Vec<f32>,
    /// The angle parameters of each rotary embedding for this workspace's context.
    pub(crate) rope_freqs: Vec<torchless_kernels::ops::RopeFreqs>,
    /// Attention scratch (`attention::scratch_len`, or `flash_attention::scratch_len` with
    /// flash attention, which does not grow with the context).
    pub(crate) scores: Vec<f32>,
    /// The flash attention tile, or `None` for the reference attention path.
    pub(crate) flash_tile: Option<usize>,
    /// Activations encoded for quantized dot products.
    pub(crate) acts: Activations,
    /// Rows whose logits are wanted, and their final hidden states.
    pub(crate) out_rows: Vec<usize>,
    pub(crate) out_hidden: Vec<f32>,
    /// logits: [n_outputs, vocab].
    pub(crate) logits: Vec<f32>,
    pub(crate) n_outputs: usize,
    pub(crate) vocab: usize,
    /// The first rows of the output head when only they are computed (a vocabulary window,
    /// see [`Workspace::set_vocab_window`]); `None` computes every id.
    pub(crate) head_window: Option<torchless_kernels::Tensor>,
}

impl Workspace {
    pub fn new(c: &ModelConfig, max_batch: usize, max_ctx: usize, threads: usize) -> Workspace {
        Workspace::with_attention(c, max_batch, max_ctx, threads, None)
    }

    /// A workspace for flash attention with tiles of `flash_tile` positions (`None`: the
    /// reference attention path).
    pub fn with_attention(
        c: &ModelConfig,
        max_batch: usize,
        max_ctx: usize,
        threads: usize,
        flash_tile: Option<usize>,
    ) -> Workspace {
        let b = max_batch.max(1);
        let scratch = match flash_tile {
            Some(tile) => crate::flash_attention::scratch_len(c.n_head, c.head_dim, tile, threads),
            None => crate::attention::scratch_len(max_ctx, c.head_dim, c.n_head, threads),
        };
        let ffn_rows = b.min(FFN_CHUNK);
        let mut acts = Activations::new();
        // Activations are encoded for the widest input of a product: q_dim or n_embd wide for
        // the whole batch, n_ff wide for one feed-forward chunk.
        acts.reserve(1, (b * c.n_embd.max(c.q_dim())).max(ffn_rows * c.n_ff));
        Workspace {
            max_batch: b,
            max_ctx,
            threads: threads.max(1),
            x: vec![0.0; b * c.n_embd],
            xn: vec![0.0; b * c.n_embd],
            q: vec![0.0; b * c.q_dim()],
            k: vec![0.0; b * c.kv_dim()],
            v: vec![0.0; b * c.kv_dim()],
            att: vec![0.0; b * c.q_dim()],
            proj: vec![0.0; b * c.n_embd],
            gate: vec![0.0; ffn_rows * c.n_ff],
            up: vec![0.0; ffn_rows * c.n_ff],
            rope: vec![0.0; c.plan.ropes.len() * b * c.plan.max_rope_dims()],
            rope_freqs: c.plan.ropes.iter().map(|r| r.freqs(max_ctx)).collect(),
            scores: vec![0.0; scratch],
            flash_tile,
            acts,
            out_rows: Vec::with_capacity(b),
            out_hidden: vec![0.0; c.n_embd],
            logits: vec![0.0; c.vocab],
            n_outputs: 0,
            vocab: c.vocab,
            head_window: None,
        }
    }

    /// Computes logits for the ids below `n` only (rounded up to a whole group of eight rows);
    /// the others get -inf. A draft model's window over the most frequent ids (a byte-level
    /// BPE numbers its merges in the order it learned them, most frequent first) drafts nearly
    /// as well for a fraction of a large vocabulary's head. `None`, or a window that covers the
    /// vocabulary, computes every id. Returns the ids computed.
    pub fn set_vocab_window(
        &mut self,
        output: &torchless_kernels::Tensor,
        n: Option<usize>,
    ) -> usize {
        let rows = output.rows();
        let want = n
            .map(|n| n.max(1).next_multiple_of(8))
            .filter(|&n| n < rows.min(self.vocab));
        self.head_window = want.and_then(|n| output.rows_view(0, n));
        self.head_window.as_ref().map_or(self.vocab, |h| h.rows())
    }

    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Logits of the last forward pass: one row of `vocab` values per requested output.
    pub fn logits(&self) -> &[f32] {
        &self.logits[..self.n_outputs * self.vocab]
    }

    /// Logits row `i` of the last forward pass.
    pub fn logits_row(&self, i: usize) -> &[f32] {
        self.logits
            .get(i * self.vocab..(i + 1) * self.vocab)
            .unwrap_or(&[])
    }
}
