//! The GGUF header parser: magic, version, metadata and tensor infos, from a byte slice.
//!
//! Every count, length, offset and size is checked against the bytes that remain before it is
//! used, so a truncated, corrupt or hostile file yields a [`GgufError`] naming the field and
//! the byte offset — never a panic, an overflow, or an allocation larger than the file
//! justifies. Tensor data is not touched here; see [`crate::GgufFile`].

use std::collections::HashSet;

use torchless_kernels::GgmlType;

use crate::value::{Array, Metadata, StringArray, Value, ValueType};

/// GGUF's magic number, "GGUF" in file order.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of tensor data when the file does not say (`general.alignment`).
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Most dimensions a tensor may have (GGML's limit).
pub const MAX_DIMS: usize = 4;
/// Deepest nesting of arrays accepted.
pub const MAX_ARRAY_DEPTH: usize = 8;

/// Why a GGUF file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read '{path}': {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("not a GGUF file: it starts with {found:?} instead of \"GGUF\"")]
    NotGguf { found: Vec<u8> },
    #[error("GGUF version {0} is not supported (only versions 2 and 3 are)")]
    Version(u32),
    #[error("big-endian GGUF files are not supported")]
    BigEndian,
    #[error("file is truncated: {field} at byte {offset} needs {need} bytes, {have} remain")]
    Truncated {
        field: String,
        offset: u64,
        need: u64,
        have: u64,
    },
    #[error("{field} at byte {offset} is not valid UTF-8")]
    Utf8 { field: String, offset: u64 },
    #[error("{field} at byte {offset} has unknown value type {ty}")]
    ValueType { field: String, offset: u64, ty: u32 },
    #[error("{field} at byte {offset}: arrays nested deeper than {MAX_ARRAY_DEPTH} levels")]
    TooDeep { field: String, offset: u64 },
    #[error("metadata key '{key}' appears twice (second at byte {offset})")]
    DuplicateKey { key: String, offset: u64 },
    #[error("general.alignment is {0}; it must be a power of two")]
    Alignment(u64),
    #[error("tensor '{name}' at byte {offset} has {n_dims} dimensions (at most {MAX_DIMS})")]
    Dims {
        name: String,
        offset: u64,
        n_dims: u32,
    },
    #[error("tensor '{name}' at byte {offset} has dimension {value}, which is too large")]
    Dim {
        name: String,
        offset: u64,
        value: u64,
    },
    #[error("tensor '{name}' at byte {offset} has unknown type {ty}")]
    TensorType { name: String, offset: u64, ty: u32 },
    #[error("tensor '{name}': rows of {cols} elements are not whole {ty} blocks")]
    PartialBlock {
        name: String,
        ty: GgmlType,
        cols: u64,
    },
    #[error("tensor '{name}': its size overflows")]
    TensorSize { name: String },
    #[error("tensor '{name}' appears twice (second at byte {offset})")]
    DuplicateTensor { name: String, offset: u64 },
    #[error(
        "tensor '{name}': data offset {offset} is not a multiple of the alignment {alignment}"
    )]
    Misaligned {
        name: String,
        offset: u64,
        alignment: u64,
    },
    #[error(
        "tensor '{name}': data at {start}..{end} lies outside the file's {len}-byte data section"
    )]
    OutOfBounds {
        name: String,
        start: u64,
        end: u64,
        len: u64,
    },
    #[error("tensor data would start at byte {data_offset}, past the end of the {len}-byte file")]
    NoData { data_offset: u64, len: u64 },
}

/// Where and what one tensor is, as the header describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions, row length first (GGML order).
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
    /// Size of the data in bytes.
    pub size: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed header.
