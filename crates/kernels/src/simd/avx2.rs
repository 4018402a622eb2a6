//! x86-64 AVX2 + FMA + F16C kernels. Each computes exactly what its scalar counterpart in
//! [`crate::quant`] computes, in the same order (see [`crate::lanes`]), so results are
//! bit-identical; the property tests hold them to it.
//!
//! Every function here is `unsafe` and `#[target_feature]`: callers must have checked that the
//! CPU supports AVX2, FMA and F16C ([`crate::Isa::Avx2`]); [`crate::Kernels`] only hands
//! them out after that check.

#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use crate::quant::blocks::*;

/// `[f(0), f(1), …]` built with a plain loop: closures passed to `std::array::from_fn` are
/// compiled without the caller's target features, so intrinsics in them are not inlined.
macro_rules! arr {
    ($n:expr, $zero:expr, |$i:ident| $e:expr) => {{
        let mut a = [$zero; $n];
        let mut $i = 0;
        while $i < $n {
            a[$i] = $e;
            $i += 1;
        }
        a
    }};
}

/// Half to float with F16C.
#[inline(always)]
pub(super) unsafe fn h(b: [u8; 2]) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(
        _mm_cvtsi32_si128(u16::from_le_bytes(b) as i32),
    ))
}

#[inline(always)]
pub(super) unsafe fn hsum(x: __m256) -> f32 {
    let mut r = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    _mm_cvtss_f32(r)
}

/// 32 nibbles as bytes: low nibbles of the 16 bytes first, then the high ones.
#[inline(always)]
unsafe fn nibbles(qs: &[u8; 16]) -> __m256i {
    let t = _mm_loadu_si128(qs.as_ptr() as *const __m128i);
    let both = _mm256_set_m128i(_mm_srli_epi16(t, 4), t);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}

/// 0xFF in byte j where bit j of `qh` is set.
#[inline(always)]
unsafe fn bits_to_bytes(qh: &[u8; 4]) -> __m256i {
    let x = u32::from_le_bytes(*qh) as i32;
    let shuf = _mm256_set_epi64x(
        0x0303030303030303,
        0x0202020202020202,
        0x0101010101010101,
        0,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(x), shuf);
    let bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1))
}

/// Unsigned × signed bytes, summed in fours, as floats (one lane per four products).
#[inline(always)]
unsafe fn dot_us8(ux: __m256i, sy: __m256i) -> __m256 {
    let pairs = _mm256_maddubs_epi16(ux, sy);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_set1_epi16(1), pairs))
}

/// Signed × signed bytes, summed in fours, as floats.
#[inline(always)]
unsafe fn dot_s8(x: __m256i, y: __m256i) -> __m256 {
    dot_us8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
}

#[inline(always)]
pub(super) unsafe fn load32(qs: &[u8; 32]) -> __m256i {
    _mm256_loadu_si256(qs.as_ptr() as *const __m256i)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (x, y) in as_blocks::<BlockQ4_0>(w)
        .iter()
        .zip(as_blocks::<BlockQ8_0>(a))
        .take(n / QK)
    {
        let d = _mm256_set1_ps(h(x.d) * h(y.d));
        let qx = _mm256_sub_epi8(nibbles(&x.qs), _mm256_set1_epi8(8));
        acc = _mm256_fmadd_ps(d, dot_s8(qx, load32(&y.qs)), acc);
    }
    hsum(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_1_q8_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut summs = 0.0f32;
    for (x, y) in as_blocks::<BlockQ4_1>(w)
        .iter()
        .zip(as_blocks::<BlockQ8_1>(a))
        .take(n / QK)
    {
        summs += h(x.m) * h(y.s);
        let d = _mm256_set1_ps(h(x.d) * h(y.d));
        acc = _mm256_fmadd_ps(d, dot_us8(nibbles(&x.qs), load32(&y.qs)), acc);
    }
    hsum(acc) + summs
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q5_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (x, y) in as_blocks::<BlockQ5_0>(w)
        .iter()
        .zip(as_blocks::<BlockQ8_0>(a))
        .take(n / QK)
    {
        let d = _mm256_set1_ps(h(x.d) * h(y.d));
        let hi = _mm256_andnot_si256(bits_to_bytes(&x.qh), _mm256_set1_epi8(0xF0u8 as i8));
        let qx = _mm256_or_si256(nibbles(&x.qs), hi);
        acc = _mm256_fmadd_ps(d, dot_s8(qx, load32(&y.qs)), acc);
    }
    hsum(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q5_1_q8_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut summs = 0.0f32;
    for (x, y) in as_blocks::<BlockQ5_1>(w)
        .iter()
        .zip(as_blocks::<BlockQ8_1>(a))
        .take(n / QK)
    {
        summs += h(x.m) * h(y.s);
        let hi = _mm256_and_si256(bits_to_bytes(&x.qh), _mm256_set1_epi8(0x10));
        let qx = _mm256_or_si256(nibbles(&x.qs), hi);
        let d = _mm256_set1_ps(h(x.d) * h(y.d));
        acc = _mm256_fmadd_ps(d, dot_us8(qx, load32(&y.qs)), acc);
    }
    hsum(acc) + summs
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q8_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (x, y) in as_blocks::<BlockQ8_0>(w)
        .iter()
        .zip(as_blocks::<BlockQ8_0>(a))
        .take(n / QK)
    {
        let d = _mm256_set1_ps(h(x.d) * h(y.d));
        acc = _mm256_fmadd_ps(d, dot_s8(load32(&x.qs), load32(&y.qs)), acc);
    }
    hsum(acc)
}

// ---------------------------------------------------------------------------------------------
// Whole-tile kernels. They compute every output with exactly the operations of the dot
// products above (same lanes, same fused multiply-adds, same horizontal sum), but share loads
// between rows or tokens: a single token goes through eight rows at once with the rows in the
// vector lanes (one accumulator per lane of the reference, transposed); several tokens go
// through one row at a time, reusing each unpacked weight block for every token.

use crate::matmul::Tile;

/// How far ahead of each weight row the tile kernels prefetch.
const PREFETCH: usize = 2048;

/// Prefetches every cache line of the `bytes` bytes at `p` (a block that spans several lines:
/// fetching only its first line leaves the others to the hardware prefetcher, which measured
/// here falls behind — Qwen2.5-1.5B decode went from 10 to 15 tokens/s).
#[inline(always)]
unsafe fn prefetch_span(p: *const u8, bytes: usize) {
    for line in 0..bytes.div_ceil(64) {
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(64 * line) as *const i8);
    }
}

/// How far ahead of its current block column the interleaved kernels prefetch.
const PREFETCH_ROWS8: usize = 4096;

/// Two halves at `p` (a block's scale and min or sum) as f32, with a full 64-bit load.
#[inline(always)]
unsafe fn halves2(p: *const u8) -> (f32, f32) {
    let v = _mm_cvtph_ps(_mm_loadl_epi64(p as *const __m128i));
    (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_movehdup_ps(v)))
}

/// The reference horizontal sum, for eight rows at once: element r of the result is
/// `((a4+a0) + (a6+a2)) + ((a5+a1) + (a7+a3))` over the lanes a of row r.
#[inline(always)]
unsafe fn hsum_rows(a: &[__m256; 8]) -> __m256 {
    _mm256_add_ps(
        _mm256_add_ps(_mm256_add_ps(a[4], a[0]), _mm256_add_ps(a[6], a[2])),
        _mm256_add_ps(_mm256_add_ps(a[5], a[1]), _mm256_add_ps(a[7], a[3])),
    )
}

/// Dword `j` of eight 16-byte rows, one row per lane: `[r0 r1 r2 r3 | r4 r5 r6 r7]`.
#[inline(always)]
unsafe fn transpose_8x4(p: &[*const u8; 8]) -> [__m256i; 4] {
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
unsafe fn gather_halves(p: &[*const u8; 8], off: usize) -> __m256 {
    let h: [i16; 8] = arr!(8, 0i16, |i| (p[i].add(off) as *const i16).read_unaligned());
    _mm256_cvtph_ps(_mm_setr_epi16(
        h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7],
    ))
}

#[inline(always)]
unsafe fn store8(t: &Tile, r: usize, v: __m256) {
    store8_at(t, 0, r, v)
}

/// Rows `r..r + 8` of token `k`'s output from the lanes of `v`.
#[inline(always)]
unsafe fn store8_at(t: &Tile, k: usize, r: usize, v: __m256) {
    let mut o = [0.0f32; 8];
    _mm256_storeu_ps(o.as_mut_ptr(), v);
    for (i, x) in o.iter().enumerate() {
        t.out.write(k * t.out_stride + r + i, *x);
    }
}

