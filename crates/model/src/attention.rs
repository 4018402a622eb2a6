//! Causal self-attention of a batch over the paged KV cache: one job per (token, head), each
//! running the kernel of [`torchless_kernels::attention`] over its sequence's blocks.
//!
//! The reduction order follows the reference engine: a single-token batch reduces as its
//! `vec_dot` kernels do, a larger batch as its tiled GEMM does.

use torchless_kernels::attention::{attend_head, HeadScratch, KvElem, PagedHead, Reduce};
use torchless_kernels::matmul::SharedOut;
use torchless_kernels::{Kernels, ThreadPool};

use crate::batch::Batch;
use crate::kv_cache::{KvCache, KvStore};

/// Shapes of one attention call.
pub struct AttnShape {
    pub layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub scale: f32,
}

/// Floats of per-thread scratch that [`attend`] needs for contexts of `max_ctx` positions.
pub fn scratch_per_thread(max_ctx: usize, head_dim: usize) -> usize {
    max_ctx.div_ceil(8) * 8 + 33 * head_dim
}

/// `out[t][h] = softmax(q[t][h] · K[seq][..=pos] * scale) · V[seq][..=pos]` for every token t
/// of `batch` and head h. `scratch` holds `pool.n_threads()` regions of
/// [`scratch_per_thread`] floats.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    kernels: &Kernels,
    pool: &ThreadPool,
    s: &AttnShape,
    batch: &Batch,
    cache: &KvCache,
    q: &[f32],
    out: &mut [f32],
    scratch: &mut [f32],
    max_ctx: usize,
) {
    match (cache.keys(), cache.values()) {
        (KvStore::F16(k), KvStore::F16(v)) => attend_typed(
            kernels, pool, s, batch, cache, k, v, q, out, scratch, max_ctx,
        ),
        (KvStore::F32(k), KvStore::F32(v)) => attend_typed(
            kernels, pool, s, batch, cache, k, v, q, out, scratch, max_ctx,
        ),
        _ => {}
    }
}

#[allow(clippy::too_many_arguments)]
fn attend_typed<E: KvElem>(
    kernels: &Kernels,
    pool: &ThreadPool,
    s: &AttnShape,
    batch: &Batch,
    cache: &KvCache,
    keys: &[E],
    values: &[E],
    q: &[f32],
    out: &mut [f32],
    scratch: &mut [f32],
    max_ctx: usize,
) {
    let hd = s.head_dim;
    let q_dim = s.n_head * hd;
    let group = s.n_head / s.n_head_kv;
    let per_thread = scratch_per_thread(max_ctx, hd);
    let order = if batch.len() >= 2 {
        Reduce::Gemm
    } else {
        Reduce::Vec
    };
    let shared_out = SharedOut::new(out);
    let shared_scratch = SharedOut::new(scratch);
    pool.parallel_for(batch.len() * s.n_head, 1, |tid, jobs| {
        // SAFETY: thread `tid` is the only user of its scratch region during this job.
        let mine = unsafe { shared_scratch.slice_mut(tid * per_thread, per_thread) };
        let (scores, rest) = mine.split_at_mut(max_ctx.div_ceil(8) * 8);
        let (acc, qr) = rest.split_at_mut(32 * hd);
        for job in jobs {
            let (t, h) = (job / s.n_head, job % s.n_head);
            let (seq, pos) = (batch.seq[t], batch.pos[t]);
            let kv = PagedHead {
                keys,
                values,
                blocks: cache.blocks(seq),
                base: cache.offset(s.layer, 0, h / group, 0),
                block_stride: cache.block_stride(),
                block_size: cache.config().block_size,
                head_dim: hd,
            };
            let base = t * q_dim + h * hd;
            // SAFETY: job (t, h) is the only writer of this head's slice of `out`.
            let o = unsafe { shared_out.slice_mut(base, hd) };
            let scratch = HeadScratch {
                scores: &mut scores[..],
                acc: &mut acc[..],
                qr: &mut qr[..],
            };
            attend_head(
                kernels,
                &q[base..base + hd],
                &kv,
                (pos + 1).min(max_ctx),
                s.scale,
                order,
                scratch,
                o,
            );
        }
    });
}
