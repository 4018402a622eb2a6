//! Flash attention of a batch over the paged KV cache: the jobs that run the kernel of
//! [`torchless_kernels::flash`] (tiles with the online softmax) for every query.
//!
//! Two ways to share the work, with the same arithmetic per query (so the bits depend
//! neither on the batch nor on the thread count):
//! - many queries (a prompt): a job is a KV head and a few consecutive tokens of one
//!   sequence; it reads each tile of keys and values once for all their query heads, and
//!   folds the splits of the context one after another;
//! - few queries over a long context (decoding, a speculative verification): the splits of
//!   [`SPLIT`] positions become jobs of their own, a round of [`ROUND`] at a time, and each
//!   query's partial states are folded in split order once the round is done.
//!
//! Scratch memory depends on the tile, the heads, the threads and [`SPLIT_ROWS`], not on the
//! context length. Values must be stored in rows ([`crate::kv_cache::KvConfig::v_rows`]).
//! This module schedules; it computes nothing itself and knows nothing of the model's other
//! layers.

use torchless_kernels::flash::{
    self, state_len, tile_scratch_len, FlashParams, FlashQuery, PagedRows, SPLIT,
};
use torchless_kernels::tile::SharedOut;
use torchless_kernels::{Kernels, ThreadPool};

use crate::attention::AttnShape;
use crate::batch::Batch;
use crate::error::ModelError;
use crate::kv_cache::{KvCache, SeqId};

/// Tokens of one job of the many-query path.
const QUERY_BLOCK: usize = 4;
/// Query heads of one KV head that a job takes at a time.
const HEADS: usize = 8;
/// Batches of at most this many tokens split a long context across threads.
const SPLIT_ROWS: usize = 8;
/// Splits computed per round of the split path.
const ROUND: usize = 16;

/// Floats of scratch [`attend_flash`] needs.
pub fn scratch_len(n_head: usize, head_dim: usize, tile: usize, threads: usize) -> usize {
    let sl = state_len(head_dim);
    let per_thread = 2 * QUERY_BLOCK * HEADS * sl + tile_scratch_len(tile, head_dim);
    let split = (ROUND + 1) * SPLIT_ROWS * n_head * sl;
    threads.max(1) * per_thread + split
}

fn per_thread(head_dim: usize, tile: usize) -> usize {
    2 * QUERY_BLOCK * HEADS * state_len(head_dim) + tile_scratch_len(tile, head_dim)
}

/// What every job of one call shares.
struct Ctx<'a> {
    kernels: &'a Kernels,
    s: &'a AttnShape,
    batch: &'a Batch,
    cache: &'a KvCache,
    q: &'a [f32],
    params: FlashParams,
    max_ctx: usize,
}

impl Ctx<'_> {
    fn group(&self) -> usize {
        self.s.n_head / self.s.n_head_kv
    }

    /// Keys and values of KV head `g` of `seq`.
    fn rows(&self, seq: SeqId, g: usize) -> (PagedRows<'_>, PagedRows<'_>) {
        let (c, l) = (self.cache, self.s.layer);
        let head = |rows| PagedRows {
            rows,
            blocks: c.blocks(l, seq),
            base: c.offset(l, 0, g, 0),
            block_stride: c.block_stride(),
            block_size: c.config().block_size,
            head_dim: self.s.head_dim,
        };
        (head(c.keys(l).rows()), head(c.values(l).rows()))
    }

    /// The query of head `h` of token `t`, with the positions it sees.
    fn query(&self, t: usize, h: usize) -> FlashQuery<'_> {
        let hd = self.s.head_dim;
        let at = t * self.s.n_head * hd + h * hd;
        let n_kv = (self.batch.pos[t] + 1).min(self.max_ctx);
        FlashQuery {
            q: &self.q[at..at + hd],
            first: self.s.window.map_or(0, |w| n_kv.saturating_sub(w)),
            n_kv,
        }
    }
}

