//! x86-64 AMX-INT8 tile kernels for batched products (prefill, batched decode), and the tile
//! state they need.
//!
//! AMX multiplies a 16 × K tile of signed bytes by a K × 16 tile into 16 × 16 exact `i32`
//! sums (`tdpbssd`). Those integer sums are exact whatever their grouping, so a kernel here
//! asks the tiles only for the integer sums that the reference order forms (one per sub-block
//! of 32 elements), takes them out of the tile unit, and does the float part with AVX-512 in
//! exactly the order of the scalar definition: the results are bit-identical to
//! [`crate::quant`]'s and to the AVX2 kernels'.
//!
//! - Q4_K in llama.cpp's repacked `gemm` order ([`crate::order::Order::Gemm`], the order its
//!   AVX2 build gives every batch of four or more tokens): activations (Q8_K, signed) are the
//!   A tile, loaded straight from the encoded rows; the weights of sixteen rows, unpacked from
//!   the interleaved layout into B tiles once per tile of work, are reused by every token.
//!
//! Tile registers and the tile configuration are carried from one `asm!` block to the next
//! within a kernel call (an activation tile loaded once for several slabs): rustc never
//! allocates the `tmm` registers or touches the configuration, only address arithmetic runs
//! between those blocks, and every block has side effects, so they keep their order.
//!
//! What is not here runs on the AVX2 / AVX-512 kernels (small batches, other orders, rows
//! that are not whole groups of sixteen). Every function here is `unsafe` and
//! `#[target_feature]`: callers must have checked [`crate::Isa::Amx`] (which includes the
//! grant of the tile state); [`crate::Kernels`] only hands them out after that check.

#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::asm;
use std::arch::x86_64::*;

use super::avx2;
use crate::order::Order;
use crate::quant::blocks::QK_K;
use crate::tile::Tile;

/// A 64-byte aligned line: the unit of the buffers the tile loads and stores use.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

const ZERO_LINE: Line = Line([0; 64]);

/// The tile configuration (`ldtilecfg`'s 64-byte operand, palette 1).
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    /// Tiles `i` of `rows` rows of `colsb` bytes each.
    fn new(tiles: &[(usize, u8, u16)]) -> TileConfig {
        let mut c = [0u8; 64];
        c[0] = 1;
        for &(i, rows, colsb) in tiles {
            c[16 + 2 * i..18 + 2 * i].copy_from_slice(&colsb.to_le_bytes());
            c[48 + i] = rows;
        }
        TileConfig(c)
    }
}

/// Loads a tile configuration for this thread; [`release`] ends it.
#[inline(always)]
unsafe fn configure(c: &TileConfig) {
    asm!("ldtilecfg [{0}]", in(reg) c.0.as_ptr(), options(nostack, readonly));
}

/// Gives the tile state back (so the thread's context switches stop saving it).
#[inline(always)]
unsafe fn release() {
    asm!("tilerelease", options(nostack, nomem));
}

thread_local! {
    /// Each thread's buffers: unpacked weights, padded activations, tile results. Grown as
    /// needed and kept (no allocation per call).
    static BUFFERS: std::cell::RefCell<[Vec<Line>; 4]> =
        const { std::cell::RefCell::new([Vec::new(), Vec::new(), Vec::new(), Vec::new()]) };
}

/// This thread's buffer `i`, at least `lines` lines long. The pointer stays valid until the
/// next call on this thread for the same buffer (the buffer lives as long as the thread and
/// only grows here).
fn buffer(i: usize, lines: usize) -> *mut Line {
    BUFFERS.with(|cell| {
        let mut bufs = cell.borrow_mut();
        if bufs[i].len() < lines {
            bufs[i].resize(lines, ZERO_LINE);
        }
        bufs[i].as_mut_ptr()
    })
}

/// Fewest tokens for which the tile path pays (fewer go to the AVX2 kernels).
const MIN_TOKENS: usize = 8;

