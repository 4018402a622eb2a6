//! torchless-model: language models on the torchless kernels.
//!
//! - [`arch`]: the registry of architectures and their small differences;
//! - [`parts`]: the parts a layer is made of and the per-layer plan;
//! - [`config`], [`hf_config`]: hyper-parameters and plan from GGUF metadata or config.json;
//! - [`checkpoint`]: a model's files opened: format, config, tokenizer, tensors;
//! - [`convert`]: a checkpoint written as GGUF, a HuggingFace directory or a `.bin`;
//! - [`source`]: tensors by role from GGUF or safetensors files (the one table of names);
//! - [`weights`]: the tensors of every part, shapes checked;
//! - [`kv_cache`]: the paged KV cache (block pool, per-sequence block tables);
//! - [`batch`], [`workspace`], [`attention`], [`forward`]: the batched forward pass;
//! - [`sampler`], [`session`], [`generate`], [`perplexity`]: running a model;
//! - [`speculative`]: drafting several tokens and verifying them in one pass.
//!
//! This crate knows nothing of the command line, terminals or HTTP.

pub mod arch;
pub mod attention;
pub mod attention_options;
pub mod batch;
pub mod checkpoint;
pub mod config;
pub mod convert;
pub mod error;
pub mod flash_attention;
pub mod forward;
pub mod generate;
pub mod hf_config;
pub mod kv_blocks;
pub mod kv_cache;
pub mod model;
pub mod parts;
pub mod perplexity;
pub mod sampler;
pub mod session;
pub mod source;
pub mod speculative;
pub mod weights;
pub mod workspace;

pub use arch::Arch;
pub use batch::Batch;
pub use checkpoint::{Checkpoint, Format};
pub use config::ModelConfig;
pub use error::ModelError;
pub use generate::{generate, GenerateOptions, Generation, StopReason, Timings};
pub use kv_cache::{KvCache, KvConfig, KvType, SeqId};
pub use model::{physical_cores, Dump, LoadOptions, Model, Precision, SharedPool};
pub use sampler::{Sampler, SamplerConfig};
pub use session::{ModelRef, Session, SessionOptions};
pub use speculative::{SpecOptions, SpecStats};
pub use workspace::Workspace;
