//! The engine: one thread owns the model's KV cache and workspace and runs every admitted
//! request through ONE batched forward pass per step, as the [`crate::scheduler`] decides.
//!
//! Requests arrive on a channel, each with its own channel for [`Event`]s. A request whose
//! receiver is gone (the client disconnected) is cancelled at the next step and its blocks
//! given back. A panic in one request's output path fails that request alone; a failed
//! forward pass fails the requests that were in it, and the engine goes on. With
//! [`Numerics::BatchInvariant`] (the default) a request's tokens and log-probabilities do not
//! depend on what else runs, how its prompt was chunked, whether it was preempted, or whether
//! the prefix cache supplied part of it.
//!
//! The engine knows nothing of HTTP; [`Engine`] is the handle the server (or a test) holds.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use torchless_kernels::Numerics;
use torchless_model::attention_options::AttentionOptions;
use torchless_model::{Batch, KvCache, KvConfig, Model, ModelError, Sampler, SeqId, Workspace};

use crate::draft_runner::{DraftRunner, Job};
use crate::metrics::Metrics;
use crate::output::{logprobs, StopFilter};
use crate::request::{Event, Finish, Request, Usage};
use crate::scheduler::{schedule, Limits, Running, Waiting};
use crate::speculation::{Drafter, SeqSpec, SpecConfig};

/// How the engine is sized.
#[derive(Clone, Copy, Debug)]
pub struct EngineOptions {
    /// Positions one sequence may hold (0: the model's training context, at most 4096).
    pub n_ctx: usize,
    /// Most sequences running at once.
    pub max_running: usize,
    /// Most tokens in one forward pass (prompt chunks and decoded tokens together).
    pub batch_tokens: usize,
    /// Most prompt tokens in a step while other sequences decode (see
    /// [`Limits::chunk_tokens`]; 0: no limit beyond `batch_tokens`).
    pub chunk_tokens: usize,
    pub block_size: usize,
    /// Blocks in the KV pool (`None`: from `kv_memory`, else enough for `max_running` full
    /// contexts within 512 MiB, and never less than one full context).
    pub n_blocks: Option<usize>,
    /// Bytes the KV pool may take.
    pub kv_memory: Option<usize>,
    /// Most requests waiting for admission before new ones are refused.
    pub max_queue: usize,
    pub preemption: bool,
    pub prefix_cache: bool,
    pub numerics: Numerics,
    /// Flash attention and the KV cache's element types.
    pub attention: AttentionOptions,
    /// Speculation per sequence (prompt lookup, or the draft model given to
    /// [`Engine::start_with_draft`]), or none.
    pub speculation: Option<SpecConfig>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            n_ctx: 0,
            max_running: 32,
            batch_tokens: 128,
            chunk_tokens: 32,
            block_size: 16,
            n_blocks: None,
            kv_memory: None,
            max_queue: 256,
            preemption: true,
            prefix_cache: true,
            numerics: Numerics::BatchInvariant,
            attention: AttentionOptions::default(),
            speculation: None,
        }
    }
}

/// Why a request was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error(
        "the prompt has {tokens} tokens but a sequence holds at most {max} positions; shorten it"
    )]
    TooLong { tokens: usize, max: usize },
    #[error("token id {id} is outside the vocabulary of {vocab} tokens")]
    InvalidToken { id: u32, vocab: usize },
    #[error("max_tokens must be at least 1")]
    NoTokens,
    #[error("{max} requests are already waiting; try again shortly")]
    QueueFull { max: usize },
    #[error("the server is shutting down")]
    ShuttingDown,
}

/// Figures of the running engine that callers need.
#[derive(Debug)]
struct Shared {
    metrics: Metrics,
    queued: AtomicUsize,
    accepting: AtomicBool,
}

/// The handle of a running engine.
pub struct Engine {
    tx: Option<Sender<Request>>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    n_ctx: usize,
    capacity: usize,
    vocab: usize,
    max_queue: usize,
    opts: EngineOptions,
    kv_bytes: usize,
}

