//! Weight quantization from f32, as llama.cpp's reference quantizers (`ggml-quants.c`,
//! `quantize_row_*_ref`, compiled there without fused multiply-adds) do it, so that a file
//! quantized here holds the bytes `llama-quantize` would write: F32, F16 and BF16 (round to
//! nearest even), Q8_0 (scale max|x|/127, `roundf`), Q4_0 and Q5_0 (scale max/-8 or max/-16
//! of the signed largest value, truncation of `x/d + 8.5` or `+ 16.5`), Q4_K (per 32-element
//! sub-block a weighted least-squares search for scale and minimum, `make_qkx2_quants`, then
//! 6-bit scales) and Q6_K (per 16-element group a search over 19 candidate scales,
//! `make_qx_quants`, then 8-bit scales). Every step in llama.cpp's order, with its
//! round-half-to-even `nearest_int`.
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
        GgmlType::Q5_0 => quantize_q5_0(src, dst),
        GgmlType::Q4_K => quantize_q4_k(src, dst),
        GgmlType::Q6_K => quantize_q6_k(src, dst),
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

/// The value of largest magnitude (the first one on ties) and that magnitude.
fn signed_max(x: &[f32]) -> (f32, f32) {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    (max, amax)
}

fn quantize_q5_0(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK).zip(as_blocks_mut::<BlockQ5_0>(dst)) {
        let (max, _) = signed_max(x);
        let d = max / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f16_bytes(d);
        let q = |v: f32| ((v * id + 16.5) as i8).min(31) as u8;
        let mut qh = 0u32;
        for j in 0..QK / 2 {
            let (q0, q1) = (q(x[j]), q(x[QK / 2 + j]));
            b.qs[j] = (q0 & 0x0F) | ((q1 & 0x0F) << 4);
            qh |= ((q0 as u32 & 0x10) >> 4) << j;
            qh |= ((q1 as u32 & 0x10) >> 4) << (j + QK / 2);
        }
        b.qh = qh.to_le_bytes();
    }
}

