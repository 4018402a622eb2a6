//! A session: one sequence being evaluated — its KV cache, workspace and token history.
//! Prompts are evaluated in batches of up to `n_batch` tokens; generation appends one token at
//! a time. Truncation rolls the sequence back (for speculative decoding and chat edits).
//!
//! A session borrows its model, or shares it ([`Session::shared`]): a shared session lives as
//! long as its owner wants (a chat keeps one across turns), and can move to another load of
//! the same weights without losing its cache ([`Session::replace_model`]).

use std::sync::Arc;

use crate::attention_options::{AttentionOptions, ResolvedAttention};
use crate::batch::Batch;
use crate::error::ModelError;
use crate::kv_cache::{KvCache, KvConfig, SeqId};
use crate::model::Model;
use crate::workspace::Workspace;

/// Sizes of a session.
#[derive(Clone, Copy, Debug)]
pub struct SessionOptions {
    /// Positions the session can hold (0 = the model's training context, at most 4096).
    pub n_ctx: usize,
    /// Tokens per forward pass during prompt evaluation.
    pub n_batch: usize,
    /// Positions per KV cache block.
    pub block_size: usize,
    /// The arithmetic-order policy (llama.cpp's by default; batch-invariant reproduces what
    /// `torchless serve` computes for the same request).
    pub numerics: torchless_kernels::Numerics,
    /// Flash attention and the KV cache's element types.
    pub attention: AttentionOptions,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            n_ctx: 0,
            n_batch: 512,
            block_size: 16,
            numerics: torchless_kernels::Numerics::LlamaCpp,
            attention: AttentionOptions::default(),
        }
    }
}

/// The model a session runs: borrowed, or shared by reference count.
#[derive(Clone)]
pub enum ModelRef<'m> {
    Borrowed(&'m Model),
    Shared(Arc<Model>),
}

impl std::ops::Deref for ModelRef<'_> {
    type Target = Model;

    fn deref(&self) -> &Model {
        match self {
            ModelRef::Borrowed(m) => m,
            ModelRef::Shared(m) => m,
        }
    }
}

pub struct Session<'m> {
    model: ModelRef<'m>,
    cache: KvCache,
    ws: Workspace,
    batch: Batch,
    seq: SeqId,
    history: Vec<u32>,
    n_ctx: usize,
    n_batch: usize,
    attention: ResolvedAttention,
    /// Why the attention options could not be honoured ([`Session::with_model`] made the session
    /// anyway): every evaluation reports it.
    broken: Option<ModelError>,
}

impl<'m> Session<'m> {
    pub fn new(model: &'m Model, opts: SessionOptions) -> Session<'m> {
        Session::with_model(ModelRef::Borrowed(model), opts)
    }

    /// A session that holds its model by reference count (it borrows nothing).
    pub fn shared(model: Arc<Model>, opts: SessionOptions) -> Session<'static> {
        Session::with_model(ModelRef::Shared(model), opts)
    }

    /// A session; where `opts.attention` cannot be honoured, every evaluation returns why
    /// ([`Session::try_with_model`] says it at once).
    pub fn with_model(model: ModelRef<'m>, opts: SessionOptions) -> Session<'m> {
        match Session::try_with_model(model.clone(), opts) {
            Ok(s) => s,
            Err(e) => {
                let plain = SessionOptions {
                    attention: AttentionOptions::default(),
                    ..opts
                };
                let mut s = Session::build(model, plain, None);
                s.broken = Some(e);
                s
            }
        }
    }

    /// A session, or why its attention options cannot be honoured.
    pub fn try_with_model(
        model: ModelRef<'m>,
        opts: SessionOptions,
    ) -> Result<Session<'m>, ModelError> {
        let n_ctx = Session::context(&model, &opts);
        let c = model.config();
        let att = opts
            .attention
            .resolve(n_ctx, c.head_dim, model.precision().kv_type())?;
        Ok(Session::build(model, opts, Some(att)))
    }

    fn context(model: &Model, opts: &SessionOptions) -> usize {
        if opts.n_ctx == 0 {
            model.config().n_ctx_train.min(4096)
        } else {
            opts.n_ctx
        }
    }

