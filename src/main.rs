//! `torchless`: the command-line front end. Parses arguments, sets up logging, runs one
//! command and turns any error into one sentence on stderr and a non-zero exit status.
//! The commands live in [`commands`]; everything they do goes through the library crates.

mod commands;
mod options;

use clap::{Parser, Subcommand};

use commands::{
    bench, chat, convert, fetch, generate, info, perplexity, serve, template, tokenize,
};

#[derive(Parser)]
#[command(name = "torchless", version, about = "Run open-weight language models on the CPU.", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt, streaming it as it is produced.
    Generate(generate::Args),
    /// Talk with a model: streamed answers, kept turns, slash commands (/help).
    Chat(chat::Args),
    /// Print the token ids of a text.
    Tokenize(tokenize::Args),
    /// Render a conversation through a chat template and print it exactly.
    Template(template::Args),
    /// Describe a model file: architecture, sizes, tensor types, tokenizer, memory.
    Info(info::Args),
    /// Measure perplexity on a text file, as llama.cpp's perplexity tool does.
    Perplexity(perplexity::Args),
    /// Measure prompt and generation speed (llama-bench style).
    Bench(bench::Args),
    /// Write a model as GGUF, a HuggingFace directory or a `.bin` export.
    Convert(convert::Args),
    /// Serve the model over an OpenAI-compatible HTTP API, many requests at once.
    Serve(serve::Args),
    /// Download a known model into the cache (or list the known models).
    Fetch(fetch::Args),
}

fn main() {
    // Input must never make torchless panic; if a bug does, say so in one line.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        eprintln!("error: internal error ({msg}); please report this as a bug");
    }));
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(a) => generate::run(a),
        Command::Chat(a) => chat::run(a),
        Command::Tokenize(a) => tokenize::run(a),
        Command::Template(a) => template::run(a),
        Command::Info(a) => info::run(a),
        Command::Perplexity(a) => perplexity::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Convert(a) => convert::run(a),
        Command::Fetch(a) => fetch::run(a),
        Command::Serve(a) => serve::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
