//! `--quantize`: a [`WeightSource`] that hands out another source's float matrices quantized
//! (Q8_0, Q4_0 or Q4_K, with the reference weight quantizers llama.cpp's `llama-quantize`
//! uses), so that a HuggingFace checkpoint runs on the quantized kernels. Vectors (norms,
//! biases), already-quantized tensors and matrices whose rows are not whole blocks pass
//! through unchanged.

use std::sync::Arc;

use torchless_kernels::quant::weights::quantize_weights;
use torchless_kernels::{GgmlType, Storage, Tensor};

use super::{Role, WeightSource};

/// The types `--quantize` takes.
pub const TYPES: [GgmlType; 3] = [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_K];

/// `inner`'s matrices quantized to `ty`.
pub struct Quantizing<S> {
    pub inner: S,
    pub ty: GgmlType,
}

fn is_matrix(role: Role) -> bool {
    matches!(
        role,
        Role::TokenEmbd
            | Role::Output
            | Role::Q(_)
            | Role::K(_)
            | Role::V(_)
            | Role::Qkv(_)
            | Role::O(_)
            | Role::Gate(_)
            | Role::Up(_)
            | Role::GateUp(_)
            | Role::Down(_)
    )
}

impl<S: WeightSource> WeightSource for Quantizing<S> {
    fn tensor(&self, role: Role) -> Option<Tensor> {
        let t = self.inner.tensor(role)?;
        let float = matches!(t.ty(), GgmlType::F32 | GgmlType::F16 | GgmlType::BF16);
        if !is_matrix(role) || !float || !t.cols().is_multiple_of(self.ty.block_elems()) {
            return Some(t);
        }
        let values = t.to_f32_vec()?;
        let mut bytes = vec![0u8; self.ty.row_bytes(t.cols())? * t.rows()];
        if !quantize_weights(self.ty, &values, &mut bytes) {
            return Some(t);
        }
        Tensor::new(self.ty, t.dims(), Arc::new(Storage::from_bytes(&bytes)), 0).ok()
    }

    fn name(&self, role: Role) -> String {
        self.inner.name(role)
    }
}
