//! Many tokens through eight rows of a 32-element format: the rows' quants unpacked once
//! into a transposed panel that every token runs through.

#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use super::*;
use crate::tile::Tile;

// ---------------------------------------------------------------------------------------------
// Many tokens through eight rows: the rows' quants are unpacked once into a panel, transposed
// so that each vector holds one lane (four consecutive elements) of all eight rows, and every
// token then runs through the panel with one multiply-add chain per lane — the same lanes and
// the same order as the single-row kernels, a third of the instructions.

/// A format of 32-element blocks with f16 scales whose quants the panel kernel can take.
pub(crate) trait Fmt32 {
    /// The format's entry in the type table.
    const TY: crate::quant::GgmlType;
    const BYTES: usize;
    /// Whether blocks carry a minimum (activations Q8_1, unsigned quants).
    const MIN: bool;
    const ABYTES: usize = if Self::MIN { 36 } else { 34 };
    const AQS: usize = if Self::MIN { 4 } else { 2 };
    /// Whether the products follow llama.cpp's repacked kernels ([`crate::order::Order::Gemv`]:
    /// a block's products summed as one integer per row, one fused multiply-add per block, no
    /// horizontal sum) instead of `vec_dot`'s eight lanes. Only for formats without a minimum.
    const REPACKED: bool = false;
    /// The block's 32 quants in element order (signed unless `MIN`).
    unsafe fn quants(wb: *const u8) -> __m256i;
    /// Block column `b` of an interleaved group at `g` (see [`crate::quant::interleave`]): the
    /// eight rows' scales and minimums as floats and the eight lanes of quants (elements
    /// `4l..4l+4` of every row in lane vector `l`).
    unsafe fn interleaved(g: *const u8, b: usize) -> (__m256, __m256, [__m256i; 8]);
}

macro_rules! nibble_fmt32 {
    ($t:ty, $ty:ident) => {
        nibble_fmt32!($t, $ty, false);
    };
    ($t:ty, $ty:ident, $repacked:expr) => {
        impl Fmt32 for $t {
            const TY: crate::quant::GgmlType = crate::quant::GgmlType::$ty;
            const BYTES: usize = <$t as Nibble>::BYTES;
            const MIN: bool = <$t as Nibble>::MIN;
            const REPACKED: bool = $repacked;
            #[inline(always)]
            unsafe fn quants(wb: *const u8) -> __m256i {
                quants::<$t>(wb)
            }
            #[inline(always)]
            unsafe fn interleaved(g: *const u8, b: usize) -> (__m256, __m256, [__m256i; 8]) {
                interleaved_block::<$t>(g, b)
            }
        }
    };
}
nibble_fmt32!(Q40, Q4_0);
nibble_fmt32!(Q40R, Q4_0, true);
nibble_fmt32!(Q41, Q4_1);
nibble_fmt32!(Q50, Q5_0);
nibble_fmt32!(Q51, Q5_1);

pub(crate) struct Q80;
impl Fmt32 for Q80 {
    const TY: crate::quant::GgmlType = crate::quant::GgmlType::Q8_0;
    const BYTES: usize = 34;
    const MIN: bool = false;
    #[inline(always)]
    unsafe fn quants(wb: *const u8) -> __m256i {
        _mm256_loadu_si256(wb.add(2) as *const __m256i)
    }
    #[inline(always)]
    unsafe fn interleaved(g: *const u8, b: usize) -> (__m256, __m256, [__m256i; 8]) {
        let c = g.add(b * 8 * 34);
        prefetch_span(c.wrapping_add(PREFETCH_ROWS8), 8 * 34);
        let d = _mm256_cvtph_ps(_mm_loadu_si128(c as *const __m128i));
        let lanes = arr!(8, _mm256_setzero_si256(), |l| _mm256_loadu_si256(
            c.add(16 + 32 * l) as *const __m256i
        ));
        (d, _mm256_setzero_ps(), lanes)
    }
}

