//! AVX-512 VNNI tile kernels: several tokens through interleaved weights of the 32-element
//! formats (Q4_1, Q5_0, Q5_1, Q8_0) in `vec_dot`'s order, sixteen rows per register.
//!
//! The panel holds, per block and lane (four elements), the sixteen rows' quants as unsigned
//! bytes: as they are for the formats with a minimum, `w + 128` for the signed ones, whose
//! `vpdpbusd` against the token's four bytes broadcast then starts from `-128 · Σ y` of the
//! lane. Either way each row's lane sum is exact — the integers of AVX2's `maddubs` + `madd`.
//! The float part is the reference's: eight lane accumulators per row, `acc = fma(d_w·d_y,
//! lane, acc)` block after block, the minimums' `m·s` summed apart, then [`crate::lanes`]'s
//! horizontal sum. Bit-identical to the scalar oracle.
//!
//! Tiles that do not fit (one token, rows that are not whole slabs of sixteen, other orders)
//! go to the AVX2 kernels. Every function here is `unsafe` and `#[target_feature]`: callers
//! must have checked [`crate::Isa::Avx512Vnni`]; [`crate::Kernels`] only hands them out after
//! that check.

#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use super::avx2::{self, Fmt32};
use crate::order::Order;
use crate::quant::blocks::QK;
use crate::tile::Tile;

/// Lines (64 bytes) per block of a panel slab: eight lanes, `d`, and the minimums (formats
/// with a minimum only).
const LINES: usize = 10;
/// Most slabs of sixteen rows a tile takes at once.
const MAX_SLABS: usize = 4;

thread_local! {
    /// Each thread's panel, grown as needed and kept (no allocation per call).
    static PANEL: std::cell::RefCell<Vec<__m512i>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// This thread's panel, at least `lines` vectors long; valid until the next call on this
/// thread (it lives as long as the thread and only grows here).
fn panel_buffer(lines: usize) -> *mut __m512i {
    PANEL.with(|cell| {
        let mut buf = cell.borrow_mut();
        if buf.len() < lines {
            // SAFETY: only these kernels call this, on a CPU `Kernels` checked for AVX-512.
            buf.resize(lines, unsafe { _mm512_setzero_si512() });
        }
        buf.as_mut_ptr()
    })
}

/// Two 256-bit halves as one register, `lo` in the low half.
#[inline(always)]
unsafe fn join(lo: __m256i, hi: __m256i) -> __m512i {
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
}

/// Unpacks sixteen interleaved rows of format `T` (groups at `g0`, `g1`, `nb` blocks) into
/// `panel`: the lanes of both groups side by side (signed quants as `w + 128`), then `d` and
/// the minimums as floats.
#[inline(always)]
unsafe fn build_panel<T: Fmt32>(g0: *const u8, g1: *const u8, nb: usize, panel: *mut __m512i) {
    let bias = _mm512_set1_epi8(-128);
    for b in 0..nb {
        let (d0, m0, l0) = T::interleaved(g0, b);
        let (d1, m1, l1) = T::interleaved(g1, b);
        let p = panel.add(b * LINES);
        for l in 0..8 {
            let v = join(l0[l], l1[l]);
            p.add(l)
                .write(if T::MIN { v } else { _mm512_xor_si512(v, bias) });
        }
        let halves = |a: __m256, b: __m256| join(_mm256_castps_si256(a), _mm256_castps_si256(b));
        p.add(8).write(halves(d0, d1));
        p.add(9).write(halves(m0, m1));
    }
}

/// One token (activation blocks at `y`) through one slab (`nb` blocks of `panel`): lane r of
/// the result is row r · the token, in `vec_dot`'s order.
#[inline(always)]
unsafe fn token<T: Fmt32>(panel: *const __m512i, nb: usize, y: *const u8) -> __m512 {
    let mut acc = [_mm512_setzero_ps(); 8];
    let mut summs = _mm512_setzero_ps();
    let ones = _mm256_set1_epi8(1);
    for b in 0..nb {
        let p = panel.add(b * LINES);
        let yb = y.add(b * T::ABYTES);
        let (dy, sy) = avx2::halves2(yb);
        let yq = yb.add(T::AQS);
        let d = _mm512_mul_ps(_mm512_castsi512_ps(*p.add(8)), _mm512_set1_ps(dy));
        // Signed formats: each lane starts from -128 · (the sum of its four activation
        // bytes), which cancels the +128 of the stored quants.
        let mut bias = [0i32; 8];
        if T::MIN {
            summs = _mm512_add_ps(
                summs,
                _mm512_mul_ps(_mm512_castsi512_ps(*p.add(9)), _mm512_set1_ps(sy)),
            );
        } else {
            let sums = _mm256_dpbusd_epi32(
                _mm256_setzero_si256(),
                ones,
                _mm256_loadu_si256(yq as *const __m256i),
            );
            _mm256_storeu_si256(
                bias.as_mut_ptr() as *mut __m256i,
                _mm256_slli_epi32::<7>(sums),
            );
        }
        for l in 0..8 {
            let yl = _mm512_set1_epi32((yq.add(4 * l) as *const i32).read_unaligned());
            let s = _mm512_dpbusd_epi32(_mm512_set1_epi32(-bias[l]), *p.add(l), yl);
            acc[l] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(s), acc[l]);
        }
    }
    // The reference's horizontal sum, sixteen rows at once.
    let sum = _mm512_add_ps(
        _mm512_add_ps(_mm512_add_ps(acc[4], acc[0]), _mm512_add_ps(acc[6], acc[2])),
        _mm512_add_ps(_mm512_add_ps(acc[5], acc[1]), _mm512_add_ps(acc[7], acc[3])),
    );
    if T::MIN {
        _mm512_add_ps(sum, summs)
    } else {
        sum
    }
}

