//! Element-wise and row operations on f32 activations: RMS norm, rotary embedding, SwiGLU,
//! softmax, residual add. Each follows llama.cpp's CPU arithmetic where the order of operations
//! changes the rounding (sums of squares in f64, rotary angles by repeated multiplication).
//!
//! These functions work on plain slices; they allocate nothing and know nothing of models.

use crate::dispatch::Kernels;
use crate::lanes::silu_ggml;

/// `out = x / sqrt(mean(x²) + eps) * w` (the product with `w` after the normalization, as
/// llama.cpp's separate `rms_norm` and `mul`). The mean is accumulated in f64.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let scale = rms_scale(x, eps);
    rms_apply(x, w, scale, out);
}

/// The factor RMSNorm multiplies `x` by: 1 / sqrt(mean(x²) + eps), the mean summed in f64.
pub fn rms_scale(x: &[f32], eps: f32) -> f32 {
    let sum: f64 = x.iter().map(|&v| (v * v) as f64).sum();
    let mean = (sum / x.len().max(1) as f64) as f32;
    1.0 / (mean + eps).sqrt()
}

/// `out = (x * scale) * w`, element by element: RMSNorm's second half, on any slice of a row.
#[inline]
pub fn rms_apply(x: &[f32], w: &[f32], scale: f32, out: &mut [f32]) {
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = (v * scale) * g;
    }
}

/// Which elements a rotary embedding pairs up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent elements (2i, 2i+1): LLaMA's original layout as GGUF stores it.
    Normal,
    /// Halves (i, i + d/2): GPT-NeoX layout (Qwen2, Gemma, Phi-3 …).
    Neox,
}

/// Precomputed per-position rotary table: cos/sin for each of `n_dims / 2` frequencies.
/// Fills `cache` (length `n_dims`) with interleaved (cos, sin) for position `pos`.
pub fn rope_cache(pos: f32, n_dims: usize, freq_base: f32, freq_scale: f32, cache: &mut [f32]) {
    let theta_scale = freq_base.powf(-2.0 / n_dims as f32);
    let mut theta = pos;
    for pair in cache[..n_dims].chunks_exact_mut(2) {
        let t = freq_scale * theta;
        pair[0] = t.cos();
        pair[1] = t.sin();
        theta *= theta_scale;
    }
}

/// Everything that sets a position's rotary angles beyond the plain `base^(-2i/d)` ladder, in
/// the terms of ggml's `rope_yarn`: per-pair divisors of the angle (Llama 3's and LongRoPE's
/// frequency factors), linear interpolation (`freq_scale` = 1 / factor), YaRN's ramp between
/// interpolated and extrapolated angles, and a factor on cos and sin.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeFreqs {
    pub base: f32,
    /// 1 / linear (or YaRN) scaling factor.
    pub freq_scale: f32,
    /// YaRN's extrapolation mix (0: off).
    pub ext_factor: f32,
    /// Multiplies cos and sin (YaRN's and LongRoPE's attention factor; 1 otherwise).
    pub attn_factor: f32,
    /// YaRN's correction range, in rotary pairs ([`yarn_corr_dims`]).
    pub corr_dims: [f32; 2],
    /// One divisor per rotary pair (`n_dims / 2` of them), or none.
    pub factors: Option<Vec<f32>>,
}

impl RopeFreqs {
    /// The plain ladder with base `base`.
    pub fn plain(base: f32) -> RopeFreqs {
        RopeFreqs {
            base,
            freq_scale: 1.0,
            ext_factor: 0.0,
            attn_factor: 1.0,
            corr_dims: [0.0, 0.0],
            factors: None,
        }
    }
}

