//! Causal self-attention of a batch over the paged KV cache, running the kernels of
//! [`torchless_kernels::attention`] over each sequence's blocks: a batch in groups of queries
//! of one KV head; a single token one job per head, or past `PHASED_FROM` positions in
//! phases that split each head's work among the threads.
//!
//! The reduction order follows the numerics policy. llama.cpp's: a single-token batch reduces
//! as its `vec_dot` kernels do, a larger batch as its tiled GEMM does. Batch-invariant: every
//! query as the batched path does (a soft-capped layer: every query in the single-token
//! order), whatever else is in the batch.
//!
//! A sliding window gives each query of a batch its own first position (the batched path masks
//! the positions before it, as llama.cpp's masked softmax does); a single token whose window
//! leaves out positions, and any layer with a soft-cap on its scores, take [`attend_masked`]:
//! one job per (token, head) in the single-token order, over the window only.

use std::ops::Range;

use torchless_kernels::attention::{
    attend_group, attend_head, round_query, scores_vec, softmax_weights, values_vec, GroupQuery,
    HeadScratch, KvElem, PagedHead, Reduce,
};
use torchless_kernels::ops::softcap;
use torchless_kernels::tile::SharedOut;
use torchless_kernels::{Kernels, Numerics, ThreadPool};

use crate::batch::Batch;
use crate::error::ModelError;
use crate::kv_cache::{KvCache, KvStore};

/// Shapes of one attention call.
pub struct AttnShape {
    pub layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub scale: f32,
    /// Keys at most this many positions back, the query's own included.
    pub window: Option<usize>,
    /// `cap · tanh(s / cap)` on the scaled scores.
    pub softcap: Option<f32>,
}

/// Queries attended together in a batch (sharing key/value conversions).
const GROUP: usize = 4;

/// From this many positions on, a single token's attention runs in phases shared by all
/// threads (see [`attend_phased`]); below it, one job per head costs fewer hand-offs.
const PHASED_FROM: usize = 384;
/// Positions per scores job and dimensions per values job of the phased path.
const PHASE_POSITIONS: usize = 128;
const PHASE_DIMS: usize = 16;
/// Query heads of one KV head that a phase's kernel takes at a time.
const PHASE_HEADS: usize = 4;

/// Floats of per-thread scratch of the per-head paths, for contexts of `max_ctx` positions.
fn scratch_per_thread(max_ctx: usize, head_dim: usize) -> usize {
    GROUP * max_ctx.div_ceil(8) * 8 + (32 + GROUP) * head_dim
}

/// Floats of scratch that [`attend`] needs: per-thread regions for the per-head paths, or
/// every head's scores and rounded query for the phased one, whichever is larger.
pub fn scratch_len(max_ctx: usize, head_dim: usize, n_head: usize, threads: usize) -> usize {
    let per_head = threads.max(1) * scratch_per_thread(max_ctx, head_dim);
    let phased = n_head * (max_ctx.div_ceil(8) * 8 + head_dim);
    per_head.max(phased)
}

/// `out[t][h] = softmax(q[t][h] · K[seq][..=pos] * scale) · V[seq][..=pos]` for every token t
/// of `batch` and head h. `scratch` holds at least [`scratch_len`] floats.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    numerics: Numerics,
    kernels: &Kernels,
    pool: &ThreadPool,
    s: &AttnShape,
    batch: &Batch,
    cache: &KvCache,
    q: &[f32],
    out: &mut [f32],
    scratch: &mut [f32],
    max_ctx: usize,
) -> Result<(), ModelError> {
    let io = (q, out, scratch, max_ctx);
    attend_from(numerics, kernels, pool, s, batch, cache, io, PHASED_FROM)
}

/// [`attend`], a single token going through the phased path from `phased_from` positions on.
#[allow(clippy::too_many_arguments)]
fn attend_from(
    numerics: Numerics,
    kernels: &Kernels,
    pool: &ThreadPool,
    s: &AttnShape,
    batch: &Batch,
    cache: &KvCache,
    io: (&[f32], &mut [f32], &mut [f32], usize),
    phased_from: usize,
) -> Result<(), ModelError> {
    let (q, out, scratch, max_ctx) = io;
    let call = Call {
        numerics,
        kernels,
        pool,
        s,
        batch,
        cache,
        max_ctx,
        phased_from,
    };
    match (cache.keys(s.layer), cache.values(s.layer)) {
        (KvStore::F16(k), KvStore::F16(v)) => attend_typed(&call, (k, v), q, out, scratch),
        (KvStore::F32(k), KvStore::F32(v)) => attend_typed(&call, (k, v), q, out, scratch),
        _ => {
            return Err(ModelError::Invalid(
                "the KV cache's keys and values differ in type".into(),
            ))
        }
    }
    Ok(())
}