#[derive(Clone, Debug)]
pub struct Header {
    pub version: u32,
    pub metadata: Metadata,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute byte offset of the data section.
    pub data_offset: u64,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, field: &dyn Fn() -> String) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                field: field(),
                offset: self.pos as u64,
                need: n,
                have: self.remaining(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, field: &dyn Fn() -> String) -> Result<[u8; N], GgufError> {
        let s = self.take(N as u64, field)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, field: &dyn Fn() -> String) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &dyn Fn() -> String) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    fn string(&mut self, field: &dyn Fn() -> String) -> Result<String, GgufError> {
        self.str(field).map(str::to_string)
    }

    /// A string, borrowed from the header bytes.
    fn str(&mut self, field: &dyn Fn() -> String) -> Result<&'a str, GgufError> {
        let len = self.u64(field)?;
        let at = self.pos as u64;
        let bytes = self.take(len, field)?;
        std::str::from_utf8(bytes).map_err(|_| GgufError::Utf8 {
            field: field(),
            offset: at,
        })
    }

    /// Fails early when `count` values of at least `min_size` bytes cannot fit in what remains,
    /// so that no vector is ever sized from an unchecked count.
    fn check_count(
        &self,
        count: u64,
        min_size: u64,
        field: &dyn Fn() -> String,
    ) -> Result<usize, GgufError> {
        match count.checked_mul(min_size) {
            Some(need) if need <= self.remaining() => Ok(count as usize),
            _ => Err(GgufError::Truncated {
                field: field(),
                offset: self.pos as u64,
                need: count.saturating_mul(min_size),
                have: self.remaining(),
            }),
        }
    }

    fn value(
        &mut self,
        ty: ValueType,
        depth: usize,
        field: &dyn Fn() -> String,
    ) -> Result<Value, GgufError> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>(field)?[0]),
            ValueType::I8 => Value::I8(self.array::<1>(field)?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(field)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(field)?)),
            ValueType::U32 => Value::U32(self.u32(field)?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(field)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(field)?)),
            ValueType::Bool => Value::Bool(self.array::<1>(field)?[0] != 0),
            ValueType::String => Value::String(self.string(field)?),
            ValueType::U64 => Value::U64(self.u64(field)?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(field)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(field)?)),
            ValueType::Array => Value::Array(self.array_value(depth + 1, field)?),
        })
    }

    fn value_type(&mut self, field: &dyn Fn() -> String) -> Result<ValueType, GgufError> {
        let at = self.pos as u64;
        let raw = self.u32(field)?;
        ValueType::from_u32(raw).ok_or(GgufError::ValueType {
            field: field(),
            offset: at,
            ty: raw,
        })
    }

    fn array_value(
        &mut self,
        depth: usize,
        field: &dyn Fn() -> String,
    ) -> Result<Array, GgufError> {
        if depth > MAX_ARRAY_DEPTH {
            return Err(GgufError::TooDeep {
                field: field(),
                offset: self.pos as u64,
            });
        }
        let ty = self.value_type(field)?;
        let count = self.u64(field)?;
        let n = self.check_count(count, ty.min_size(), field)?;
        macro_rules! fixed {
            ($variant:ident, $t:ty, $size:expr) => {{
                let bytes = self.take(n as u64 * $size, field)?;
                Array::$variant(
                    bytes
                        .chunks_exact($size)
                        .map(|c| {
                            let mut a = [0u8; $size];
                            a.copy_from_slice(c);
                            <$t>::from_le_bytes(a)
                        })
                        .collect(),
                )
            }};
        }
        Ok(match ty {
            ValueType::U8 => Array::U8(self.take(n as u64, field)?.to_vec()),
            ValueType::I8 => Array::I8(
                self.take(n as u64, field)?
                    .iter()
                    .map(|&b| b as i8)
                    .collect(),
            ),
            ValueType::Bool => Array::Bool(
                self.take(n as u64, field)?
                    .iter()
                    .map(|&b| b != 0)
                    .collect(),
            ),
            ValueType::U16 => fixed!(U16, u16, 2),
            ValueType::I16 => fixed!(I16, i16, 2),
            ValueType::U32 => fixed!(U32, u32, 4),
            ValueType::I32 => fixed!(I32, i32, 4),
            ValueType::F32 => fixed!(F32, f32, 4),
            ValueType::U64 => fixed!(U64, u64, 8),
            ValueType::I64 => fixed!(I64, i64, 8),
            ValueType::F64 => fixed!(F64, f64, 8),
            ValueType::String => {
                let mut v = StringArray::with_capacity(n, 0);
                for i in 0..n {
                    let f = || format!("{}[{i}]", field());
                    v.push(self.str(&f)?);
                }
                Array::String(v)
            }
            ValueType::Array => {
                let mut v = Vec::with_capacity(n);
                for i in 0..n {
                    let f = || format!("{}[{i}]", field());
                    v.push(self.array_value(depth + 1, &f)?);
                }
                Array::Array(v)
            }
        })
    }
}

