//! Interleaved (eight-row) K-quant kernels: four activation bytes broadcast against the same
//! four quant bytes of eight rows. Q4_K in llama.cpp's repacked order (its AVX2 build
//! multiplies every Q4_K matrix with a multiple of eight rows through `repack.cpp`); Q6_K's
//! kernels are in `q6k_rows8`, reached through the same driver.

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
// exact in any order; the float part is `quant::repacked`'s, lane by lane.

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
pub(crate) unsafe fn k4_scales_rows8(s: *const u8) -> ([__m256i; 2], [__m256i; 2]) {
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

/// The arithmetic orders of the interleaved K-quant kernels: llama.cpp's repacked `gemv` and
/// `gemm` (see [`crate::quant::repacked`]; Q4_K), its `vec_dot` and `ggml-cpu/tiled` orders
/// (Q6_K).
pub(super) const GEMV: u8 = 1;
pub(super) const GEMM: u8 = 2;
pub(super) const VEC_DOT: u8 = 3;
pub(super) const TILED: u8 = 4;

/// Eight interleaved Q4_K rows (group at `g`, `nb` super-blocks) × `T` tokens (Q8_K rows at
/// `y`) in order `M`: lane `i` of result `t` is row `i` · token `t`.
#[inline(always)]
pub(super) unsafe fn q4_k_rows8<const T: usize, const M: u8>(
    g: *const u8,
    nb: usize,
    mut y: [*const u8; T],
) -> [__m256; T] {
    const COL: usize = 8 * 144;
    let m4 = _mm256_set1_epi8(0x0F);
    let mut acc = [_mm256_setzero_ps(); T];
    // The minimums' accumulators of the repacked orders.
    let mut accm = [_mm256_setzero_ps(); T];
    for b in 0..nb {
        let c = g.add(b * COL);
        prefetch_span(c.wrapping_add(PREFETCH_ROWS8), COL);
        let (sc, mn) = k4_scales_rows8(c.add(32));
        let q = c.add(128);
        let mp: [__m256i; 4] = arr!(4, _mm256_setzero_si256(), |k| _mm256_shuffle_epi8(
            mn[k / 2],
            pair_bytes(2 * (k % 2) as i8)
        ));
        let d = _mm256_cvtph_ps(_mm_loadu_si128(c as *const __m128i));
        let dmin = _mm256_cvtph_ps(_mm_loadu_si128(c.add(16) as *const __m128i));
        let dy: [__m256; T] = arr!(T, _mm256_setzero_ps(), |t| _mm256_set1_ps(
            (y[t] as *const f32).read_unaligned()
        ));
        let sums: [[__m256i; 4]; T] = arr!(T, [_mm256_setzero_si256(); 4], |t| q8k_pair_sums(y[t]));
        let mut isum = [_mm256_setzero_si256(); T];
        let mut msum = [_mm256_setzero_si256(); T];
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
                let m = _mm256_madd_epi16(mp[p], sums[t][p]);
                if M == GEMM {
                    // `gemm`: one fused multiply-add per pair of sub-blocks.
                    acc[t] =
                        _mm256_fmadd_ps(_mm256_cvtepi32_ps(v), _mm256_mul_ps(d, dy[t]), acc[t]);
                    accm[t] =
                        _mm256_fmadd_ps(_mm256_cvtepi32_ps(m), _mm256_mul_ps(dmin, dy[t]), accm[t]);
                } else {
                    isum[t] = _mm256_add_epi32(isum[t], v);
                    msum[t] = _mm256_add_epi32(msum[t], m);
                }
            }
        }
        for t in 0..T {
            if M == GEMV {
                let (fi, fm) = (_mm256_cvtepi32_ps(isum[t]), _mm256_cvtepi32_ps(msum[t]));
                acc[t] = _mm256_fmadd_ps(fi, _mm256_mul_ps(d, dy[t]), acc[t]);
                accm[t] = _mm256_fmadd_ps(fm, _mm256_mul_ps(dmin, dy[t]), accm[t]);
            }
            y[t] = y[t].add(292);
        }
    }
    arr!(T, _mm256_setzero_ps(), |t| _mm256_sub_ps(acc[t], accm[t]))
}

