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
use std::ops::Range;

use crate::order::{self, Numerics, Order};
use crate::quant::{GgmlType, VecDotFn};
use crate::tensor::{Layout, Tensor};
use crate::tile::{GemmFn, SharedOut, Tile, TileShape};

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
    #[error("{ty} weights in the {layout:?} layout have no kernel on this path")]
    Layout { ty: GgmlType, layout: Layout },
    #[error("the weight, activation or output bytes are shorter than the product names")]
    Bounds,
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

    /// Encodes `rows` rows of `cols` f32 values from `x` as `ty` (rows spread over `pool`).
    pub fn encode(
        &mut self,
        pool: &ThreadPool,
        kernels: &Kernels,
        ty: GgmlType,
        x: &[f32],
        rows: usize,
        cols: usize,
    ) -> Result<(), MatmulError> {
        self.encode_rows(pool, kernels, ty, x, rows, cols, |f, src, dst| f(src, dst))
    }

    /// Encodes `rms_norm(x[t], w, eps)` of `rows` rows of `cols` values as `ty` without writing
    /// the normalized rows anywhere: each row is normalized a chunk at a time into a small
    /// buffer and encoded from there, so the bytes are exactly those of
    /// [`crate::ops::rms_norm`] followed by [`Activations::encode`].
    #[allow(clippy::too_many_arguments)]
    pub fn encode_rms_norm(
        &mut self,
        pool: &ThreadPool,
        kernels: &Kernels,
        ty: GgmlType,
        x: &[f32],
        w: &[f32],
        eps: f32,
        rows: usize,
        cols: usize,
    ) -> Result<(), MatmulError> {
        if w.len() < cols {
            return Err(MatmulError::Shape {
                act: w.len(),
                weight: cols,
            });
        }
        // The largest chunk of at most 256 values that holds whole blocks and divides the row.
        const MAX: usize = 256;
        let block = ty.block_elems().max(1);
        let mut chunk = MAX;
        while chunk > block && (!cols.is_multiple_of(chunk) || !chunk.is_multiple_of(block)) {
            chunk /= 2;
        }
        let chunk_bytes = match ty.row_bytes(chunk) {
            Some(b) if cols.is_multiple_of(chunk) => b,
            _ => return Err(MatmulError::Blocks { ty, cols }),
        };
        self.encode_rows(pool, kernels, ty, x, rows, cols, |f, src, dst| {
            let mut buf = [0.0f32; MAX];
            let scale = crate::ops::rms_scale(src, eps);
            for ((xs, ws), out) in src
                .chunks_exact(chunk)
                .zip(w.chunks_exact(chunk))
                .zip(dst.chunks_exact_mut(chunk_bytes))
            {
                crate::ops::rms_apply(xs, ws, scale, &mut buf[..chunk]);
                f(&buf[..chunk], out);
            }
        })
    }

    /// Checks the shapes, makes room and fills each encoded row with `fill(encoder, x row,
    /// encoded row)`, the rows of a batch spread over the pool.
    #[allow(clippy::too_many_arguments)]
    fn encode_rows(
        &mut self,
        pool: &ThreadPool,
        kernels: &Kernels,
        ty: GgmlType,
        x: &[f32],
        rows: usize,
        cols: usize,
        fill: impl Fn(crate::quant::FromF32Fn, &[f32], &mut [u8]) + Sync,
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
        let data = SharedOut::new(&mut self.data[..rows * row_bytes]);
        let grain = rows.div_ceil(4 * pool.n_threads()).max(4);
        pool.parallel_for(rows, grain, |_, chunk| {
            for t in chunk {
                // SAFETY: each row index is visited by exactly one chunk, so the encoded rows
                // written here are disjoint.
                let dst = unsafe { data.slice_mut(t * row_bytes, row_bytes) };
                fill(f, &x[t * cols..(t + 1) * cols], dst);
            }
        });
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

/// Rows per chunk: about eight chunks per thread, a multiple of 8 (the row group of the
/// fast kernels), or of 16 where the matrix is made of slabs of sixteen rows (the AMX
/// kernels' unit), at most 64 rows.
fn grain(rows: usize, threads: usize) -> usize {
    let unit = if rows.is_multiple_of(16) { 16 } else { 8 };
    (rows.div_ceil(threads * 8).div_ceil(unit) * unit).clamp(unit, 64)
}

/// The reference tile loop: one dot product per (row, token).
pub fn gemm_by_dots(dot: VecDotFn, t: &Tile) {
    for r in t.rows() {
        let w = t.w_row(r);
        for k in 0..t.tokens() {
            t.store(k, r, dot(t.cols(), w, t.x_row(k)));
        }
    }
}

/// `out[t * W.rows() + r] = W[r] · x[t]` with the activations encoded as the weight type needs,
/// each token in the arithmetic order `numerics` chooses.
pub fn matmul(
    pool: &ThreadPool,
    kernels: &Kernels,
    numerics: Numerics,
    w: &Tensor,
    x: &Activations,
    out: &mut [f32],
) -> Result<(), MatmulError> {
    matmul_many(pool, kernels, numerics, x, &mut [(w, out)])
}

/// Most products [`matmul_many`] runs as one job.
const MAX_PRODUCTS: usize = 4;

/// [`matmul`] of several weight matrices with the same activations (Q, K and V; gate and up)
/// as one job for the pool: the pieces of all the matrices are handed out from one counter,
/// so threads meet once instead of once per matrix.
pub fn matmul_many(
    pool: &ThreadPool,
    kernels: &Kernels,
    numerics: Numerics,
    x: &Activations,
    products: &mut [(&Tensor, &mut [f32])],
) -> Result<(), MatmulError> {
    for group in products.chunks_mut(MAX_PRODUCTS) {
        let mut plans: [Option<Plan<'_>>; MAX_PRODUCTS] = Default::default();
        let mut pieces = [0usize; MAX_PRODUCTS];
        for (i, (w, out)) in group.iter_mut().enumerate() {
            let p = Plan::new(kernels, numerics, w, x, out, pool.n_threads())?;
            pieces[i] = p.n.div_ceil(p.grain);
            plans[i] = Some(p);
        }
        let total: usize = pieces.iter().sum();
        pool.parallel_for(total, 1, |_, range| {
            for mut piece in range {
                for (plan, &count) in plans.iter().zip(&pieces) {
                    if piece < count {
                        if let Some(p) = plan {
                            let start = piece * p.grain;
                            p.run(x, start..(start + p.grain).min(p.n));
                        }
                        break;
                    }
                    piece -= count;
                }
            }
        });
    }
    Ok(())
}

/// One matrix of a product: shapes checked, kernels chosen, the size of its pieces.
struct Plan<'a> {
    bytes: &'a [u8],
    w_row_bytes: usize,
    cols: usize,
    n: usize,
    grain: usize,
    /// The tokens of each arithmetic order (see [`crate::order::llama_cpp`]): at most two
    /// runs of consecutive tokens.
    parts: [Option<Part<'a>>; 2],
}

/// The tokens of a product that follow one arithmetic order, and its kernels.
struct Part<'a> {
    /// First token and count.
    first: usize,
    tokens: usize,
    order: Order,
    dot: VecDotFn,
    gemm: Option<GemmFn>,
    /// The outputs of these tokens (`tokens * n` values).
    out: SharedOut<'a>,
}

impl<'a> Plan<'a> {
    fn new(
        kernels: &Kernels,
        numerics: Numerics,
        w: &'a Tensor,
        x: &Activations,
        out: &'a mut [f32],
        threads: usize,
    ) -> Result<Plan<'a>, MatmulError> {
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
        if w.layout() == Layout::Rows8
            && (crate::quant::interleave::gemm_scalar_fn(ty).is_none() || n % 8 != 0)
        {
            return Err(MatmulError::Layout {
                ty,
                layout: w.layout(),
            });
        }
        let mut schedule = order::schedule(numerics, ty, n, cols, tokens);
        if schedule.head == schedule.tail {
            // One arithmetic for every token: one run.
            schedule.split = tokens;
        }
        let (head, tail) = out[..n * tokens].split_at_mut(schedule.split * n);
        let runs = [
            (0, schedule.split, schedule.head, head),
            (schedule.split, tokens - schedule.split, schedule.tail, tail),
        ];
        let mut parts: [Option<Part<'a>>; 2] = [None, None];
        for (i, (first, count, order, slice)) in runs.into_iter().enumerate() {
            if count == 0 {
                continue;
            }
            let dot = kernels.dot(ty, order).ok_or(MatmulError::Unsupported(ty))?;
            // Interleaved weights have only tile kernels: the SIMD one where it implements
            // the order, the scalar reference (which reads the layout) otherwise.
            let gemm = match w.layout() {
                Layout::Rows => kernels.gemm(ty, order),
                Layout::Rows8 => kernels.gemm_rows8(ty, order),
            };
            parts[i] = Some(Part {
                first,
                tokens: count,
                order,
                dot,
                gemm,
                out: SharedOut::new(slice),
            });
        }
        // The float kernels convert a block of activations for each piece of rows: in a
        // batch, larger pieces (four per thread, whole 3-row tiles) spread that over more rows.
        let float = matches!(ty, GgmlType::F16 | GgmlType::BF16 | GgmlType::F32);
        let grain = if schedule.head == Order::Sgemm && float {
            n.div_ceil(4 * threads).div_ceil(24) * 24
        } else {
            grain(n, threads)
        };
        let plan = Plan {
            bytes: w.bytes(),
            w_row_bytes: w.row_bytes(),
            cols,
            n,
            grain: grain.max(1),
            parts,
        };
        // Every piece of rows lies inside the whole product's tile, so checking that one per
        // part proves the tiles of `run`.
        for p in plan.parts.iter().flatten() {
            // SAFETY: the tile is only checked, never used to write.
            let whole = unsafe { plan.tile(p, x, 0..n) };
            whole.ok_or(MatmulError::Bounds)?;
        }
        Ok(plan)
    }

    /// The tile of part `p`'s tokens against rows `rows`.
    ///
    /// # Safety
    /// While the tile lives, no other thread may write its outputs.
    unsafe fn tile<'t>(
        &'t self,
        p: &'t Part<'a>,
        x: &'t Activations,
        rows: Range<usize>,
    ) -> Option<Tile<'t>> {
        let xs = x.data.get(p.first * x.row_bytes..)?;
        let shape = TileShape {
            w_row_bytes: self.w_row_bytes,
            cols: self.cols,
            rows,
            x_row_bytes: x.row_bytes,
            tokens: p.tokens,
            out_stride: self.n,
            order: p.order,
        };
        // SAFETY: passed on from the caller.
        unsafe { Tile::new(self.bytes, xs, &p.out, shape) }
    }

    /// Rows `rows` (inside `0..n`) of this matrix against every activation row.
    fn run(&self, x: &Activations, rows: Range<usize>) {
        for p in self.parts.iter().flatten() {
            // SAFETY: `matmul_many` hands every piece of rows to exactly one thread, so this
            // tile's outputs are written by this call alone.
            let tile = unsafe { self.tile(p, x, rows.clone()) };
            // `Plan::new` checked the whole product's tile, which holds every piece.
            let tile = tile.expect("a piece of a checked product");
            match p.gemm {
                Some(g) => g(&tile),
                None => gemm_by_dots(p.dot, &tile),
            }
        }
    }
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
    if w.layout() != Layout::Rows {
        return Err(MatmulError::Layout {
            ty,
            layout: w.layout(),
        });
    }
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
