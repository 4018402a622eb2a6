//! Plain floating-point element types (F32, F16, BF16): conversion to and from f32 and the
//! scalar dot products. Halves are little-endian; rounding is to nearest even, as F16C does.

use half::{bf16, f16};

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

pub fn dot_f32(n: usize, w: &[u8], a: &[u8]) -> f32 {
    floats(w).zip(floats(a)).take(n).map(|(x, y)| x * y).sum()
}

pub fn dot_f16(n: usize, w: &[u8], a: &[u8]) -> f32 {
    halves(w)
        .zip(halves(a))
        .take(n)
        .map(|(x, y)| f16::from_bits(x).to_f32() * f16::from_bits(y).to_f32())
        .sum()
}

pub fn dot_bf16(n: usize, w: &[u8], a: &[u8]) -> f32 {
    halves(w)
        .zip(halves(a))
        .take(n)
        .map(|(x, y)| bf16::from_bits(x).to_f32() * bf16::from_bits(y).to_f32())
        .sum()
}
