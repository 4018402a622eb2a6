//! A draft model: a smaller model of the same vocabulary drafts for the target. It keeps its
//! own session, which follows the target's text: each round it rolls back to what it shares
//! with the target's context and evaluates only the rest, so a round costs one draft pass per
//! drafted token.

use crate::error::ModelError;
use crate::model::Model;
use crate::sampler::SamplerConfig;
use crate::session::{ModelRef, Session, SessionOptions};

use super::layer_skip::Picker;
use super::{Draft, Proposer};

/// How far the vocabulary sizes may differ (llama.cpp allows as much: padding rows).
const VOCAB_SLACK: usize = 128;

pub struct DraftModel<'d> {
    session: Session<'d>,
    picker: Picker,
    /// Ids the target knows (drafts stop at any other).
    target_vocab: usize,
    context: Vec<u32>,
    /// Stop drafting at a token the draft gives less than this probability.
    pub p_min: f32,
}

impl<'d> DraftModel<'d> {
    /// `draft` drafting for `target`, with a context of `n_ctx` positions (the target's).
    /// Fails when their vocabularies differ: sizes more than 128 apart, or any id both know
    /// that is not the same text in both.
    pub fn new(
        draft: ModelRef<'d>,
        target: &Model,
        n_ctx: usize,
        sampler: &SamplerConfig,
    ) -> Result<DraftModel<'d>, ModelError> {
        check_vocab(&draft, target)?;
        let vocab = draft.config().vocab;
        // The draft's arithmetic order does not touch the output; the batch-invariant one
        // measured a little faster for single tokens (Qwen2.5-Coder-0.5B: 47.5 against 44.3
        // tokens/s on two Xeon threads).
        let opts = SessionOptions {
            n_ctx,
            numerics: torchless_kernels::Numerics::BatchInvariant,
            ..SessionOptions::default()
        };
        Ok(DraftModel {
            session: Session::with_model(draft, opts),
            picker: Picker::new(sampler, vocab),
            target_vocab: target.config().vocab,
            context: Vec::with_capacity(n_ctx),
            p_min: 0.0,
        })
    }
}

/// The draft's vocabulary must be the target's: sizes at most 128 apart (padding rows), and
/// every id both know the same text in both.
pub fn check_vocab(draft: &Model, target: &Model) -> Result<(), ModelError> {
    let (dv, tv) = (draft.config().vocab, target.config().vocab);
    if dv.abs_diff(tv) > VOCAB_SLACK {
        return Err(ModelError::Speculation(format!(
            "the draft model has {dv} tokens and the target {tv}: a draft must share the \
             target's vocabulary"
        )));
    }
    let (Some(d), Some(t)) = (draft.tokenizer(), target.tokenizer()) else {
        return Err(ModelError::Speculation(
            "the draft and the target need their tokenizers to check that their \
             vocabularies match"
                .into(),
        ));
    };
    let n = d.len().min(t.len()) as u32;
    if let Some(id) = (0..n).find(|&i| d.token_bytes(i, true) != t.token_bytes(i, true)) {
        return Err(ModelError::Speculation(format!(
            "token {id} is '{}' in the draft model but '{}' in the target: a draft must share \
             the target's vocabulary",
            String::from_utf8_lossy(d.token_bytes(id, true)).escape_debug(),
            String::from_utf8_lossy(t.token_bytes(id, true)).escape_debug(),
        )));
    }
    Ok(())
}

impl DraftModel<'_> {
    /// Drafts from the ids below `n` only (see [`Session::set_vocab_window`]): a large
    /// vocabulary's head is a large share of a small draft's reading. Returns the ids the
    /// draft computes.
    pub fn set_vocab_window(&mut self, n: Option<usize>) -> usize {
        self.session.set_vocab_window(n)
    }
}

impl Proposer for DraftModel<'_> {
    fn name(&self) -> &'static str {
        "draft-model"
    }

    fn propose(
        &mut self,
        target: &mut Session,
        pending: u32,
        max: usize,
        draft: &mut Draft,
    ) -> Result<(), ModelError> {
        let ctx = &mut self.context;
        ctx.clear();
        ctx.extend_from_slice(target.history());
        ctx.push(pending);
        if ctx.len() > self.session.n_ctx() {
            return Ok(());
        }
        // Keep what the draft's cache shares with the context, but at least one token to
        // evaluate (the logits of the last one are needed).
        let shared = (self.session.history().iter().zip(ctx.iter()))
            .take_while(|(a, b)| a == b)
            .count()
            .min(ctx.len() - 1);
        let kept = self.session.truncate(shared);
        let mut logits = self.session.eval(&ctx[kept..])?;
        for i in 0..max {
            let Some(t) = self.picker.pick(logits, draft, self.p_min) else {
                break;
            };
            if t as usize >= self.target_vocab {
                draft.truncate(i);
                break;
            }
            if i + 1 == max || self.session.n_past() >= self.session.n_ctx() {
                break;
            }
            logits = self.session.eval(std::slice::from_ref(&t))?;
        }
        Ok(())
    }
}
