//! The K-quants (Q2_K … Q6_K) and their activation format Q8_K: dequantization, Q8_K
//! quantization and the scalar dot products.
//!
//! Every K-quant super-block (256 elements) is first unpacked into one common form — the
//! quants as llama.cpp's AVX2 kernels multiply them (unsigned for Q2_K, Q4_K, Q5_K and Q6_K,
//! Q6_K's stored +32; signed for Q3_K), one integer scale and min per group of 16, and the
//! two f32 super-scales — so that a single dequantizer serves all five types. The dot
//! products follow `ggml_vec_dot_q*_K_q8_K` (`ggml-cpu/arch/x86/quants.c`): per super-block,
//! eight exact i32 lanes (lane `l` holds elements `4l..4l+4` of every 32-element chunk, times
//! its group's scale; Q6_K's lane `l` less `32 · (scale·bsum)` of groups `2l`, `2l+1`), added
//! into an eight-lane f32 accumulator with `fma(d, lane, acc)`, `d = d_y · d`; the minimums
//! (`dmin' = -d_y · dmin`) go, per type: Q2_K into the same accumulator first (lanes of two
//! 16-groups), Q4_K into a four-lane accumulator (pairs of 32-element sub-blocks), Q5_K into
//! a scalar `fma(dmin', Σ, summs)`; the end is the horizontal sum ([`hsum8`]) plus those.
//! This is the readable reference; the SIMD kernels work on the packed bytes directly and are
//! tested against it.

use super::blocks::*;
use crate::lanes::{hsum8, LANES};

/// Which K-quant a super-block came from: how its dot product ends.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum KKind {
    Q2,
    Q3,
    Q4,
    Q5,
    Q6,
}

/// A super-block in common form: x[e] = d * scale[e/16] * (q[e] - offset) - dmin * min[e/16].
pub(crate) struct Unpacked {
    q: [i8; QK_K],
    scale: [i32; 16],
    min: [i32; 16],
    offset: i32,
    d: f32,
    dmin: f32,
}

/// The running sums of one K-quant dot product (see the module docs).
#[derive(Default)]
pub(crate) struct KAcc {
    acc: [f32; LANES],
    acc_m: [f32; 4],
    summs: f32,
}

impl KAcc {
    /// The dot product of the super-blocks added so far.
    pub(crate) fn finish(&self, kind: KKind) -> f32 {
        let s = hsum8(&self.acc);
        match kind {
            KKind::Q4 => {
                let m = &self.acc_m;
                s + ((m[0] + m[2]) + (m[1] + m[3]))
            }
            KKind::Q5 => s + self.summs,
            _ => s,
        }
    }

    /// Adds a super-block given its eight integer lanes, its sixteen group minimums × bsums
    /// pair sums (see [`Unpacked::min_lanes`]) and its scales.
    pub(crate) fn add(
        &mut self,
        kind: KKind,
        lanes: &[i32; LANES],
        mins: &[i32; LANES],
        d: f32,
        dmin: f32,
    ) {
        match kind {
            KKind::Q2 => {
                for l in 0..LANES {
                    self.acc[l] = dmin.mul_add(mins[l] as f32, self.acc[l]);
                }
            }
            KKind::Q4 => {
                for k in 0..4 {
                    let p = mins[2 * k] + mins[2 * k + 1];
                    self.acc_m[k] = dmin.mul_add(p as f32, self.acc_m[k]);
                }
            }
            KKind::Q5 => {
                let t: i32 = mins.iter().sum();
                self.summs = dmin.mul_add(t as f32, self.summs);
            }
            KKind::Q3 | KKind::Q6 => {}
        }
        for l in 0..LANES {
            self.acc[l] = d.mul_add(lanes[l] as f32, self.acc[l]);
        }
    }
}

impl Unpacked {
    pub(crate) fn zeroed() -> Self {
        Unpacked {
            q: [0; QK_K],
            scale: [0; 16],
            min: [0; 16],
            offset: 0,
            d: 0.0,
            dmin: 0.0,
        }
    }

