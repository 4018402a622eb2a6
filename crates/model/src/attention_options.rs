//! The attention settings a session or engine is built with: flash attention or the
//! reference path, the flash tile, and the element types of the KV cache's keys and values
//! (`--flash-attn`, `--flash-tile-size`, `--kv-cache-dtype`, `--cache-type-k/-v`).
//!
//! The numerics policy, spelled out: the reference path computes attention in llama.cpp's
//! order (bit-identical logits); flash attention (tiles, online softmax) gives other bits,
//! equal to the reference within float error, and needs values stored in rows, which it
//! alone reads; quantized keys and values exist only there. So a session settles the path
//! once, when its cache is made: `auto` takes flash attention for contexts longer than
//! [`FLASH_AUTO_CTX`] positions (where the reference path's per-context score rows cost the
//! most) or when a quantized cache asks for it. This module decides; it computes nothing.

use torchless_kernels::flash;

use crate::error::ModelError;
use crate::kv_cache::{KvConfig, KvType};

/// Contexts longer than this take flash attention under [`FlashMode::Auto`].
pub const FLASH_AUTO_CTX: usize = 4096;

/// `--flash-attn`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FlashMode {
    Off,
    On,
    /// Flash attention for long contexts and quantized caches, the reference path otherwise.
    #[default]
    Auto,
}

impl FlashMode {
    pub fn parse(s: &str) -> Option<FlashMode> {
        match s.to_ascii_lowercase().as_str() {
            "off" | "0" | "false" => Some(FlashMode::Off),
            "on" | "1" | "true" => Some(FlashMode::On),
            "auto" => Some(FlashMode::Auto),
            _ => None,
        }
    }
}

/// How attention runs and what the cache stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionOptions {
    pub flash: FlashMode,
    /// Positions per flash attention tile (a power of two from 8 to 256).
    pub flash_tile: usize,
    /// Element types of keys and values (`None`: the model precision's, f16 or f32).
    pub k_type: Option<KvType>,
    pub v_type: Option<KvType>,
}

impl Default for AttentionOptions {
    fn default() -> Self {
        AttentionOptions {
            flash: FlashMode::Auto,
            flash_tile: flash::DEFAULT_TILE,
            k_type: None,
            v_type: None,
        }
    }
}

/// What [`AttentionOptions::resolve`] settles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResolvedAttention {
    /// The flash tile, or `None` for the reference path.
    pub flash_tile: Option<usize>,
    pub k_type: KvType,
    pub v_type: KvType,
}

impl ResolvedAttention {
    /// `cfg` with these types and the value layout the path reads.
    pub fn apply(&self, cfg: KvConfig) -> KvConfig {
        cfg.with_types(self.k_type, self.v_type, self.flash_tile.is_some())
    }
}

impl AttentionOptions {
    /// The path and types for a context of `n_ctx` positions, a head of `head_dim` and the
    /// precision's default type; an error naming the flag where they cannot go together.
    pub fn resolve(
        &self,
        n_ctx: usize,
        head_dim: usize,
        default: KvType,
    ) -> Result<ResolvedAttention, ModelError> {
        let (k, v) = (
            self.k_type.unwrap_or(default),
            self.v_type.unwrap_or(default),
        );
        if !flash::valid_tile(self.flash_tile) {
            return Err(ModelError::Attention(format!(
                "--flash-tile-size {} is not a power of two from 8 to {}",
                self.flash_tile,
                flash::SPLIT
            )));
        }
        // The reference path reads keys and values of one type, f16 or f32; anything else
        // (quantized, or two types) only flash attention reads.
        let quantized = k.is_quantized() || v.is_quantized() || k != v;
        let flash = match self.flash {
            FlashMode::On => true,
            FlashMode::Off if quantized => {
                return Err(ModelError::Attention(format!(
                    "a {}/{} KV cache (keys/values) is read only by flash attention; drop --flash-attn off",
                    k.name(),
                    v.name()
                )))
            }
            FlashMode::Off => false,
            FlashMode::Auto => quantized || n_ctx > FLASH_AUTO_CTX,
        };
        for (what, ty) in [("keys", k), ("values", v)] {
            if ty.is_quantized() && !head_dim.is_multiple_of(32) {
                return Err(ModelError::Attention(format!(
                    "{what} in {} need a head size that is a multiple of 32, and this model's is {head_dim}; use f16",
                    ty.name()
                )));
            }
        }
        Ok(ResolvedAttention {
            flash_tile: flash.then_some(self.flash_tile),
            k_type: k,
            v_type: v,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_takes_flash_for_long_contexts_and_quantized_caches() {
        let o = AttentionOptions::default();
        let r = o.resolve(4096, 64, KvType::F16).unwrap();
        assert_eq!(r.flash_tile, None);
        let r = o.resolve(4097, 64, KvType::F16).unwrap();
        assert_eq!(r.flash_tile, Some(flash::DEFAULT_TILE));
        let q = AttentionOptions {
            v_type: Some(KvType::Q4_0),
            ..o
        };
        let r = q.resolve(512, 64, KvType::F16).unwrap();
        assert_eq!(
            (r.flash_tile, r.k_type, r.v_type),
            (Some(flash::DEFAULT_TILE), KvType::F16, KvType::Q4_0)
        );
        let off = AttentionOptions {
            flash: FlashMode::Off,
            ..q
        };
        let e = off.resolve(512, 64, KvType::F16).unwrap_err().to_string();
        assert!(e.contains("flash attention"), "{e}");
        let mixed = AttentionOptions {
            k_type: Some(KvType::F32),
            v_type: Some(KvType::F16),
            ..o
        };
        assert!(mixed
            .resolve(512, 64, KvType::F16)
            .unwrap()
            .flash_tile
            .is_some());
        let mixed_off = AttentionOptions {
            flash: FlashMode::Off,
            ..mixed
        };
        assert!(mixed_off.resolve(512, 64, KvType::F16).is_err());
        let e = q.resolve(512, 48, KvType::F16).unwrap_err().to_string();
        assert!(e.contains("multiple of 32"), "{e}");
        let bad = AttentionOptions {
            flash_tile: 24,
            ..o
        };
        assert!(bad.resolve(512, 64, KvType::F16).is_err());
    }
}
