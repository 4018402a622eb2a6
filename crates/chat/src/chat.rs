//! [`Chat`]: a conversation with a model whose KV cache is kept between turns.
//!
//! The chat owns what it runs: the model (shared with its session by reference count, so it
//! can be replaced while the conversation goes on: `/model`, `/lazy`), the chat template
//! (`/template`), and a [`Session`] that borrows nothing. A turn renders the whole
//! conversation, drops the oldest exchanges while it would not leave room for an answer,
//! keeps the cache's longest common prefix with the new prompt and evaluates only the rest,
//! then streams the answer as [`Event`]s. Whatever fails leaves the conversation, the model
//! and the template as they were.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use torchless_gguf::LoadMode;
use torchless_model::speculative::{self, PromptLookup};
use torchless_model::{
    generate, GenerateOptions, LoadOptions, Model, ModelError, ModelRef, Session, SessionOptions,
    SpecOptions, StopReason,
};
use torchless_tokenizer::{ChatTemplate, TextStream, TokenizerError};

use crate::conversation::{Conversation, SaveError, Settings};
use crate::thinking::{Part, ThinkSplitter};

/// Why a chat operation failed (the conversation is then as it was).
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("cannot load model '{path}': {source}")]
    Load { path: String, source: ModelError },
    #[error("{0}")]
    Model(#[from] ModelError),
    #[error("{0}")]
    Tokenizer(#[from] TokenizerError),
    #[error("{0}")]
    Save(#[from] SaveError),
    #[error(
        "the message takes {need} tokens with the system prompt and room for an answer, more \
         than the context's {n_ctx}: shorten it, or start the chat with a larger -c"
    )]
    MessageTooLong { need: usize, n_ctx: usize },
    #[error(
        "the conversation takes {need} tokens {what}, more than the context's {n_ctx} (with \
         room for an answer): /undo or /clear first"
    )]
    HistoryTooLong {
        need: usize,
        n_ctx: usize,
        what: String,
    },
    #[error("{0}")]
    Nothing(&'static str),
    #[error("the setting {0} is out of range: {1}")]
    Setting(&'static str, String),
}

/// What a chat is started with.
#[derive(Clone, Debug, Default)]
pub struct ChatOptions {
    pub session: SessionOptions,
    /// A built-in template's name or a Jinja file, instead of the model's own.
    pub template: Option<String>,
    pub system: Option<String>,
    pub settings: Settings,
    /// Speculate by prompt lookup with n-grams of up to this many tokens (the session must
    /// compute in the batch-invariant numerics); answers are distributed as without it.
    pub lookup: Option<usize>,
}

/// What a turn reports as it goes.
#[derive(Debug)]
pub enum Event<'a> {
    /// Reply text.
    Answer(&'a str),
    /// Reasoning text (shown only when the settings say so).
    Thinking(&'a str),
    /// Something the user should know (exchanges dropped to make room).
    Notice(String),
}

/// What one turn did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TurnStats {
    /// Tokens of the rendered prompt.
    pub prompt_tokens: usize,
    /// Of them, taken from the cache.
    pub reused: usize,
    /// Of them, evaluated now.
    pub evaluated: usize,
    pub generated: usize,
    pub prompt_secs: f64,
    pub gen_secs: f64,
    pub stop: StopReason,
    /// Oldest exchanges dropped to make room.
    pub dropped: usize,
    /// Positions the cache holds after the turn, of `n_ctx`.
    pub context_used: usize,
    pub n_ctx: usize,
}

impl TurnStats {
    pub fn prompt_tps(&self) -> f64 {
        rate(self.evaluated, self.prompt_secs)
    }

    /// Generation speed (the first token's time is the prompt's).
    pub fn gen_tps(&self) -> f64 {
        rate(self.generated.saturating_sub(1), self.gen_secs)
    }
}

fn rate(n: usize, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

/// A model as the chat holds it, with what it was loaded from and the template in use.
struct Loaded {
    model: Arc<Model>,
    path: PathBuf,
    load: LoadOptions,
    template: ChatTemplate,
    /// `None`: the model's own.
    template_name: Option<String>,
}

impl Loaded {
    fn new(
        model: Arc<Model>,
        path: PathBuf,
        load: LoadOptions,
        template_name: Option<String>,
    ) -> Result<Loaded, ChatError> {
        let tok = model.require_tokenizer()?;
        let template = match &template_name {
            Some(name) => tok.template_named(name)?,
            None => tok.chat_template()?.ok_or_else(|| {
                TokenizerError::Template(format!(
                    "the model has no chat template; choose one with --template ({})",
                    torchless_tokenizer::builtin_templates::NAMES.join(", ")
                ))
            })?,
        };
        Ok(Loaded {
            model,
            path,
            load,
            template,
            template_name,
        })
    }

    /// `conv` rendered and tokenized.
    fn render(
        &self,
        conv: &Conversation,
        generation_prompt: bool,
    ) -> Result<(String, Vec<u32>), ChatError> {
        let tok = self.model.require_tokenizer()?;
        Ok(tok.render_chat(&self.template, &conv.to_messages(), generation_prompt)?)
    }
}

fn load_model(path: &Path, load: &LoadOptions) -> Result<Arc<Model>, ChatError> {
    Model::load(path, load)
        .map(Arc::new)
        .map_err(|source| ChatError::Load {
            path: path.display().to_string(),
            source,
        })
}

/// Session-wide counts.
#[derive(Clone, Copy, Debug, Default)]
pub struct Totals {
    pub answers: usize,
    pub evaluated: usize,
    pub reused: usize,
    pub generated: usize,
    pub prompt_secs: f64,
    pub gen_secs: f64,
}

/// A conversation with a model.
pub struct Chat {
    loaded: Loaded,
    session: Session<'static>,
    session_opts: SessionOptions,
    conversation: Conversation,
    /// Seed of the next answer (`None`: from the clock).
    next_seed: Option<u64>,
    last: Option<TurnStats>,
    totals: Totals,
    lookup: Option<usize>,
}

impl Chat {
    /// A chat with `model` (loaded from `path` with `load`, which `/lazy` and `/model` reuse).
    pub fn new(
        model: Model,
        path: PathBuf,
        load: LoadOptions,
        opts: ChatOptions,
    ) -> Result<Chat, ChatError> {
        let loaded = Loaded::new(Arc::new(model), path, load, opts.template)?;
        let session = Session::shared(loaded.model.clone(), opts.session);
        let conversation = Conversation {
            system: opts.system,
            messages: Vec::new(),
            settings: opts.settings,
        };
        Ok(Chat {
            next_seed: conversation.settings.seed,
            loaded,
            session,
            session_opts: opts.session,
            lookup: opts.lookup,
            conversation,
            last: None,
            totals: Totals::default(),
        })
    }

    pub fn conversation(&self) -> &Conversation {
        &self.conversation
    }

    pub fn settings(&self) -> &Settings {
        &self.conversation.settings
    }

    /// Changes the settings; a new seed applies to the next answer.
    pub fn settings_mut(&mut self) -> &mut Settings {
        &mut self.conversation.settings
    }

    /// Sets the seed of the next answer (later answers take the following ones).
    pub fn set_seed(&mut self, seed: u64) {
        self.conversation.settings.seed = Some(seed);
        self.next_seed = Some(seed);
    }

    pub fn model(&self) -> &Model {
        &self.loaded.model
    }

    pub fn model_path(&self) -> &Path {
        &self.loaded.path
    }

    /// The template in use: a name or file, or `None` for the model's own.
    pub fn template_name(&self) -> Option<&str> {
        self.loaded.template_name.as_deref()
    }

    /// Whether the weights are memory-mapped (else read into memory).
    pub fn is_lazy(&self) -> bool {
        self.loaded.load.mode == LoadMode::Mmap
    }

    /// Positions the cache holds, and the context's size.
    pub fn context(&self) -> (usize, usize) {
        (self.session.n_past(), self.session.n_ctx())
    }

    pub fn last_turn(&self) -> Option<&TurnStats> {
        self.last.as_ref()
    }

    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    /// Tokens kept free for an answer when a prompt is fitted into the context.
    fn answer_room(&self) -> usize {
        let n_ctx = self.session.n_ctx();
        self.conversation.settings.max_tokens.min(n_ctx / 4).max(1)
    }

    /// `conv` rendered for an answer, its oldest exchanges dropped while it leaves no room:
    /// the conversation as fitted, its text and ids, and how many exchanges went.
    fn fit(
        &self,
        conv: &Conversation,
    ) -> Result<(Conversation, String, Vec<u32>, usize), ChatError> {
        let n_ctx = self.session.n_ctx();
        let mut conv = conv.clone();
        let mut dropped = 0;
        loop {
            let (text, ids) = self.loaded.render(&conv, true)?;
            let need = ids.len() + self.answer_room();
            if need <= n_ctx {
                return Ok((conv, text, ids, dropped));
            }
            if !conv.drop_oldest() {
                return Err(ChatError::MessageTooLong { need, n_ctx });
            }
            dropped += 1;
        }
    }

    /// Sends a user message and streams the answer; on error the message is not kept.
    pub fn send(
        &mut self,
        text: &str,
        cancel: &AtomicBool,
        on: &mut dyn FnMut(Event<'_>),
    ) -> Result<TurnStats, ChatError> {
        self.conversation.push("user", text);
        let r = self.answer(cancel, on);
        if r.is_err() {
            self.conversation.messages.pop();
        }
        r
    }

    /// A new answer to the last user message (the previous answer is replaced).
    pub fn retry(
        &mut self,
        cancel: &AtomicBool,
        on: &mut dyn FnMut(Event<'_>),
    ) -> Result<TurnStats, ChatError> {
        let msgs = &mut self.conversation.messages;
        let previous = match msgs.last() {
            Some(t) if t.role == "assistant" => msgs.pop(),
            Some(t) if t.role == "user" => None,
            _ => return Err(ChatError::Nothing("there is no message to answer yet")),
        };
        let r = self.answer(cancel, on);
        if r.is_err() {
            self.conversation.messages.extend(previous);
        }
        r
    }

    /// Answers the conversation as it stands (ending in a user message).
    fn answer(
        &mut self,
        cancel: &AtomicBool,
        on: &mut dyn FnMut(Event<'_>),
    ) -> Result<TurnStats, ChatError> {
        let (conv, text, ids, dropped) = self.fit(&self.conversation)?;
        if dropped > 0 {
            on(Event::Notice(format!(
                "the context is full: the oldest {dropped} exchange{} dropped",
                if dropped == 1 { " was" } else { "s were" }
            )));
        }
        let settings = &conv.settings;
        let seed = self.next_seed.unwrap_or_else(clock_seed);
        let sampler = settings.sampler(seed);
        let vocab = self.session.model().config().vocab;
        sampler
            .check(vocab)
            .map_err(|(name, why)| ChatError::Setting(name, why))?;
        let reused = self.reuse(&ids);
        let opts = GenerateOptions {
            max_tokens: settings.max_tokens,
            sampler,
            stop_at_eog: true,
            record_logits: false,
        };
        let model = self.session.model_ref();
        let tok = model.require_tokenizer()?;
        let mut stream = TextStream::new();
        let mut think = ThinkSplitter::new(text.trim_end().ends_with("<think>"));
        let mut answer = String::new();
        let mut emit = |part: Part, t: &str| match part {
            Part::Answer => on(Event::Answer(t)),
            Part::Thinking => on(Event::Thinking(t)),
        };
        let mut on_token = |t: u32| {
            let piece = stream.push(tok.token_bytes(t, false));
            answer.push_str(&piece);
            think.push(&piece, &mut emit);
            !cancel.load(Ordering::Relaxed)
        };
        let prompt = &ids[reused..];
        let g = match self.lookup {
            Some(n) => {
                let mut lookup = PromptLookup::new(n);
                let spec = SpecOptions::default();
                speculative::generate(
                    &mut self.session,
                    &mut lookup,
                    prompt,
                    &opts,
                    &spec,
                    on_token,
                )
                .map(|(g, _)| g)
            }
            None => generate(&mut self.session, prompt, &opts, |_| {}, &mut on_token),
        };
        let g = match g {
            Ok(g) => g,
            Err(e) => {
                // The cache may hold part of the prompt: the next turn finds what it can.
                return Err(e.into());
            }
        };
        let rest = stream.finish();
        answer.push_str(&rest);
        think.push(&rest, &mut emit);
        think.finish(&mut emit);
        self.conversation = conv;
        self.conversation.push("assistant", &answer);
        self.next_seed = self.next_seed.map(|s| s.wrapping_add(1));
        let t = g.timings;
        let stats = TurnStats {
            prompt_tokens: ids.len(),
            reused,
            evaluated: ids.len() - reused,
            generated: g.generated.len(),
            prompt_secs: t.prompt_secs,
            gen_secs: t.gen_secs,
            stop: g.stop,
            dropped,
            context_used: self.session.n_past(),
            n_ctx: self.session.n_ctx(),
        };
        self.count(&stats);
        Ok(stats)
    }

    fn count(&mut self, s: &TurnStats) {
        let t = &mut self.totals;
        t.answers += 1;
        t.evaluated += s.evaluated;
        t.reused += s.reused;
        t.generated += s.generated;
        t.prompt_secs += s.prompt_secs;
        t.gen_secs += s.gen_secs;
        self.last = Some(*s);
    }

    /// Keeps the cache's common prefix with `ids` (all but the last id at most: its logits
    /// are needed) and returns its length.
    fn reuse(&mut self, ids: &[u32]) -> usize {
        let common = (self.session.history().iter().zip(ids))
            .take_while(|(a, b)| a == b)
            .count()
            .min(ids.len().saturating_sub(1));
        self.session.truncate(common)
    }

    /// Makes the cache hold the conversation (without a generation prompt) in `session`,
    /// evaluating what it lacks; an error, with nothing changed for the caller, when it does
    /// not fit with room for an answer.
    fn rebuild(
        session: &mut Session<'static>,
        loaded: &Loaded,
        conv: &Conversation,
        room: usize,
        what: &str,
    ) -> Result<(), ChatError> {
        if conv.messages.is_empty() {
            session.reset();
            return Ok(());
        }
        let (_, ids) = loaded.render(conv, false)?;
        let n_ctx = session.n_ctx();
        if ids.len() + room > n_ctx {
            return Err(ChatError::HistoryTooLong {
                need: ids.len() + room,
                n_ctx,
                what: what.into(),
            });
        }
        let common = (session.history().iter().zip(&ids))
            .take_while(|(a, b)| a == b)
            .count();
        let kept = session.truncate(common);
        if kept < ids.len() {
            session.eval(&ids[kept..])?;
        }
        Ok(())
    }

    /// Forgets the conversation (the system prompt and settings stay).
    pub fn clear(&mut self) {
        self.conversation.messages.clear();
    }

    /// Drops the last exchange; false when there is none.
    pub fn undo(&mut self) -> bool {
        self.conversation.undo()
    }

    pub fn set_system(&mut self, text: &str) {
        self.conversation.system = Some(text.to_string());
    }

    /// Saves the conversation and settings (with the model and template) as JSON.
    pub fn save(&self, path: &Path) -> Result<(), ChatError> {
        let model = self.loaded.path.display().to_string();
        self.conversation
            .save(path, Some(&model), self.loaded.template_name.as_deref())?;
        Ok(())
    }

    /// Loads a saved conversation and its settings into this model and template, rebuilding
    /// the cache; returns the model and template it was saved with.
    pub fn load(&mut self, path: &Path) -> Result<(Option<String>, Option<String>), ChatError> {
        let (conv, model, template) = Conversation::load(path)?;
        let vocab = self.session.model().config().vocab;
        (conv.settings.sampler(0).check(vocab))
            .map_err(|(name, why)| ChatError::Setting(name, why))?;
        let room = conv
            .settings
            .max_tokens
            .min(self.session.n_ctx() / 4)
            .max(1);
        let what = format!("in {}", path.display());
        Chat::rebuild(&mut self.session, &self.loaded, &conv, room, &what)?;
        self.next_seed = conv.settings.seed;
        self.conversation = conv;
        Ok((model, template))
    }

    /// Renders the conversation with another template from now on (a built-in name or a
    /// Jinja file), rebuilding the cache.
    pub fn set_template(&mut self, name: &str) -> Result<(), ChatError> {
        let l = &self.loaded;
        let new = Loaded::new(
            l.model.clone(),
            l.path.clone(),
            l.load.clone(),
            Some(name.into()),
        )?;
        let (what, room) = (format!("with template {name}"), self.answer_room());
        Chat::rebuild(&mut self.session, &new, &self.conversation, room, &what)?;
        self.loaded = new;
        Ok(())
    }

    /// Goes on with the model at `path` (any family the engine runs), with `template` or its
    /// own: the conversation is rendered and tokenized anew and the cache rebuilt. On any
    /// failure the current model stays.
    pub fn set_model(&mut self, path: PathBuf, template: Option<String>) -> Result<(), ChatError> {
        let load = self.loaded.load.clone();
        let model = load_model(&path, &load)?;
        let new = Loaded::new(model, path, load, template)?;
        let mut session = Session::shared(new.model.clone(), self.session_opts);
        let what = format!("for {}", new.path.display());
        Chat::rebuild(
            &mut session,
            &new,
            &self.conversation,
            self.answer_room(),
            &what,
        )?;
        self.loaded = new;
        self.session = session;
        Ok(())
    }

    /// Memory-maps the weights (`true`) or reads them into memory, keeping the conversation
    /// and its cache (the same weights, loaded the other way).
    pub fn set_lazy(&mut self, lazy: bool) -> Result<(), ChatError> {
        let mut load = self.loaded.load.clone();
        load.mode = if lazy { LoadMode::Mmap } else { LoadMode::Read };
        let model = load_model(&self.loaded.path, &load)?;
        self.session
            .replace_model(ModelRef::Shared(model.clone()))?;
        self.loaded.model = model;
        self.loaded.load = load;
        Ok(())
    }
}

fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