/// What distinguishes the 32-element nibble formats (Q4_0, Q4_1, Q5_0, Q5_1) in the kernels.
trait Nibble {
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

struct Q40;
struct Q41;
struct Q50;
struct Q51;
impl Nibble for Q40 {
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
unsafe fn quants<T: Nibble>(wb: *const u8) -> __m256i {
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
unsafe fn qdot<T: Nibble>(qx: __m256i, qy: __m256i) -> __m256 {
    if T::MIN {
        dot_us8(qx, qy)
    } else {
        dot_s8(qx, qy)
    }
}

/// `R` rows at `w` (stride `rb`) × `N` tokens at `x` (stride `xb`) for a nibble format.
#[inline(always)]
unsafe fn nibble_tile<T: Nibble, const R: usize, const N: usize>(
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
unsafe fn nibble_rows8<T: Nibble + Fmt32>(
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
unsafe fn nibble_lanes<T: Nibble>(v: &[__m256i; 4], qh: __m256i) -> [__m256i; 8] {
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
unsafe fn j4(j: i8) -> __m256i {
    let row = |d: i8| [4 * d + j; 4];
    let b: [[i8; 4]; 4] = [row(0), row(1), row(2), row(3)];
    let f = |k: usize| i32::from_le_bytes(b[k].map(|x| x as u8));
    _mm256_setr_epi32(f(0), f(1), f(2), f(3), f(0), f(1), f(2), f(3))
}

/// The same product for eight interleaved rows (group at `g`; see
/// [`crate::quant::interleave`]): scales and quants come with plain loads.
#[inline(always)]
unsafe fn interleaved_rows8<T: Fmt32>(g: *const u8, nb: usize, y: *const u8) -> __m256 {
    rows8_token::<T>(nb, y, |b| T::interleaved(g, b))
}

/// Block column `b` of an interleaved group at `g`: the eight scales and minimums as floats
/// and the eight lanes of quants.
#[inline(always)]
unsafe fn interleaved_block<T: Nibble>(g: *const u8, b: usize) -> (__m256, __m256, [__m256i; 8]) {
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
unsafe fn rows8_token<T: Fmt32>(
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
        for (l, &q) in lanes.iter().enumerate() {
            let yl = _mm256_set1_epi32(yq.add(l).read_unaligned());
            let s = if T::MIN {
                _mm256_maddubs_epi16(q, yl)
            } else {
                _mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(yl, q))
            };
            let s = _mm256_cvtepi32_ps(_mm256_madd_epi16(ones, s));
            acc[l] = _mm256_fmadd_ps(d, s, acc[l]);
        }
    }
    if T::MIN {
        _mm256_add_ps(hsum_rows(&acc), summs)
    } else {
        hsum_rows(&acc)
    }
}

// ---------------------------------------------------------------------------------------------
// Many tokens through eight rows: the rows' quants are unpacked once into a panel, transposed
// so that each vector holds one lane (four consecutive elements) of all eight rows, and every
// token then runs through the panel with one multiply-add chain per lane — the same lanes and
// the same order as the single-row kernels, a third of the instructions.

/// A format of 32-element blocks with f16 scales whose quants the panel kernel can take.
trait Fmt32 {
    /// The format's entry in the type table.
    const TY: crate::quant::GgmlType;
    const BYTES: usize;
    /// Whether blocks carry a minimum (activations Q8_1, unsigned quants).
    const MIN: bool;
    const ABYTES: usize = if Self::MIN { 36 } else { 34 };
    const AQS: usize = if Self::MIN { 4 } else { 2 };
    /// The block's 32 quants in element order (signed unless `MIN`).
    unsafe fn quants(wb: *const u8) -> __m256i;
    /// Block column `b` of an interleaved group at `g` (see [`crate::quant::interleave`]): the
    /// eight rows' scales and minimums as floats and the eight lanes of quants (elements
    /// `4l..4l+4` of every row in lane vector `l`).
    unsafe fn interleaved(g: *const u8, b: usize) -> (__m256, __m256, [__m256i; 8]);
}

macro_rules! nibble_fmt32 {
    ($t:ty, $ty:ident) => {
        impl Fmt32 for $t {
            const TY: crate::quant::GgmlType = crate::quant::GgmlType::$ty;
            const BYTES: usize = <$t as Nibble>::BYTES;
            const MIN: bool = <$t as Nibble>::MIN;
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
nibble_fmt32!(Q41, Q4_1);
nibble_fmt32!(Q50, Q5_0);
nibble_fmt32!(Q51, Q5_1);

struct Q80;
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
unsafe fn transpose_8x8(r: &[__m256i; 8]) -> [__m256i; 8] {
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
const fn panel_stride(min: bool) -> usize {
    if min {
        8 + 2
    } else {
        16 + 1
    }
}

/// Unpacks eight rows × `nb` blocks starting at `w` (row stride `rb`) into `panel`.
#[inline(always)]
unsafe fn build_panel<T: Fmt32>(w: *const u8, rb: usize, nb: usize, panel: *mut __m256i) {
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
unsafe fn build_panel_interleaved<T: Fmt32>(g: *const u8, nb: usize, panel: *mut __m256i) {
    for b in 0..nb {
        let (d, m, lanes) = T::interleaved(g, b);
        store_panel_block::<T>(panel, b, &lanes, d, m);
    }
}

/// Writes block `b` of a panel from its eight lanes (quants, signed unless `MIN`), scales
/// and minimums.
#[inline(always)]
unsafe fn store_panel_block<T: Fmt32>(
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
unsafe fn panel_token<T: Fmt32>(panel: *const __m256i, nb: usize, y: *const u8) -> __m256 {
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
fn panel_buffer(need: usize) -> *mut __m256i {
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
fn whole_groups(t: &Tile, ty: crate::quant::GgmlType) -> bool {
    let whole = t.rows.start.is_multiple_of(8) && t.rows.end.is_multiple_of(8);
    if !whole {
        crate::quant::interleave::gemm_scalar(ty, t);
    }
    whole
}

/// Rows `r..r + 8k` of a tile with several tokens, through panels; returns the first row not
/// done.
#[inline(always)]
unsafe fn panel_rows<T: Fmt32>(t: &Tile, r: usize) -> usize {
    let nb = t.cols / QK;
    let rb = t.w_row_bytes;
    panel_rows_with::<T>(t, r, |w, panel| build_panel::<T>(w, rb, nb, panel))
}

/// [`panel_rows`] with the panel of the eight rows at `w` made by `build(w, panel)`.
#[inline(always)]
unsafe fn panel_rows_with<T: Fmt32>(
    t: &Tile,
    mut r: usize,
    build: impl Fn(*const u8, *mut __m256i),
) -> usize {
    let nb = t.cols / QK;
    let panel = panel_buffer(nb * panel_stride(T::MIN));
    let first = r;
    let tb = token_block(t.x_row_bytes);
    let mut t0 = 0;
    while t0 < t.tokens {
        let t1 = (t0 + tb).min(t.tokens);
        r = first;
        while r + 8 <= t.rows.end {
            build(t.w.as_ptr().add(r * t.w_row_bytes), panel);
            for k in t0..t1 {
                let o = panel_token::<T>(panel, nb, t.x.as_ptr().add(k * t.x_row_bytes));
                let mut v = [0.0f32; 8];
                _mm256_storeu_ps(v.as_mut_ptr(), o);
                for (i, x) in v.iter().enumerate() {
                    t.out.write(k * t.out_stride + r + i, *x);
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
fn token_block(row_bytes: usize) -> usize {
    ((192 << 10) / row_bytes.max(1)).clamp(8, 1 << 16) / 8 * 8
}

/// Interleaved Q4_0/Q4_1 weights (whole groups of eight rows).
#[inline(always)]
unsafe fn gemm_interleaved<T: Fmt32>(t: &Tile) {
    if !whole_groups(t, T::TY) {
        return;
    }
    let nb = t.cols / QK;
    let w = t.w.as_ptr();
    if t.tokens >= 2 {
        panel_rows_with::<T>(t, t.rows.start, |g, panel| {
            build_panel_interleaved::<T>(g, nb, panel)
        });
    } else {
        for r in t.rows.clone().step_by(8) {
            let g = w.add(r * t.w_row_bytes);
            store8(t, r, interleaved_rows8::<T>(g, nb, t.x.as_ptr()));
        }
    }
}

/// Public tile kernels: `name => generic kernel::<format>`, each compiled for AVX2.
macro_rules! avx2_tiles {
    ($($name:ident => $kernel:ident::<$t:ty>),* $(,)?) => {
        $(
            #[target_feature(enable = "avx2,fma,f16c")]
            pub unsafe fn $name(t: &Tile) {
                $kernel::<$t>(t)
            }
        )*
    };
}

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

#[inline(always)]
unsafe fn gemm_nibble<T: Nibble + Fmt32>(t: &Tile) {
    let nb = t.cols / QK;
    let (w, rb, x, xb) = (t.w.as_ptr(), t.w_row_bytes, t.x.as_ptr(), t.x_row_bytes);
    let mut r = t.rows.start;
    if t.tokens >= 2 {
        r = panel_rows::<T>(t, r);
    } else {
        if T::QH.is_none() {
            while r + 8 <= t.rows.end {
                store8(t, r, nibble_rows8::<T>(w.add(r * rb), rb, nb, x));
                r += 8;
            }
        } else {
            while r + 4 <= t.rows.end {
                let o = nibble_tile::<T, 4, 1>(w.add(r * rb), rb, nb, x, xb);
                for (i, v) in o.iter().enumerate() {
                    t.out.write(r + i, v[0]);
                }
                r += 4;
            }
        }
    }
    for r in r..t.rows.end {
        let wr = w.add(r * rb);
        let mut k = 0;
        while k + 4 <= t.tokens {
            let o = nibble_tile::<T, 1, 4>(wr, rb, nb, x.add(k * xb), xb);
            for (i, v) in o[0].iter().enumerate() {
                t.out.write((k + i) * t.out_stride + r, *v);
            }
            k += 4;
        }
        while k < t.tokens {
            let o = nibble_tile::<T, 1, 1>(wr, rb, nb, x.add(k * xb), xb);
            t.out.write(k * t.out_stride + r, o[0][0]);
            k += 1;
        }
    }
}

/// Q8_0 × Q8_0 for `R` rows at `w` (stride `rb`) and `N` tokens at `x` (stride `xb`).
#[inline(always)]
unsafe fn q8_0_tile<const R: usize, const N: usize>(
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
    let nb = t.cols / QK;
    let (w, rb, x, xb) = (t.w.as_ptr(), t.w_row_bytes, t.x.as_ptr(), t.x_row_bytes);
    let mut r = t.rows.start;
    if t.tokens >= 2 {
        r = panel_rows::<Q80>(t, r);
    } else {
        while r + 4 <= t.rows.end {
            let o = q8_0_tile::<4, 1>(w.add(r * rb), rb, nb, x, xb);
            for (i, v) in o.iter().enumerate() {
                t.out.write(r + i, v[0]);
            }
            r += 4;
        }
    }
    for r in r..t.rows.end {
        let wr = w.add(r * rb);
        let mut k = 0;
        while k + 4 <= t.tokens {
            let o = q8_0_tile::<1, 4>(wr, rb, nb, x.add(k * xb), xb);
            for (i, v) in o[0].iter().enumerate() {
                t.out.write((k + i) * t.out_stride + r, *v);
            }
            k += 4;
        }
        while k < t.tokens {
            let o = q8_0_tile::<1, 1>(wr, rb, nb, x.add(k * xb), xb);
            t.out.write(k * t.out_stride + r, o[0][0]);
            k += 1;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Attention over an f16 paged cache, and the element-wise pieces it needs. Same arithmetic as
// `crate::attention` (which is the definition), eight lanes at a time.

use crate::attention::{HeadScratch, PagedHead, Reduce};

/// ggml's `ggml_v_expf`, eight lanes (see `crate::lanes::expf_ggml`).
#[inline(always)]
pub(crate) unsafe fn expf8(x: __m256) -> __m256 {
    macro_rules! c {
        ($bits:expr) => {
            _mm256_set1_ps(f32::from_bits($bits))
        };
    }
    let r = _mm256_set1_ps(12_582_912.0);
    let z = _mm256_fmadd_ps(x, c!(0x3fb8_aa3b), r);
    let n = _mm256_sub_ps(z, r);
    let b = _mm256_fnmadd_ps(n, c!(0x35bf_be8e), _mm256_fnmadd_ps(n, c!(0x3f31_7200), x));
    let e = _mm256_slli_epi32(_mm256_castps_si256(z), 23);
    let k = _mm256_castsi256_ps(_mm256_add_epi32(
        e,
        _mm256_castps_si256(_mm256_set1_ps(1.0)),
    ));
    let abs_n = _mm256_andnot_ps(_mm256_set1_ps(-0.0), n);
    let cmask = _mm256_castps_si256(_mm256_cmp_ps(abs_n, _mm256_set1_ps(126.0), _CMP_GT_OQ));
    let u = _mm256_mul_ps(b, b);
    let j = _mm256_fmadd_ps(
        _mm256_fmadd_ps(
            _mm256_fmadd_ps(c!(0x3c07_2010), b, c!(0x3d2b_9f17)),
            u,
            _mm256_fmadd_ps(c!(0x3e2a_af33), b, c!(0x3eff_fedb)),
        ),
        u,
        _mm256_mul_ps(c!(0x3f7f_fff6), b),
    );
    if _mm256_movemask_ps(_mm256_castsi256_ps(cmask)) == 0 {
        return _mm256_fmadd_ps(j, k, k);
    }
    let g = _mm256_and_si256(
        _mm256_castps_si256(_mm256_cmp_ps(n, _mm256_setzero_ps(), _CMP_LE_OQ)),
        _mm256_set1_epi32(0x8200_0000u32 as i32),
    );
    let s1 = _mm256_castsi256_ps(_mm256_add_epi32(g, _mm256_set1_epi32(0x7f00_0000)));
    let s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, g));
    let dmask = _mm256_castps_si256(_mm256_cmp_ps(abs_n, _mm256_set1_ps(192.0), _CMP_GT_OQ));
    let cm = _mm256_castsi256_ps(cmask);
    let dm = _mm256_castsi256_ps(dmask);
    _mm256_or_ps(
        _mm256_and_ps(dm, _mm256_mul_ps(s1, s1)),
        _mm256_andnot_ps(
            dm,
            _mm256_or_ps(
                _mm256_and_ps(cm, _mm256_mul_ps(_mm256_fmadd_ps(s2, j, s2), s1)),
                _mm256_andnot_ps(cm, _mm256_fmadd_ps(k, j, k)),
            ),
        ),
    )
}

/// `gate[i] = silu(gate[i]) * up[i]` for the first `n / 8 * 8` elements (`n` the shorter
/// length), in the arithmetic of [`crate::lanes::silu_ggml`]; returns how many were done.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn swiglu8(gate: &mut [f32], up: &[f32]) -> usize {
    let n8 = gate.len().min(up.len()) / 8 * 8;
    let (g, u) = (gate.as_mut_ptr(), up.as_ptr());
    let one = _mm256_set1_ps(1.0);
    for i in (0..n8).step_by(8) {
        let x = _mm256_loadu_ps(g.add(i));
        let e = expf8(_mm256_sub_ps(_mm256_setzero_ps(), x));
        let silu = _mm256_div_ps(x, _mm256_add_ps(one, e));
        _mm256_storeu_ps(g.add(i), _mm256_mul_ps(silu, _mm256_loadu_ps(u.add(i))));
    }
    n8
}

/// `x` rounded to f16 and back.
#[inline(always)]
unsafe fn round_f16(x: __m256) -> __m256 {
    _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x))
}

#[inline(always)]
unsafe fn load_h8(p: *const half::f16) -> __m256 {
    _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
}

/// ggml's four-accumulator reduction (`GGML_F32x8_REDUCE`).
#[inline(always)]
pub(super) unsafe fn reduce4(s: &[__m256; 4]) -> f32 {
    let x = _mm256_add_ps(_mm256_add_ps(s[0], s[2]), _mm256_add_ps(s[1], s[3]));
    let t0 = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    let t1 = _mm_hadd_ps(t0, t0);
    _mm_cvtss_f32(_mm_hadd_ps(t1, t1))
}

/// Softmax of `x` (a multiple of eight long) in ggml's arithmetic.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn softmax8(x: &mut [f32]) {
    let n = x.len() / 8 * 8;
    let p = x.as_mut_ptr();
    let mut mx = _mm256_set1_ps(f32::NEG_INFINITY);
    for i in (0..n).step_by(8) {
        mx = _mm256_max_ps(mx, _mm256_loadu_ps(p.add(i)));
    }
    let mut m = [0.0f32; 8];
    _mm256_storeu_ps(m.as_mut_ptr(), mx);
    let max = m.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        x.fill(0.0);
        return;
    }
    let mv = _mm256_set1_ps(max);
    let mut sum = 0.0f64;
    for i in (0..n).step_by(8) {
        let v = expf8(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), mv));
        _mm256_storeu_ps(p.add(i), v);
        sum += hsum(v) as f64;
    }
    let inv = _mm256_set1_ps((1.0 / sum) as f32);
    for i in (0..n).step_by(8) {
        _mm256_storeu_ps(p.add(i), _mm256_mul_ps(_mm256_loadu_ps(p.add(i)), inv));
    }
}

/// [`crate::attention::attend_head`] for an f16 cache whose head size and block size are
/// multiples of eight.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn attend_head_f16(
    q: &[f32],
    kv: &PagedHead<half::f16>,
    n_kv: usize,
    scale: f32,
    order: Reduce,
    s: HeadScratch<'_>,
    out: &mut [f32],
) {
    let (hd, bs) = (kv.head_dim, kv.block_size);
    let qr = s.qr.as_mut_ptr();
    for c in (0..hd).step_by(8) {
        _mm256_storeu_ps(qr.add(c), round_f16(_mm256_loadu_ps(q.as_ptr().add(c))));
    }
    // Block sizes here are powers of two (checked by the caller): shifts, not divisions.
    let (shift, mask) = (bs.trailing_zeros(), bs - 1);
    let start = |p: usize| kv.base + kv.blocks[p >> shift] as usize * kv.block_stride;
    let keys = kv.keys.as_ptr();
    let values = kv.values.as_ptr();
    let padded = n_kv.div_ceil(8) * 8;
    let sc = &mut s.scores[..padded];
    match order {
        Reduce::Gemm => {
            for (p, o) in sc[..n_kv].iter_mut().enumerate() {
                let k = keys.add(start(p) + (p & mask) * hd);
                let mut acc = _mm256_setzero_ps();
                for c in (0..hd).step_by(8) {
                    acc = _mm256_fmadd_ps(load_h8(k.add(c)), _mm256_loadu_ps(qr.add(c)), acc);
                }
                *o = hsum(acc) * scale;
            }
        }
        Reduce::Vec => scores_n::<1>([qr as *const f32], kv, 0..n_kv, scale, [sc.as_mut_ptr()]),
    }
    for v in sc[n_kv..].iter_mut() {
        *v = f32::NEG_INFINITY;
    }
    softmax8(sc);
    let w = sc.as_mut_ptr();
    for i in (0..padded).step_by(8) {
        _mm256_storeu_ps(w.add(i), round_f16(_mm256_loadu_ps(w.add(i))));
    }
    // Several dimensions at a time, so that independent accumulator chains fill the FMA units
    // (one dimension alone is a single chain of dependent adds); each dimension's sum is
    // exactly the one-at-a-time sum.
    let groups = padded / 8;
    let o = out.as_mut_ptr();
    match order {
        Reduce::Gemm => {
            for d0 in (0..hd).step_by(8) {
                let mut acc = [_mm256_setzero_ps(); 8];
                for g in 0..groups {
                    let p = 8 * g;
                    let wv = _mm256_loadu_ps(w.add(p));
                    let base = values.add(start(p) + d0 * bs + (p & mask));
                    for (j, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(load_h8(base.add(j * bs)), wv, *a);
                    }
                }
                _mm256_storeu_ps(o.add(d0), hsum_each(&acc));
            }
        }
        // Head sizes here are multiples of eight: two dimensions a pass cover them.
        Reduce::Vec => values_n::<1, 2>([w], kv, n_kv, 0..hd, 0, [o]),
    }
}

/// [`crate::attention::scores_vec`] for an f16 cache (bounds checked by the caller, block
/// shape by `PagedHead::simd_layout`): up to four queries per pass over the keys, each key
/// converted once; every score in exactly [`attend_head_f16`]'s `Reduce::Vec` arithmetic.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn scores_vec_f16(
    qrs: &[&[f32]],
    kv: &PagedHead<half::f16>,
    positions: std::ops::Range<usize>,
    scale: f32,
    outs: &mut [&mut [f32]],
) {
    for (qc, oc) in qrs.chunks(4).zip(outs.chunks_mut(4)) {
        let (q, o) = pointers4(qc, oc);
        let r = positions.clone();
        match qc.len() {
            1 => scores_n::<1>(first(q), kv, r, scale, first(o)),
            2 => scores_n::<2>(first(q), kv, r, scale, first(o)),
            3 => scores_n::<3>(first(q), kv, r, scale, first(o)),
            _ => scores_n::<4>(q, kv, r, scale, o),
        }
    }
}

/// Up to four inputs' and outputs' pointers (null past the end).
#[inline(always)]
fn pointers4(ins: &[&[f32]], outs: &mut [&mut [f32]]) -> ([*const f32; 4], [*mut f32; 4]) {
    let mut i = [std::ptr::null::<f32>(); 4];
    let mut o = [std::ptr::null_mut::<f32>(); 4];
    for (p, x) in i.iter_mut().zip(ins) {
        *p = x.as_ptr();
    }
    for (p, x) in o.iter_mut().zip(outs.iter_mut()) {
        *p = x.as_mut_ptr();
    }
    (i, o)
}

/// The first `N` of four.
#[inline(always)]
fn first<T: Copy, const N: usize>(a: [T; 4]) -> [T; N] {
    std::array::from_fn(|i| a[i])
}

#[inline(always)]
unsafe fn scores_n<const N: usize>(
    q: [*const f32; N],
    kv: &PagedHead<half::f16>,
    positions: std::ops::Range<usize>,
    scale: f32,
    o: [*mut f32; N],
) {
    let (hd, bs) = (kv.head_dim, kv.block_size);
    let (shift, mask) = (bs.trailing_zeros(), bs - 1);
    let keys = kv.keys.as_ptr();
    let np = hd & !31;
    let p0 = positions.start;
    for p in positions {
        let start = kv.base + kv.blocks[p >> shift] as usize * kv.block_stride;
        let k = keys.add(start + (p & mask) * hd);
        let mut acc = [[_mm256_setzero_ps(); 4]; N];
        for i in (0..np).step_by(32) {
            for j in 0..4 {
                let e = i + 8 * j;
                let kx = load_h8(k.add(e));
                for n in 0..N {
                    acc[n][j] = _mm256_fmadd_ps(kx, _mm256_loadu_ps(q[n].add(e)), acc[n][j]);
                }
            }
        }
        for n in 0..N {
            let mut sum = reduce4(&acc[n]) as f64;
            for i in np..hd {
                sum += ((*k.add(i)).to_f32() * *q[n].add(i)) as f64;
            }
            *o[n].add(p - p0) = (sum as f32) * scale;
        }
    }
}

/// [`crate::attention::values_vec`] for an f16 cache (bounds checked by the caller): up to
/// four queries per pass over the values, each value vector converted once; every output in
/// exactly [`attend_head_f16`]'s `Reduce::Vec` arithmetic.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn values_vec_f16(
    weights: &[&[f32]],
    kv: &PagedHead<half::f16>,
    n_kv: usize,
    dims: std::ops::Range<usize>,
    outs: &mut [&mut [f32]],
) {
    for (wc, oc) in weights.chunks(4).zip(outs.chunks_mut(4)) {
        let (w, o) = pointers4(wc, oc);
        let (d, at) = (dims.clone(), dims.start);
        match wc.len() {
            // One query: two dimensions a pass, for eight independent chains.
            1 => {
                let pairs = d.start..d.start + d.len() / 2 * 2;
                values_n::<1, 2>(first(w), kv, n_kv, pairs.clone(), at, first(o));
                values_n::<1, 1>(first(w), kv, n_kv, pairs.end..d.end, at, first(o));
            }
            2 => values_n::<2, 1>(first(w), kv, n_kv, d, at, first(o)),
            3 => values_n::<3, 1>(first(w), kv, n_kv, d, at, first(o)),
            _ => values_n::<4, 1>(w, kv, n_kv, d, at, o),
        }
    }
}

/// Dimensions `dims` (a multiple of `D` long) of `N` queries' outputs; output `d` of query
/// `n` goes to `o[n] + (d - at)`.
#[inline(always)]
unsafe fn values_n<const N: usize, const D: usize>(
    w: [*const f32; N],
    kv: &PagedHead<half::f16>,
    n_kv: usize,
    dims: std::ops::Range<usize>,
    at: usize,
    o: [*mut f32; N],
) {
    let bs = kv.block_size;
    let (shift, mask) = (bs.trailing_zeros(), bs - 1);
    let values = kv.values.as_ptr();
    let groups = n_kv.div_ceil(8);
    for d0 in dims.step_by(D) {
        let mut acc = [[[_mm256_setzero_ps(); 4]; D]; N];
        for g in 0..groups {
            let p = 8 * g;
            let start = kv.base + kv.blocks[p >> shift] as usize * kv.block_stride;
            let base = values.add(start + d0 * bs + (p & mask));
            let v: [__m256; D] = arr!(D, _mm256_setzero_ps(), |j| load_h8(base.add(j * bs)));
            for n in 0..N {
                let wv = _mm256_loadu_ps(w[n].add(p));
                for j in 0..D {
                    acc[n][j][g % 4] = _mm256_fmadd_ps(v[j], wv, acc[n][j][g % 4]);
                }
            }
        }
        for n in 0..N {
            for j in 0..D {
                *o[n].add(d0 + j - at) = reduce4(&acc[n][j]);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Activation quantization, as llama.cpp's x86 code does it (scale max|x| / 127, multiplier
// 127 / max|x|, rounding half to even): identical to the scalar versions in `quant::legacy`.

/// Quantizes 32 floats at `x` into `qs`; returns (d, sum of quants).
#[inline(always)]
unsafe fn quantize32(x: *const f32, qs: *mut u8) -> (f32, i32) {
    let v: [__m256; 4] = arr!(4, _mm256_setzero_ps(), |i| _mm256_loadu_ps(x.add(8 * i)));
    let sign = _mm256_set1_ps(-0.0);
    let mut m = _mm256_andnot_ps(sign, v[0]);
    for vi in &v[1..] {
        m = _mm256_max_ps(m, _mm256_andnot_ps(sign, *vi));
    }
    let mut m4 = _mm_max_ps(_mm256_extractf128_ps(m, 1), _mm256_castps256_ps128(m));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    let amax = _mm_cvtss_f32(m4);
    let d = amax / 127.0;
    let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
    let i: [__m256i; 4] = arr!(4, _mm256_setzero_si256(), |k| {
        _mm256_cvtps_epi32(_mm256_round_ps::<
            { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
        >(_mm256_mul_ps(v[k], id)))
    });
    let s = _mm256_add_epi32(_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3]));
    let s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    let s2 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
    let sum = _mm_cvtsi128_si32(_mm_add_epi32(s2, _mm_shuffle_epi32(s2, 0b10_11_00_01)));
    let p01 = _mm256_packs_epi32(i[0], i[1]);
    let p23 = _mm256_packs_epi32(i[2], i[3]);
    let bytes = _mm256_packs_epi16(p01, p23);
    let bytes = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(qs as *mut __m256i, bytes);
    (d, sum)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_q8_0(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(34)) {
        let (d, _) = quantize32(x.as_ptr(), b.as_mut_ptr().add(2));
        b[..2].copy_from_slice(&f16_bytes(d));
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_q8_1(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(36)) {
        let (d, sum) = quantize32(x.as_ptr(), b.as_mut_ptr().add(4));
        b[..2].copy_from_slice(&f16_bytes(d));
        b[2..4].copy_from_slice(&f16_bytes(d * sum as f32));
    }
}

/// f32 → f16 with the F16C instruction (round to nearest even, as the scalar conversion).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_f16(src: &[f32], dst: &mut [u8]) {
    let n = src.len().min(dst.len() / 2);
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    let mut i = 0;
    while i + 8 <= n {
        let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(s.add(i)));
        _mm_storeu_si128(d.add(2 * i) as *mut __m128i, h);
        i += 8;
    }
    for j in i..n {
        dst[2 * j..2 * j + 2].copy_from_slice(&f16_bytes(src[j]));
    }
}

/// The scalar Q8_K quantizer (llama.cpp uses its reference code on x86 too), compiled with
/// SSE4.1 rounding instructions instead of a library call.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_q8_k(src: &[f32], dst: &mut [u8]) {
    crate::quant::kquants::quantize_q8_k(src, dst)
}

// ---------------------------------------------------------------------------------------------
// K-quants. The reference order (see `quant::kquants`): per super-block, exact integer sums
// isum = Σ_g scale_g Σ q·y and msum = Σ_g min_g · bsum_g, then
// sum += (d·d_y)·isum − (dmin·d_y)·msum in f32. Integer sums are exact in any order, so the
// SIMD code is free to add them however is fastest.

/// A super-block unpacked for SIMD: eight 32-byte chunks of unsigned quants (elements
/// 32c..32c+31), the i16 scale vectors that multiply them, and what the integer sum needs.
pub(super) struct KBlock {
    pub(super) q: [__m256i; 8],
    pub(super) sc: [__m256i; 8],
    /// Per 16-element group: scale (for the offset correction) and min.
    sc16: __m256i,
    min16: __m256i,
    /// Quants are stored as q + offset (0, 4 or 32).
    offset: i32,
    d: f32,
    dmin: f32,
}

#[inline(always)]
unsafe fn scale_pair(a: i16, b: i16) -> __m256i {
    _mm256_setr_epi16(a, a, a, a, a, a, a, a, b, b, b, b, b, b, b, b)
}

#[inline(always)]
unsafe fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01)))
}

/// (isum, msum) of an unpacked super-block against a Q8_K block at `y`.
#[inline(always)]
unsafe fn kdot(k: &KBlock, y: *const u8) -> f32 {
    let yq = y.add(4);
    let mut acc = _mm256_setzero_si256();
    for c in 0..8 {
        let p = _mm256_maddubs_epi16(k.q[c], _mm256_loadu_si256(yq.add(32 * c) as *const __m256i));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(k.sc[c], p));
    }
    kdot_finish(k, y, hsum_i32(acc))
}

/// The end of [`kdot`] from the exact sum of quants × scales `raw`: the offset correction, the
/// minimum terms, the scales.
#[inline(always)]
pub(super) unsafe fn kdot_finish(k: &KBlock, y: *const u8, raw: i32) -> f32 {
    let bsums = _mm256_loadu_si256(y.add(260) as *const __m256i);
    let mut isum = raw;
    if k.offset != 0 {
        isum -= k.offset * hsum_i32(_mm256_madd_epi16(k.sc16, bsums));
    }
    let msum = hsum_i32(_mm256_madd_epi16(k.min16, bsums));
    let dy = f32::from_le_bytes([*y, *y.add(1), *y.add(2), *y.add(3)]);
    (k.d * dy) * isum as f32 - (k.dmin * dy) * msum as f32
}

/// Lane `k` of the result: the sum of the eight lanes of `v[k]`.
#[inline(always)]
unsafe fn hsum8_i32(v: &[__m256i; 8]) -> __m256i {
    let a = _mm256_hadd_epi32(v[0], v[1]);
    let b = _mm256_hadd_epi32(v[2], v[3]);
    let c = _mm256_hadd_epi32(v[4], v[5]);
    let d = _mm256_hadd_epi32(v[6], v[7]);
    let ab = _mm256_hadd_epi32(a, b);
    let cd = _mm256_hadd_epi32(c, d);
    _mm256_add_epi32(
        _mm256_permute2x128_si256::<0x20>(ab, cd),
        _mm256_permute2x128_si256::<0x31>(ab, cd),
    )
}

/// [`kdot`] for eight tokens at once (Q8_K blocks at `y[k]`), lane `k` of the result for
/// token `k`. The integer sums are exact whatever their order, and the float arithmetic is
/// [`kdot`]'s operation for operation, so every lane equals its `kdot`.
#[inline(always)]
unsafe fn kdot8(k: &KBlock, y: &[*const u8; 8]) -> __m256 {
    let acc: [__m256i; 8] = arr!(8, _mm256_setzero_si256(), |t| {
        let yq = y[t].add(4);
        let mut a = _mm256_setzero_si256();
        for c in 0..8 {
            let p =
                _mm256_maddubs_epi16(k.q[c], _mm256_loadu_si256(yq.add(32 * c) as *const __m256i));
            a = _mm256_add_epi32(a, _mm256_madd_epi16(k.sc[c], p));
        }
        a
    });
    let bsums: [__m256i; 8] = arr!(8, _mm256_setzero_si256(), |t| _mm256_loadu_si256(
        y[t].add(260) as *const __m256i
    ));
    let mut isum = hsum8_i32(&acc);
    if k.offset != 0 {
        let corr = hsum8_i32(&arr!(8, _mm256_setzero_si256(), |t| _mm256_madd_epi16(
            k.sc16, bsums[t]
        )));
        isum = _mm256_sub_epi32(isum, _mm256_mullo_epi32(_mm256_set1_epi32(k.offset), corr));
    }
    let msum = hsum8_i32(&arr!(8, _mm256_setzero_si256(), |t| _mm256_madd_epi16(
        k.min16, bsums[t]
    )));
    let dy = _mm256_setr_ps(
        (y[0] as *const f32).read_unaligned(),
        (y[1] as *const f32).read_unaligned(),
        (y[2] as *const f32).read_unaligned(),
        (y[3] as *const f32).read_unaligned(),
        (y[4] as *const f32).read_unaligned(),
        (y[5] as *const f32).read_unaligned(),
        (y[6] as *const f32).read_unaligned(),
        (y[7] as *const f32).read_unaligned(),
    );
    _mm256_sub_ps(
        _mm256_mul_ps(
            _mm256_mul_ps(_mm256_set1_ps(k.d), dy),
            _mm256_cvtepi32_ps(isum),
        ),
        _mm256_mul_ps(
            _mm256_mul_ps(_mm256_set1_ps(k.dmin), dy),
            _mm256_cvtepi32_ps(msum),
        ),
    )
}

#[inline(always)]
unsafe fn i16x16(v: [i16; 16]) -> __m256i {
    _mm256_loadu_si256(v.as_ptr() as *const __m256i)
}

/// The eight 6-bit scales and eight mins of a Q4_K/Q5_K block as bytes
/// `[sc0..sc7, m0..m7]` (llama.cpp's word trick; same values as `k4_scales_mins`).
#[inline(always)]
pub(super) unsafe fn k4_scales_vec(s: &[u8; 12]) -> __m128i {
    const M1: u32 = 0x3f3f_3f3f;
    const M2: u32 = 0x0f0f_0f0f;
    const M3: u32 = 0x0303_0303;
    let u = |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
    let (u0, u1, u2) = (u(0), u(1), u(2));
    let t0 = u0 & M1;
    let t1 = (u2 & M2) | (((u0 >> 6) & M3) << 4);
    let t2 = u1 & M1;
    let t3 = ((u2 >> 4) & M2) | (((u1 >> 6) & M3) << 4);
    _mm_set_epi32(t3 as i32, t2 as i32, t1 as i32, t0 as i32)
}

/// Byte `i` of `v` as sixteen unsigned i16.
#[inline(always)]
pub(super) unsafe fn bcast_u8_i16(v: __m128i, i: i8) -> __m256i {
    _mm256_cvtepu8_epi16(_mm_shuffle_epi8(v, _mm_set1_epi8(i)))
}

/// A Q4_K/Q5_K super-block from its quants and packed scales (`k4_scales_vec`): one scale
/// per 32-element chunk, one min per 16-element group.
#[inline(always)]
unsafe fn k4_block(q: [__m256i; 8], scm: __m128i, d: f32, dmin: f32) -> KBlock {
    let mut sc = [_mm256_setzero_si256(); 8];
    for (c, v) in sc.iter_mut().enumerate() {
        *v = bcast_u8_i16(scm, c as i8);
    }
    let mins = _mm_setr_epi8(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15);
    KBlock {
        q,
        sc,
        sc16: _mm256_setzero_si256(),
        min16: _mm256_cvtepu8_epi16(_mm_shuffle_epi8(scm, mins)),
        offset: 0,
        d,
        dmin,
    }
}

#[inline(always)]
unsafe fn unpack_q4_k(b: &BlockQ4K) -> KBlock {
    let scm = k4_scales_vec(&b.scales);
    let m4 = _mm256_set1_epi8(0x0F);
    let mut q = [_mm256_setzero_si256(); 8];
    for j in 0..4 {
        let bits = _mm256_loadu_si256(b.qs.as_ptr().add(32 * j) as *const __m256i);
        q[2 * j] = _mm256_and_si256(bits, m4);
        q[2 * j + 1] = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
    }
    k4_block(q, scm, h(b.d), h(b.dmin))
}

#[inline(always)]
pub(super) unsafe fn unpack_q5_k(b: &BlockQ5K) -> KBlock {
    let scm = k4_scales_vec(&b.scales);
    let m4 = _mm256_set1_epi8(0x0F);
    let qh = _mm256_loadu_si256(b.qh.as_ptr() as *const __m256i);
    macro_rules! bit {
        ($v:expr) => {{
            let mask = _mm256_set1_epi8($v as u8 as i8);
            _mm256_and_si256(
                _mm256_cmpeq_epi8(_mm256_and_si256(qh, mask), mask),
                _mm256_set1_epi8(16),
            )
        }};
    }
    let mut q = [_mm256_setzero_si256(); 8];
    for j in 0..4 {
        let bits = _mm256_loadu_si256(b.qs.as_ptr().add(32 * j) as *const __m256i);
        q[2 * j] = _mm256_or_si256(_mm256_and_si256(bits, m4), bit!(1u32 << (2 * j)));
        q[2 * j + 1] = _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4),
            bit!(2u32 << (2 * j)),
        );
    }
    k4_block(q, scm, h(b.d), h(b.dmin))
}

#[inline(always)]
unsafe fn unpack_q6_k(b: &BlockQ6K) -> KBlock {
    let m15 = _mm256_set1_epi8(15);
    let mut q = [_mm256_setzero_si256(); 8];
    for n in 0..2 {
        let l1 = _mm256_loadu_si256(b.ql.as_ptr().add(64 * n) as *const __m256i);
        let l2 = _mm256_loadu_si256(b.ql.as_ptr().add(64 * n + 32) as *const __m256i);
        let hb = _mm256_loadu_si256(b.qh.as_ptr().add(32 * n) as *const __m256i);
        let h0 = _mm256_slli_epi16(_mm256_and_si256(hb, _mm256_set1_epi8(3)), 4);
        let h1 = _mm256_slli_epi16(_mm256_and_si256(hb, _mm256_set1_epi8(12)), 2);
        let h2 = _mm256_and_si256(hb, _mm256_set1_epi8(48));
        let h3 = _mm256_srli_epi16(_mm256_and_si256(hb, _mm256_set1_epi8(-64)), 2);
        q[4 * n] = _mm256_or_si256(_mm256_and_si256(l1, m15), h0);
        q[4 * n + 1] = _mm256_or_si256(_mm256_and_si256(l2, m15), h1);
        q[4 * n + 2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m15), h2);
        q[4 * n + 3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l2, 4), m15), h3);
    }
    let sv = _mm_loadu_si128(b.scales.as_ptr() as *const __m128i);
    let mut sc = [_mm256_setzero_si256(); 8];
    for (c, v) in sc.iter_mut().enumerate() {
        let (a, b) = (2 * c as i8, 2 * c as i8 + 1);
        let mask = _mm_setr_epi8(a, a, a, a, a, a, a, a, b, b, b, b, b, b, b, b);
        *v = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sv, mask));
    }
    KBlock {
        q,
        sc,
        sc16: _mm256_cvtepi8_epi16(sv),
        min16: _mm256_setzero_si256(),
        offset: 32,
        d: h(b.d),
        dmin: 0.0,
    }
}

