//! The eight-row interleaved layout ("rows8") of the 32-element formats (Q4_0, Q4_1, Q5_0,
//! Q5_1, Q8_0): how weights are repacked at load time so that the SIMD kernels read eight rows'
//! scales with one load and their quants already transposed, instead of gathering them on every
//! product.
//!
//! A tensor of `rows` (a multiple of 8) × `nb` blocks keeps its size. Group `g` (rows
//! `8g..8g+8`) occupies the bytes of those rows; in it, block column `b` is `8 × BYTES` bytes at
//! `b * 8 * BYTES`:
//! - the eight rows' scales `d` (f16), row order;
//! - for Q4_1 and Q5_1, the eight rows' minimums `m` (f16);
//! - for Q5_0 and Q5_1, the eight rows' fifth bits as 32-bit words, reordered so that byte `j`
//!   holds the bits of elements `4j..4j+4` (bits 0-3) and `16+4j..16+4j+4` (bits 4-7);
//! - the quants as four (Q8_0: eight) 32-byte vectors: vector `j` holds bytes `4j..4j+4` of the
//!   16 (32) quant bytes of rows 0, 1, 2, 3 (first 16 bytes), then rows 4, 5, 6, 7.
//!
//! This module only moves bytes (and gives the scalar reference kernel for the layout); it
//! computes nothing itself and knows nothing of models or files.

use super::GgmlType;

/// What the layout needs to know of a format.
#[derive(Clone, Copy)]
struct Shape {
    /// Bytes per block.
    bytes: usize,
    /// Whether blocks carry a minimum after the scale.
    min: bool,
    /// Whether blocks carry a 32-bit word of fifth bits after the scale (and minimum).
    qh: bool,
    /// Bytes of quants per block (16 nibble pairs, or 32 bytes for Q8_0).
    qbytes: usize,
}

impl Shape {
    /// Offset of the 16 quant bytes in a plain block.
    fn qs(self) -> usize {
        self.bytes - self.qbytes
    }

    /// Offset of the fifth-bit words in an interleaved block column (after the scales and
    /// minimums).
    fn qh_at(self) -> usize {
        16 + if self.min { 16 } else { 0 }
    }

    /// Offset of the quant vectors in an interleaved block column.
    fn header(self) -> usize {
        self.qh_at() + if self.qh { 32 } else { 0 }
    }
}

fn shape(ty: GgmlType) -> Option<Shape> {
    let (bytes, min, qh, qbytes) = match ty {
        GgmlType::Q4_0 => (18, false, false, 16),
        GgmlType::Q4_1 => (20, true, false, 16),
        GgmlType::Q5_0 => (22, false, true, 16),
        GgmlType::Q5_1 => (24, true, true, 16),
        GgmlType::Q8_0 => (34, false, false, 32),
        _ => return None,
    };
    Some(Shape {
        bytes,
        min,
        qh,
        qbytes,
    })
}

/// Whether weights of type `ty` can be interleaved.
pub fn supports(ty: GgmlType) -> bool {
    shape(ty).is_some()
}

/// The fifth bits in lane order: byte `j` gets the bits of elements `4j..4j+4` and
/// `16+4j..16+4j+4`.
fn qh_to_lanes(qh: u32) -> u32 {
    let mut out = 0u32;
    for j in 0..4 {
        for c in 0..4 {
            out |= ((qh >> (4 * j + c)) & 1) << (8 * j + c);
            out |= ((qh >> (16 + 4 * j + c)) & 1) << (8 * j + 4 + c);
        }
    }
    out
}

fn qh_from_lanes(lanes: u32) -> u32 {
    let mut out = 0u32;
    for j in 0..4 {
        for c in 0..4 {
            out |= ((lanes >> (8 * j + c)) & 1) << (4 * j + c);
            out |= ((lanes >> (8 * j + 4 + c)) & 1) << (16 + 4 * j + c);
        }
    }
    out
}

/// Offset, within an interleaved block column, of the quant byte `k` (0..16, or 0..32 for
/// Q8_0) of row `i` (0..8).
fn quant_offset(sh: Shape, i: usize, k: usize) -> usize {
    sh.header() + 32 * (k / 4) + 16 * (i / 4) + 4 * (i % 4) + k % 4
}

