//! Weights from a GGUF file: roles under llama.cpp's tensor names.

use torchless_gguf::GgufFile;
use torchless_kernels::Tensor;

use super::{Role, WeightSource};

/// A GGUF file as a [`WeightSource`].
pub struct GgufSource<'a> {
    pub file: &'a GgufFile,
}

impl WeightSource for GgufSource<'_> {
    fn tensor(&self, role: Role) -> Option<Tensor> {
        self.file.tensor(&role.gguf_name())
    }

    fn name(&self, role: Role) -> String {
        role.gguf_name()
    }
}
