//! The HTTP handlers: completions and chat completions (whole or streamed as server-sent
//! events), models, health, metrics, tokenize and detokenize. Each turns a body into an
//! engine request and the engine's events into OpenAI's JSON; nothing here computes.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as Sse, KeepAlive};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use torchless_engine::{Event, Finish, Logprobs, Params, Request, Usage};

use crate::api::{self, ChatRequest, Common, CompletionRequest, Prompt};
use crate::error::ApiError;
use crate::AppState;

type Shared = State<Arc<AppState>>;

/// The body as JSON of type `T`, or OpenAI's 400 (413 when it is over the size limit).
fn parse<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|e| ApiError {
        status: e.status(),
        ..ApiError::bad_request(format!("cannot read the request body: {e}"))
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(format!(
            "the request body is not valid JSON for this endpoint: {e}"
        ))
    })
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub async fn health(State(st): Shared) -> Response {
    if st.shutting_down.load(Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "shutting down"})),
        )
            .into_response();
    }
    Json(json!({"status": "ok"})).into_response()
}

pub async fn models(State(st): Shared) -> Response {
    Json(json!({
        "object": "list",
        "data": [{
            "id": st.opts.model_name,
            "object": "model",
            "created": st.created,
            "owned_by": "torchless",
        }],
    }))
    .into_response()
}

pub async fn metrics(State(st): Shared) -> Response {
    let mut text = st.engine.metrics().render();
    text.push_str(&st.render_http_counts());
    ([("content-type", "text/plain; version=0.0.4")], text).into_response()
}

pub async fn tokenize(
    State(st): Shared,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let v: Value = parse(body)?;
    let text = ["content", "text", "prompt"]
        .iter()
        .find_map(|k| v.get(*k).and_then(Value::as_str))
        .ok_or_else(|| ApiError::bad_field("content", "'content' (a string) is required"))?;
    let add_special = v
        .get("add_special")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let tok = st.tokenizer()?;
    let ids = tok
        .encode(text, add_special, true)
        .map_err(|e| ApiError::bad_field("content", e.to_string()))?;
    Ok(Json(json!({ "tokens": ids })).into_response())
}

pub async fn detokenize(
    State(st): Shared,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let v: Value = parse(body)?;
    let ids = v
        .get("tokens")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::bad_field("tokens", "'tokens' (a list of ids) is required"))?;
    let tok = st.tokenizer()?;
    let mut out = Vec::with_capacity(ids.len());
    for x in ids {
        match x.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(id) if (id as usize) < tok.len() => out.push(id),
            _ => {
                return Err(ApiError::bad_field(
                    "tokens",
                    format!("{x} is not a token id of this model's {} tokens", tok.len()),
                ))
            }
        }
    }
    Ok(Json(json!({ "content": tok.decode(&out, false) })).into_response())
}

/// Which endpoint a generation answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Completion,
    Chat,
}

pub async fn completions(
    State(st): Shared,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: CompletionRequest = parse(body)?;
    st.check_model(req.common.model.as_deref())?;
    if req.echo {
        return Err(ApiError::bad_field("echo", "'echo' is not supported yet"));
    }
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::bad_field("suffix", "'suffix' is not supported"));
    }
    let ids = match api::prompt(req.prompt.as_ref())? {
        Prompt::Ids(ids) => ids,
        Prompt::Text(t) => st
            .tokenizer()?
            .encode(&t, true, true)
            .map_err(|e| ApiError::bad_field("prompt", e.to_string()))?,
    };
    let logprobs = match req.logprobs {
        None => None,
        Some(n) => Some(api::top_count("logprobs", Some(n))?),
    };
    let params = req.common.params(16, logprobs)?;
    check_sampler(&st, &params)?;
    run(st, Kind::Completion, &req.common, ids, params).await
}

/// The sampling settings against the model (token ids of `logit_bias`, value ranges).
fn check_sampler(st: &AppState, params: &Params) -> Result<(), ApiError> {
    params
        .sampler
        .check(st.engine.vocab())
        .map_err(|(field, why)| ApiError::bad_field(field, why))
}