#[inline(always)]
pub(super) unsafe fn unpack_q3_k(b: &BlockQ3K) -> KBlock {
    let sc = q3k_scales(&b.scales);
    let m3 = _mm256_set1_epi8(3);
    let hm = _mm256_loadu_si256(b.hmask.as_ptr() as *const __m256i);
    let mut q = [_mm256_setzero_si256(); 8];
    for n in 0..2 {
        let bits = _mm256_loadu_si256(b.qs.as_ptr().add(32 * n) as *const __m256i);
        for j in 0..4 {
            let low = _mm256_and_si256(_mm256_srl_epi16(bits, _mm_cvtsi32_si128(2 * j as i32)), m3);
            let mask = _mm256_set1_epi8((1u8 << (4 * n + j)) as i8);
            let high = _mm256_and_si256(
                _mm256_cmpeq_epi8(_mm256_and_si256(hm, mask), mask),
                _mm256_set1_epi8(4),
            );
            q[4 * n + j] = _mm256_or_si256(low, high);
        }
    }
    let s: [i16; 16] = arr!(16, 0i16, |g| sc[g] as i16);
    KBlock {
        q,
        sc: arr!(8, _mm256_setzero_si256(), |c| scale_pair(
            s[2 * c],
            s[2 * c + 1]
        )),
        sc16: i16x16(s),
        min16: _mm256_setzero_si256(),
        offset: 4,
        d: h(b.d),
        dmin: 0.0,
    }
}