/// What one attention call works on, whatever the cache's element type.
struct Call<'a> {
    numerics: Numerics,
    kernels: &'a Kernels,
    pool: &'a ThreadPool,
    s: &'a AttnShape,
    batch: &'a Batch,
    cache: &'a KvCache,
    max_ctx: usize,
    phased_from: usize,
}

fn attend_typed<E: KvElem>(
    call: &Call<'_>,
    (keys, values): (&[E], &[E]),
    q: &[f32],
    out: &mut [f32],
    scratch: &mut [f32],
) {
    let (kernels, pool, s, batch) = (call.kernels, call.pool, call.s, call.batch);
    let (cache, max_ctx, phased_from) = (call.cache, call.max_ctx, call.phased_from);
    let hd = s.head_dim;
    let q_dim = s.n_head * hd;
    let group = s.n_head / s.n_head_kv;
    let per_thread = scratch_per_thread(max_ctx, hd);
    // A window that reaches back past every query's first position masks nothing: then the
    // plain paths (and their reference orders) apply.
    let window_cuts = s
        .window
        .is_some_and(|w| batch.pos.iter().any(|&p| (p + 1).min(max_ctx) > w));
    // A soft-cap, or a window on a single token: the masked per-head path. A window in a
    // batch: the batched path, each query seeing its own window (llama.cpp's order).
    // Batch-invariant numerics: a soft-cap takes the masked path (one job per query in the
    // single-token order, whatever the batch); everything else the batched path, a lone token
    // too, so that every query reduces in the batched order.
    let invariant = call.numerics == Numerics::BatchInvariant;
    let masked = s.softcap.is_some() || (window_cuts && batch.len() < 2 && !invariant);
    if masked {
        attend_masked(call, (keys, values), q, out, scratch);
        return;
    }
    if batch.len() >= 2 || invariant {
        let (shared_out, shared_scratch) = (SharedOut::new(out), SharedOut::new(scratch));
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
    if let (1, Some(&pos)) = (batch.len(), batch.pos.first()) {
        let n_kv = (pos + 1).min(max_ctx);
        let need = s.n_head * (max_ctx.div_ceil(8) * 8 + hd);
        if n_kv >= phased_from && scratch.len() >= need && s.n_head_kv > 0 {
            let kv_of = |g: usize| PagedHead {
                keys,
                values,
                blocks: cache.blocks(s.layer, batch.seq[0]),
                base: cache.offset(s.layer, 0, g, 0),
                block_stride: cache.block_stride(),
                block_size: cache.config().block_size,
                head_dim: hd,
            };
            attend_phased(kernels, pool, s, kv_of, n_kv, q, out, scratch, max_ctx);
            return;
        }
    }
    let order = Reduce::Vec;
    let (shared_out, shared_scratch) = (SharedOut::new(out), SharedOut::new(scratch));
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
                blocks: cache.blocks(s.layer, seq),
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

/// Attention with a sliding window and/or soft-capped scores: per (token, head), the scores of
/// the window's positions (from the first block that holds one), capped, the positions before
/// the window masked, softmax, and the weighted values, all in the single-token order.
fn attend_masked<E: KvElem>(
    call: &Call<'_>,
    (keys, values): (&[E], &[E]),
    q: &[f32],
    out: &mut [f32],
    scratch: &mut [f32],
) {
    let (kernels, s, batch, cache) = (call.kernels, call.s, call.batch, call.cache);
    let (hd, max_ctx) = (s.head_dim, call.max_ctx);
    let (q_dim, group) = (s.n_head * hd, s.n_head / s.n_head_kv);
    let per_thread = scratch_per_thread(max_ctx, hd);
    let stride = max_ctx.div_ceil(8) * 8;
    let bs = cache.config().block_size;
    let (shared_out, shared_scratch) = (SharedOut::new(out), SharedOut::new(scratch));
    call.pool
        .parallel_for(batch.len() * s.n_head, 1, |tid, jobs| {
            // SAFETY: thread `tid` is the only user of its scratch region during this job.
            let mine = unsafe { shared_scratch.slice_mut(tid * per_thread, per_thread) };
            let (scores, rest) = mine.split_at_mut(stride);
            let qr = &mut rest[..hd];
            for job in jobs {
                let (t, h) = (job / s.n_head, job % s.n_head);
                let (seq, pos) = (batch.seq[t], batch.pos[t]);
                let n_kv = (pos + 1).min(max_ctx);
                let first = s.window.map_or(0, |w| n_kv.saturating_sub(w));
                // Skip whole blocks before the window; mask the rest of the first one.
                let b0 = first / bs;
                let blocks = cache.blocks(s.layer, seq);
                let kv = PagedHead {
                    keys,
                    values,
                    blocks: blocks.get(b0..).unwrap_or(&[]),
                    base: cache.offset(s.layer, 0, h / group, 0),
                    block_stride: cache.block_stride(),
                    block_size: bs,
                    head_dim: hd,
                };
                let (n, skip) = (n_kv - b0 * bs, first - b0 * bs);
                let base = t * q_dim + h * hd;
                round_query::<E>(&q[base..base + hd], qr);
                scores_vec(
                    kernels,
                    &[&*qr],
                    &kv,
                    0..n,
                    s.scale,
                    &mut [&mut scores[..n]],
                );
                if let Some(cap) = s.softcap {
                    softcap(&mut scores[..n], cap);
                }
                scores[..skip].fill(f32::NEG_INFINITY);
                softmax_weights::<E>(kernels, scores, n);
                // SAFETY: job (t, h) is the only writer of this head's slice of `out`.
                let o = unsafe { shared_out.slice_mut(base, hd) };
                values_vec(kernels, &[&scores[..]], &kv, n, 0..hd, &mut [o]);
            }
        });
}

/// One token over a long context, in three pool jobs that split every head's work: the
/// scores of pieces of the positions, each head's softmax, the outputs of pieces of the
/// dimensions. The heads sharing a KV head go through its keys and values together (read
/// once, not once per head). Each head's output equals the per-head path's bit for bit.
/// `scratch` holds every head's scores (`max_ctx` rounded up to 8 each), then its rounded
/// query.
#[allow(clippy::too_many_arguments)]
fn attend_phased<'a, E: KvElem>(
    kernels: &Kernels,
    pool: &ThreadPool,
    s: &AttnShape,
    kv_of: impl Fn(usize) -> PagedHead<'a, E> + Sync,
    n_kv: usize,
    q: &[f32],
    out: &mut [f32],
    scratch: &mut [f32],
    max_ctx: usize,
) {
    let (hd, stride) = (s.head_dim, max_ctx.div_ceil(8) * 8);
    let group = s.n_head / s.n_head_kv;
    let (scores, qr) = scratch.split_at_mut(s.n_head * stride);
    for (h, r) in qr.chunks_exact_mut(hd).take(s.n_head).enumerate() {
        round_query::<E>(&q[h * hd..(h + 1) * hd], r);
    }
    let qr = &*qr;
    let sc = SharedOut::new(scores);
    let phase = Phase {
        pool,
        group,
        n_head_kv: s.n_head_kv,
        kv_of: &kv_of,
    };
    phase.run(
        n_kv,
        PHASE_POSITIONS,
        |h| &qr[h * hd..(h + 1) * hd],
        // SAFETY: the job of (KV head, positions r) alone writes positions r of its heads.
        |h, r| unsafe { sc.slice_mut(h * stride + r.start, r.len()) },
        |kv, qrs, r, outs| scores_vec(kernels, qrs, kv, r, s.scale, outs),
    );
    pool.parallel_for(s.n_head, 1, |_, heads| {
        for h in heads {
            // SAFETY: head h's row is touched by this job only.
            let row = unsafe { sc.slice_mut(h * stride, stride) };
            softmax_weights::<E>(kernels, row, n_kv);
        }
    });
    let scores = &*scores;
    let o = SharedOut::new(out);
    phase.run(
        hd,
        PHASE_DIMS,
        |h| &scores[h * stride..(h + 1) * stride],
        // SAFETY: the job of (KV head, dimensions r) alone writes dimensions r of its heads.
        |h, r| unsafe { o.slice_mut(h * hd + r.start, r.len()) },
        |kv, ws, r, outs| values_vec(kernels, ws, kv, n_kv, r, outs),
    );
}

/// One parallel phase of [`attend_phased`]: jobs of (KV head, piece of a range), each running
/// a kernel for that KV head's query heads, at most [`PHASE_HEADS`] at a time.
struct Phase<'p, K> {
    pool: &'p ThreadPool,
    group: usize,
    n_head_kv: usize,
    kv_of: &'p K,
}

