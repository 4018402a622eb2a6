//! An opened GGUF file: its parsed header plus the bytes of its tensors, memory-mapped (lazy,
//! the default) or read into memory (eager). Tensor views borrow the shared storage; nothing is
//! copied when a model takes its weights.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use torchless_kernels::{Storage, Tensor};

use crate::parse::{parse_header, GgufError, Header, TensorInfo};
use crate::value::Metadata;

/// A GGUF file ready to hand out tensors.
pub struct GgufFile {
    header: Header,
    storage: Arc<Storage>,
    by_name: HashMap<String, usize>,
}

/// How tensor bytes are brought into memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LoadMode {
    /// Memory-map the file; pages are read when first touched and shared with the page cache.
    #[default]
    Mmap,
    /// Read the whole file into (aligned) memory now.
    Read,
}

impl GgufFile {
    /// Opens and parses `path`.
    pub fn open(path: impl AsRef<Path>, mode: LoadMode) -> Result<GgufFile, GgufError> {
        let path = path.as_ref();
        let io = |source| GgufError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let storage = match mode {
            LoadMode::Mmap => {
                // SAFETY: the map is read-only; as with every memory-mapped reader, the file
                // must not be truncated or rewritten by another process while it is open.
                let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
                Storage::Mapped(map)
            }
            LoadMode::Read => {
                let bytes = std::fs::read(path).map_err(io)?;
                Storage::from_bytes(&bytes)
            }
        };
        GgufFile::from_storage(Arc::new(storage))
    }

    /// Parses a GGUF image that is already in memory.
    pub fn from_storage(storage: Arc<Storage>) -> Result<GgufFile, GgufError> {
        let header = parse_header(storage.bytes())?;
        let by_name = header
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(GgufFile {
            header,
            storage,
            by_name,
        })
    }

    pub fn version(&self) -> u32 {
        self.header.version
    }

    pub fn metadata(&self) -> &Metadata {
        &self.header.metadata
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.header.tensors
    }

    pub fn alignment(&self) -> u64 {
        self.header.alignment
    }

    pub fn data_offset(&self) -> u64 {
        self.header.data_offset
    }

    /// Size of the whole file in bytes.
    pub fn file_size(&self) -> u64 {
        self.storage.bytes().len() as u64
    }

    pub fn is_mapped(&self) -> bool {
        self.storage.is_mapped()
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.header.tensors[i])
    }

    /// A view of tensor `name`'s data (no copy); `None` if the file has no such tensor.
    pub fn tensor(&self, name: &str) -> Option<Tensor> {
        let info = self.tensor_info(name)?;
        let dims: Vec<usize> = info.dims.iter().map(|&d| d as usize).collect();
        let start = (self.header.data_offset + info.offset) as usize;
        // The parser checked type, shape and bounds, so this cannot fail for a parsed file.
        Tensor::new(info.ty, &dims, Arc::clone(&self.storage), start).ok()
    }

    /// The raw bytes of tensor `name`'s data.
    pub fn tensor_bytes(&self, name: &str) -> Option<&[u8]> {
        let info = self.tensor_info(name)?;
        let start = (self.header.data_offset + info.offset) as usize;
        self.storage.bytes().get(start..start + info.size as usize)
    }
}