/// 8×8 transpose of 32-bit elements: output vector L holds element L of each input, in order.
#[inline(always)]
pub(super) unsafe fn transpose_8x8(r: &[__m256i; 8]) -> [__m256i; 8] {
    let t0 = _mm256_unpacklo_epi32(r[0], r[1]);
    let t1 = _mm256_unpackhi_epi32(r[0], r[1]);
    let t2 = _mm256_unpacklo_epi32(r[2], r[3]);
    let t3 = _mm256_unpackhi_epi32(r[2], r[3]);
    let t4 = _mm256_unpacklo_epi32(r[4], r[5]);
    let t5 = _mm256_unpackhi_epi32(r[4], r[5]);
    let t6 = _mm256_unpacklo_epi32(r[6], r[7]);
    let t7 = _mm256_unpackhi_epi32(r[6], r[7]);
    let u0 = _mm256_unpacklo_epi64(t0, t2);
    let u1 = _mm256_unpackhi_epi64(t0, t2);
    let u2 = _mm256_unpacklo_epi64(t1, t3);
    let u3 = _mm256_unpackhi_epi64(t1, t3);
    let u4 = _mm256_unpacklo_epi64(t4, t6);
    let u5 = _mm256_unpackhi_epi64(t4, t6);
    let u6 = _mm256_unpacklo_epi64(t5, t7);
    let u7 = _mm256_unpackhi_epi64(t5, t7);
    [
        _mm256_permute2x128_si256::<0x20>(u0, u4),
        _mm256_permute2x128_si256::<0x20>(u1, u5),
        _mm256_permute2x128_si256::<0x20>(u2, u6),
        _mm256_permute2x128_si256::<0x20>(u3, u7),
        _mm256_permute2x128_si256::<0x31>(u0, u4),
        _mm256_permute2x128_si256::<0x31>(u1, u5),
        _mm256_permute2x128_si256::<0x31>(u2, u6),
        _mm256_permute2x128_si256::<0x31>(u3, u7),
    ]
}

/// Vectors per block in a panel: eight lanes (twice, absolute values and signs, for signed
/// formats), then the eight rows' scales and minimums as floats.
pub(super) const fn panel_stride(min: bool) -> usize {
    if min {
        8 + 2
    } else {
        16 + 1
    }
}

/// Unpacks eight rows × `nb` blocks starting at `w` (row stride `rb`) into `panel`.
#[inline(always)]
pub(super) unsafe fn build_panel<T: Fmt32>(
    w: *const u8,
    rb: usize,
    nb: usize,
    panel: *mut __m256i,
) {
    for b in 0..nb {
        let mut rows = [_mm256_setzero_si256(); 8];
        let mut d = [0i16; 8];
        let mut m = [0i16; 8];
        for i in 0..8 {
            let wb = w.add(i * rb + b * T::BYTES);
            rows[i] = T::quants(wb);
            d[i] = (wb as *const i16).read_unaligned();
            m[i] = (wb.add(2) as *const i16).read_unaligned();
        }
        let half8 = |h: &[i16; 8]| _mm256_cvtph_ps(_mm_loadu_si128(h.as_ptr() as *const __m128i));
        store_panel_block::<T>(panel, b, &transpose_8x8(&rows), half8(&d), half8(&m));
    }
}

/// Unpacks the eight interleaved rows of the group at `g` into `panel`: the lanes come
/// ready-made, no transposing needed.
#[inline(always)]
pub(super) unsafe fn build_panel_interleaved<T: Fmt32>(
    g: *const u8,
    nb: usize,
    panel: *mut __m256i,
) {
    for b in 0..nb {
        let (d, m, lanes) = T::interleaved(g, b);
        store_panel_block::<T>(panel, b, &lanes, d, m);
    }
}

/// Writes block `b` of a panel from its eight lanes (quants, signed unless `MIN`), scales
/// and minimums.
#[inline(always)]
pub(super) unsafe fn store_panel_block<T: Fmt32>(
    panel: *mut __m256i,
    b: usize,
    lanes: &[__m256i; 8],
    d: __m256,
    m: __m256,
) {
    let out = panel.add(b * panel_stride(T::MIN));
    if T::MIN {
        for l in 0..8 {
            *out.add(l) = lanes[l];
        }
        *out.add(8) = _mm256_castps_si256(d);
        *out.add(9) = _mm256_castps_si256(m);
    } else {
        for l in 0..8 {
            *out.add(2 * l) = _mm256_sign_epi8(lanes[l], lanes[l]);
            *out.add(2 * l + 1) = lanes[l];
        }
        *out.add(16) = _mm256_castps_si256(d);
    }
}

