//! Products of a weight matrix with a batch of activation rows: `out[t][r] = W[r] · x[t]`.
//!
//! Two numeric paths. [`matmul`] is llama.cpp's: the activations are first encoded in the
//! weight type's activation format (Q8_0, Q8_1, Q8_K, F16 …) and the dot products run on those
//! encodings. [`matmul_f32`] keeps activations in f32 and dequantizes the weights block by block
//! (the `--precise` path and a test oracle). Rows are split over the thread pool.
//!
//! Nothing here allocates once the [`Activations`] buffer has grown to its working size.

use crate::dispatch::Kernels;
use crate::pool::ThreadPool;
use crate::quant::GgmlType;
use crate::tensor::Tensor;

/// Why a product could not be computed (these are caller bugs or unsupported types).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MatmulError {
    #[error("tensor type {0} has no kernels")]
    Unsupported(GgmlType),
    #[error("activation rows of {act} elements do not match weight rows of {weight}")]
    Shape { act: usize, weight: usize },
    #[error("activations are encoded as {have} but {ty} weights need {need}")]
    Encoding {
        ty: GgmlType,
        have: GgmlType,
        need: GgmlType,
    },
    #[error("output buffer holds {have} values, {need} needed")]
    Output { have: usize, need: usize },
    #[error("{cols} is not a whole number of {ty} blocks")]
    Blocks { ty: GgmlType, cols: usize },
}

/// A batch of activation rows encoded for one weight type's dot products.
pub struct Activations {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    data: Vec<u8>,
}

impl Default for Activations {
    fn default() -> Self {
        Activations::new()
    }
}

impl Activations {
    pub fn new() -> Activations {
        Activations {
            ty: GgmlType::F32,
            rows: 0,
            cols: 0,
            row_bytes: 0,
            data: Vec::new(),
        }
    }

    /// Grows the buffer so that `rows` rows of `cols` values fit in any encoding.
    pub fn reserve(&mut self, rows: usize, cols: usize) {
        let need = rows * cols * 4;
        if self.data.len() < need {
            self.data.resize(need, 0);
        }
    }

    pub fn ty(&self) -> GgmlType {
        self.ty
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Encodes `rows` rows of `cols` f32 values from `x` as `ty`.
    pub fn encode(
        &mut self,
        kernels: &Kernels,
        ty: GgmlType,
        x: &[f32],
        rows: usize,
        cols: usize,
    ) -> Result<(), MatmulError> {
        let f = kernels.quantize(ty).ok_or(MatmulError::Unsupported(ty))?;
        let row_bytes = ty.row_bytes(cols).ok_or(MatmulError::Blocks { ty, cols })?;
        if x.len() < rows * cols {
            return Err(MatmulError::Shape {
                act: x.len(),
                weight: rows * cols,
            });
        }
        self.reserve(rows, cols);
        for (src, dst) in x
            .chunks_exact(cols)
            .zip(self.data.chunks_exact_mut(row_bytes))
            .take(rows)
        {
            f(src, dst);
        }
        self.ty = ty;
        self.rows = rows;
        self.cols = cols;
        self.row_bytes = row_bytes;
        Ok(())
    }

    pub fn row(&self, t: usize) -> &[u8] {
        &self.data[t * self.row_bytes..(t + 1) * self.row_bytes]
    }
}

/// A raw view of an output buffer that threads write disjoint elements of.
#[derive(Clone, Copy)]
pub struct SharedOut {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: `SharedOut` is only used to let pool threads write disjoint indices of one buffer
// that outlives the pool job.
unsafe impl Send for SharedOut {}
// SAFETY: as above.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    pub fn new(out: &mut [f32]) -> SharedOut {
        SharedOut {
            ptr: out.as_mut_ptr(),
            len: out.len(),
        }
    }

    /// Writes `v` at `i`.
    ///
    /// # Safety
    /// No other thread may access index `i` during the job, and the buffer must outlive it.
    #[inline(always)]
    pub unsafe fn write(&self, i: usize, v: f32) {
        debug_assert!(i < self.len);
        // SAFETY: the caller guarantees exclusive access to index `i`, in bounds.
        unsafe { *self.ptr.add(i) = v };
    }

