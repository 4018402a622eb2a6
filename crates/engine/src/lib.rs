//! torchless-engine: serving many requests at once on one model.
//!
//! - [`scheduler`]: the pure rule of which sequences run each step (decode first, chunked
//!   prefill, admission by blocks, priorities, preemption);
//! - [`engine`]: the engine thread — one batched forward pass per step over the paged KV
//!   cache with prefix caching, in the batch-invariant numerics by default — and its handle;
//! - [`request`]: requests and the events sent back;
//! - [`output`]: a request's text (stop texts, whole characters) and log-probabilities;
//! - [`metrics`]: counters and histograms, and their Prometheus text;
//! - [`speculation`]: drafts per sequence and their verification; [`draft_runner`]: the draft
//!   model's own cache and batched passes.
//!
//! Nothing here knows HTTP or the command line.

pub(crate) mod draft_runner;
pub mod engine;
pub mod metrics;
pub mod output;
pub mod request;
pub mod scheduler;
pub mod speculation;

pub use engine::{Engine, EngineOptions, SubmitError};
pub use metrics::Metrics;
pub use request::{Event, Finish, Logprobs, Params, Request, Usage};
pub use speculation::{Drafter, SpecConfig};