/// `out[t][h] = softmax(q[t][h] · K[seq][first..=pos] · scale) · V[…]` for every token t of
/// `batch` and head h, by flash attention with tiles of `tile` positions. `scratch` holds at
/// least [`scratch_len`] floats.
#[allow(clippy::too_many_arguments)]
pub fn attend_flash(
    kernels: &Kernels,
    pool: &ThreadPool,
    s: &AttnShape,
    batch: &Batch,
    cache: &KvCache,
    q: &[f32],
    out: &mut [f32],
    scratch: &mut [f32],
    max_ctx: usize,
    tile: usize,
) -> Result<(), ModelError> {
    let hd = s.head_dim;
    let threads = pool.n_threads().max(1);
    let fits = s.n_head_kv > 0
        && s.n_head.is_multiple_of(s.n_head_kv)
        && flash::valid_tile(tile)
        && cache.config().v_rows
        && scratch.len() >= scratch_len(s.n_head, hd, tile, threads)
        && q.len() >= batch.len() * s.n_head * hd
        && out.len() >= batch.len() * s.n_head * hd;
    if !fits {
        return Err(ModelError::Invalid(
            "flash attention was called on a cache, tile or scratch it cannot use".into(),
        ));
    }
    let ctx = Ctx {
        kernels,
        s,
        batch,
        cache,
        q,
        params: FlashParams {
            scale: s.scale,
            softcap: s.softcap,
            tile,
        },
        max_ctx,
    };
    let n = batch.len();
    let longest = (0..n).map(|t| ctx.query(t, 0).n_kv).max().unwrap_or(0);
    let ok = if n <= SPLIT_ROWS && longest > SPLIT {
        split_path(&ctx, pool, out, scratch)
    } else {
        block_path(&ctx, pool, out, scratch)
    };
    if !ok {
        return Err(ModelError::Invalid(format!(
            "layer {}: the KV cache holds no block for a position attention reads",
            s.layer
        )));
    }
    Ok(())
}

/// Resets `states` to the empty state (maximum −∞, nothing summed).
fn clear(states: &mut [f32], sl: usize) {
    for st in states.chunks_exact_mut(sl) {
        st[0] = f32::NEG_INFINITY;
        st[1..].fill(0.0);
    }
}