/// Moves row `i`'s block of a block column between the plain form (one block) and the
/// interleaved form (the whole block column): from `from` into `to`, plain to interleaved when
/// `to_interleaved`, else back.
fn move_block(sh: Shape, i: usize, from: &[u8], to: &mut [u8], to_interleaved: bool) {
    // Fixed-size moves (each a single load and store); `p` is the offset in the plain block,
    // `c` the one in the block column.
    let mv = |to: &mut [u8], p: usize, c: usize, n: usize| {
        let (f, t) = if to_interleaved { (p, c) } else { (c, p) };
        match n {
            2 => to[t..t + 2].copy_from_slice(&from[f..f + 2]),
            _ => to[t..t + 4].copy_from_slice(&from[f..f + 4]),
        }
    };
    mv(to, 0, 2 * i, 2);
    if sh.min {
        mv(to, 2, 16 + 2 * i, 2);
    }
    // Quant bytes move four at a time: a row's dword j lands whole in vector j.
    for k in (0..sh.qbytes).step_by(4) {
        mv(to, sh.qs() + k, quant_offset(sh, i, k), 4);
    }
    if sh.qh {
        let (p, c) = (if sh.min { 4 } else { 2 }, sh.qh_at() + 4 * i);
        let (f, t) = if to_interleaved { (p, c) } else { (c, p) };
        let word = u32::from_le_bytes([from[f], from[f + 1], from[f + 2], from[f + 3]]);
        let moved = if to_interleaved {
            qh_to_lanes(word)
        } else {
            qh_from_lanes(word)
        };
        to[t..t + 4].copy_from_slice(&moved.to_le_bytes());
    }
}

/// Repacks `rows` rows of `cols` elements of type `ty` from `src` (plain) into `dst`
/// (interleaved, same length). Returns false when the type, the shape or the lengths do not fit.
pub fn interleave(ty: GgmlType, src: &[u8], rows: usize, cols: usize, dst: &mut [u8]) -> bool {
    let Some(sh) = shape(ty) else {
        return false;
    };
    let bytes = sh.bytes;
    let Some(rb) = ty.row_bytes(cols) else {
        return false;
    };
    if !rows.is_multiple_of(8) || src.len() != rows * rb || dst.len() != src.len() {
        return false;
    }
    let nb = rb / bytes;
    for g in 0..rows / 8 {
        for b in 0..nb {
            let col = &mut dst[g * 8 * rb + b * 8 * bytes..][..8 * bytes];
            for i in 0..8 {
                let at = (8 * g + i) * rb + b * bytes;
                move_block(sh, i, &src[at..at + bytes], col, true);
            }
        }
    }
    true
}

/// Writes row `r` of an interleaved tensor (`src`, rows of `row_bytes`) in the plain layout
/// into `dst` (`row_bytes` long). Returns false when the type or the lengths do not fit.
pub fn plain_row(ty: GgmlType, src: &[u8], row_bytes: usize, r: usize, dst: &mut [u8]) -> bool {
    let Some(sh) = shape(ty) else {
        return false;
    };
    let bytes = sh.bytes;
    let group = (r / 8) * 8 * row_bytes;
    if !row_bytes.is_multiple_of(bytes)
        || dst.len() != row_bytes
        || group + 8 * row_bytes > src.len()
    {
        return false;
    }
    for (b, plain) in dst.chunks_exact_mut(bytes).enumerate() {
        let at = group + b * 8 * bytes;
        move_block(sh, r % 8, &src[at..at + 8 * bytes], plain, false);
    }
    true
}

