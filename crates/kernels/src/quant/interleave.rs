//! The eight-row interleaved layout ("rows8"): how weights are repacked at load time so that
//! the SIMD kernels read eight rows' scales with one load and their quants already transposed,
//! instead of gathering them on every product. Formats: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (32-element
//! blocks) and Q4_K, Q6_K (256-element super-blocks).
//!
//! A tensor of `rows` (a multiple of 8) × `nb` blocks keeps its size. Group `g` (rows
//! `8g..8g+8`) occupies the bytes of those rows; in it, block column `b` is `8 × BYTES` bytes at
//! `b * 8 * BYTES`, made of the blocks' fields one after the other, each in one of two forms:
//! - *packed*: a small field (an f16 scale or minimum) of the eight rows side by side, row order;
//! - *words*: a field cut into 32-bit words; vector `k` (32 bytes) holds word `k` of rows
//!   0..8, so one load gives the same four bytes of every row.
//!
//! The fields, in column order:
//! - Q4_0, Q8_0: `d` packed; the quants as words (4, or 8 for Q8_0).
//! - Q4_1: `d`, `m` packed; the quants as 4 words.
//! - Q5_0 (Q5_1): `d` (and `m`) packed; the fifth bits as one word per row, reordered so that
//!   byte `j` holds the bits of elements `4j..4j+4` (bits 0-3) and `16+4j..16+4j+4` (bits 4-7);
//!   the quants as 4 words.
//! - Q4_K: `d`, `dmin` packed; the 12 bytes of 6-bit scales and mins as 3 words; the 128 quant
//!   bytes as 32 words.
//! - Q6_K: `d` packed; the 16 scales as 4 words; `ql` (32 words) and `qh` (16 words) as
//!   vectors in the order one pass reads them (see `Field::Q6Quants`).
//!
//! This module only moves bytes (and gives the scalar reference kernel for the layout); it
//! computes nothing itself and knows nothing of models or files.

use super::GgmlType;

/// One field of a block and where it goes in the block column.
#[derive(Clone, Copy, Debug)]
enum Field {
    /// Two bytes at `plain`; row `i`'s at `col + 2i`.
    Half { plain: usize, col: usize },
    /// `n` 32-bit words at `plain`; word `k` of row `i` at `col + 32k + 4i`.
    Words { plain: usize, n: usize, col: usize },
    /// The Q5 fifth-bit word at `plain`, reordered (see the module docs); row `i`'s at
    /// `col + 4i`.
    FifthBits { plain: usize, col: usize },
    /// Q6_K's 128 bytes of low bits (at 0) and 64 of high bits (at 128) as words, in the order
    /// one pass reads them: for each half `n` (0..2) and position `kk` (0..8), 96 bytes at
    /// `col + 96(8n + kk)` holding low-bit words `16n + kk` and `16n + 8 + kk`, then high-bit
    /// word `8n + kk` (each a vector of the eight rows, row `i` at `4i`).
    Q6Quants { col: usize },
}

/// What the layout needs to know of a format: its block size and its fields.
#[derive(Clone, Copy)]
struct Shape {
    bytes: usize,
    fields: &'static [Field],
}

const fn half(plain: usize, col: usize) -> Field {
    Field::Half { plain, col }
}

const fn words(plain: usize, n: usize, col: usize) -> Field {
    Field::Words { plain, n, col }
}

const fn fifth_bits(plain: usize, col: usize) -> Field {
    Field::FifthBits { plain, col }
}