#[inline(always)]
pub(super) unsafe fn unpack_q2_k(b: &BlockQ2K) -> KBlock {
    let m3 = _mm256_set1_epi8(3);
    let mut q = [_mm256_setzero_si256(); 8];
    for n in 0..2 {
        let bits = _mm256_loadu_si256(b.qs.as_ptr().add(32 * n) as *const __m256i);
        for j in 0..4 {
            q[4 * n + j] =
                _mm256_and_si256(_mm256_srl_epi16(bits, _mm_cvtsi32_si128(2 * j as i32)), m3);
        }
    }
    let s: [i16; 16] = arr!(16, 0i16, |g| (b.scales[g] & 0xF) as i16);
    KBlock {
        q,
        sc: arr!(8, _mm256_setzero_si256(), |c| scale_pair(
            s[2 * c],
            s[2 * c + 1]
        )),
        sc16: _mm256_setzero_si256(),
        min16: i16x16(arr!(16, 0i16, |g| (b.scales[g] >> 4) as i16)),
        offset: 0,
        d: h(b.d),
        dmin: h(b.dmin),
    }
}

/// One Q4_K super-block against one Q8_K block, fused (nothing materialized): the decode path.
#[inline(always)]
unsafe fn sb_q4_k(x: *const u8, y: *const u8) -> f32 {
    let b = &*(x as *const BlockQ4K);
    let scm = k4_scales_vec(&b.scales);
    let m4 = _mm256_set1_epi8(0x0F);
    let yq = y.add(4);
    let mut acc = _mm256_setzero_si256();
    for j in 0..4 {
        let bits = _mm256_loadu_si256(b.qs.as_ptr().add(32 * j) as *const __m256i);
        let lo = _mm256_and_si256(bits, m4);
        let hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
        let pl = _mm256_maddubs_epi16(lo, _mm256_loadu_si256(yq.add(64 * j) as *const __m256i));
        let ph = _mm256_maddubs_epi16(
            hi,
            _mm256_loadu_si256(yq.add(64 * j + 32) as *const __m256i),
        );
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(bcast_u8_i16(scm, 2 * j as i8), pl));
        acc = _mm256_add_epi32(
            acc,
            _mm256_madd_epi16(bcast_u8_i16(scm, 2 * j as i8 + 1), ph),
        );
    }
    q4_k_finish(b, scm, y, hsum_i32(acc))
}