pub async fn chat(
    State(st): Shared,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: ChatRequest = parse(body)?;
    st.check_model(req.common.model.as_deref())?;
    if req.tools.as_ref().is_some_and(|t| !t.is_null()) {
        return Err(ApiError::bad_field(
            "tools",
            "tool calling is not supported yet",
        ));
    }
    let msgs = api::messages(req.messages.as_deref())?;
    let ids = st
        .tokenizer()?
        .encode_chat_with(st.opts.chat_template.as_deref(), &msgs)
        .map_err(|e| ApiError::bad_field("messages", e.to_string()))?;
    let top = api::top_count("top_logprobs", req.top_logprobs)?;
    let logprobs = req.logprobs.then_some(top);
    let params = req.common.params(usize::MAX, logprobs)?;
    check_sampler(&st, &params)?;
    run(st, Kind::Chat, &req.common, ids, params).await
}

/// Submits a generation and answers it whole or as a stream.
async fn run(
    st: Arc<AppState>,
    kind: Kind,
    common: &Common,
    prompt: Vec<u32>,
    params: Params,
) -> Result<Response, ApiError> {
    if st.shutting_down.load(Relaxed) {
        return Err(torchless_engine::SubmitError::ShuttingDown.into());
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let n = st.next_id.fetch_add(1, Relaxed);
    let id = match kind {
        Kind::Completion => format!("cmpl-{n}"),
        Kind::Chat => format!("chatcmpl-{n}"),
    };
    let panic_in_output = st.opts.panic_hook && common.user.as_deref() == Some("panic-test");
    st.engine.submit(Request {
        name: id.clone(),
        prompt,
        params,
        events: tx,
        panic_in_output,
    })?;
    let reply = Reply {
        st,
        kind,
        id,
        created: now(),
        text: String::new(),
        logprobs: Vec::new(),
        offset: 0,
    };
    if common.stream {
        let include_usage = common
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage);
        return Ok(stream(reply, rx, include_usage));
    }
    whole(reply, rx).await
}

/// What a reply accumulates.
struct Reply {
    st: Arc<AppState>,
    kind: Kind,
    id: String,
    created: u64,
    text: String,
    logprobs: Vec<Logprobs>,
    /// Characters sent so far (completions' `text_offset`).
    offset: usize,
}

impl Reply {
    fn piece(&self, id: u32) -> (String, Vec<u8>) {
        let bytes = self
            .st
            .model
            .tokenizer()
            .map(|t| t.token_bytes(id, true).to_vec())
            .unwrap_or_default();
        (String::from_utf8_lossy(&bytes).into_owned(), bytes)
    }

    /// OpenAI's `logprobs` object for these tokens (`text_offset` from `start`).
    fn logprobs_json(&self, lps: &[Logprobs], start: usize) -> Value {
        match self.kind {
            Kind::Chat => {
                let content: Vec<Value> = lps
                    .iter()
                    .map(|lp| {
                        let (token, bytes) = self.piece(lp.token);
                        let top: Vec<Value> = lp
                            .top
                            .iter()
                            .map(|&(id, l)| {
                                let (t, b) = self.piece(id);
                                json!({"token": t, "logprob": l, "bytes": b})
                            })
                            .collect();
                        json!({"token": token, "logprob": lp.logprob, "bytes": bytes, "top_logprobs": top})
                    })
                    .collect();
                json!({ "content": content })
            }
            Kind::Completion => {
                let mut offset = start;
                let mut tokens = Vec::new();
                let mut token_lps = Vec::new();
                let mut tops = Vec::new();
                let mut offsets = Vec::new();
                for lp in lps {
                    let (t, _) = self.piece(lp.token);
                    offsets.push(offset);
                    offset += t.chars().count();
                    tokens.push(t);
                    token_lps.push(lp.logprob);
                    let top: serde_json::Map<String, Value> = lp
                        .top
                        .iter()
                        .map(|&(id, l)| (self.piece(id).0, json!(l)))
                        .collect();
                    tops.push(Value::Object(top));
                }
                json!({"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops, "text_offset": offsets})
            }
        }
    }

    fn usage_json(u: &Usage) -> Value {
        json!({
            "prompt_tokens": u.prompt_tokens,
            "completion_tokens": u.completion_tokens,
            "total_tokens": u.prompt_tokens + u.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
        })
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Completion, _) => "text_completion",
        }
    }