fn shape(ty: GgmlType) -> Option<Shape> {
    const Q4_0: &[Field] = &[half(0, 0), words(2, 4, 16)];
    const Q4_1: &[Field] = &[half(0, 0), half(2, 16), words(4, 4, 32)];
    const Q5_0: &[Field] = &[half(0, 0), fifth_bits(2, 16), words(6, 4, 48)];
    const Q5_1: &[Field] = &[half(0, 0), half(2, 16), fifth_bits(4, 32), words(8, 4, 64)];
    const Q8_0: &[Field] = &[half(0, 0), words(2, 8, 16)];
    const Q4_K: &[Field] = &[half(0, 0), half(2, 16), words(4, 3, 32), words(16, 32, 128)];
    const Q6_K: &[Field] = &[
        half(208, 0),
        words(192, 4, 16),
        Field::Q6Quants { col: 144 },
    ];
    let (bytes, fields) = match ty {
        GgmlType::Q4_0 => (18, Q4_0),
        GgmlType::Q4_1 => (20, Q4_1),
        GgmlType::Q5_0 => (22, Q5_0),
        GgmlType::Q5_1 => (24, Q5_1),
        GgmlType::Q8_0 => (34, Q8_0),
        GgmlType::Q4_K => (144, Q4_K),
        GgmlType::Q6_K => (210, Q6_K),
        _ => return None,
    };
    Some(Shape { bytes, fields })
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
    for &field in sh.fields {
        match field {
            Field::Half { plain, col } => mv(to, plain, col + 2 * i, 2),
            Field::Words { plain, n, col } => {
                for k in 0..n {
                    mv(to, plain + 4 * k, col + 32 * k + 4 * i, 4);
                }
            }
            Field::FifthBits { plain, col } => {
                let (f, t) = if to_interleaved {
                    (plain, col + 4 * i)
                } else {
                    (col + 4 * i, plain)
                };
                let word = u32::from_le_bytes([from[f], from[f + 1], from[f + 2], from[f + 3]]);
                let moved = if to_interleaved {
                    qh_to_lanes(word)
                } else {
                    qh_from_lanes(word)
                };
                to[t..t + 4].copy_from_slice(&moved.to_le_bytes());
            }
            Field::Q6Quants { col } => {
                for n in 0..2 {
                    for kk in 0..8 {
                        let at = col + 96 * (8 * n + kk) + 4 * i;
                        mv(to, 4 * (16 * n + kk), at, 4);
                        mv(to, 4 * (16 * n + 8 + kk), at + 32, 4);
                        mv(to, 128 + 4 * (8 * n + kk), at + 64, 4);
                    }
                }
            }
        }
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
/// layout and goes through the type's reference dot product in the tile's order, so the
/// results are exactly those of the plain tensor.
pub(crate) fn gemm_scalar(ty: GgmlType, t: &crate::tile::Tile) {
    let dot = crate::order::reference_dot(ty, t.order());
    for r in t.rows() {
        let done = with_plain_row(ty, t.w(), t.w_row_bytes(), r, |row| {
            for k in 0..t.tokens() {
                if let Some(dot) = dot {
                    t.store(k, r, dot(t.cols(), row, t.x_row(k)));
                }
            }
        });
        // Only the types of `gemm_scalar_fn` (all with dot products) come here, on tensors
        // that `interleave` laid out in whole groups of eight rows.
        assert!(
            done.is_some() && dot.is_some(),
            "{ty} row {r} is not an interleaved row of this tile"
        );
    }
}

fn gemm_scalar_q4_0(t: &crate::tile::Tile) {
    gemm_scalar(GgmlType::Q4_0, t)
}

fn gemm_scalar_q4_1(t: &crate::tile::Tile) {
    gemm_scalar(GgmlType::Q4_1, t)
}

fn gemm_scalar_q5_0(t: &crate::tile::Tile) {
    gemm_scalar(GgmlType::Q5_0, t)
}

fn gemm_scalar_q5_1(t: &crate::tile::Tile) {
    gemm_scalar(GgmlType::Q5_1, t)
}

fn gemm_scalar_q8_0(t: &crate::tile::Tile) {
    gemm_scalar(GgmlType::Q8_0, t)
}

fn gemm_scalar_q4_k(t: &crate::tile::Tile) {
    gemm_scalar(GgmlType::Q4_K, t)
}

fn gemm_scalar_q6_k(t: &crate::tile::Tile) {
    gemm_scalar(GgmlType::Q6_K, t)
}

/// The scalar tile kernel for interleaved weights of type `ty`.
pub(crate) fn gemm_scalar_fn(ty: GgmlType) -> Option<crate::tile::GemmFn> {
    match ty {
        GgmlType::Q4_0 => Some(gemm_scalar_q4_0),
        GgmlType::Q4_1 => Some(gemm_scalar_q4_1),
        GgmlType::Q5_0 => Some(gemm_scalar_q5_0),
        GgmlType::Q5_1 => Some(gemm_scalar_q5_1),
        GgmlType::Q8_0 => Some(gemm_scalar_q8_0),
        GgmlType::Q4_K => Some(gemm_scalar_q4_k),
        GgmlType::Q6_K => Some(gemm_scalar_q6_k),
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
            GgmlType::Q8_0,
            GgmlType::Q4_K,
            GgmlType::Q6_K,
        ] {
            let (rows, cols) = (16, 512);
            let rb = ty.row_bytes(cols).unwrap();
            let src: Vec<u8> = (0..rows * rb).map(|i| (i * 7 + i / 251) as u8).collect();
            let mut dst = vec![0u8; src.len()];
            assert!(interleave(ty, &src, rows, cols, &mut dst));
            assert_ne!(dst, src);
            let sh = shape(ty).unwrap();
            let covered: usize = sh
                .fields
                .iter()
                .map(|f| match *f {
                    Field::Half { .. } => 2,
                    Field::Words { n, .. } => 4 * n,
                    Field::FifthBits { .. } => 4,
                    Field::Q6Quants { .. } => 192,
                })
                .sum();
            assert_eq!(
                covered, sh.bytes,
                "{ty}: every byte of a block belongs to a field"
            );
            if !sh
                .fields
                .iter()
                .any(|f| matches!(f, Field::FifthBits { .. }))
            {
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
        assert!(!interleave(GgmlType::Q2_K, &[], 0, 256, &mut []));
    }

    #[test]
    fn the_layout_is_the_documented_one() {
        // Row 5, quant byte 9 in Q4_1: after the 32-byte header, vector 2 (bytes 8..12), the
        // upper half (rows 4-7), slot 1 of that half, byte 1 of the dword.
        // Row 5, quant byte 9 (plain offset 4 + 9) in Q4_1: after the 32-byte header, vector 2
        // (bytes 8..12), row slot 5 of the vector, byte 1 of the dword.
        let (rows, cols) = (8, 32);
        let src: Vec<u8> = (0..rows * 20).map(|i| i as u8).collect();
        let mut dst = vec![0u8; src.len()];
        assert!(interleave(GgmlType::Q4_1, &src, rows, cols, &mut dst));
        assert_eq!(dst[32 + 64 + 16 + 4 + 1], src[5 * 20 + 4 + 9]);
        // Q4_K row 3: dmin at 16 + 6, scale byte 5 in word 1 at 32 + 32 + 12 + 1, quant byte
        // 70 in word 17 at 128 + 32 * 17 + 12 + 2.
        let src: Vec<u8> = (0..8 * 144).map(|i| (i % 251) as u8).collect();
        let mut dst = vec![0u8; src.len()];
        assert!(interleave(GgmlType::Q4_K, &src, 8, 256, &mut dst));
        let row3 = &src[3 * 144..4 * 144];
        assert_eq!(dst[16 + 6..16 + 8], row3[2..4]);
        assert_eq!(dst[32 + 32 + 12 + 1], row3[4 + 5]);
        assert_eq!(dst[128 + 32 * 17 + 12 + 2], row3[16 + 70]);
        // Element 5 (bit 5) goes to byte 1 bit 1; element 21 to byte 1 bit 5.
        assert_eq!(qh_to_lanes(1 << 5), 1 << 9);
        assert_eq!(qh_to_lanes(1 << 21), 1 << 13);
        for x in [0u32, 1, 0xdead_beef, u32::MAX, 0x8000_0001] {
            assert_eq!(qh_from_lanes(qh_to_lanes(x)), x);
        }
    }
}