/// The many-query path: a job per (KV head, run of [`QUERY_BLOCK`] tokens).
fn block_path(ctx: &Ctx<'_>, pool: &ThreadPool, out: &mut [f32], scratch: &mut [f32]) -> bool {
    let (s, n) = (ctx.s, ctx.batch.len());
    let (hd, group, sl) = (s.head_dim, ctx.group(), state_len(s.head_dim));
    let per = per_thread(hd, ctx.params.tile);
    let blocks = n.div_ceil(QUERY_BLOCK);
    let chunks = group.div_ceil(HEADS);
    let (o, sc) = (SharedOut::new(out), SharedOut::new(scratch));
    let failed = std::sync::atomic::AtomicBool::new(false);
    pool.parallel_for(s.n_head_kv * blocks * chunks, 1, |tid, jobs| {
        // SAFETY: thread `tid` alone uses its scratch region during this job.
        let mine = unsafe { sc.slice_mut(tid * per, per) };
        let (states, tile_scratch) = mine.split_at_mut(2 * QUERY_BLOCK * HEADS * sl);
        let (run, part) = states.split_at_mut(QUERY_BLOCK * HEADS * sl);
        for job in jobs {
            let (g, rest) = (job / (blocks * chunks), job % (blocks * chunks));
            let (b, c) = (rest / chunks, rest % chunks);
            let heads = g * group + c * HEADS..g * group + ((c + 1) * HEADS).min(group);
            let tokens = b * QUERY_BLOCK..((b + 1) * QUERY_BLOCK).min(n);
            // Runs of tokens of one sequence.
            let mut t0 = tokens.start;
            while t0 < tokens.end {
                let seq = ctx.batch.seq[t0];
                let t1 = (t0..tokens.end)
                    .find(|&t| ctx.batch.seq[t] != seq)
                    .unwrap_or(tokens.end);
                let none = FlashQuery {
                    q: &[],
                    first: 0,
                    n_kv: 0,
                };
                let mut qs = [none; QUERY_BLOCK * HEADS];
                let mut m = 0;
                for t in t0..t1 {
                    for h in heads.clone() {
                        qs[m] = ctx.query(t, h);
                        m += 1;
                    }
                }
                let qs = &qs[..m];
                let (keys, values) = ctx.rows(seq, g);
                clear(&mut run[..m * sl], sl);
                let first = qs.iter().map(|q| q.first).min().unwrap_or(0);
                let last = qs.iter().map(|q| q.n_kv).max().unwrap_or(0);
                for split in flash::splits(first, last) {
                    let p = &ctx.params;
                    let ok = flash::split_partials(
                        ctx.kernels,
                        p,
                        qs,
                        &keys,
                        &values,
                        split,
                        part,
                        tile_scratch,
                    );
                    if !ok {
                        failed.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    for (r, pt) in run.chunks_exact_mut(sl).zip(part.chunks_exact(sl)).take(m) {
                        flash::fold(ctx.kernels, r, pt);
                    }
                }
                let mut i = 0;
                for t in t0..t1 {
                    for h in heads.clone() {
                        let at = (t * s.n_head + h) * hd;
                        // SAFETY: head h of token t belongs to this job alone.
                        let dst = unsafe { o.slice_mut(at, hd) };
                        flash::finish(&run[i * sl..(i + 1) * sl], dst);
                        i += 1;
                    }
                }
                t0 = t1;
            }
        }
    });
    !failed.load(std::sync::atomic::Ordering::Relaxed)
}

/// The split path: rounds of jobs (token, KV head, heads chunk, split), then a fold of each
/// query's partials in split order.
fn split_path(ctx: &Ctx<'_>, pool: &ThreadPool, out: &mut [f32], scratch: &mut [f32]) -> bool {
    let (s, n) = (ctx.s, ctx.batch.len());
    let (hd, group, sl) = (s.head_dim, ctx.group(), state_len(s.head_dim));
    let threads = pool.n_threads().max(1);
    let per = per_thread(hd, ctx.params.tile);
    let (threads_part, shared) = scratch.split_at_mut(threads * per);
    let (parts, run) = shared.split_at_mut(ROUND * SPLIT_ROWS * s.n_head * sl);
    let run = &mut run[..n * s.n_head * sl];
    clear(run, sl);
    let first = (0..n).map(|t| ctx.query(t, 0).first).min().unwrap_or(0);
    let last = (0..n).map(|t| ctx.query(t, 0).n_kv).max().unwrap_or(0);
    let all = flash::splits(first, last);
    let chunks = group.div_ceil(HEADS);
    let failed = std::sync::atomic::AtomicBool::new(false);
    let ts = SharedOut::new(threads_part);
    let mut r0 = all.start;
    while r0 < all.end {
        let r1 = (r0 + ROUND).min(all.end);
        let per_split = n * s.n_head_kv * chunks;
        let ps = SharedOut::new(&mut *parts);
        pool.parallel_for((r1 - r0) * per_split, 1, |tid, jobs| {
            // SAFETY: thread `tid` alone uses its scratch region during this job.
            let mine = unsafe { ts.slice_mut(tid * per, per) };
            let tile_scratch = &mut mine[2 * QUERY_BLOCK * HEADS * sl..];
            for job in jobs {
                let (i, rest) = (job / per_split, job % per_split);
                let (t, rest) = (rest / (s.n_head_kv * chunks), rest % (s.n_head_kv * chunks));
                let (g, c) = (rest / chunks, rest % chunks);
                let heads = g * group + c * HEADS..g * group + ((c + 1) * HEADS).min(group);
                let none = FlashQuery {
                    q: &[],
                    first: 0,
                    n_kv: 0,
                };
                let mut qs = [none; HEADS];
                for (k, h) in heads.clone().enumerate() {
                    qs[k] = ctx.query(t, h);
                }
                let qs = &qs[..heads.len()];
                let (keys, values) = ctx.rows(ctx.batch.seq[t], g);
                let at = ((i * n + t) * s.n_head + heads.start) * sl;
                // SAFETY: split i of these heads of token t belongs to this job alone.
                let states = unsafe { ps.slice_mut(at, heads.len() * sl) };
                let ok = flash::split_partials(
                    ctx.kernels,
                    &ctx.params,
                    qs,
                    &keys,
                    &values,
                    r0 + i,
                    states,
                    tile_scratch,
                );
                if !ok {
                    failed.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
        let parts = &*parts;
        let rs = SharedOut::new(&mut *run);
        pool.parallel_for(n * s.n_head, 1, |_, jobs| {
            for j in jobs {
                // SAFETY: query j's running state belongs to this job alone.
                let r = unsafe { rs.slice_mut(j * sl, sl) };
                for i in 0..r1 - r0 {
                    let at = (i * n * s.n_head + j) * sl;
                    flash::fold(ctx.kernels, r, &parts[at..at + sl]);
                }
            }
        });
        r0 = r1;
    }
    for (j, st) in run.chunks_exact(sl).enumerate() {
        flash::finish(st, &mut out[j * hd..(j + 1) * hd]);
    }
    !failed.load(std::sync::atomic::Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use torchless_kernels::{Isa, Numerics};

    use super::*;
    use crate::attention::{attend, scratch_len as plain_scratch_len};
    use crate::kv_cache::{KvConfig, KvType};

    /// Random numbers in [-1, 1) from a seed.
    fn unit(seed: u64) -> impl FnMut() -> f32 {
        let mut rng = seed | 1;
        move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        }
    }

    #[derive(Debug)]
    struct Case {
        n_head: usize,
        n_head_kv: usize,
        hd: usize,
        window: Option<usize>,
        /// Per sequence: positions already cached before the batch.
        lens: Vec<usize>,
        /// The batch: (sequence, position), in order.
        batch: Vec<(u32, usize)>,
        bs: usize,
    }

    /// The flash path's and the reference path's outputs for the batch of `c` (f32 caches
    /// holding the same keys and values, blocks of the sequences interleaved).
    fn both(c: &Case, threads: usize, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let layers = 1;
        let max_ctx = 1024;
        let mk = |rows: bool| {
            let cfg = KvConfig::new(
                layers,
                c.n_head_kv,
                c.hd,
                c.bs,
                4 * max_ctx / c.bs,
                KvType::F32,
            )
            .with_types(KvType::F32, KvType::F32, rows);
            KvCache::new(cfg)
        };
        let (mut flash_cache, mut plain_cache) = (mk(true), mk(false));
        let mut r = unit(seed);
        let kvd = c.n_head_kv * c.hd;
        let total: Vec<usize> = (0..c.lens.len())
            .map(|s| {
                let extra = c.batch.iter().filter(|b| b.0 as usize == s).count();
                c.lens[s] + extra
            })
            .collect();
        // Grow the sequences in turns, so that their blocks interleave.
        let longest = total.iter().copied().max().unwrap_or(0);
        for pos in 0..longest {
            for (s, &n) in total.iter().enumerate() {
                if pos >= n {
                    continue;
                }
                let k: Vec<f32> = (0..kvd).map(|_| r() * 2.0).collect();
                let v: Vec<f32> = (0..kvd).map(|_| r()).collect();
                for cache in [&mut flash_cache, &mut plain_cache] {
                    cache.reserve(s as u32, pos + 1).unwrap();
                    cache.write(0, s as u32, pos, &k, &v).unwrap();
                }
            }
        }
        let mut batch = Batch::new();
        for &(s, p) in &c.batch {
            batch.push(0, p, s, true);
        }
        let qd = c.n_head * c.hd;
        let q: Vec<f32> = (0..c.batch.len() * qd).map(|_| r() * 1.5).collect();
        let shape = AttnShape {
            layer: 0,
            n_head: c.n_head,
            n_head_kv: c.n_head_kv,
            head_dim: c.hd,
            scale: 1.0 / (c.hd as f32).sqrt(),
            window: c.window,
            softcap: None,
        };
        let kernels = Kernels::new(Isa::best()).unwrap();
        let pool = ThreadPool::new(threads);
        let tile = 16;
        let mut scratch = vec![0.0; scratch_len(c.n_head, c.hd, tile, threads)];
        let mut flash_out = vec![0.0; c.batch.len() * qd];
        attend_flash(
            &kernels,
            &pool,
            &shape,
            &batch,
            &flash_cache,
            &q,
            &mut flash_out,
            &mut scratch,
            max_ctx,
            tile,
        )
        .unwrap();
        let mut plain_scratch = vec![0.0; plain_scratch_len(max_ctx, c.hd, c.n_head, threads)];
        let mut plain_out = vec![0.0; c.batch.len() * qd];
        attend(
            Numerics::LlamaCpp,
            &kernels,
            &pool,
            &shape,
            &batch,
            &plain_cache,
            &q,
            &mut plain_out,
            &mut plain_scratch,
            max_ctx,
        )
        .unwrap();
        // Each query alone, in a batch of one: the flash bits must not change.
        let mut alone = vec![0.0; c.batch.len() * qd];
        for (t, &(s, p)) in c.batch.iter().enumerate() {
            let mut one = Batch::new();
            one.push(0, p, s, true);
            attend_flash(
                &kernels,
                &pool,
                &shape,
                &one,
                &flash_cache,
                &q[t * qd..(t + 1) * qd],
                &mut alone[t * qd..(t + 1) * qd],
                &mut scratch,
                max_ctx,
                tile,
            )
            .unwrap();
        }
        (flash_out, plain_out, alone)
    }

    fn case() -> impl Strategy<Value = Case> {
        (
            1usize..=4,
            1usize..=4,
            1usize..=3,
            prop::option::of(1usize..400),
            2u32..=5,
        )
            .prop_flat_map(|(n_head_kv, ratio, hd32, window, bs_log)| {
                let seqs = prop::collection::vec(0usize..700, 1..=3);
                (
                    Just((n_head_kv, ratio, hd32, window, bs_log)),
                    seqs,
                    1usize..=12,
                )
            })
            .prop_flat_map(|(shape, lens, n_batch)| {
                let n_seqs = lens.len();
                let picks = prop::collection::vec(0..n_seqs, n_batch);
                (Just(shape), Just(lens), picks)
            })
            .prop_map(|((n_head_kv, ratio, hd32, window, bs_log), lens, picks)| {
                // A sequence's batch tokens are consecutive, at its next positions.
                let mut picks = picks;
                picks.sort_unstable();
                let mut next = lens.clone();
                let batch = picks
                    .into_iter()
                    .map(|s| {
                        next[s] += 1;
                        (s as u32, next[s] - 1)
                    })
                    .collect();
                Case {
                    n_head: n_head_kv * ratio,
                    n_head_kv,
                    hd: 32 * hd32,
                    window,
                    lens,
                    batch,
                    bs: 1 << bs_log,
                }
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Flash attention equals the reference path within 1e-5 relative error (of each
        /// head's largest output) for random head counts, GQA ratios, head sizes, lengths,
        /// windows, block sizes and several sequences with interleaved blocks; and every
        /// query's bits are the same alone as in the batch, with one thread or two.
        #[test]
        fn flash_equals_the_reference_path(c in case(), seed in any::<u64>()) {
            let (flash, plain, alone) = both(&c, 2, seed);
            for (i, (f, p)) in flash.chunks(c.hd).zip(plain.chunks(c.hd)).enumerate() {
                let scale = p.iter().fold(0.0f32, |m, x| m.max(x.abs())).max(1e-3);
                for (a, b) in f.iter().zip(p) {
                    prop_assert!(((a - b) / scale).abs() <= 1e-5, "head row {i}: {a} vs {b}");
                }
            }
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            prop_assert_eq!(bits(&flash), bits(&alone));
            let (one_thread, _, _) = both(&c, 1, seed);
            prop_assert_eq!(bits(&flash), bits(&one_thread));
        }
    }
}
