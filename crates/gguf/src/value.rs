//! GGUF metadata values and typed access to them.
//!
//! Arrays keep their element type (`Vec<u32>`, [`StringArray`] …) instead of a vector of boxed
//! values, and strings of an array share one buffer, so a 262,144-entry vocabulary costs its
//! text and one offset a string rather than an allocation each. Accessors coerce between
//! integer widths when the value fits, since writers disagree on widths (u32 vs i32 vs u64).

use std::collections::HashMap;

/// The type tags of GGUF metadata values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    pub fn from_u32(v: u32) -> Option<ValueType> {
        use ValueType::*;
        Some(match v {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// The fewest bytes one value of this type occupies in a file.
    pub fn min_size(self) -> u64 {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }

    pub fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            String => "string",
            Array => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }
}

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Array),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A list of strings kept as one text buffer and the end offset of each string.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct StringArray {
    text: String,
    ends: Vec<usize>,
}

impl StringArray {
    pub fn new() -> StringArray {
        StringArray::default()
    }

    /// Room for `n` strings of `bytes` bytes in all.
    pub fn with_capacity(n: usize, bytes: usize) -> StringArray {
        StringArray {
            text: String::with_capacity(bytes),
            ends: Vec::with_capacity(n),
        }
    }

    pub fn push(&mut self, s: &str) {
        self.text.push_str(s);
        self.ends.push(self.text.len());
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// String `i`, or None past the end.
    pub fn get(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        self.text.get(start..end)
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        (0..self.len()).map(|i| self.get(i).unwrap_or(""))
    }

    /// Bytes of text held (the strings' lengths added up).
    pub fn text_len(&self) -> usize {
        self.text.len()
    }
}

impl std::fmt::Debug for StringArray {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<S: AsRef<str>> FromIterator<S> for StringArray {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> StringArray {
        let mut a = StringArray::new();
        for s in iter {
            a.push(s.as_ref());
        }
        a
    }
}

impl From<Vec<String>> for StringArray {
    fn from(v: Vec<String>) -> StringArray {
        v.iter().collect()
    }
}

impl<S: AsRef<str>> PartialEq<[S]> for StringArray {
    fn eq(&self, other: &[S]) -> bool {
        self.len() == other.len() && self.iter().zip(other).all(|(a, b)| a == b.as_ref())
    }
}

/// A metadata array, typed by its element type. Arrays may nest.
#[derive(Clone, Debug, PartialEq)]
pub enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(StringArray),
    Array(Vec<Array>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl Array {
    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::String(v) => v.len(),
            Array::Array(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn elem_type(&self) -> ValueType {
        match self {
            Array::U8(_) => ValueType::U8,
            Array::I8(_) => ValueType::I8,
            Array::U16(_) => ValueType::U16,
            Array::I16(_) => ValueType::I16,
            Array::U32(_) => ValueType::U32,
            Array::I32(_) => ValueType::I32,
            Array::F32(_) => ValueType::F32,
            Array::Bool(_) => ValueType::Bool,
            Array::String(_) => ValueType::String,
            Array::Array(_) => ValueType::Array,
            Array::U64(_) => ValueType::U64,
            Array::I64(_) => ValueType::I64,
            Array::F64(_) => ValueType::F64,
        }
    }

    /// Element `i` as an integer, whatever the integer element type.
    pub fn int_at(&self, i: usize) -> Option<i64> {
        match self {
            Array::U8(v) => v.get(i).map(|&x| x as i64),
            Array::I8(v) => v.get(i).map(|&x| x as i64),
            Array::U16(v) => v.get(i).map(|&x| x as i64),
            Array::I16(v) => v.get(i).map(|&x| x as i64),
            Array::U32(v) => v.get(i).map(|&x| x as i64),
            Array::I32(v) => v.get(i).map(|&x| x as i64),
            Array::U64(v) => v.get(i).and_then(|&x| i64::try_from(x).ok()),
            Array::I64(v) => v.get(i).copied(),
            Array::Bool(v) => v.get(i).map(|&x| x as i64),
            _ => None,
        }
    }

    /// Element `i` as a float, whatever the numeric element type.
    pub fn float_at(&self, i: usize) -> Option<f64> {
        match self {
            Array::F32(v) => v.get(i).map(|&x| x as f64),
            Array::F64(v) => v.get(i).copied(),
            _ => self.int_at(i).map(|x| x as f64),
        }
    }
}

impl Value {
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(_) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// The value as a signed integer if it is an integer (or bool) that fits.
    pub fn as_i64(&self) -> Option<i64> {
        Some(match *self {
            Value::U8(v) => v as i64,
            Value::I8(v) => v as i64,
            Value::U16(v) => v as i64,
            Value::I16(v) => v as i64,
            Value::U32(v) => v as i64,
            Value::I32(v) => v as i64,
            Value::U64(v) => i64::try_from(v).ok()?,
            Value::I64(v) => v,
            Value::Bool(v) => v as i64,
            _ => return None,
        })
    }

    /// The value as a float if it is numeric.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&Array> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// A short human-readable rendering (arrays summarised).
    pub fn display_short(&self) -> String {
        match self {
            Value::String(s) if s.chars().count() > 60 => {
                format!("{:?}…", s.chars().take(60).collect::<String>())
            }
            Value::String(s) => format!("{s:?}"),
            Value::Array(a) => format!("[{}; {}]", a.elem_type().name(), a.len()),
            Value::F32(v) => format!("{v}"),
            Value::F64(v) => format!("{v}"),
            Value::Bool(v) => format!("{v}"),
            other => other.as_i64().map(|v| v.to_string()).unwrap_or_default(),
        }
    }
}

/// Why a metadata value could not be read as asked.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MetadataError {
    #[error("metadata key '{0}' is missing")]
    Missing(String),
    #[error("metadata key '{key}' holds {found}, expected {expected}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: String,
    },
}

/// The key/value pairs of a GGUF file, in file order, with lookup by key.
#[derive(Clone, Debug, Default)]
pub struct Metadata {
    entries: Vec<(String, Value)>,
    index: HashMap<String, usize>,
}

impl Metadata {
    pub fn new() -> Metadata {
        Metadata::default()
    }

