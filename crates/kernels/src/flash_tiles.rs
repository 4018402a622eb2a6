//! The tiles of flash attention (see [`crate::flash`], which runs them): the row formats
//! keys and values are read from, the per-ISA tile steps, and one split of one query set
//! computed tile by tile. Nothing here chooses an instruction set or knows the compute
//! context (so the SIMD modules can build on it).

use half::f16;

use crate::lanes::{expf_ggml, hsum8, LANES};

/// Positions of one split: the unit of work that threads share for a long context.
pub const SPLIT: usize = 256;

/// The default tile (positions scored and weighted together).
pub const DEFAULT_TILE: usize = 32;

/// Whether `tile` is a usable tile size: a power of two from 8 to [`SPLIT`].
pub fn valid_tile(tile: usize) -> bool {
    tile.is_power_of_two() && (8..=SPLIT).contains(&tile)
}

/// Floats of one query's state: maximum, sum, then `head_dim` weighted values.
pub fn state_len(head_dim: usize) -> usize {
    head_dim + 2
}

/// Bytes of Q8_0 and Q4_0 blocks of 32 elements.
const Q8_0_BYTES: usize = 34;
const Q4_0_BYTES: usize = 18;
const QK: usize = 32;

/// The elements of one of K or V, whatever their type. Quantized rows hold `head_dim / 32`
/// blocks; an element index `e` (a multiple of 32) starts at byte `e / 32 · block bytes`.
#[derive(Clone, Copy)]
pub enum Rows<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    Q8_0(&'a [u8]),
    Q4_0(&'a [u8]),
}

/// One KV head of one sequence, rows addressed through a block table: row `pos` starts at
/// element `base + blocks[pos / block_size] · block_stride + (pos % block_size) · head_dim`.
#[derive(Clone, Copy)]
pub struct PagedRows<'a> {
    pub rows: Rows<'a>,
    pub blocks: &'a [u32],
    pub base: usize,
    pub block_stride: usize,
    pub block_size: usize,
    pub head_dim: usize,
}

impl PagedRows<'_> {
    /// Converts rows `pos..pos + n` to f32 into `out` (`n · head_dim`); false where a row
    /// has no block or lies outside the data (then `out` is unspecified).
    #[inline(always)]
    fn convert<O: TileOps>(&self, ops: O, pos: usize, n: usize, out: &mut [f32]) -> bool {
        let (bs, hd) = (self.block_size.max(1), self.head_dim);
        let mut done = 0;
        while done < n {
            let p = pos + done;
            let run = (bs - p % bs).min(n - done);
            let Some(&b) = self.blocks.get(p / bs) else {
                return false;
            };
            let start = (b as usize)
                .checked_mul(self.block_stride)
                .and_then(|x| x.checked_add(self.base + (p % bs) * hd));
            let Some(start) = start else { return false };
            let dst = &mut out[done * hd..(done + run) * hd];
            if !convert_run(ops, self.rows, start, dst) {
                return false;
            }
            done += run;
        }
        true
    }
}

/// Converts `dst.len()` elements from element index `start` of `rows`.
#[inline(always)]
fn convert_run<O: TileOps>(ops: O, rows: Rows<'_>, start: usize, dst: &mut [f32]) -> bool {
    let n = dst.len();
    match rows {
        Rows::F32(x) => match x.get(start..start + n) {
            Some(s) => {
                dst.copy_from_slice(s);
                true
            }
            None => false,
        },
        Rows::F16(x) => match x.get(start..start + n) {
            Some(s) => {
                ops.widen(s, dst);
                true
            }
            None => false,
        },
        Rows::Q8_0(x) => {
            if !start.is_multiple_of(QK) || !n.is_multiple_of(QK) {
                return false;
            }
            let b0 = start / QK * Q8_0_BYTES;
            let Some(src) = x.get(b0..b0 + n / QK * Q8_0_BYTES) else {
                return false;
            };
            for (blk, out) in src.chunks_exact(Q8_0_BYTES).zip(dst.chunks_exact_mut(QK)) {
                ops.widen_q8_0(blk, out);
            }
            true
        }
        Rows::Q4_0(x) => {
            if !start.is_multiple_of(QK) || !n.is_multiple_of(QK) {
                return false;
            }
            let b0 = start / QK * Q4_0_BYTES;
            let Some(src) = x.get(b0..b0 + n / QK * Q4_0_BYTES) else {
                return false;
            };
            for (blk, out) in src.chunks_exact(Q4_0_BYTES).zip(dst.chunks_exact_mut(QK)) {
                ops.widen_q4_0(blk, out);
            }
            true
        }
    }
}

