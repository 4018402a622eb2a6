//! Interleaved (eight-row) Q6_K kernels in llama.cpp's two orders for it: `vec_dot`'s eight
//! lanes (one token, and batches of up to seven) and `ggml-cpu/tiled`'s (batches of eight or
//! more); see [`crate::quant::kquants`]. The layout (`crate::quant::interleave`) gives, for
//! each half `n` and position `kk`, the four bytes of elements `128n + 32m + 4kk..+4` (m =
//! 0..4) of the eight rows — exactly what llama.cpp's lane `kk` of chunk `4n + m` holds — so
//! the lanes stay separate vectors (rows in their lanes) to the end.

#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use super::*;

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

pub(crate) const Q6K_COL: usize = 8 * 210;

/// The offset correction `32 (sc_2k·bsum_2k + sc_2k+1·bsum_2k+1)` of lane `k` for eight rows
/// (`pairs`: [`q6_k_column_scales`]'s) against the Q8_K block at `y`.
#[inline(always)]
unsafe fn q6_k_corrections(pairs: &[__m256i; 8], y: *const u8) -> [__m256i; 8] {
    let bs = _mm256_loadu_si256(y.add(260) as *const __m256i);
    arr!(8, _mm256_setzero_si256(), |k| {
        let bk = _mm256_permutevar8x32_epi32(bs, _mm256_set1_epi32(k as i32));
        _mm256_slli_epi32(_mm256_madd_epi16(pairs[k], bk), 5)
    })
}

/// Eight interleaved Q6_K rows (group at `g`, `nb` super-blocks) × one token (Q8_K row at
/// `y`) in `vec_dot`'s order: per super-block eight integer lanes per row, each added with
/// `fma(d·d_y, lane, acc)` into its own accumulator, the lanes summed by the reference tree.
#[inline(always)]
pub(super) unsafe fn q6_k_rows8_vec_dot(g: *const u8, nb: usize, mut y: *const u8) -> __m256 {
    let mut acc = [_mm256_setzero_ps(); 8];
    for b in 0..nb {
        let c = g.add(b * Q6K_COL);
        prefetch_span(c.wrapping_add(PREFETCH_ROWS8), Q6K_COL);
        let (scv, pairs) = q6_k_column_scales(c);
        let corr = q6_k_corrections(&pairs, y);
        let mut lanes = [_mm256_setzero_si256(); 8];
        for n in 0..2 {
            for kk in 0..8 {
                let w = c.add(144 + 96 * (8 * n + kk));
                let ld = |o: usize| _mm256_loadu_si256(w.add(o) as *const __m256i);
                let q = q6_k_quants(ld(0), ld(32), ld(64));
                for m in 0..4 {
                    let yq = y.add(4 + 128 * n + 32 * m + 4 * kk) as *const i32;
                    let p = _mm256_maddubs_epi16(q[m], _mm256_set1_epi32(yq.read_unaligned()));
                    // Elements 4kk.. of chunk 4n + m belong to group 2(4n + m) + kk / 4.
                    let v = _mm256_madd_epi16(p, scv[8 * n + 2 * m + kk / 4]);
                    lanes[kk] = _mm256_add_epi32(lanes[kk], v);
                }
            }
        }
        let d = _mm256_cvtph_ps(_mm_loadu_si128(c as *const __m128i));
        let dd = _mm256_mul_ps(_mm256_set1_ps((y as *const f32).read_unaligned()), d);
        for kk in 0..8 {
            let l = _mm256_cvtepi32_ps(_mm256_sub_epi32(lanes[kk], corr[kk]));
            acc[kk] = _mm256_fmadd_ps(dd, l, acc[kk]);
        }
        y = y.add(292);
    }
    hsum_rows(&acc)
}

/// Unpacks the quants of eight interleaved Q6_K rows (group at `g`, `nb` super-blocks) into
/// `q`: 64 vectors per column, vector `32n + 8m + kk` holding elements `128n + 32m + 4kk..+4`
/// of the eight rows, unsigned.
#[inline(always)]
pub(crate) unsafe fn q6_k_unpack(g: *const u8, nb: usize, q: *mut __m256i) {
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
/// `T` tokens (Q8_K rows at `y`) in `ggml-cpu/tiled`'s order: per super-block the exact
/// Σ scale·(q − 32)·y of each row, `r = d·s1`, `acc = fma(r, d_y, acc)`. Two `maddubs` results
/// fit an i16 (2 * 2 * 63 * 128 = 32256) before each multiply by a group's scale.
#[inline(always)]
pub(super) unsafe fn q6_k_rows8_tiled<const T: usize>(
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
        let d = _mm256_cvtph_ps(_mm_loadu_si128(c as *const __m128i));
        for t in 0..T {
            let corr = q6_k_corrections(&pairs, y[t]);
            let mut s1 = isum[t];
            for v in &corr {
                s1 = _mm256_sub_epi32(s1, *v);
            }
            let r = _mm256_mul_ps(d, _mm256_cvtepi32_ps(s1));
            let dy = _mm256_set1_ps((y[t] as *const f32).read_unaligned());
            acc[t] = _mm256_fmadd_ps(r, dy, acc[t]);
            y[t] = y[t].add(292);
        }
    }
    acc
}