    /// Inserts or replaces `key`.
    pub fn insert(&mut self, key: impl Into<String>, value: Value) {
        let key = key.into();
        match self.index.get(&key) {
            Some(&i) => self.entries[i].1 = value,
            None => {
                self.index.insert(key.clone(), self.entries.len());
                self.entries.push((key, value));
            }
        }
    }

    pub fn contains(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn wrong(key: &str, expected: &'static str, v: &Value) -> MetadataError {
        MetadataError::WrongType {
            key: key.to_string(),
            expected,
            found: v.value_type().name().to_string(),
        }
    }

    fn need(&self, key: &str) -> Result<&Value, MetadataError> {
        self.get(key)
            .ok_or_else(|| MetadataError::Missing(key.to_string()))
    }

    /// An unsigned integer that fits in `u64`.
    pub fn u64(&self, key: &str) -> Result<u64, MetadataError> {
        let v = self.need(key)?;
        match v {
            Value::U64(x) => Ok(*x),
            _ => v
                .as_i64()
                .and_then(|x| u64::try_from(x).ok())
                .ok_or_else(|| Self::wrong(key, "a non-negative integer", v)),
        }
    }

    /// An unsigned integer that fits in `u32`.
    pub fn u32(&self, key: &str) -> Result<u32, MetadataError> {
        let v = self.need(key)?;
        self.u64(key)
            .ok()
            .and_then(|x| u32::try_from(x).ok())
            .ok_or_else(|| Self::wrong(key, "an integer in 0..2^32", v))
    }

    pub fn f32(&self, key: &str) -> Result<f32, MetadataError> {
        let v = self.need(key)?;
        v.as_f64()
            .map(|x| x as f32)
            .ok_or_else(|| Self::wrong(key, "a number", v))
    }

    pub fn bool(&self, key: &str) -> Result<bool, MetadataError> {
        let v = self.need(key)?;
        v.as_bool().ok_or_else(|| Self::wrong(key, "a bool", v))
    }

    pub fn str(&self, key: &str) -> Result<&str, MetadataError> {
        let v = self.need(key)?;
        v.as_str().ok_or_else(|| Self::wrong(key, "a string", v))
    }

    pub fn array(&self, key: &str) -> Result<&Array, MetadataError> {
        let v = self.need(key)?;
        v.as_array().ok_or_else(|| Self::wrong(key, "an array", v))
    }

    pub fn strings(&self, key: &str) -> Result<&StringArray, MetadataError> {
        match self.array(key)? {
            Array::String(s) => Ok(s),
            other => Err(MetadataError::WrongType {
                key: key.to_string(),
                expected: "an array of strings",
                found: format!("an array of {}", other.elem_type().name()),
            }),
        }
    }

    /// `Ok(None)` when absent, the value when present, an error when present with a wrong type.
    pub fn opt<'a, T>(
        &'a self,
        key: &str,
        get: impl Fn(&'a Metadata, &str) -> Result<T, MetadataError>,
    ) -> Result<Option<T>, MetadataError> {
        if self.contains(key) {
            get(self, key).map(Some)
        } else {
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::StringArray;

    #[test]
    fn string_array_gives_back_each_string() {
        let words = ["", "a", "", "ü€", "longer text", ""];
        let a: StringArray = words.iter().collect();
        assert_eq!(a.len(), words.len());
        assert_eq!(a.text_len(), words.iter().map(|w| w.len()).sum::<usize>());
        for (i, w) in words.iter().enumerate() {
            assert_eq!(a.get(i), Some(*w));
        }
        assert_eq!(a.get(words.len()), None);
        assert_eq!(a.iter().collect::<Vec<_>>(), words);
        assert_eq!(a, words[..]);
        assert_ne!(a, words[1..]);
        assert!(StringArray::new().is_empty());
        assert_eq!(StringArray::new().get(0), None);
    }
}
