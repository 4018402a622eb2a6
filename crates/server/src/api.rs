//! The request bodies of OpenAI's completions and chat completions APIs, checked and turned
//! into the engine's [`Params`]. Unknown fields are ignored, as OpenAI does; known fields the
//! engine cannot honour yet are refused with a 400 that names them (never ignored silently).

use serde::Deserialize;
use serde_json::Value;

use torchless_engine::Params;
use torchless_model::SamplerConfig;
use torchless_tokenizer::Message;

use crate::error::ApiError;

/// Fields both endpoints share.
#[derive(Debug, Default, Deserialize)]
pub struct Common {
    pub model: Option<String>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub seed: Option<i64>,
    pub stop: Option<Value>,
    pub n: Option<i64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub logit_bias: Option<Value>,
    /// Extensions (llama.cpp's server names).
    pub repeat_penalty: Option<f64>,
    pub repeat_last_n: Option<i64>,
    pub typical_p: Option<f64>,
    pub dry_multiplier: Option<f64>,
    pub dry_base: Option<f64>,
    pub dry_allowed_length: Option<i64>,
    pub user: Option<String>,
    pub priority: Option<i64>,
    #[serde(default)]
    pub ignore_eos: bool,
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// `POST /v1/completions`.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    #[serde(flatten)]
    pub common: Common,
    pub prompt: Option<Value>,
    /// Log-probabilities of the chosen token and this many alternatives (0–20).
    pub logprobs: Option<i64>,
    #[serde(default)]
    pub echo: bool,
    pub suffix: Option<String>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    #[serde(flatten)]
    pub common: Common,
    pub messages: Option<Vec<ChatMessage>>,
    #[serde(default)]
    pub logprobs: bool,
    pub top_logprobs: Option<i64>,
    pub tools: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Value,
}

/// A prompt as the completions API takes it: text or token ids.
pub enum Prompt {
    Text(String),
    Ids(Vec<u32>),
}

/// The one prompt of a completions request (a list of several is refused).
pub fn prompt(v: Option<&Value>) -> Result<Prompt, ApiError> {
    let bad = |m: &str| ApiError::bad_field("prompt", m);
    let ids = |a: &[Value]| -> Option<Vec<u32>> {
        a.iter()
            .map(|x| x.as_u64().and_then(|n| u32::try_from(n).ok()))
            .collect()
    };
    match v {
        None => Err(bad("'prompt' is required")),
        Some(Value::String(s)) => Ok(Prompt::Text(s.clone())),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
            Ok(Prompt::Text(a[0].as_str().unwrap_or_default().to_string()))
        }
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_array() => {
            let inner = a[0].as_array().map(Vec::as_slice).unwrap_or_default();
            ids(inner)
                .map(Prompt::Ids)
                .ok_or_else(|| bad("token ids must be integers from 0 to 2^32-1"))
        }
        Some(Value::Array(a)) if a.iter().all(Value::is_number) && !a.is_empty() => ids(a)
            .map(Prompt::Ids)
            .ok_or_else(|| bad("token ids must be integers from 0 to 2^32-1")),
        Some(Value::Array(a)) if a.len() > 1 => Err(bad(
            "one prompt per request is supported; send several requests",
        )),
        Some(_) => Err(bad("'prompt' must be a string or a list of token ids")),
    }
}

/// The messages of a chat request, content given as a string or a list of text parts.
pub fn messages(msgs: Option<&[ChatMessage]>) -> Result<Vec<Message>, ApiError> {
    let msgs = msgs.ok_or_else(|| ApiError::bad_field("messages", "'messages' is required"))?;
    if msgs.is_empty() {
        return Err(ApiError::bad_field("messages", "'messages' is empty"));
    }
    msgs.iter()
        .enumerate()
        .map(|(i, m)| {
            let content = match &m.content {
                Value::Null => String::new(),
                Value::String(s) => s.clone(),
                Value::Array(parts) => {
                    let mut text = String::new();
                    for p in parts {
                        match (p.get("type").and_then(Value::as_str), p.get("text")) {
                            (Some("text"), Some(Value::String(t))) => text.push_str(t),
                            _ => {
                                return Err(ApiError::bad_field(
                                    &format!("messages[{i}].content"),
                                    "only text content parts are supported",
                                ))
                            }
                        }
                    }
                    text
                }
                _ => {
                    return Err(ApiError::bad_field(
                        &format!("messages[{i}].content"),
                        "content must be a string or a list of parts",
                    ))
                }
            };
            Ok(Message::new(m.role.as_str(), content))
        })
        .collect()
}

fn stops(v: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let bad = || {
        ApiError::bad_field(
            "stop",
            "'stop' must be a string or a list of up to 4 strings",
        )
    };
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(a)) if a.len() <= 4 => a
            .iter()
            .map(|s| s.as_str().map(str::to_string).ok_or_else(bad))
            .collect(),
        _ => Err(bad()),
    }
}