/// YaRN's correction range: the rotary pairs whose wavelengths, over `n_ctx_orig` positions,
/// turn between `beta_fast` and `beta_slow` times (ggml's `ggml_rope_yarn_corr_dims`).
pub fn yarn_corr_dims(
    n_dims: usize,
    n_ctx_orig: usize,
    base: f32,
    beta_fast: f32,
    beta_slow: f32,
) -> [f32; 2] {
    let dims = n_dims as f32;
    let corr = |rotations: f32| {
        dims * (n_ctx_orig as f32 / (rotations * 2.0 * std::f32::consts::PI)).ln()
            / (2.0 * base.ln())
    };
    [
        corr(beta_fast).floor().max(0.0),
        corr(beta_slow).ceil().min(dims - 1.0),
    ]
}

/// [`rope_cache`] with frequency factors, scaling and YaRN (ggml's `rope_yarn`); equal to it
/// bit for bit for [`RopeFreqs::plain`].
pub fn rope_cache_freqs(pos: f32, n_dims: usize, f: &RopeFreqs, cache: &mut [f32]) {
    let theta_scale = f.base.powf(-2.0 / n_dims as f32);
    let mut theta = pos;
    for (i, pair) in cache[..n_dims].chunks_exact_mut(2).enumerate() {
        let extrap = match &f.factors {
            Some(ff) => theta / ff.get(i).copied().unwrap_or(1.0),
            None => theta,
        };
        let interp = f.freq_scale * extrap;
        let (mut t, mut mscale) = (interp, f.attn_factor);
        if f.ext_factor != 0.0 {
            let [lo, hi] = f.corr_dims;
            let y = (i as f32 - lo) / (hi - lo).max(0.001);
            let ramp = (1.0 - y.clamp(0.0, 1.0)) * f.ext_factor;
            t = interp * (1.0 - ramp) + extrap * ramp;
            mscale *= 1.0 + 0.1 * (1.0 / f.freq_scale).ln();
        }
        pair[0] = t.cos() * mscale;
        pair[1] = t.sin() * mscale;
        theta *= theta_scale;
    }
}

/// Rotates the first `n_dims` elements of every head (`head_dim` wide) in `x` with the table
/// from [`rope_cache`]; elements past `n_dims` in each head are left as they are.
pub fn rope_heads(
    k: &Kernels,
    x: &mut [f32],
    head_dim: usize,
    n_dims: usize,
    style: RopeStyle,
    cache: &[f32],
) {
    #[cfg(target_arch = "x86_64")]
    if k.has_fma() {
        // SAFETY: `has_fma` says the CPU supports FMA.
        unsafe { rope_heads_fma(x, head_dim, n_dims, style, cache) };
        return;
    }
    let _ = k;
    for head in x.chunks_exact_mut(head_dim) {
        rope_apply(head, n_dims, style, cache);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn rope_heads_fma(
    x: &mut [f32],
    head_dim: usize,
    n_dims: usize,
    style: RopeStyle,
    cache: &[f32],
) {
    for head in x.chunks_exact_mut(head_dim) {
        rope_apply(head, n_dims, style, cache);
    }
}

/// Rotates the first `n_dims` elements of one head vector `x` with the table from
/// [`rope_cache`]; elements past `n_dims` are left as they are.
#[inline(always)]
pub fn rope_apply(x: &mut [f32], n_dims: usize, style: RopeStyle, cache: &[f32]) {
    let half = n_dims / 2;
    for i in 0..half {
        let (c, s) = (cache[2 * i], cache[2 * i + 1]);
        let (a, b) = match style {
            RopeStyle::Normal => (2 * i, 2 * i + 1),
            RopeStyle::Neox => (i, i + half),
        };
        let (x0, x1) = (x[a], x[b]);
        // The reference engine's compiler contracts these into fused multiply-adds.
        x[a] = x0.mul_add(c, -(x1 * s));
        x[b] = x0.mul_add(s, x1 * c);
    }
}

#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// GELU, tanh approximation (Gemma's `gelu_pytorch_tanh`).
#[inline(always)]
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + 0.044_715 * x * x)).tanh())
}