    fn dequantize(&self, y: &mut [f32]) {
        for (g, chunk) in y.chunks_exact_mut(16).enumerate() {
            let dl = self.d * self.scale[g] as f32;
            let ml = self.dmin * self.min[g] as f32;
            for (v, &q) in chunk.iter_mut().zip(&self.q[16 * g..16 * g + 16]) {
                *v = dl * (q as i32 - self.offset) as f32 - ml;
            }
        }
    }

    /// The eight integer lanes of this super-block against `y` (see the module docs).
    fn lanes(&self, y: &BlockQ8K) -> [i32; LANES] {
        let mut lanes = [0i32; LANES];
        for (l, v) in lanes.iter_mut().enumerate() {
            for c in 0..8 {
                let e0 = 32 * c + 4 * l;
                let p: i32 = (e0..e0 + 4).map(|e| self.q[e] as i32 * y.q(e)).sum();
                *v += self.scale[2 * c + l / 4] * p;
            }
            if self.offset != 0 {
                let g = 2 * l;
                *v -= self.offset * (self.scale[g] * y.bsum(g) + self.scale[g + 1] * y.bsum(g + 1));
            }
        }
        lanes
    }

    /// `min[2l]·bsum[2l] + min[2l+1]·bsum[2l+1]` for each lane `l` (`madd` of the sixteen
    /// group minimums and bsums).
    fn min_lanes(&self, y: &BlockQ8K) -> [i32; LANES] {
        std::array::from_fn(|l| {
            self.min[2 * l] * y.bsum(2 * l) + self.min[2 * l + 1] * y.bsum(2 * l + 1)
        })
    }

    /// Adds this super-block's product with `y` to `out` in `ggml-cpu/tiled`'s order:
    /// `r = d·s1 − dmin·s2` (one fused step), `out = fma(r, d_y, out)`, with `s1` the exact
    /// Σ scale·(q − offset)·y and `s2` the exact Σ min·bsum.
    fn tiled_into(&self, kind: KKind, y: &BlockQ8K, out: &mut f32) {
        let mut s1 = 0i32;
        for (e, &q) in self.q.iter().enumerate() {
            s1 += self.scale[e / 16] * (q as i32 - self.offset) * y.q(e);
        }
        let mut r = self.d * s1 as f32;
        if matches!(kind, KKind::Q2 | KKind::Q4 | KKind::Q5) {
            let s2: i32 = (0..16).map(|g| self.min[g] * y.bsum(g)).sum();
            r = (-self.dmin).mul_add(s2 as f32, r);
        }
        *out = r.mul_add(y.scale(), *out);
    }

    /// Adds this super-block's products with `y` to `acc`.
    fn dot_into(&self, kind: KKind, y: &BlockQ8K, acc: &mut KAcc) {
        let dy = y.scale();
        acc.add(
            kind,
            &self.lanes(y),
            &self.min_lanes(y),
            dy * self.d,
            -dy * self.dmin,
        );
    }
}

pub(crate) fn unpack_q2_k(b: &BlockQ2K, u: &mut Unpacked) {
    u.d = f16_at(b.d);
    u.dmin = f16_at(b.dmin);
    for g in 0..16 {
        u.scale[g] = (b.scales[g] & 0xF) as i32;
        u.min[g] = (b.scales[g] >> 4) as i32;
    }
    for n in 0..2 {
        for j in 0..4 {
            for l in 0..32 {
                u.q[128 * n + 32 * j + l] = ((b.qs[32 * n + l] >> (2 * j)) & 3) as i8;
            }
        }
    }
}

pub(crate) fn unpack_q3_k(b: &BlockQ3K, u: &mut Unpacked) {
    u.d = f16_at(b.d);
    u.dmin = 0.0;
    let sc = q3k_scales(&b.scales);
    for g in 0..16 {
        u.scale[g] = sc[g] as i32;
        u.min[g] = 0;
    }
    for n in 0..2 {
        for j in 0..4 {
            let m = 1u8 << (4 * n + j);
            for l in 0..32 {
                let low = ((b.qs[32 * n + l] >> (2 * j)) & 3) as i8;
                let high = if b.hmask[l] & m != 0 { 0 } else { 4 };
                u.q[128 * n + 32 * j + l] = low - high;
            }
        }
    }
}