/// Parses the header of a GGUF file held in `buf` (the whole file, or at least its header for
/// everything but the final bounds checks, which use `buf.len()`).
pub fn parse_header(buf: &[u8]) -> Result<Header, GgufError> {
    let mut c = Cursor { buf, pos: 0 };
    let magic: [u8; 4] = c
        .array(&|| "magic".to_string())
        .map_err(|_| GgufError::NotGguf {
            found: buf[..buf.len().min(4)].to_vec(),
        })?;
    if magic != MAGIC {
        return Err(GgufError::NotGguf {
            found: magic.to_vec(),
        });
    }
    let version = c.u32(&|| "version".to_string())?;
    if version.swap_bytes() == 2 || version.swap_bytes() == 3 {
        return Err(GgufError::BigEndian);
    }
    if version != 2 && version != 3 {
        return Err(GgufError::Version(version));
    }
    let n_tensors = c.u64(&|| "tensor count".to_string())?;
    let n_kv = c.u64(&|| "metadata count".to_string())?;
    // A key/value pair takes at least 8 (key length) + 4 (type) + 1 bytes.
    let n_kv = c.check_count(n_kv, 13, &|| "metadata count".to_string())?;

    let mut metadata = Metadata::new();
    for i in 0..n_kv {
        let key_field = || format!("metadata[{i}].key");
        let at = c.pos as u64;
        let key = c.string(&key_field)?;
        let field = || format!("metadata '{key}'");
        let ty = c.value_type(&field)?;
        let value = c.value(ty, 0, &field)?;
        if metadata.contains(&key) {
            return Err(GgufError::DuplicateKey { key, offset: at });
        }
        metadata.insert(key, value);
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_i64() {
            Some(a) if a > 0 && (a as u64).is_power_of_two() => a as u64,
            Some(a) => return Err(GgufError::Alignment(a as u64)),
            None => return Err(GgufError::Alignment(0)),
        },
    };

    // A tensor info takes at least 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset) bytes.
    let n_tensors = c.check_count(n_tensors, 24, &|| "tensor count".to_string())?;
    let mut tensors = Vec::with_capacity(n_tensors);
    let mut names = HashSet::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let at = c.pos as u64;
        let name = c.string(&|| format!("tensor[{i}].name"))?;
        let field = || format!("tensor '{name}'");
        let dims_at = c.pos as u64;
        let n_dims = c.u32(&field)?;
        if n_dims as usize > MAX_DIMS {
            return Err(GgufError::Dims {
                name,
                offset: dims_at,
                n_dims,
            });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            let d_at = c.pos as u64;
            let d = c.u64(&field)?;
            if d > i64::MAX as u64 {
                return Err(GgufError::Dim {
                    name,
                    offset: d_at,
                    value: d,
                });
            }
            dims.push(d);
        }
        let ty_at = c.pos as u64;
        let raw_ty = c.u32(&field)?;
        let ty = GgmlType::from_id(raw_ty).ok_or(GgufError::TensorType {
            name: name.clone(),
            offset: ty_at,
            ty: raw_ty,
        })?;
        let offset = c.u64(&field)?;
        let cols = dims.first().copied().unwrap_or(1);
        if cols % ty.block_elems() as u64 != 0 {
            return Err(GgufError::PartialBlock { name, ty, cols });
        }
        let size = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .and_then(|n| (n / ty.block_elems() as u64).checked_mul(ty.block_bytes() as u64))
            .ok_or_else(|| GgufError::TensorSize { name: name.clone() })?;
        if offset % alignment != 0 {
            return Err(GgufError::Misaligned {
                name,
                offset,
                alignment,
            });
        }
        if !names.insert(name.clone()) {
            return Err(GgufError::DuplicateTensor { name, offset: at });
        }
        tensors.push(TensorInfo {
            name,
            dims,
            ty,
            offset,
            size,
        });
    }

    let header_end = c.pos as u64;
    let data_offset = header_end.div_ceil(alignment) * alignment;
    let len = buf.len() as u64;
    if n_tensors > 0 && data_offset > len {
        return Err(GgufError::NoData { data_offset, len });
    }
    let data_len = len.saturating_sub(data_offset);
    for t in &tensors {
        let end = t.offset.checked_add(t.size);
        match end {
            Some(end) if end <= data_len => {}
            _ => {
                return Err(GgufError::OutOfBounds {
                    name: t.name.clone(),
                    start: t.offset,
                    end: end.unwrap_or(u64::MAX),
                    len: data_len,
                })
            }
        }
    }
    Ok(Header {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
    })
}