/// `gate[i] = silu(gate[i]) * up[i]` over one row, as ggml computes it: groups of eight with
/// its vectorized exp, the leftover with the C library's.
pub fn swiglu(k: &Kernels, gate: &mut [f32], up: &[f32]) {
    if let Some(simd) = k.swiglu8() {
        let done = simd(gate, up);
        for (g, &u) in gate[done..].iter_mut().zip(&up[done..]) {
            *g = silu(*g) * u;
        }
        return;
    }
    swiglu_row(gate, up);
}

#[inline(always)]
fn swiglu_row(gate: &mut [f32], up: &[f32]) {
    let n8 = gate.len().min(up.len()) / 8 * 8;
    for (g, &u) in gate[..n8].iter_mut().zip(&up[..n8]) {
        *g = silu_ggml(*g) * u;
    }
    for (g, &u) in gate[n8..].iter_mut().zip(&up[n8..]) {
        *g = silu(*g) * u;
    }
}

/// `gate[i] = gelu(gate[i]) * up[i]`, in f32.
pub fn geglu(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = gelu_tanh(*g) * u;
    }
}

/// GELU of `x` as the entries of ggml's `GGML_GELU_FP16` table come out of the reference
/// build: the compiler contracts `1 + a·x·x` into one fused multiply-add there (ggml's C is
/// built with contraction on and FMA enabled), which moves some entries by one f16 step (the
/// one at x = −1.999 among them).
fn gelu_tanh_table_entry(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let inner = (0.044_715 * x).mul_add(x, 1.0);
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * inner).tanh())
}

/// ggml's GELU table: the f16 result for every f16 input.
fn gelu_table() -> &'static [half::f16] {
    static TABLE: std::sync::OnceLock<Vec<half::f16>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|bits| {
                half::f16::from_f32(gelu_tanh_table_entry(half::f16::from_bits(bits).to_f32()))
            })
            .collect()
    })
}

/// [`geglu`] as ggml's CPU backend computes it (its `GGML_GELU_FP16` table): the input rounded
/// to f16, the table's GELU of that (see [`gelu_tanh_table_entry`]), times `up`; 0 at or below
/// -10 and the identity at or above 10.
pub fn geglu_ggml(gate: &mut [f32], up: &[f32]) {
    use half::f16;
    let table = gelu_table();
    for (g, &u) in gate.iter_mut().zip(up) {
        let x = *g;
        *g = if x <= -10.0 {
            0.0
        } else if x >= 10.0 {
            x * u
        } else {
            table[f16::from_f32(x).to_bits() as usize].to_f32() * u
        };
    }
}

/// LayerNorm: `out = (x - mean) / sqrt(var + eps) * w (+ b)`, the sums in f64.
pub fn layer_norm(x: &[f32], w: &[f32], b: Option<&[f32]>, eps: f32, out: &mut [f32]) {
    let n = x.len().max(1) as f64;
    let mean = (x.iter().map(|&v| v as f64).sum::<f64>() / n) as f32;
    let var: f64 = x
        .iter()
        .map(|&v| ((v - mean) * (v - mean)) as f64)
        .sum::<f64>()
        / n;
    let scale = 1.0 / (var as f32 + eps).sqrt();
    for (i, (o, &v)) in out.iter_mut().zip(x).enumerate() {
        let y = ((v - mean) * scale) * w.get(i).copied().unwrap_or(1.0);
        *o = y + b.and_then(|b| b.get(i)).copied().unwrap_or(0.0);
    }
}

/// Soft-capping (Gemma 2): `x = cap · tanh(x · (1 / cap))`, so that |x| stays below `cap`
/// (llama.cpp's order: a scale by the reciprocal, tanh, a scale by the cap).
pub fn softcap(x: &mut [f32], cap: f32) {
    let inv = 1.0 / cap;
    for v in x {
        *v = (*v * inv).tanh() * cap;
    }
}

