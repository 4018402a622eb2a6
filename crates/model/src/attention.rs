//! Causal self-attention of a batch over the paged KV cache: one job per (token, head), each
//! running the kernel of [`torchless_kernels::attention`] over its sequence's blocks.
//!
//! The reduction order follows the reference engine: a single-token batch reduces as its
//! `vec_dot` kernels do, a larger batch as its tiled GEMM does.

use torchless_kernels::attention::{
    attend_group, attend_head, HeadScratch, KvElem, PagedHead, Reduce,
};
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

/// Queries attended together in a batch (sharing key/value conversions).
const GROUP: usize = 4;

/// Floats of per-thread scratch that [`attend`] needs for contexts of `max_ctx` positions.
pub fn scratch_per_thread(max_ctx: usize, head_dim: usize) -> usize {
    GROUP * max_ctx.div_ceil(8) * 8 + (32 + GROUP) * head_dim
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
    let shared_out = SharedOut::new(out);
    let shared_scratch = SharedOut::new(scratch);
    if batch.len() >= 2 {
        attend_batched(
            kernels,
            pool,
            s,
            batch,
            cache,
            keys,
            values,
            q,
            shared_out,
            shared_scratch,
            max_ctx,
        );
        return;
    }
    // A single token: llama.cpp's `vec_dot` reduction order.
    let order = Reduce::Vec;
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

/// The batched path: per KV head, the queries of consecutive tokens of one sequence and of the
/// heads sharing that KV head, in groups of [`GROUP`] that read each key and value once.
#[allow(clippy::too_many_arguments)]
fn attend_batched<E: KvElem>(
    kernels: &Kernels,
    pool: &ThreadPool,
    s: &AttnShape,
    batch: &Batch,
    cache: &KvCache,
    keys: &[E],
    values: &[E],
    q: &[f32],
    out: SharedOut,
    scratch: SharedOut,
    max_ctx: usize,
) {
    let hd = s.head_dim;
    let q_dim = s.n_head * hd;
    let group = s.n_head / s.n_head_kv;
    let per_thread = scratch_per_thread(max_ctx, hd);
    let stride = max_ctx.div_ceil(8) * 8;
    // Queries in (kv head, token, head) order; a job is up to GROUP consecutive ones of the same
    // kv head and sequence. Jobs are found by walking that order, so nothing is allocated.
    let per_kv = batch.len() * group;
    let n_jobs = s.n_head_kv * per_kv.div_ceil(GROUP);
    let query = |kvh: usize, j: usize| (j / group, kvh * group + j % group);
    pool.parallel_for(n_jobs, 1, |tid, jobs| {
        // SAFETY: thread `tid` is the only user of its scratch region during this job.
        let mine = unsafe { scratch.slice_mut(tid * per_thread, per_thread) };
        let (scores, rest) = mine.split_at_mut(GROUP * stride);
        let (acc, qr) = rest.split_at_mut(32 * hd);
        for job in jobs {
            let kvh = job / per_kv.div_ceil(GROUP);
            let first = (job % per_kv.div_ceil(GROUP)) * GROUP;
            let mut seq = batch.seq[query(kvh, first).0];
            let mut qs: [(&[f32], usize); GROUP] = [(&[], 0); GROUP];
            let mut outs: [&mut [f32]; GROUP] = Default::default();
            let mut n = 0;
            let ctx = GroupCtx {
                kernels,
                cache,
                keys,
                values,
                s,
                kvh,
                stride,
            };
            for j in first..(first + GROUP).min(per_kv) {
                let (t, h) = query(kvh, j);
                if batch.seq[t] != seq {
                    // Another sequence: attend to what we have, then start over.
                    ctx.run(seq, &qs[..n], scores, qr, acc, &mut outs[..n]);
                    seq = batch.seq[t];
                    n = 0;
                }
                let base = t * q_dim + h * hd;
                qs[n] = (&q[base..base + hd], (batch.pos[t] + 1).min(max_ctx));
                // SAFETY: query (t, h) belongs to exactly one job, which alone writes its head.
                outs[n] = unsafe { out.slice_mut(base, hd) };
                n += 1;
            }
            ctx.run(seq, &qs[..n], scores, qr, acc, &mut outs[..n]);
        }
    });
}

/// What the queries of one batched attention job share.
struct GroupCtx<'a, E> {
    kernels: &'a Kernels,
    cache: &'a KvCache,
    keys: &'a [E],
    values: &'a [E],
    s: &'a AttnShape,
    kvh: usize,
    stride: usize,
}

impl<E: KvElem> GroupCtx<'_, E> {
    /// Attends queries `qs` (all of sequence `seq`) to this KV head.
    fn run(
        &self,
        seq: crate::kv_cache::SeqId,
        qs: &[(&[f32], usize)],
        scores: &mut [f32],
        qr: &mut [f32],
        acc: &mut [f32],
        outs: &mut [&mut [f32]],
    ) {
        if qs.is_empty() {
            return;
        }
        let kv = PagedHead {
            keys: self.keys,
            values: self.values,
            blocks: self.cache.blocks(seq),
            base: self.cache.offset(self.s.layer, 0, self.kvh, 0),
            block_stride: self.cache.block_stride(),
            block_size: self.cache.config().block_size,
            head_dim: self.s.head_dim,
        };
        attend_group(
            self.kernels,
            qs,
            &kv,
            self.s.scale,
            scores,
            self.stride,
            qr,
            acc,
            outs,
        );
    }
}