/// One token (`y`, `nb` activation blocks) through a panel: the eight rows' outputs.
#[inline(always)]
pub(super) unsafe fn panel_token<T: Fmt32>(
    panel: *const __m256i,
    nb: usize,
    y: *const u8,
) -> __m256 {
    let ps = panel_stride(T::MIN);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); 8];
    let mut summs = _mm256_setzero_ps();
    for b in 0..nb {
        let p = panel.add(b * ps);
        let yb = y.add(b * T::ABYTES);
        let (dy, sy) = halves2(yb);
        let yq = yb.add(T::AQS) as *const i32;
        if T::MIN {
            let d = _mm256_mul_ps(_mm256_castsi256_ps(*p.add(8)), _mm256_set1_ps(dy));
            summs = _mm256_add_ps(
                summs,
                _mm256_mul_ps(_mm256_castsi256_ps(*p.add(9)), _mm256_set1_ps(sy)),
            );
            for l in 0..8 {
                let yl = _mm256_set1_epi32(yq.add(l).read_unaligned());
                let s = _mm256_cvtepi32_ps(_mm256_madd_epi16(
                    ones,
                    _mm256_maddubs_epi16(*p.add(l), yl),
                ));
                acc[l] = _mm256_fmadd_ps(d, s, acc[l]);
            }
        } else if T::REPACKED {
            let d = _mm256_mul_ps(_mm256_castsi256_ps(*p.add(16)), _mm256_set1_ps(dy));
            let mut isum = _mm256_setzero_si256();
            for l in 0..8 {
                let yl = _mm256_sign_epi8(
                    _mm256_set1_epi32(yq.add(l).read_unaligned()),
                    *p.add(2 * l + 1),
                );
                let s = _mm256_madd_epi16(ones, _mm256_maddubs_epi16(*p.add(2 * l), yl));
                isum = _mm256_add_epi32(isum, s);
            }
            acc[0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), d, acc[0]);
        } else {
            let d = _mm256_mul_ps(_mm256_castsi256_ps(*p.add(16)), _mm256_set1_ps(dy));
            for l in 0..8 {
                let yl = _mm256_sign_epi8(
                    _mm256_set1_epi32(yq.add(l).read_unaligned()),
                    *p.add(2 * l + 1),
                );
                let s = _mm256_cvtepi32_ps(_mm256_madd_epi16(
                    ones,
                    _mm256_maddubs_epi16(*p.add(2 * l), yl),
                ));
                acc[l] = _mm256_fmadd_ps(d, s, acc[l]);
            }
        }
    }
    if T::MIN {
        _mm256_add_ps(hsum_rows(&acc), summs)
    } else if T::REPACKED {
        acc[0]
    } else {
        hsum_rows(&acc)
    }
}

