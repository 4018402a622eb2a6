//! `torchless info`: what a model file holds and what running it costs.

use std::collections::BTreeMap;
use torchless_model::KvType;

use torchless_model::checkpoint::parse_arch;
use torchless_model::{Arch, Checkpoint, Format, ModelConfig};
use torchless_tokenizer::Tokenizer;

use crate::options::{CliError, ModelOpts};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelOpts,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

/// What `info` reports of a model, whatever its format.
struct Summary {
    format: String,
    file_bytes: u64,
    name: Option<String>,
    meta_arch: String,
    config: Option<ModelConfig>,
    types: BTreeMap<&'static str, (usize, u64, u64)>,
    tokenizer: Option<Tokenizer>,
}

fn summarize(a: &Args, path: &std::path::Path) -> Result<Summary, CliError> {
    let load = |e| CliError::Load {
        path: path.display().to_string(),
        source: e,
    };
    let forced = a.model.format.forced();
    let format = match forced {
        Some(f) => f,
        None => Format::detect(path).map_err(load)?,
    };
    let mut types: BTreeMap<&'static str, (usize, u64, u64)> = BTreeMap::new();
    if format == Format::Gguf {
        // GGUF: described even when its architecture is not one torchless runs.
        let file = torchless_gguf::GgufFile::open(path, torchless_gguf::LoadMode::Mmap)
            .map_err(|e| load(e.into()))?;
        let m = file.metadata();
        let meta_arch = m
            .str("general.architecture")
            .map_err(|e| load(e.into()))?
            .to_string();
        let arch = Arch::from_name(a.model.arch.as_deref().unwrap_or(&meta_arch));
        let config = match arch {
            Some(arch) => Some(ModelConfig::from_gguf(&file, Some(arch)).map_err(load)?),
            None => None,
        };
        for t in file.tensors() {
            let e = types.entry(t.ty.name()).or_default();
            e.0 += 1;
            e.1 += t.n_elements();
            e.2 += t.size;
        }
        return Ok(Summary {
            format: format!("GGUF v{}", file.version()),
            file_bytes: file.file_size(),
            name: m.str("general.name").ok().map(str::to_string),
            meta_arch,
            config,
            types,
            tokenizer: Tokenizer::from_metadata(m).ok(),
        });
    }
    let arch = parse_arch(a.model.arch.as_deref())?;
    let ck =
        Checkpoint::open(path, Some(format), arch, torchless_gguf::LoadMode::Mmap).map_err(load)?;
    for (_, ty, n, bytes) in ck.tensor_list() {
        let e = types.entry(ty.name()).or_default();
        e.0 += 1;
        e.1 += n;
        e.2 += bytes;
    }
    Ok(Summary {
        format: match format {
            Format::Safetensors => "HuggingFace safetensors".into(),
            _ => "torchless .bin".into(),
        },
        file_bytes: ck.file_bytes,
        name: ck.config.name.clone(),
        meta_arch: ck.config.meta_arch.clone(),
        config: Some(ck.config.clone()),
        types,
        tokenizer: ck.tokenizer,
    })
}