// ---------------------------------------------------------------------------------------------
// Q4_K, repacked `gemm` order.
//
// Per super-block column and slab of sixteen rows, the panel holds: the B tiles of the eight
// sub-blocks (8 rows of 64 bytes each: row k holds bytes 4k..4k+4 of the sub-block of each of
// the sixteen weight rows), then as f32 vectors over the sixteen rows the eight scales, the
// eight minimums, `d` and `dmin`.

const K4_B: usize = 0;
const K4_SC: usize = 8 * 8;
const K4_MN: usize = K4_SC + 8;
const K4_D: usize = K4_MN + 8;
const K4_DMIN: usize = K4_D + 1;
/// Lines per super-block column of a slab.
const K4_LINES: usize = K4_DMIN + 1;
/// Bytes of one interleaved Q4_K block column (eight rows).
const K4_COL: usize = 8 * 144;

/// Two 256-bit halves as one register, `lo` in the low half.
#[inline(always)]
unsafe fn join(lo: __m256i, hi: __m256i) -> __m512i {
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
}

/// Byte `j` of each dword of the two groups' vectors, as sixteen floats.
#[inline(always)]
unsafe fn byte_floats(lo: __m256i, hi: __m256i, j: u32) -> __m512 {
    let v = _mm512_srlv_epi32(join(lo, hi), _mm512_set1_epi32(8 * j as i32));
    _mm512_cvtepi32_ps(_mm512_and_si512(v, _mm512_set1_epi32(0xFF)))
}

/// Unpacks sixteen interleaved Q4_K rows (groups at `g0` and `g1`, `nb` super-blocks) into
/// `panel` (`nb * K4_LINES` lines).
#[inline(always)]
unsafe fn q4_k_panel(g0: *const u8, g1: *const u8, nb: usize, panel: *mut Line) {
    let m4 = _mm512_set1_epi8(0x0F);
    for b in 0..nb {
        let (c0, c1) = (g0.add(b * K4_COL), g1.add(b * K4_COL));
        let p = panel.add(b * K4_LINES) as *mut __m512;
        let halves = |off: usize| {
            _mm512_cvtph_ps(_mm256_set_m128i(
                _mm_loadu_si128(c1.add(off) as *const __m128i),
                _mm_loadu_si128(c0.add(off) as *const __m128i),
            ))
        };
        p.add(K4_D).write(halves(0));
        p.add(K4_DMIN).write(halves(16));
        let (sc0, mn0) = avx2::k4_scales_rows8(c0.add(32));
        let (sc1, mn1) = avx2::k4_scales_rows8(c1.add(32));
        for s in 0..8 {
            let (v, j) = (s / 4, (s % 4) as u32);
            p.add(K4_SC + s).write(byte_floats(sc0[v], sc1[v], j));
            p.add(K4_MN + s).write(byte_floats(mn0[v], mn1[v], j));
        }
        let (q0, q1) = (c0.add(128), c1.add(128));
        for pair in 0..4 {
            for k in 0..8 {
                let w = 32 * (8 * pair + k);
                let v = join(
                    _mm256_loadu_si256(q0.add(w) as *const __m256i),
                    _mm256_loadu_si256(q1.add(w) as *const __m256i),
                );
                let lo = _mm512_and_si512(v, m4);
                let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), m4);
                p.add(K4_B + 8 * (2 * pair) + k)
                    .write(_mm512_castsi512_ps(lo));
                p.add(K4_B + 8 * (2 * pair + 1) + k)
                    .write(_mm512_castsi512_ps(hi));
            }
        }
    }
}

/// The results of sixteen tokens for each slab of a piece: `[slab][token]`, rows in the lanes.
type Slabs = [[__m512; 16]; MAX_SLABS];

/// Most slabs of sixteen rows a Q4_K tile takes at once (the matrix product's pieces have at
/// most 64 rows).
const MAX_SLABS: usize = 4;