thread_local! {
    /// Each thread's panel buffer, grown as needed and kept (no allocation per call).
    static PANEL: std::cell::RefCell<Vec<__m256i>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// This thread's panel buffer, at least `need` vectors long. The pointer stays valid until the
/// next call on this thread (the buffer lives as long as the thread and only grows here), so a
/// kernel uses it for one tile and does not call this again meanwhile.
#[inline(always)]
pub(super) fn panel_buffer(need: usize) -> *mut __m256i {
    PANEL.with(|cell| {
        let mut buf = cell.borrow_mut();
        if buf.len() < need {
            // SAFETY: only the AVX2 kernels call this, on a CPU that `Kernels` checked for AVX2.
            buf.resize(need, unsafe { _mm256_setzero_si256() });
        }
        buf.as_mut_ptr()
    })
}

/// Whether a tile covers whole groups of eight interleaved rows; when it does not, computes it
/// with the scalar reference for the layout instead (and says so).
#[inline(always)]
pub(super) fn whole_groups(t: &Tile, ty: crate::quant::GgmlType) -> bool {
    let whole = t.rows().start.is_multiple_of(8) && t.rows().end.is_multiple_of(8);
    if !whole {
        crate::quant::interleave::gemm_scalar(ty, t);
    }
    whole
}

/// Rows `r..r + 8k` of a tile with several tokens, through panels; returns the first row not
/// done.
#[inline(always)]
pub(super) unsafe fn panel_rows<T: Fmt32>(t: &Tile, r: usize) -> usize {
    let nb = t.cols() / QK;
    let rb = t.w_row_bytes();
    panel_rows_with::<T>(t, r, |w, panel| build_panel::<T>(w, rb, nb, panel))
}

/// [`panel_rows`] with the panel of the eight rows at `w` made by `build(w, panel)`.
#[inline(always)]
pub(super) unsafe fn panel_rows_with<T: Fmt32>(
    t: &Tile,
    mut r: usize,
    build: impl Fn(*const u8, *mut __m256i),
) -> usize {
    let nb = t.cols() / QK;
    let panel = panel_buffer(nb * panel_stride(T::MIN));
    let first = r;
    let tb = token_block(t.x_row_bytes());
    let mut t0 = 0;
    while t0 < t.tokens() {
        let t1 = (t0 + tb).min(t.tokens());
        r = first;
        while r + 8 <= t.rows().end {
            build(t.w().as_ptr().add(r * t.w_row_bytes()), panel);
            for k in t0..t1 {
                let o = panel_token::<T>(panel, nb, t.x().as_ptr().add(k * t.x_row_bytes()));
                let mut v = [0.0f32; 8];
                _mm256_storeu_ps(v.as_mut_ptr(), o);
                for (i, x) in v.iter().enumerate() {
                    t.store(k, r + i, *x);
                }
            }
            r += 8;
        }
        t0 = t1;
    }
    r
}

/// Tokens per block of a batched product: as many as keep their activations (`row_bytes`
/// each) within about half of L2, so that every weight row runs past activations in cache
/// rather than streaming them from L3 once per row. A multiple of eight.
#[inline(always)]
pub(super) fn token_block(row_bytes: usize) -> usize {
    ((192 << 10) / row_bytes.max(1)).clamp(8, 1 << 16) / 8 * 8
}

/// Interleaved Q4_0/Q4_1 weights (whole groups of eight rows).
#[inline(always)]
pub(super) unsafe fn gemm_interleaved<T: Fmt32>(t: &Tile) {
    if T::TY == crate::quant::GgmlType::Q4_0 && !T::REPACKED && repacked_order(t) {
        return gemm_interleaved::<Q40R>(t);
    }
    if !whole_groups(t, T::TY) {
        return;
    }
    let nb = t.cols() / QK;
    let w = t.w().as_ptr();
    if t.tokens() >= 2 {
        panel_rows_with::<T>(t, t.rows().start, |g, panel| {
            build_panel_interleaved::<T>(g, nb, panel)
        });
    } else {
        for r in t.rows().step_by(8) {
            let g = w.add(r * t.w_row_bytes());
            store8(t, r, interleaved_rows8::<T>(g, nb, t.x().as_ptr()));
        }
    }
}

// Public tile kernels: `name => generic kernel::<format>`, each compiled for AVX2.
avx2_tiles! {
    gemm_rows8_q4_0 => gemm_interleaved::<Q40>,
    gemm_rows8_q4_1 => gemm_interleaved::<Q41>,
    gemm_rows8_q5_0 => gemm_interleaved::<Q50>,
    gemm_rows8_q5_1 => gemm_interleaved::<Q51>,
    gemm_rows8_q8_0 => gemm_interleaved::<Q80>,
    gemm_q4_0 => gemm_nibble::<Q40>,
    gemm_q4_1 => gemm_nibble::<Q41>,
    gemm_q5_0 => gemm_nibble::<Q50>,
    gemm_q5_1 => gemm_nibble::<Q51>,
}

/// Whether a tile asks for llama.cpp's repacked order (its format's `Gemv`).
#[inline(always)]
pub(super) fn repacked_order(t: &Tile) -> bool {
    use crate::order::Order;
    matches!(t.order(), Order::Gemv | Order::Gemm)
}

#[inline(always)]
pub(super) unsafe fn gemm_nibble<T: Nibble + Fmt32>(t: &Tile) {
    if T::TY == crate::quant::GgmlType::Q4_0 && !T::REPACKED && repacked_order(t) {
        return gemm_nibble::<Q40R>(t);
    }
    let nb = t.cols() / QK;
    let (w, rb, x, xb) = (
        t.w().as_ptr(),
        t.w_row_bytes(),
        t.x().as_ptr(),
        t.x_row_bytes(),
    );
    let mut r = t.rows().start;
    if t.tokens() >= 2 {
        r = panel_rows::<T>(t, r);
    } else {
        if T::QH.is_none() {
            while r + 8 <= t.rows().end {
                store8(t, r, nibble_rows8::<T>(w.add(r * rb), rb, nb, x));
                r += 8;
            }
        } else {
            while r + 4 <= t.rows().end {
                let o = nibble_tile::<T, 4, 1>(w.add(r * rb), rb, nb, x, xb);
                for (i, v) in o.iter().enumerate() {
                    t.store(0, r + i, v[0]);
                }
                r += 4;
            }
        }
    }
    if T::REPACKED {
        // Rows short of a group of eight (a matrix whose row count is not a multiple of eight
        // is not repacked by llama.cpp, so only a caller's own choice comes here).
        for r in r..t.rows().end {
            for k in 0..t.tokens() {
                let v = crate::quant::repacked::dot_q4_0_q8_0(t.cols(), t.w_row(r), t.x_row(k));
                t.store(k, r, v);
            }
        }
        return;
    }
    for r in r..t.rows().end {
        let wr = w.add(r * rb);
        let mut k = 0;
        while k + 4 <= t.tokens() {
            let o = nibble_tile::<T, 1, 4>(wr, rb, nb, x.add(k * xb), xb);
            for (i, v) in o[0].iter().enumerate() {
                t.store(k + i, r, *v);
            }
            k += 4;
        }
        while k < t.tokens() {
            let o = nibble_tile::<T, 1, 1>(wr, rb, nb, x.add(k * xb), xb);
            t.store(k, r, o[0][0]);
            k += 1;
        }
    }
}

/// Q8_0 × Q8_0 for `R` rows at `w` (stride `rb`) and `N` tokens at `x` (stride `xb`).
#[inline(always)]
pub(super) unsafe fn q8_0_tile<const R: usize, const N: usize>(
    w: *const u8,
    rb: usize,
    nb: usize,
    x: *const u8,
    xb: usize,
) -> [[f32; N]; R] {
    let mut acc = [[_mm256_setzero_ps(); N]; R];
    for b in 0..nb {
        let mut dy = [0.0f32; N];
        let mut qy = [_mm256_setzero_si256(); N];
        for k in 0..N {
            let yb = x.add(k * xb + b * 34);
            dy[k] = halves2(yb).0;
            qy[k] = _mm256_loadu_si256(yb.add(2) as *const __m256i);
        }
        for i in 0..R {
            let wb = w.add(i * rb + b * 34);
            _mm_prefetch::<_MM_HINT_T0>(wb.wrapping_add(PREFETCH) as *const i8);
            let dx = halves2(wb).0;
            let qx = _mm256_loadu_si256(wb.add(2) as *const __m256i);
            let ax = _mm256_sign_epi8(qx, qx);
            for k in 0..N {
                let q = dot_us8(ax, _mm256_sign_epi8(qy[k], qx));
                acc[i][k] = _mm256_fmadd_ps(_mm256_set1_ps(dx * dy[k]), q, acc[i][k]);
            }
        }
    }
    arr!(R, [0.0f32; N], |i| arr!(N, 0.0f32, |k| hsum(acc[i][k])))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn gemm_q8_0(t: &Tile) {
    let nb = t.cols() / QK;
    let (w, rb, x, xb) = (
        t.w().as_ptr(),
        t.w_row_bytes(),
        t.x().as_ptr(),
        t.x_row_bytes(),
    );
    let mut r = t.rows().start;
    if t.tokens() >= 2 {
        r = panel_rows::<Q80>(t, r);
    } else {
        while r + 4 <= t.rows().end {
            let o = q8_0_tile::<4, 1>(w.add(r * rb), rb, nb, x, xb);
            for (i, v) in o.iter().enumerate() {
                t.store(0, r + i, v[0]);
            }
            r += 4;
        }
    }
    for r in r..t.rows().end {
        let wr = w.add(r * rb);
        let mut k = 0;
        while k + 4 <= t.tokens() {
            let o = q8_0_tile::<1, 4>(wr, rb, nb, x.add(k * xb), xb);
            for (i, v) in o[0].iter().enumerate() {
                t.store(k + i, r, *v);
            }
            k += 4;
        }
        while k < t.tokens() {
            let o = q8_0_tile::<1, 1>(wr, rb, nb, x.add(k * xb), xb);
            t.store(k, r, o[0][0]);
            k += 1;
        }
    }
}