    /// One streamed chunk with `text` (and the role, first), its logprobs and finish reason.
    fn chunk(&self, text: &str, lps: Option<Value>, finish: Option<Finish>, first: bool) -> Value {
        let choice = match self.kind {
            Kind::Chat => {
                let mut delta = serde_json::Map::new();
                if first {
                    delta.insert("role".into(), json!("assistant"));
                }
                if first || !text.is_empty() {
                    delta.insert("content".into(), json!(text));
                }
                json!({"index": 0, "delta": delta, "logprobs": lps, "finish_reason": finish.map(Finish::as_str)})
            }
            Kind::Completion => {
                json!({"index": 0, "text": text, "logprobs": lps, "finish_reason": finish.map(Finish::as_str)})
            }
        };
        json!({"id": self.id, "object": self.object(true), "created": self.created, "model": self.st.opts.model_name, "choices": [choice]})
    }
}

/// Waits for the whole generation and answers it in one body.
async fn whole(mut r: Reply, mut rx: UnboundedReceiver<Event>) -> Result<Response, ApiError> {
    while let Some(e) = rx.recv().await {
        match e {
            Event::Token { text, logprobs, .. } => {
                r.text.push_str(&text);
                r.logprobs.extend(logprobs);
            }
            Event::Done { finish, usage } => {
                let lps = (!r.logprobs.is_empty()).then(|| r.logprobs_json(&r.logprobs, 0));
                let choice = match r.kind {
                    Kind::Chat => json!({
                        "index": 0,
                        "message": {"role": "assistant", "content": r.text},
                        "logprobs": lps,
                        "finish_reason": finish.as_str(),
                    }),
                    Kind::Completion => json!({
                        "index": 0,
                        "text": r.text,
                        "logprobs": lps,
                        "finish_reason": finish.as_str(),
                    }),
                };
                let body = json!({
                    "id": r.id,
                    "object": r.object(false),
                    "created": r.created,
                    "model": r.st.opts.model_name,
                    "choices": [choice],
                    "usage": Reply::usage_json(&usage),
                });
                return Ok(Json(body).into_response());
            }
            Event::Error(msg) => return Err(ApiError::internal(msg)),
        }
    }
    Err(ApiError::internal("the engine dropped the request"))
}

/// State of a streamed reply.
struct Streaming {
    r: Reply,
    rx: UnboundedReceiver<Event>,
    pending: VecDeque<String>,
    first: bool,
    include_usage: bool,
    ended: bool,
}

/// Streams the generation as server-sent events ending in `data: [DONE]`. Dropping the
/// stream (the client went away) drops the receiver, which cancels the request.
fn stream(r: Reply, rx: UnboundedReceiver<Event>, include_usage: bool) -> Response {
    let state = Streaming {
        r,
        rx,
        pending: VecDeque::new(),
        first: true,
        include_usage,
        ended: false,
    };
    let events = futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(data) = s.pending.pop_front() {
                return Some((Ok::<_, Infallible>(Sse::default().data(data)), s));
            }
            if s.ended {
                return None;
            }
            match s.rx.recv().await {
                Some(Event::Token { text, logprobs, .. }) => {
                    if text.is_empty() && logprobs.is_none() && !s.first {
                        continue;
                    }
                    let lps = logprobs.map(|lp| {
                        let v = s.r.logprobs_json(std::slice::from_ref(&lp), s.r.offset);
                        v
                    });
                    s.r.offset += text.chars().count();
                    let c = s.r.chunk(&text, lps, None, s.first);
                    s.first = false;
                    s.pending.push_back(c.to_string());
                }
                Some(Event::Done { finish, usage }) => {
                    let mut c = s.r.chunk("", None, Some(finish), s.first);
                    if s.r.kind == Kind::Chat {
                        c["choices"][0]["delta"] = json!({});
                    }
                    s.pending.push_back(c.to_string());
                    if s.include_usage {
                        let u = json!({"id": s.r.id, "object": s.r.object(true), "created": s.r.created, "model": s.r.st.opts.model_name, "choices": [], "usage": Reply::usage_json(&usage)});
                        s.pending.push_back(u.to_string());
                    }
                    s.pending.push_back("[DONE]".into());
                    s.ended = true;
                }
                Some(Event::Error(msg)) => {
                    s.pending.push_back(ApiError::internal(msg).body());
                    s.pending.push_back("[DONE]".into());
                    s.ended = true;
                }
                None => {
                    s.pending
                        .push_back(ApiError::internal("the engine dropped the request").body());
                    s.ended = true;
                }
            }
        }
    });
    axum::response::Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}
