//! The draft model of an engine that speculates with one (`serve --draft-model`): its own
//! paged KV cache, with a sequence for each target sequence it drafts for, and batched passes
//! over all the sequences drafting in a step.
//!
//! A step's drafting runs one pass that brings every drafting sequence's draft cache up to its
//! text (the tokens it missed: the whole prompt at first, then the token the last verification
//! added) and yields each one's first draft token, then one pass per further draft token, all
//! sequences together. A draft cache that is behind by more than a step's token budget catches
//! up over several steps, drafting nothing meanwhile. Whatever fails here (a full pool, a
//! failed pass) costs only drafts: the step goes on without them.
//!
//! This module chooses draft tokens; it never decides which tokens a request outputs (the
//! verification in [`crate::speculation`] does) and never touches the target's cache.

use std::sync::Arc;

use torchless_kernels::Numerics;
use torchless_model::attention_options::ResolvedAttention;
use torchless_model::{Batch, KvCache, KvConfig, Model, SeqId, Workspace};

use crate::speculation::SeqSpec;

/// One sequence that drafts in this step.
pub(crate) struct Job<'a> {
    pub id: SeqId,
    /// Its text: the prompt and the tokens generated, the last one pending.
    pub tokens: &'a [u32],
    /// The most tokens to draft.
    pub want: usize,
    pub spec: &'a mut SeqSpec,
}

pub(crate) struct DraftRunner {
    model: Arc<Model>,
    cache: KvCache,
    ws: Workspace,
    batch: Batch,
    /// Ids the target knows: a draft stops at any other.
    target_vocab: usize,
    /// Which job each logits row of the last pass belongs to.
    rows: Vec<usize>,
    /// Ids whose logits the draft computes.
    ids: usize,
}

