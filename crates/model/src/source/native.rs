//! The original torchless engine's own export format (`.bin`), read and written.
//!
//! Layout: a little-endian u64 `H`, then `H` bytes of UTF-8 JSON (padded with spaces or zeros
//! so that the payload starts at `8 + H`, a multiple of 64 in files this module writes), then
//! the payload. The JSON holds `metadata` (hyper-parameters as strings: hidden_size,
//! intermediate_size, n_layers, n_heads, n_kv_heads, vocab_size, max_position_embeddings,
//! sliding_window, rope_theta, norm_eps, act_type, quant), `tokenizer` (`vocab`, `merges`, as in
//! tokenizer.json) and `tensors`: HuggingFace names → `dtype` ("f32" or "int8"), `shape`
//! (row-major, outermost first), `offset` into the payload, and for int8 `scale_offset` and
//! `scale_size`: one f32 scale `s` per group of 64 values, each value being `q / s`
//! (`s = 127 / max |x|` of its group). The files hold Mistral-family models.
//!
//! f32 tensors are viewed in place; int8 ones are dequantized to f32 once at load (the
//! kernels have no such type). Every offset and size is checked against the file.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use serde_json::{json, Value};
use torchless_gguf::LoadMode;
use torchless_kernels::ops::RopeStyle;
use torchless_kernels::{GgmlType, Tensor};

use super::{Role, WeightSource};
use crate::arch::Arch;
use crate::config::{ModelConfig, Settings};
use crate::error::ModelError;
use crate::parts::RopeScaling;

/// Values per int8 scale.
pub const GROUP: usize = 64;

/// An opened `.bin` file.
pub struct NativeFile {
    path: String,
    metadata: BTreeMap<String, String>,
    /// The header's `tokenizer` object, when its vocabulary is not empty.
    tokenizer: Option<Value>,
    tensors: HashMap<String, Tensor>,
    bytes: u64,
}

/// Whether `head` (the first bytes of a file) looks like this format: a header size that fits
/// and a JSON object right after it.
pub fn looks_native(head: &[u8], file_len: u64) -> bool {
    let Some(size) = head.get(..8) else {
        return false;
    };
    let h = u64::from_le_bytes(size.try_into().unwrap_or([0; 8]));
    let first = head[8..].iter().find(|b| !b.is_ascii_whitespace());
    h >= 2 && h.checked_add(8).is_some_and(|end| end <= file_len) && first == Some(&b'{')
}

fn field<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.get(key).filter(|x| !x.is_null())
}

