//! `torchless chat` with the real SmolLM2: the conversation library (turns over a kept cache
//! and the count of tokens each evaluates, retry, undo, overflow, swaps of template, loading
//! mode and model, save and load), and the binary driven through a pseudo-terminal and a pipe.

mod common;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use torchless_chat::{Chat, ChatError, ChatOptions, Event, Settings, TurnStats};
use torchless_model::{LoadOptions, Model, SessionOptions};

fn smollm2() -> PathBuf {
    common::model("smollm2")
}

fn chat_with(n_ctx: usize, max_tokens: usize) -> Chat {
    chat_speculating(n_ctx, max_tokens, None, false)
}

/// A chat, speculating by prompt lookup where `lookup` says, in the batch-invariant numerics
/// where `invariant` says (speculation needs them; the CLI sets them with `--lookup`).
fn chat_speculating(
    n_ctx: usize,
    max_tokens: usize,
    lookup: Option<usize>,
    invariant: bool,
) -> Chat {
    let path = smollm2();
    let load = LoadOptions {
        threads: 2,
        ..LoadOptions::default()
    };
    let model = Model::load(&path, &load).unwrap();
    let opts = ChatOptions {
        session: SessionOptions {
            n_ctx,
            numerics: if invariant {
                torchless_kernels::Numerics::BatchInvariant
            } else {
                torchless_kernels::Numerics::LlamaCpp
            },
            ..SessionOptions::default()
        },
        lookup,
        template: None,
        system: Some("You are a helpful assistant.".into()),
        settings: Settings {
            temperature: 0.0,
            max_tokens,
            ..Settings::default()
        },
    };
    Chat::new(model, path, load, opts).unwrap()
}

/// Sends `text`: the answer, the notices, the stats.
fn say(c: &mut Chat, text: &str) -> Result<(String, Vec<String>, TurnStats), ChatError> {
    let (mut answer, mut notices) = (String::new(), Vec::new());
    let stats = c.send(text, &AtomicBool::new(false), &mut |e| match e {
        Event::Answer(t) | Event::Thinking(t) => answer.push_str(t),
        Event::Notice(n) => notices.push(n),
    })?;
    Ok((answer, notices, stats))
}

fn retry(c: &mut Chat) -> (String, TurnStats) {
    let mut answer = String::new();
    let stats = c
        .retry(&AtomicBool::new(false), &mut |e| {
            if let Event::Answer(t) = e {
                answer.push_str(t)
            }
        })
        .unwrap();
    (answer, stats)
}

/// Speculating by prompt lookup, a greedy chat answers two turns (the second one asking for
/// an edit of the first answer, which lookup drafts well) exactly as without it.
#[test]
fn lookup_speculation_gives_the_same_answers() {
    let turns = [
        "Write a Python function that adds the numbers of a list.",
        "Repeat that function, renamed to total_of.",
    ];
    let mut plain = chat_speculating(1024, 96, None, true);
    let mut fast = chat_speculating(1024, 96, Some(3), true);
    for t in turns {
        let (a, _, _) = say(&mut plain, t).unwrap();
        let (b, _, _) = say(&mut fast, t).unwrap();
        assert_eq!(a, b, "{t}");
        assert!(!a.trim().is_empty());
    }
}

#[test]
fn a_second_turn_evaluates_only_its_new_tokens() {
    let mut c = chat_with(1024, 64);
    let (a1, _, s1) = say(&mut c, "Hi").unwrap();
    assert!(!a1.trim().is_empty());
    assert_eq!((s1.reused, s1.evaluated), (0, s1.prompt_tokens));
    // The cache holds the prompt and the answer but its last token (never evaluated).
    let held = s1.prompt_tokens + s1.generated - 1;
    assert_eq!(c.context().0, held);
    let (_, _, s2) = say(&mut c, "What is the capital of France?").unwrap();
    // Everything the cache held is taken; only the end of the first answer and the new
    // message are evaluated.
    assert_eq!(s2.reused, held);
    assert_eq!(s2.evaluated, s2.prompt_tokens - held);
    assert!(s2.evaluated < 30, "{s2:?}");
    assert_eq!(c.context().0, s2.prompt_tokens + s2.generated - 1);
    assert_eq!(c.conversation().messages.len(), 4);
}