impl Engine {
    /// Sizes the cache, commits its memory and starts the engine thread.
    pub fn start(model: Arc<Model>, opts: EngineOptions) -> Result<Engine, ModelError> {
        Engine::start_with_draft(model, None, opts)
    }

    /// [`Engine::start`] with a draft model, which `opts.speculation` must name
    /// ([`Drafter::Model`]); its vocabulary must be the model's.
    pub fn start_with_draft(
        model: Arc<Model>,
        draft: Option<Arc<Model>>,
        opts: EngineOptions,
    ) -> Result<Engine, ModelError> {
        let c = model.config();
        let n_ctx = if opts.n_ctx == 0 {
            c.n_ctx_train.min(4096)
        } else {
            opts.n_ctx
        };
        let bs = opts.block_size.max(1);
        if opts.max_running == 0 || opts.batch_tokens < opts.max_running {
            return Err(ModelError::Invalid(format!(
                "--batch-tokens ({}) must be at least --batch-size ({}), which must be at least 1",
                opts.batch_tokens, opts.max_running
            )));
        }
        if opts.speculation.is_some() && opts.numerics != Numerics::BatchInvariant {
            return Err(ModelError::Invalid(
                "speculation needs the batch-invariant numerics (drop --llama-cpp-numerics), so \
                 that verifying a draft gives the logits of one-at-a-time decoding"
                    .into(),
            ));
        }
        let att = opts
            .attention
            .resolve(n_ctx, c.head_dim, model.precision().kv_type())?;
        let mut cfg = KvConfig::new(
            c.n_layers,
            c.n_head_kv,
            c.head_dim,
            bs,
            1,
            model.precision().kv_type(),
        )
        .with_windows(c.layer_windows(), opts.max_running, opts.batch_tokens);
        cfg = att.apply(cfg);
        let block_bytes = cfg.block_bytes().max(1);
        let one_ctx = n_ctx.div_ceil(bs);
        cfg.n_blocks = match (opts.n_blocks, opts.kv_memory) {
            (Some(n), _) => n,
            (None, Some(bytes)) => bytes / block_bytes,
            (None, None) => (opts.max_running * one_ctx)
                .min((512 << 20) / block_bytes)
                .max(one_ctx + 1),
        };
        if cfg.n_blocks == 0 {
            return Err(ModelError::Invalid(format!(
                "the KV cache would hold no block of {block_bytes} bytes; give it more memory"
            )));
        }
        let drafter = match (opts.speculation.map(|s| s.drafter), draft) {
            (Some(Drafter::Model { vocab_window }), Some(d)) => {
                torchless_model::speculative::check_vocab(&d, &model)?;
                let att =
                    opts.attention
                        .resolve(n_ctx, d.config().head_dim, d.precision().kv_type())?;
                let length = opts.speculation.map_or(1, |s| s.length);
                // As many positions as the model's pool, and each sequence's draft besides.
                let n_blocks = cfg.n_blocks + opts.max_running * (length.div_ceil(bs) + 1);
                Some(DraftRunner::new(
                    d,
                    c.vocab,
                    att,
                    n_ctx,
                    bs,
                    n_blocks,
                    opts.max_running,
                    opts.batch_tokens,
                    vocab_window,
                ))
            }
            (Some(Drafter::Model { .. }), None) => {
                return Err(ModelError::Invalid(
                    "speculation with a draft model needs the draft model".into(),
                ))
            }
            (_, Some(_)) => {
                return Err(ModelError::Invalid(
                    "a draft model was given but the speculation settings do not name it".into(),
                ))
            }
            (_, None) => None,
        };
        let mut cache = KvCache::new(cfg.clone());
        cache.set_prefix_caching(opts.prefix_cache);
        cache.commit_memory();
        let kv_bytes = cfg.bytes() + drafter.as_ref().map_or(0, |d| d.kv_bytes());
        let capacity = cache.capacity();
        tracing::info!(
            blocks = cfg.n_blocks,
            block_size = bs,
            mib = kv_bytes >> 20,
            n_ctx,
            numerics = opts.numerics.name(),
            flash_attention = att.flash_tile.is_some(),
            k_type = att.k_type.name(),
            v_type = att.v_type.name(),
            "KV cache ready"
        );
        let ws =
            Workspace::with_attention(c, opts.batch_tokens, n_ctx, model.threads(), att.flash_tile);
        let shared = Arc::new(Shared {
            metrics: Metrics::default(),
            queued: AtomicUsize::new(0),
            accepting: AtomicBool::new(true),
        });
        let (tx, rx) = channel();
        let vocab = c.vocab;
        let draft_cost = drafter.as_ref().map_or(0.0, |d| {
            d.bytes_per_token() as f64 / model.weights().bytes_per_token().max(1) as f64
        });
        let mut core = Core {
            model,
            draft_cost,
            drafter,
            cache,
            ws,
            batch: Batch::with_capacity(opts.batch_tokens),
            opts,
            n_ctx,
            shared: shared.clone(),
            waiting: Vec::new(),
            running: Vec::new(),
            next_id: 0,
            next_admit: 0,
        };
        core.batch.numerics = opts.numerics;
        let thread = std::thread::Builder::new()
            .name("torchless-engine".into())
            .spawn(move || core.run(rx))
            .map_err(|e| ModelError::Invalid(format!("cannot start the engine thread: {e}")))?;
        Ok(Engine {
            tx: Some(tx),
            shared,
            thread: Some(thread),
            n_ctx,
            capacity,
            vocab,
            max_queue: opts.max_queue,
            opts,
            kv_bytes,
        })
    }