impl DraftRunner {
    /// A draft model with a pool of `n_blocks` blocks of `block_size` positions, for passes of
    /// at most `batch_tokens` tokens, computing the first `vocab_window` ids' logits where set.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        model: Arc<Model>,
        target_vocab: usize,
        att: ResolvedAttention,
        n_ctx: usize,
        block_size: usize,
        n_blocks: usize,
        max_running: usize,
        batch_tokens: usize,
        vocab_window: Option<usize>,
    ) -> DraftRunner {
        let c = model.config();
        let cfg = KvConfig::new(
            c.n_layers,
            c.n_head_kv,
            c.head_dim,
            block_size,
            n_blocks.max(1),
            model.precision().kv_type(),
        )
        .with_windows(c.layer_windows(), max_running, batch_tokens);
        let mut cache = KvCache::new(att.apply(cfg));
        cache.set_prefix_caching(true);
        let mut ws =
            Workspace::with_attention(c, batch_tokens, n_ctx, model.threads(), att.flash_tile);
        let ids = ws.set_vocab_window(&model.weights().output, vocab_window);
        tracing::info!(ids, blocks = n_blocks, "draft model ready");
        let mut batch = Batch::with_capacity(batch_tokens);
        // Each sequence's drafts do not depend on the others in the pass.
        batch.numerics = Numerics::BatchInvariant;
        DraftRunner {
            model,
            cache,
            ws,
            batch,
            target_vocab,
            rows: Vec::new(),
            ids,
        }
    }

    /// Entries of the draft model's vocabulary.
    pub(crate) fn vocab(&self) -> usize {
        self.model.config().vocab
    }

    /// Bytes of weights a draft token reads (with the vocabulary window's share of the head).
    pub(crate) fn bytes_per_token(&self) -> u64 {
        let w = self.model.weights();
        let head = w.output.bytes().len() as u64;
        let vocab = self.model.config().vocab.max(1) as u64;
        let ids = self.ids as u64;
        w.bytes_per_token() - head + head * ids.min(vocab) / vocab
    }

    /// Bytes of the draft's KV pool.
    pub(crate) fn kv_bytes(&self) -> usize {
        self.cache.config().bytes()
    }

    /// Forgets sequence `id` (finished, cancelled or preempted).
    pub(crate) fn forget(&mut self, id: SeqId, spec: Option<&mut SeqSpec>) {
        self.cache.remove(id);
        if let Some(sp) = spec {
            sp.rewind(0);
        }
    }

    /// Drafts for `jobs` (each draft left in its `SeqSpec`, possibly empty).
    pub(crate) fn draft(&mut self, jobs: &mut [Job]) {
        for j in jobs.iter_mut() {
            if let Some((at, _, draft)) = j.spec.model_parts() {
                draft.clear();
                // Positions past the text are stale drafts; the pending token is evaluated
                // again (its logits are needed).
                let kept = self.cache.truncate(j.id, (*at).min(j.tokens.len() - 1));
                *at = kept;
                if kept == 0 {
                    self.cache.remove(j.id);
                    *at = self.cache.attach_prefix(j.id, j.tokens).unwrap_or(0);
                }
            }
        }
        // The first pass: each job's missing tokens, logits after the pending one.
        self.batch.clear();
        self.rows.clear();
        let mut room = self.ws.max_batch();
        let mut wants: Vec<(SeqId, usize)> = Vec::with_capacity(jobs.len());
        for (k, j) in jobs.iter_mut().enumerate() {
            let Some((at, _, _)) = j.spec.model_parts() else {
                continue;
            };
            let from = (*at).min(j.tokens.len() - 1);
            let n = (j.tokens.len() - from).min(room);
            if n == 0 || j.want == 0 {
                continue;
            }
            let complete = from + n == j.tokens.len();
            for p in from..from + n {
                let last = complete && p + 1 == j.tokens.len();
                self.batch.push(j.tokens[p], p, j.id, last);
            }
            if complete {
                self.rows.push(k);
            }
            room -= n;
            wants.push((j.id, from + n + j.want - 1));
            *at = from + n;
        }
        if self.batch.is_empty() {
            return;
        }
        // Room for the whole round at once, or no drafting in this step.
        if self.cache.check_room(wants.iter().copied()).is_err() || !self.pass(jobs) {
            for j in jobs.iter_mut() {
                self.forget(j.id, Some(j.spec));
            }
            return;
        }
        self.commit(jobs);
        // One pass per further token, for the jobs still drafting.
        loop {
            self.batch.clear();
            let chosen = std::mem::take(&mut self.rows);
            for &k in &chosen {
                let j = &mut jobs[k];
                let Some((at, _, draft)) = j.spec.model_parts() else {
                    continue;
                };
                if draft.len() >= j.want {
                    continue;
                }
                let last = *draft.tokens().last().unwrap_or(&0);
                self.batch.push(last, *at, j.id, true);
                *at += 1;
                self.rows.push(k);
            }
            if self.batch.is_empty() || !self.pass(jobs) {
                return;
            }
        }
    }

    /// Tells the draft cache the text of `jobs` (their whole blocks become findable by other
    /// sequences that begin the same way).
    fn commit(&mut self, jobs: &[Job]) {
        for j in jobs {
            self.cache.commit(j.id, j.tokens);
        }
    }

    /// Runs the batch and lets each job of `self.rows` pick its next draft token from its row;
    /// `self.rows` keeps the jobs that did (a job stops drafting at a token the target does
    /// not know). False when the pass failed: the caller gives up drafting.
    fn pass(&mut self, jobs: &mut [Job]) -> bool {
        let model = self.model.clone();
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            model.forward(&self.batch, &mut self.cache, &mut self.ws)
        }));
        match ran {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "draft pass failed; this step drafts nothing");
                return false;
            }
            Err(_) => {
                tracing::warn!("internal error in a draft pass; this step drafts nothing");
                return false;
            }
        }
        let mut r = 0;
        let (ws, target_vocab) = (&self.ws, self.target_vocab);
        self.rows.retain(|&k| {
            let row = ws.logits_row(r);
            r += 1;
            let Some((_, picker, draft)) = jobs[k].spec.model_parts() else {
                return false;
            };
            let n = draft.len();
            match picker.pick(row, draft, 0.0) {
                Some(t) if (t as usize) < target_vocab => true,
                Some(_) => {
                    draft.truncate(n);
                    false
                }
                None => false,
            }
        });
        true
    }
}
