//! The pieces of work that kernels receive: a [`Tile`] of a matrix product and the
//! [`SharedOut`] buffer that pool threads write disjoint parts of.
//!
//! Both carry the invariants the SIMD kernels rely on (every byte a tile names is inside its
//! slices; no two live tiles write the same outputs), checked or promised when they are made,
//! so that a kernel taking `&Tile` can be handed out as a safe function. This module holds
//! types only: it computes nothing and chooses no kernel.

use crate::order::Order;
use std::marker::PhantomData;
use std::ops::Range;

/// A view of an output buffer that several threads write disjoint elements of while the
/// buffer stays borrowed (the lifetime ties the view to the `&mut` it came from, so it cannot
/// outlive or alias a live borrow of the buffer).
pub struct SharedOut<'a, T = f32> {
    ptr: *mut T,
    len: usize,
    _buf: PhantomData<&'a mut [T]>,
}

// SAFETY: a `SharedOut` is an exclusive borrow of a `[T]` spread over threads; every write
// goes through an `unsafe` method whose caller promises that no two threads touch the same
// element, so sharing the view is as safe as sending `&mut [T]` pieces (`T: Send`).
unsafe impl<T: Send> Send for SharedOut<'_, T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for SharedOut<'_, T> {}

impl<'a, T> SharedOut<'a, T> {
    pub fn new(out: &'a mut [T]) -> SharedOut<'a, T> {
        SharedOut {
            ptr: out.as_mut_ptr(),
            len: out.len(),
            _buf: PhantomData,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes `v` at `i`.
    ///
    /// # Safety
    /// No other thread may access index `i` while the view lives.
    ///
    /// # Panics
    /// If `i` is out of bounds (a caller's bug: nothing is dropped silently).
    #[inline(always)]
    pub unsafe fn write(&self, i: usize, v: T) {
        assert!(i < self.len, "SharedOut write at {i} of {}", self.len);
        // SAFETY: in bounds (checked); the caller guarantees exclusive access to index `i`.
        unsafe { *self.ptr.add(i) = v };
    }

    /// The elements `start..start + len`.
    ///
    /// # Safety
    /// No other thread may access these elements while the returned slice lives.
    ///
    /// # Panics
    /// If the range is not inside the buffer.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice_mut(&self, start: usize, len: usize) -> &mut [T] {
        let end = start.checked_add(len);
        assert!(
            end.is_some_and(|e| e <= self.len),
            "SharedOut slice {start}+{len} of {}",
            self.len
        );
        // SAFETY: in bounds (checked); exclusivity is the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) }
    }
}

/// One piece of a matrix product for a kernel: rows `rows` of the weights against every
/// activation row, written to `out[t * out_stride + r]`.
///
/// Every tile satisfies, by construction: the weight bytes of rows `..rows.end`, the
/// activation bytes of `tokens` rows and the outputs of every (token, row) pair lie inside
/// their slices, and no other live tile writes those outputs. Kernels may read through raw
/// pointers within those bounds.
pub struct Tile<'a> {
    w: &'a [u8],
    w_row_bytes: usize,
    cols: usize,
    rows: Range<usize>,
    x: &'a [u8],
    x_row_bytes: usize,
    tokens: usize,
    out: &'a SharedOut<'a>,
    out_stride: usize,
    order: Order,
}

/// The shape of a tile's product (everything but the buffers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TileShape {
    /// Bytes of one weight row.
    pub w_row_bytes: usize,
    /// Elements per row.
    pub cols: usize,
    /// The weight rows this tile computes.
    pub rows: Range<usize>,
    /// Bytes of one encoded activation row.
    pub x_row_bytes: usize,
    /// Activation rows (tokens).
    pub tokens: usize,
    /// Distance between two tokens' outputs (at least `rows.end`).
    pub out_stride: usize,
    /// The arithmetic order the kernel must follow (see [`crate::order`]); the product
    /// hands a tile only to a kernel that implements it.
    pub order: Order,
}

