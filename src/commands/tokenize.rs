//! `torchless tokenize`: the token ids of a text (and their pieces with --json).

use torchless_tokenizer::Tokenizer;

use torchless_gguf::LoadMode;
use torchless_model::checkpoint::parse_arch;
use torchless_model::{Checkpoint, Format};

use crate::options::{CliError, ModelOpts};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelOpts,
    /// Recognise special-token texts such as <|im_start|> as their ids.
    #[arg(long)]
    pub special: bool,
    /// Do not add the BOS token even if the model asks for it.
    #[arg(long)]
    pub no_bos: bool,
    /// Print {"ids": [...], "pieces": [...]}.
    #[arg(long)]
    pub json: bool,
    /// The text.
    pub text: String,
}

/// The tokenizer of `model`, read from its metadata alone (no weights are touched).
pub fn load_tokenizer(model: &ModelOpts) -> Result<Tokenizer, CliError> {
    let path = model.path()?;
    let load = |e| CliError::Load {
        path: path.display().to_string(),
        source: e,
    };
    let format = match model.format.forced() {
        Some(f) => f,
        None => Format::detect(&path).map_err(load)?,
    };
    if format == Format::Gguf {
        let (_, file) = model.open_file()?;
        Tokenizer::from_metadata(file.metadata()).map_err(|e| load(e.into()))
    } else {
        // A directory's or export's tokenizer (the tensors are only mapped, not read).
        let arch = parse_arch(model.arch.as_deref())?;
        Checkpoint::open(&path, Some(format), arch, LoadMode::Mmap)
            .map_err(load)?
            .tokenizer
            .ok_or_else(|| load(torchless_tokenizer::TokenizerError::Missing.into()))
    }
}

pub fn run(a: Args) -> Result<(), CliError> {
    let tok = load_tokenizer(&a.model)?;
    let ids = tok.encode(&a.text, !a.no_bos, a.special)?;
    if a.json {
        let pieces: Vec<String> = ids
            .iter()
            .map(|&i| String::from_utf8_lossy(tok.token_bytes(i, true)).into_owned())
            .collect();
        println!("{}", serde_json::json!({ "ids": ids, "pieces": pieces }));
    } else {
        println!(
            "{}",
            ids.iter().map(u32::to_string).collect::<Vec<_>>().join(" ")
        );
    }
    Ok(())
}
