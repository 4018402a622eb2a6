//! Whole-tile kernels for the 32-element formats: rows in the vector lanes for one token,
//! one row at a time for several, and one token through interleaved (eight-row) weights.

#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use super::*;
use crate::tile::Tile;

// ---------------------------------------------------------------------------------------------
// Whole-tile kernels. They compute every output with exactly the operations of the dot
// products above (same lanes, same fused multiply-adds, same horizontal sum), but share loads
// between rows or tokens: a single token goes through eight rows at once with the rows in the
// vector lanes (one accumulator per lane of the reference, transposed); several tokens go
// through one row at a time, reusing each unpacked weight block for every token.

/// How far ahead of each weight row the tile kernels prefetch.
pub(super) const PREFETCH: usize = 2048;

/// Prefetches every cache line of the `bytes` bytes at `p` (a block that spans several lines:
/// fetching only its first line leaves the others to the hardware prefetcher, which measured
/// here falls behind — Qwen2.5-1.5B decode went from 10 to 15 tokens/s).
#[inline(always)]
pub(super) unsafe fn prefetch_span(p: *const u8, bytes: usize) {
    for line in 0..bytes.div_ceil(64) {
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(64 * line) as *const i8);
    }
}

/// How far ahead of its current block column the interleaved kernels prefetch.
pub(super) const PREFETCH_ROWS8: usize = 4096;

/// Two halves at `p` (a block's scale and min or sum) as f32, with a full 64-bit load.
#[inline(always)]
pub(crate) unsafe fn halves2(p: *const u8) -> (f32, f32) {
    let v = _mm_cvtph_ps(_mm_loadl_epi64(p as *const __m128i));
    (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_movehdup_ps(v)))
}

/// The reference horizontal sum, for eight rows at once: element r of the result is
/// `((a4+a0) + (a6+a2)) + ((a5+a1) + (a7+a3))` over the lanes a of row r.
#[inline(always)]
pub(super) unsafe fn hsum_rows(a: &[__m256; 8]) -> __m256 {
    _mm256_add_ps(
        _mm256_add_ps(_mm256_add_ps(a[4], a[0]), _mm256_add_ps(a[6], a[2])),
        _mm256_add_ps(_mm256_add_ps(a[5], a[1]), _mm256_add_ps(a[7], a[3])),
    )
}

/// Dword `j` of eight 16-byte rows, one row per lane: `[r0 r1 r2 r3 | r4 r5 r6 r7]`.
#[inline(always)]
pub(super) unsafe fn transpose_8x4(p: &[*const u8; 8]) -> [__m256i; 4] {
    let q: [__m128i; 8] = arr!(8, _mm_setzero_si128(), |i| _mm_loadu_si128(
        p[i] as *const __m128i
    ));
    let y04 = _mm256_set_m128i(q[4], q[0]);
    let y15 = _mm256_set_m128i(q[5], q[1]);
    let y26 = _mm256_set_m128i(q[6], q[2]);
    let y37 = _mm256_set_m128i(q[7], q[3]);
    let t0 = _mm256_unpacklo_epi32(y04, y15);
    let t1 = _mm256_unpackhi_epi32(y04, y15);
    let t2 = _mm256_unpacklo_epi32(y26, y37);
    let t3 = _mm256_unpackhi_epi32(y26, y37);
    [
        _mm256_unpacklo_epi64(t0, t2),
        _mm256_unpackhi_epi64(t0, t2),
        _mm256_unpacklo_epi64(t1, t3),
        _mm256_unpackhi_epi64(t1, t3),
    ]
}

/// Eight f16 values at `p[i] + off` (one per row) as f32.
#[inline(always)]
pub(super) unsafe fn gather_halves(p: &[*const u8; 8], off: usize) -> __m256 {
    let h: [i16; 8] = arr!(8, 0i16, |i| (p[i].add(off) as *const i16).read_unaligned());
    _mm256_cvtph_ps(_mm_setr_epi16(
        h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7],
    ))
}

#[inline(always)]
pub(super) unsafe fn store8(t: &Tile, r: usize, v: __m256) {
    store8_at(t, 0, r, v)
}