impl<K> Phase<'_, K> {
    /// `kernel(kv, inputs, piece, outputs)` for every KV head and every piece of `0..len` at
    /// most `piece` long, over runs of the KV head's query heads: `input(h)` and
    /// `output(h, piece)` give head h's slices.
    fn run<'a, 'i, 'o, E: KvElem>(
        &self,
        len: usize,
        piece: usize,
        input: impl Fn(usize) -> &'i [f32] + Sync,
        output: impl Fn(usize, Range<usize>) -> &'o mut [f32] + Sync,
        kernel: impl Fn(&PagedHead<'a, E>, &[&[f32]], Range<usize>, &mut [&mut [f32]]) + Sync,
    ) where
        K: Fn(usize) -> PagedHead<'a, E> + Sync,
    {
        let (group, pieces) = (self.group, len.div_ceil(piece));
        self.pool
            .parallel_for(self.n_head_kv * pieces, 1, |_, jobs| {
                for job in jobs {
                    let (g, c) = (job / pieces, job % pieces);
                    let r = c * piece..((c + 1) * piece).min(len);
                    let kv = (self.kv_of)(g);
                    for h0 in (0..group).step_by(PHASE_HEADS) {
                        let heads = g * group + h0..g * group + (h0 + PHASE_HEADS).min(group);
                        let mut ins: [&[f32]; PHASE_HEADS] = [&[]; PHASE_HEADS];
                        let mut outs: [&mut [f32]; PHASE_HEADS] = Default::default();
                        for (i, h) in heads.clone().enumerate() {
                            ins[i] = input(h);
                            outs[i] = output(h, r.clone());
                        }
                        let m = heads.len();
                        kernel(&kv, &ins[..m], r.clone(), &mut outs[..m]);
                    }
                }
            });
    }
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
            let none = GroupQuery {
                q: &[],
                first: 0,
                n_kv: 0,
            };
            let mut qs: [GroupQuery; GROUP] = [none; GROUP];
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
                let n_kv = (batch.pos[t] + 1).min(max_ctx);
                qs[n] = GroupQuery {
                    q: &q[base..base + hd],
                    first: s.window.map_or(0, |w| n_kv.saturating_sub(w)),
                    n_kv,
                };
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
        qs: &[GroupQuery<'_>],
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
            blocks: self.cache.blocks(self.s.layer, seq),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv_cache::{KvConfig, KvType};

    /// The phased single-token path gives every head exactly the per-head path's output, with
    /// grouped heads, a block table out of order and two threads.
    #[test]
    fn phased_attention_equals_the_per_head_path() {
        let (n_head, n_head_kv, hd, layers) = (6, 2, 16, 2);
        let mut cache = KvCache::new(KvConfig::new(layers, n_head_kv, hd, 16, 48, KvType::F16));
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut unit = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        };
        // Two sequences grown in turns, so that their blocks interleave.
        let n = 300;
        for pos in 0..n {
            for seq in [0u32, 1] {
                cache.reserve(seq, pos + 1).unwrap();
                for l in 0..layers {
                    let k: Vec<f32> = (0..n_head_kv * hd).map(|_| unit()).collect();
                    let v: Vec<f32> = (0..n_head_kv * hd).map(|_| unit()).collect();
                    cache.write(l, seq, pos, &k, &v).unwrap();
                }
            }
        }
        let q: Vec<f32> = (0..n_head * hd).map(|_| unit() * 2.0).collect();
        let kernels = Kernels::new(torchless_kernels::dispatch::Isa::best()).unwrap();
        let pool = ThreadPool::new(2);
        let max_ctx = 320;
        let mut scratch = vec![0.0; scratch_len(max_ctx, hd, n_head, 2)];
        for (pos, layer) in [(0usize, 1usize), (7, 0), (255, 1), (299, 1)] {
            let s = AttnShape {
                layer,
                n_head,
                n_head_kv,
                head_dim: hd,
                scale: 0.25,
                window: None,
                softcap: None,
            };
            let mut batch = Batch::new();
            batch.push(0, pos, 1, true);
            let run = |phased_from: usize, scratch: &mut [f32]| {
                let mut out = vec![0.0f32; n_head * hd];
                let io = (&q[..], &mut out[..], scratch, max_ctx);
                let nm = Numerics::LlamaCpp;
                attend_from(nm, &kernels, &pool, &s, &batch, &cache, io, phased_from).unwrap();
                out
            };
            let per_head = run(usize::MAX, &mut scratch);
            let phased = run(0, &mut scratch);
            for (i, (a, b)) in phased.iter().zip(&per_head).enumerate() {
                assert_eq!(
                    a.to_bits(),
                    b.to_bits(),
                    "pos {pos}, head {}, dim {}",
                    i / hd,
                    i % hd
                );
            }
            assert!(per_head.iter().any(|&x| x != 0.0));
        }
    }
}