    /// Positions one sequence may hold.
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Entries of the model's vocabulary.
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    pub fn options(&self) -> &EngineOptions {
        &self.opts
    }

    /// Bytes of the KV pools (the model's, and the draft model's where it has one).
    pub fn kv_bytes(&self) -> usize {
        self.kv_bytes
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Checks a request, caps its token limit by the context, and queues it.
    pub fn submit(&self, mut req: Request) -> Result<(), SubmitError> {
        let reject = |e| {
            self.shared.metrics.requests_rejected.fetch_add(1, Relaxed);
            Err(e)
        };
        if !self.shared.accepting.load(Relaxed) {
            return reject(SubmitError::ShuttingDown);
        }
        let n = req.prompt.len();
        if n == 0 {
            return reject(SubmitError::EmptyPrompt);
        }
        if let Some(&id) = req.prompt.iter().find(|&&t| t as usize >= self.vocab) {
            let vocab = self.vocab;
            return reject(SubmitError::InvalidToken { id, vocab });
        }
        let max = self.n_ctx.min(self.capacity);
        if n >= max {
            return reject(SubmitError::TooLong { tokens: n, max });
        }
        if req.params.max_tokens == 0 {
            return reject(SubmitError::NoTokens);
        }
        req.params.max_tokens = req.params.max_tokens.min(max - n);
        if self.shared.queued.load(Relaxed) >= self.max_queue {
            return reject(SubmitError::QueueFull {
                max: self.max_queue,
            });
        }
        self.shared.queued.fetch_add(1, Relaxed);
        let sent = self.tx.as_ref().map(|tx| tx.send(req).is_ok());
        if sent != Some(true) {
            self.shared.queued.fetch_sub(1, Relaxed);
            return reject(SubmitError::ShuttingDown);
        }
        Ok(())
    }

    /// Refuses new requests from now on (those taken run to their end).
    pub fn stop_accepting(&self) {
        self.shared.accepting.store(false, Relaxed);
    }

    /// Whether the engine runs or holds any request.
    pub fn is_busy(&self) -> bool {
        let m = &self.shared.metrics;
        self.shared.queued.load(Relaxed) > 0 || m.running.load(Relaxed) > 0
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Closing the channel ends the thread once the requests it holds are done.
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A request inside the engine.
struct Seq {
    id: u64,
    name: String,
    tokens: Vec<u32>,
    prompt_len: usize,
    computed: usize,
    req: RequestParts,
    sampler: Sampler,
    filter: StopFilter,
    arrival: u64,
    admitted: u64,
    cached_tokens: usize,
    preemptions: usize,
    t_arrival: Instant,
    t_last: Option<Instant>,
    ttft: f64,
    /// Speculation state, where the engine speculates.
    spec: Option<SeqSpec>,
    /// Tokens drafted after the pending one in the current step.
    n_draft: usize,
}

struct RequestParts {
    params: crate::request::Params,
    events: tokio::sync::mpsc::UnboundedSender<Event>,
    panic_in_output: bool,
}

impl Seq {
    fn cache_id(&self) -> SeqId {
        self.id as SeqId
    }

    fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    fn worst(&self) -> usize {
        self.prompt_len + self.req.params.max_tokens
    }

    fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_len,
            completion_tokens: self.generated(),
            cached_tokens: self.cached_tokens,
            preemptions: self.preemptions,
            ttft: self.ttft,
            total: self.t_arrival.elapsed().as_secs_f64(),
        }
    }
}

/// The engine thread's state.
struct Core {
    model: Arc<Model>,
    /// The draft model, where the engine speculates with one.
    drafter: Option<DraftRunner>,
    /// What a draft token costs, in passes of the model (bytes of weights read per token).
    draft_cost: f64,
    cache: KvCache,
    ws: Workspace,
    batch: Batch,
    opts: EngineOptions,
    n_ctx: usize,
    shared: Arc<Shared>,
    waiting: Vec<Seq>,
    running: Vec<Seq>,
    next_id: u64,
    next_admit: u64,
}

impl Core {
    fn run(&mut self, rx: Receiver<Request>) {
        let mut open = true;
        loop {
            if self.waiting.is_empty() && self.running.is_empty() {
                if !open {
                    break;
                }
                match rx.recv() {
                    Ok(r) => self.accept(r),
                    Err(_) => break,
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(r) => self.accept(r),
                    Err(std::sync::mpsc::TryRecvError::Empty) => break,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            self.drop_cancelled();
            self.step();
            self.update_gauges();
        }
    }

    fn accept(&mut self, r: Request) {
        let vocab = self.model.config().vocab;
        let id = self.next_id;
        self.next_id += 1;
        let tok = self.model.tokenizer();
        let mut sampler = Sampler::with_texts(r.params.sampler.clone(), vocab, |t| {
            tok.map(|k| String::from_utf8_lossy(k.token_bytes(t, false)))
        });
        // Penalties and DRY see the prompt too (as `generate` feeds them).
        r.prompt.iter().for_each(|&t| sampler.accept(t));
        let draft_vocab = self.drafter.as_ref().map_or(vocab, |d| d.vocab());

        let spec = self
            .opts
            .speculation
            .map(|c| SeqSpec::new(c, &r.params.sampler, draft_vocab, self.draft_cost));
        let seq = Seq {
            spec,
            n_draft: 0,
            id,
            name: r.name,
            prompt_len: r.prompt.len(),
            computed: 0,
            sampler,
            filter: StopFilter::new(&r.params.stop),
            tokens: {
                let mut t = Vec::with_capacity(r.prompt.len() + r.params.max_tokens);
                t.extend_from_slice(&r.prompt);
                t
            },
            req: RequestParts {
                params: r.params,
                events: r.events,
                panic_in_output: r.panic_in_output,
            },
            arrival: id,
            admitted: 0,
            cached_tokens: 0,
            preemptions: 0,
            t_arrival: Instant::now(),
            t_last: None,
            ttft: 0.0,
        };
        self.waiting.push(seq);
    }

    /// Requests whose client went away: dropped, blocks given back.
    fn drop_cancelled(&mut self) {
        let m = &self.shared.metrics;
        let gone = |s: &Seq| s.req.events.is_closed();
        for s in self.waiting.iter().filter(|s| gone(s)) {
            m.requests_cancelled.fetch_add(1, Relaxed);
            self.shared.queued.fetch_sub(1, Relaxed);
            tracing::info!(request = %s.name, "cancelled while waiting");
        }
        self.waiting.retain(|s| !gone(s));
        let cache = &mut self.cache;
        let drafter = &mut self.drafter;
        self.running.retain_mut(|s| {
            if gone(s) {
                cache.remove(s.cache_id());
                if let Some(d) = drafter.as_mut() {
                    d.forget(s.cache_id(), s.spec.as_mut());
                }
                m.requests_cancelled.fetch_add(1, Relaxed);
                tracing::info!(request = %s.name, generated = s.generated(), "cancelled");
                false
            } else {
                true
            }
        });
    }

    fn update_gauges(&self) {
        let m = &self.shared.metrics;
        m.queue_depth.store(self.waiting.len() as u64, Relaxed);
        m.running.store(self.running.len() as u64, Relaxed);
        m.kv_blocks_used
            .store(self.cache.used_blocks() as u64, Relaxed);
        m.kv_blocks_free
            .store(self.cache.free_blocks() as u64, Relaxed);
        m.kv_blocks_cached
            .store(self.cache.cached_blocks() as u64, Relaxed);
    }

    fn step(&mut self) {
        let running: Vec<Running> = self
            .running
            .iter()
            .map(|s| Running {
                id: s.id,
                priority: s.req.params.priority,
                admitted: s.admitted,
                computed: s.computed,
                total: s.tokens.len(),
                worst: s.worst(),
                frees: self.cache.exclusive_blocks(s.cache_id()),
            })
            .collect();
        let waiting: Vec<Waiting> = self
            .waiting
            .iter()
            .map(|s| Waiting {
                id: s.id,
                priority: s.req.params.priority,
                arrival: s.arrival,
                tokens: s.tokens.len(),
                cached: self.cache.cached_prefix_len(&s.tokens),
                worst: s.worst(),
            })
            .collect();
        let limits = Limits {
            max_running: self.opts.max_running,
            batch_tokens: self.opts.batch_tokens,
            chunk_tokens: self.opts.chunk_tokens,
            block_size: self.cache.config().block_size,
            free_blocks: self.cache.free_blocks(),
            preemption: self.opts.preemption,
        };
        let plan = schedule(&running, &waiting, &limits);
        let shared = self.shared.clone();
        let m = &shared.metrics;
        for id in &plan.preempt {
            if let Some(i) = self.running.iter().position(|s| s.id == *id) {
                let mut s = self.running.swap_remove(i);
                self.cache.remove(s.cache_id());
                if let Some(d) = self.drafter.as_mut() {
                    d.forget(s.cache_id(), s.spec.as_mut());
                }
                s.computed = 0;
                s.preemptions += 1;
                m.preemptions.fetch_add(1, Relaxed);
                self.shared.queued.fetch_add(1, Relaxed);
                tracing::debug!(request = %s.name, "preempted");
                self.waiting.push(s);
            }
        }
        for id in &plan.admit {
            if let Some(i) = self.waiting.iter().position(|s| s.id == *id) {
                let mut s = self.waiting.remove(i);
                self.shared.queued.fetch_sub(1, Relaxed);
                let held = self
                    .cache
                    .attach_prefix(s.cache_id(), &s.tokens)
                    .unwrap_or(0);
                s.computed = held;
                if s.preemptions == 0 {
                    s.cached_tokens = held;
                    m.prompt_tokens.fetch_add(s.prompt_len as u64, Relaxed);
                }
                m.prefix_hit_tokens.fetch_add(held as u64, Relaxed);
                s.admitted = self.next_admit;
                self.next_admit += 1;
                self.running.push(s);
            }
        }
        // Drafts for decoding sequences that speculate, within the step's token budget and
        // only where the cache has room for all of them.
        let planned: usize = plan.work.iter().map(|w| w.1).sum();
        let mut budget = self.opts.batch_tokens.saturating_sub(planned);
        let t_draft = Instant::now();
        let mut drafted_any = false;
        let mut model_wants: Vec<(u64, usize)> = Vec::new();
        let n_decoding = (plan.work.iter())
            .filter(|&&(id, k)| {
                k >= 1
                    && (self.running.iter()).any(|s| s.id == id && s.computed + 1 == s.tokens.len())
            })
            .count();
        for &(id, k) in &plan.work {
            let Some(s) = self.running.iter_mut().find(|s| s.id == id) else {
                continue;
            };
            s.n_draft = 0;
            let decoding = k >= 1 && s.computed + 1 == s.tokens.len();
            let left = (s.req.params.max_tokens.saturating_sub(s.generated() + 1))
                .min(self.n_ctx.saturating_sub(s.tokens.len()))
                .min(budget);
            if let (true, Some(sp)) = (decoding, s.spec.as_mut()) {
                s.n_draft = sp.propose(&s.tokens, left);
                if sp.uses_model() && self.drafter.is_some() {
                    let want = sp.want(left, n_decoding);
                    if want > 0 {
                        model_wants.push((id, want));
                    }
                    budget -= want;
                } else {
                    budget -= s.n_draft;
                }
                drafted_any |= s.n_draft > 0;
            }
        }
        if let (Some(runner), false) = (self.drafter.as_mut(), model_wants.is_empty()) {
            let mut jobs: Vec<Job> = Vec::with_capacity(model_wants.len());
            for s in self.running.iter_mut() {
                let Some(&(_, want)) = model_wants.iter().find(|w| w.0 == s.id) else {
                    continue;
                };
                if let Some(spec) = s.spec.as_mut() {
                    jobs.push(Job {
                        id: s.id as SeqId,
                        tokens: &s.tokens,
                        want,
                        spec,
                    });
                }
            }
            runner.draft(&mut jobs);
            drop(jobs);
            for s in self.running.iter_mut() {
                if let (true, Some(sp)) = (model_wants.iter().any(|w| w.0 == s.id), &s.spec) {
                    s.n_draft = sp.drafted().len();
                    drafted_any |= s.n_draft > 0;
                }
            }
        }
        if drafted_any {
            m.spec_draft_us
                .fetch_add(t_draft.elapsed().as_micros() as u64, Relaxed);
            let wants: Vec<(SeqId, usize)> = (plan.work.iter())
                .filter_map(|&(id, k)| {
                    let s = self.running.iter().find(|s| s.id == id)?;
                    let k = k.min(s.tokens.len() - s.computed);
                    Some((s.cache_id(), s.computed + k + s.n_draft))
                })
                .collect();
            if self.cache.check_room(wants.iter().copied()).is_err() {
                for s in &mut self.running {
                    s.n_draft = 0;
                    if let Some(sp) = s.spec.as_mut() {
                        sp.drop_draft(s.tokens.len());
                    }
                }
            }
        }
        // The batch: each sequence's next tokens, logits where its known tokens end, and
        // after a pending token its draft, each with logits.
        self.batch.clear();
        let mut work: Vec<(usize, usize)> = Vec::with_capacity(plan.work.len());
        for &(id, k) in &plan.work {
            let Some(i) = self.running.iter().position(|s| s.id == id) else {
                continue;
            };
            let s = &self.running[i];
            let k = k.min(s.tokens.len() - s.computed);
            if k == 0 {
                continue;
            }
            for p in s.computed..s.computed + k {
                let last = p + 1 == s.tokens.len();
                self.batch.push(s.tokens[p], p, s.cache_id(), last);
            }
            if let (n, Some(sp)) = (s.n_draft, s.spec.as_ref()) {
                for (j, &d) in sp.drafted().iter().take(n).enumerate() {
                    self.batch.push(d, s.tokens.len() + j, s.cache_id(), true);
                }
            }
            work.push((i, k));
        }
        if self.batch.is_empty() {
            if !self.running.is_empty() || !self.waiting.is_empty() {
                // Nothing could run (a full pool without preemption): wait for a change.
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            return;
        }
        let model = self.model.clone();
        let t_step = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| {
            model.forward(&self.batch, &mut self.cache, &mut self.ws)
        }));
        m.step_us
            .fetch_add(t_step.elapsed().as_micros() as u64, Relaxed);
        m.steps.fetch_add(1, Relaxed);
        let failure = match result {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("internal error in the forward pass".to_string()),
        };
        if let Some(msg) = failure {
            tracing::error!(error = %msg, "forward pass failed; its requests fail");
            let mut ids: Vec<u64> = work.iter().map(|&(i, _)| self.running[i].id).collect();
            ids.sort_unstable();
            self.finish_where(
                |s| ids.binary_search(&s.id).is_ok(),
                |s| {
                    let _ = s.req.events.send(Event::Error(msg.clone()));
                },
            );
            m.requests_server_error
                .fetch_add(work.len() as u64, Relaxed);
            return;
        }
        let vocab = self.model.config().vocab;
        let mut row = 0;
        let mut done: Vec<u64> = Vec::new();
        for &(i, k) in &work {
            let s = &mut self.running[i];
            if s.n_draft > 0 {
                let rows = 1 + s.n_draft;
                let logits = &self.ws.logits()[row * vocab..(row + rows) * vocab];
                row += rows;
                let tokenizer = self.model.tokenizer();
                let n_ctx = self.n_ctx;
                let cache = &mut self.cache;
                let out = catch_unwind(AssertUnwindSafe(|| {
                    verify_drafts(s, logits, vocab, cache, tokenizer, n_ctx, m)
                }));
                if output_done(s, out.map_err(|_| ()), m) {
                    done.push(s.id);
                }
                continue;
            }
            s.computed += k;
            self.cache.commit(s.cache_id(), &s.tokens);
            if s.computed != s.tokens.len() {
                continue;
            }
            let logits = &self.ws.logits()[row * vocab..(row + 1) * vocab];
            row += 1;
            let tokenizer = self.model.tokenizer();
            let n_ctx = self.n_ctx;
            let out = catch_unwind(AssertUnwindSafe(|| emit(s, logits, tokenizer, n_ctx, m)));
            if output_done(s, out.map_err(|_| ()), m) {
                done.push(s.id);
            }
        }
        done.sort_unstable();
        self.finish_where(|s| done.binary_search(&s.id).is_ok(), |_| {});
    }

    /// Removes the running sequences `pick` chooses, after `last(seq)`, giving back blocks.
    fn finish_where(&mut self, pick: impl Fn(&Seq) -> bool, last: impl Fn(&Seq)) {
        let cache = &mut self.cache;
        let drafter = &mut self.drafter;
        self.running.retain_mut(|s| {
            if pick(s) {
                last(s);
                cache.remove(s.cache_id());
                if let Some(d) = drafter.as_mut() {
                    d.forget(s.cache_id(), s.spec.as_mut());
                }
                false
            } else {
                true
            }
        });
    }
}

/// Whether `s` is finished after its output path returned `out` (`Err`: it panicked, which
/// fails this request alone, with an error event).
fn output_done(s: &mut Seq, out: Result<bool, ()>, m: &Metrics) -> bool {
    match out {
        Ok(finished) => finished,
        Err(()) => {
            let _ = s.req.events.send(Event::Error(format!(
                "internal error while producing the output of request {}",
                s.name
            )));
            m.requests_server_error.fetch_add(1, Relaxed);
            s.req.events = closed_sender();
            true
        }
    }
}

/// A sender whose receiver is gone (a failed request's events go nowhere).
fn closed_sender() -> tokio::sync::mpsc::UnboundedSender<Event> {
    tokio::sync::mpsc::unbounded_channel().0
}

/// Samples `s`'s next token from `logits`, sends what it releases, and says whether the
/// request is finished (then its `Done` was sent).
fn emit(
    s: &mut Seq,
    logits: &[f32],
    tokenizer: Option<&torchless_tokenizer::Tokenizer>,
    n_ctx: usize,
    m: &Metrics,
) -> bool {
    let tok = s.sampler.sample(logits);
    emit_token(s, tok, logits, tokenizer, n_ctx, m)
}

/// Verifies the draft of `s` from its rows of the step (`logits`: the pending token's row,
/// then one per drafted token), emits the tokens that stand and the one after them, and cuts
/// the cache back to what those tokens computed. Says whether the request is finished.
fn verify_drafts(
    s: &mut Seq,
    logits: &[f32],
    vocab: usize,
    cache: &mut KvCache,
    tokenizer: Option<&torchless_tokenizer::Tokenizer>,
    n_ctx: usize,
    m: &Metrics,
) -> bool {
    let n = s.n_draft;
    s.n_draft = 0;
    // The cache now holds the pending token and the whole draft.
    s.computed = s.tokens.len() + n;
    m.spec_verifications.fetch_add(1, Relaxed);
    m.spec_drafted.fetch_add(n as u64, Relaxed);
    let mut finished = false;
    for j in 0..=n {
        let row = &logits[j * vocab..(j + 1) * vocab];
        let Some(sp) = s.spec.as_mut() else { break };
        let (tok, stands) = sp.choose(&mut s.sampler, row, j);
        if j < n && (!stands || j + 1 == n) {
            sp.record(j + usize::from(stands));
        }
        m.spec_accepted.fetch_add(stands as u64, Relaxed);
        m.spec_emitted.fetch_add(1, Relaxed);
        finished = emit_token(s, tok, row, tokenizer, n_ctx, m);
        if finished || !stands {
            break;
        }
    }
    // Positions computed from tokens that stand: all but the last token emitted. A draft
    // model's cache holds the text up to the drafts that stood.
    let keep = s.tokens.len() - 1;
    if let Some(sp) = s.spec.as_mut() {
        sp.rewind(keep);
    }
    s.computed = cache.truncate(s.cache_id(), keep);
    cache.commit(s.cache_id(), &s.tokens);
    finished
}

/// Emits `tok`, chosen from `logits`, for `s`: accepts it into the sampler, sends what it
/// releases, and says whether the request is finished (then its `Done` was sent).
fn emit_token(
    s: &mut Seq,
    tok: u32,
    logits: &[f32],
    tokenizer: Option<&torchless_tokenizer::Tokenizer>,
    n_ctx: usize,
    m: &Metrics,
) -> bool {
    if s.req.panic_in_output {
        panic!("test hook: request {} panics in its output path", s.name);
    }
    s.sampler.accept(tok);
    let lp = s.req.params.logprobs.map(|top| logprobs(logits, tok, top));
    s.tokens.push(tok);
    m.generated_tokens.fetch_add(1, Relaxed);
    let now = Instant::now();
    match s.t_last {
        None => {
            let t = now.duration_since(s.t_arrival).as_secs_f64();
            m.ttft.observe(t);
            s.ttft = t;
        }
        Some(prev) => m.itl.observe(now.duration_since(prev).as_secs_f64()),
    }
    s.t_last = Some(now);
    let eog = !s.req.params.ignore_eos && tokenizer.is_some_and(|t| t.is_eog(tok));
    let (mut text, mut finish) = if eog {
        (s.filter.finish(), Some(Finish::Stop))
    } else {
        let bytes = tokenizer.map_or(&[][..], |t| t.token_bytes(tok, false));
        let r = s.filter.push(bytes);
        (r.text, r.stopped.then_some(Finish::Stop))
    };
    if finish.is_none() && (s.generated() >= s.req.params.max_tokens || s.tokens.len() >= n_ctx) {
        text.push_str(&s.filter.finish());
        finish = Some(Finish::Length);
    }
    // The end-of-generation token itself is not part of the answer (only what it released).
    if !eog || !text.is_empty() {
        let _ = s.req.events.send(Event::Token {
            id: tok,
            text,
            logprobs: lp.filter(|_| !eog),
        });
    }
    let Some(finish) = finish else {
        return false;
    };
    let usage = s.usage();
    let _ = s.req.events.send(Event::Done { finish, usage });
    m.requests_ok.fetch_add(1, Relaxed);
    tracing::info!(
        request = %s.name,
        prompt = s.prompt_len,
        cached = s.cached_tokens,
        generated = s.generated(),
        preemptions = s.preemptions,
        secs = format!("{:.3}", usage.total),
        finish = finish.as_str(),
        "request done"
    );
    true
}