impl Common {
    /// The engine's settings for this request; `default_max` when no limit is given and
    /// `logprobs` as the endpoint read it.
    pub fn params(&self, default_max: usize, logprobs: Option<usize>) -> Result<Params, ApiError> {
        if let Some(n) = self.n.filter(|&n| n != 1) {
            return Err(ApiError::bad_field(
                "n",
                format!("n = {n}: only one choice per request is supported"),
            ));
        }
        for (name, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if v.is_some_and(|v| !(-2.0..=2.0).contains(&v)) {
                return Err(ApiError::bad_field(
                    name,
                    format!("{name} must lie in [-2, 2]"),
                ));
            }
        }
        let logit_bias = logit_bias(self.logit_bias.as_ref())?;
        let max_tokens = match self.max_completion_tokens.or(self.max_tokens) {
            None => default_max,
            Some(n) if n >= 1 => usize::try_from(n).unwrap_or(usize::MAX),
            Some(n) => {
                return Err(ApiError::bad_field(
                    "max_tokens",
                    format!("max_tokens must be at least 1, not {n}"),
                ))
            }
        };
        let temperature = self.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::bad_field(
                "temperature",
                "temperature must lie in [0, 2]",
            ));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::bad_field("top_p", "top_p must lie in (0, 1]"));
        }
        let min_p = self.min_p.unwrap_or(0.0);
        if !(0.0..=1.0).contains(&min_p) {
            return Err(ApiError::bad_field("min_p", "min_p must lie in [0, 1]"));
        }
        let top_k = match self.top_k {
            None => 0,
            Some(k) if k >= -1 => k.max(0) as usize,
            Some(_) => return Err(ApiError::bad_field("top_k", "top_k must be 0 or more")),
        };
        let seed = match self.seed {
            Some(s) => s as u64,
            None => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0),
        };
        let priority = match self.priority {
            None => 0,
            Some(p) => i32::try_from(p)
                .map_err(|_| ApiError::bad_field("priority", "priority is out of range"))?,
        };
        Ok(Params {
            max_tokens,
            sampler: SamplerConfig {
                temperature: temperature as f32,
                top_k,
                top_p: top_p as f32,
                min_p: min_p as f32,
                typical_p: self.typical_p.unwrap_or(1.0) as f32,
                repeat_penalty: self.repeat_penalty.unwrap_or(1.0) as f32,
                penalty_last_n: match self.repeat_last_n {
                    None => 64,
                    Some(n) => usize::try_from(n).map_err(|_| {
                        ApiError::bad_field("repeat_last_n", "repeat_last_n must be 0 or more")
                    })?,
                },
                presence_penalty: self.presence_penalty.unwrap_or(0.0) as f32,
                frequency_penalty: self.frequency_penalty.unwrap_or(0.0) as f32,
                dry_multiplier: self.dry_multiplier.unwrap_or(0.0) as f32,
                dry_base: self.dry_base.unwrap_or(1.75) as f32,
                dry_allowed_length: match self.dry_allowed_length {
                    None => 2,
                    Some(n) if n >= 1 => n as usize,
                    Some(_) => {
                        return Err(ApiError::bad_field(
                            "dry_allowed_length",
                            "dry_allowed_length must be at least 1",
                        ))
                    }
                },
                logit_bias,
                seed,
                ..SamplerConfig::default()
            },
            stop: stops(self.stop.as_ref())?,
            logprobs,
            priority,
            ignore_eos: self.ignore_eos,
        })
    }
}

/// OpenAI's `logit_bias`: token ids (as strings) to biases in [-100, 100]; -100 bans a token.
fn logit_bias(v: Option<&Value>) -> Result<Vec<(u32, f32)>, ApiError> {
    let bad = |why: String| ApiError::bad_field("logit_bias", why);
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let o = v
        .as_object()
        .ok_or_else(|| bad("logit_bias must map token ids to numbers".into()))?;
    o.iter()
        .map(|(k, b)| {
            let id = k
                .parse::<u32>()
                .map_err(|_| bad(format!("'{k}' is not a token id")))?;
            let b = b
                .as_f64()
                .filter(|b| (-100.0..=100.0).contains(b))
                .ok_or_else(|| {
                    bad(format!(
                        "the bias of token {id} must be a number in [-100, 100]"
                    ))
                })?;
            // As OpenAI's: -100 bans the token.
            let b = if b <= -100.0 {
                f32::NEG_INFINITY
            } else {
                b as f32
            };
            Ok((id, b))
        })
        .collect()
}

/// A number of alternatives to report, checked against OpenAI's limit.
pub fn top_count(param: &str, v: Option<i64>) -> Result<usize, ApiError> {
    match v {
        None => Ok(0),
        Some(n) if (0..=20).contains(&n) => Ok(n as usize),
        Some(n) => Err(ApiError::bad_field(
            param,
            format!("{param} must lie in 0..=20, not {n}"),
        )),
    }
}