pub(crate) fn unpack_q4_k(b: &BlockQ4K, u: &mut Unpacked) {
    u.d = f16_at(b.d);
    u.dmin = f16_at(b.dmin);
    let (sc, m) = k4_scales_mins(&b.scales);
    for g in 0..16 {
        u.scale[g] = sc[g / 2] as i32;
        u.min[g] = m[g / 2] as i32;
    }
    for j in 0..4 {
        for l in 0..32 {
            let byte = b.qs[32 * j + l];
            u.q[64 * j + l] = (byte & 0xF) as i8;
            u.q[64 * j + 32 + l] = (byte >> 4) as i8;
        }
    }
}

pub(crate) fn unpack_q5_k(b: &BlockQ5K, u: &mut Unpacked) {
    u.d = f16_at(b.d);
    u.dmin = f16_at(b.dmin);
    let (sc, m) = k4_scales_mins(&b.scales);
    for g in 0..16 {
        u.scale[g] = sc[g / 2] as i32;
        u.min[g] = m[g / 2] as i32;
    }
    for j in 0..4 {
        let (u1, u2) = (1u8 << (2 * j), 2u8 << (2 * j));
        for l in 0..32 {
            let byte = b.qs[32 * j + l];
            let h1 = if b.qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if b.qh[l] & u2 != 0 { 16 } else { 0 };
            u.q[64 * j + l] = ((byte & 0xF) + h1) as i8;
            u.q[64 * j + 32 + l] = ((byte >> 4) + h2) as i8;
        }
    }
}

pub(crate) fn unpack_q6_k(b: &BlockQ6K, u: &mut Unpacked) {
    u.d = f16_at(b.d);
    u.dmin = 0.0;
    u.offset = 32;
    for g in 0..16 {
        u.scale[g] = b.scales[g] as i8 as i32;
        u.min[g] = 0;
    }
    for n in 0..2 {
        let (ql, qh) = (&b.ql[64 * n..64 * n + 64], &b.qh[32 * n..32 * n + 32]);
        for l in 0..32 {
            let q = |low: u8, shift: u32| (low | (((qh[l] >> shift) & 3) << 4)) as i8;
            u.q[128 * n + l] = q(ql[l] & 0xF, 0);
            u.q[128 * n + l + 32] = q(ql[l + 32] & 0xF, 2);
            u.q[128 * n + l + 64] = q(ql[l] >> 4, 4);
            u.q[128 * n + l + 96] = q(ql[l + 32] >> 4, 6);
        }
    }
}

macro_rules! kquant_fns {
    ($block:ty, $kind:expr, $unpack:ident, $dequant:ident, $dot:ident, $tiled:ident) => {
        /// The dot product in `ggml-cpu/tiled`'s order (see [`crate::order::Order::Tiled`]).
        pub fn $tiled(n: usize, w: &[u8], a: &[u8]) -> f32 {
            let mut u = Unpacked::zeroed();
            let mut out = 0.0f32;
            let blocks = as_blocks::<$block>(w).iter().zip(as_blocks::<BlockQ8K>(a));
            for (x, y) in blocks.take(n / QK_K) {
                $unpack(x, &mut u);
                u.tiled_into($kind, y, &mut out);
            }
            out
        }

        pub fn $dequant(src: &[u8], dst: &mut [f32]) {
            let mut u = Unpacked::zeroed();
            for (b, y) in as_blocks::<$block>(src)
                .iter()
                .zip(dst.chunks_exact_mut(QK_K))
            {
                $unpack(b, &mut u);
                u.dequantize(y);
            }
        }

        pub fn $dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
            let mut u = Unpacked::zeroed();
            let mut acc = KAcc::default();
            let blocks = as_blocks::<$block>(w).iter().zip(as_blocks::<BlockQ8K>(a));
            for (x, y) in blocks.take(n / QK_K) {
                $unpack(x, &mut u);
                u.dot_into($kind, y, &mut acc);
            }
            acc.finish($kind)
        }
    };
}

