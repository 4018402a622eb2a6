//! The slash commands of `torchless chat`, parsed from a line into a value; bad input gets a
//! one-line hint naming the right form. Running them is the REPL's and [`crate::Chat`]'s.

use std::path::PathBuf;

/// A slash command.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    Help,
    Exit,
    Clear,
    System(String),
    Temperature(f32),
    TopK(usize),
    TopP(f32),
    MinP(f32),
    TypicalP(f32),
    RepeatPenalty(f32),
    PresencePenalty(f32),
    FrequencyPenalty(f32),
    Dry(f32),
    /// A bias for a token, or `None`: clear every bias.
    LogitBias(Option<(u32, f32)>),
    MaxTokens(usize),
    Seed(u64),
    Settings,
    Context,
    Stats,
    Retry,
    Undo,
    Save(PathBuf),
    Load(PathBuf),
    Info,
    Thinking(bool),
    Lazy(bool),
    /// A model file or known name, and optionally the template to use with it.
    Model {
        model: String,
        template: Option<String>,
    },
    Template(String),
}

/// Each command's form and what it does, as `/help` shows them.
pub const HELP: &[(&str, &str)] = &[
    ("/help", "this list"),
    ("/exit", "leave (Ctrl-D too)"),
    (
        "/clear",
        "forget the conversation (the system prompt stays)",
    ),
    ("/system TEXT", "set the system prompt"),
    (
        "/temperature X",
        "sampling temperature (0: always the most likely token)",
    ),
    ("/top-k N", "keep the N most likely tokens (0: all)"),
    (
        "/top-p X",
        "keep the most likely tokens up to probability X",
    ),
    (
        "/min-p X",
        "drop tokens less likely than X times the most likely",
    ),
    ("/typical-p X", "locally typical sampling (1: off)"),
    (
        "/repeat-penalty X",
        "divide the logits of recent tokens (1: off)",
    ),
    ("/presence-penalty X", "lower recent tokens once (0: off)"),
    (
        "/frequency-penalty X",
        "lower recent tokens per occurrence (0: off)",
    ),
    ("/dry X", "penalize extending repeated sequences (0: off)"),
    (
        "/logit-bias ID BIAS|clear",
        "add BIAS to a token's logit (-inf bans it)",
    ),
    ("/max-tokens N", "most tokens of one answer"),
    ("/seed N", "seed of the next answer"),
    ("/settings", "show the settings"),
    ("/context", "tokens used of the context"),
    (
        "/stats",
        "speed and tokens of the last answer and of the session",
    ),
    ("/retry", "a new answer to the last message"),
    ("/undo", "drop the last exchange"),
    ("/save FILE", "save the conversation and settings as JSON"),
    ("/load FILE", "load a saved conversation"),
    ("/info", "describe the model"),
    (
        "/thinking on|off",
        "show or hide the reasoning of thinking models",
    ),
    (
        "/lazy on|off",
        "memory-mapped (on) or fully loaded (off) weights",
    ),
    (
        "/model PATH|NAME [TEMPLATE]",
        "switch to another model, keeping the conversation",
    ),
    ("/template NAME|FILE", "switch the chat template"),
];

