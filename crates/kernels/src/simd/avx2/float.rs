//! Float weights (F32, F16, BF16) in the reference's two reduction orders.

#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use super::*;
use crate::tile::Tile;

// ---------------------------------------------------------------------------------------------
// Float weights (F32, F16, BF16) against activations of the same type, in the reference's two
// orders: `vec` (four 8-lane accumulators over 32-element steps; single tokens) and `gemm`
// (one 8-lane accumulator; batches).

use crate::quant::float::{vec_tail, Elem, BF16, F16, F32};

/// A float element type's eight-element load (its scalar properties are those of
/// [`crate::quant::float::Elem`]).
pub(super) trait FloatElem: Elem {
    unsafe fn load8(p: *const u8) -> __m256;
}

impl FloatElem for F32 {
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        _mm256_loadu_ps(p as *const f32)
    }
}

impl FloatElem for F16 {
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
}

impl FloatElem for BF16 {
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(
            _mm_loadu_si128(p as *const __m128i),
        )))
    }
}

/// The `vec_dot` order over the first `n` elements of `w` and `x` (at most what they hold).
#[inline(always)]
pub(super) unsafe fn fdot_vec<E: FloatElem>(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let n = n.min(w.len() / E::BYTES).min(x.len() / E::BYTES);
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let np = n & !31;
    for i in (0..np).step_by(32) {
        for j in 0..4 {
            let e = (i + 8 * j) * E::BYTES;
            acc[j] = _mm256_fmadd_ps(E::load8(wp.add(e)), E::load8(xp.add(e)), acc[j]);
        }
    }
    vec_tail::<E>(reduce4(&acc), w, x, np..n)
}

#[inline(always)]
pub(super) unsafe fn fdot_gemm<E: FloatElem>(n: usize, w: *const u8, x: *const u8) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for i in (0..n / 8 * 8).step_by(8) {
        acc = _mm256_fmadd_ps(
            E::load8(w.add(i * E::BYTES)),
            E::load8(x.add(i * E::BYTES)),
            acc,
        );
    }
    hsum(acc)
}

/// How far ahead of the current row the single-token float kernel prefetches.
const FLOAT_PREFETCH: usize = 4096;

#[inline(always)]
pub(super) unsafe fn gemm_float<E: FloatElem>(t: &Tile) {
    let n = t.cols();
    let (w, rb, x, xb) = (
        t.w().as_ptr(),
        t.w_row_bytes(),
        t.x().as_ptr(),
        t.x_row_bytes(),
    );
    if t.order() != crate::order::Order::Sgemm {
        for r in t.rows() {
            // Every line of the weights a few rows ahead (one line per row leaves the rest to
            // the hardware prefetcher, which falls behind on a bandwidth-bound decode).
            let wr = w.add(r * rb);
            prefetch_span(wr.wrapping_add(FLOAT_PREFETCH), rb);
            for k in 0..t.tokens() {
                let v = fdot_vec::<E>(n, t.w_row(r), t.x_row(k));
                t.store(k, r, v);
            }
        }
        return;
    }
    // Batched: the rows are taken in blocks whose weights fit in L2; for each block, four
    // tokens at a time are converted to f32 into an L1-sized buffer and every 3-row tile of the
    // block runs past them (3 rows × 4 tokens, one accumulator each). Streaming the weights from
    // L2 costs fewer bytes per multiply-add than streaming the activations would.
    const TOK: usize = 4;
    let need = TOK * n;
    let xf: *mut f32 = XF32.with(|cell| {
        let mut buf = cell.borrow_mut();
        if buf.len() < need {
            buf.resize(need, 0.0);
        }
        buf.as_mut_ptr()
    });
    let rows_per_block = ((256 << 10) / rb.max(1)).clamp(3, 384) / 3 * 3;
    let mut r0 = t.rows().start;
    while r0 < t.rows().end {
        let r1 = (r0 + rows_per_block).min(t.rows().end);
        let mut k = 0;
        while k < t.tokens() {
            let nk = (t.tokens() - k).min(TOK);
            for kk in 0..nk {
                for i in (0..n / 8 * 8).step_by(8) {
                    _mm256_storeu_ps(
                        xf.add(kk * n + i),
                        E::load8(x.add((k + kk) * xb + i * E::BYTES)),
                    );
                }
            }
            let mut r = r0;
            while r < r1 {
                let nr = (r1 - r).min(3);
                let wr = w.add(r * rb);
                let out = |ri: usize, kk: usize, v: f32| t.store(k + kk, r + ri, v);
                match (nr, nk) {
                    (3, 4) => float_tile::<E, 3, 4>(wr, rb, xf, n, out),
                    (2, 4) => float_tile::<E, 2, 4>(wr, rb, xf, n, out),
                    (1, 4) => float_tile::<E, 1, 4>(wr, rb, xf, n, out),
                    _ => {
                        for ri in 0..nr {
                            for kk in 0..nk {
                                float_tile::<E, 1, 1>(
                                    w.add((r + ri) * rb),
                                    rb,
                                    xf.add(kk * n),
                                    n,
                                    |_, _, v| out(ri, kk, v),
                                );
                            }
                        }
                    }
                }
                r += nr;
            }
            k += nk;
        }
        r0 = r1;
    }
}

/// `R` weight rows (stride `rb`) × `N` f32 activation rows (stride `n`), batched order: one
/// 8-lane accumulator per output.
#[inline(always)]
pub(super) unsafe fn float_tile<E: FloatElem, const R: usize, const N: usize>(
    w: *const u8,
    rb: usize,
    x: *const f32,
    n: usize,
    out: impl Fn(usize, usize, f32),
) {
    let mut acc = [[_mm256_setzero_ps(); N]; R];
    for i in (0..n).step_by(8) {
        let mut wv = [_mm256_setzero_ps(); R];
        for ri in 0..R {
            wv[ri] = E::load8(w.add(ri * rb + i * E::BYTES));
        }
        for kk in 0..N {
            let xv = _mm256_loadu_ps(x.add(kk * n + i));
            for ri in 0..R {
                acc[ri][kk] = _mm256_fmadd_ps(wv[ri], xv, acc[ri][kk]);
            }
        }
    }
    for ri in 0..R {
        for kk in 0..N {
            out(ri, kk, hsum(acc[ri][kk]));
        }
    }
}

thread_local! {
    /// Each thread's f32 copy of a block of float activations.
    static XF32: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

macro_rules! float_avx2 {
    ($e:ty, $dot:ident, $dotb:ident, $gemm:ident) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
            fdot_vec::<$e>(n, w, a)
        }

        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $dotb(n: usize, w: &[u8], a: &[u8]) -> f32 {
            let n = n.min(w.len() / <$e>::BYTES).min(a.len() / <$e>::BYTES);
            fdot_gemm::<$e>(n, w.as_ptr(), a.as_ptr())
        }

        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $gemm(t: &Tile) {
            gemm_float::<$e>(t)
        }
    };
}

float_avx2!(F32, dot_f32, dot_f32_batched, gemm_f32);
float_avx2!(F16, dot_f16, dot_f16_batched, gemm_f16);
float_avx2!(BF16, dot_bf16, dot_bf16_batched, gemm_bf16);