/// Encodes a row of f32 as the cache stores it: Q8_0 as llama.cpp's activation encoder
/// (what its KV copy runs), Q4_0 as its reference quantizer. False where the lengths do not
/// match whole blocks.
pub fn encode_row(ty: crate::GgmlType, src: &[f32], dst: &mut [u8]) -> bool {
    match ty {
        crate::GgmlType::Q8_0 => crate::quant::quantize(ty, src, dst),
        crate::GgmlType::Q4_0 => crate::quant::weights::quantize_weights(ty, src, dst),
        _ => false,
    }
}

/// Bytes that `n` elements (a multiple of 32 for the quantized types) take in each encoding.
pub fn q8_0_bytes(n: usize) -> usize {
    n.div_ceil(QK) * Q8_0_BYTES
}

/// See [`q8_0_bytes`].
pub fn q4_0_bytes(n: usize) -> usize {
    n.div_ceil(QK) * Q4_0_BYTES
}

/// The element-wise steps of a tile, one implementation per instruction set, all with the
/// arithmetic of [`Scalar`] (the definition), bit for bit.
pub(crate) trait TileOps: Copy {
    /// `q·k` in eight lanes of fused multiply-adds (`k·q + acc`), summed by [`hsum8`]; a tail
    /// past a multiple of eight added in order.
    fn dot(self, q: &[f32], k: &[f32]) -> f32;
    /// `out[j] = dot(q, k[j·hd..(j+1)·hd])` for every j of `out`.
    fn scores(self, q: &[f32], k: &[f32], hd: usize, out: &mut [f32]) {
        for (j, o) in out.iter_mut().enumerate() {
            *o = self.dot(q, &k[j * hd..(j + 1) * hd]);
        }
    }
    /// `axpy(acc, w[j], v[j·hd..(j+1)·hd])` for j in order.
    fn accumulate(self, acc: &mut [f32], w: &[f32], v: &[f32], hd: usize) {
        for (j, &wj) in w.iter().enumerate() {
            self.axpy(acc, wj, &v[j * hd..(j + 1) * hd]);
        }
    }
    /// `s[j] = exp(s[j] − m)` by ggml's exp; returns their sum, added in position order.
    fn exp_sum(self, s: &mut [f32], m: f32) -> f32;
    /// `acc[d] *= a`.
    fn scale(self, acc: &mut [f32], a: f32);
    /// `acc[d] = w·v[d] + acc[d]` (fused).
    fn axpy(self, acc: &mut [f32], w: f32, v: &[f32]);
    /// f16 to f32.
    fn widen(self, src: &[f16], dst: &mut [f32]);
    /// One Q8_0 block (34 bytes) to its 32 values: `q · d`, one rounding each.
    #[inline(always)]
    fn widen_q8_0(self, blk: &[u8], out: &mut [f32]) {
        scalar_q8_0(blk, out)
    }
    /// One Q4_0 block (18 bytes) to its 32 values: `(nibble − 8) · d`, low nibbles first.
    #[inline(always)]
    fn widen_q4_0(self, blk: &[u8], out: &mut [f32]) {
        scalar_q4_0(blk, out)
    }
}

/// [`TileOps::widen_q8_0`]'s definition.
#[inline(always)]
pub(crate) fn scalar_q8_0(blk: &[u8], out: &mut [f32]) {
    let [d0, d1, quants @ ..] = blk else { return };
    let d = f16::from_le_bytes([*d0, *d1]).to_f32();
    for (o, &q) in out.iter_mut().zip(quants) {
        *o = q as i8 as f32 * d;
    }
}

/// [`TileOps::widen_q4_0`]'s definition.
#[inline(always)]
pub(crate) fn scalar_q4_0(blk: &[u8], out: &mut [f32]) {
    let [d0, d1, quants @ ..] = blk else { return };
    let d = f16::from_le_bytes([*d0, *d1]).to_f32();
    let (lo, hi) = out.split_at_mut((QK / 2).min(out.len()));
    for (j, &q) in quants.iter().enumerate().take(QK / 2) {
        if let (Some(l), Some(h)) = (lo.get_mut(j), hi.get_mut(j)) {
            *l = ((q & 0x0f) as i32 - 8) as f32 * d;
            *h = ((q >> 4) as i32 - 8) as f32 * d;
        }
    }
}

/// The portable implementation of [`TileOps`], and its definition.
#[derive(Clone, Copy)]
pub(crate) struct Scalar;

impl TileOps for Scalar {
    #[inline(always)]
    fn dot(self, q: &[f32], k: &[f32]) -> f32 {
        let n = q.len().min(k.len());
        let n8 = n / LANES * LANES;
        let mut acc = [0.0f32; LANES];
        for (qc, kc) in q[..n8].chunks_exact(LANES).zip(k[..n8].chunks_exact(LANES)) {
            for l in 0..LANES {
                acc[l] = kc[l].mul_add(qc[l], acc[l]);
            }
        }
        let mut s = hsum8(&acc);
        for i in n8..n {
            s = k[i].mul_add(q[i], s);
        }
        s
    }

