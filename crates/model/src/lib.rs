//! torchless-model: language models on the torchless kernels.
//!
//! - [`arch`]: the registry of architectures and their small differences;
//! - [`config`]: hyper-parameters from GGUF metadata;
//! - [`weights`]: tensors by role, shapes checked (the one place GGUF tensor names appear);
//! - [`kv_cache`]: the paged KV cache (block pool, per-sequence block tables);
//! - [`batch`], [`workspace`], [`attention`], [`forward`]: the batched forward pass;
//! - [`sampler`], [`session`], [`generate`], [`perplexity`]: running a model.
//!
//! This crate knows nothing of the command line, terminals or HTTP.

pub mod arch;
pub mod attention;
pub mod batch;
pub mod config;
pub mod error;
pub mod forward;
pub mod generate;
pub mod kv_cache;
pub mod model;
pub mod perplexity;
pub mod sampler;
pub mod session;
pub mod weights;
pub mod workspace;

pub use arch::Arch;
pub use batch::Batch;
pub use config::ModelConfig;
pub use error::ModelError;
pub use generate::{generate, GenerateOptions, Generation, StopReason, Timings};
pub use kv_cache::{KvCache, KvConfig, KvType, SeqId};
pub use model::{physical_cores, Dump, LoadOptions, Model, Precision};
pub use sampler::{Sampler, SamplerConfig};
pub use session::{Session, SessionOptions};
pub use workspace::Workspace;