impl<'a> Tile<'a> {
    /// A tile over `w` (weights), `x` (encoded activations) and `out`; `None` where a slice
    /// does not hold what `shape` names.
    ///
    /// # Safety
    /// While the tile lives, no other thread may access the outputs it names
    /// (`t * out_stride + r` for `t < tokens`, `r` in `rows`).
    pub unsafe fn new(
        w: &'a [u8],
        x: &'a [u8],
        out: &'a SharedOut<'a>,
        shape: TileShape,
    ) -> Option<Tile<'a>> {
        let s = &shape;
        let w_end = s.rows.end.checked_mul(s.w_row_bytes)?;
        let x_end = s.tokens.checked_mul(s.x_row_bytes)?;
        let out_end = (s.tokens.max(1) - 1)
            .checked_mul(s.out_stride)?
            .checked_add(s.rows.end)?;
        let fits = s.rows.start <= s.rows.end
            && (s.tokens <= 1 || s.rows.end <= s.out_stride)
            && w_end <= w.len()
            && x_end <= x.len()
            && (s.tokens == 0 || out_end <= out.len());
        fits.then_some(Tile {
            w,
            w_row_bytes: shape.w_row_bytes,
            cols: shape.cols,
            rows: shape.rows,
            x,
            x_row_bytes: shape.x_row_bytes,
            tokens: shape.tokens,
            out,
            out_stride: shape.out_stride,
            order: shape.order,
        })
    }

    /// All weight bytes (`w_row_bytes` per row; at least `rows().end` rows).
    pub fn w(&self) -> &'a [u8] {
        self.w
    }

    pub fn w_row_bytes(&self) -> usize {
        self.w_row_bytes
    }

    /// Elements per row.
    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn rows(&self) -> Range<usize> {
        self.rows.clone()
    }

    /// Activation bytes, `x_row_bytes` per token (at least `tokens()` rows).
    pub fn x(&self) -> &'a [u8] {
        self.x
    }

    pub fn x_row_bytes(&self) -> usize {
        self.x_row_bytes
    }

    pub fn tokens(&self) -> usize {
        self.tokens
    }

    pub fn out_stride(&self) -> usize {
        self.out_stride
    }

    pub fn order(&self) -> Order {
        self.order
    }

    /// Weight row `r` (`r < rows().end`).
    pub fn w_row(&self, r: usize) -> &'a [u8] {
        &self.w[r * self.w_row_bytes..(r + 1) * self.w_row_bytes]
    }

    /// Activation row `t` (`t < tokens()`).
    pub fn x_row(&self, t: usize) -> &'a [u8] {
        &self.x[t * self.x_row_bytes..(t + 1) * self.x_row_bytes]
    }

    /// Stores the product of row `r` and token `t`.
    ///
    /// # Panics
    /// If `(t, r)` is not one of this tile's outputs (a kernel's bug).
    #[inline(always)]
    pub fn store(&self, t: usize, r: usize, v: f32) {
        assert!(
            t < self.tokens && self.rows.contains(&r),
            "tile store outside the tile"
        );
        // SAFETY: `(t, r)` is one of this tile's outputs, which `Tile::new` checked lie inside
        // `out` and whose maker promised that no other thread touches them.
        unsafe { self.out.write(t * self.out_stride + r, v) };
    }
}

impl Tile<'_> {
    /// Stores the products of rows `r..r + v.len()` with token `t`.
    ///
    /// # Panics
    /// If those are not all outputs of this tile (a kernel's bug).
    #[inline(always)]
    pub fn store_rows(&self, t: usize, r: usize, v: &[f32]) {
        assert!(
            t < self.tokens
                && r >= self.rows.start
                && r.checked_add(v.len()).is_some_and(|e| e <= self.rows.end),
            "tile store outside the tile"
        );
        // SAFETY: these outputs are this tile's (checked), which `Tile::new` checked lie
        // inside `out` and whose maker promised that no other thread touches them.
        unsafe { self.out.slice_mut(t * self.out_stride + r, v.len()) }.copy_from_slice(v);
    }
}

/// A kernel computing a whole [`Tile`].
pub type GemmFn = fn(&Tile);

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(rows: Range<usize>, tokens: usize, out_stride: usize) -> TileShape {
        TileShape {
            w_row_bytes: 4,
            cols: 4,
            rows,
            x_row_bytes: 2,
            tokens,
            out_stride,
            order: Order::VecDot,
        }
    }

    #[test]
    fn tiles_check_their_bounds() {
        let (w, x) = ([0u8; 16], [0u8; 6]);
        let mut out = [0.0f32; 12];
        let o = SharedOut::new(&mut out);
        // SAFETY: single-threaded; no other tile lives.
        unsafe {
            assert!(Tile::new(&w, &x, &o, shape(0..4, 3, 4)).is_some());
            assert!(
                Tile::new(&w, &x, &o, shape(0..5, 3, 5)).is_none(),
                "weights"
            );
            assert!(Tile::new(&w, &x, &o, shape(0..4, 3, 3)).is_none(), "stride");
            assert!(Tile::new(&w, &x, &o, shape(0..4, 4, 4)).is_none(), "tokens");
            let mut small = [0.0f32; 11];
            let s = SharedOut::new(&mut small);
            assert!(
                Tile::new(&w, &x, &s, shape(0..4, 3, 4)).is_none(),
                "outputs"
            );
        }
    }

    #[test]
    #[should_panic(expected = "outside the tile")]
    fn stores_outside_the_tile_panic() {
        let (w, x) = ([0u8; 16], [0u8; 6]);
        let mut out = [0.0f32; 12];
        let o = SharedOut::new(&mut out);
        // SAFETY: single-threaded; no other tile lives.
        let t = unsafe { Tile::new(&w, &x, &o, shape(1..3, 3, 4)) }.unwrap();
        t.store(0, 3, 1.0);
    }

    #[test]
    #[should_panic(expected = "SharedOut write")]
    fn shared_writes_out_of_bounds_panic() {
        let mut out = [0.0f32; 2];
        let o = SharedOut::new(&mut out);
        // SAFETY: single-threaded.
        unsafe { o.write(2, 1.0) };
    }
}
