//! Interleaved (eight-row) Q4_K and Q6_K kernels: four activation bytes broadcast against
//! the same four quant bytes of eight rows.

#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use super::*;
use crate::tile::Tile;

// ---------------------------------------------------------------------------------------------
// Interleaved K-quants (eight rows; see `crate::quant::interleave`). Each 32-byte vector holds
// the same four quant bytes of the eight rows, so one broadcast of four activation bytes meets
// all eight rows in one multiply, and a row's results stay in its lane to the end. The products
// of one 32-element sub-block are summed in i16 before the one multiply by the rows' scales
// (eight `maddubs` results of 4-bit quants: |sum| <= 8 * 2 * 15 * 128 = 30720). Integer sums are
// exact in any order; the float part is `kdot`'s, lane by lane, so every lane equals the
// single-row kernels.

/// Shuffle indices putting byte `j` (0..4) of each dword in the low bytes of both its i16
/// halves (the high bytes zero).
#[inline(always)]
pub(super) unsafe fn dup_byte(j: i8) -> __m256i {
    let f = |d: i8| i32::from_le_bytes([(4 * d + j) as u8, 0x80, (4 * d + j) as u8, 0x80]);
    _mm256_setr_epi32(f(0), f(1), f(2), f(3), f(0), f(1), f(2), f(3))
}

/// Shuffle indices putting bytes `j` and `j + 1` of each dword in the low bytes of its two i16
/// halves.
#[inline(always)]
pub(super) unsafe fn pair_bytes(j: i8) -> __m256i {
    let f = |d: i8| i32::from_le_bytes([(4 * d + j) as u8, 0x80, (4 * d + j + 1) as u8, 0x80]);
    _mm256_setr_epi32(f(0), f(1), f(2), f(3), f(0), f(1), f(2), f(3))
}

/// The 6-bit scales and mins of eight Q4_K rows from their three interleaved words at `s`:
/// (`[sc0..3, sc4..7]`, `[m0..3, m4..7]`), each dword the row of its lane (the word trick of
/// [`k4_scales_vec`], lane by lane).
#[inline(always)]
pub(super) unsafe fn k4_scales_rows8(s: *const u8) -> ([__m256i; 2], [__m256i; 2]) {
    let (m1, m2, m3) = (
        _mm256_set1_epi32(0x3f3f_3f3f),
        _mm256_set1_epi32(0x0f0f_0f0f),
        _mm256_set1_epi32(0x0303_0303),
    );
    let u = |k: usize| _mm256_loadu_si256(s.add(32 * k) as *const __m256i);
    let (u0, u1, u2) = (u(0), u(1), u(2));
    let high = |v: __m256i| _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(v, 6), m3), 4);
    let sc = [
        _mm256_and_si256(u0, m1),
        _mm256_or_si256(_mm256_and_si256(u2, m2), high(u0)),
    ];
    let m = [
        _mm256_and_si256(u1, m1),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(u2, 4), m2), high(u1)),
    ];
    (sc, m)
}

/// The sums of each 32-element sub-block of a Q8_K block at `y`, in pairs `(s_2k, s_2k+1)`
/// broadcast to every dword of vector `k`.
#[inline(always)]
pub(super) unsafe fn q8k_pair_sums(y: *const u8) -> [__m256i; 4] {
    let bs = y.add(260);
    let s = _mm_hadd_epi16(
        _mm_loadu_si128(bs as *const __m128i),
        _mm_loadu_si128(bs.add(16) as *const __m128i),
    );
    let s = _mm256_broadcastsi128_si256(s);
    [
        _mm256_shuffle_epi32::<0x00>(s),
        _mm256_shuffle_epi32::<0x55>(s),
        _mm256_shuffle_epi32::<0xAA>(s),
        _mm256_shuffle_epi32::<0xFF>(s),
    ]
}