/// `x[i] += y[i]`.
pub fn add_assign(x: &mut [f32], y: &[f32]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Index of the largest value (the first one on ties); 0 for an empty slice.
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_table_has_the_reference_builds_entries() {
        // llama.cpp's AVX2 build (its table, read back through ffn_geglu of Gemma 3 270M):
        // GELU(-1.9990234) is f16 0xA9D3; without the fused multiply-add it would be 0xA9D2.
        let x = half::f16::from_bits(0xBFFF);
        assert_eq!(x.to_f32(), -1.999_023_4);
        assert_eq!(gelu_table()[0xBFFF].to_bits(), 0xA9D3);
        let plain = half::f16::from_f32(gelu_tanh(x.to_f32()));
        assert_eq!(plain.to_bits(), 0xA9D2, "the entry this table exists for");
        // geglu_ggml: thresholds and the table.
        let mut g = [-10.0f32, -1.9995, 10.0, 0.0, 1.0];
        geglu_ggml(&mut g, &[2.0; 5]);
        assert_eq!(g[0], 0.0);
        assert_eq!(g[1], 2.0 * half::f16::from_bits(0xA9D3).to_f32());
        assert_eq!(g[2], 20.0);
        assert_eq!(g[3], 0.0);
        assert_eq!(g[4], 2.0 * half::f16::from_f32(gelu_tanh(1.0)).to_f32());
    }

    #[test]
    fn rms_norm_of_constant_row_is_the_weight() {
        let x = [3.0f32; 8];
        let w = [0.5f32; 8];
        let mut out = [0.0; 8];
        rms_norm(&x, &w, 0.0, &mut out);
        for v in out {
            assert!((v - 0.5).abs() < 1e-6);
        }
    }

    #[test]
    fn scaled_rope_tables_follow_their_formulas() {
        // Plain: the same bits as rope_cache, at every position and with linear scaling.
        for pos in [0.0f32, 1.0, 17.0, 4095.0].map(std::hint::black_box) {
            let (mut a, mut b) = ([0.0f32; 16], [0.0f32; 16]);
            rope_cache(pos, 16, 10000.0, 0.25, &mut a);
            let f = RopeFreqs {
                freq_scale: 0.25,
                ..RopeFreqs::plain(10000.0)
            };
            rope_cache_freqs(pos, 16, &f, &mut b);
            assert_eq!(a.map(f32::to_bits), b.map(f32::to_bits), "pos {pos}");
        }
        // Factors divide each pair's angle; YaRN mixes interpolated and extrapolated angles by
        // a ramp over the correction range and scales cos and sin.
        let (n, pos, base) = (16usize, 1000.0f32, 10000.0f32);
        let factors: Vec<f32> = (0..n / 2).map(|i| 1.0 + i as f32).collect();
        let corr = yarn_corr_dims(n, 256, base, 32.0, 1.0);
        assert!(corr[0] >= 0.0 && corr[0] < corr[1] && corr[1] <= (n - 1) as f32);
        let f = RopeFreqs {
            base,
            freq_scale: 0.25,
            ext_factor: 1.0,
            attn_factor: 1.5,
            corr_dims: corr,
            factors: Some(factors.clone()),
        };
        let mut got = [0.0f32; 16];
        rope_cache_freqs(pos, n, &f, &mut got);
        for i in 0..n / 2 {
            let extrap =
                pos as f64 * (base as f64).powf(-2.0 * i as f64 / n as f64) / factors[i] as f64;
            let y = (i as f64 - corr[0] as f64) / (corr[1] - corr[0]) as f64;
            let ramp = 1.0 - y.clamp(0.0, 1.0);
            let t = extrap * 0.25 * (1.0 - ramp) + extrap * ramp;
            let m = 1.5 * (1.0 + 0.1 * 4.0f64.ln());
            // f32 angles of ~1000 radians: about 1e-4 of rounding in the angle.
            assert!(
                (got[2 * i] as f64 - t.cos() * m).abs() < 2e-3,
                "cos pair {i}"
            );
            assert!(
                (got[2 * i + 1] as f64 - t.sin() * m).abs() < 2e-3,
                "sin pair {i}"
            );
        }
    }

    #[test]
    fn ggml_geglu_rounds_through_f16() {
        use half::f16;
        let xs = [
            -12.0f32, -10.0, -3.3, -0.001, 0.0, 0.37, 1.2345, 9.99, 10.0, 25.0,
        ];
        let mut g = xs;
        let up = [2.0f32; 10];
        geglu_ggml(&mut g, &up);
        for (i, &x) in xs.iter().enumerate() {
            let want = if x <= -10.0 {
                0.0
            } else if x >= 10.0 {
                2.0 * x
            } else {
                let r = f16::from_f32(x).to_f32() as f64;
                let gelu = 0.5 * r * (1.0 + (0.7978845608 * r * (1.0 + 0.044715 * r * r)).tanh());
                f16::from_f64(gelu).to_f32() * 2.0
            };
            assert_eq!(g[i], want, "x = {x}");
        }
    }

    #[test]
    fn layer_norm_and_softcap_follow_their_formulas() {
        let x = [1.0f32, -2.0, 3.5, 0.25, 8.0];
        let w = [0.5f32, 1.0, 2.0, -1.0, 0.1];
        let b = [0.1f32, 0.2, 0.3, 0.4, 0.5];
        let mut out = [0.0f32; 5];
        layer_norm(&x, &w, Some(&b), 1e-5, &mut out);
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / 5.0;
        let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / 5.0;
        for i in 0..5 {
            let want = (x[i] as f64 - mean) / (var + 1e-5).sqrt() * w[i] as f64 + b[i] as f64;
            assert!(
                (out[i] as f64 - want).abs() < 1e-5,
                "{i}: {} vs {want}",
                out[i]
            );
        }
        let mut y = [0.0f32, 1.0, -30.0, 1000.0];
        softcap(&mut y, 10.0);
        assert_eq!(y[0], 0.0);
        assert!((y[1] - 10.0 * 0.1f32.tanh()).abs() < 1e-6);
        assert!(y[2] > -10.0 && y[2] < -9.9 && y[3] <= 10.0 && y[3] > 9.99);
    }

    #[test]
    fn rope_rotates_pairs_and_keeps_norms() {
        let mut cache = [0.0f32; 8];
        rope_cache(3.0, 8, 10000.0, 1.0, &mut cache);
        assert!((cache[0] - 3.0f32.cos()).abs() < 1e-6);
        for style in [RopeStyle::Normal, RopeStyle::Neox] {
            let mut x = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
            let before: f32 = x.iter().map(|v| v * v).sum();
            rope_apply(&mut x, 8, style, &cache);
            let after: f32 = x.iter().map(|v| v * v).sum();
            assert!((before - after).abs() < 1e-3);
        }
        let mut x = [1.0f32, 0.0, 0.0, 0.0];
        let mut c = [0.0f32; 4];
        rope_cache(1.0, 4, 10000.0, 1.0, &mut c);
        rope_apply(&mut x, 4, RopeStyle::Normal, &c);
        assert!((x[0] - 1.0f32.cos()).abs() < 1e-6 && (x[1] - 1.0f32.sin()).abs() < 1e-6);
    }

    #[test]
    fn swiglu_matches_the_formula() {
        let mut g: Vec<f32> = (0..11).map(|i| i as f32 * 0.7 - 3.0).collect();
        let u: Vec<f32> = (0..11).map(|i| 1.0 + i as f32 * 0.1).collect();
        let want: Vec<f32> = g
            .iter()
            .zip(&u)
            .map(|(x, y)| x / (1.0 + (-x).exp()) * y)
            .collect();
        let mut g2 = g.clone();
        swiglu(&Kernels::scalar(), &mut g, &u);
        swiglu(&Kernels::best(), &mut g2, &u);
        assert_eq!(g, g2, "the FMA build must match the scalar one bit for bit");
        for (a, b) in g.iter().zip(&want) {
            assert!((a - b).abs() < 1e-6 * b.abs().max(1.0));
        }
        assert_eq!(argmax(&[0.0, 2.0, 2.0, 1.0]), 1);
    }
}
