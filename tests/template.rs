//! `torchless template` from outside: the real models' templates reproduce the renderings of
//! transformers byte for byte (`tests/data/tokenizers/*/tokenizer_info.json`, and a tool-calling
//! conversation rendered by Jinja2 configured as transformers configures it), and templates that
//! raise or are missing give one clear error line.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

fn torchless(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_torchless"))
        .args(args)
        .output()
        .expect("run torchless")
}

fn data(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(rel)
}

fn json(path: &PathBuf) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Writes `v` to a fresh file in the temp directory and returns its path.
fn temp_json(name: &str, v: &serde_json::Value) -> PathBuf {
    let p = std::env::temp_dir().join(format!("torchless-template-{}-{name}", std::process::id()));
    std::fs::write(&p, serde_json::to_string(v).unwrap()).unwrap();
    p
}

fn stdout_of(out: &Output) -> String {
    assert!(
        out.status.success(),
        "torchless template failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn one_error_line(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: ") && !err.contains("panicked"),
        "{err}"
    );
    err
}

#[test]
fn the_models_templates_reproduce_transformers_renderings() {
    for (dir, model) in [
        ("smollm2-135m-instruct", "smollm2"),
        ("qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-0.5b-instruct"),
    ] {
        let info = json(&data(&format!("tokenizers/{dir}/tokenizer_info.json")));
        let ex = &info["chat_template_rendered_example"];
        let msgs = temp_json(&format!("{dir}.json"), &ex["messages"]);
        let want = ex["text"].as_str().unwrap();
        let path = common::model(model);
        // The template inside the GGUF file, with the model's BOS/EOS texts.
        let out = torchless(&[
            "template",
            "-m",
            path.to_str().unwrap(),
            "--messages",
            msgs.to_str().unwrap(),
        ]);
        assert_eq!(stdout_of(&out), want, "{dir}: GGUF template");
        // The same template from its file.
        let file = data(&format!("tokenizers/{dir}/chat_template.jinja"));
        let out = torchless(&[
            "template",
            "--template-file",
            file.to_str().unwrap(),
            "--messages",
            msgs.to_str().unwrap(),
        ]);
        assert_eq!(stdout_of(&out), want, "{dir}: template file");
    }
}

#[test]
fn tools_and_tool_calls_render_as_transformers_renders_them() {
    let case = json(&data(
        "tokenizers/qwen2.5-coder-0.5b-instruct/tools_example.json",
    ));
    let want = case["text"].as_str().unwrap();
    let file = data("tokenizers/qwen2.5-coder-0.5b-instruct/chat_template.jinja");
    // Tools given inside the messages document…
    let doc = temp_json("tools-doc.json", &case);
    let base = ["template", "--template-file", file.to_str().unwrap()];
    let out = torchless(
        &[
            &base[..],
            &[
                "--messages",
                doc.to_str().unwrap(),
                "--eos",
                "<|endoftext|>",
            ],
        ]
        .concat(),
    );
    assert_eq!(stdout_of(&out), want);
    // …or in their own file.
    let msgs = temp_json("tools-msgs.json", &case["messages"]);
    let tools = temp_json("tools.json", &case["tools"]);
    let out = torchless(
        &[
            &base[..],
            &[
                "--messages",
                msgs.to_str().unwrap(),
                "--tools",
                tools.to_str().unwrap(),
            ],
        ]
        .concat(),
    );
    assert_eq!(stdout_of(&out), want);
    // Without the generation prompt the rendering stops after the last message.
    let out = torchless(
        &[
            &base[..],
            &[
                "--messages",
                doc.to_str().unwrap(),
                "--no-generation-prompt",
            ],
        ]
        .concat(),
    );
    assert_eq!(
        stdout_of(&out),
        want.strip_suffix("<|im_start|>assistant\n").unwrap()
    );
}

#[test]
fn builtin_templates_variables_and_errors() {
    let msgs = temp_json(
        "plain.json",
        &serde_json::json!([{"role": "user", "content": "Hi"}]),
    );
    let m = msgs.to_str().unwrap();
    let out = torchless(&["template", "--template", "chatml", "--messages", m]);
    assert_eq!(
        stdout_of(&out),
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    let out = torchless(&[
        "template",
        "--template",
        "gemma",
        "--bos",
        "<bos>",
        "--messages",
        m,
    ]);
    assert_eq!(
        stdout_of(&out),
        "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    );
    // A template that raises on purpose: its own message, exit 1.
    let dir = std::env::temp_dir();
    let raising = dir.join(format!("torchless-raise-{}.jinja", std::process::id()));
    std::fs::write(
        &raising,
        "{% if messages[0].role != 'system' %}{{ raise_exception('Conversations must start with a system message, not ' + messages[0].role) }}{% endif %}",
    )
    .unwrap();
    let out = torchless(&[
        "template",
        "--template-file",
        raising.to_str().unwrap(),
        "--messages",
        m,
    ]);
    let err = one_error_line(&out);
    assert!(
        err.contains("Conversations must start with a system message, not user"),
        "{err}"
    );
    // Keyword variables (JSON values, else text).
    let vars = dir.join(format!("torchless-vars-{}.jinja", std::process::id()));
    std::fs::write(&vars, "{{ enable_thinking }} {{ day }} {{ n + 1 }}").unwrap();
    let out = torchless(&[
        "template",
        "--template-file",
        vars.to_str().unwrap(),
        "--messages",
        m,
        "--var",
        "enable_thinking=false",
        "--var",
        "day=Monday",
        "--var",
        "n=41",
    ]);
    // Python prints booleans as True/False, and so do templates here.
    assert_eq!(stdout_of(&out), "False Monday 42");
    // Unknown built-in names the choices; a syntax error says where.
    let err = one_error_line(&torchless(&[
        "template",
        "--template",
        "vicuna",
        "--messages",
        m,
    ]));
    assert!(
        err.contains("chatml, llama2, llama3, mistral, phi3, gemma"),
        "{err}"
    );
    std::fs::write(&vars, "{% for %}").unwrap();
    let err = one_error_line(&torchless(&[
        "template",
        "--template-file",
        vars.to_str().unwrap(),
        "--messages",
        m,
    ]));
    assert!(err.contains("syntax error"), "{err}");
}

#[test]
fn a_model_without_a_template_names_the_choices() {
    let path = common::model("gemma-3-270m");
    let msgs = temp_json(
        "gemma.json",
        &serde_json::json!([{"role": "user", "content": "Hi"}]),
    );
    let err = one_error_line(&torchless(&[
        "template",
        "-m",
        path.to_str().unwrap(),
        "--messages",
        msgs.to_str().unwrap(),
    ]));
    assert!(
        err.contains("--template") && err.contains("chatml"),
        "{err}"
    );
}