/// The end of [`sb_q4_k`] from the exact sum of quants × scales `isum` (`scm`: the block's
/// [`k4_scales_vec`]): the minimum terms and the scales.
#[inline(always)]
pub(super) unsafe fn q4_k_finish(b: &BlockQ4K, scm: __m128i, y: *const u8, isum: i32) -> f32 {
    let mins = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(
        scm,
        _mm_setr_epi8(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15),
    ));
    let bsums = _mm256_loadu_si256(y.add(260) as *const __m256i);
    let msum = hsum_i32(_mm256_madd_epi16(mins, bsums));
    let dy = f32::from_le_bytes([*y, *y.add(1), *y.add(2), *y.add(3)]);
    (h(b.d) * dy) * isum as f32 - (h(b.dmin) * dy) * msum as f32
}

/// One Q6_K super-block against one Q8_K block, fused: the decode path.
#[inline(always)]
unsafe fn sb_q6_k(x: *const u8, y: *const u8) -> f32 {
    let b = &*(x as *const BlockQ6K);
    let sv = _mm_loadu_si128(b.scales.as_ptr() as *const __m128i);
    let yq = y.add(4);
    let mut acc = _mm256_setzero_si256();
    for n in 0..2 {
        let l1 = _mm256_loadu_si256(b.ql.as_ptr().add(64 * n) as *const __m256i);
        let l2 = _mm256_loadu_si256(b.ql.as_ptr().add(64 * n + 32) as *const __m256i);
        let hb = _mm256_loadu_si256(b.qh.as_ptr().add(32 * n) as *const __m256i);
        let q = q6_k_quants(l1, l2, hb);
        for (i, qi) in q.iter().enumerate() {
            let c = 4 * n + i;
            let p = _mm256_maddubs_epi16(*qi, _mm256_loadu_si256(yq.add(32 * c) as *const __m256i));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(q6_k_chunk_scales(sv, c), p));
        }
    }
    q6_k_finish(b, sv, y, hsum_i32(acc))
}

