//! What a client asks of the engine and what it hears back: a [`Request`] (prompt ids,
//! sampling and stopping settings, the channel its results go to) and the [`Event`]s sent on
//! that channel. Holds data only; the engine and the output filter act on it.

use torchless_model::SamplerConfig;

/// How one request samples and when it stops.
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    /// Most tokens to generate (the engine lowers it to what the context leaves).
    pub max_tokens: usize,
    pub sampler: SamplerConfig,
    /// Texts that end the generation where they appear (not sent to the client).
    pub stop: Vec<String>,
    /// Report each chosen token's log-probability and this many most likely alternatives.
    pub logprobs: Option<usize>,
    /// Higher runs first and is preempted last.
    pub priority: i32,
    /// Keep going after an end-of-generation token.
    pub ignore_eos: bool,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            max_tokens: 16,
            sampler: SamplerConfig::greedy(),
            stop: Vec::new(),
            logprobs: None,
            priority: 0,
            ignore_eos: false,
        }
    }
}

/// One request for the engine.
#[derive(Debug)]
pub struct Request {
    /// The caller's name for it (logs).
    pub name: String,
    pub prompt: Vec<u32>,
    pub params: Params,
    /// Where its events go; when the receiving side is dropped the request is cancelled.
    pub events: tokio::sync::mpsc::UnboundedSender<Event>,
    /// Test hook: the request's own output path panics (the engine must fail it alone).
    pub panic_in_output: bool,
}

/// A token's log-probability and the most likely alternatives at its position.
#[derive(Clone, Debug, PartialEq)]
pub struct Logprobs {
    pub token: u32,
    pub logprob: f32,
    /// (token, log-probability), most likely first.
    pub top: Vec<(u32, f32)>,
}

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// An end-of-generation token or a stop text.
    Stop,
    /// The token limit (or the context) was reached.
    Length,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// Counts and times of a finished request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt positions the prefix cache supplied (not computed).
    pub cached_tokens: usize,
    pub preemptions: usize,
    /// Seconds from arrival to the first token, and to the end.
    pub ttft: f64,
    pub total: f64,
}

/// What the engine sends about a request, in order: tokens, then one `Done` or `Error`.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A generated token and the text it releases (empty while a stop text might be starting,
    /// or a character is incomplete; several tokens' text at once afterwards).
    Token {
        id: u32,
        text: String,
        logprobs: Option<Logprobs>,
    },
    Done {
        finish: Finish,
        usage: Usage,
    },
    /// The request failed (the others go on).
    Error(String),
}