/// Eight interleaved Q4_K rows (group at `g`, `nb` super-blocks) × `T` tokens (Q8_K rows at
/// `y`): lane `i` of result `t` is row `i` · token `t`.
#[inline(always)]
pub(super) unsafe fn q4_k_rows8<const T: usize>(
    g: *const u8,
    nb: usize,
    mut y: [*const u8; T],
) -> [__m256; T] {
    const COL: usize = 8 * 144;
    let m4 = _mm256_set1_epi8(0x0F);
    let mut acc = [_mm256_setzero_ps(); T];
    for b in 0..nb {
        let c = g.add(b * COL);
        prefetch_span(c.wrapping_add(PREFETCH_ROWS8), COL);
        let (sc, mn) = k4_scales_rows8(c.add(32));
        let q = c.add(128);
        let mut isum = [_mm256_setzero_si256(); T];
        for p in 0..4 {
            // Sub-blocks 2p (low nibbles) and 2p + 1 (high nibbles).
            let mut lo = [_mm256_setzero_si256(); T];
            let mut hi = [_mm256_setzero_si256(); T];
            for k in 0..8 {
                let w = _mm256_loadu_si256(q.add(32 * (8 * p + k)) as *const __m256i);
                let wl = _mm256_and_si256(w, m4);
                let wh = _mm256_and_si256(_mm256_srli_epi16(w, 4), m4);
                for t in 0..T {
                    let yq = y[t].add(4 + 64 * p + 4 * k);
                    let yl = _mm256_set1_epi32((yq as *const i32).read_unaligned());
                    let yh = _mm256_set1_epi32((yq.add(32) as *const i32).read_unaligned());
                    lo[t] = _mm256_add_epi16(lo[t], _mm256_maddubs_epi16(wl, yl));
                    hi[t] = _mm256_add_epi16(hi[t], _mm256_maddubs_epi16(wh, yh));
                }
            }
            let s = sc[p / 2];
            let j = 2 * (p % 2) as i8;
            let (sl, sh) = (
                _mm256_shuffle_epi8(s, dup_byte(j)),
                _mm256_shuffle_epi8(s, dup_byte(j + 1)),
            );
            for t in 0..T {
                let v =
                    _mm256_add_epi32(_mm256_madd_epi16(lo[t], sl), _mm256_madd_epi16(hi[t], sh));
                isum[t] = _mm256_add_epi32(isum[t], v);
            }
        }
        let mp: [__m256i; 4] = arr!(4, _mm256_setzero_si256(), |k| _mm256_shuffle_epi8(
            mn[k / 2],
            pair_bytes(2 * (k % 2) as i8)
        ));
        let d = _mm256_cvtph_ps(_mm_loadu_si128(c as *const __m128i));
        let dmin = _mm256_cvtph_ps(_mm_loadu_si128(c.add(16) as *const __m128i));
        for t in 0..T {
            let s = q8k_pair_sums(y[t]);
            let mut msum = _mm256_madd_epi16(mp[0], s[0]);
            for k in 1..4 {
                msum = _mm256_add_epi32(msum, _mm256_madd_epi16(mp[k], s[k]));
            }
            let dy = _mm256_set1_ps((y[t] as *const f32).read_unaligned());
            let v = _mm256_sub_ps(
                _mm256_mul_ps(_mm256_mul_ps(d, dy), _mm256_cvtepi32_ps(isum[t])),
                _mm256_mul_ps(_mm256_mul_ps(dmin, dy), _mm256_cvtepi32_ps(msum)),
            );
            acc[t] = _mm256_add_ps(acc[t], v);
            y[t] = y[t].add(292);
        }
    }
    acc
}

/// Shuffle indices putting the signed bytes `j` and `k` (0..4) of each dword in the high
/// bytes of its two i16 halves (the low bytes zero), for `(j, k)` = `(0, 0)`, `(1, 1)`, `(2, 2)`,
/// `(3, 3)`, `(0, 1)`, `(2, 3)`: an arithmetic shift right by 8 then sign-extends them. In
/// memory, so that no pattern is built at run time.
pub(super) static HIGH_BYTES: [[i8; 32]; 6] = {
    let pairs = [(0, 0), (1, 1), (2, 2), (3, 3), (0, 1), (2, 3)];
    let mut out = [[0i8; 32]; 6];
    let mut p = 0;
    while p < 6 {
        let mut d = 0;
        while d < 8 {
            let base = 4 * (d % 4) as i8;
            out[p][4 * d] = -128;
            out[p][4 * d + 1] = base + pairs[p].0;
            out[p][4 * d + 2] = -128;
            out[p][4 * d + 3] = base + pairs[p].1;
            d += 1;
        }
        p += 1;
    }
    out
};

