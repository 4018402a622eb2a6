//! Shared helpers of the end-to-end tests: data paths and the real models (fetched into the
//! user cache on first use, as `torchless` itself does).
#![allow(dead_code)]

use std::path::PathBuf;

pub fn data(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(rel)
}

/// Path of a known model, fetched if needed.
pub fn model(name: &str) -> PathBuf {
    let m = torchless_hub::find(name).unwrap_or_else(|| panic!("unknown model {name}"));
    torchless_hub::ensure(m).unwrap_or_else(|e| panic!("cannot fetch {name}: {e}"))
}

pub fn read_jsonl(rel: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(data(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect()
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

pub fn read_f32(rel: &str) -> Vec<f32> {
    let b = std::fs::read(data(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}
