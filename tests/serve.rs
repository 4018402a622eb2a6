//! The server over HTTP on SmolLM2: every endpoint, each error status, stop texts, logprobs,
//! usage, the prefix cache, a request that panics inside, a bounded load test with clients
//! that hang up, and (through the binary) SIGTERM during a stream.

mod common;
#[path = "common/http.rs"]
mod http;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};

use serde_json::json;
use torchless_engine::EngineOptions;
use torchless_model::{LoadOptions, Model};

use http::{get, post, request, server, server_options, text_of};

fn smollm2() -> Arc<Model> {
    static M: OnceLock<Arc<Model>> = OnceLock::new();
    M.get_or_init(|| {
        let opts = LoadOptions {
            threads: 2,
            ..LoadOptions::default()
        };
        Arc::new(Model::load(common::model("smollm2"), &opts).expect("load"))
    })
    .clone()
}

fn engine_opts() -> EngineOptions {
    EngineOptions {
        n_ctx: 512,
        ..EngineOptions::default()
    }
}

#[test]
fn endpoints_answer_as_openai_does() {
    let s = server(smollm2(), engine_opts(), server_options());
    let p = s.port;
    assert_eq!(get(p, "/health").json()["status"], "ok");
    assert_eq!(get(p, "/v1/models").json()["data"][0]["id"], "smollm2");

    // Chat, whole.
    let chat = json!({"model": "smollm2", "messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 12, "temperature": 0});
    let r = post(p, "/v1/chat/completions", &chat);
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    let (text, finish) = text_of(&r);
    assert!(!text.is_empty());
    let u = &v["usage"];
    assert_eq!(
        u["completion_tokens"].as_u64().unwrap() + u["prompt_tokens"].as_u64().unwrap(),
        u["total_tokens"].as_u64().unwrap()
    );
    assert!(u["completion_tokens"].as_u64().unwrap() <= 12);
    assert!(finish == "stop" || (finish == "length" && u["completion_tokens"] == 12));

    // The same, streamed: the same text, role first, usage in the last chunk, [DONE].
    let mut streamed = chat.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let r = post(p, "/v1/chat/completions", &streamed);
    assert!(r
        .header("content-type")
        .unwrap()
        .contains("text/event-stream"));
    let ev = r.events();
    assert_eq!(ev.last().unwrap(), "[DONE]");
    let first: serde_json::Value = serde_json::from_str(&ev[0]).unwrap();
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    let usage: serde_json::Value = serde_json::from_str(&ev[ev.len() - 2]).unwrap();
    assert_eq!(usage["choices"].as_array().unwrap().len(), 0);
    for k in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(usage["usage"][k], u[k], "{k}");
    }
    // The second time the prompt's whole blocks came from the prefix cache.
    assert_eq!(usage["usage"]["prompt_tokens_details"]["cached_tokens"], 32);
    assert_eq!(text_of(&r), (text.clone(), finish.clone()));

    // Completions with logprobs: one entry per token, the chosen one's the best at
    // temperature 0, `top_logprobs` with 2 entries.
    let r = post(
        p,
        "/v1/completions",
        &json!({"prompt": "The capital of France is", "max_tokens": 6, "temperature": 0, "logprobs": 2, "ignore_eos": true}),
    );
    let v = r.json();
    let lp = &v["choices"][0]["logprobs"];
    let toks = lp["tokens"].as_array().unwrap();
    assert_eq!(toks.len(), 6);
    assert_eq!(
        toks.iter().map(|t| t.as_str().unwrap()).collect::<String>(),
        v["choices"][0]["text"].as_str().unwrap()
    );
    for (i, top) in lp["top_logprobs"].as_array().unwrap().iter().enumerate() {
        let top = top.as_object().unwrap();
        assert_eq!(top.len(), 2);
        let best = top
            .values()
            .map(|x| x.as_f64().unwrap())
            .fold(f64::MIN, f64::max);
        assert_eq!(best, lp["token_logprobs"][i].as_f64().unwrap());
        assert!(best <= 0.0);
    }
    // Chat logprobs.
    let mut c = chat.clone();
    c["logprobs"] = json!(true);
    c["top_logprobs"] = json!(3);
    let v = post(p, "/v1/chat/completions", &c).json();
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert!(!content.is_empty());
    assert_eq!(content[0]["top_logprobs"].as_array().unwrap().len(), 3);

    // Stop texts: never sent, finish "stop", matched across tokens.
    let base = json!({"prompt": "Count: 1, 2, 3, 4, 5,", "max_tokens": 24, "temperature": 0, "ignore_eos": true});
    let (full, _) = text_of(&post(p, "/v1/completions", &base));
    let cut = full
        .char_indices()
        .map(|(i, _)| i)
        .find(|&i| i >= 4)
        .unwrap();
    let stop: String = full[cut..].chars().take(3).collect();
    let mut with_stop = base.clone();
    with_stop["stop"] = json!([stop.clone(), "zzzz"]);
    for stream in [false, true] {
        with_stop["stream"] = json!(stream);
        let (t, f) = text_of(&post(p, "/v1/completions", &with_stop));
        assert_eq!(f, "stop", "stream {stream}");
        assert_eq!(
            t,
            full[..full.find(&stop).unwrap()],
            "stream {stream}: stop {stop:?}"
        );
    }

    // Tokenize / detokenize.
    let ids = post(
        p,
        "/tokenize",
        &json!({"content": "Hello world", "add_special": false}),
    )
    .json()["tokens"]
        .clone();
    assert!(!ids.as_array().unwrap().is_empty());
    assert_eq!(
        post(p, "/detokenize", &json!({"tokens": ids})).json()["content"],
        "Hello world"
    );

    // Metrics.
    let m = get(p, "/metrics").body;
    for name in [
        "torchless_requests_total{status=\"ok\"}",
        "torchless_generated_tokens_total",
        "torchless_queue_depth",
        "torchless_running_sequences",
        "torchless_kv_blocks_used",
        "torchless_kv_blocks_free",
        "torchless_prefix_cache_hit_tokens_total",
        "torchless_preemptions_total",
        "torchless_time_to_first_token_seconds_bucket",
        "torchless_inter_token_latency_seconds_count",
        "torchless_http_responses_total{code=\"200\"}",
    ] {
        assert!(m.contains(name), "{name} missing from /metrics");
    }
}

#[test]
fn each_error_has_its_status_and_openai_shape() {
    let mut so = server_options();
    so.api_key = Some("sekrit".into());
    let mut eo = engine_opts();
    eo.n_ctx = 64;
    let s = server(smollm2(), eo, so);
    let p = s.port;
    let auth = [("Authorization", "Bearer sekrit")];
    let call = |path: &str, body: &str| request(p, "POST", path, body, &auth);
    let check = |r: http::Response, status: u16, param: Option<&str>| {
        assert_eq!(r.status, status, "{}", r.body);
        let e = &r.json()["error"];
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
        assert!(e["type"].is_string());
        if let Some(p) = param {
            assert_eq!(e["param"], p, "{e}");
        }
    };
    check(call("/v1/completions", "{not json"), 400, None);
    check(
        call("/v1/completions", r#"{"prompt": "x", "temperature": 7}"#),
        400,
        Some("temperature"),
    );
    check(
        call("/v1/completions", r#"{"prompt": "x", "n": 3}"#),
        400,
        Some("n"),
    );
    check(
        call("/v1/completions", r#"{"prompt": "x", "max_tokens": 0}"#),
        400,
        Some("max_tokens"),
    );
    check(
        call("/v1/chat/completions", r#"{"messages": []}"#),
        400,
        Some("messages"),
    );
    for (body, param) in [
        (
            r#"{"prompt": "x", "presence_penalty": 3}"#,
            "presence_penalty",
        ),
        (
            r#"{"prompt": "x", "logit_bias": {"99999999": 1}}"#,
            "logit_bias",
        ),
        (
            r#"{"prompt": "x", "logit_bias": {"12": 101}}"#,
            "logit_bias",
        ),
        (r#"{"prompt": "x", "logit_bias": {"x": 1}}"#, "logit_bias"),
        (r#"{"prompt": "x", "repeat_penalty": 0}"#, "repeat_penalty"),
        (r#"{"prompt": "x", "typical_p": 2}"#, "typical_p"),
    ] {
        check(call("/v1/completions", body), 400, Some(param));
    }
    check(
        call("/v1/completions", r#"{"prompt": "x", "model": "gpt-9"}"#),
        404,
        Some("model"),
    );
    let long = "word ".repeat(200);
    let r = call("/v1/completions", &json!({"prompt": long}).to_string());
    assert_eq!(r.json()["error"]["code"], "context_length_exceeded");
    check(r, 400, None);
    // The key.
    check(request(p, "GET", "/v1/models", "", &[]), 401, None);
    check(
        request(
            p,
            "GET",
            "/v1/models",
            "",
            &[("Authorization", "Bearer nope")],
        ),
        401,
        None,
    );
    assert_eq!(request(p, "GET", "/health", "", &[]).status, 200);
    assert_eq!(request(p, "GET", "/v1/models", "", &auth).status, 200);
    // Unknown route, oversized body.
    check(request(p, "GET", "/v2/nothing", "", &auth), 404, None);
    let huge = json!({"prompt": "x".repeat(2 << 20)}).to_string();
    let r = call("/v1/completions", &huge);
    assert_eq!(r.status, 413, "{}", r.body);
    // Shutting down: 503, and /health says so.
    s.state.shutting_down.store(true, Relaxed);
    check(call("/v1/completions", r#"{"prompt": "x"}"#), 503, None);
    assert_eq!(request(p, "GET", "/health", "", &[]).status, 503);
}

#[test]
fn logit_bias_and_penalties_shape_the_answer() {
    let s = server(smollm2(), engine_opts(), server_options());
    let ask = |extra: serde_json::Value| {
        let mut body =
            json!({"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let r = post(s.port, "/v1/completions", &body);
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["choices"][0]["text"].as_str().unwrap().to_string()
    };
    let plain = ask(json!({}));
    let tok = smollm2();
    let tok = tok.require_tokenizer().unwrap();
    let first = tok.encode(&plain, false, false).unwrap()[0];
    // Banning the greedy first token (-100, as OpenAI's) makes another one come first.
    let banned = ask(json!({"logit_bias": {first.to_string(): -100}}));
    assert_ne!(
        tok.encode(&banned, false, false).unwrap()[0],
        first,
        "{plain:?} / {banned:?}"
    );
    // A strong repetition penalty changes a greedy answer that repeats its tokens, the same
    // way every time (seeded settings reproduce).
    let pen = json!({"repeat_penalty": 3.0, "frequency_penalty": 1.0, "max_tokens": 24});
    assert_eq!(ask(pen.clone()), ask(pen));
}

#[test]
fn a_full_queue_gives_429_with_retry_after() {
    let mut eo = engine_opts();
    eo.max_queue = 0;
    let s = server(smollm2(), eo, server_options());
    let r = post(s.port, "/v1/completions", &json!({"prompt": "x"}));
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
}

#[test]
fn a_request_that_panics_fails_alone() {
    let s = server(smollm2(), engine_opts(), server_options());
    let p = s.port;
    let body = json!({"prompt": "Once upon a time", "max_tokens": 24, "temperature": 0, "ignore_eos": true});
    let alone = text_of(&post(p, "/v1/completions", &body));
    let (a, b) = std::thread::scope(|sc| {
        let h = sc.spawn(|| {
            let mut bad = body.clone();
            bad["user"] = json!("panic-test");
            post(p, "/v1/completions", &bad)
        });
        let good = post(p, "/v1/completions", &body);
        (h.join().unwrap(), good)
    });
    assert_eq!(a.status, 500, "{}", a.body);
    assert_eq!(a.json()["error"]["type"], "server_error");
    assert_eq!(text_of(&b), alone);
    // And the server goes on.
    assert_eq!(text_of(&post(p, "/v1/completions", &body)), alone);
}

#[test]
fn a_shared_prefix_is_not_computed_again() {
    let model = smollm2();
    let tok = model.tokenizer().unwrap();
    let mut system = String::from("You are a careful assistant. ");
    while tok.encode(&system, true, false).unwrap().len() < 210 {
        system.push_str("Answer briefly, cite facts, and never invent sources. ");
    }
    let ask = |q: &str| json!({"prompt": format!("{system}\nQuestion: {q}\nAnswer:"), "max_tokens": 10, "temperature": 0, "ignore_eos": true});
    let fresh = server(
        model.clone(),
        EngineOptions {
            prefix_cache: false,
            ..engine_opts()
        },
        server_options(),
    );
    let want = text_of(&post(
        fresh.port,
        "/v1/completions",
        &ask("Why is the sea salty?"),
    ));
    let s = server(model, engine_opts(), server_options());
    let first = post(s.port, "/v1/completions", &ask("What is a star?")).json();
    assert_eq!(first["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let r = post(s.port, "/v1/completions", &ask("Why is the sea salty?"));
    let cached = r.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert!(
        cached >= 192,
        "only {cached} prompt positions came from the cache"
    );
    assert_eq!(text_of(&r), want, "the cache changed the output");
    let hits = s.state.engine.metrics().prefix_hit_tokens.load(Relaxed);
    assert_eq!(hits, cached);
}

fn rss_bytes() -> usize {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// 300 requests, 32 at a time, random token limits, one client in ten hanging up mid-stream:
/// every completed result equals the same request's solo result, and afterwards the KV pool
/// is empty and memory back near where it was.
#[test]
fn a_bounded_load_test_loses_and_mixes_up_nothing() {
    let model = smollm2();
    let prompts: Vec<String> = (0..12)
        .map(|i| {
            format!(
                "Story {i}: the {} went to the {} and",
                ["cat", "robot", "king", "river"][i % 4],
                ["market", "moon", "sea"][i % 3]
            )
        })
        .collect();
    let limits = [4usize, 9, 17];
    let body = |i: usize, m: usize, stream: bool| json!({"prompt": prompts[i], "max_tokens": m, "temperature": 0, "ignore_eos": true, "stream": stream});
    let solo = {
        let s = server(model.clone(), engine_opts(), server_options());
        let mut v = Vec::new();
        for i in 0..prompts.len() {
            for &m in &limits {
                v.push((
                    (i, m),
                    text_of(&post(s.port, "/v1/completions", &body(i, m, false))),
                ));
            }
        }
        v
    };
    let solo: std::collections::HashMap<_, _> = solo.into_iter().collect();
    let s = server(model, engine_opts(), server_options());
    let p = s.port;
    // Warm up once, then take the idle footprint.
    text_of(&post(p, "/v1/completions", &body(0, 4, false)));
    let idle = rss_bytes();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let (done, hung_up) = (
        std::sync::atomic::AtomicUsize::new(0),
        std::sync::atomic::AtomicUsize::new(0),
    );
    std::thread::scope(|sc| {
        for _ in 0..32 {
            sc.spawn(|| loop {
                let n = next.fetch_add(1, Relaxed);
                if n >= 300 {
                    break;
                }
                // A fixed pseudo-random choice per request number.
                let h = (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 33;
                let (i, m) = (
                    h as usize % prompts.len(),
                    limits[(h >> 8) as usize % limits.len()],
                );
                let stream = h.is_multiple_of(2);
                if h % 10 == 3 {
                    http::stream_and_hang_up(p, "/v1/completions", &body(i, m, true), 2);
                    hung_up.fetch_add(1, Relaxed);
                    continue;
                }
                let got = text_of(&post(p, "/v1/completions", &body(i, m, stream)));
                assert_eq!(
                    got,
                    solo[&(i, m)],
                    "request {n} (prompt {i}, {m} tokens, stream {stream})"
                );
                done.fetch_add(1, Relaxed);
            });
        }
    });
    assert_eq!(done.load(Relaxed) + hung_up.load(Relaxed), 300);
    assert!(hung_up.load(Relaxed) >= 20);
    let m = s.state.engine.metrics();
    let t0 = std::time::Instant::now();
    while (m.kv_blocks_used.load(Relaxed) > 0 || m.running.load(Relaxed) > 0)
        && t0.elapsed().as_secs() < 20
    {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(
        m.kv_blocks_used.load(Relaxed),
        0,
        "blocks still held after the load"
    );
    assert_eq!(m.running.load(Relaxed), 0);
    assert!(
        m.requests_cancelled.load(Relaxed) >= 1,
        "no hang-up cancelled its request"
    );
    let after = rss_bytes();
    assert!(
        after < idle + (64 << 20),
        "resident memory grew from {} MiB to {} MiB",
        idle >> 20,
        after >> 20
    );
}

/// SIGTERM while a stream runs: the stream finishes, then the process exits 0.
/// `torchless serve` on SmolLM2 (two threads, 512 positions) with `extra` flags, on a free
/// port, once it accepts connections.
fn spawn_serve(extra: &[&str]) -> (std::process::Child, u16) {
    let path = common::model("smollm2");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_torchless"))
        .args([
            "serve",
            "-m",
            path.to_str().unwrap(),
            "-t",
            "2",
            "-c",
            "512",
        ])
        .args(["--port", &port.to_string()])
        .args(extra)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t0.elapsed().as_secs() < 60, "the server did not come up");
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the server exited: {status}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    (child, port)
}

#[test]
fn sigterm_lets_the_stream_finish_then_exits_0() {
    let (mut child, port) = spawn_serve(&[]);
    let pid = child.id().to_string();
    let r = std::thread::scope(|sc| {
        let h = sc.spawn(|| post(port, "/v1/completions", &json!({"prompt": "Once upon a time", "max_tokens": 64, "temperature": 0, "ignore_eos": true, "stream": true})));
        std::thread::sleep(std::time::Duration::from_millis(300));
        let k = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(k.success());
        h.join().unwrap()
    });
    let ev = r.events();
    assert_eq!(ev.last().map(String::as_str), Some("[DONE]"), "{}", r.body);
    let (_, finish) = text_of(&r);
    assert_eq!(finish, "length");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

/// The official `openai` Python client against the binary (TORCHLESS_PYTHON_OPENAI=1, set by
/// `.ci/run` after `pip install openai`; skipped otherwise).
#[test]
fn the_openai_python_client_talks_to_the_server() {
    if std::env::var("TORCHLESS_PYTHON_OPENAI").as_deref() != Ok("1") {
        eprintln!("skipped: set TORCHLESS_PYTHON_OPENAI=1 with the openai package installed");
        return;
    }
    let path = common::model("smollm2");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_torchless"))
        .args([
            "serve",
            "-m",
            path.to_str().unwrap(),
            "-t",
            "2",
            "-c",
            "512",
            "--api-key",
            "k3y",
            "--port",
            &port.to_string(),
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t0.elapsed().as_secs() < 60, "the server did not come up");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = std::process::Command::new("python3")
        .arg(common::data("../scripts/openai_client.py"))
        .args([format!("http://127.0.0.1:{port}/v1"), "k3y".into()])
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A sampled answer of the server is reproduced locally, token for token, by `generate
/// --batch-invariant` with the same prompt, settings and seed.
#[test]
fn generate_batch_invariant_reproduces_a_served_answer() {
    let s = server(smollm2(), engine_opts(), server_options());
    let prompt = "Once upon a time";
    // Other requests alongside do not change it.
    let (served, _) = std::thread::scope(|sc| {
        for i in 0..3 {
            let p = s.port;
            sc.spawn(move || {
                post(
                    p,
                    "/v1/completions",
                    &json!({"prompt": format!("Other request {i}"), "max_tokens": 20}),
                )
            });
        }
        text_of(&post(
            s.port,
            "/v1/completions",
            &json!({"prompt": prompt, "max_tokens": 24, "seed": 11, "temperature": 0.9, "top_k": 40, "top_p": 0.95, "min_p": 0.05, "ignore_eos": true}),
        ))
    });
    let local = generate_locally(
        prompt,
        &[
            "-n",
            "24",
            "--seed",
            "11",
            "--temp",
            "0.9",
            "--top-k",
            "40",
            "--top-p",
            "0.95",
            "--min-p",
            "0.05",
            "--ignore-eos",
        ],
    );
    assert_eq!(local, served);
}

/// What `torchless generate --batch-invariant` prints for `prompt` on SmolLM2 with `extra`
/// flags (two threads), without the final newline.
fn generate_locally(prompt: &str, extra: &[&str]) -> String {
    let path = common::model("smollm2");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_torchless"))
        .args([
            "generate",
            "-m",
            path.to_str().unwrap(),
            "-t",
            "2",
            "-p",
            prompt,
        ])
        .args(["--batch-invariant"])
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success());
    let local = String::from_utf8(out.stdout).unwrap();
    local.strip_suffix('\n').unwrap_or(&local).to_string()
}

#[test]
fn a_template_given_to_the_server_renders_the_chat() {
    let chat = json!({"messages": [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "Name a colour."}], "max_tokens": 8, "temperature": 0});
    let answer = |template: Option<&str>| {
        let mut so = server_options();
        so.chat_template = template.map(|t| {
            Arc::new(
                smollm2()
                    .require_tokenizer()
                    .unwrap()
                    .template_named(t)
                    .unwrap(),
            )
        });
        let s = server(smollm2(), engine_opts(), so);
        let v = post(s.port, "/v1/chat/completions", &chat).json();
        (
            v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_string(),
            v["usage"]["prompt_tokens"].as_u64().unwrap(),
        )
    };
    // SmolLM2's own template writes exactly ChatML when a system message is given.
    let own = answer(None);
    assert_eq!(answer(Some("chatml")), own);
    // Llama 3's headers are other tokens: another prompt.
    assert_ne!(answer(Some("llama3")).1, own.1);
}

/// `serve --draft-model`: a greedy answer is the plain greedy answer (`generate
/// --batch-invariant`), drafts were made and kept; a draft of another vocabulary is refused in
/// one sentence.
#[test]
fn a_served_draft_model_leaves_the_answer_as_it_was() {
    let path = common::model("smollm2");
    let (mut child, port) = spawn_serve(&["--draft-model", path.to_str().unwrap()]);
    let prompt = "def fibonacci(n):";
    let served = post(
        port,
        "/v1/completions",
        &json!({"prompt": prompt, "max_tokens": 32, "temperature": 0, "ignore_eos": true}),
    );
    let (served, _) = text_of(&served);
    let metrics = get(port, "/metrics").body;
    child.kill().unwrap();
    child.wait().unwrap();
    let count = |name: &str| -> u64 {
        (metrics.lines())
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from {metrics}"))
    };
    let drafted = count("torchless_speculative_drafted_tokens_total");
    let accepted = count("torchless_speculative_accepted_tokens_total");
    assert!(
        accepted > 0 && drafted >= accepted,
        "{accepted} of {drafted} accepted"
    );
    let local = generate_locally(prompt, &["-n", "32", "--temp", "0", "--ignore-eos"]);
    assert_eq!(local, served);

    let gemma = common::model("gemma-3-270m");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_torchless"))
        .args(["serve", "-m", path.to_str().unwrap(), "--port", "0"])
        .args(["--draft-model", gemma.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains("vocabular"),
        "{err}"
    );
}