/// Signed scales of eight interleaved Q6_K rows (scale words `s`) as i16 pairs, each dword the
/// row of its lane: `(sc_j, sc_j)` for `pat` = `j % 4` (word `j / 4`), or `(sc_2k, sc_2k+1)`
/// for `pat` = 4 + `k % 2` (word `k / 2`); see [`HIGH_BYTES`].
#[inline(always)]
pub(super) unsafe fn q6_k_scales(word: __m256i, pat: usize) -> __m256i {
    let idx = _mm256_loadu_si256(HIGH_BYTES[pat].as_ptr() as *const __m256i);
    _mm256_srai_epi16(_mm256_shuffle_epi8(word, idx), 8)
}

/// The four unsigned 6-bit quant vectors of elements `128n + 32m + 4kk..+4` (m = 0..4) of eight
/// interleaved Q6_K rows, from their low-bit words `la` (`ql` word `16n + kk`), `lb` (word
/// `16n + 8 + kk`) and high-bit word `hb` (`qh` word `8n + kk`).
#[inline(always)]
pub(crate) unsafe fn q6_k_quants(la: __m256i, lb: __m256i, hb: __m256i) -> [__m256i; 4] {
    let m4 = _mm256_set1_epi8(0x0F);
    [
        _mm256_or_si256(
            _mm256_and_si256(la, m4),
            _mm256_slli_epi16(_mm256_and_si256(hb, _mm256_set1_epi8(3)), 4),
        ),
        _mm256_or_si256(
            _mm256_and_si256(lb, m4),
            _mm256_slli_epi16(_mm256_and_si256(hb, _mm256_set1_epi8(12)), 2),
        ),
        _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16(la, 4), m4),
            _mm256_and_si256(hb, _mm256_set1_epi8(0x30)),
        ),
        _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16(lb, 4), m4),
            _mm256_and_si256(_mm256_srli_epi16(hb, 2), _mm256_set1_epi8(0x30)),
        ),
    ]
}

/// The per-column scale vectors of eight interleaved Q6_K rows (column at `c`): `(sc_j, sc_j)`
/// for each group `j`, and the pairs `(sc_2k, sc_2k+1)` for the offset correction.
#[inline(always)]
pub(super) unsafe fn q6_k_column_scales(c: *const u8) -> ([__m256i; 16], [__m256i; 8]) {
    let sw: [__m256i; 4] = arr!(4, _mm256_setzero_si256(), |k| _mm256_loadu_si256(
        c.add(16 + 32 * k) as *const __m256i
    ));
    (
        arr!(16, _mm256_setzero_si256(), |j| q6_k_scales(
            sw[j / 4],
            j % 4
        )),
        arr!(8, _mm256_setzero_si256(), |k| q6_k_scales(
            sw[k / 2],
            4 + k % 2
        )),
    )
}

/// Adds one Q6_K column's products (`isum[t]`: Σ scale · Σ q·y with quants taken unsigned) to
/// `acc[t]` and moves each token to its next Q8_K block. The offset of 32 comes off as
/// `32 Σ scale·bsum`; the float part is `kdot`'s `(d·dy)·isum − (dmin·dy)·msum` with
/// dmin = msum = 0 (x − 0 is x).
#[inline(always)]
pub(super) unsafe fn q6_k_column_done<const T: usize>(
    c: *const u8,
    pairs: &[__m256i; 8],
    isum: &[__m256i; T],
    y: &mut [*const u8; T],
    acc: &mut [__m256; T],
) {
    let d = _mm256_cvtph_ps(_mm_loadu_si128(c as *const __m128i));
    for t in 0..T {
        let bs = _mm256_loadu_si256(y[t].add(260) as *const __m256i);
        let mut corr = _mm256_setzero_si256();
        for (k, p) in pairs.iter().enumerate() {
            let bk = _mm256_permutevar8x32_epi32(bs, _mm256_set1_epi32(k as i32));
            corr = _mm256_add_epi32(corr, _mm256_madd_epi16(*p, bk));
        }
        let is = _mm256_sub_epi32(isum[t], _mm256_slli_epi32(corr, 5));
        let dy = _mm256_set1_ps((y[t] as *const f32).read_unaligned());
        let v = _mm256_mul_ps(_mm256_mul_ps(d, dy), _mm256_cvtepi32_ps(is));
        acc[t] = _mm256_add_ps(acc[t], v);
        y[t] = y[t].add(292);
    }
}

pub(super) const Q6K_COL: usize = 8 * 210;