/// The scales of 32-element chunk `c` of a Q6_K block (`sv`: its sixteen scale bytes) as
/// sixteen i16: two 16-element groups' scales, eight times each.
#[inline(always)]
pub(super) unsafe fn q6_k_chunk_scales(sv: __m128i, c: usize) -> __m256i {
    let (a, bb) = (2 * c as i8, 2 * c as i8 + 1);
    let mask = _mm_setr_epi8(a, a, a, a, a, a, a, a, bb, bb, bb, bb, bb, bb, bb, bb);
    _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sv, mask))
}

/// The end of [`sb_q6_k`] from the exact sum of quants (stored +32) × scales `raw`: the offset
/// correction and the scale.
#[inline(always)]
pub(super) unsafe fn q6_k_finish(b: &BlockQ6K, sv: __m128i, y: *const u8, raw: i32) -> f32 {
    let bsums = _mm256_loadu_si256(y.add(260) as *const __m256i);
    let isum = raw - 32 * hsum_i32(_mm256_madd_epi16(_mm256_cvtepi8_epi16(sv), bsums));
    let dy = f32::from_le_bytes([*y, *y.add(1), *y.add(2), *y.add(3)]);
    let d = h(b.d) * dy;
    d * isum as f32 - (0.0 * dy) * 0.0
}