/// `Ok(None)` for a line that is no command (a message), a command, or a hint.
pub fn parse(line: &str) -> Result<Option<Command>, String> {
    let line = line.trim();
    let Some(rest) = line.strip_prefix('/') else {
        return Ok(None);
    };
    let (name, arg) = match rest.split_once(char::is_whitespace) {
        Some((n, a)) => (n, a.trim()),
        None => (rest, ""),
    };
    let usage = |form: &str| format!("usage: {form}");
    let number = |form: &str, ok: &dyn Fn(f32) -> bool| -> Result<f32, String> {
        arg.parse::<f32>()
            .ok()
            .filter(|x| x.is_finite() && ok(*x))
            .ok_or_else(|| usage(form))
    };
    let count = |form: &str| arg.parse::<usize>().map_err(|_| usage(form));
    let switch = |form: &str| match arg {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(usage(form)),
    };
    let none = |c: Command| {
        if arg.is_empty() {
            Ok(c)
        } else {
            Err(format!("/{name} takes no argument"))
        }
    };
    let text = |form: &str| {
        if arg.is_empty() {
            Err(usage(form))
        } else {
            Ok(arg.to_string())
        }
    };
    let cmd = match name {
        "help" | "?" => none(Command::Help),
        "exit" | "quit" | "bye" => none(Command::Exit),
        "clear" => none(Command::Clear),
        "system" => text("/system TEXT").map(Command::System),
        "temperature" | "temp" => {
            number("/temperature X (X >= 0)", &|x| x >= 0.0).map(Command::Temperature)
        }
        "top-k" => count("/top-k N").map(Command::TopK),
        "top-p" => number("/top-p X (0 < X <= 1)", &|x| x > 0.0 && x <= 1.0).map(Command::TopP),
        "min-p" => {
            number("/min-p X (0 <= X <= 1)", &|x| (0.0..=1.0).contains(&x)).map(Command::MinP)
        }
        "typical-p" => number("/typical-p X (0 <= X <= 1)", &|x| (0.0..=1.0).contains(&x))
            .map(Command::TypicalP),
        "repeat-penalty" => {
            number("/repeat-penalty X (X > 0)", &|x| x > 0.0).map(Command::RepeatPenalty)
        }
        "presence-penalty" => {
            number("/presence-penalty X", &|_| true).map(Command::PresencePenalty)
        }
        "frequency-penalty" => {
            number("/frequency-penalty X", &|_| true).map(Command::FrequencyPenalty)
        }
        "dry" => number("/dry X (X >= 0)", &|x| x >= 0.0).map(Command::Dry),
        "logit-bias" => {
            let form = "/logit-bias ID BIAS|clear";
            let mut w = arg.split_whitespace();
            match (w.next(), w.next(), w.next()) {
                (Some("clear"), None, None) => Ok(Command::LogitBias(None)),
                (Some(id), Some(b), None) => match (id.parse::<u32>(), b.parse::<f32>()) {
                    // A ban is kept as -1e30 (JSON has no -inf for /save).
                    (Ok(id), Ok(b)) if !b.is_nan() && b != f32::INFINITY => {
                        Ok(Command::LogitBias(Some((id, b.max(-1e30)))))
                    }
                    _ => Err(usage(form)),
                },
                _ => Err(usage(form)),
            }
        }
        "max-tokens" => match count("/max-tokens N (N >= 1)") {
            Ok(0) => Err(usage("/max-tokens N (N >= 1)")),
            r => r.map(Command::MaxTokens),
        },
        "seed" => arg
            .parse::<u64>()
            .map(Command::Seed)
            .map_err(|_| usage("/seed N")),
        "settings" => none(Command::Settings),
        "context" => none(Command::Context),
        "stats" => none(Command::Stats),
        "retry" => none(Command::Retry),
        "undo" => none(Command::Undo),
        "save" => text("/save FILE").map(|f| Command::Save(f.into())),
        "load" => text("/load FILE").map(|f| Command::Load(f.into())),
        "info" => none(Command::Info),
        "thinking" => switch("/thinking on|off").map(Command::Thinking),
        "lazy" => switch("/lazy on|off").map(Command::Lazy),
        "model" => {
            let mut words = arg.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some(m), t, None) => Ok(Command::Model {
                    model: m.to_string(),
                    template: t.map(str::to_string),
                }),
                _ => Err(usage("/model PATH|NAME [TEMPLATE]")),
            }
        }
        "template" => text("/template NAME|FILE").map(Command::Template),
        _ => Err(format!("unknown command /{name}; /help lists the commands")),
    };
    cmd.map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_and_bad_ones_get_a_hint() {
        assert_eq!(parse("hello"), Ok(None));
        assert_eq!(
            parse(" /temperature 0.5 "),
            Ok(Some(Command::Temperature(0.5)))
        );
        assert_eq!(parse("/top-k 0"), Ok(Some(Command::TopK(0))));
        assert_eq!(parse("/lazy off"), Ok(Some(Command::Lazy(false))));
        assert_eq!(
            parse("/model qwen2.5-coder-0.5b chatml"),
            Ok(Some(Command::Model {
                model: "qwen2.5-coder-0.5b".into(),
                template: Some("chatml".into())
            }))
        );
        assert_eq!(
            parse("/system be kind"),
            Ok(Some(Command::System("be kind".into())))
        );
        assert_eq!(
            parse("/save a b.json"),
            Ok(Some(Command::Save("a b.json".into())))
        );
        for (bad, hint) in [
            ("/temperature hot", "usage: /temperature"),
            ("/temperature -1", "usage: /temperature"),
            ("/top-p 1.5", "usage: /top-p"),
            ("/max-tokens 0", "usage: /max-tokens"),
            ("/lazy maybe", "usage: /lazy on|off"),
            ("/model", "usage: /model"),
            ("/retry now", "/retry takes no argument"),
            ("/frobnicate", "unknown command /frobnicate"),
            ("/system", "usage: /system TEXT"),
        ] {
            let got = parse(bad).unwrap_err();
            assert!(got.starts_with(hint), "{bad}: {got}");
        }
        // Every command /help lists parses (with an argument where it takes one).
        for (form, _) in HELP {
            let line = form
                .replace("TEXT", "x")
                .replace(" X", " 0.5")
                .replace(" N", " 3")
                .replace("ID BIAS|clear", "5 -inf")
                .replace("on|off", "on")
                .replace("PATH|NAME [TEMPLATE]", "m")
                .replace("NAME|FILE", "chatml")
                .replace("FILE", "f.json");
            assert!(matches!(parse(&line), Ok(Some(_))), "{line}");
        }
    }
}
