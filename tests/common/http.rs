//! A minimal HTTP/1.1 client for the server tests (one request per connection), and an
//! in-process server on a free loopback port.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use torchless_engine::{Engine, EngineOptions};
use torchless_model::Model;
use torchless_server::{AppState, ServerOptions};

/// A response: status, headers (lower-case names) and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `data:` payloads of a server-sent-event body.
    pub fn events(&self) -> Vec<String> {
        self.body
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(str::to_string)
            .collect()
    }
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(300))).ok();
    s
}

fn send(s: &mut TcpStream, method: &str, path: &str, body: &str, headers: &[(&str, &str)]) {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).expect("send");
}

fn read_head(r: &mut BufReader<TcpStream>) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).expect("header");
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    (status, headers)
}

/// Reads a body in the chunked transfer coding, or up to the end of the connection.
fn read_body(r: &mut BufReader<TcpStream>, chunked: bool) -> String {
    let mut out = Vec::new();
    if !chunked {
        r.read_to_end(&mut out).ok();
        return String::from_utf8_lossy(&out).into_owned();
    }
    loop {
        let mut size = String::new();
        if r.read_line(&mut size).unwrap_or(0) == 0 {
            break;
        }
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        let mut buf = vec![0; n + 2];
        if r.read_exact(&mut buf).is_err() {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn request(
    port: u16,
    method: &str,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> Response {
    let mut s = connect(port);
    send(&mut s, method, path, body, headers);
    let mut r = BufReader::new(s);
    let (status, headers) = read_head(&mut r);
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = read_body(&mut r, chunked);
    Response {
        status,
        headers,
        body,
    }
}

pub fn post(port: u16, path: &str, body: &serde_json::Value) -> Response {
    request(port, "POST", path, &body.to_string(), &[])
}

pub fn get(port: u16, path: &str) -> Response {
    request(port, "GET", path, "", &[])
}

/// Starts a streamed request and reads until `events` `data:` lines have arrived, then drops
/// the connection (a client going away mid-stream).
pub fn stream_and_hang_up(port: u16, path: &str, body: &serde_json::Value, events: usize) {
    let mut s = connect(port);
    send(&mut s, "POST", path, &body.to_string(), &[]);
    let mut r = BufReader::new(s);
    let _ = read_head(&mut r);
    let mut seen = 0;
    let mut line = String::new();
    while seen < events {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        if line.starts_with("data: ") {
            seen += 1;
        }
    }
}

/// The text and finish reason of a completions or chat body (whole or streamed).
pub fn text_of(r: &Response) -> (String, String) {
    assert_eq!(r.status, 200, "{}", r.body);
    let mut text = String::new();
    let mut finish = String::new();
    let bodies: Vec<serde_json::Value> = if r
        .header("content-type")
        .is_some_and(|c| c.contains("event-stream"))
    {
        r.events()
            .iter()
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    } else {
        vec![r.json()]
    };
    for b in bodies {
        for c in b["choices"].as_array().into_iter().flatten() {
            for t in [&c["text"], &c["delta"]["content"], &c["message"]["content"]] {
                if let Some(s) = t.as_str() {
                    text.push_str(s);
                }
            }
            if let Some(f) = c["finish_reason"].as_str() {
                finish = f.to_string();
            }
        }
    }
    (text, finish)
}

/// A server on a free port, its state, and the runtime that runs it.
pub struct Server {
    pub port: u16,
    pub state: Arc<AppState>,
    _rt: tokio::runtime::Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

pub fn server(model: Arc<Model>, eo: EngineOptions, so: ServerOptions) -> Server {
    let engine = Engine::start(model.clone(), eo).expect("engine");
    let state = AppState::new(engine, model, so);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let st = state.clone();
    rt.spawn(async move {
        let _ = torchless_server::serve(listener, st, async {
            let _ = rx.await;
        })
        .await;
    });
    Server {
        port,
        state,
        _rt: rt,
        stop: Some(tx),
    }
}

pub fn server_options() -> ServerOptions {
    ServerOptions {
        model_name: "smollm2".into(),
        api_key: None,
        shutdown_grace: Duration::from_secs(5),
        body_limit: 1 << 20,
        panic_hook: true,
        chat_template: None,
    }
}