/// The fused single-token super-block dot of a type, where there is one.
macro_rules! sb_dot {
    (BlockQ4K, $x:expr, $y:expr) => {
        Some(sb_q4_k($x, $y))
    };
    (BlockQ6K, $x:expr, $y:expr) => {
        Some(sb_q6_k($x, $y))
    };
    ($other:ident, $x:expr, $y:expr) => {{
        let _ = ($x, $y);
        None::<f32>
    }};
}

/// Whether [`sb_dot!`] has a fused single-token kernel for a block type.
macro_rules! has_sb {
    (BlockQ4K) => {
        true
    };
    (BlockQ6K) => {
        true
    };
    ($other:ident) => {
        false
    };
}

macro_rules! kquant_avx2 {
    ($block:ident, $bytes:expr, $unpack:ident, $dot:ident, $gemm:ident) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
            let mut sum = 0.0f32;
            for (x, y) in as_blocks::<$block>(w)
                .iter()
                .zip(as_blocks::<BlockQ8K>(a))
                .take(n / QK_K)
            {
                let (xp, yp) = (
                    (x as *const $block) as *const u8,
                    (y as *const BlockQ8K) as *const u8,
                );
                sum += match sb_dot!($block, xp, yp) {
                    Some(v) => v,
                    None => kdot(&$unpack(x), yp),
                };
            }
            sum
        }

        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $gemm(t: &Tile) {
            const N: usize = 8;
            let nb = t.cols / QK_K;
            let (w, rb, x, xb) = (t.w.as_ptr(), t.w_row_bytes, t.x.as_ptr(), t.x_row_bytes);
            if t.tokens == 1 && has_sb!($block) {
                for r in t.rows.clone() {
                    // One token: the fused super-block dot, nothing unpacked to memory.
                    let wr = w.add(r * rb);
                    let mut sum = 0.0f32;
                    for b in 0..nb {
                        let xb0 = wr.add(b * $bytes);
                        prefetch_span(xb0.wrapping_add(PREFETCH), $bytes);
                        sum += sb_dot!($block, xb0, x.add(b * 292)).unwrap_or(0.0);
                    }
                    t.out.write(r, sum);
                }
                return;
            }
            let tb = token_block(xb);
            // Each row is unpacked once per block of tokens into this thread's buffer, and
            // every token of the block runs past the unpacked super-blocks.
            KROW.with(|cell| {
                let mut krow = cell.borrow_mut();
                let mut t0 = 0;
                while t0 < t.tokens {
                    let t1 = (t0 + tb).min(t.tokens);
                    for r in t.rows.clone() {
                        let wr = w.add(r * rb);
                        krow.clear();
                        for b in 0..nb {
                            let blk = &*(wr.add(b * $bytes) as *const $block);
                            prefetch_span(wr.add(b * $bytes).wrapping_add(PREFETCH), $bytes);
                            krow.push($unpack(blk));
                        }
                        let mut k0 = t0;
                        // Eight tokens at a time, their integer sums reduced together.
                        while k0 + N <= t1 {
                            let mut sums = _mm256_setzero_ps();
                            for (b, u) in krow.iter().enumerate() {
                                let ys: [*const u8; N] =
                                    arr!(N, x, |k| x.add((k0 + k) * xb + b * 292));
                                sums = _mm256_add_ps(sums, kdot8(u, &ys));
                            }
                            let mut v = [0.0f32; N];
                            _mm256_storeu_ps(v.as_mut_ptr(), sums);
                            for (k, s) in v.iter().enumerate() {
                                t.out.write((k0 + k) * t.out_stride + r, *s);
                            }
                            k0 += N;
                        }
                        if k0 < t1 {
                            let nt = t1 - k0;
                            let mut sums = [0.0f32; N];
                            for (b, u) in krow.iter().enumerate() {
                                for k in 0..nt {
                                    sums[k] += kdot(u, x.add((k0 + k) * xb + b * 292));
                                }
                            }
                            for k in 0..nt {
                                t.out.write((k0 + k) * t.out_stride + r, sums[k]);
                            }
                        }
                    }
                    t0 = t1;
                }
            });
        }
    };
}

thread_local! {
    /// Each thread's unpacked super-blocks of one K-quant row (kept: no allocation per call).
    static KROW: std::cell::RefCell<Vec<KBlock>> = const { std::cell::RefCell::new(Vec::new()) };
}

kquant_avx2!(BlockQ2K, 84, unpack_q2_k, dot_q2_k_q8_k, gemm_q2_k);
kquant_avx2!(BlockQ3K, 110, unpack_q3_k, dot_q3_k_q8_k, gemm_q3_k);
kquant_avx2!(BlockQ4K, 144, unpack_q4_k, dot_q4_k_q8_k, gemm_q4_k);
kquant_avx2!(BlockQ5K, 176, unpack_q5_k, dot_q5_k_q8_k, gemm_q5_k);
kquant_avx2!(BlockQ6K, 210, unpack_q6_k, dot_q6_k_q8_k, gemm_q6_k);

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
unsafe fn dup_byte(j: i8) -> __m256i {
    let f = |d: i8| i32::from_le_bytes([(4 * d + j) as u8, 0x80, (4 * d + j) as u8, 0x80]);
    _mm256_setr_epi32(f(0), f(1), f(2), f(3), f(0), f(1), f(2), f(3))
}

/// Shuffle indices putting bytes `j` and `j + 1` of each dword in the low bytes of its two i16
/// halves.
#[inline(always)]
unsafe fn pair_bytes(j: i8) -> __m256i {
    let f = |d: i8| i32::from_le_bytes([(4 * d + j) as u8, 0x80, (4 * d + j + 1) as u8, 0x80]);
    _mm256_setr_epi32(f(0), f(1), f(2), f(3), f(0), f(1), f(2), f(3))
}

