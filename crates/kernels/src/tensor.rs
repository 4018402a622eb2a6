//! Weight tensors: a typed, shaped view into bytes that live in a memory map or on the heap.
//!
//! A [`Tensor`] never copies its bytes: clones share the storage. Shapes use GGML's order,
//! `dims[0]` being the length of a row (the contiguous dimension). This module holds no
//! compute and knows nothing of files or models.

use std::sync::Arc;

use crate::quant::GgmlType;

/// 64-byte aligned chunk, the unit of heap storage (keeps SIMD loads on cache lines).
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(64))]
pub struct Align64(pub [u8; 64]);

/// Where tensor bytes live.
pub enum Storage {
    /// A read-only memory map of a model file.
    Mapped(memmap2::Mmap),
    /// Bytes read or converted into memory, 64-byte aligned.
    Heap { chunks: Vec<Align64>, len: usize },
}

impl Storage {
    /// Heap storage holding a copy of `bytes`.
    pub fn from_bytes(bytes: &[u8]) -> Storage {
        let mut s = Storage::zeroed(bytes.len());
        if let Storage::Heap { chunks, len } = &mut s {
            bytemuck::cast_slice_mut::<Align64, u8>(chunks)[..*len].copy_from_slice(bytes);
        }
        s
    }

    /// Zero-filled heap storage of `len` bytes.
    pub fn zeroed(len: usize) -> Storage {
        Storage::Heap {
            chunks: vec![Align64([0; 64]); len.div_ceil(64)],
            len,
        }
    }

    pub fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            Storage::Heap { chunks, len } => &bytemuck::cast_slice::<Align64, u8>(chunks)[..*len],
        }
    }

    /// Mutable bytes of heap storage (`None` for a read-only map).
    pub fn bytes_mut(&mut self) -> Option<&mut [u8]> {
        match self {
            Storage::Mapped(_) => None,
            Storage::Heap { chunks, len } => {
                Some(&mut bytemuck::cast_slice_mut::<Align64, u8>(chunks)[..*len])
            }
        }
    }

    pub fn is_mapped(&self) -> bool {
        matches!(self, Storage::Mapped(_))
    }

    /// Tells the kernel that `len` bytes at `offset` of a memory map will not be read again, so
    /// their pages leave the resident set (for weights that were copied elsewhere). The map is
    /// read-only and private: a later read would fetch the bytes from the file again. Does
    /// nothing for heap storage.
    pub fn release(&self, offset: usize, len: usize) {
        if let Storage::Mapped(m) = self {
            if offset.checked_add(len).is_some_and(|end| end <= m.len()) {
                // SAFETY: the mapping is read-only and file-backed; dropping its pages cannot
                // change what a later read sees.
                let _ = unsafe {
                    m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len)
                };
            }
        }
    }
}

/// How a tensor's rows are laid out in its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Row after row, as in the model file.
    Rows,
    /// Groups of eight rows interleaved block by block (see [`crate::quant::interleave`]).
    Rows8,
}

/// A typed view of `len` bytes at `offset` in shared storage.
#[derive(Clone)]
pub struct Tensor {
    ty: GgmlType,
    dims: Vec<usize>,
    storage: Arc<Storage>,
    offset: usize,
    len: usize,
    layout: Layout,
}

/// Why a tensor view could not be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TensorError {
    #[error("rows of {cols} elements are not a whole number of {ty} blocks")]
    PartialBlock { ty: GgmlType, cols: usize },
    #[error("tensor of shape {dims:?} and type {ty} needs {need} bytes but {have} are available")]
    OutOfBounds {
        ty: GgmlType,
        dims: Vec<usize>,
        need: usize,
        have: usize,
    },
    #[error("tensor shape {0:?} overflows")]
    Overflow(Vec<usize>),
}