#[test]
fn retry_undo_and_clear() {
    let mut c = chat_with(1024, 48);
    let (a1, _, s1) = say(&mut c, "Name a colour.").unwrap();
    // A new answer to the same message: greedy, so the same text; only the prompt's last
    // token is evaluated again.
    let (again, s) = retry(&mut c);
    assert_eq!(again, a1);
    assert_eq!((s.reused, s.evaluated), (s1.prompt_tokens - 1, 1));
    assert_eq!(c.conversation().messages.len(), 2);
    assert!(c.undo());
    assert!(c.conversation().messages.is_empty());
    assert!(!c.undo());
    let e = c.retry(&AtomicBool::new(false), &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("no message"), "{e}");
    let (a2, _, s2) = say(&mut c, "Name a colour.").unwrap();
    assert_eq!(a2, a1);
    assert_eq!(
        s2.evaluated, 1,
        "the same prompt again: all but its last token cached"
    );
    c.clear();
    assert!(c.conversation().messages.is_empty());
    assert_eq!(
        c.conversation().system.as_deref(),
        Some("You are a helpful assistant.")
    );
}

#[test]
fn a_full_context_drops_old_turns_and_a_huge_message_is_refused() {
    let mut c = chat_with(256, 32);
    let mut dropped = None;
    for i in 0..12 {
        let (_, notices, s) =
            say(&mut c, &format!("Tell me fact number {i} about the sea.")).unwrap();
        if s.dropped > 0 {
            assert_eq!(notices.len(), 1, "{notices:?}");
            assert!(notices[0].starts_with("the context is full"), "{notices:?}");
            dropped = Some(i);
            break;
        }
        assert!(s.context_used <= 256);
    }
    let i = dropped.expect("some exchange was dropped");
    let conv = c.conversation();
    assert_eq!(conv.system.as_deref(), Some("You are a helpful assistant."));
    assert_ne!(
        conv.messages[0].content,
        "Tell me fact number 0 about the sea."
    );
    assert_eq!(conv.messages.last().unwrap().role, "assistant");
    // A message larger than the context: refused, the conversation as it was.
    let before = c.conversation().clone();
    let huge = "word ".repeat(400);
    let e = say(&mut c, &huge).unwrap_err();
    assert!(
        matches!(e, ChatError::MessageTooLong { n_ctx: 256, .. }),
        "{e}"
    );
    assert_eq!(c.conversation(), &before);
    let (a, _, _) = say(&mut c, "Thanks!").unwrap();
    assert!(!a.is_empty(), "the conversation goes on after {i} turns");
}

#[test]
fn template_loading_mode_and_model_swaps_keep_the_conversation() {
    let mut c = chat_with(2048, 32);
    say(&mut c, "Hi").unwrap();
    // Another template: the history is rendered again and the cache rebuilt to match it.
    c.set_template("chatml").unwrap();
    assert_eq!(c.template_name(), Some("chatml"));
    let (_, _, s) = say(&mut c, "How are you?").unwrap();
    assert!(s.reused > 0 && s.evaluated < 20, "{s:?}");
    // Fully loaded weights, then memory-mapped again: the cache is kept, nothing recomputed.
    let held = c.context().0;
    c.set_lazy(false).unwrap();
    assert!(!c.is_lazy());
    assert_eq!(c.context().0, held);
    let (_, _, s) = say(&mut c, "Good.").unwrap();
    assert_eq!(s.reused, held);
    c.set_lazy(true).unwrap();
    assert!(c.is_lazy());
    // Another family (Gemma 3, which ships no template): without one it is refused and the
    // old model stays; with one the whole history is rendered for it.
    let gemma = common::model("gemma-3-270m");
    let e = c.set_model(gemma.clone(), None).unwrap_err();
    assert!(e.to_string().contains("no chat template"), "{e}");
    assert_eq!(c.model_path(), smollm2().as_path());
    let e = c
        .set_model("/nonexistent/model.gguf".into(), None)
        .unwrap_err();
    assert!(e.to_string().starts_with("cannot load model"), "{e}");
    let messages = c.conversation().messages.clone();
    c.set_model(gemma.clone(), Some("gemma".into())).unwrap();
    assert_eq!(c.model_path(), gemma.as_path());
    assert_eq!(c.conversation().messages, messages);
    assert!(
        c.context().0 > 0,
        "the cache holds the history for the new model"
    );
    let (_, _, s) = say(&mut c, "And you?").unwrap();
    assert!(s.reused > 0, "{s:?}");
    c.set_model(smollm2(), None).unwrap();
    assert_eq!(c.conversation().messages.len(), messages.len() + 2);
    let (a, _, _) = say(&mut c, "Bye!").unwrap();
    assert!(!a.is_empty());
}