    fn build(
        model: ModelRef<'m>,
        opts: SessionOptions,
        att: Option<ResolvedAttention>,
    ) -> Session<'m> {
        let c = model.config();
        let n_ctx = Session::context(&model, &opts);
        let att = att.unwrap_or(ResolvedAttention {
            flash_tile: None,
            k_type: model.precision().kv_type(),
            v_type: model.precision().kv_type(),
        });
        let bs = opts.block_size.max(1);
        let n_batch = opts.n_batch.clamp(1, n_ctx.max(1));
        let cfg = KvConfig::new(
            c.n_layers,
            c.n_head_kv,
            c.head_dim,
            bs,
            n_ctx.div_ceil(bs),
            model.precision().kv_type(),
        );
        let cfg = att.apply(cfg.with_windows(c.layer_windows(), 1, n_batch));
        let cache = KvCache::new(cfg);
        let ws = Workspace::with_attention(c, n_batch, n_ctx, model.threads(), att.flash_tile);
        Session {
            model,
            cache,
            ws,
            batch: {
                let mut b = Batch::with_capacity(n_batch);
                b.numerics = opts.numerics;
                b
            },
            seq: 0,
            history: Vec::with_capacity(n_ctx),
            n_ctx,
            n_batch,
            attention: att,
            broken: None,
        }
    }

    /// Computes the logits of the ids below `n` only, the others being -inf (see
    /// [`Workspace::set_vocab_window`]); `None` restores the whole vocabulary. Returns the
    /// number of ids computed.
    pub fn set_vocab_window(&mut self, n: Option<usize>) -> usize {
        self.ws.set_vocab_window(&self.model.weights().output, n)
    }

    /// The attention path and KV cache types this session settled on.
    pub fn attention(&self) -> ResolvedAttention {
        self.attention
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The session's model, to hold while the session is borrowed mutably.
    pub fn model_ref(&self) -> ModelRef<'m> {
        self.model.clone()
    }

    /// Goes on with `model`, keeping the cache: only a model of the same configuration,
    /// precision and thread count (the same weights loaded another way, say memory-mapped
    /// instead of read), whose keys and values are the ones the cache holds.
    pub fn replace_model(&mut self, model: ModelRef<'m>) -> Result<(), ModelError> {
        let same = model.config() == self.model.config()
            && model.precision() == self.model.precision()
            && model.threads() == self.model.threads();
        if !same {
            return Err(ModelError::Invalid(
                "a session can only go on with the same model loaded another way".into(),
            ));
        }
        self.model = model;
        if let Some(n) = self.ws.head_window.as_ref().map(|h| h.rows()) {
            self.ws
                .set_vocab_window(&self.model.weights().output, Some(n));
        }
        Ok(())
    }

    /// Positions evaluated so far.
    pub fn n_past(&self) -> usize {
        self.history.len()
    }

    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    pub fn history(&self) -> &[u32] {
        &self.history
    }

    /// Bytes of KV cache this session can fill.
    pub fn kv_bytes(&self) -> usize {
        self.cache.config().bytes()
    }

    /// Forgets everything.
    pub fn reset(&mut self) {
        self.cache.clear();
        self.history.clear();
    }

    /// Rolls back to the first `n` positions; returns the positions kept, fewer than `n`
    /// (none) where sliding-window layers already gave back what position `n` would read.
    pub fn truncate(&mut self, n: usize) -> usize {
        let kept = self.cache.truncate(self.seq, n);
        self.history.truncate(kept);
        kept
    }

    /// Appends `tokens` to the sequence. `on_logits(i, row)` receives the logits predicting
    /// the token after `tokens[i]`, for every i when `all` is set, else only for the last.
    pub fn eval_with(
        &mut self,
        tokens: &[u32],
        all: bool,
        mut on_logits: impl FnMut(usize, &[f32]),
    ) -> Result<(), ModelError> {
        if let Some(e) = &self.broken {
            return Err(ModelError::Attention(e.to_string()));
        }
        let need = self.history.len() + tokens.len();
        if need > self.n_ctx {
            return Err(ModelError::ContextFull {
                need,
                max: self.n_ctx,
            });
        }
        let vocab = self.model.config().vocab;
        for (c, chunk) in tokens.chunks(self.n_batch).enumerate() {
            self.batch.clear();
            let base = self.history.len();
            let last_chunk = (c + 1) * self.n_batch >= tokens.len();
            for (i, &t) in chunk.iter().enumerate() {
                let wanted = all || (last_chunk && i + 1 == chunk.len());
                self.batch.push(t, base + i, self.seq, wanted);
            }
            self.model
                .forward(&self.batch, &mut self.cache, &mut self.ws)?;
            self.history.extend_from_slice(chunk);
            let mut row = 0;
            for (i, &wanted) in self.batch.logits.iter().enumerate() {
                if wanted {
                    on_logits(
                        c * self.n_batch + i,
                        &self.ws.logits()[row * vocab..(row + 1) * vocab],
                    );
                    row += 1;
                }
            }
        }
        Ok(())
    }

    /// The arithmetic-order policy of this session's passes.
    pub fn numerics(&self) -> torchless_kernels::Numerics {
        self.batch.numerics
    }

    /// Appends `tokens` running only the layers `skip` does not mark (`skip[l]`: layer `l` is
    /// left out and writes nothing for these positions), and returns the logits after the last
    /// one: a self-speculative draft. Truncate the positions away before the full model
    /// evaluates them.
    pub fn eval_skipping(&mut self, tokens: &[u32], skip: &[bool]) -> Result<&[f32], ModelError> {
        if tokens.is_empty() {
            return Err(ModelError::Invalid("nothing to evaluate".into()));
        }
        let n_layers = self.model.config().n_layers;
        if skip.len() != n_layers || skip.iter().all(|&s| s) {
            return Err(ModelError::Invalid(format!(
                "a layer-skipping draft needs one flag per layer ({n_layers}) and at least one \
                 layer kept"
            )));
        }
        self.batch.skip_layers.clear();
        self.batch.skip_layers.extend_from_slice(skip);
        let r = self.eval_with(tokens, false, |_, _| {});
        self.batch.skip_layers.clear();
        r?;
        Ok(self.ws.logits_row(0))
    }

    /// Appends `tokens` and returns the logits after the last one.
    pub fn eval(&mut self, tokens: &[u32]) -> Result<&[f32], ModelError> {
        if tokens.is_empty() {
            return Err(ModelError::Invalid(
                "nothing to evaluate: the prompt is empty".into(),
            ));
        }
        self.eval_with(tokens, false, |_, _| {})?;
        Ok(self.ws.logits_row(0))
    }
}
