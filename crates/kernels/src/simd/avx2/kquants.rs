//! K-quant (Q2_K..Q6_K) dot products and tiles: exact integer sums per super-block, then
//! the reference's float ending.

#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use super::*;
use crate::tile::Tile;

// ---------------------------------------------------------------------------------------------
// K-quants. The reference order (see `quant::kquants`): per super-block, exact integer sums
// isum = Σ_g scale_g Σ q·y and msum = Σ_g min_g · bsum_g, then
// sum += (d·d_y)·isum − (dmin·d_y)·msum in f32. Integer sums are exact in any order, so the
// SIMD code is free to add them however is fastest.

/// A super-block unpacked for SIMD: eight 32-byte chunks of unsigned quants (elements
/// 32c..32c+31), the i16 scale vectors that multiply them, and what the integer sum needs.
pub(crate) struct KBlock {
    pub(crate) q: [__m256i; 8],
    pub(crate) sc: [__m256i; 8],
    /// Per 16-element group: scale (for the offset correction) and min.
    sc16: __m256i,
    min16: __m256i,
    /// Quants are stored as q + offset (0, 4 or 32).
    offset: i32,
    d: f32,
    dmin: f32,
}

#[inline(always)]
pub(super) unsafe fn scale_pair(a: i16, b: i16) -> __m256i {
    _mm256_setr_epi16(a, a, a, a, a, a, a, a, b, b, b, b, b, b, b, b)
}

#[inline(always)]
pub(super) unsafe fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01)))
}

/// (isum, msum) of an unpacked super-block against a Q8_K block at `y`.
#[inline(always)]
pub(super) unsafe fn kdot(k: &KBlock, y: *const u8) -> f32 {
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
pub(crate) unsafe fn kdot_finish(k: &KBlock, y: *const u8, raw: i32) -> f32 {
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
pub(super) unsafe fn hsum8_i32(v: &[__m256i; 8]) -> __m256i {
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
pub(super) unsafe fn kdot8(k: &KBlock, y: &[*const u8; 8]) -> __m256 {
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
pub(super) unsafe fn i16x16(v: [i16; 16]) -> __m256i {
    _mm256_loadu_si256(v.as_ptr() as *const __m256i)
}

/// The eight 6-bit scales and eight mins of a Q4_K/Q5_K block as bytes
/// `[sc0..sc7, m0..m7]` (llama.cpp's word trick; same values as `k4_scales_mins`).
#[inline(always)]
pub(crate) unsafe fn k4_scales_vec(s: &[u8; 12]) -> __m128i {
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
pub(crate) unsafe fn bcast_u8_i16(v: __m128i, i: i8) -> __m256i {
    _mm256_cvtepu8_epi16(_mm_shuffle_epi8(v, _mm_set1_epi8(i)))
}

/// A Q4_K/Q5_K super-block from its quants and packed scales (`k4_scales_vec`): one scale
/// per 32-element chunk, one min per 16-element group.
#[inline(always)]
pub(super) unsafe fn k4_block(q: [__m256i; 8], scm: __m128i, d: f32, dmin: f32) -> KBlock {
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
pub(super) unsafe fn unpack_q4_k(b: &BlockQ4K) -> KBlock {
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
pub(crate) unsafe fn unpack_q5_k(b: &BlockQ5K) -> KBlock {
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
pub(super) unsafe fn unpack_q6_k(b: &BlockQ6K) -> KBlock {
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
pub(crate) unsafe fn unpack_q3_k(b: &BlockQ3K) -> KBlock {
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
pub(crate) unsafe fn unpack_q2_k(b: &BlockQ2K) -> KBlock {
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
pub(super) unsafe fn sb_q4_k(x: *const u8, y: *const u8) -> f32 {
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
pub(crate) unsafe fn q4_k_finish(b: &BlockQ4K, scm: __m128i, y: *const u8, isum: i32) -> f32 {
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
pub(super) unsafe fn sb_q6_k(x: *const u8, y: *const u8) -> f32 {
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
pub(crate) unsafe fn q6_k_chunk_scales(sv: __m128i, c: usize) -> __m256i {
    let (a, bb) = (2 * c as i8, 2 * c as i8 + 1);
    let mask = _mm_setr_epi8(a, a, a, a, a, a, a, a, bb, bb, bb, bb, bb, bb, bb, bb);
    _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sv, mask))
}

/// The end of [`sb_q6_k`] from the exact sum of quants (stored +32) × scales `raw`: the offset
/// correction and the scale.
#[inline(always)]
pub(crate) unsafe fn q6_k_finish(b: &BlockQ6K, sv: __m128i, y: *const u8, raw: i32) -> f32 {
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
            let nb = t.cols() / QK_K;
            let (w, rb, x, xb) = (
                t.w().as_ptr(),
                t.w_row_bytes(),
                t.x().as_ptr(),
                t.x_row_bytes(),
            );
            if t.tokens() == 1 && has_sb!($block) {
                for r in t.rows() {
                    // One token: the fused super-block dot, nothing unpacked to memory.
                    let wr = w.add(r * rb);
                    let mut sum = 0.0f32;
                    for b in 0..nb {
                        let xb0 = wr.add(b * $bytes);
                        prefetch_span(xb0.wrapping_add(PREFETCH), $bytes);
                        sum += sb_dot!($block, xb0, x.add(b * 292)).unwrap_or(0.0);
                    }
                    t.store(0, r, sum);
                }
                return;
            }
            let tb = token_block(xb);
            // Each row is unpacked once per block of tokens into this thread's buffer, and
            // every token of the block runs past the unpacked super-blocks.
            KROW.with(|cell| {
                let mut krow = cell.borrow_mut();
                let mut t0 = 0;
                while t0 < t.tokens() {
                    let t1 = (t0 + tb).min(t.tokens());
                    for r in t.rows() {
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
                                t.store(k0 + k, r, *s);
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
                                t.store(k0 + k, r, sums[k]);
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