impl NativeFile {
    pub fn open(path: &Path, mode: LoadMode) -> Result<NativeFile, ModelError> {
        let name = path.display().to_string();
        let bad = |what: String| ModelError::Config(format!("{name}: {what}"));
        let storage = super::open_storage(path, mode)?;
        let storage = Arc::new(storage);
        let all = storage.bytes();
        let h = all
            .get(..8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
            .ok_or_else(|| bad("shorter than its 8-byte header size".into()))?;
        let payload = usize::try_from(h)
            .ok()
            .and_then(|h| h.checked_add(8))
            .filter(|&end| end <= all.len())
            .ok_or_else(|| bad(format!("header size {h} exceeds the file")))?;
        let text = std::str::from_utf8(&all[8..payload])
            .map_err(|_| bad("the header is not UTF-8".into()))?
            .trim_end_matches(['\0', ' ', '\n', '\r', '\t']);
        let header: Value =
            serde_json::from_str(text).map_err(|e| bad(format!("the header is not JSON: {e}")))?;
        let metadata = field(&header, "metadata")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("the header has no \"metadata\" object".into()))?
            .iter()
            .map(|(k, v)| {
                let s = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), s)
            })
            .collect();
        let tokenizer = field(&header, "tokenizer")
            .filter(|t| {
                t.get("vocab")
                    .and_then(Value::as_object)
                    .is_some_and(|v| !v.is_empty())
            })
            .cloned();
        let entries = field(&header, "tensors")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("the header has no \"tensors\" object".into()))?;
        let data_len = all.len() - payload;
        let mut tensors = HashMap::new();
        // int8 values are dequantized into memory: their total may not exceed the payload (each
        // value is a byte of it), so that overlapping entries cannot ask for more than 4× the file.
        let mut int8_total = 0usize;
        for (tname, e) in entries {
            let tbad = |what: &str| bad(format!("tensor {tname}: {what}"));
            let num = |k: &str| -> Result<usize, ModelError> {
                field(e, k)
                    .and_then(Value::as_u64)
                    .and_then(|v| usize::try_from(v).ok())
                    .ok_or_else(|| tbad(&format!("\"{k}\" is missing or not a count")))
            };
            let shape: Vec<usize> = field(e, "shape")
                .and_then(Value::as_array)
                .ok_or_else(|| tbad("\"shape\" is missing"))?
                .iter()
                .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                .collect::<Option<_>>()
                .ok_or_else(|| tbad("\"shape\" holds a non-count"))?;
            let count = shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .filter(|&c| c > 0)
                .ok_or_else(|| tbad("the shape is empty or overflows"))?;
            let mut dims: Vec<usize> = shape.iter().rev().copied().collect();
            if dims.is_empty() {
                dims.push(1);
            }
            let offset = num("offset")?;
            let range = |off: usize, len: usize| {
                off.checked_add(len)
                    .filter(|&end| end <= data_len)
                    .map(|end| payload + off..payload + end)
                    .ok_or_else(|| tbad("lies outside the file"))
            };
            let dtype = field(e, "dtype").and_then(Value::as_str).unwrap_or("");
            let t = match dtype {
                "f32" => {
                    let r = range(
                        offset,
                        count.checked_mul(4).ok_or_else(|| tbad("too large"))?,
                    )?;
                    Tensor::new(GgmlType::F32, &dims, storage.clone(), r.start)
                        .map_err(|e| tbad(&e.to_string()))?
                }
                "int8" => {
                    if !count.is_multiple_of(GROUP) {
                        return Err(tbad("its size is not a whole number of 64-value groups"));
                    }
                    int8_total = int8_total.saturating_add(count);
                    if int8_total > data_len {
                        return Err(tbad("the int8 tensors together exceed the payload"));
                    }
                    let q = &all[range(offset, count)?];
                    let (soff, ssize) = (num("scale_offset")?, num("scale_size")?);
                    if ssize != count / GROUP * 4 {
                        return Err(tbad("\"scale_size\" does not give one f32 per 64 values"));
                    }
                    let scales = &all[range(soff, ssize)?];
                    let mut values = Vec::with_capacity(count);
                    for (g, s) in q.chunks_exact(GROUP).zip(scales.chunks_exact(4)) {
                        let s = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
                        // An all-zero group has an infinite scale (127 / 0): its values are 0.
                        if s.is_nan() || s <= 0.0 {
                            return Err(tbad(&format!("holds the invalid scale {s}")));
                        }
                        values.extend(g.iter().map(|&b| b as i8 as f32 / s));
                    }
                    Tensor::from_f32(&dims, &values).map_err(|e| tbad(&e.to_string()))?
                }
                other => return Err(tbad(&format!("dtype '{other}' is not f32 or int8"))),
            };
            tensors.insert(tname.clone(), t);
        }
        Ok(NativeFile {
            path: name,
            metadata,
            tokenizer,
            tensors,
            bytes: all.len() as u64,
        })
    }

    pub fn file_bytes(&self) -> u64 {
        self.bytes
    }

    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// The model configuration the metadata describes, as family `arch` (normally Mistral).
    /// Every tensor, by its (HuggingFace) name; int8 ones already dequantized.
    pub fn tensors(&self) -> &HashMap<String, Tensor> {
        &self.tensors
    }

    /// The header's tokenizer (`vocab`, `merges`), if it has one.
    pub fn tokenizer_json(&self) -> Option<&Value> {
        self.tokenizer.as_ref()
    }

    pub fn config(&self, arch: Arch, vocab: usize) -> Result<ModelConfig, ModelError> {
        let bad = |k: &str, what: &str| {
            ModelError::Config(format!("{}: metadata \"{k}\" {what}", self.path))
        };
        let get = |k: &str| {
            self.metadata
                .get(k)
                .map(|s| s.trim())
                .filter(|s| !s.is_empty())
        };
        let count = |k: &str| -> Result<usize, ModelError> {
            get(k)
                .ok_or_else(|| bad(k, "is missing"))?
                .parse::<usize>()
                .ok()
                .filter(|&v| v > 0 && v <= 1 << 24)
                .ok_or_else(|| bad(k, "is not a positive count"))
        };
        let float = |k: &str, default: f32| -> Result<f32, ModelError> {
            match get(k) {
                None => Ok(default),
                Some(s) => s.parse::<f32>().map_err(|_| bad(k, "is not a number")),
            }
        };
        let quant = get("quant").unwrap_or("f32");
        if !matches!(quant, "f32" | "int8") {
            return Err(bad("quant", &format!("is '{quant}', not f32 or int8")));
        }
        let act = get("act_type").unwrap_or("silu");
        if act != "silu" {
            return Err(bad(
                "act_type",
                &format!("is '{act}'; these files hold SiLU models"),
            ));
        }
        let (n_embd, n_head) = (count("hidden_size")?, count("n_heads")?);
        let window = match get("sliding_window") {
            None | Some("None") | Some("null") => None,
            Some(_) => Some(count("sliding_window")?),
        };
        let head_dim = n_embd / n_head;
        Settings {
            name: None,
            n_layers: count("n_layers")?,
            n_embd,
            n_ff: count("intermediate_size")?,
            n_head,
            n_head_kv: count("n_kv_heads")?,
            head_dim,
            vocab,
            n_ctx_train: count("max_position_embeddings")?,
            norm_eps: float("norm_eps", 1e-5)?,
            norm: arch.info().norm,
            // The export keeps HuggingFace's q/k rows: rotate halves.
            rope_style: RopeStyle::Neox,
            rope_dims: head_dim,
            rope_base: float("rope_theta", 10_000.0)?,
            rope_scaling: RopeScaling::None,
            local_rope: None,
            window,
            sliding_layers: None,
            attn_softcap: None,
            final_softcap: None,
            query_scale: None,
        }
        .assemble(arch, "torchless-bin")
    }
}