pub fn run(a: Args) -> Result<(), CliError> {
    let path = a.model.path()?;
    let Summary {
        format,
        file_bytes,
        name,
        meta_arch,
        config,
        types,
        tokenizer,
    } = summarize(&a, &path)?;
    let arch = config.as_ref().map(|c| c.arch);
    let params: u64 = types.values().map(|v| v.1).sum();
    let weight_bytes: u64 = types.values().map(|v| v.2).sum();
    let kv_f16 = config.as_ref().map(|c| c.kv_bytes(c.n_ctx_train, 2) as u64);
    // The KV cache at the trained context for each element type (keys and values alike);
    // quantized types only where the head size is made of whole blocks of 32.
    let kv_types: Vec<(KvType, u64)> = config
        .as_ref()
        .map(|c| {
            let n = c.kv_elements(c.n_ctx_train);
            KvType::ALL
                .into_iter()
                .filter(|t| !t.is_quantized() || c.head_dim.is_multiple_of(32))
                .map(|t| (t, 2 * t.bytes_for(n) as u64))
                .collect()
        })
        .unwrap_or_default();

    if a.json {
        let j = serde_json::json!({
            "file": path.display().to_string(),
            "file_bytes": file_bytes,
            "format": format,
            "name": name,
            "architecture": meta_arch,
            "supported": arch.is_some(),
            "config": config.as_ref().map(|c| serde_json::json!({
                "layers": c.n_layers, "n_embd": c.n_embd, "n_ff": c.n_ff, "n_head": c.n_head,
                "n_head_kv": c.n_head_kv, "head_dim": c.head_dim, "vocab": c.vocab,
                "context_length": c.n_ctx_train, "norm_eps": c.norm_eps,
                "norm": format!("{:?}", c.plan.norm),
                "ropes": c.plan.ropes.iter().map(|r| serde_json::json!({
                    "base": r.base, "dims": r.dims, "style": format!("{:?}", r.style),
                    "scaling": format!("{:?}", r.scaling),
                })).collect::<Vec<_>>(),
                "sliding_window": c.plan.layers.iter().find_map(|l| l.attention().window),
                "sliding_layers": c.plan.layers.iter().filter(|l| l.attention().window.is_some()).count(),
                "attn_softcap": c.plan.layers.first().and_then(|l| l.attention().softcap),
                "final_softcap": c.plan.final_softcap,
            })),
            "tensors": types.iter().map(|(k, v)| serde_json::json!({"type": k, "count": v.0, "elements": v.1, "bytes": v.2})).collect::<Vec<_>>(),
            "parameters": params,
            "weight_bytes": weight_bytes,
            "kv_cache_bytes_at_context_f16": kv_f16,
            "kv_cache_bytes_at_context": kv_types.iter().map(|(t, b)| (t.name().to_string(), serde_json::json!(b))).collect::<serde_json::Map<_, _>>(),
            "tokenizer": tokenizer.as_ref().map(|t| serde_json::json!({
                "kind": t.describe(), "tokens": t.len(),
                "bos": t.vocab().bos, "eos": t.vocab().eos, "add_bos": t.vocab().add_bos,
                "chat_template": t.chat_template_source().is_some(),
            })),
        });
        println!("{j:#}");
        return Ok(());
    }
    println!(
        "file            {} ({:.1} MiB, {format})",
        path.display(),
        mib(file_bytes),
    );
    if let Some(n) = &name {
        println!("name            {n}");
    }
    match &config {
        Some(c) => {
            println!("architecture    {meta_arch}");
            println!("layers          {}", c.n_layers);
            println!("embedding       {}", c.n_embd);
            println!("feed-forward    {}", c.n_ff);
            println!(
                "heads           {} query, {} key/value, {} wide",
                c.n_head, c.n_head_kv, c.head_dim
            );
            println!("vocabulary      {}", c.vocab);
            println!("context         {} (trained)", c.n_ctx_train);
            for r in &c.plan.ropes {
                println!(
                    "rope            base {}, {} dims, {:?} layout, scaling {:?}",
                    r.base, r.dims, r.style, r.scaling
                );
            }
            let sliding: Vec<usize> = c
                .plan
                .layers
                .iter()
                .filter_map(|l| l.attention().window)
                .collect();
            if let Some(w) = sliding.first() {
                println!(
                    "sliding window  {w} positions on {} of {} layers",
                    sliding.len(),
                    c.n_layers
                );
            }
            if let Some(cap) = c.plan.layers.first().and_then(|l| l.attention().softcap) {
                println!("attn soft-cap   {cap}");
            }
            if let Some(cap) = c.plan.final_softcap {
                println!("final soft-cap  {cap}");
            }
            println!(
                "norm            {:?}, epsilon {:e}",
                c.plan.norm, c.norm_eps
            );
        }
        None => println!(
            "architecture    {meta_arch} (not supported by this build: {})",
            Arch::supported()
        ),
    }
    println!("parameters      {:.1} M", params as f64 / 1e6);
    println!("tensors:");
    for (k, v) in &types {
        println!(
            "  {:<8} {:>4} tensors {:>12} elements {:>9.1} MiB",
            k,
            v.0,
            v.1,
            mib(v.2)
        );
    }
    match &tokenizer {
        Some(t) => {
            let name = |id: Option<u32>| {
                id.and_then(|i| t.token_text(i))
                    .map(|s| format!("{s:?}"))
                    .unwrap_or_else(|| "none".into())
            };
            println!("tokenizer       {}, {} tokens", t.describe(), t.len());
            println!(
                "special         BOS {} (added: {}), EOS {}",
                name(t.vocab().bos),
                t.vocab().add_bos,
                name(t.vocab().eos)
            );
            println!(
                "chat template   {}",
                if t.chat_template_source().is_some() {
                    "present"
                } else {
                    "absent"
                }
            );
        }
        None => println!("tokenizer       none"),
    }
    println!("memory          weights {:.1} MiB", mib(weight_bytes));
    if let Some(c) = &config {
        let per: Vec<String> = kv_types
            .iter()
            .map(|(t, b)| format!("{} {:.1} MiB", t.name(), mib(*b)))
            .collect();
        println!(
            "KV cache        at {} tokens: {} (--kv-cache-dtype)",
            c.n_ctx_train,
            per.join(", ")
        );
    }
    Ok(())
}
