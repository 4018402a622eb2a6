//! Weight quantization from f32, as llama.cpp's reference quantizers (`ggml-quants.c`,
//! `quantize_row_*_ref`, compiled there without fused multiply-adds) do it, so that a file
//! quantized here holds the bytes `llama-quantize` would write: F32, F16 and BF16 (round to
//! nearest even), Q8_0 (scale max|x|/127, `roundf`), Q4_0 (scale max/-8 of the signed largest
//! value, `trunc(x/d + 8.5)` capped at 15).
//!
//! These are not the activation encoders of [`super::types::TypeTraits::from_f32`] (Q8_0's
//! activation encoding rounds half to even with another scale formula); nothing here runs on
//! the forward path.

use super::blocks::*;
use super::GgmlType;

/// Encodes `src` (whole blocks) as weights of type `ty` into `dst`. Returns false when `ty`
/// has no weight quantizer here or the lengths do not match.
pub fn quantize_weights(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> bool {
    if ty.row_bytes(src.len()) != Some(dst.len()) {
        return false;
    }
    match ty {
        GgmlType::F32 => {
            for (v, d) in src.iter().zip(dst.chunks_exact_mut(4)) {
                d.copy_from_slice(&v.to_le_bytes());
            }
        }
        GgmlType::F16 => {
            for (v, d) in src.iter().zip(dst.chunks_exact_mut(2)) {
                d.copy_from_slice(&f16_bytes(*v));
            }
        }
        GgmlType::BF16 => {
            for (v, d) in src.iter().zip(dst.chunks_exact_mut(2)) {
                d.copy_from_slice(&half::bf16::from_f32(*v).to_bits().to_le_bytes());
            }
        }
        GgmlType::Q8_0 => quantize_q8_0(src, dst),
        GgmlType::Q4_0 => quantize_q4_0(src, dst),
        _ => return false,
    }
    true
}

fn quantize_q8_0(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK).zip(as_blocks_mut::<BlockQ8_0>(dst)) {
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f16_bytes(d);
        for (q, v) in b.qs.iter_mut().zip(x) {
            // `roundf`: half away from zero.
            *q = (v * id).round() as i8 as u8;
        }
    }
}

fn quantize_q4_0(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK).zip(as_blocks_mut::<BlockQ4_0>(dst)) {
        // The value of largest magnitude, the first one on ties.
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in x {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f16_bytes(d);
        let q = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
        for j in 0..QK / 2 {
            b.qs[j] = q(x[j]) | (q(x[QK / 2 + j]) << 4);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_0_maps_the_signed_largest_value_to_minus_eight() {
        let mut x = [0.0f32; 32];
        x[3] = 2.0;
        x[7] = -1.0;
        x[20] = 1.0;
        let mut out = [0u8; 18];
        assert!(quantize_weights(GgmlType::Q4_0, &x, &mut out));
        let mut back = [0.0f32; 32];
        super::super::legacy::dequant_q4_0(&out, &mut back);
        // d = 2 / -8 = -0.25: 2.0 → 0 (value -8), -1.0 → 12 (value 4), 1.0 → 4 (value -4).
        assert_eq!(out[2 + 3] & 0x0F, 0);
        assert_eq!(back[3], 2.0);
        assert_eq!(back[7], -1.0);
        assert_eq!(back[20], 1.0);
        assert_eq!(back[0], 0.0);
    }

    #[test]
    fn q8_0_rounds_half_away_from_zero() {
        let mut x = [0.0f32; 32];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = -2.5;
        let mut out = [0u8; 34];
        assert!(quantize_weights(GgmlType::Q8_0, &x, &mut out));
        assert_eq!(out[2] as i8, 127);
        assert_eq!(out[3] as i8, 3);
        assert_eq!(out[4] as i8, -3);
        assert!(!quantize_weights(
            GgmlType::Q4_K,
            &[0.0; 256],
            &mut [0u8; 144]
        ));
        assert!(!quantize_weights(GgmlType::Q8_0, &x, &mut [0u8; 33]));
    }
}