kquant_fns!(
    BlockQ2K,
    KKind::Q2,
    unpack_q2_k,
    dequant_q2_k,
    dot_q2_k_q8_k,
    dot_q2_k_q8_k_tiled
);
kquant_fns!(
    BlockQ3K,
    KKind::Q3,
    unpack_q3_k,
    dequant_q3_k,
    dot_q3_k_q8_k,
    dot_q3_k_q8_k_tiled
);
kquant_fns!(
    BlockQ4K,
    KKind::Q4,
    unpack_q4_k,
    dequant_q4_k,
    dot_q4_k_q8_k,
    dot_q4_k_q8_k_tiled
);
kquant_fns!(
    BlockQ5K,
    KKind::Q5,
    unpack_q5_k,
    dequant_q5_k,
    dot_q5_k_q8_k,
    dot_q5_k_q8_k_tiled
);
kquant_fns!(
    BlockQ6K,
    KKind::Q6,
    unpack_q6_k,
    dequant_q6_k,
    dot_q6_k_q8_k,
    dot_q6_k_q8_k_tiled
);

pub fn dequant_q8_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in as_blocks::<BlockQ8K>(src)
        .iter()
        .zip(dst.chunks_exact_mut(QK_K))
    {
        let d = b.scale();
        for (e, v) in y.iter_mut().enumerate() {
            *v = d * b.q(e) as f32;
        }
    }
}

/// Q8_K activation quantization, as llama.cpp's `quantize_row_q8_K_ref`: the scale comes from the
/// signed value of largest magnitude (first one on ties), -127 / max, rounding half to even.
#[inline(always)]
pub fn quantize_q8_k(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK_K).zip(as_blocks_mut::<BlockQ8K>(dst)) {
        let mut amax = 0.0f32;
        let mut max = 0.0f32;
        for &v in x {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            *b = bytemuck::Zeroable::zeroed();
            continue;
        }
        let iscale = -127.0f32 / max;
        for (q, &v) in b.qs.iter_mut().zip(x) {
            let r = ((iscale * v).round_ties_even() as i32).min(127);
            *q = r as i8 as u8;
        }
        for g in 0..16 {
            let s: i32 = b.qs[16 * g..16 * g + 16]
                .iter()
                .map(|&q| q as i8 as i32)
                .sum();
            let bytes = (s as i16).to_le_bytes();
            b.bsums[2 * g] = bytes[0];
            b.bsums[2 * g + 1] = bytes[1];
        }
        b.d = (1.0f32 / iscale).to_le_bytes();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_k_scales_by_the_signed_largest_value() {
        let mut x = [0.0f32; 256];
        x[3] = -2.0;
        x[7] = 1.0;
        let mut out = [0u8; 292];
        quantize_q8_k(&x, &mut out);
        let b = as_blocks::<BlockQ8K>(&out)[0];
        // iscale = -127 / max = 63.5: the largest value maps to -127 (the sign follows max).
        assert_eq!(b.q(3), -127);
        assert_eq!(b.q(7), 64); // 63.5 rounds to even
        assert!((b.scale() - 2.0 / 127.0).abs() < 1e-9);
        assert_eq!(b.bsum(0), -127 + 64);
        let mut y = [0.0f32; 256];
        dequant_q8_k(&out, &mut y);
        assert!((y[3] + 2.0).abs() < 1e-6);
    }

    #[test]
    fn q3_k_scales_unpack_to_signed_six_bit_values() {
        // All-zero packed scales mean every scale is -32.
        assert_eq!(q3k_scales(&[0; 12]), [-32; 16]);
        let mut s = [0u8; 12];
        s[0] = 0x0F; // low 4 bits of scale 0 = 15
        s[8] = 0x03; // high 2 bits of scale 0 = 3 -> 15 + 48 = 63 -> 31 after the offset
        assert_eq!(q3k_scales(&s)[0], 31);
    }
}