/// A `.bin` file as a [`WeightSource`] (HuggingFace names, as the export keeps them).
pub struct NativeSource<'a> {
    pub file: &'a NativeFile,
    pub arch: Arch,
}

impl WeightSource for NativeSource<'_> {
    fn tensor(&self, role: Role) -> Option<Tensor> {
        let name = role.hf_name(self.arch)?;
        let t = &self.file.tensors;
        t.get(&format!("model.{name}"))
            .or_else(|| t.get(&name))
            .cloned()
    }

    fn name(&self, role: Role) -> String {
        match role.hf_name(self.arch) {
            Some(n) => format!("model.{n}"),
            None => format!("{role:?}"),
        }
    }
}

/// Element type of a tensor written by [`write`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NativeType {
    F32,
    Int8,
}

/// One tensor to write: HuggingFace name, row-major shape, values.
pub struct NativeTensor<'a> {
    pub name: &'a str,
    pub shape: &'a [usize],
    pub values: &'a [f32],
    pub ty: NativeType,
}

/// The int8 values and scales of `x` (a whole number of groups): `s = 127 / max |x|` per
/// group, `q = round(x · s)`; an all-zero group gets an infinite scale and zeros.
pub fn quantize_int8(x: &[f32]) -> (Vec<i8>, Vec<f32>) {
    let mut q = Vec::with_capacity(x.len());
    let mut scales = Vec::with_capacity(x.len() / GROUP);
    for g in x.chunks(GROUP) {
        let max = g.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let s = 127.0 / max;
        scales.push(s);
        q.extend(g.iter().map(|&v| {
            if max == 0.0 {
                0
            } else {
                (v * s).round().clamp(-127.0, 127.0) as i8
            }
        }));
    }
    (q, scales)
}

/// Writes a `.bin` file: `metadata` (key → string), the tokenizer object (or none), and
/// `tensors`, every offset and the payload aligned to 64 bytes.
pub fn write(
    path: &Path,
    metadata: &BTreeMap<String, String>,
    tokenizer: Option<&Value>,
    tensors: &[NativeTensor<'_>],
) -> std::io::Result<()> {
    let align = |n: usize| n.div_ceil(64) * 64;
    let mut entries = serde_json::Map::new();
    let mut payload: Vec<u8> = Vec::new();
    for t in tensors {
        let count: usize = t.shape.iter().product();
        if count != t.values.len() || (t.ty == NativeType::Int8 && !count.is_multiple_of(GROUP)) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("tensor {}: shape and values do not agree", t.name),
            ));
        }
        payload.resize(align(payload.len()), 0);
        let offset = payload.len();
        let entry = match t.ty {
            NativeType::F32 => {
                payload.extend(t.values.iter().flat_map(|v| v.to_le_bytes()));
                json!({"dtype": "f32", "shape": t.shape, "offset": offset})
            }
            NativeType::Int8 => {
                let (q, s) = quantize_int8(t.values);
                payload.extend(q.iter().map(|&v| v as u8));
                payload.resize(align(payload.len()), 0);
                let scale_offset = payload.len();
                payload.extend(s.iter().flat_map(|v| v.to_le_bytes()));
                json!({"dtype": "int8", "shape": t.shape, "offset": offset,
                    "scale_offset": scale_offset, "scale_size": s.len() * 4})
            }
        };
        entries.insert(t.name.to_string(), entry);
    }
    let header = json!({
        "metadata": metadata,
        "tokenizer": tokenizer.cloned().unwrap_or_else(|| json!({"vocab": {}, "merges": []})),
        "tensors": entries,
    });
    let mut text = header.to_string().into_bytes();
    // Pad so that the payload starts on a 64-byte boundary.
    text.resize(align(8 + text.len()) - 8, b' ');
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    f.write_all(&(text.len() as u64).to_le_bytes())?;
    f.write_all(&text)?;
    f.write_all(&payload)?;
    f.flush()
}
