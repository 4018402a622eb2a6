//! The arithmetic order of the reference engine, spelled out.
//!
//! Floating-point results depend on the order of operations, and a transformer amplifies a
//! last-bit difference into a different 8-bit activation, a different token. So torchless
//! defines each reduction the way llama.cpp's x86 (AVX2/FMA) code performs it — eight lanes,
//! fused multiply-adds, a fixed horizontal-sum tree — and every kernel, scalar or SIMD,
//! reproduces that order exactly. The scalar functions here are that definition; SIMD kernels
//! are tested to be bit-identical to them.

/// Lanes of the reference vector width (AVX2: 8 × f32).
pub const LANES: usize = 8;

/// Horizontal sum of eight lanes in AVX2's extract/movehl/movehdup order:
/// `((a4+a0) + (a6+a2)) + ((a5+a1) + (a7+a3))`.
#[inline(always)]
pub fn hsum8(a: &[f32; 8]) -> f32 {
    ((a[4] + a[0]) + (a[6] + a[2])) + ((a[5] + a[1]) + (a[7] + a[3]))
}

/// Reduction of four 8-lane accumulators as ggml's `GGML_F32x8_REDUCE`: pairwise vector
/// adds, then `(t0+t1) + (t2+t3)` with `t = lo128 + hi128` (the hadd order).
#[inline(always)]
pub fn reduce4x8(s: &[[f32; 8]; 4]) -> f32 {
    let mut x = [0.0f32; 8];
    for l in 0..8 {
        x[l] = (s[0][l] + s[2][l]) + (s[1][l] + s[3][l]);
    }
    let t = [x[0] + x[4], x[1] + x[5], x[2] + x[6], x[3] + x[7]];
    (t[0] + t[1]) + (t[2] + t[3])
}

const R: f32 = 12_582_912.0; // 0x1.8p23
const LOG2E: u32 = 0x3fb8_aa3b; // 0x1.715476p+0
const LN2_LO: u32 = 0x35bf_be8e; // 0x1.7f7d1cp-20
const LN2_HI: u32 = 0x3f31_7200; // 0x1.62e4p-1
const P0: u32 = 0x3c07_2010; // 0x1.0e4020p-7
const P1: u32 = 0x3d2b_9f17; // 0x1.573e2ep-5
const P2: u32 = 0x3e2a_af33; // 0x1.555e66p-3
const P3: u32 = 0x3eff_fedb; // 0x1.fffdb6p-2
const P4: u32 = 0x3f7f_fff6; // 0x1.ffffecp-1

#[inline(always)]
fn c(bits: u32) -> f32 {
    f32::from_bits(bits)
}

/// exp(x) exactly as ggml's vectorized `ggml_v_expf` computes each lane (a degree-5
/// polynomial after range reduction, ≤ 1.5 ulp); used wherever llama.cpp uses it (softmax,
/// SiLU) so that results match bit for bit.
#[inline(always)]
pub fn expf_ggml(x: f32) -> f32 {
    let z = x.mul_add(c(LOG2E), R);
    let n = z - R;
    let b = (-n).mul_add(c(LN2_LO), (-n).mul_add(c(LN2_HI), x));
    let e = z.to_bits() << 23;
    let k = f32::from_bits(e.wrapping_add(1.0f32.to_bits()));
    let u = b * b;
    let j = c(P0)
        .mul_add(b, c(P1))
        .mul_add(u, c(P2).mul_add(b, c(P3)))
        .mul_add(u, c(P4) * b);
    let an = n.abs();
    if an <= 126.0 || an.is_nan() {
        return j.mul_add(k, k);
    }
    let g: u32 = if n <= 0.0 { 0x8200_0000 } else { 0 };
    let s1 = f32::from_bits(g.wrapping_add(0x7f00_0000));
    let s2 = f32::from_bits(e.wrapping_sub(g));
    if an > 192.0 {
        s1 * s1
    } else {
        s2.mul_add(j, s2) * s1
    }
}

/// SiLU as ggml's vectorized `ggml_v_silu`: `x / (1 + exp(0 - x))`.
#[inline(always)]
pub fn silu_ggml(x: f32) -> f32 {
    x / (1.0 + expf_ggml(0.0 - x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expf_is_accurate_and_handles_extremes() {
        for i in -2000..2000 {
            let x = i as f32 * 0.0437;
            let want = (x as f64).exp();
            let got = expf_ggml(x) as f64;
            assert!(
                ((got - want) / want).abs() < 3e-7,
                "exp({x}) = {got}, want {want}"
            );
        }
        assert_eq!(expf_ggml(f32::NEG_INFINITY), 0.0);
        assert_eq!(expf_ggml(-200.0), 0.0);
        assert_eq!(expf_ggml(0.0), 1.0);
        assert!(expf_ggml(100.0).is_infinite());
    }

    #[test]
    fn reductions_follow_the_documented_trees() {
        let a = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        assert_eq!(hsum8(&a), 36.0);
        // Non-associativity shows the order: 1e8 cancels only if paired first.
        let b = [1e8f32, 1.0, 0.0, 0.0, -1e8, 0.0, 0.0, 0.0];
        assert_eq!(hsum8(&b), 1.0);
        let s = [[1.0f32; 8], [2.0; 8], [3.0; 8], [4.0; 8]];
        assert_eq!(reduce4x8(&s), 80.0);
    }
}