/// Interleaved weights of format `T`, several tokens, whole slabs of sixteen rows: the VNNI
/// panel; `fallback` (the AVX2 kernel) for the rest.
#[inline(always)]
unsafe fn gemm_panels<T: Fmt32>(t: &Tile, fallback: unsafe fn(&Tile)) {
    let rows = t.rows();
    let whole = rows.start.is_multiple_of(16) && rows.end.is_multiple_of(16);
    let slabs = rows.len() / 16;
    if t.order().canonical(T::TY) != Order::VecDot
        || t.tokens() < 2
        || !whole
        || slabs > MAX_SLABS
        || !t.cols().is_multiple_of(QK)
    {
        return fallback(t);
    }
    let nb = t.cols() / QK;
    // The kernel reads `nb` blocks of every row: the rows must hold them.
    let blocks_fit =
        T::TY.row_bytes(t.cols()) == Some(t.w_row_bytes()) && nb * T::ABYTES <= t.x_row_bytes();
    if !blocks_fit {
        return fallback(t);
    }
    let (w, rb, x, xb) = (
        t.w().as_ptr(),
        t.w_row_bytes(),
        t.x().as_ptr(),
        t.x_row_bytes(),
    );
    let panel = panel_buffer(slabs * nb * LINES);
    for s in 0..slabs {
        let r = rows.start + 16 * s;
        build_panel::<T>(
            w.add(r * rb),
            w.add((r + 8) * rb),
            nb,
            panel.add(s * nb * LINES),
        );
    }
    for k in 0..t.tokens() {
        let y = x.add(k * xb);
        for s in 0..slabs {
            let o = token::<T>(panel.add(s * nb * LINES), nb, y);
            let mut v = [0.0f32; 16];
            _mm512_storeu_ps(v.as_mut_ptr(), o);
            t.store_rows(k, rows.start + 16 * s, &v);
        }
    }
}

/// Declares the public tile kernels: `name => format, AVX2 fallback`.
macro_rules! vnni_tiles {
    ($($name:ident => $t:ty, $fallback:path),* $(,)?) => {
        $(
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
            pub unsafe fn $name(t: &Tile) {
                gemm_panels::<$t>(t, $fallback)
            }
        )*
    };
}

vnni_tiles! {
    gemm_rows8_q4_1 => avx2::Q41, avx2::gemm_rows8_q4_1,
    gemm_rows8_q5_0 => avx2::Q50, avx2::gemm_rows8_q5_0,
    gemm_rows8_q5_1 => avx2::Q51, avx2::gemm_rows8_q5_1,
    gemm_rows8_q8_0 => avx2::Q80, avx2::gemm_rows8_q8_0,
}