    /// The sub-slice `start..start + len`, clamped to the buffer.
    ///
    /// # Safety
    /// No other thread may access these elements while the slice lives, and the buffer must
    /// outlive it.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice_mut(&self, start: usize, len: usize) -> &mut [f32] {
        let start = start.min(self.len);
        let len = len.min(self.len - start);
        // SAFETY: in bounds by the clamping above; exclusivity is the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) }
    }
}

/// Rows per chunk: about eight chunks per thread, at most 64 rows.
fn grain(rows: usize, threads: usize) -> usize {
    rows.div_ceil(threads * 8).clamp(1, 64)
}

/// `out[t * W.rows() + r] = W[r] · x[t]` with the activations encoded as the weight type needs.
pub fn matmul(
    pool: &ThreadPool,
    kernels: &Kernels,
    w: &Tensor,
    x: &Activations,
    out: &mut [f32],
) -> Result<(), MatmulError> {
    let ty = w.ty();
    let need = ty.traits().vec_dot_type;
    if x.ty != need {
        return Err(MatmulError::Encoding {
            ty,
            have: x.ty,
            need,
        });
    }
    if x.cols != w.cols() {
        return Err(MatmulError::Shape {
            act: x.cols,
            weight: w.cols(),
        });
    }
    let (n, cols, tokens) = (w.rows(), w.cols(), x.rows);
    if out.len() < n * tokens {
        return Err(MatmulError::Output {
            have: out.len(),
            need: n * tokens,
        });
    }
    let dot = kernels.vec_dot(ty).ok_or(MatmulError::Unsupported(ty))?;
    let shared = SharedOut::new(out);
    pool.parallel_for(n, grain(n, pool.n_threads()), |_, rows| {
        for r in rows {
            let wr = w.row(r);
            for t in 0..tokens {
                // SAFETY: each row index r is visited by exactly one chunk.
                unsafe { shared.write(t * n + r, dot(cols, wr, x.row(t))) };
            }
        }
    });
    Ok(())
}

/// `out[t * W.rows() + r] = W[r] · x[t]` in f32: weights dequantized block by block, the
/// activations used as they are (`x` holds `tokens` rows of `W.cols()` values).
pub fn matmul_f32(
    pool: &ThreadPool,
    w: &Tensor,
    x: &[f32],
    tokens: usize,
    out: &mut [f32],
) -> Result<(), MatmulError> {
    let ty = w.ty();
    let to_f32 = ty.traits().to_f32.ok_or(MatmulError::Unsupported(ty))?;
    let (n, cols) = (w.rows(), w.cols());
    if x.len() < tokens * cols {
        return Err(MatmulError::Shape {
            act: x.len() / tokens.max(1),
            weight: cols,
        });
    }
    if out.len() < n * tokens {
        return Err(MatmulError::Output {
            have: out.len(),
            need: n * tokens,
        });
    }
    let (be, bb) = (ty.block_elems(), ty.block_bytes());
    // Dequantize up to 256 elements at a time (one K-quant block or several small ones).
    let per = (256 / be).max(1);
    let chunk_elems = per * be;
    let shared = SharedOut::new(out);
    const TT: usize = 8;
    pool.parallel_for(n, grain(n, pool.n_threads()), |_, rows| {
        let mut buf = [0.0f32; 256];
        for r in rows {
            let wr = w.row(r);
            for t0 in (0..tokens).step_by(TT) {
                let tn = (tokens - t0).min(TT);
                let mut acc = [0.0f32; TT];
                let mut e = 0;
                while e < cols {
                    let m = chunk_elems.min(cols - e);
                    to_f32(&wr[e / be * bb..(e + m) / be * bb], &mut buf[..m]);
                    for (k, a) in acc.iter_mut().enumerate().take(tn) {
                        let xs = &x[(t0 + k) * cols + e..(t0 + k) * cols + e + m];
                        *a += buf[..m].iter().zip(xs).map(|(p, q)| p * q).sum::<f32>();
                    }
                    e += m;
                }
                for (k, a) in acc.iter().enumerate().take(tn) {
                    // SAFETY: each row index r is visited by exactly one chunk.
                    unsafe { shared.write((t0 + k) * n + r, *a) };
                }
            }
        }
    });
    Ok(())
}