/// Rows `r..r + 8` of token `k`'s output from the lanes of `v`.
#[inline(always)]
pub(super) unsafe fn store8_at(t: &Tile, k: usize, r: usize, v: __m256) {
    let mut o = [0.0f32; 8];
    _mm256_storeu_ps(o.as_mut_ptr(), v);
    for (i, x) in o.iter().enumerate() {
        t.store(k, r + i, *x);
    }
}

/// What distinguishes the 32-element nibble formats (Q4_0, Q4_1, Q5_0, Q5_1) in the kernels.
pub(crate) trait Nibble {
    /// Weight block bytes.
    const BYTES: usize;
    /// Offset of the 16 nibble bytes in a block.
    const QS: usize;
    /// Offset of the 32-bit word of fifth bits (Q5_x).
    const QH: Option<usize>;
    /// Whether blocks carry a minimum (then activations are Q8_1 with a sum, and the quants are
    /// unsigned); otherwise quants are signed and activations Q8_0.
    const MIN: bool;
    /// Activation block bytes and the offset of its quants.
    const ABYTES: usize = if Self::MIN { 36 } else { 34 };
    const AQS: usize = if Self::MIN { 4 } else { 2 };
}

pub(super) struct Q40;
/// Q4_0 in llama.cpp's repacked order (see [`Fmt32::REPACKED`]).
pub(super) struct Q40R;
pub(crate) struct Q41;
pub(crate) struct Q50;
pub(crate) struct Q51;
impl Nibble for Q40 {
    const BYTES: usize = 18;
    const QS: usize = 2;
    const QH: Option<usize> = None;
    const MIN: bool = false;
}
impl Nibble for Q40R {
    const BYTES: usize = 18;
    const QS: usize = 2;
    const QH: Option<usize> = None;
    const MIN: bool = false;
}
impl Nibble for Q41 {
    const BYTES: usize = 20;
    const QS: usize = 4;
    const QH: Option<usize> = None;
    const MIN: bool = true;
}
impl Nibble for Q50 {
    const BYTES: usize = 22;
    const QS: usize = 6;
    const QH: Option<usize> = Some(2);
    const MIN: bool = false;
}
impl Nibble for Q51 {
    const BYTES: usize = 24;
    const QS: usize = 8;
    const QH: Option<usize> = Some(4);
    const MIN: bool = true;
}

/// The 32 quants of the block at `wb` as bytes: signed for formats without a minimum, as the
/// reference kernels form them.
#[inline(always)]
pub(super) unsafe fn quants<T: Nibble>(wb: *const u8) -> __m256i {
    let q = nibbles(&*(wb.add(T::QS) as *const [u8; 16]));
    match (T::QH, T::MIN) {
        (None, false) => _mm256_sub_epi8(q, _mm256_set1_epi8(8)),
        (None, true) => q,
        (Some(o), false) => {
            let hi = _mm256_andnot_si256(
                bits_to_bytes(&*(wb.add(o) as *const [u8; 4])),
                _mm256_set1_epi8(0xF0u8 as i8),
            );
            _mm256_or_si256(q, hi)
        }
        (Some(o), true) => {
            let hi = _mm256_and_si256(
                bits_to_bytes(&*(wb.add(o) as *const [u8; 4])),
                _mm256_set1_epi8(0x10),
            );
            _mm256_or_si256(q, hi)
        }
    }
}

#[inline(always)]
pub(super) unsafe fn qdot<T: Nibble>(qx: __m256i, qy: __m256i) -> __m256 {
    if T::MIN {
        dot_us8(qx, qy)
    } else {
        dot_s8(qx, qy)
    }
}