/// Eight interleaved Q6_K rows (group at `g`, `nb` super-blocks) × one token (Q8_K row at `y`):
/// lane `i` is row `i` · the token. The layout's quant vectors are read in order, the four
/// quant vectors of a position built from one load of each of its three words; two `maddubs`
/// results fit an i16 (2 * 2 * 63 * 128 = 32256) before each multiply by a group's scale.
#[inline(always)]
pub(super) unsafe fn q6_k_rows8_1(g: *const u8, nb: usize, y: *const u8) -> __m256 {
    let mut acc = [_mm256_setzero_ps()];
    let mut y = [y];
    for b in 0..nb {
        let c = g.add(b * Q6K_COL);
        prefetch_span(c.wrapping_add(PREFETCH_ROWS8), Q6K_COL);
        let (scv, pairs) = q6_k_column_scales(c);
        let mut isum = _mm256_setzero_si256();
        for n in 0..2 {
            for kp in 0..4 {
                let mut s16 = [_mm256_setzero_si256(); 4];
                for u in 0..2 {
                    let kk = 2 * kp + u;
                    let w = c.add(144 + 96 * (8 * n + kk));
                    let ld = |o: usize| _mm256_loadu_si256(w.add(o) as *const __m256i);
                    let q = q6_k_quants(ld(0), ld(32), ld(64));
                    for m in 0..4 {
                        let yq = y[0].add(4 + 128 * n + 32 * m + 4 * kk) as *const i32;
                        let yv = _mm256_set1_epi32(yq.read_unaligned());
                        s16[m] = _mm256_add_epi16(s16[m], _mm256_maddubs_epi16(q[m], yv));
                    }
                }
                for m in 0..4 {
                    let v = _mm256_madd_epi16(s16[m], scv[8 * n + 2 * m + kp / 2]);
                    isum = _mm256_add_epi32(isum, v);
                }
            }
        }
        q6_k_column_done(c, &pairs, &[isum], &mut y, &mut acc);
    }
    acc[0]
}

/// Unpacks the quants of eight interleaved Q6_K rows (group at `g`, `nb` super-blocks) into
/// `q`: 64 vectors per column, vector `32n + 8m + kk` holding elements `128n + 32m + 4kk..+4`
/// of the eight rows, unsigned.
#[inline(always)]
pub(super) unsafe fn q6_k_unpack(g: *const u8, nb: usize, q: *mut __m256i) {
    for b in 0..nb {
        let c = g.add(b * Q6K_COL);
        let o = q.add(64 * b);
        for n in 0..2 {
            for kk in 0..8 {
                let w = c.add(144 + 96 * (8 * n + kk));
                let ld = |o: usize| _mm256_loadu_si256(w.add(o) as *const __m256i);
                for (m, v) in q6_k_quants(ld(0), ld(32), ld(64)).iter().enumerate() {
                    o.add(32 * n + 8 * m + kk).write(*v);
                }
            }
        }
    }
}

/// Eight interleaved Q6_K rows (group at `g`, its quants unpacked by [`q6_k_unpack`] at `q`) ×
/// `T` tokens (Q8_K rows at `y`): lane `i` of result `t` is row `i` · token `t`.
#[inline(always)]
pub(super) unsafe fn q6_k_rows8_unpacked<const T: usize>(
    g: *const u8,
    q: *const __m256i,
    nb: usize,
    mut y: [*const u8; T],
) -> [__m256; T] {
    let mut acc = [_mm256_setzero_ps(); T];
    for b in 0..nb {
        let c = g.add(b * Q6K_COL);
        let qc = q.add(64 * b);
        let (scv, pairs) = q6_k_column_scales(c);
        let mut isum = [_mm256_setzero_si256(); T];
        for n in 0..2 {
            for m in 0..4 {
                for kp in 0..4 {
                    // Elements 128n + 32m + 8kp .. + 8, of group 8n + 2m + kp / 2.
                    let mut s16 = [_mm256_setzero_si256(); T];
                    for u in 0..2 {
                        let kk = 2 * kp + u;
                        let qv = qc.add(32 * n + 8 * m + kk).read();
                        for t in 0..T {
                            let yq = y[t].add(4 + 128 * n + 32 * m + 4 * kk) as *const i32;
                            let yv = _mm256_set1_epi32(yq.read_unaligned());
                            s16[t] = _mm256_add_epi16(s16[t], _mm256_maddubs_epi16(qv, yv));
                        }
                    }
                    let sc = scv[8 * n + 2 * m + kp / 2];
                    for t in 0..T {
                        isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(s16[t], sc));
                    }
                }
            }
        }
        q6_k_column_done(c, &pairs, &isum, &mut y, &mut acc);
    }
    acc
}