/// A K-quant with an interleaved kernel.
pub(super) trait KRows8 {
    const TY: crate::quant::GgmlType;
    /// Vectors of unpacked quants per super-block column that the batched path works from (0:
    /// it reads the layout directly).
    const UNPACKED: usize = 0;
    /// Eight rows at `g` (`nb` super-blocks) × `T` tokens at `y`, in order `M`.
    unsafe fn rows8<const T: usize, const M: u8>(
        g: *const u8,
        nb: usize,
        y: [*const u8; T],
    ) -> [__m256; T];
    /// Unpacks the quants of the eight rows at `g` into `q` (`UNPACKED` vectors per column).
    unsafe fn unpack(_g: *const u8, _nb: usize, _q: *mut __m256i) {}
    /// [`KRows8::rows8`] with the quants unpacked at `q`.
    unsafe fn rows8_unpacked<const T: usize, const M: u8>(
        g: *const u8,
        _q: *const __m256i,
        nb: usize,
        y: [*const u8; T],
    ) -> [__m256; T] {
        Self::rows8::<T, M>(g, nb, y)
    }
}

pub(super) struct Q4K;
impl KRows8 for Q4K {
    const TY: crate::quant::GgmlType = crate::quant::GgmlType::Q4_K;
    #[inline(always)]
    unsafe fn rows8<const T: usize, const M: u8>(
        g: *const u8,
        nb: usize,
        y: [*const u8; T],
    ) -> [__m256; T] {
        q4_k_rows8::<T, M>(g, nb, y)
    }
}

pub(super) struct Q6K;
impl KRows8 for Q6K {
    const TY: crate::quant::GgmlType = crate::quant::GgmlType::Q6_K;
    const UNPACKED: usize = 64;
    #[inline(always)]
    unsafe fn rows8<const T: usize, const M: u8>(
        g: *const u8,
        nb: usize,
        y: [*const u8; T],
    ) -> [__m256; T] {
        if M == TILED {
            let q = panel_buffer(nb * Self::UNPACKED);
            q6_k_unpack(g, nb, q);
            return q6_k_rows8_tiled::<T>(g, q, nb, y);
        }
        // `vec_dot`'s order reads the layout directly: nothing to unpack on the decode path.
        arr!(T, _mm256_setzero_ps(), |t| q6_k_rows8_vec_dot(g, nb, y[t]))
    }
    #[inline(always)]
    unsafe fn unpack(g: *const u8, nb: usize, q: *mut __m256i) {
        q6_k_unpack(g, nb, q)
    }
    #[inline(always)]
    unsafe fn rows8_unpacked<const T: usize, const M: u8>(
        g: *const u8,
        q: *const __m256i,
        nb: usize,
        y: [*const u8; T],
    ) -> [__m256; T] {
        if M == TILED {
            q6_k_rows8_tiled::<T>(g, q, nb, y)
        } else {
            arr!(T, _mm256_setzero_ps(), |t| q6_k_rows8_vec_dot(g, nb, y[t]))
        }
    }
}

/// Interleaved K-quant weights (whole groups of eight rows): tokens in cache-sized blocks, each
/// group of rows against four tokens at a time while the group stays in L1/L2.
#[inline(always)]
pub(super) unsafe fn gemm_interleaved_k<K: KRows8>(t: &Tile) {
    use crate::order::Order;
    use crate::quant::GgmlType;
    match t.order().canonical(K::TY) {
        Order::Gemv if K::TY == GgmlType::Q4_K => gemm_interleaved_k_in::<K, GEMV>(t),
        Order::Gemm if K::TY == GgmlType::Q4_K => gemm_interleaved_k_in::<K, GEMM>(t),
        Order::VecDot if K::TY == GgmlType::Q6_K => gemm_interleaved_k_in::<K, VEC_DOT>(t),
        Order::Tiled if K::TY == GgmlType::Q6_K => gemm_interleaved_k_in::<K, TILED>(t),
        // An order this kernel lacks (never handed out for it): the scalar definition.
        _ => crate::quant::interleave::gemm_scalar(K::TY, t),
    }
}

/// [`gemm_interleaved_k`] in order `M`.
#[inline(always)]
unsafe fn gemm_interleaved_k_in<K: KRows8, const M: u8>(t: &Tile) {
    if !whole_groups(t, K::TY) {
        return;
    }
    let nb = t.cols() / QK_K;
    let (w, x, xb) = (t.w().as_ptr(), t.x().as_ptr(), t.x_row_bytes());
    if t.tokens() == 1 {
        for r in t.rows().step_by(8) {
            store8(
                t,
                r,
                K::rows8::<1, M>(w.add(r * t.w_row_bytes()), nb, [x])[0],
            );
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
                let o = K::rows8_unpacked::<4, M>(g, q, nb, arr!(4, x, |i| x.add((k + i) * xb)));
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
                    K::rows8_unpacked::<1, M>(g, q, nb, [x.add(k * xb)])[0],
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