/// `R` rows at `w` (stride `rb`) × `N` tokens at `x` (stride `xb`) for a nibble format.
#[inline(always)]
pub(super) unsafe fn nibble_tile<T: Nibble, const R: usize, const N: usize>(
    w: *const u8,
    rb: usize,
    nb: usize,
    x: *const u8,
    xb: usize,
) -> [[f32; N]; R] {
    let mut acc = [[_mm256_setzero_ps(); N]; R];
    let mut summs = [[0.0f32; N]; R];
    for b in 0..nb {
        let mut dy = [0.0f32; N];
        let mut sy = [0.0f32; N];
        let mut qy = [_mm256_setzero_si256(); N];
        for k in 0..N {
            let yb = x.add(k * xb + b * T::ABYTES);
            (dy[k], sy[k]) = halves2(yb);
            qy[k] = _mm256_loadu_si256(yb.add(T::AQS) as *const __m256i);
        }
        for i in 0..R {
            let wb = w.add(i * rb + b * T::BYTES);
            if b % 2 == 0 {
                _mm_prefetch::<_MM_HINT_T0>(wb.wrapping_add(PREFETCH) as *const i8);
            }
            let (dx, mx) = halves2(wb);
            let qx = quants::<T>(wb);
            for k in 0..N {
                if T::MIN {
                    summs[i][k] += mx * sy[k];
                }
                acc[i][k] =
                    _mm256_fmadd_ps(_mm256_set1_ps(dx * dy[k]), qdot::<T>(qx, qy[k]), acc[i][k]);
            }
        }
    }
    arr!(R, [0.0f32; N], |i| {
        arr!(N, 0.0f32, |k| {
            if T::MIN {
                hsum(acc[i][k]) + summs[i][k]
            } else {
                hsum(acc[i][k])
            }
        })
    })
}

/// Q4_0/Q4_1 × one token for eight rows starting at `w` (row stride `rb`), the rows in the
/// vector lanes.
#[inline(always)]
pub(super) unsafe fn nibble_rows8<T: Nibble + Fmt32>(
    w: *const u8,
    rb: usize,
    nb: usize,
    y: *const u8,
) -> __m256 {
    rows8_token::<T>(nb, y, |b| {
        let p: [*const u8; 8] = arr!(8, w, |i| w.add(i * rb + b * <T as Nibble>::BYTES));
        if b % 3 == 0 {
            for &pi in &p {
                _mm_prefetch::<_MM_HINT_T0>(pi.wrapping_add(PREFETCH) as *const i8);
            }
        }
        let m = if <T as Nibble>::MIN {
            gather_halves(&p, 2)
        } else {
            _mm256_setzero_ps()
        };
        let q: [*const u8; 8] = arr!(8, w, |i| p[i].add(T::QS));
        let v = transpose_8x4(&q);
        (
            gather_halves(&p, 0),
            m,
            nibble_lanes::<T>(&v, _mm256_setzero_si256()),
        )
    })
}

/// The eight lanes (elements `4l..4l+4` of every row, rows in dword order) of a block column
/// from its quant vectors `v` (dword `j` of every row's nibble bytes in vector `j`) and, for
/// Q5_x, the rows' fifth bits in lane order (`qh`): signed values unless the format has a
/// minimum, as the reference kernels form them.
#[inline(always)]
pub(super) unsafe fn nibble_lanes<T: Nibble>(v: &[__m256i; 4], qh: __m256i) -> [__m256i; 8] {
    let m4 = _mm256_set1_epi8(0x0F);
    let mut lanes = [_mm256_setzero_si256(); 8];
    for j in 0..4 {
        lanes[j] = _mm256_and_si256(v[j], m4);
        lanes[j + 4] = _mm256_and_si256(_mm256_srli_epi16(v[j], 4), m4);
    }
    if T::QH.is_some() {
        let jb = j4(0);
        for j in 0..4 {
            // Byte j of each row's word, in all four bytes of the row's dword.
            let bytes = _mm256_shuffle_epi8(qh, _mm256_add_epi8(jb, _mm256_set1_epi8(j as i8)));
            for (h, bits) in [(0usize, 0x0804_0201u32), (4, 0x8040_2010)] {
                let mask = _mm256_set1_epi32(bits as i32);
                let set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, mask), mask);
                let l = &mut lanes[j + h];
                *l = if T::MIN {
                    _mm256_or_si256(*l, _mm256_and_si256(set, _mm256_set1_epi8(0x10)))
                } else {
                    _mm256_or_si256(*l, _mm256_andnot_si256(set, _mm256_set1_epi8(0xF0u8 as i8)))
                };
            }
        }
    } else if !T::MIN {
        for l in &mut lanes {
            *l = _mm256_sub_epi8(*l, _mm256_set1_epi8(8));
        }
    }
    lanes
}

