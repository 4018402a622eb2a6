//! torchless-kernels: tensor formats and the compute kernels of the torchless engine.
//!
//! - [`quant`]: the one table of element types (GGML numbering), block layouts, dequantization,
//!   activation quantization and the scalar dot products that serve as the test oracle;
//! - [`isa`]: instruction-set tags and CPU checks;
//! - [`dispatch`]: run-time choice of SIMD implementations;
//! - [`matmul`]: weight-matrix × activation-batch products on the thread pool;
//! - [`ops`]: norms, rotary embeddings, activations, softmax;
//! - [`order`]: the numerics policy (which arithmetic order each product follows);
//! - [`pool`]: the persistent worker pool;
//! - [`tensor`]: typed views of weight bytes (memory-mapped or on the heap);
//! - [`tile`]: the work items kernels receive (matrix tiles, shared output buffers).
//!
//! This crate knows nothing of model files, architectures, tokenizers or the CLI.

// Lane and block loops index several arrays by the same counter; ranges read clearest there.
#![allow(clippy::needless_range_loop)]

pub mod attention;
pub mod bandwidth;
pub mod dispatch;
pub mod flash;
pub mod flash_tiles;
pub mod isa;
pub mod lanes;
pub mod matmul;
pub mod ops;
pub mod order;
pub mod paged;
pub mod pool;
pub mod quant;
pub mod simd;
pub mod tensor;
pub mod tile;

pub use dispatch::Kernels;
pub use isa::Isa;
pub use matmul::{matmul, matmul_f32, matmul_many, Activations, MatmulError};
pub use order::Numerics;
pub use pool::ThreadPool;
pub use quant::GgmlType;
pub use tensor::{Layout, Storage, Tensor, TensorError};
