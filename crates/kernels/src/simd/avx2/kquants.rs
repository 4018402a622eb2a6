//! K-quant (Q2_K..Q6_K) dot products and tiles in llama.cpp's AVX2 order (see
//! [`crate::quant::kquants`]): eight exact integer lanes per super-block, fused into an
//! eight-lane f32 accumulator, the minimums by type.

#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use super::*;
use crate::order::Order;
use crate::quant::kquants::KKind;
use crate::tile::Tile;

/// A super-block unpacked for SIMD: eight 32-byte chunks of quants (elements 32c..32c+31, as
/// llama.cpp multiplies them: unsigned, or signed for Q3_K), the i16 scale vectors that
/// multiply them, and what the lanes' corrections and the minimums need.
pub(crate) struct KBlock {
    pub(crate) q: [__m256i; 8],
    pub(crate) sc: [__m256i; 8],
    /// Per 16-element group: scale (for the offset correction) and min.
    sc16: __m256i,
    min16: __m256i,
    /// Quants are stored as q + offset (0 or 32).
    offset: i32,
    /// Whether the quants are signed (Q3_K).
    signed: bool,
    kind: KKind,
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

/// The eight integer lanes of an unpacked super-block against a Q8_K block at `y`.
#[inline(always)]
pub(super) unsafe fn klanes(k: &KBlock, y: *const u8) -> __m256i {
    let yq = y.add(4);
    let mut acc = _mm256_setzero_si256();
    for c in 0..8 {
        let yc = _mm256_loadu_si256(yq.add(32 * c) as *const __m256i);
        let p = if k.signed {
            _mm256_maddubs_epi16(
                _mm256_sign_epi8(k.q[c], k.q[c]),
                _mm256_sign_epi8(yc, k.q[c]),
            )
        } else {
            _mm256_maddubs_epi16(k.q[c], yc)
        };
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(k.sc[c], p));
    }
    if k.offset != 0 {
        let bsums = _mm256_loadu_si256(y.add(260) as *const __m256i);
        let corr = _mm256_madd_epi16(k.sc16, bsums);
        acc = _mm256_sub_epi32(acc, _mm256_mullo_epi32(corr, _mm256_set1_epi32(k.offset)));
    }
    acc
}

/// The running sums of one K-quant dot product in registers (see `quant::kquants::KAcc`).
#[derive(Clone, Copy)]
pub(super) struct KAccV {
    acc: __m256,
    acc_m: __m128,
    summs: f32,
}

impl KAccV {
    #[inline(always)]
    pub(super) unsafe fn new() -> KAccV {
        KAccV {
            acc: _mm256_setzero_ps(),
            acc_m: _mm_setzero_ps(),
            summs: 0.0,
        }
    }

    /// Adds super-block `k` against the Q8_K block at `y`.
    #[inline(always)]
    pub(super) unsafe fn add(&mut self, k: &KBlock, y: *const u8) {
        let dy = (y as *const f32).read_unaligned();
        let (d, dmin) = (dy * k.d, -dy * k.dmin);
        if matches!(k.kind, KKind::Q2 | KKind::Q4 | KKind::Q5) {
            let bsums = _mm256_loadu_si256(y.add(260) as *const __m256i);
            let mins = _mm256_madd_epi16(k.min16, bsums);
            match k.kind {
                KKind::Q2 => {
                    self.acc =
                        _mm256_fmadd_ps(_mm256_set1_ps(dmin), _mm256_cvtepi32_ps(mins), self.acc)
                }
                KKind::Q4 => {
                    let p = _mm_hadd_epi32(
                        _mm256_castsi256_si128(mins),
                        _mm256_extracti128_si256(mins, 1),
                    );
                    self.acc_m = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(p), self.acc_m);
                }
                _ => self.summs = dmin.mul_add(hsum_i32(mins) as f32, self.summs),
            }
        }
        let lanes = _mm256_cvtepi32_ps(klanes(k, y));
        self.acc = _mm256_fmadd_ps(_mm256_set1_ps(d), lanes, self.acc);
    }

    /// Adds super-block `k` against the Q8_K block at `y` in `ggml-cpu/tiled`'s order (the
    /// running sum kept in `summs`; see `quant::kquants`).
    #[inline(always)]
    pub(super) unsafe fn add_tiled(&mut self, k: &KBlock, y: *const u8) {
        let dy = (y as *const f32).read_unaligned();
        let mut r = k.d * hsum_i32(klanes(k, y)) as f32;
        if matches!(k.kind, KKind::Q2 | KKind::Q4 | KKind::Q5) {
            let bsums = _mm256_loadu_si256(y.add(260) as *const __m256i);
            let s2 = hsum_i32(_mm256_madd_epi16(k.min16, bsums));
            r = (-k.dmin).mul_add(s2 as f32, r);
        }
        self.summs = r.mul_add(dy, self.summs);
    }

    /// Adds super-block `k` in order `tiled` (see [`KAccV::add_tiled`]) or `vec_dot`'s.
    #[inline(always)]
    pub(super) unsafe fn add_in(&mut self, tiled: bool, k: &KBlock, y: *const u8) {
        if tiled {
            self.add_tiled(k, y)
        } else {
            self.add(k, y)
        }
    }

    /// The dot product of the super-blocks added so far in order `tiled` or `vec_dot`'s.
    #[inline(always)]
    pub(super) unsafe fn finish_in(&self, tiled: bool, kind: KKind) -> f32 {
        if tiled {
            self.summs
        } else {
            self.finish(kind)
        }
    }

    /// The dot product of the super-blocks added so far.
    #[inline(always)]
    pub(super) unsafe fn finish(&self, kind: KKind) -> f32 {
        let s = hsum(self.acc);
        match kind {
            KKind::Q4 => {
                let m = _mm_add_ps(self.acc_m, _mm_movehl_ps(self.acc_m, self.acc_m));
                s + _mm_cvtss_f32(_mm_add_ss(m, _mm_movehdup_ps(m)))
            }
            KKind::Q5 => s + self.summs,
            _ => s,
        }
    }
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
pub(super) unsafe fn k4_block(
    q: [__m256i; 8],
    scm: __m128i,
    kind: KKind,
    d: f32,
    dmin: f32,
) -> KBlock {
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
        signed: false,
        kind,
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
    k4_block(q, scm, KKind::Q4, h(b.d), h(b.dmin))
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
    k4_block(q, scm, KKind::Q5, h(b.d), h(b.dmin))
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
        signed: false,
        kind: KKind::Q6,
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
            // low - 4 where the high bit is clear: -4..3.
            let clear = _mm256_andnot_si256(
                _mm256_cmpeq_epi8(_mm256_and_si256(hm, mask), mask),
                _mm256_set1_epi8(4),
            );
            q[4 * n + j] = _mm256_sub_epi8(low, clear);
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
        offset: 0,
        signed: true,
        kind: KKind::Q3,
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
        signed: false,
        kind: KKind::Q2,
        d: h(b.d),
        dmin: h(b.dmin),
    }
}

