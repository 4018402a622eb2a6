//! `torchless convert`: an opened [`Checkpoint`] written in another format — GGUF (the
//! metadata keys and tensor names llama.cpp's tools read), a HuggingFace directory
//! (config.json, safetensors, tokenizer files), or the original engine's `.bin` export.
//!
//! Every tensor passes through one neutral form, HuggingFace's: rows of q/k in the
//! rotate-halves order, Gemma's norms as `w` (not `1 + w`), f32 values. A GGUF source is
//! brought to it (LLaMA-family q/k rows un-permuted, 1 subtracted from Gemma norms) and a GGUF
//! target taken from it the other way, as llama.cpp's converter does. Sub-modules write the
//! formats: [`gguf_out`], [`hf_out`]; the `.bin` writer is [`crate::source::native::write`].
//!
//! The output is assembled in memory before it is written (the size of the output file), then
//! written in one pass. This module computes no forward pass.

pub mod gguf_out;
pub mod hf_out;

use std::collections::BTreeMap;
use std::path::Path;

use torchless_kernels::ops::RopeStyle;
use torchless_kernels::quant::weights::quantize_weights;
use torchless_kernels::GgmlType;

use crate::arch::Arch;
use crate::checkpoint::{Checkpoint, Format};
use crate::error::ModelError;
use crate::parts::NormKind;
use crate::source::native::{self, NativeTensor, NativeType};
use crate::source::{Role, WeightSource};

/// Element types `--dtype` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutType {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4K,
    /// The `.bin` format's int8 with one scale per 64 values.
    Int8,
}

