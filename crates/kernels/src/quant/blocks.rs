//! Block layouts of the quantized types, byte for byte as GGML stores them.
//!
//! Every field is a byte array, so the structs have alignment 1 and any byte slice of the right
//! length can be viewed as blocks (memory-mapped files give no alignment promise beyond the
//! file's own). Half-precision scales are little-endian `[u8; 2]`, read with [`f16_at`].
//! Sizes are pinned at compile time.

use bytemuck::{Pod, Zeroable};

/// Elements per K-quant super-block.
pub const QK_K: usize = 256;
/// Elements per block of the legacy (32-element) formats.
pub const QK: usize = 32;

/// Reads a little-endian IEEE half.
#[inline(always)]
pub fn f16_at(b: [u8; 2]) -> f32 {
    half::f16::from_bits(u16::from_le_bytes(b)).to_f32()
}

/// Encodes an f32 as a little-endian IEEE half (round to nearest even, as F16C does).
#[inline(always)]
pub fn f16_bytes(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_bits().to_le_bytes()
}

macro_rules! block {
    ($(#[$m:meta])* $name:ident, $size:expr, { $($field:ident : $ty:ty),* $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, Pod, Zeroable)]
        #[repr(C)]
        pub struct $name { $(pub $field: $ty),* }
        const _: () = assert!(std::mem::size_of::<$name>() == $size);
        const _: () = assert!(std::mem::align_of::<$name>() == 1);
    };
}

block!(
    /// x = d * (q - 8), q in 0..16; low nibbles hold elements 0..16, high nibbles 16..32.
    BlockQ4_0, 18, { d: [u8; 2], qs: [u8; 16] }
);
block!(
    /// x = d * q + m, q in 0..16.
    BlockQ4_1, 20, { d: [u8; 2], m: [u8; 2], qs: [u8; 16] }
);
block!(
    /// x = d * (q - 16), q in 0..32; bit 4 of element j is bit j of `qh`.
    BlockQ5_0, 22, { d: [u8; 2], qh: [u8; 4], qs: [u8; 16] }
);
block!(
    /// x = d * q + m, q in 0..32.
    BlockQ5_1, 24, { d: [u8; 2], m: [u8; 2], qh: [u8; 4], qs: [u8; 16] }
);
block!(
    /// x = d * q, q in -128..128. Also the activation format for Q4_0, Q5_0 and Q8_0 weights.
    BlockQ8_0, 34, { d: [u8; 2], qs: [u8; 32] }
);
block!(
    /// Activation format for Q4_1 and Q5_1 weights: like Q8_0, plus `s` = d * sum(qs).
    BlockQ8_1, 36, { d: [u8; 2], s: [u8; 2], qs: [u8; 32] }
);
block!(
    /// 16 groups of 16; x = d * (sc & 15) * q - dmin * (sc >> 4), q in 0..4.
    BlockQ2K, 84, { scales: [u8; 16], qs: [u8; 64], d: [u8; 2], dmin: [u8; 2] }
);
block!(
    /// 16 groups of 16; x = d * (sc - 32) * q, q in -4..4 (the high bit comes from `hmask`).
    BlockQ3K, 110, { hmask: [u8; 32], qs: [u8; 64], scales: [u8; 12], d: [u8; 2] }
);
block!(
    /// 8 groups of 32; x = d * sc * q - dmin * m, 6-bit sc and m packed in `scales`.
    BlockQ4K, 144, { d: [u8; 2], dmin: [u8; 2], scales: [u8; 12], qs: [u8; 128] }
);
block!(
    /// As Q4_K with a fifth bit per element in `qh`.
    BlockQ5K, 176, { d: [u8; 2], dmin: [u8; 2], scales: [u8; 12], qh: [u8; 32], qs: [u8; 128] }
);
block!(
    /// 16 groups of 16; x = d * sc * (q - 32), q in 0..64, 8-bit signed sc.
    BlockQ6K, 210, { ql: [u8; 128], qh: [u8; 64], scales: [u8; 16], d: [u8; 2] }
);
block!(
    /// Activation format for the K-quants: f32 scale, 256 quants, sums of each group of 16.
    BlockQ8K, 292, { d: [u8; 4], qs: [u8; 256], bsums: [u8; 32] }
);

block!(
    /// x = d * KVALUES_IQ4NL[q], q in 0..16; low nibbles hold elements 0..16, high 16..32.
    BlockIQ4NL, 18, { d: [u8; 2], qs: [u8; 16] }
);
block!(
    /// A 256-element super-block of eight 32-element sub-blocks: x = d * (ls - 32) *
    /// KVALUES_IQ4NL[q], with the 6-bit sub-block scale `ls` split into a low nibble in
    /// `scales_l` and two high bits in `scales_h` (sub-block `i` at bits `2i..2i+2`).
    BlockIQ4XS, 136, { d: [u8; 2], scales_h: [u8; 2], scales_l: [u8; 4], qs: [u8; 128] }
);
block!(
    /// OCP microscaling FP4: x = 2^(e - 128) * KVALUES_MXFP4[q] (E2M1 values, doubled),
    /// with `e` an E8M0 exponent; nibbles ordered as in Q4_0.
    BlockMXFP4, 17, { e: u8, qs: [u8; 16] }
);

impl BlockQ8K {
    #[inline(always)]
    pub fn scale(&self) -> f32 {
        f32::from_le_bytes(self.d)
    }
    #[inline(always)]
    pub fn q(&self, i: usize) -> i32 {
        self.qs[i] as i8 as i32
    }
    #[inline(always)]
    pub fn bsum(&self, g: usize) -> i32 {
        i16::from_le_bytes([self.bsums[2 * g], self.bsums[2 * g + 1]]) as i32
    }
}

/// Views `bytes` as blocks, ignoring a trailing partial block (callers validate lengths).
#[inline(always)]
pub fn as_blocks<B: Pod>(bytes: &[u8]) -> &[B] {
    let n = bytes.len() / std::mem::size_of::<B>();
    bytemuck::cast_slice(&bytes[..n * std::mem::size_of::<B>()])
}

/// Mutable counterpart of [`as_blocks`].
#[inline(always)]
pub fn as_blocks_mut<B: Pod>(bytes: &mut [u8]) -> &mut [B] {
    let n = bytes.len() / std::mem::size_of::<B>();
    bytemuck::cast_slice_mut(&mut bytes[..n * std::mem::size_of::<B>()])
}

/// Unpacks the eight 6-bit scales and eight 6-bit mins of a Q4_K / Q5_K block.
#[inline(always)]
pub fn k4_scales_mins(s: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut m = [0u8; 8];
    for j in 0..8 {
        if j < 4 {
            sc[j] = s[j] & 63;
            m[j] = s[j + 4] & 63;
        } else {
            sc[j] = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
            m[j] = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
        }
    }
    (sc, m)
}

/// Unpacks the sixteen 6-bit scales of a Q3_K block, already offset by -32.
#[inline(always)]
pub fn q3k_scales(s: &[u8; 12]) -> [i8; 16] {
    let w = |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
    let (a0, a1, tmp) = (w(0), w(1), w(2));
    const M1: u32 = 0x0303_0303;
    const M2: u32 = 0x0f0f_0f0f;
    let aux = [
        (a0 & M2) | ((tmp & M1) << 4),
        (a1 & M2) | (((tmp >> 2) & M1) << 4),
        ((a0 >> 4) & M2) | (((tmp >> 4) & M1) << 4),
        ((a1 >> 4) & M2) | (((tmp >> 6) & M1) << 4),
    ];
    let mut out = [0i8; 16];
    for (i, word) in aux.iter().enumerate() {
        for (k, b) in word.to_le_bytes().iter().enumerate() {
            out[4 * i + k] = (*b as i8).wrapping_sub(32);
        }
    }
    out
}