#[test]
fn a_saved_conversation_loads_into_a_new_chat() {
    let dir = common::temp_dir("chat_save");
    let file = dir.join("talk.json");
    let mut c = chat_with(1024, 24);
    say(&mut c, "Hi").unwrap();
    c.settings_mut().top_k = 7;
    c.save(&file).unwrap();
    let mut d = chat_with(1024, 24);
    let (model, template) = d.load(&file).unwrap();
    assert_eq!(model, Some(smollm2().display().to_string()));
    assert_eq!(template, None);
    assert_eq!(d.conversation(), c.conversation());
    assert_eq!(d.settings().top_k, 7);
    assert!(
        d.context().0 > 0,
        "the cache is rebuilt from the loaded history"
    );
    // A file that is not a conversation leaves the chat as it was.
    std::fs::write(&file, "{}").unwrap();
    assert!(d.load(&file).is_err());
    assert_eq!(d.conversation(), c.conversation());
}

// ---- the binary, through a pseudo-terminal and a pipe ----

use expectrl::{ControlCode, Eof, Expect, Regex};

const STATS: &str = r"\[(\d+) tokens, [\d.]+ tokens/s; prompt (\d+) new \+ (\d+) cached tokens; context (\d+)/(\d+)\]";

fn spawn(args: &[&str]) -> expectrl::session::OsSession {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_torchless"));
    cmd.arg("chat")
        .arg("-m")
        .arg(smollm2())
        .args(["--temp", "0", "--no-history", "-t", "2"])
        .args(args)
        .env("NO_COLOR", "1");
    let mut p = expectrl::Session::spawn(cmd).expect("spawn torchless chat");
    p.set_expect_timeout(Some(Duration::from_secs(120)));
    p
}

/// Sends a line and waits for the answer's stats line and the next prompt; the numbers of
/// the stats line: generated, new, cached, used, total.
fn turn(p: &mut expectrl::session::OsSession, line: &str) -> [usize; 5] {
    p.send_line(line).unwrap();
    let c = p.expect(Regex(STATS)).unwrap();
    let n = |i: usize| -> usize {
        std::str::from_utf8(c.get(i).unwrap())
            .unwrap()
            .parse()
            .unwrap()
    };
    let got = [n(1), n(2), n(3), n(4), n(5)];
    p.expect(">>> ").unwrap();
    got
}

fn command(p: &mut expectrl::session::OsSession, line: &str, reply: &str) {
    p.send_line(line).unwrap();
    p.expect(reply).unwrap_or_else(|e| panic!("{line}: {e}"));
    p.expect(">>> ").unwrap();
}

fn exits_cleanly(p: &mut expectrl::session::OsSession) {
    p.send_line("/exit").unwrap();
    p.expect(Eof).unwrap();
    let status = p.get_process().wait().unwrap();
    assert_eq!(
        format!("{status:?}").rsplit(", ").next(),
        Some("0)"),
        "{status:?}"
    );
}

