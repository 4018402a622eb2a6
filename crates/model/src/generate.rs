//! The generation loop: evaluate the prompt in batches, then sample, stream and feed back one
//! token at a time until an end-of-generation token, the token limit, the context limit, or
//! the caller says stop. Nothing is allocated per token.

use std::time::Instant;

use crate::error::ModelError;
use crate::sampler::{Sampler, SamplerConfig};
use crate::session::Session;

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampler: SamplerConfig,
    /// Stop after (and including) an end-of-generation token.
    pub stop_at_eog: bool,
    /// Report the logits of every evaluated position through `on_logits`.
    pub record_logits: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 128,
            sampler: SamplerConfig::default(),
            stop_at_eog: true,
            record_logits: false,
        }
    }
}

/// Why generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced an end-of-generation token (included in the output).
    EndOfGeneration,
    /// `max_tokens` were generated.
    MaxTokens,
    /// The context is full.
    ContextFull,
    /// The caller asked to stop.
    Cancelled,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::EndOfGeneration => "eog",
            StopReason::MaxTokens => "max_tokens",
            StopReason::ContextFull => "context_full",
            StopReason::Cancelled => "cancelled",
        }
    }
}

/// Token counts and wall-clock times of the two phases.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Timings {
    pub prompt_tokens: usize,
    pub prompt_secs: f64,
    pub gen_tokens: usize,
    pub gen_secs: f64,
}

impl Timings {
    pub fn prompt_tps(&self) -> f64 {
        rate(self.prompt_tokens, self.prompt_secs)
    }
    /// Generation speed: tokens after the first (whose time is the prompt's) over their time.
    pub fn gen_tps(&self) -> f64 {
        rate(self.gen_tokens, self.gen_secs)
    }
}

fn rate(n: usize, s: f64) -> f64 {
    if s > 0.0 {
        n as f64 / s
    } else {
        0.0
    }
}

/// The result of a generation.
#[derive(Clone, Debug)]
pub struct Generation {
    pub generated: Vec<u32>,
    pub stop: StopReason,
    pub timings: Timings,
}

/// Generates a continuation of `prompt` in `session` (which must be empty or hold a prefix the
/// prompt continues). `on_token` sees each token as it is chosen and returns false to stop;
/// `on_logits` sees the logits of every evaluated position when `record_logits` is set.
pub fn generate(
    session: &mut Session,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_logits: impl FnMut(&[f32]),
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<Generation, ModelError> {
    let model = session.model_ref();
    let vocab = model.config().vocab;
    let tokenizer = model.tokenizer();
    let mut sampler = Sampler::with_texts(opts.sampler.clone(), vocab, |t| {
        tokenizer.map(|tok| String::from_utf8_lossy(tok.token_bytes(t, false)))
    });
    // Penalties and DRY see the whole text: what the session holds, then the prompt (as
    // llama.cpp's CLI feeds its prompt to its samplers).
    (session.history().iter().chain(prompt)).for_each(|&t| sampler.accept(t));
    let mut generated = Vec::with_capacity(opts.max_tokens.min(session.n_ctx()));
    let mut timings = Timings {
        prompt_tokens: prompt.len(),
        ..Timings::default()
    };

    if prompt.is_empty() {
        return Err(ModelError::Invalid("the prompt is empty".into()));
    }
    let t0 = Instant::now();
    let mut last = vec![0.0f32; vocab];
    session.eval_with(prompt, opts.record_logits, |i, row| {
        if opts.record_logits {
            on_logits(row);
        }
        if i + 1 == prompt.len() {
            last.copy_from_slice(row);
        }
    })?;
    timings.prompt_secs = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let mut stop = StopReason::MaxTokens;
    let mut logits: &[f32] = &last;
    while generated.len() < opts.max_tokens {
        let tok = sampler.sample(logits);
        sampler.accept(tok);
        generated.push(tok);
        let keep_going = on_token(tok);
        if opts.stop_at_eog && tokenizer.is_some_and(|t| t.is_eog(tok)) {
            stop = StopReason::EndOfGeneration;
            break;
        }
        if !keep_going {
            stop = StopReason::Cancelled;
            break;
        }
        if generated.len() == opts.max_tokens {
            break;
        }
        if session.n_past() >= session.n_ctx() {
            stop = StopReason::ContextFull;
            break;
        }
        logits = session.eval(std::slice::from_ref(&tok))?;
        if opts.record_logits {
            on_logits(logits);
        }
    }
    timings.gen_tokens = generated.len().saturating_sub(1);
    timings.gen_secs = t1.elapsed().as_secs_f64();
    Ok(Generation {
        generated,
        stop,
        timings,
    })
}