/// Sixteen tokens (Q8_K rows at `a`, `sa` bytes apart, `nb` super-blocks each) through
/// `slabs` slabs of sixteen rows unpacked in `panel`: `out[j][t]` gets row r of slab j · token
/// t in lane r. The tile configuration of `Q4K::tiles` must be loaded.
///
/// Per super-block the tile unit first forms the 8 sub-block sums of every (token, row) pair
/// of every slab (each activation tile loaded once for all slabs), then the vector unit takes
/// them slab by slab and token by token, the token's accumulators in registers for the whole
/// super-block.
#[inline(always)]
unsafe fn q4_k_chunk(
    panel: *const Line,
    slabs: usize,
    nb: usize,
    a: *const u8,
    sa: usize,
    out: &mut Slabs,
) {
    // Sub-block sums: 1 KiB per (slab, sub-block).
    let c = buffer(2, MAX_SLABS * 8 * 16) as *const u8;
    let mut acc = [[_mm512_setzero_ps(); 16]; MAX_SLABS];
    let mut accm = [[_mm512_setzero_ps(); 16]; MAX_SLABS];
    let mut sums = [[0.0f32; 8]; 16];
    let mut dys = [0.0f32; 16];
    for b in 0..nb {
        let ab = a.add(b * 292);
        for pair in 0..4 {
            let x0 = ab.add(4 + 64 * pair);
            asm!(
                "tileloadd tmm0, [{x0} + {sa}*1]",
                "tileloadd tmm1, [{x1} + {sa}*1]",
                x0 = in(reg) x0,
                x1 = in(reg) x0.add(32),
                sa = in(reg) sa,
                out("tmm0") _, out("tmm1") _,
                options(nostack, readonly),
            );
            for j in 0..slabs {
                let p = panel.add((j * nb + b) * K4_LINES) as *const __m512;
                let b0 = p.add(K4_B + 8 * (2 * pair));
                let c0 = c.add(8192 * j + 2048 * pair);
                // Tiles 0 and 1 hold this pair's activations (loaded above).
                asm!(
                    "tileloadd tmm2, [{b0} + {s64}*1]",
                    "tileloadd tmm3, [{b1} + {s64}*1]",
                    "tilezero tmm4",
                    "tilezero tmm5",
                    "tdpbssd tmm4, tmm0, tmm2",
                    "tdpbssd tmm5, tmm1, tmm3",
                    "tilestored [{c0} + {s64}*1], tmm4",
                    "tilestored [{c1} + {s64}*1], tmm5",
                    b0 = in(reg) b0,
                    b1 = in(reg) b0.add(8),
                    s64 = in(reg) 64usize,
                    c0 = in(reg) c0,
                    c1 = in(reg) c0.add(1024),
                    out("tmm2") _, out("tmm3") _, out("tmm4") _, out("tmm5") _,
                    options(nostack),
                );
            }
        }
        for t in 0..16 {
            let y = ab.add(t * sa);
            dys[t] = (y as *const f32).read_unaligned();
            let bs = y.add(260) as *const i16;
            for s in 0..8 {
                let pair = bs.add(2 * s).read_unaligned() as i32
                    + bs.add(2 * s + 1).read_unaligned() as i32;
                sums[t][s] = pair as f32;
            }
        }
        for j in 0..slabs {
            let p = panel.add((j * nb + b) * K4_LINES) as *const __m512;
            let (d, dmin) = (*p.add(K4_D), *p.add(K4_DMIN));
            let (mut sc, mut mn) = ([_mm512_setzero_ps(); 8], [_mm512_setzero_ps(); 8]);
            for i in 0..8 {
                sc[i] = *p.add(K4_SC + i);
                mn[i] = *p.add(K4_MN + i);
            }
            let cj = c.add(8192 * j);
            for t in 0..16 {
                let dy = _mm512_set1_ps(dys[t]);
                let (dd, ddm) = (_mm512_mul_ps(d, dy), _mm512_mul_ps(dmin, dy));
                let (mut at, mut amt) = (acc[j][t], accm[j][t]);
                for pair in 0..4 {
                    let (s0, s1) = (2 * pair, 2 * pair + 1);
                    let ct = cj.add(2048 * pair + 64 * t);
                    let e = _mm512_cvtepi32_ps(_mm512_load_si512(ct as *const _));
                    let o = _mm512_cvtepi32_ps(_mm512_load_si512(ct.add(1024) as *const _));
                    // Σ scale·isum over the pair: integers below 2^24, so exact in f32.
                    let v = _mm512_fmadd_ps(o, sc[s1], _mm512_mul_ps(e, sc[s0]));
                    at = _mm512_fmadd_ps(v, dd, at);
                    let m = _mm512_fmadd_ps(
                        mn[s1],
                        _mm512_set1_ps(sums[t][s1]),
                        _mm512_mul_ps(mn[s0], _mm512_set1_ps(sums[t][s0])),
                    );
                    amt = _mm512_fmadd_ps(m, ddm, amt);
                }
                acc[j][t] = at;
                accm[j][t] = amt;
            }
        }
    }
    for j in 0..slabs {
        for t in 0..16 {
            out[j][t] = _mm512_sub_ps(acc[j][t], accm[j][t]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Q6_K, `ggml-cpu/tiled` order.
//
// Per super-block column and slab of sixteen rows, the panel holds the B tiles of the sixteen
// groups (4 rows of 64 bytes each: row k holds elements 16g + 4k .. + 4 of each of the sixteen
// weight rows, as q - 32), then the groups' scales as i32 vectors over the sixteen rows, then
// `d` as floats.

const K6_B: usize = 0;
const K6_SC: usize = 16 * 4;
const K6_D: usize = K6_SC + 16;
const K6_LINES: usize = K6_D + 1;

/// Unpacks sixteen interleaved Q6_K rows (groups at `g0` and `g1`, `nb` super-blocks) into
/// `panel` (`nb * K6_LINES` lines), using `q` (`2 * 64 * nb` vectors) for the AVX2 unpacking.
#[inline(always)]
unsafe fn q6_k_panel(g0: *const u8, g1: *const u8, nb: usize, q: *mut __m256i, panel: *mut Line) {
    avx2::q6_k_unpack(g0, nb, q);
    avx2::q6_k_unpack(g1, nb, q.add(64 * nb));
    let off = _mm512_set1_epi8(32);
    for b in 0..nb {
        let (c0, c1) = (g0.add(b * avx2::Q6K_COL), g1.add(b * avx2::Q6K_COL));
        let p = panel.add(b * K6_LINES) as *mut __m512i;
        for g in 0..16 {
            // Elements 16g + 4k: half n, quarter m, word kk of the unpacked vectors.
            let (n, m) = (g / 8, (g % 8) / 2);
            for k in 0..4 {
                let kk = 4 * (g % 2) + k;
                let v = 32 * n + 8 * m + kk;
                let both = join(q.add(64 * b + v).read(), q.add(64 * (nb + b) + v).read());
                p.add(K6_B + 4 * g + k).write(_mm512_sub_epi8(both, off));
            }
        }
        for w in 0..4 {
            let v = join(
                _mm256_loadu_si256(c0.add(16 + 32 * w) as *const __m256i),
                _mm256_loadu_si256(c1.add(16 + 32 * w) as *const __m256i),
            );
            for j in 0..4 {
                // Byte j of each dword, sign-extended.
                let s = _mm512_srai_epi32::<24>(_mm512_sllv_epi32(
                    v,
                    _mm512_set1_epi32(24 - 8 * j as i32),
                ));
                p.add(K6_SC + 4 * w + j).write(s);
            }
        }
        let d = _mm512_cvtph_ps(_mm256_set_m128i(
            _mm_loadu_si128(c1 as *const __m128i),
            _mm_loadu_si128(c0 as *const __m128i),
        ));
        p.add(K6_D).write(_mm512_castps_si512(d));
    }
}

/// Sixteen tokens (Q8_K rows at `a`, `sa` bytes apart) through one slab of sixteen Q6_K rows
/// unpacked in `panel` (`nb` super-blocks): `out[t]` gets row r · token t in lane r. The tile
/// configuration of `Q6K::tiles` must be loaded.
#[inline(always)]
unsafe fn q6_k_slab(
    panel: *const Line,
    nb: usize,
    a: *const u8,
    sa: usize,
    out: &mut [__m512; 16],
) {
    // Group sums: 1 KiB per group.
    let c = buffer(2, 16 * 16) as *const u8;
    let mut acc = [_mm512_setzero_ps(); 16];
    for b in 0..nb {
        let p = panel.add(b * K6_LINES) as *const __m512i;
        let ab = a.add(b * 292);
        for g in 0..16 {
            asm!(
                "tileloadd tmm0, [{x} + {sa}*1]",
                "tileloadd tmm1, [{w} + {s64}*1]",
                "tilezero tmm2",
                "tdpbssd tmm2, tmm0, tmm1",
                "tilestored [{c} + {s64}*1], tmm2",
                x = in(reg) ab.add(4 + 16 * g),
                sa = in(reg) sa,
                w = in(reg) p.add(K6_B + 4 * g),
                s64 = in(reg) 64usize,
                c = in(reg) c.add(1024 * g),
                out("tmm0") _, out("tmm1") _, out("tmm2") _,
                options(nostack),
            );
        }
        let mut sc = [_mm512_setzero_si512(); 16];
        for (g, v) in sc.iter_mut().enumerate() {
            *v = *p.add(K6_SC + g);
        }
        let d = _mm512_castsi512_ps(*p.add(K6_D));
        for t in 0..16 {
            let mut s1 = _mm512_setzero_si512();
            for g in 0..16 {
                let v = _mm512_load_si512(c.add(1024 * g + 64 * t) as *const _);
                s1 = _mm512_add_epi32(s1, _mm512_mullo_epi32(v, sc[g]));
            }
            let r = _mm512_mul_ps(d, _mm512_cvtepi32_ps(s1));
            let dy = _mm512_set1_ps((ab.add(t * sa) as *const f32).read_unaligned());
            acc[t] = _mm512_fmadd_ps(r, dy, acc[t]);
        }
    }
    *out = acc;
}

// ---------------------------------------------------------------------------------------------
// Q4_0, repacked order.
//
// Per block column and slab of sixteen rows, the panel holds the B tile of the block (8 rows of
// 64 bytes: row k holds elements 4k .. 4k + 4 of each of the sixteen weight rows, as q - 8),
// then `d` as floats over the sixteen rows.

const K40_D: usize = 8;
const K40_LINES: usize = K40_D + 1;
/// Bytes of one interleaved Q4_0 block column (eight rows).
const K40_COL: usize = 8 * 18;

/// Unpacks sixteen interleaved Q4_0 rows (groups at `g0` and `g1`, `nb` blocks) into `panel`.
#[inline(always)]
unsafe fn q4_0_panel(g0: *const u8, g1: *const u8, nb: usize, panel: *mut Line) {
    let (m4, eight) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(8));
    for b in 0..nb {
        let (c0, c1) = (g0.add(b * K40_COL), g1.add(b * K40_COL));
        let p = panel.add(b * K40_LINES) as *mut __m512i;
        for k in 0..4 {
            let v = join(
                _mm256_loadu_si256(c0.add(16 + 32 * k) as *const __m256i),
                _mm256_loadu_si256(c1.add(16 + 32 * k) as *const __m256i),
            );
            let lo = _mm512_sub_epi8(_mm512_and_si512(v, m4), eight);
            let hi = _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16::<4>(v), m4), eight);
            p.add(k).write(lo);
            p.add(4 + k).write(hi);
        }
        let d = _mm512_cvtph_ps(_mm256_set_m128i(
            _mm_loadu_si128(c1 as *const __m128i),
            _mm_loadu_si128(c0 as *const __m128i),
        ));
        p.add(K40_D).write(_mm512_castps_si512(d));
    }
}

/// Sixteen tokens (Q8_0 rows at `a`, `sa` bytes apart) through `slabs` slabs of sixteen Q4_0
/// rows unpacked in `panel` (`nb` blocks each): `out[j][t]` gets row r of slab j · token t in
/// lane r. The tile configuration of `Q40::tiles` must be loaded.
#[inline(always)]
unsafe fn q4_0_chunk(
    panel: *const Line,
    slabs: usize,
    nb: usize,
    a: *const u8,
    sa: usize,
    out: &mut Slabs,
) {
    // Block sums of four blocks at a time: 1 KiB per (slab, block).
    const BLOCKS: usize = 4;
    let c = buffer(2, MAX_SLABS * BLOCKS * 16) as *const u8;
    let mut acc = [[_mm512_setzero_ps(); 16]; MAX_SLABS];
    let mut b0 = 0;
    while b0 < nb {
        let n = (nb - b0).min(BLOCKS);
        for i in 0..n {
            let b = b0 + i;
            asm!(
                "tileloadd tmm0, [{x} + {sa}*1]",
                x = in(reg) a.add(b * 34 + 2),
                sa = in(reg) sa,
                out("tmm0") _,
                options(nostack, readonly),
            );
            for j in 0..slabs {
                // Tile 0 holds this block's activations (loaded above).
                asm!(
                    "tileloadd tmm1, [{w} + {s64}*1]",
                    "tilezero tmm2",
                    "tdpbssd tmm2, tmm0, tmm1",
                    "tilestored [{c} + {s64}*1], tmm2",
                    w = in(reg) panel.add((j * nb + b) * K40_LINES),
                    s64 = in(reg) 64usize,
                    c = in(reg) c.add(1024 * (BLOCKS * j + i)),
                    out("tmm1") _, out("tmm2") _,
                    options(nostack),
                );
            }
        }
        for j in 0..slabs {
            for i in 0..n {
                let b = b0 + i;
                let d = _mm512_castsi512_ps(
                    *(panel.add((j * nb + b) * K40_LINES + K40_D) as *const __m512i),
                );
                let cb = c.add(1024 * (BLOCKS * j + i));
                for t in 0..16 {
                    let y = a.add(t * sa + b * 34);
                    let dy = avx2::h([*y, *y.add(1)]);
                    let isum = _mm512_cvtepi32_ps(_mm512_load_si512(cb.add(64 * t) as *const _));
                    acc[j][t] =
                        _mm512_fmadd_ps(isum, _mm512_mul_ps(d, _mm512_set1_ps(dy)), acc[j][t]);
                }
            }
        }
        b0 += n;
    }
    *out = acc;
}

/// The activations of tokens `k..k + m` (`m` at most 16) as sixteen rows `xb` bytes apart:
/// in place for a whole chunk, else a zero-padded copy in this thread's buffer 1.
#[inline(always)]
unsafe fn chunk_rows(x: *const u8, xb: usize, k: usize, m: usize) -> (*const u8, usize) {
    if m == 16 {
        return (x.add(k * xb), xb);
    }
    let pad = buffer(1, (16 * xb).div_ceil(64)) as *mut u8;
    std::ptr::write_bytes(pad, 0, 16 * xb);
    std::ptr::copy_nonoverlapping(x.add(k * xb), pad, m * xb);
    (pad as *const u8, xb)
}

/// Stores the first `m` tokens' results of `slabs` slabs (`out[j][i]`: rows of slab j, token
/// `k + i`).
#[inline(always)]
unsafe fn store_chunk(t: &Tile, out: &Slabs, slabs: usize, k: usize, m: usize) {
    for (s, slab) in out.iter().enumerate().take(slabs) {
        for (i, v) in slab.iter().enumerate().take(m) {
            let mut o = [0.0f32; 16];
            _mm512_storeu_ps(o.as_mut_ptr(), *v);
            t.store_rows(k + i, t.rows().start + 16 * s, &o);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The driver shared by the formats.

/// A weight format with an AMX tile kernel.
trait AmxFormat {
    const TY: crate::quant::GgmlType;
    /// The (canonical) order the tile kernel follows.
    const ORDER: Order;
    /// Elements per block (the unit of the panel).
    const BLOCK: usize;
    /// Panel lines per block and slab of sixteen rows.
    const LINES: usize;
    /// The AVX2 kernel, for the tiles this one does not take.
    unsafe fn fallback(t: &Tile);
    fn tiles() -> TileConfig;
    /// Unpacks the sixteen interleaved rows of the groups at `g0` and `g1` into `panel`.
    unsafe fn panel(g0: *const u8, g1: *const u8, nb: usize, panel: *mut Line);
    /// Sixteen tokens at `a` (`sa` bytes apart) through `slabs` slabs of `panel`.
    unsafe fn chunk(
        panel: *const Line,
        slabs: usize,
        nb: usize,
        a: *const u8,
        sa: usize,
        out: &mut Slabs,
    );
}

struct Q4K;
impl AmxFormat for Q4K {
    const TY: crate::quant::GgmlType = crate::quant::GgmlType::Q4_K;
    const ORDER: Order = Order::Gemm;
    const BLOCK: usize = QK_K;
    const LINES: usize = K4_LINES;
    #[inline(always)]
    unsafe fn fallback(t: &Tile) {
        avx2::gemm_rows8_q4_k(t)
    }
    /// The tiles of the Q4_K kernel: A (activations) 16 × 32 bytes in 0 and 1, B (weights) 8 × 64
    /// bytes in 2 and 3, C 16 × 16 dwords in 4 and 5.
    fn tiles() -> TileConfig {
        TileConfig::new(&[
            (0, 16, 32),
            (1, 16, 32),
            (2, 8, 64),
            (3, 8, 64),
            (4, 16, 64),
            (5, 16, 64),
        ])
    }
    #[inline(always)]
    unsafe fn panel(g0: *const u8, g1: *const u8, nb: usize, panel: *mut Line) {
        q4_k_panel(g0, g1, nb, panel)
    }
    #[inline(always)]
    unsafe fn chunk(
        panel: *const Line,
        slabs: usize,
        nb: usize,
        a: *const u8,
        sa: usize,
        out: &mut Slabs,
    ) {
        q4_k_chunk(panel, slabs, nb, a, sa, out)
    }
}

struct Q6K;
impl AmxFormat for Q6K {
    const TY: crate::quant::GgmlType = crate::quant::GgmlType::Q6_K;
    const ORDER: Order = Order::Tiled;
    const BLOCK: usize = QK_K;
    const LINES: usize = K6_LINES;
    #[inline(always)]
    unsafe fn fallback(t: &Tile) {
        avx2::gemm_rows8_q6_k(t)
    }
    /// The tiles of the Q6_K kernel: A (activations) 16 × 16 bytes in 0, B (weights) 4 × 64 bytes
    /// in 1, C 16 × 16 dwords in 2.
    fn tiles() -> TileConfig {
        TileConfig::new(&[(0, 16, 16), (1, 4, 64), (2, 16, 64)])
    }
    #[inline(always)]
    unsafe fn panel(g0: *const u8, g1: *const u8, nb: usize, panel: *mut Line) {
        // The AVX2 unpacking's scratch: 2 × 64 vectors of 32 bytes per super-block.
        let q = buffer(3, 2 * 32 * nb) as *mut __m256i;
        q6_k_panel(g0, g1, nb, q, panel)
    }
    #[inline(always)]
    unsafe fn chunk(
        panel: *const Line,
        slabs: usize,
        nb: usize,
        a: *const u8,
        sa: usize,
        out: &mut Slabs,
    ) {
        for (j, o) in out.iter_mut().enumerate().take(slabs) {
            q6_k_slab(panel.add(j * nb * K6_LINES), nb, a, sa, o);
        }
    }
}

struct Q40;
impl AmxFormat for Q40 {
    const TY: crate::quant::GgmlType = crate::quant::GgmlType::Q4_0;
    const ORDER: Order = Order::Gemv;
    const BLOCK: usize = crate::quant::blocks::QK;
    const LINES: usize = K40_LINES;
    #[inline(always)]
    unsafe fn fallback(t: &Tile) {
        avx2::gemm_rows8_q4_0(t)
    }
    /// The tiles of the Q4_0 kernel: A (activations) 16 × 32 bytes in 0, B (weights) 8 × 64
    /// bytes in 1, C 16 × 16 dwords in 2.
    fn tiles() -> TileConfig {
        TileConfig::new(&[(0, 16, 32), (1, 8, 64), (2, 16, 64)])
    }
    #[inline(always)]
    unsafe fn panel(g0: *const u8, g1: *const u8, nb: usize, panel: *mut Line) {
        q4_0_panel(g0, g1, nb, panel)
    }
    #[inline(always)]
    unsafe fn chunk(
        panel: *const Line,
        slabs: usize,
        nb: usize,
        a: *const u8,
        sa: usize,
        out: &mut Slabs,
    ) {
        q4_0_chunk(panel, slabs, nb, a, sa, out)
    }
}

/// Interleaved weights of format `F`: the tile path for its order on whole slabs of sixteen
/// rows (at most [`MAX_SLABS`]) and batches of [`MIN_TOKENS`] or more, the AVX2 kernel for the
/// rest. The slabs are unpacked once; the tokens go through them sixteen at a time.
#[inline(always)]
unsafe fn gemm_tiles<F: AmxFormat>(t: &Tile) {
    let rows = t.rows();
    let whole = rows.start.is_multiple_of(16) && rows.end.is_multiple_of(16);
    let slabs = rows.len() / 16;
    if t.order().canonical(F::TY) != F::ORDER
        || t.tokens() < MIN_TOKENS
        || !whole
        || slabs > MAX_SLABS
        || !t.cols().is_multiple_of(F::BLOCK)
    {
        return F::fallback(t);
    }
    let nb = t.cols() / F::BLOCK;
    // The kernels read `nb` blocks of every row: the rows must hold them.
    let blocks_fit = F::TY.row_bytes(t.cols()) == Some(t.w_row_bytes())
        && F::TY
            .traits()
            .vec_dot_type
            .row_bytes(t.cols())
            .is_some_and(|b| b <= t.x_row_bytes());
    if !blocks_fit {
        return F::fallback(t);
    }
    let (w, rb, x, xb) = (
        t.w().as_ptr(),
        t.w_row_bytes(),
        t.x().as_ptr(),
        t.x_row_bytes(),
    );
    let panel = buffer(0, slabs * nb * F::LINES);
    for s in 0..slabs {
        let r = rows.start + 16 * s;
        F::panel(
            w.add(r * rb),
            w.add((r + 8) * rb),
            nb,
            panel.add(s * nb * F::LINES),
        );
    }
    let cfg = F::tiles();
    configure(&cfg);
    let mut out = [[_mm512_setzero_ps(); 16]; MAX_SLABS];
    let mut k = 0;
    while k < t.tokens() {
        let m = (t.tokens() - k).min(16);
        let (a, sa) = chunk_rows(x, xb, k, m);
        F::chunk(panel, slabs, nb, a, sa, &mut out);
        store_chunk(t, &out, slabs, k, m);
        k += m;
    }
    release();
}

/// Declares the public tile kernels, one per format.
macro_rules! amx_tiles {
    ($($name:ident => $f:ty),* $(,)?) => {
        $(
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
            pub unsafe fn $name(t: &Tile) {
                gemm_tiles::<$f>(t)
            }
        )*
    };
}

amx_tiles! {
    gemm_rows8_q4_0 => Q40,
    gemm_rows8_q4_k => Q4K,
    gemm_rows8_q6_k => Q6K,
}