/// A K-quant with an interleaved kernel.
pub(super) trait KRows8 {
    const TY: crate::quant::GgmlType;
    /// Vectors of unpacked quants per super-block column that the batched path works from (0:
    /// it reads the layout directly).
    const UNPACKED: usize = 0;
    /// Eight rows at `g` (`nb` super-blocks) × `T` tokens at `y`.
    unsafe fn rows8<const T: usize>(g: *const u8, nb: usize, y: [*const u8; T]) -> [__m256; T];
    /// Unpacks the quants of the eight rows at `g` into `q` (`UNPACKED` vectors per column).
    unsafe fn unpack(_g: *const u8, _nb: usize, _q: *mut __m256i) {}
    /// [`KRows8::rows8`] with the quants unpacked at `q`.
    unsafe fn rows8_unpacked<const T: usize>(
        g: *const u8,
        _q: *const __m256i,
        nb: usize,
        y: [*const u8; T],
    ) -> [__m256; T] {
        Self::rows8::<T>(g, nb, y)
    }
}

pub(super) struct Q4K;
impl KRows8 for Q4K {
    const TY: crate::quant::GgmlType = crate::quant::GgmlType::Q4_K;
    #[inline(always)]
    unsafe fn rows8<const T: usize>(g: *const u8, nb: usize, y: [*const u8; T]) -> [__m256; T] {
        q4_k_rows8::<T>(g, nb, y)
    }
}

pub(super) struct Q6K;
impl KRows8 for Q6K {
    const TY: crate::quant::GgmlType = crate::quant::GgmlType::Q6_K;
    const UNPACKED: usize = 64;
    #[inline(always)]
    unsafe fn rows8<const T: usize>(g: *const u8, nb: usize, y: [*const u8; T]) -> [__m256; T] {
        arr!(T, _mm256_setzero_ps(), |t| q6_k_rows8_1(g, nb, y[t]))
    }
    #[inline(always)]
    unsafe fn unpack(g: *const u8, nb: usize, q: *mut __m256i) {
        q6_k_unpack(g, nb, q)
    }
    #[inline(always)]
    unsafe fn rows8_unpacked<const T: usize>(
        g: *const u8,
        q: *const __m256i,
        nb: usize,
        y: [*const u8; T],
    ) -> [__m256; T] {
        q6_k_rows8_unpacked::<T>(g, q, nb, y)
    }
}

/// Interleaved K-quant weights (whole groups of eight rows): tokens in cache-sized blocks, each
/// group of rows against four tokens at a time while the group stays in L1/L2.
#[inline(always)]
pub(super) unsafe fn gemm_interleaved_k<K: KRows8>(t: &Tile) {
    if !whole_groups(t, K::TY) {
        return;
    }
    let nb = t.cols() / QK_K;
    let (w, x, xb) = (t.w().as_ptr(), t.x().as_ptr(), t.x_row_bytes());
    if t.tokens() == 1 {
        for r in t.rows().step_by(8) {
            store8(t, r, K::rows8::<1>(w.add(r * t.w_row_bytes()), nb, [x])[0]);
        }
        return;
    }
    let q = panel_buffer((nb * K::UNPACKED).max(1));
    let tb = token_block(xb);
    let mut t0 = 0;
    while t0 < t.tokens() {
        let t1 = (t0 + tb).min(t.tokens());
        for r in t.rows().step_by(8) {
            let g = w.add(r * t.w_row_bytes());
            if K::UNPACKED > 0 {
                K::unpack(g, nb, q);
            }
            let mut k = t0;
            while k + 4 <= t1 {
                let o = K::rows8_unpacked::<4>(g, q, nb, arr!(4, x, |i| x.add((k + i) * xb)));
                for (i, v) in o.iter().enumerate() {
                    store8_at(t, k + i, r, *v);
                }
                k += 4;
            }
            while k < t1 {
                store8_at(
                    t,
                    k,
                    r,
                    K::rows8_unpacked::<1>(g, q, nb, [x.add(k * xb)])[0],
                );
                k += 1;
            }
        }
        t0 = t1;
    }
}

avx2_tiles! {
    gemm_rows8_q4_k => gemm_interleaved_k::<Q4K>,
    gemm_rows8_q6_k => gemm_interleaved_k::<Q6K>,
}
