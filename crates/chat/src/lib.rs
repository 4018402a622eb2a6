//! The conversation behind `torchless chat`, apart from any terminal.
//!
//! - [`conversation`]: what a conversation holds (system prompt, messages, settings) and its
//!   JSON form for `/save` and `/load`;
//! - [`chat`]: [`Chat`], which owns the model (replaceable while the conversation goes on), its
//!   template and a session whose KV cache is kept between turns, and runs each turn: render,
//!   fit the context (dropping the oldest exchanges), evaluate only what the cache lacks,
//!   stream the answer;
//! - [`thinking`]: splits a streamed answer into its reasoning (`<think>` … `</think>`) and
//!   the reply;
//! - [`command`]: the slash commands, parsed into values with a one-line hint for bad input.
//!
//! Nothing here reads a terminal or prints: the REPL (`torchless chat`) does, through the
//! events a turn reports.

pub mod chat;
pub mod command;
pub mod conversation;
pub mod thinking;

pub use chat::{Chat, ChatError, ChatOptions, Event, TurnStats};
pub use command::Command;
pub use conversation::{Conversation, Settings};
