//! Plain floating-point element types (F32, F16, BF16): conversion to and from f32 and the
//! scalar dot products. Halves are little-endian; rounding is to nearest even, as F16C does.
//!
//! Two reduction orders, as the reference engine has two kernels: [`dot_f16`] and friends
//! follow its `vec_dot` (four 8-lane accumulators over 32-element steps, for a single token);
//! the `*_batched` variants follow its tiled GEMM (one 8-lane accumulator, for batches).

use half::{bf16, f16};

use crate::lanes::{hsum8, reduce4x8, LANES};

/// An element type stored in 2 or 4 little-endian bytes.
pub(crate) trait Elem {
    const BYTES: usize;
    /// Whether the vec-order tail is summed in f64 (ggml's F16/BF16 kernels) or f32 (F32).
    const WIDE_TAIL: bool;
    fn get(b: &[u8], i: usize) -> f32;
}

pub(crate) struct F32;
pub(crate) struct F16;
pub(crate) struct BF16;

impl Elem for F32 {
    const BYTES: usize = 4;
    const WIDE_TAIL: bool = false;
    #[inline(always)]
    fn get(b: &[u8], i: usize) -> f32 {
        f32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
    }
}

impl Elem for F16 {
    const BYTES: usize = 2;
    const WIDE_TAIL: bool = true;
    #[inline(always)]
    fn get(b: &[u8], i: usize) -> f32 {
        f16::from_bits(u16::from_le_bytes([b[2 * i], b[2 * i + 1]])).to_f32()
    }
}

impl Elem for BF16 {
    const BYTES: usize = 2;
    const WIDE_TAIL: bool = true;
    #[inline(always)]
    fn get(b: &[u8], i: usize) -> f32 {
        bf16::from_bits(u16::from_le_bytes([b[2 * i], b[2 * i + 1]])).to_f32()
    }
}

fn halves(src: &[u8]) -> impl Iterator<Item = u16> + '_ {
    src.chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
}

fn floats(src: &[u8]) -> impl Iterator<Item = f32> + '_ {
    src.chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

pub fn f32_to_f32(src: &[u8], dst: &mut [f32]) {
    for (v, x) in dst.iter_mut().zip(floats(src)) {
        *v = x;
    }
}

pub fn f16_to_f32(src: &[u8], dst: &mut [f32]) {
    for (v, h) in dst.iter_mut().zip(halves(src)) {
        *v = f16::from_bits(h).to_f32();
    }
}

pub fn bf16_to_f32(src: &[u8], dst: &mut [f32]) {
    for (v, h) in dst.iter_mut().zip(halves(src)) {
        *v = bf16::from_bits(h).to_f32();
    }
}

pub fn f32_from_f32(src: &[f32], dst: &mut [u8]) {
    for (b, x) in dst.chunks_exact_mut(4).zip(src) {
        b.copy_from_slice(&x.to_le_bytes());
    }
}

pub fn f16_from_f32(src: &[f32], dst: &mut [u8]) {
    for (b, x) in dst.chunks_exact_mut(2).zip(src) {
        b.copy_from_slice(&f16::from_f32(*x).to_bits().to_le_bytes());
    }
}

pub fn bf16_from_f32(src: &[f32], dst: &mut [u8]) {
    for (b, x) in dst.chunks_exact_mut(2).zip(src) {
        b.copy_from_slice(&bf16::from_f32(*x).to_bits().to_le_bytes());
    }
}

/// The `vec_dot` order: four 8-lane accumulators over 32-element steps, ggml's reduction, then
/// the leftover elements.
#[inline(always)]
pub(crate) fn dot_vec<E: Elem>(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let n = n.min(w.len() / E::BYTES).min(a.len() / E::BYTES);
    let mut acc = [[0.0f32; LANES]; 4];
    let np = n & !31;
    for i in (0..np).step_by(32) {
        for (j, s) in acc.iter_mut().enumerate() {
            for l in 0..LANES {
                let e = i + LANES * j + l;
                s[l] = E::get(w, e).mul_add(E::get(a, e), s[l]);
            }
        }
    }
    vec_tail::<E>(reduce4x8(&acc), w, a, np..n)
}

/// The end of the `vec_dot` order: elements `rest` added to the reduced sum `r`, in f64 for
/// the half types (ggml's F16/BF16 kernels) and with fused multiply-adds in f32 for F32.
#[inline(always)]
pub(crate) fn vec_tail<E: Elem>(r: f32, w: &[u8], a: &[u8], rest: std::ops::Range<usize>) -> f32 {
    if E::WIDE_TAIL {
        let mut s = r as f64;
        for e in rest {
            s += (E::get(w, e) * E::get(a, e)) as f64;
        }
        s as f32
    } else {
        let mut s = r;
        for e in rest {
            s = E::get(w, e).mul_add(E::get(a, e), s);
        }
        s
    }
}

/// The tiled-GEMM order: one 8-lane accumulator over 8-element steps, then [`hsum8`]
/// (batches whose row count is a multiple of 4 and length a multiple of 8).
#[inline(always)]
pub(crate) fn dot_gemm<E: Elem>(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let n = n.min(w.len() / E::BYTES).min(a.len() / E::BYTES);
    let mut acc = [0.0f32; LANES];
    for i in (0..n / LANES * LANES).step_by(LANES) {
        for l in 0..LANES {
            acc[l] = E::get(w, i + l).mul_add(E::get(a, i + l), acc[l]);
        }
    }
    hsum8(&acc)
}

pub fn dot_f32(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_vec::<F32>(n, w, a)
}

pub fn dot_f16(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_vec::<F16>(n, w, a)
}

pub fn dot_bf16(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_vec::<BF16>(n, w, a)
}

pub fn dot_f32_batched(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_gemm::<F32>(n, w, a)
}

pub fn dot_f16_batched(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_gemm::<F16>(n, w, a)
}

pub fn dot_bf16_batched(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_gemm::<BF16>(n, w, a)
}
