//! torchless-server: the OpenAI-compatible HTTP API in front of the serving engine.
//!
//! - [`api`]: request bodies, checked and turned into engine settings;
//! - [`routes`]: the handlers (completions, chat, models, health, metrics, tokenize);
//! - [`error`]: OpenAI-style error bodies and statuses.
//!
//! [`serve`] runs the router on a listener until a shutdown signal, then lets running
//! requests finish within a grace period. It computes nothing: the engine does.

pub mod api;
pub mod error;
pub mod routes;

use std::collections::BTreeMap;
use std::fmt::Write;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use torchless_engine::Engine;
use torchless_model::Model;
use torchless_tokenizer::Tokenizer;

use crate::error::ApiError;

/// How the server behaves.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// The name `/v1/models` lists and requests may name.
    pub model_name: String,
    /// Bearer key every route but `/health` requires, when set.
    pub api_key: Option<String>,
    /// How long running requests may go on after a shutdown signal.
    pub shutdown_grace: Duration,
    /// Largest request body, in bytes.
    pub body_limit: usize,
    /// Test hook: requests with `"user": "panic-test"` panic in their output path.
    pub panic_hook: bool,
    /// The chat template instead of the model's own (`--template`).
    pub chat_template: Option<Arc<torchless_tokenizer::ChatTemplate>>,
}

/// What every handler shares.
pub struct AppState {
    pub engine: Engine,
    pub model: Arc<Model>,
    pub opts: ServerOptions,
    pub shutting_down: AtomicBool,
    created: u64,
    next_id: AtomicU64,
    /// Responses by HTTP status.
    statuses: Mutex<BTreeMap<u16, u64>>,
}

impl AppState {
    pub fn new(engine: Engine, model: Arc<Model>, opts: ServerOptions) -> Arc<AppState> {
        Arc::new(AppState {
            engine,
            model,
            opts,
            shutting_down: AtomicBool::new(false),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            next_id: AtomicU64::new(0),
            statuses: Mutex::new(BTreeMap::new()),
        })
    }

    fn tokenizer(&self) -> Result<&Tokenizer, ApiError> {
        self.model
            .tokenizer()
            .ok_or_else(|| ApiError::bad_request("this model has no tokenizer; send token ids"))
    }

    /// A request may name the served model or leave it out.
    fn check_model(&self, name: Option<&str>) -> Result<(), ApiError> {
        match name {
            None | Some("") => Ok(()),
            Some(n) if n == self.opts.model_name => Ok(()),
            Some(n) => Err(ApiError::unknown_model(n, &self.opts.model_name)),
        }
    }

    fn count(&self, status: u16) {
        if let Ok(mut m) = self.statuses.lock() {
            *m.entry(status).or_default() += 1;
        }
    }

    fn render_http_counts(&self) -> String {
        let mut out = String::from(
            "# HELP torchless_http_responses_total Responses by HTTP status.\n# TYPE torchless_http_responses_total counter\n",
        );
        if let Ok(m) = self.statuses.lock() {
            for (code, n) in m.iter() {
                let _ = writeln!(out, "torchless_http_responses_total{{code=\"{code}\"}} {n}");
            }
        }
        out
    }
}

/// Refuses requests without the API key (when one is set); `/health` stays open.
async fn auth(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &st.opts.api_key {
        let ok = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|k| k.trim() == key);
        if !ok && req.uri().path() != "/health" {
            st.count(401);
            return ApiError::unauthorized().into_response();
        }
    }
    let r = next.run(req).await;
    st.count(r.status().as_u16());
    r
}

/// The routes.
pub fn router(st: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(routes::health))
        .route("/v1/models", get(routes::models))
        .route("/metrics", get(routes::metrics))
        .route("/tokenize", post(routes::tokenize))
        .route("/detokenize", post(routes::detokenize))
        .route("/v1/completions", post(routes::completions))
        .route("/v1/chat/completions", post(routes::chat))
        .fallback(|req: Request| async move { ApiError::not_found(req.uri().path()) })
        .layer(axum::middleware::from_fn_with_state(st.clone(), auth))
        .layer(DefaultBodyLimit::max(st.opts.body_limit))
        .with_state(st)
}

/// Serves on `listener` until `shutdown` completes; then refuses new requests (503), lets
/// running ones finish for up to the grace period, and returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    st: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let signalled = {
        let st = st.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down: no new requests; running ones may finish");
            st.shutting_down.store(true, Relaxed);
            st.engine.stop_accepting();
            let _ = tx.send(true);
        }
    };
    let grace = st.opts.shutdown_grace;
    let server = axum::serve(listener, router(st.clone())).with_graceful_shutdown(signalled);
    let mut rx2 = rx.clone();
    let deadline = async move {
        let _ = rx2.wait_for(|&v| v).await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        r = server => r,
        _ = deadline => {
            tracing::warn!("the shutdown grace period is over; requests still running are cut off");
            Ok(())
        }
    }
}

/// A future that completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