#[test]
fn the_terminal_chat_keeps_turns_and_runs_its_commands() {
    let dir = common::temp_dir("chat_pty");
    let saved = dir.join("talk.json");
    let mut p = spawn(&["-n", "48", "-c", "2048"]);
    p.expect(">>> ").unwrap();
    let first = turn(&mut p, "Hi");
    assert_eq!(first[2], 0, "nothing cached yet");
    let second = turn(&mut p, "What is the capital of France?");
    assert_eq!(
        second[2],
        first[1] + first[0] - 1,
        "the whole first turn is reused"
    );
    assert!(second[1] < first[1], "{first:?} {second:?}");
    let again = turn(&mut p, "/retry");
    assert_eq!(
        (again[1], again[0]),
        (1, second[0]),
        "same prompt, same greedy answer"
    );
    command(&mut p, "/undo", "the last exchange is dropped");
    command(&mut p, "/context", "context: ");
    command(&mut p, "/temperature warm", "usage: /temperature");
    command(&mut p, "/frobnicate", "unknown command /frobnicate");
    command(&mut p, "/template chatml", "the template is chatml");
    command(&mut p, "/lazy off", "the weights are read into memory");
    let t = turn(&mut p, "Thanks!");
    assert!(t[2] > 0, "the cache survived /lazy off: {t:?}");
    command(&mut p, "/lazy on", "the weights are memory-mapped");
    command(&mut p, "/model gemma-3-270m gemma", "now chatting with");
    let g = turn(&mut p, "Hello there");
    assert!(g[2] > 0, "the history was rebuilt for Gemma: {g:?}");
    command(&mut p, "/model smollm2-135m-instruct", "now chatting with");
    command(&mut p, "/settings", "template the model's own");
    command(&mut p, "/info", "memory          weights");
    command(&mut p, &format!("/save {}", saved.display()), "saved to");
    // Ctrl-C during a long answer stops it, and the prompt comes back.
    command(&mut p, "/clear", "the conversation is cleared");
    p.send_line("/max-tokens 1500").unwrap();
    p.expect(">>> ").unwrap();
    p.send_line("Count from 1 to 500, one number per line.")
        .unwrap();
    p.expect("3. 3").unwrap();
    p.send(ControlCode::EndOfText).unwrap();
    p.expect("[stopped]").unwrap();
    p.expect(">>> ").unwrap();
    command(&mut p, "/context", "context: ");
    exits_cleanly(&mut p);

    // A new process loads the conversation back.
    let mut q = spawn(&["-n", "16", "-c", "2048"]);
    q.expect(">>> ").unwrap();
    q.send_line(format!("/load {}", saved.display())).unwrap();
    q.expect("user: Hi").unwrap();
    q.expect("user: Hello there").unwrap();
    q.expect("loaded ").unwrap();
    q.expect(">>> ").unwrap();
    let t = turn(&mut q, "Bye");
    assert!(t[2] > 0, "the loaded history is cached: {t:?}");
    command(&mut q, "/clear", "the conversation is cleared");
    exits_cleanly(&mut q);
}

#[test]
fn the_terminal_chat_survives_a_full_context() {
    let mut p = spawn(&["-n", "24", "-c", "192"]);
    p.expect(">>> ").unwrap();
    let mut noticed = false;
    for i in 0..12 {
        p.send_line(format!("Tell me fact number {i} about the sea."))
            .unwrap();
        let c = p
            .expect(Regex(&format!(r"(the context is full|{STATS})")))
            .unwrap();
        if c.get(0).unwrap().starts_with(b"the context is full") {
            noticed = true;
            p.expect(Regex(STATS)).unwrap();
            p.expect(">>> ").unwrap();
            break;
        }
        p.expect(">>> ").unwrap();
    }
    assert!(noticed, "old turns were dropped with a notice");
    command(&mut p, &"word ".repeat(300), "error: the message takes");
    turn(&mut p, "Thanks!");
    exits_cleanly(&mut p);
}

#[test]
fn piped_input_is_a_plain_conversation() {
    use std::io::Write;
    // The default model (SmolLM2), as `printf 'Hi\n/exit\n' | torchless chat` runs it.
    smollm2();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_torchless"))
        .arg("chat")
        .args(["--temp", "0", "-n", "24", "-t", "2"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Hi\n/bogus\n/exit\nnever sent\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        stdout.lines().filter(|l| !l.trim().is_empty()).count(),
        1,
        "{stdout}"
    );
    assert!(!stdout.contains(">>>"), "no prompt for scripts: {stdout}");
    assert!(stderr.contains("unknown command /bogus"), "{stderr}");
}
