//! The tiles of flash attention (see [`crate::flash`], which runs them): the row formats
//! keys and values are read from, the per-ISA tile steps, and one split of one query set
//! computed tile by tile. Nothing here chooses an instruction set or knows the compute
//! context (so the SIMD modules can build on it).

use half::f16;

use crate::lanes::{expf_ggml, hsum8, LANES};

/// Positions of one split: the unit of work that threads share for a long context.
pub const SPLIT: usize = 256;

/// The default tile (positions scored and weighted together).
pub const DEFAULT_TILE: usize = 128;

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
    /// [`TileOps::scores`] for each query of `qs` (all with the same rows): row g of `out`
    /// (`out[g·stride..]`) gets the scores of `qs[g]`.
    fn scores_group(
        self,
        qs: &[FlashQuery<'_>],
        k: &[f32],
        hd: usize,
        out: &mut [f32],
        stride: usize,
    ) {
        scores_each(self, qs, 0, k, hd, out, stride)
    }
    /// [`TileOps::accumulate`] for each of `m` queries: the values of state g (at
    /// `states[g·sl + 2..]`, `hd` floats) take the weights of row g of `w` (`w[g·stride..]`,
    /// `v.len() / hd` of them).
    #[allow(clippy::too_many_arguments)]
    fn accumulate_group(
        self,
        m: usize,
        states: &mut [f32],
        sl: usize,
        w: &[f32],
        stride: usize,
        v: &[f32],
        hd: usize,
    ) {
        accumulate_each(self, 0..m, states, sl, w, stride, v, hd)
    }
    /// The largest of `s`, NaN ignored (−∞ where there is none): a fold of `f32::max`. Any
    /// order gives the same value, up to the sign of a zero, which no result depends on.
    fn max(self, s: &[f32]) -> f32 {
        s.iter().copied().fold(f32::NEG_INFINITY, f32::max)
    }
    /// `s[j] = exp(s[j] − m)` by ggml's exp.
    fn exp(self, s: &mut [f32], m: f32);
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

/// [`TileOps::scores`] for queries `from..` of `qs`, one at a time, into rows `g·stride`
/// of `out`.
#[inline(always)]
pub(crate) fn scores_each<O: TileOps>(
    ops: O,
    qs: &[FlashQuery<'_>],
    from: usize,
    k: &[f32],
    hd: usize,
    out: &mut [f32],
    stride: usize,
) {
    let n = k.len() / hd.max(1);
    for (g, q) in qs.iter().enumerate().skip(from) {
        ops.scores(&q.q[..hd], k, hd, &mut out[g * stride..g * stride + n]);
    }
}

/// [`TileOps::accumulate`] for the states `gs` (of `sl` floats in `states`), one at a time,
/// with weight rows `g·stride` of `w`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn accumulate_each<O: TileOps>(
    ops: O,
    gs: std::ops::Range<usize>,
    states: &mut [f32],
    sl: usize,
    w: &[f32],
    stride: usize,
    v: &[f32],
    hd: usize,
) {
    let n = v.len() / hd.max(1);
    for g in gs {
        let acc = &mut states[g * sl + 2..g * sl + 2 + hd];
        ops.accumulate(acc, &w[g * stride..g * stride + n], v, hd);
    }
}

/// Whether `m ≥ 2` queries' scores or weights (`m` rows of `n ≤ stride` floats in a buffer
/// of `rows_len`) and, where given, their states (`states_len` floats of `m` states of
/// `sl ≥ hd + 2`) have the shapes the SIMD group steps take for granted.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) fn group_fits(
    m: usize,
    n: usize,
    stride: usize,
    rows_len: usize,
    states: Option<(usize, usize, usize)>,
) -> bool {
    m >= 2
        && n <= stride
        && rows_len >= (m - 1) * stride + n
        && states.is_none_or(|(len, sl, hd)| sl >= hd + 2 && len >= m * sl)
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
    fn exp(self, s: &mut [f32], m: f32) {
        for w in s.iter_mut() {
            *w = expf_ggml(*w - m);
        }
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

/// Queries with the same rows of a tile that its steps take together, at most.
pub(crate) const GROUP: usize = 4;

/// Floats of scratch [`split_partials`] needs for `tile` and `head_dim`.
pub fn tile_scratch_len(tile: usize, head_dim: usize) -> usize {
    GROUP * tile + 2 * tile * head_dim
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
    let (scores, rest) = scratch.split_at_mut(GROUP * t);
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
        // Runs of consecutive queries that see the same rows of the tile, GROUP at most.
        let rows_of = |q: &FlashQuery<'_>| a.max(q.first)..t1.min(q.n_kv);
        let mut i = 0;
        while i < qs.len() {
            let rows = rows_of(&qs[i]);
            let mut m = 1;
            while m < GROUP && i + m < qs.len() && rows_of(&qs[i + m]) == rows {
                m += 1;
            }
            if rows.start < rows.end {
                let (k, v) = (
                    &kt[(rows.start - a) * hd..(rows.end - a) * hd],
                    &vt[(rows.start - a) * hd..(rows.end - a) * hd],
                );
                tile_step(
                    ops,
                    p,
                    &qs[i..i + m],
                    k,
                    v,
                    hd,
                    scores,
                    t,
                    &mut states[i * sl..(i + m) * sl],
                );
            }
            i += m;
        }
        t0 += t;
    }
    true
}

/// One tile's step for queries `qs` (at most [`GROUP`]) that all see the rows of `k` and `v`:
/// scores, scale and soft-cap, the new maximum, weights, sums and values of their states
/// (`qs.len()` states of `sl` floats). `scores` holds [`GROUP`] rows of `stride` floats.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn tile_step<O: TileOps>(
    ops: O,
    p: &FlashParams,
    qs: &[FlashQuery<'_>],
    k: &[f32],
    v: &[f32],
    hd: usize,
    scores: &mut [f32],
    stride: usize,
    states: &mut [f32],
) {
    let (m, n, sl) = (qs.len(), k.len() / hd, state_len(hd));
    ops.scores_group(qs, k, hd, scores, stride);
    let mut alphas = [1.0f32; GROUP];
    let mut live = [false; GROUP];
    for g in 0..m {
        let s = &mut scores[g * stride..g * stride + n];
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
        let tmax = ops.max(s);
        let m_old = states[g * sl];
        let mx = m_old.max(tmax);
        if mx == f32::NEG_INFINITY {
            continue;
        }
        live[g] = true;
        alphas[g] = expf_ggml(m_old - mx);
        states[g * sl] = mx;
        ops.exp(s, mx);
    }
    // Each query's sum in position order (the queries' chains side by side).
    let mut sums = [0.0f32; GROUP];
    for j in 0..n {
        for (g, sum) in sums.iter_mut().enumerate().take(m) {
            *sum += scores[g * stride + j];
        }
    }
    for g in 0..m {
        if !live[g] {
            continue;
        }
        let st = &mut states[g * sl..(g + 1) * sl];
        st[1] = st[1].mul_add(alphas[g], sums[g]);
        if alphas[g] != 1.0 {
            ops.scale(&mut st[2..2 + hd], alphas[g]);
        }
    }
    if live[..m].iter().all(|&l| l) {
        ops.accumulate_group(m, states, sl, scores, stride, v, hd);
    } else {
        for g in (0..m).filter(|&g| live[g]) {
            accumulate_each(ops, g..g + 1, states, sl, scores, stride, v, hd);
        }
    }
}
