//! `torchless perplexity`: perplexity of a model on a text file, llama.cpp's way.

use std::io::Write;

use torchless_model::perplexity::perplexity_with;

use crate::options::{AttentionOpts, CliError, ModelOpts};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelOpts,
    #[command(flatten)]
    pub attention: AttentionOpts,
    /// The text file.
    #[arg(short = 'f', long = "file")]
    pub file: std::path::PathBuf,
    /// Tokens per chunk; the second half of each chunk is scored.
    #[arg(short = 'c', long = "ctx-size", default_value_t = 512)]
    pub ctx: usize,
    /// Tokens per forward pass.
    #[arg(short = 'b', long = "batch-size", default_value_t = 512)]
    pub batch: usize,
}

pub fn run(a: Args) -> Result<(), CliError> {
    let text = std::fs::read_to_string(&a.file).map_err(|source| CliError::Io {
        what: "read",
        path: a.file.display().to_string(),
        source,
    })?;
    let model = a.model.load()?;
    let tokens = model.require_tokenizer()?.encode(&text, true, false)?;
    eprintln!("perplexity: {} tokens, chunks of {}", tokens.len(), a.ctx);
    let start = std::time::Instant::now();
    let att = a.attention.options()?;
    let r = perplexity_with(&model, &tokens, a.ctx, a.batch, att, |done, total, ppl| {
        eprint!("[{done}/{total}] {ppl:.4}  ");
        let _ = std::io::stderr().flush();
    })?;
    eprintln!(
        "\n{} predictions scored in {:.1} s",
        r.scored,
        start.elapsed().as_secs_f64()
    );
    println!("Final estimate: PPL = {:.4} +/- {:.5}", r.ppl, r.ppl_err);
    Ok(())
}
