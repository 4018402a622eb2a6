//! `torchless convert`: a model written as GGUF, a HuggingFace directory or a `.bin` export,
//! with a progress bar.

use std::path::PathBuf;

use torchless_gguf::LoadMode;
use torchless_model::checkpoint::parse_arch;
use torchless_model::convert::{convert, ConvertOptions, OutType};
use torchless_model::{Checkpoint, Format};

use crate::options::{CliError, ModelOpts};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelOpts,
    /// Output format: gguf, safetensors (a HuggingFace directory) or bin.
    #[arg(long = "to")]
    pub to: String,
    /// Element type of the matrices: f32, f16, bf16, q8_0, q4_0, q4_k (GGUF), int8 (bin).
    /// Default: the source's float type (f16 for quantized sources; f32 for bin).
    #[arg(long)]
    pub dtype: Option<String>,
    /// The output file (a directory for safetensors).
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
}

pub fn run(a: Args) -> Result<(), CliError> {
    let to = Format::from_name(&a.to).ok_or_else(|| {
        CliError::Usage(format!("--to {}: expected gguf, safetensors or bin", a.to))
    })?;
    let dtype = a
        .dtype
        .as_deref()
        .map(|d| {
            OutType::from_name(d).ok_or_else(|| {
                CliError::Usage(format!(
                    "--dtype {d}: expected f32, f16, bf16, q8_0, q4_0, q4_k or int8"
                ))
            })
        })
        .transpose()?;
    let path = a.model.path()?;
    let arch = parse_arch(a.model.arch.as_deref())?;
    let mode = if a.model.no_mmap {
        LoadMode::Read
    } else {
        LoadMode::Mmap
    };
    let ck = Checkpoint::open(&path, a.model.format.forced(), arch, mode).map_err(|source| {
        CliError::Load {
            path: path.display().to_string(),
            source,
        }
    })?;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} tensors {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let report = convert(
        &ck,
        &ConvertOptions { to, dtype },
        &a.output,
        &mut |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    )
    .map_err(|source| CliError::Load {
        path: path.display().to_string(),
        source,
    })?;
    bar.finish_and_clear();
    for f in &report.fallbacks {
        eprintln!("note: {f}");
    }
    eprintln!(
        "wrote {} ({} tensors, {:.1} MiB, {})",
        a.output.display(),
        report.tensors,
        report.bytes as f64 / (1 << 20) as f64,
        to.name()
    );
    Ok(())
}