/// Shuffle indices putting byte `j` of each dword in all four of its bytes.
#[inline(always)]
pub(super) unsafe fn j4(j: i8) -> __m256i {
    let row = |d: i8| [4 * d + j; 4];
    let b: [[i8; 4]; 4] = [row(0), row(1), row(2), row(3)];
    let f = |k: usize| i32::from_le_bytes(b[k].map(|x| x as u8));
    _mm256_setr_epi32(f(0), f(1), f(2), f(3), f(0), f(1), f(2), f(3))
}

/// The same product for eight interleaved rows (group at `g`; see
/// [`crate::quant::interleave`]): scales and quants come with plain loads.
#[inline(always)]
pub(super) unsafe fn interleaved_rows8<T: Fmt32>(g: *const u8, nb: usize, y: *const u8) -> __m256 {
    rows8_token::<T>(nb, y, |b| T::interleaved(g, b))
}

/// Block column `b` of an interleaved group at `g`: the eight scales and minimums as floats
/// and the eight lanes of quants.
#[inline(always)]
pub(super) unsafe fn interleaved_block<T: Nibble>(
    g: *const u8,
    b: usize,
) -> (__m256, __m256, [__m256i; 8]) {
    let c = g.add(b * 8 * T::BYTES);
    prefetch_span(c.wrapping_add(PREFETCH_ROWS8), 8 * T::BYTES);
    let d = _mm256_cvtph_ps(_mm_loadu_si128(c as *const __m128i));
    let mut at = 16;
    let m = if T::MIN {
        at += 16;
        _mm256_cvtph_ps(_mm_loadu_si128(c.add(16) as *const __m128i))
    } else {
        _mm256_setzero_ps()
    };
    let qh = if T::QH.is_some() {
        at += 32;
        _mm256_loadu_si256(c.add(at - 32) as *const __m256i)
    } else {
        _mm256_setzero_si256()
    };
    let q = c.add(at);
    let v = arr!(4, _mm256_setzero_si256(), |j| _mm256_loadu_si256(
        q.add(32 * j) as *const __m256i
    ));
    (d, m, nibble_lanes::<T>(&v, qh))
}

/// A nibble format × one token (`y`) for eight rows whose block `b` `load` gives as (scales,
/// minimums, lanes; see [`nibble_lanes`]), the rows in the vector lanes.
#[inline(always)]
pub(super) unsafe fn rows8_token<T: Fmt32>(
    nb: usize,
    y: *const u8,
    load: impl Fn(usize) -> (__m256, __m256, [__m256i; 8]),
) -> __m256 {
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); 8];
    let mut summs = _mm256_setzero_ps();
    for b in 0..nb {
        let (dx, mx, lanes) = load(b);
        let yb = y.add(b * T::ABYTES);
        let (dy, sy) = halves2(yb);
        let d = _mm256_mul_ps(dx, _mm256_set1_ps(dy));
        if T::MIN {
            summs = _mm256_add_ps(summs, _mm256_mul_ps(mx, _mm256_set1_ps(sy)));
        }
        let yq = yb.add(T::AQS) as *const i32;
        let mut isum = _mm256_setzero_si256();
        for (l, &q) in lanes.iter().enumerate() {
            let yl = _mm256_set1_epi32(yq.add(l).read_unaligned());
            let s = if T::MIN {
                _mm256_maddubs_epi16(q, yl)
            } else {
                _mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(yl, q))
            };
            let s = _mm256_madd_epi16(ones, s);
            if T::REPACKED {
                isum = _mm256_add_epi32(isum, s);
            } else {
                acc[l] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), acc[l]);
            }
        }
        if T::REPACKED {
            acc[0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), d, acc[0]);
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