/// The 6-bit scales and mins of eight Q4_K rows from their three interleaved words at `s`:
/// (`[sc0..3, sc4..7]`, `[m0..3, m4..7]`), each dword the row of its lane (the word trick of
/// [`k4_scales_vec`], lane by lane).
#[inline(always)]
unsafe fn k4_scales_rows8(s: *const u8) -> ([__m256i; 2], [__m256i; 2]) {
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
unsafe fn q8k_pair_sums(y: *const u8) -> [__m256i; 4] {
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
unsafe fn q4_k_rows8<const T: usize>(
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
static HIGH_BYTES: [[i8; 32]; 6] = {
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
unsafe fn q6_k_scales(word: __m256i, pat: usize) -> __m256i {
    let idx = _mm256_loadu_si256(HIGH_BYTES[pat].as_ptr() as *const __m256i);
    _mm256_srai_epi16(_mm256_shuffle_epi8(word, idx), 8)
}

/// The four unsigned 6-bit quant vectors of elements `128n + 32m + 4kk..+4` (m = 0..4) of eight
/// interleaved Q6_K rows, from their low-bit words `la` (`ql` word `16n + kk`), `lb` (word
/// `16n + 8 + kk`) and high-bit word `hb` (`qh` word `8n + kk`).
#[inline(always)]
pub(super) unsafe fn q6_k_quants(la: __m256i, lb: __m256i, hb: __m256i) -> [__m256i; 4] {
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
unsafe fn q6_k_column_scales(c: *const u8) -> ([__m256i; 16], [__m256i; 8]) {
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
unsafe fn q6_k_column_done<const T: usize>(
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

const Q6K_COL: usize = 8 * 210;

/// Eight interleaved Q6_K rows (group at `g`, `nb` super-blocks) × one token (Q8_K row at `y`):
/// lane `i` is row `i` · the token. The layout's quant vectors are read in order, the four
/// quant vectors of a position built from one load of each of its three words; two `maddubs`
/// results fit an i16 (2 * 2 * 63 * 128 = 32256) before each multiply by a group's scale.
#[inline(always)]
unsafe fn q6_k_rows8_1(g: *const u8, nb: usize, y: *const u8) -> __m256 {
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
unsafe fn q6_k_unpack(g: *const u8, nb: usize, q: *mut __m256i) {
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
unsafe fn q6_k_rows8_unpacked<const T: usize>(
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
trait KRows8 {
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

struct Q4K;
impl KRows8 for Q4K {
    const TY: crate::quant::GgmlType = crate::quant::GgmlType::Q4_K;
    #[inline(always)]
    unsafe fn rows8<const T: usize>(g: *const u8, nb: usize, y: [*const u8; T]) -> [__m256; T] {
        q4_k_rows8::<T>(g, nb, y)
    }
}

struct Q6K;
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
unsafe fn gemm_interleaved_k<K: KRows8>(t: &Tile) {
    if !whole_groups(t, K::TY) {
        return;
    }
    let nb = t.cols / QK_K;
    let (w, x, xb) = (t.w.as_ptr(), t.x.as_ptr(), t.x_row_bytes);
    if t.tokens == 1 {
        for r in t.rows.clone().step_by(8) {
            store8(t, r, K::rows8::<1>(w.add(r * t.w_row_bytes), nb, [x])[0]);
        }
        return;
    }
    let q = panel_buffer((nb * K::UNPACKED).max(1));
    let tb = token_block(xb);
    let mut t0 = 0;
    while t0 < t.tokens {
        let t1 = (t0 + tb).min(t.tokens);
        for r in t.rows.clone().step_by(8) {
            let g = w.add(r * t.w_row_bytes);
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

// ---------------------------------------------------------------------------------------------
// Float weights (F32, F16, BF16) against activations of the same type, in the reference's two
// orders: `vec` (four 8-lane accumulators over 32-element steps; single tokens) and `gemm`
// (one 8-lane accumulator; batches).

use crate::quant::float::{vec_tail, Elem, BF16, F16, F32};

/// A float element type's eight-element load (its scalar properties are those of
/// [`crate::quant::float::Elem`]).
trait FloatElem: Elem {
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
unsafe fn fdot_vec<E: FloatElem>(n: usize, w: &[u8], x: &[u8]) -> f32 {
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
unsafe fn fdot_gemm<E: FloatElem>(n: usize, w: *const u8, x: *const u8) -> f32 {
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

#[inline(always)]
unsafe fn gemm_float<E: FloatElem>(t: &Tile) {
    let n = t.cols;
    let (w, rb, x, xb) = (t.w.as_ptr(), t.w_row_bytes, t.x.as_ptr(), t.x_row_bytes);
    if !t.batched {
        for r in t.rows.clone() {
            let wr = w.add(r * rb);
            _mm_prefetch::<_MM_HINT_T0>(wr.wrapping_add(rb) as *const i8);
            for k in 0..t.tokens {
                let v = fdot_vec::<E>(n, t.w_row(r), t.x_row(k));
                t.out.write(k * t.out_stride + r, v);
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
    let mut r0 = t.rows.start;
    while r0 < t.rows.end {
        let r1 = (r0 + rows_per_block).min(t.rows.end);
        let mut k = 0;
        while k < t.tokens {
            let nk = (t.tokens - k).min(TOK);
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
                let out =
                    |ri: usize, kk: usize, v: f32| t.out.write((k + kk) * t.out_stride + r + ri, v);
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
unsafe fn float_tile<E: FloatElem, const R: usize, const N: usize>(
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

/// Up to four queries attending to the same f16 KV head (one head group of a batch), in the
/// batched (`Gemm`) order: each key and value vector is converted once for all of them. Per
/// query, exactly the arithmetic of [`attend_head_f16`].
///
/// `scores` holds 4 × `stride` floats (`stride` ≥ max `n_kv` rounded up to 8), `qr` 4 × head_dim.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn attend_group4_f16(
    qs: [&[f32]; 4],
    n_kv: [usize; 4],
    nq: usize,
    kv: &PagedHead<half::f16>,
    scale: f32,
    scores: &mut [f32],
    stride: usize,
    qr: &mut [f32],
    outs: [*mut f32; 4],
) {
    let (hd, bs) = (kv.head_dim, kv.block_size);
    let n_max = (0..nq).map(|i| n_kv[i]).max().unwrap_or(0);
    let padded = n_max.div_ceil(8) * 8;
    let qp = qr.as_mut_ptr();
    for i in 0..nq {
        for c in (0..hd).step_by(8) {
            _mm256_storeu_ps(
                qp.add(i * hd + c),
                round_f16(_mm256_loadu_ps(qs[i].as_ptr().add(c))),
            );
        }
    }
    // Block sizes here are powers of two (checked by the caller): shifts, not divisions.
    let (shift, mask) = (bs.trailing_zeros(), bs - 1);
    let start = |p: usize| kv.base + kv.blocks[p >> shift] as usize * kv.block_stride;
    let keys = kv.keys.as_ptr();
    let values = kv.values.as_ptr();
    let sp = scores.as_mut_ptr();
    // Scores, two keys at a time: each key converted once and dotted with all four queries
    // (8 accumulators, one transposed reduction). Absent queries reuse query 0's row and are
    // not stored; an odd last key is paired with itself (its second copy lands in the padding,
    // which is overwritten below).
    let qrow: [*const f32; 4] = arr!(4, qp as *const f32, |i| qp.add(i.min(nq.max(1) - 1) * hd));
    let mut p = 0;
    while p < n_max {
        let k0 = keys.add(start(p) + (p & mask) * hd);
        let k1 = if p + 1 < n_max {
            keys.add(start(p + 1) + ((p + 1) & mask) * hd)
        } else {
            k0
        };
        let mut acc = [_mm256_setzero_ps(); 8];
        for c in (0..hd).step_by(8) {
            let (a, b) = (load_h8(k0.add(c)), load_h8(k1.add(c)));
            for i in 0..4 {
                let qv = _mm256_loadu_ps(qrow[i].add(c));
                acc[2 * i] = _mm256_fmadd_ps(a, qv, acc[2 * i]);
                acc[2 * i + 1] = _mm256_fmadd_ps(b, qv, acc[2 * i + 1]);
            }
        }
        let sums = _mm256_mul_ps(hsum_each(&acc), _mm256_set1_ps(scale));
        store_pairs(sums, nq, |i| sp.add(i * stride + p));
        p += 2;
    }
    for i in 0..nq {
        let row = std::slice::from_raw_parts_mut(sp.add(i * stride), padded);
        for v in row[n_kv[i].min(padded)..].iter_mut() {
            *v = f32::NEG_INFINITY;
        }
        softmax8(row);
        for g in (0..padded).step_by(8) {
            let w = sp.add(i * stride + g);
            _mm256_storeu_ps(w, round_f16(_mm256_loadu_ps(w)));
        }
    }
    // Values, two dimensions at a time: each 8-position slice of a dimension converted once,
    // each slice of probabilities loaded once for both dimensions.
    let groups = padded / 8;
    let prow: [*const f32; 4] = arr!(
        4,
        sp as *const f32,
        |i| sp.add(i.min(nq.max(1) - 1) * stride) as *const f32
    );
    for d in (0..hd).step_by(2) {
        let mut acc = [_mm256_setzero_ps(); 8];
        for g in 0..groups {
            let p = 8 * g;
            let base = values.add(start(p) + d * bs + (p & mask));
            let (a, b) = (load_h8(base), load_h8(base.add(bs)));
            for i in 0..4 {
                let w = _mm256_loadu_ps(prow[i].add(p));
                acc[2 * i] = _mm256_fmadd_ps(a, w, acc[2 * i]);
                acc[2 * i + 1] = _mm256_fmadd_ps(b, w, acc[2 * i + 1]);
            }
        }
        store_pairs(hsum_each(&acc), nq, |i| outs[i].add(d));
    }
}

/// `[hsum(a[0]), …, hsum(a[7])]`: eight horizontal sums at once, each in exactly [`hsum`]'s
/// order (`((x0+x4) + (x2+x6)) + ((x1+x5) + (x3+x7))`).
#[inline(always)]
unsafe fn hsum_each(a: &[__m256; 8]) -> __m256 {
    // Lanes j and j+4 of each vector: s = [s(a_i) | s(a_i+4)].
    let s = |i: usize| {
        _mm256_add_ps(
            _mm256_permute2f128_ps::<0x20>(a[i], a[i + 4]),
            _mm256_permute2f128_ps::<0x31>(a[i], a[i + 4]),
        )
    };
    let (s04, s15, s26, s37) = (s(0), s(1), s(2), s(3));
    // (s0+s2, s1+s3) of two vectors per 128-bit half.
    let u = |x: __m256, y: __m256| {
        let (xd, yd) = (_mm256_castps_pd(x), _mm256_castps_pd(y));
        _mm256_add_ps(
            _mm256_castpd_ps(_mm256_unpacklo_pd(xd, yd)),
            _mm256_castpd_ps(_mm256_unpackhi_pd(xd, yd)),
        )
    };
    let (u01, u23) = (u(s04, s15), u(s26, s37));
    _mm256_add_ps(
        _mm256_shuffle_ps::<0x88>(u01, u23),
        _mm256_shuffle_ps::<0xDD>(u01, u23),
    )
}

/// Stores lanes `2i, 2i+1` of `v` at `at(i)` for each `i < n` (n ≤ 4), as 8-byte integer
/// stores straight from the register halves (no trip through the stack).
#[inline(always)]
unsafe fn store_pairs(v: __m256, n: usize, at: impl Fn(usize) -> *mut f32) {
    let lo = _mm_castps_si128(_mm256_castps256_ps128(v));
    let hi = _mm_castps_si128(_mm256_extractf128_ps::<1>(v));
    let put = |i: usize, bits: i64| (at(i) as *mut i64).write_unaligned(bits);
    if n > 0 {
        put(0, _mm_cvtsi128_si64(lo));
    }
    if n > 1 {
        put(1, _mm_extract_epi64::<1>(lo));
    }
    if n > 2 {
        put(2, _mm_cvtsi128_si64(hi));
    }
    if n > 3 {
        put(3, _mm_extract_epi64::<1>(hi));
    }
}
