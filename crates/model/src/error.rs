//! The errors of loading and running a model. Each names what went wrong and where (the file
//! field, the tensor, the limit) so the CLI can say it in one sentence.

use torchless_gguf::{GgufError, MetadataError};
use torchless_kernels::{GgmlType, MatmulError};
use torchless_tokenizer::TokenizerError;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("{0}")]
    Metadata(#[from] MetadataError),
    #[error("{0}")]
    Tokenizer(#[from] TokenizerError),
    #[error("architecture '{name}' is not supported (supported: {supported}); --arch can force one if the file is compatible")]
    UnsupportedArch { name: String, supported: String },
    #[error("invalid model configuration: {0}")]
    Config(String),
    #[error("tensor '{0}' is missing from the model file")]
    MissingTensor(String),
    #[error("tensor '{name}' has shape {found:?}, expected {expected:?}")]
    TensorShape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tensor '{name}' has type {ty}, which torchless cannot compute with yet")]
    UnsupportedType { name: String, ty: GgmlType },
    #[error("the prompt and generation need {need} positions but the context holds {max}; use a shorter prompt or a larger context (-c)")]
    ContextFull { need: usize, max: usize },
    #[error("token id {id} is outside the vocabulary of {vocab} tokens")]
    InvalidToken { id: u32, vocab: usize },
    #[error("batch of {n} tokens is larger than the workspace's {max}")]
    BatchTooLarge { n: usize, max: usize },
    #[error("internal kernel error: {0}")]
    Kernel(#[from] MatmulError),
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Attention settings that cannot go together or with this model (a flag to change).
    #[error("{0}")]
    Attention(String),
    #[error("speculative decoding: {0}")]
    Speculation(String),
    #[error("{0}")]
    Cache(#[from] crate::kv_cache::CacheError),
}