/// ggml's `nearest_int`: round half to even through the float magic number (|v| < 2^22).
fn nearest_int(v: f32) -> i32 {
    ((v + 12_582_912.0).to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// `make_qkx2_quants` with nmax 15, rmin -1, rdelta 0.1, 20 steps, squared errors: the scale
/// and (negated) minimum of one sub-block, its quants in `l`.
fn make_qkx2_quants(x: &[f32], w: &[f32], l: &mut [u8], nmax: i32) -> (f32, f32) {
    let (rmin, rdelta, nstep) = (-1.0f32, 0.1f32, 20);
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = w[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..x.len() {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.fill(0);
        return (0.0, -min);
    }
    let nm = nmax as f32;
    let mut iscale = nm / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best = 0.0f32;
    for i in 0..x.len() {
        l[i] = nearest_int(iscale * (x[i] - min)).clamp(0, nmax) as u8;
        let diff = scale * l[i] as f32 + min - x[i];
        best += w[i] * (diff * diff);
    }
    let mut aux = [0u8; 32];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nm) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..x.len() {
            let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            aux[i] = q as u8;
            let q = q as f32;
            sum_l += w[i] * q;
            sum_l2 += w[i] * q * q;
            sum_xl += w[i] * q * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur = 0.0f32;
            for i in 0..x.len() {
                let diff = this_scale * aux[i] as f32 + this_min - x[i];
                cur += w[i] * (diff * diff);
            }
            if cur < best {
                l[..x.len()].copy_from_slice(&aux[..x.len()]);
                best = cur;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

fn quantize_q4_k(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK_K).zip(as_blocks_mut::<BlockQ4K>(dst)) {
        let mut l = [0u8; QK_K];
        let (mut scales, mut mins) = ([0.0f32; 8], [0.0f32; 8]);
        let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
        for j in 0..8 {
            let xs = &x[32 * j..32 * j + 32];
            let sum_x2 = xs.iter().fold(0.0f32, |s, v| s + v * v);
            let av_x = (sum_x2 / 32.0).sqrt();
            let mut w = [0.0f32; 32];
            for (wi, v) in w.iter_mut().zip(xs) {
                *wi = av_x + v.abs();
            }
            (scales[j], mins[j]) = make_qkx2_quants(xs, &w, &mut l[32 * j..32 * j + 32], 15);
            if scales[j] > max_scale {
                max_scale = scales[j];
            }
            if mins[j] > max_min {
                max_min = mins[j];
            }
        }
        let inv_scale = if max_scale > 0.0 {
            63.0 / max_scale
        } else {
            0.0
        };
        let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
        b.scales = [0; 12];
        for j in 0..8 {
            let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
            let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
            if j < 4 {
                b.scales[j] = ls;
                b.scales[j + 4] = lm;
            } else {
                b.scales[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
                b.scales[j - 4] |= (ls >> 4) << 6;
                b.scales[j] |= (lm >> 4) << 6;
            }
        }
        b.d = f16_bytes(max_scale / 63.0);
        b.dmin = f16_bytes(max_min / 63.0);
        let (sc, m) = k4_scales_mins(&b.scales);
        for j in 0..8 {
            let d = f16_at(b.d) * sc[j] as f32;
            if d == 0.0 {
                continue;
            }
            let dm = f16_at(b.dmin) * m[j] as f32;
            for i in 0..32 {
                l[32 * j + i] = nearest_int((x[32 * j + i] + dm) / d).clamp(0, 15) as u8;
            }
        }
        for (c, q) in b.qs.chunks_exact_mut(32).enumerate() {
            for i in 0..32 {
                q[i] = l[64 * c + i] | (l[64 * c + 32 + i] << 4);
            }
        }
    }
}

/// `make_qx_quants` with nmax 32 and squared-value weights (`rmse_type` 1, no importance):
/// the scale of one 16-element group, its quants (+32) in `l`.
fn make_qx_quants(x: &[f32], l: &mut [i8]) -> f32 {
    const NMAX: i32 = 32;
    let (max, amax) = signed_max(x);
    if amax < 1e-15 {
        l.fill(0);
        return 0.0;
    }
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        for &v in x {
            let q = nearest_int(iscale * v).clamp(-NMAX, NMAX - 1) as f32;
            let w = v * v;
            sumlx += w * v * q;
            suml2 += w * q * q;
        }
        (sumlx, suml2)
    };
    let fill = |iscale: f32, l: &mut [i8]| {
        for (q, &v) in l.iter_mut().zip(x) {
            *q = (NMAX + nearest_int(iscale * v).clamp(-NMAX, NMAX - 1)) as i8;
        }
    };
    let iscale = -(NMAX as f32) / max;
    fill(iscale, l);
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        let iscale = -(NMAX as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            fill(iscale, l);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

fn quantize_q6_k(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK_K).zip(as_blocks_mut::<BlockQ6K>(dst)) {
        let mut l = [0i8; QK_K];
        let mut scales = [0.0f32; 16];
        let (mut max_scale, mut max_abs) = (0.0f32, 0.0f32);
        for g in 0..16 {
            scales[g] = make_qx_quants(&x[16 * g..16 * g + 16], &mut l[16 * g..16 * g + 16]);
            if scales[g].abs() > max_abs {
                max_abs = scales[g].abs();
                max_scale = scales[g];
            }
        }
        *b = bytemuck::Zeroable::zeroed();
        if max_abs < 1e-15 {
            continue;
        }
        let iscale = -128.0 / max_scale;
        b.d = f16_bytes(1.0 / iscale);
        for g in 0..16 {
            b.scales[g] = nearest_int(iscale * scales[g]).min(127) as i8 as u8;
        }
        for g in 0..16 {
            let d = f16_at(b.d) * (b.scales[g] as i8) as f32;
            if d == 0.0 {
                continue;
            }
            for i in 0..16 {
                l[16 * g + i] = (nearest_int(x[16 * g + i] / d).clamp(-32, 31) + 32) as i8;
            }
        }
        for h in 0..2 {
            let (j, ql, qh) = (128 * h, 64 * h, 32 * h);
            for i in 0..32 {
                let q = |k: usize| l[j + i + 32 * k] as u8;
                b.ql[ql + i] = (q(0) & 0xF) | ((q(2) & 0xF) << 4);
                b.ql[ql + 32 + i] = (q(1) & 0xF) | ((q(3) & 0xF) << 4);
                b.qh[qh + i] =
                    (q(0) >> 4) | ((q(1) >> 4) << 2) | ((q(2) >> 4) << 4) | ((q(3) >> 4) << 6);
            }
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

    /// Every quantizer reproduces its input within the format's resolution (the exact bytes
    /// are checked against `llama-quantize`'s output by the golden tests, `tests/common`).
    #[test]
    fn quantized_weights_dequantize_close_to_the_input() {
        let x: Vec<f32> = (0..1024)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1.0 + (i % 13) as f32 / 4.0))
            .collect();
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for (ty, tol) in [
            (GgmlType::F16, 1e-3),
            (GgmlType::Q8_0, 0.01),
            (GgmlType::Q6_K, 0.05),
            (GgmlType::Q5_0, 0.07),
            (GgmlType::Q4_K, 0.15),
            (GgmlType::Q4_0, 0.15),
        ] {
            let mut q = vec![0u8; ty.row_bytes(x.len()).unwrap()];
            assert!(quantize_weights(ty, &x, &mut q), "{ty}");
            let mut back = vec![0.0f32; x.len()];
            assert!(crate::quant::dequantize(ty, &q, &mut back));
            let err = x
                .iter()
                .zip(&back)
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(err <= tol * amax, "{ty}: max error {err} of {amax}");
        }
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
            GgmlType::Q2_K,
            &[0.0; 256],
            &mut [0u8; 84]
        ));
        assert!(!quantize_weights(GgmlType::Q8_0, &x, &mut [0u8; 33]));
    }
}
