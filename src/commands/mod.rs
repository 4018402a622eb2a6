//! One module per subcommand. Each has an `Args` (clap) and a `run` that returns a
//! [`crate::options::CliError`] rather than printing errors itself.

pub mod bench;
pub mod chat;
pub mod convert;
pub mod fetch;
pub mod generate;
pub mod info;
pub mod perplexity;
pub mod serve;
pub mod template;
pub mod tokenize;
