//! torchless-gguf: the GGUF model file format (versions 2 and 3), read and written in-house.
//!
//! - [`parse`]: the header parser, hardened against truncated and hostile files;
//! - [`value`]: metadata values and typed accessors;
//! - [`file`]: an opened file handing out zero-copy tensor views (memory-mapped or read);
//! - [`write`]: a writer, for tests and conversion tools.
//!
//! This crate knows the file format only: not architectures, tokenizers or compute.

pub mod file;
pub mod parse;
pub mod value;
pub mod write;

pub use file::{GgufFile, LoadMode};
pub use parse::{parse_header, GgufError, Header, TensorInfo};
pub use value::{Array, Metadata, MetadataError, StringArray, Value, ValueType};
pub use write::GgufWriter;