impl OutType {
    pub fn from_name(s: &str) -> Option<OutType> {
        Some(match s.to_ascii_lowercase().as_str() {
            "f32" => OutType::F32,
            "f16" => OutType::F16,
            "bf16" => OutType::BF16,
            "q8_0" => OutType::Q8_0,
            "q4_0" => OutType::Q4_0,
            "q4_k" | "q4_k_s" => OutType::Q4K,
            "int8" => OutType::Int8,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            OutType::F32 => "f32",
            OutType::F16 => "f16",
            OutType::BF16 => "bf16",
            OutType::Q8_0 => "q8_0",
            OutType::Q4_0 => "q4_0",
            OutType::Q4K => "q4_k",
            OutType::Int8 => "int8",
        }
    }

    fn ggml(self) -> GgmlType {
        match self {
            OutType::F32 => GgmlType::F32,
            OutType::F16 => GgmlType::F16,
            OutType::BF16 => GgmlType::BF16,
            OutType::Q8_0 | OutType::Int8 => GgmlType::Q8_0,
            OutType::Q4_0 => GgmlType::Q4_0,
            OutType::Q4K => GgmlType::Q4_K,
        }
    }
}

/// What to write.
#[derive(Clone, Debug)]
pub struct ConvertOptions {
    pub to: Format,
    /// Element type of the matrices (None: as the source's, f16 for quantized ones; f32 for
    /// `.bin`).
    pub dtype: Option<OutType>,
}

/// A tensor in the neutral (HuggingFace) form.
pub struct Neutral {
    pub role: Role,
    /// GGML order: row length first.
    pub dims: Vec<usize>,
    pub values: Vec<f32>,
    /// The element type it had in the source.
    pub source_type: GgmlType,
}

/// What a conversion wrote.
#[derive(Clone, Debug, Default)]
pub struct ConvertReport {
    pub tensors: usize,
    pub bytes: u64,
    /// Tensors written in another type than asked, with the reason.
    pub fallbacks: Vec<String>,
}

/// The roles a model of this configuration may have, in file order.
pub fn roles(ck: &Checkpoint) -> Vec<Role> {
    let c = &ck.config;
    let src = ck.source();
    let fused = c.arch.info().fused;
    let mut r = vec![
        Role::TokenEmbd,
        Role::OutputNorm,
        Role::OutputNormBias,
        Role::Output,
    ];
    for l in 0..c.n_layers {
        r.extend([Role::AttnNorm(l), Role::AttnNormBias(l)]);
        if fused && src.tensor(Role::Qkv(l)).is_some() {
            r.push(Role::Qkv(l));
        } else {
            r.extend([Role::Q(l), Role::K(l), Role::V(l)]);
        }
        r.extend([
            Role::QBias(l),
            Role::KBias(l),
            Role::VBias(l),
            Role::QNorm(l),
            Role::KNorm(l),
            Role::O(l),
            Role::PostAttnNorm(l),
            Role::FfnNorm(l),
            Role::FfnNormBias(l),
        ]);
        if fused && src.tensor(Role::GateUp(l)).is_some() {
            r.push(Role::GateUp(l));
        } else {
            r.extend([Role::Gate(l), Role::Up(l)]);
        }
        r.extend([Role::Down(l), Role::PostFfnNorm(l)]);
    }
    r.retain(|&role| src.tensor(role).is_some());
    r
}

fn is_norm(role: Role) -> bool {
    matches!(
        role,
        Role::OutputNorm
            | Role::AttnNorm(_)
            | Role::QNorm(_)
            | Role::KNorm(_)
            | Role::PostAttnNorm(_)
            | Role::FfnNorm(_)
            | Role::PostFfnNorm(_)
    )
}

/// Heads of a q/k role whose rows llama.cpp permutes for rotary in adjacent pairs.
fn permuted_heads(arch: Arch, ck: &Checkpoint, role: Role) -> Option<usize> {
    if arch.info().rope != RopeStyle::Normal {
        return None;
    }
    match role {
        Role::Q(_) | Role::QBias(_) => Some(ck.config.n_head),
        Role::K(_) | Role::KBias(_) => Some(ck.config.n_head_kv),
        _ => None,
    }
}

/// Values per row of a tensor of `dims` as the head permutation sees it (a vector is a
/// column: one value per row).
fn row_len(dims: &[usize]) -> usize {
    if dims.len() == 1 {
        1
    } else {
        dims[0]
    }
}

/// Reorders the rows of `values` (`rows` rows of `cols`) in each of `heads` heads: to the
/// adjacent-pairs order (`to_pairs`, HuggingFace → GGUF) or back.
pub fn permute_rows(values: &mut [f32], cols: usize, heads: usize, to_pairs: bool) {
    let rows = values.len() / cols;
    if heads == 0 || !rows.is_multiple_of(heads) || !(rows / heads).is_multiple_of(2) {
        return;
    }
    let hd = rows / heads;
    let src = values.to_vec();
    for h in 0..heads {
        for i in 0..hd / 2 {
            for j in 0..2 {
                let pairs = h * hd + 2 * i + j;
                let halves = h * hd + j * (hd / 2) + i;
                let (to, from) = if to_pairs {
                    (pairs, halves)
                } else {
                    (halves, pairs)
                };
                values[to * cols..(to + 1) * cols]
                    .copy_from_slice(&src[from * cols..(from + 1) * cols]);
            }
        }
    }
}

/// The tensor of `role` in the neutral form.
pub fn neutral(ck: &Checkpoint, src: &dyn WeightSource, role: Role) -> Result<Neutral, ModelError> {
    let t = src
        .tensor(role)
        .ok_or_else(|| ModelError::MissingTensor(src.name(role)))?;
    let mut values = t.to_f32_vec().ok_or(ModelError::UnsupportedType {
        name: src.name(role),
        ty: t.ty(),
    })?;
    let arch = ck.config.arch;
    let s = &ck.config.settings;
    if s.rope_style == RopeStyle::Normal && ck.format() == Format::Gguf {
        if let Some(heads) = permuted_heads(arch, ck, role) {
            permute_rows(&mut values, row_len(t.dims()), heads, false);
        }
    }
    if is_norm(role) && arch.info().norm == NormKind::RmsOnePlus && s.norm == NormKind::Rms {
        values.iter_mut().for_each(|v| *v -= 1.0);
    }
    Ok(Neutral {
        role,
        dims: t.dims().to_vec(),
        values,
        source_type: t.ty(),
    })
}

/// The type a tensor is written in, and why another than asked where it is so.
fn choose_type(
    n: &Neutral,
    want: Option<OutType>,
    floats_only: bool,
) -> (GgmlType, Option<String>) {
    let matrix = n.dims.len() >= 2 && n.dims[1] > 1;
    let default = match n.source_type {
        GgmlType::F32 => GgmlType::F32,
        GgmlType::BF16 => GgmlType::BF16,
        _ => GgmlType::F16,
    };
    if !matrix {
        // Norms and biases stay f32 in GGUF (llama.cpp's rule); in a directory, the dtype.
        return match (floats_only, want) {
            (true, Some(w)) if !is_quant(w.ggml()) => (w.ggml(), None),
            (true, _) => (default, None),
            (false, _) => (GgmlType::F32, None),
        };
    }
    let ty = match want {
        Some(w) => w.ggml(),
        None => default,
    };
    let cols = n.dims[0];
    let block = ty.block_elems();
    if cols.is_multiple_of(block) {
        return (ty, None);
    }
    let fallback = if ty == GgmlType::Q4_K && cols.is_multiple_of(32) {
        GgmlType::Q8_0
    } else {
        GgmlType::F16
    };
    (
        fallback,
        Some(format!(
            "{:?}: rows of {cols} values are not whole {} blocks; written as {}",
            n.role,
            ty.name(),
            fallback.name()
        )),
    )
}

fn is_quant(t: GgmlType) -> bool {
    !matches!(t, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
}

/// `values` encoded as `ty`.
pub(crate) fn encode(ty: GgmlType, values: &[f32], name: &str) -> Result<Vec<u8>, ModelError> {
    let len = ty
        .row_bytes(values.len())
        .ok_or_else(|| ModelError::Config(format!("{name}: cannot be encoded as {}", ty.name())))?;
    let mut out = vec![0u8; len];
    if !quantize_weights(ty, values, &mut out) {
        return Err(ModelError::Config(format!(
            "{name}: no {} quantizer",
            ty.name()
        )));
    }
    Ok(out)
}

/// Writes `ck` to `out` as `opts` says; `progress(done, total)` after each tensor.
pub fn convert(
    ck: &Checkpoint,
    opts: &ConvertOptions,
    out: &Path,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<ConvertReport, ModelError> {
    let src = ck.source();
    let roles = roles(ck);
    let total = roles.len();
    if opts.to == Format::Safetensors && opts.dtype.is_some_and(|d| is_quant(d.ggml())) {
        return Err(ModelError::Invalid(format!(
            "a HuggingFace directory holds f32, f16 or bf16 tensors, not {}",
            opts.dtype.map(OutType::name).unwrap_or("")
        )));
    }
    if opts.to == Format::Bin
        && opts
            .dtype
            .is_some_and(|d| !matches!(d, OutType::F32 | OutType::Int8 | OutType::Q8_0))
    {
        return Err(ModelError::Invalid(
            "a .bin file holds f32 or int8 tensors (--dtype f32 or int8)".into(),
        ));
    }
    let mut report = ConvertReport {
        tensors: total,
        ..ConvertReport::default()
    };
    match opts.to {
        Format::Gguf => {
            let mut w = gguf_out::header(ck, opts.dtype)?;
            for (i, &role) in roles.iter().enumerate() {
                let mut n = neutral(ck, &*src, role)?;
                gguf_out::from_neutral(ck, &mut n);
                let (ty, why) = choose_type(&n, opts.dtype, false);
                report.fallbacks.extend(why);
                let name = role.gguf_name();
                let data = encode(ty, &n.values, &name)?;
                let dims: Vec<u64> = n.dims.iter().map(|&d| d as u64).collect();
                w.tensor(name, ty, &dims, data);
                progress(i + 1, total);
            }
            report.bytes = w
                .write_file(out)
                .map_err(|e| ModelError::Config(format!("cannot write {}: {e}", out.display())))?;
        }
        Format::Safetensors => {
            let mut items = Vec::with_capacity(total);
            for (i, &role) in roles.iter().enumerate() {
                let n = neutral(ck, &*src, role)?;
                let (ty, why) = choose_type(&n, opts.dtype, true);
                report.fallbacks.extend(why);
                items.push((n, ty));
                progress(i + 1, total);
            }
            report.bytes = hf_out::write_dir(ck, &items, out)?;
        }
        Format::Bin => {
            let int8 = matches!(opts.dtype, Some(OutType::Int8 | OutType::Q8_0));
            let mut held = Vec::with_capacity(total);
            for (i, &role) in roles.iter().enumerate() {
                let n = neutral(ck, &*src, role)?;
                let name = hf_out::tensor_name(ck.config.arch, role)?;
                let shape: Vec<usize> = n.dims.iter().rev().copied().collect();
                let ty = if int8 && n.dims.len() >= 2 && n.values.len() % native::GROUP == 0 {
                    NativeType::Int8
                } else {
                    NativeType::F32
                };
                held.push((name, shape, n.values, ty));
                progress(i + 1, total);
            }
            let tensors: Vec<NativeTensor<'_>> = held
                .iter()
                .map(|(name, shape, values, ty)| NativeTensor {
                    name,
                    shape,
                    values,
                    ty: *ty,
                })
                .collect();
            let mut meta = native_metadata(ck, int8);
            // The whole configuration, so that every family survives the trip (the original
            // engine's keys alone describe a Mistral).
            let tied = !roles.contains(&Role::Output);
            meta.insert(
                "config_json".into(),
                hf_out::config_json(ck, "float32", tied)?.to_string(),
            );
            let tok = ck
                .tokenizer_metadata
                .as_ref()
                .map(hf_out::native_tokenizer)
                .transpose()?;
            native::write(out, &meta, tok.as_ref(), &tensors)
                .map_err(|e| ModelError::Config(format!("cannot write {}: {e}", out.display())))?;
            report.bytes = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
        }
    }
    Ok(report)
}

/// The `.bin` header's metadata strings.
fn native_metadata(ck: &Checkpoint, int8: bool) -> BTreeMap<String, String> {
    let c = &ck.config;
    let s = &c.settings;
    let mut m = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        m.insert(k.to_string(), v);
    };
    put("hidden_size", c.n_embd.to_string());
    put("intermediate_size", c.n_ff.to_string());
    put("n_layers", c.n_layers.to_string());
    put("n_heads", c.n_head.to_string());
    put("n_kv_heads", c.n_head_kv.to_string());
    put("vocab_size", c.vocab.to_string());
    put("max_position_embeddings", c.n_ctx_train.to_string());
    put(
        "sliding_window",
        s.window.map_or("None".into(), |w| w.to_string()),
    );
    put("rope_theta", s.rope_base.to_string());
    put("norm_eps", s.norm_eps.to_string());
    let act = match c.arch.info().act {
        crate::parts::Activation::Silu => "silu",
        crate::parts::Activation::GeluTanh => "gelu_tanh",
    };
    put("act_type", act.into());
    put("quant", if int8 { "int8" } else { "f32" }.into());
    m
}