impl Tensor {
    /// A view of the bytes at `offset` in `storage` holding a tensor of type `ty` and shape
    /// `dims` (row length first). Checks every size.
    pub fn new(
        ty: GgmlType,
        dims: &[usize],
        storage: Arc<Storage>,
        offset: usize,
    ) -> Result<Tensor, TensorError> {
        let cols = dims.first().copied().unwrap_or(1);
        let rows = dims
            .iter()
            .skip(1)
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| TensorError::Overflow(dims.to_vec()))?;
        let row = ty
            .row_bytes(cols)
            .ok_or(TensorError::PartialBlock { ty, cols })?;
        let len = row
            .checked_mul(rows)
            .ok_or_else(|| TensorError::Overflow(dims.to_vec()))?;
        let have = storage.bytes().len().saturating_sub(offset);
        if len > have {
            return Err(TensorError::OutOfBounds {
                ty,
                dims: dims.to_vec(),
                need: len,
                have,
            });
        }
        Ok(Tensor {
            ty,
            dims: dims.to_vec(),
            storage,
            offset,
            len,
            layout: Layout::Rows,
        })
    }

    /// A new heap tensor holding `values` as f32, shape `dims`.
    pub fn from_f32(dims: &[usize], values: &[f32]) -> Result<Tensor, TensorError> {
        let mut bytes = Vec::with_capacity(values.len() * 4);
        for v in values {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        Tensor::new(
            GgmlType::F32,
            dims,
            Arc::new(Storage::from_bytes(&bytes)),
            0,
        )
    }

    pub fn ty(&self) -> GgmlType {
        self.ty
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// A heap copy of this tensor in the eight-row interleaved layout, when its type and shape
    /// allow one (see [`crate::quant::interleave`]).
    pub fn interleaved(&self) -> Option<Tensor> {
        self.interleaved_with(false)
    }

    /// [`Tensor::interleaved`]; with `release`, the resident pages of a memory-mapped source
    /// are dropped as the copy proceeds (a few MiB at a time), so that repacking a large matrix
    /// never holds both whole copies. The source stays readable (pages come back from the file).
    pub fn interleaved_with(&self, release: bool) -> Option<Tensor> {
        let ty = self.ty;
        if self.layout != Layout::Rows || !crate::quant::interleave::supports(ty) {
            return None;
        }
        let (rows, cols, rb) = (self.rows(), self.cols(), self.row_bytes());
        if !rows.is_multiple_of(8) || rb == 0 || rows * rb != self.len {
            return None;
        }
        let mut storage = Storage::zeroed(self.len);
        let dst = storage.bytes_mut()?;
        let src = self.bytes();
        // Whole groups of eight rows, about 4 MiB of source at a time.
        let step = ((4 << 20) / (8 * rb)).max(1) * 8 * rb;
        let mut at = 0;
        while at < self.len {
            let end = (at + step).min(self.len);
            if !crate::quant::interleave::interleave(
                ty,
                &src[at..end],
                (end - at) / rb,
                cols,
                &mut dst[at..end],
            ) {
                return None;
            }
            if release {
                self.storage.release(self.offset + at, end - at);
            }
            at = end;
        }
        Some(Tensor {
            ty,
            dims: self.dims.clone(),
            storage: Arc::new(storage),
            offset: 0,
            len: self.len,
            layout: Layout::Rows8,
        })
    }

    /// A view of `count` rows starting at row `first` of a two-dimensional tensor (a part of a
    /// fused projection: q, k and v of one `qkv` matrix; the first rows of an output head). In
    /// the interleaved layout only whole groups of eight rows can be cut out. None when the rows
    /// are out of range or cut a group.
    pub fn rows_view(&self, first: usize, count: usize) -> Option<Tensor> {
        let whole_groups = first.is_multiple_of(8) && count.is_multiple_of(8);
        if self.dims.len() != 2 || (self.layout == Layout::Rows8 && !whole_groups) {
            return None;
        }
        let rb = self.row_bytes();
        let end = first.checked_add(count)?;
        if end > self.rows() || count == 0 {
            return None;
        }
        Some(Tensor {
            ty: self.ty,
            dims: vec![self.cols(), count],
            storage: self.storage.clone(),
            offset: self.offset + first * rb,
            len: count * rb,
            layout: self.layout,
        })
    }

    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    /// Elements per row (`dims[0]`).
    pub fn cols(&self) -> usize {
        self.dims.first().copied().unwrap_or(1)
    }

    /// Number of rows (product of the other dimensions).
    pub fn rows(&self) -> usize {
        self.dims.iter().skip(1).product()
    }

    pub fn n_elements(&self) -> usize {
        self.cols() * self.rows()
    }

    pub fn row_bytes(&self) -> usize {
        if self.rows() == 0 {
            0
        } else {
            self.len / self.rows()
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.storage.bytes()[self.offset..self.offset + self.len]
    }

    /// The bytes of row `r` (empty when out of range or when the rows are interleaved).
    pub fn row(&self, r: usize) -> &[u8] {
        if self.layout != Layout::Rows {
            return &[];
        }
        let rb = self.row_bytes();
        self.bytes().get(r * rb..(r + 1) * rb).unwrap_or(&[])
    }

    pub fn is_mapped(&self) -> bool {
        self.storage.is_mapped()
    }

    /// Row `r` converted to f32 into `out` (length `cols`), from either layout. Returns false
    /// if the type cannot be dequantized or `r` is out of range.
    pub fn row_to_f32(&self, r: usize, out: &mut [f32]) -> bool {
        if r >= self.rows() {
            return false;
        }
        match self.layout {
            Layout::Rows => crate::quant::dequantize(self.ty, self.row(r), out),
            Layout::Rows8 => crate::quant::interleave::with_plain_row(
                self.ty,
                self.bytes(),
                self.row_bytes(),
                r,
                |row| crate::quant::dequantize(self.ty, row, out),
            )
            .unwrap_or(false),
        }
    }

    /// The whole tensor as f32 (for small tensors: norms, biases).
    pub fn to_f32_vec(&self) -> Option<Vec<f32>> {
        if self.layout != Layout::Rows {
            return None;
        }
        let mut out = vec![0.0f32; self.n_elements()];
        crate::quant::dequantize(self.ty, self.bytes(), &mut out).then_some(out)
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({} {:?})", self.ty, self.dims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_check_bounds_and_blocks() {
        let st = Arc::new(Storage::zeroed(100));
        assert!(Tensor::new(GgmlType::Q8_0, &[32, 2], st.clone(), 0).is_ok());
        assert!(matches!(
            Tensor::new(GgmlType::Q8_0, &[32, 3], st.clone(), 0),
            Err(TensorError::OutOfBounds { .. })
        ));
        assert!(matches!(
            Tensor::new(GgmlType::Q8_0, &[31, 1], st.clone(), 0),
            Err(TensorError::PartialBlock { .. })
        ));
        assert!(matches!(
            Tensor::new(GgmlType::F32, &[1 << 40, 1 << 40], st, 0),
            Err(TensorError::Overflow(_))
        ));
    }

    #[test]
    fn row_views_share_the_rows() {
        let values: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let t = Tensor::from_f32(&[3, 4], &values).unwrap();
        let v = t.rows_view(1, 2).unwrap();
        assert_eq!(v.dims(), &[3, 2]);
        assert_eq!(v.to_f32_vec().unwrap(), vec![3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
        assert!(t.rows_view(3, 2).is_none());
        assert!(t.rows_view(0, 0).is_none());
        assert!(t.rows_view(usize::MAX, 2).is_none());
    }

    #[test]
    fn interleaved_views_take_whole_groups() {
        // 24 rows of one Q8_0 block each: scale 1, quants equal to the row number.
        let mut bytes = Vec::new();
        for r in 0..24u8 {
            bytes.extend_from_slice(&half::f16::from_f32(1.0).to_le_bytes());
            bytes.extend(std::iter::repeat_n(r, 32));
        }
        let st = Arc::new(Storage::from_bytes(&bytes));
        let t = Tensor::new(GgmlType::Q8_0, &[32, 24], st, 0).unwrap();
        let packed = t.interleaved().unwrap();
        let v = packed.rows_view(8, 16).unwrap();
        assert_eq!((v.layout(), v.rows()), (Layout::Rows8, 16));
        let mut row = [0.0f32; 32];
        for r in 0..16 {
            assert!(v.row_to_f32(r, &mut row));
            assert!(row.iter().all(|&x| x == (r + 8) as f32), "row {r}: {row:?}");
        }
        assert!(packed.rows_view(4, 8).is_none());
        assert!(packed.rows_view(8, 4).is_none());
        assert!(packed.rows_view(16, 16).is_none());
    }

    #[test]
    fn heap_storage_is_aligned() {
        let st = Storage::from_bytes(&[1, 2, 3]);
        assert_eq!(st.bytes(), &[1, 2, 3]);
        assert_eq!(st.bytes().as_ptr() as usize % 64, 0);
    }
}
