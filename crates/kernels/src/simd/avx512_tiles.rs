//! AVX-512 VNNI tile kernels: several tokens through interleaved weights of the 32-element
//! formats in `vec_dot`'s order, sixteen rows per register.
//!
//! - Q8_0: the panel holds, per block and lane (four elements), the sixteen rows' bytes as
//!   `w + 128` (unsigned), so one `vpdpbusd` against the token's four bytes broadcast, started
//!   from `-128 · Σ y` of the lane, gives each row's exact lane sum — the integers of AVX2's
//!   sign trick with `maddubs` + `madd`. The float part is the reference's: eight lane
//!   accumulators per row, `acc = fma(d_w·d_y, lane, acc)` block after block, then
//!   [`crate::lanes`]'s horizontal sum. Bit-identical to the scalar oracle.
//!
//! Tiles that do not fit (one token, rows that are not whole slabs of sixteen, other orders)
//! go to the AVX2 kernels. Every function here is `unsafe` and `#[target_feature]`: callers
//! must have checked [`crate::Isa::Avx512Vnni`]; [`crate::Kernels`] only hands them out after
//! that check.

#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use super::avx2;
use crate::order::Order;
use crate::quant::blocks::QK;
use crate::tile::Tile;

/// Lines (64 bytes) per block of a Q8_0 panel slab: eight lanes, then `d` over the rows.
const Q80_LINES: usize = 9;
/// Bytes of one interleaved Q8_0 block column (eight rows).
const Q80_COL: usize = 8 * 34;
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

/// Unpacks sixteen interleaved Q8_0 rows (groups at `g0`, `g1`, `nb` blocks) into `panel`.
#[inline(always)]
unsafe fn q8_0_panel(g0: *const u8, g1: *const u8, nb: usize, panel: *mut __m512i) {
    let bias = _mm512_set1_epi8(-128);
    for b in 0..nb {
        let (c0, c1) = (g0.add(b * Q80_COL), g1.add(b * Q80_COL));
        let p = panel.add(b * Q80_LINES);
        for l in 0..8 {
            let v = _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(_mm256_loadu_si256(c0.add(16 + 32 * l) as *const __m256i)),
                _mm256_loadu_si256(c1.add(16 + 32 * l) as *const __m256i),
            );
            p.add(l).write(_mm512_xor_si512(v, bias));
        }
        let d = _mm512_cvtph_ps(_mm256_set_m128i(
            _mm_loadu_si128(c1 as *const __m128i),
            _mm_loadu_si128(c0 as *const __m128i),
        ));
        p.add(8).write(_mm512_castps_si512(d));
    }
}

/// One token (Q8_0 blocks at `y`) through one slab (`nb` blocks of `panel`): lane r of the
/// result is row r · the token.
#[inline(always)]
unsafe fn q8_0_token(panel: *const __m512i, nb: usize, y: *const u8) -> __m512 {
    let mut acc = [_mm512_setzero_ps(); 8];
    let ones = _mm256_set1_epi8(1);
    for b in 0..nb {
        let p = panel.add(b * Q80_LINES);
        let yb = y.add(b * 34);
        let dy = avx2::h([*yb, *yb.add(1)]);
        let yq = yb.add(2);
        // -128 · (sum of each lane's four activation bytes).
        let sums = _mm256_dpbusd_epi32(
            _mm256_setzero_si256(),
            ones,
            _mm256_loadu_si256(yq as *const __m256i),
        );
        let mut bias = [0i32; 8];
        _mm256_storeu_si256(
            bias.as_mut_ptr() as *mut __m256i,
            _mm256_slli_epi32::<7>(sums),
        );
        let d = _mm512_mul_ps(_mm512_castsi512_ps(*p.add(8)), _mm512_set1_ps(dy));
        for l in 0..8 {
            let yl = _mm512_set1_epi32((yq.add(4 * l) as *const i32).read_unaligned());
            let s = _mm512_dpbusd_epi32(_mm512_set1_epi32(-bias[l]), *p.add(l), yl);
            acc[l] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(s), acc[l]);
        }
    }
    // The reference's horizontal sum, sixteen rows at once.
    _mm512_add_ps(
        _mm512_add_ps(_mm512_add_ps(acc[4], acc[0]), _mm512_add_ps(acc[6], acc[2])),
        _mm512_add_ps(_mm512_add_ps(acc[5], acc[1]), _mm512_add_ps(acc[7], acc[3])),
    )
}

/// Interleaved Q8_0 weights, several tokens, whole slabs of sixteen rows: the VNNI panel; the
/// AVX2 kernel for the rest.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn gemm_rows8_q8_0(t: &Tile) {
    let rows = t.rows();
    let whole = rows.start.is_multiple_of(16) && rows.end.is_multiple_of(16);
    let slabs = rows.len() / 16;
    if t.order().canonical(crate::quant::GgmlType::Q8_0) != Order::VecDot
        || t.tokens() < 2
        || !whole
        || slabs > MAX_SLABS
        || !t.cols().is_multiple_of(QK)
    {
        return avx2::gemm_rows8_q8_0(t);
    }
    let nb = t.cols() / QK;
    let (w, rb, x, xb) = (
        t.w().as_ptr(),
        t.w_row_bytes(),
        t.x().as_ptr(),
        t.x_row_bytes(),
    );
    let panel = panel_buffer(slabs * nb * Q80_LINES);
    for s in 0..slabs {
        let r = rows.start + 16 * s;
        q8_0_panel(
            w.add(r * rb),
            w.add((r + 8) * rb),
            nb,
            panel.add(s * nb * Q80_LINES),
        );
    }
    for k in 0..t.tokens() {
        let y = x.add(k * xb);
        for s in 0..slabs {
            let o = q8_0_token(panel.add(s * nb * Q80_LINES), nb, y);
            let mut v = [0.0f32; 16];
            _mm512_storeu_ps(v.as_mut_ptr(), o);
            t.store_rows(k, rows.start + 16 * s, &v);
        }
    }
}