thread_local! {
    /// Each thread's plain copy of one interleaved row (kept: no allocation per lookup).
    static ROW: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Calls `f` with row `r` of an interleaved tensor (`src`, rows of `row_bytes`) put back in the
/// plain layout, in this thread's scratch buffer. `None` when the type or the lengths do not fit.
pub fn with_plain_row<R>(
    ty: GgmlType,
    src: &[u8],
    row_bytes: usize,
    r: usize,
    f: impl FnOnce(&[u8]) -> R,
) -> Option<R> {
    ROW.with(|cell| {
        let mut row = cell.borrow_mut();
        row.resize(row_bytes, 0);
        plain_row(ty, src, row_bytes, r, &mut row).then(|| f(&row))
    })
}

/// The scalar reference tile kernel for interleaved weights: each row is put back in the plain
/// layout and goes through the type's reference dot product, so the results are exactly those
/// of the plain tensor.
pub(crate) fn gemm_scalar(ty: GgmlType, t: &crate::matmul::Tile) {
    let Some(dot) = ty.traits().vec_dot else {
        return;
    };
    for r in t.rows.clone() {
        with_plain_row(ty, t.w, t.w_row_bytes, r, |row| {
            for k in 0..t.tokens {
                // SAFETY: the tile's rows are this call's alone.
                unsafe {
                    t.out
                        .write(k * t.out_stride + r, dot(t.cols, row, t.x_row(k)))
                };
            }
        });
    }
}

fn gemm_scalar_q4_0(t: &crate::matmul::Tile) {
    gemm_scalar(GgmlType::Q4_0, t)
}

fn gemm_scalar_q4_1(t: &crate::matmul::Tile) {
    gemm_scalar(GgmlType::Q4_1, t)
}

fn gemm_scalar_q5_0(t: &crate::matmul::Tile) {
    gemm_scalar(GgmlType::Q5_0, t)
}

fn gemm_scalar_q5_1(t: &crate::matmul::Tile) {
    gemm_scalar(GgmlType::Q5_1, t)
}

fn gemm_scalar_q8_0(t: &crate::matmul::Tile) {
    gemm_scalar(GgmlType::Q8_0, t)
}

/// The scalar tile kernel for interleaved weights of type `ty`.
pub(crate) fn gemm_scalar_fn(ty: GgmlType) -> Option<crate::matmul::GemmFn> {
    match ty {
        GgmlType::Q4_0 => Some(gemm_scalar_q4_0),
        GgmlType::Q4_1 => Some(gemm_scalar_q4_1),
        GgmlType::Q5_0 => Some(gemm_scalar_q5_0),
        GgmlType::Q5_1 => Some(gemm_scalar_q5_1),
        GgmlType::Q8_0 => Some(gemm_scalar_q8_0),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaving_round_trips_and_moves_every_byte() {
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
        ] {
            let (rows, cols) = (16, 96);
            let rb = ty.row_bytes(cols).unwrap();
            let src: Vec<u8> = (0..rows * rb).map(|i| (i * 7 + i / 251) as u8).collect();
            let mut dst = vec![0u8; src.len()];
            assert!(interleave(ty, &src, rows, cols, &mut dst));
            assert_ne!(dst, src);
            if !shape(ty).unwrap().qh {
                let mut sorted_a = src.clone();
                let mut sorted_b = dst.clone();
                sorted_a.sort_unstable();
                sorted_b.sort_unstable();
                assert_eq!(sorted_a, sorted_b, "a permutation of the bytes");
            }
            let mut row = vec![0u8; rb];
            for r in 0..rows {
                assert!(plain_row(ty, &dst, rb, r, &mut row));
                assert_eq!(row, &src[r * rb..(r + 1) * rb], "{ty} row {r}");
            }
        }
        let mut out = vec![0u8; 18 * 7];
        assert!(!interleave(GgmlType::Q4_0, &[0u8; 18 * 7], 7, 32, &mut out));
        assert!(!interleave(GgmlType::Q4_K, &[], 0, 256, &mut []));
    }

    #[test]
    fn the_layout_is_the_documented_one() {
        // Row 5, quant byte 9 in Q4_1: after the 32-byte header, vector 2 (bytes 8..12), the
        // upper half (rows 4-7), slot 1 of that half, byte 1 of the dword.
        let q41 = shape(GgmlType::Q4_1).unwrap();
        assert_eq!(quant_offset(q41, 5, 9), 32 + 64 + 16 + 4 + 1);
        assert_eq!(quant_offset(shape(GgmlType::Q4_0).unwrap(), 0, 0), 16);
        assert_eq!(quant_offset(shape(GgmlType::Q5_1).unwrap(), 0, 0), 64);
        // Element 5 (bit 5) goes to byte 1 bit 1; element 21 to byte 1 bit 5.
        assert_eq!(qh_to_lanes(1 << 5), 1 << 9);
        assert_eq!(qh_to_lanes(1 << 21), 1 << 13);
        for x in [0u32, 1, 0xdead_beef, u32::MAX, 0x8000_0001] {
            assert_eq!(qh_from_lanes(qh_to_lanes(x)), x);
        }
    }
}