macro_rules! kquant_avx2 {
    ($block:ident, $ty:ident, $kind:expr, $bytes:expr, $unpack:ident, $dot:ident, $gemm:ident) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
            let mut acc = KAccV::new();
            for (x, y) in as_blocks::<$block>(w)
                .iter()
                .zip(as_blocks::<BlockQ8K>(a))
                .take(n / QK_K)
            {
                acc.add(&$unpack(x), (y as *const BlockQ8K) as *const u8);
            }
            acc.finish($kind)
        }

        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $gemm(t: &Tile) {
            const N: usize = 8;
            let tiled = t.order().canonical(crate::quant::GgmlType::$ty) == Order::Tiled;
            let nb = t.cols() / QK_K;
            let (w, rb, x, xb) = (
                t.w().as_ptr(),
                t.w_row_bytes(),
                t.x().as_ptr(),
                t.x_row_bytes(),
            );
            if t.tokens() == 1 {
                for r in t.rows() {
                    let wr = w.add(r * rb);
                    let mut acc = KAccV::new();
                    for b in 0..nb {
                        let xb0 = wr.add(b * $bytes);
                        prefetch_span(xb0.wrapping_add(PREFETCH), $bytes);
                        acc.add_in(tiled, &$unpack(&*(xb0 as *const $block)), x.add(b * 292));
                    }
                    t.store(0, r, acc.finish_in(tiled, $kind));
                }
                return;
            }
            let tb = token_block(xb);
            // Each row is unpacked once per block of tokens into this thread's buffer, and
            // every token of the block runs past the unpacked super-blocks, eight at a time.
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
                        while k0 < t1 {
                            let nt = (t1 - k0).min(N);
                            let mut accs = [KAccV::new(); N];
                            for (b, u) in krow.iter().enumerate() {
                                for k in 0..nt {
                                    accs[k].add_in(tiled, u, x.add((k0 + k) * xb + b * 292));
                                }
                            }
                            for k in 0..nt {
                                t.store(k0 + k, r, accs[k].finish_in(tiled, $kind));
                            }
                            k0 += nt;
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

kquant_avx2!(
    BlockQ2K,
    Q2_K,
    KKind::Q2,
    84,
    unpack_q2_k,
    dot_q2_k_q8_k,
    gemm_q2_k
);
kquant_avx2!(
    BlockQ3K,
    Q3_K,
    KKind::Q3,
    110,
    unpack_q3_k,
    dot_q3_k_q8_k,
    gemm_q3_k
);
kquant_avx2!(
    BlockQ4K,
    Q4_K,
    KKind::Q4,
    144,
    unpack_q4_k,
    dot_q4_k_q8_k,
    gemm_q4_k
);
kquant_avx2!(
    BlockQ5K,
    Q5_K,
    KKind::Q5,
    176,
    unpack_q5_k,
    dot_q5_k_q8_k,
    gemm_q5_k
);
kquant_avx2!(
    BlockQ6K,
    Q6_K,
    KKind::Q6,
    210,
    unpack_q6_k,
    dot_q6_k_q8_k,
    gemm_q6_k
);