    #[inline(always)]
    fn exp_sum(self, s: &mut [f32], m: f32) -> f32 {
        let mut sum = 0.0f32;
        for w in s.iter_mut() {
            *w = expf_ggml(*w - m);
            sum += *w;
        }
        sum
    }

    #[inline(always)]
    fn scale(self, acc: &mut [f32], a: f32) {
        for x in acc.iter_mut() {
            *x *= a;
        }
    }

    #[inline(always)]
    fn axpy(self, acc: &mut [f32], w: f32, v: &[f32]) {
        for (x, &vv) in acc.iter_mut().zip(v) {
            *x = w.mul_add(vv, *x);
        }
    }

    #[inline(always)]
    fn widen(self, src: &[f16], dst: &mut [f32]) {
        for (d, h) in dst.iter_mut().zip(src) {
            *d = h.to_f32();
        }
    }
}

/// One query: its vector (`head_dim` long) and the positions it sees, `first..n_kv`.
#[derive(Clone, Copy)]
pub struct FlashQuery<'a> {
    pub q: &'a [f32],
    pub first: usize,
    pub n_kv: usize,
}

/// The settings of a flash attention call.
#[derive(Clone, Copy, Debug)]
pub struct FlashParams {
    pub scale: f32,
    pub softcap: Option<f32>,
    /// Positions per tile ([`valid_tile`]).
    pub tile: usize,
}

/// Floats of scratch [`split_partials`] needs for `tile` and `head_dim`.
pub fn tile_scratch_len(tile: usize, head_dim: usize) -> usize {
    tile + 2 * tile * head_dim
}

/// The splits that positions `first..n_kv` touch.
pub fn splits(first: usize, n_kv: usize) -> std::ops::Range<usize> {
    if n_kv <= first {
        return 0..0;
    }
    first / SPLIT..n_kv.div_ceil(SPLIT)
}

/// `crate::flash::split_partials` with the tile steps of `ops`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn split_impl<O: TileOps>(
    ops: O,
    p: &FlashParams,
    qs: &[FlashQuery<'_>],
    keys: &PagedRows<'_>,
    values: &PagedRows<'_>,
    split: usize,
    states: &mut [f32],
    scratch: &mut [f32],
) -> bool {
    let hd = keys.head_dim;
    let sl = state_len(hd);
    let t = p.tile;
    let (s0, s1) = (split * SPLIT, (split + 1) * SPLIT);
    for st in states.chunks_exact_mut(sl).take(qs.len()) {
        st[0] = f32::NEG_INFINITY;
        st[1..].fill(0.0);
    }
    // The positions of this split some query sees.
    let lo = qs.iter().map(|q| q.first).min().unwrap_or(0).max(s0);
    let hi = qs.iter().map(|q| q.n_kv).max().unwrap_or(0).min(s1);
    if lo >= hi {
        return true;
    }
    let (scores, rest) = scratch.split_at_mut(t);
    let (kt, rest) = rest.split_at_mut(t * hd);
    let vt = &mut rest[..t * hd];
    let mut t0 = s0 + (lo - s0) / t * t;
    while t0 < hi {
        let t1 = (t0 + t).min(hi);
        let a = t0.max(lo);
        let n = t1 - a;
        if !keys.convert(ops, a, n, &mut kt[..n * hd])
            || !values.convert(ops, a, n, &mut vt[..n * hd])
        {
            return false;
        }
        for (q, st) in qs.iter().zip(states.chunks_exact_mut(sl)) {
            let (from, to) = (a.max(q.first), t1.min(q.n_kv));
            if from >= to {
                continue;
            }
            let rows = from - a..to - a;
            let s = &mut scores[..rows.len()];
            ops.scores(&q.q[..hd], &kt[rows.start * hd..rows.end * hd], hd, s);
            for o in s.iter_mut() {
                *o *= p.scale;
            }
            if let Some(cap) = p.softcap {
                // `cap · tanh(s / cap)`, as `crate::ops::softcap`.
                let inv = 1.0 / cap;
                for v in s.iter_mut() {
                    *v = (*v * inv).tanh() * cap;
                }
            }
            let tmax = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let (m_old, l_old) = (st[0], st[1]);
            let m = m_old.max(tmax);
            if m == f32::NEG_INFINITY {
                continue;
            }
            let alpha = expf_ggml(m_old - m);
            let sum = ops.exp_sum(s, m);
            st[0] = m;
            st[1] = l_old.mul_add(alpha, sum);
            let acc = &mut st[2..2 + hd];
            if alpha != 1.0 {
                ops.scale(acc, alpha);
            }
            ops.accumulate(acc, s, &vt[rows.start * hd..rows.end * hd], hd);
        }
        t0 += t;
    }
    true
}
