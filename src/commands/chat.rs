//! `torchless chat`: a conversation in the terminal — line editing and history, multi-line
//! input (a line ending in `\`, or a block between `"""` lines), streamed answers, Ctrl-C to
//! stop an answer, Ctrl-D or `/exit` to leave, slash commands — or, when stdin is not a
//! terminal, a plain line-per-message conversation for scripts (answers on stdout, notices on
//! stderr). The conversation itself is [`torchless_chat::Chat`]'s; this module reads lines,
//! runs commands and prints.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use torchless_chat::command::{self, Command, HELP};
use torchless_chat::{Chat, ChatOptions, Event, Settings, TurnStats};
use torchless_model::{Model, SessionOptions, StopReason};

use crate::options::{AttentionOpts, CliError, ModelOpts, SamplingOpts};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelOpts,
    #[command(flatten)]
    pub attention: AttentionOpts,
    /// System prompt.
    #[arg(long)]
    pub system: Option<String>,
    /// Chat template instead of the model's own: chatml, llama2, llama3, mistral, phi3, gemma,
    /// or a Jinja file.
    #[arg(long)]
    pub template: Option<String>,
    #[command(flatten)]
    pub sampling: SamplingOpts,
    /// Most tokens of one answer.
    #[arg(short = 'n', long = "n-predict", default_value_t = 1024)]
    pub n_predict: usize,
    /// Seed of the first answer (later answers take the next ones; default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Context length (default: the model's, at most 4096).
    #[arg(short = 'c', long = "ctx-size", default_value_t = 0)]
    pub ctx: usize,
    /// Prompt tokens per forward pass.
    #[arg(short = 'b', long = "batch-size", default_value_t = 512)]
    pub batch: usize,
    /// Speculate by prompt lookup (n-grams of up to N tokens): faster answers that repeat
    /// the conversation (edits, quotes), distributed as without it. Computes in the
    /// batch-invariant numerics.
    #[arg(long, value_name = "N")]
    pub lookup: Option<usize>,
    /// Neither read nor write the input history (kept in the cache directory).
    #[arg(long)]
    pub no_history: bool,
}

/// Set by Ctrl-C while an answer is being generated.
static CANCEL: AtomicBool = AtomicBool::new(false);
static GENERATING: AtomicBool = AtomicBool::new(false);

pub fn run(a: Args) -> Result<(), CliError> {
    let path = a.model.path()?;
    let load = a.model.load_options()?;
    let model = Model::load(&path, &load).map_err(|source| CliError::Load {
        path: path.display().to_string(),
        source,
    })?;
    // Checked here, against the model's vocabulary; the chat keeps the settings it can show.
    let s = a.sampling.config(0, model.config().vocab)?;
    // Attention settings that cannot work with this model are refused before the first turn.
    {
        let c = model.config();
        let n_ctx = if a.ctx == 0 {
            c.n_ctx_train.min(4096)
        } else {
            a.ctx
        };
        let kv = model.precision().kv_type();
        a.attention.options()?.resolve(n_ctx, c.head_dim, kv)?;
    }
    let opts = ChatOptions {
        session: SessionOptions {
            n_ctx: a.ctx,
            n_batch: a.batch,
            attention: a.attention.options()?,
            numerics: if a.lookup.is_some() {
                torchless_kernels::Numerics::BatchInvariant
            } else {
                torchless_kernels::Numerics::LlamaCpp
            },
            ..SessionOptions::default()
        },
        lookup: match a.lookup {
            Some(0) => {
                return Err(CliError::Usage(
                    "--lookup 0: the n-gram needs at least one token".into(),
                ))
            }
            l => l,
        },
        template: a.template.clone(),
        system: a.system.clone(),
        settings: Settings {
            temperature: s.temperature,
            top_k: s.top_k,
            top_p: s.top_p,
            min_p: s.min_p,
            typical_p: s.typical_p,
            repeat_penalty: s.repeat_penalty,
            repeat_last_n: s.penalty_last_n,
            presence_penalty: s.presence_penalty,
            frequency_penalty: s.frequency_penalty,
            dry_multiplier: s.dry_multiplier,
            logit_bias: s.logit_bias,
            max_tokens: a.n_predict.max(1),
            seed: a.seed,
            show_thinking: true,
        },
    };
    let mut chat = Chat::new(model, path, load, opts).map_err(chat_error)?;
    let interactive = std::io::stdin().is_terminal();
    let ui = Ui {
        interactive,
        color: std::io::stdout().is_terminal()
            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
    };
    let mut input: Box<dyn Lines> = if interactive {
        let history = (!a.no_history).then(|| torchless_hub::cache_dir().join("chat_history"));
        Box::new(Terminal::new(history)?)
    } else {
        Box::new(Piped(std::io::stdin().lock()))
    };
    // Ctrl-C stops the answer being generated; at any other time (outside the line editor,
    // which reads it as a key) it ends the program as usual. Installed after the line editor,
    // which sets a SIGINT handler of its own.
    let _ = ctrlc::set_handler(|| {
        if GENERATING.load(Ordering::SeqCst) {
            CANCEL.store(true, Ordering::SeqCst);
        } else {
            std::process::exit(130);
        }
    });
    if interactive {
        let (_, n_ctx) = chat.context();
        let name = chat.model().config().name.clone().unwrap_or_default();
        ui.dim(&format!(
            "chatting with {name} ({n_ctx} tokens of context); /help lists the commands, Ctrl-D leaves"
        ));
    }
    while let Some(text) = read_message(&mut *input) {
        if text.trim().is_empty() {
            continue;
        }
        match command::parse(&text) {
            Err(hint) => ui.notice(&hint),
            Ok(Some(cmd)) => {
                if !run_command(&mut chat, cmd, &ui, &a.model) {
                    break;
                }
            }
            Ok(None) => {
                let show = chat.settings().show_thinking;
                ui.turn(show, |cancel, on| chat.send(&text, cancel, on));
            }
        }
    }
    input.finish();
    Ok(())
}

fn chat_error(e: torchless_chat::ChatError) -> CliError {
    CliError::Usage(e.to_string())
}

/// Runs a slash command; false to leave.
fn run_command(chat: &mut Chat, cmd: Command, ui: &Ui, base: &ModelOpts) -> bool {
    let report = |r: Result<String, torchless_chat::ChatError>| match r {
        Ok(done) => ui.notice(&done),
        Err(e) => ui.error(&e.to_string()),
    };
    match cmd {
        Command::Exit => return false,
        Command::Help => {
            let width = HELP.iter().map(|(f, _)| f.len()).max().unwrap_or(0);
            for (form, what) in HELP {
                ui.line(&format!("{form:width$}  {what}"));
            }
        }
        Command::Clear => {
            chat.clear();
            ui.notice("the conversation is cleared");
        }
        Command::System(text) => {
            chat.set_system(&text);
            ui.notice("the system prompt is set");
        }
        Command::Temperature(x) => chat.settings_mut().temperature = x,
        Command::TopK(n) => chat.settings_mut().top_k = n,
        Command::TopP(x) => chat.settings_mut().top_p = x,
        Command::MinP(x) => chat.settings_mut().min_p = x,
        Command::TypicalP(x) => chat.settings_mut().typical_p = x,
        Command::RepeatPenalty(x) => chat.settings_mut().repeat_penalty = x,
        Command::PresencePenalty(x) => chat.settings_mut().presence_penalty = x,
        Command::FrequencyPenalty(x) => chat.settings_mut().frequency_penalty = x,
        Command::Dry(x) => chat.settings_mut().dry_multiplier = x,
        Command::LogitBias(None) => chat.settings_mut().logit_bias.clear(),
        Command::LogitBias(Some((id, b))) => {
            let vocab = chat.model().config().vocab;
            if id as usize >= vocab {
                ui.notice(&format!("token {id} is not in the vocabulary of {vocab}"));
            } else {
                chat.settings_mut().logit_bias.push((id, b));
            }
        }
        Command::MaxTokens(n) => chat.settings_mut().max_tokens = n,
        Command::Seed(n) => chat.set_seed(n),
        Command::Thinking(on) => chat.settings_mut().show_thinking = on,
        Command::Settings => {
            let s = chat.settings();
            let seed = s.seed.map_or("from the clock".into(), |n| n.to_string());
            ui.line(&format!(
                "temperature {}, top-k {}, top-p {}, min-p {}, typical-p {}, repeat-penalty {}, \
                 presence-penalty {}, frequency-penalty {}, dry {}, logit-bias {:?}, max-tokens {}, \
                 seed {seed}, thinking {}",
                s.temperature,
                s.top_k,
                s.top_p,
                s.min_p,
                s.typical_p,
                s.repeat_penalty,
                s.presence_penalty,
                s.frequency_penalty,
                s.dry_multiplier,
                s.logit_bias,
                s.max_tokens,
                if s.show_thinking { "shown" } else { "hidden" }
            ));
            ui.line(&format!(
                "model {} ({}), template {}",
                chat.model_path().display(),
                if chat.is_lazy() {
                    "memory-mapped"
                } else {
                    "in memory"
                },
                chat.template_name().unwrap_or("the model's own")
            ));
        }
        Command::Context => {
            let (used, n_ctx) = chat.context();
            ui.line(&format!("context: {used} of {n_ctx} tokens used"));
        }
        Command::Stats => {
            match chat.last_turn() {
                Some(s) => ui.line(&format!("last answer: {}", stats_line(s))),
                None => ui.line("no answer yet"),
            }
            let t = chat.totals();
            ui.line(&format!(
                "session: {} answers, {} tokens generated, {} prompt tokens evaluated, {} taken from the cache",
                t.answers, t.generated, t.evaluated, t.reused
            ));
        }
        Command::Retry => {
            let show = chat.settings().show_thinking;
            ui.turn(show, |cancel, on| chat.retry(cancel, on));
        }
        Command::Undo => {
            if chat.undo() {
                ui.notice("the last exchange is dropped");
            } else {
                ui.notice("nothing to undo");
            }
        }
        Command::Save(p) => report(chat.save(&p).map(|_| format!("saved to {}", p.display()))),
        Command::Load(p) => match chat.load(&p) {
            Ok(_) => {
                for t in &chat.conversation().messages {
                    ui.line(&format!("{}: {}", t.role, t.content));
                }
                let n = chat.conversation().messages.len();
                ui.notice(&format!("loaded {n} messages from {}", p.display()));
            }
            Err(e) => ui.error(&e.to_string()),
        },
        Command::Info => {
            let args = super::info::Args {
                model: ModelOpts {
                    model: Some(chat.model_path().display().to_string()),
                    ..base.clone()
                },
                json: false,
            };
            if let Err(e) = super::info::run(args) {
                ui.error(&e.to_string());
            }
        }
        Command::Lazy(on) => report(chat.set_lazy(on).map(|_| {
            if on {
                "the weights are memory-mapped".to_string()
            } else {
                "the weights are read into memory".to_string()
            }
        })),
        Command::Model { model, template } => match torchless_hub::resolve(Some(&model)) {
            Ok(path) => {
                ui.notice(&format!("loading {}", path.display()));
                report(chat.set_model(path, template).map(|_| {
                    let name = chat.model().config().name.clone().unwrap_or(model);
                    format!("now chatting with {name}; the conversation is kept")
                }))
            }
            Err(e) => ui.error(&e.to_string()),
        },
        Command::Template(name) => report(
            chat.set_template(&name)
                .map(|_| format!("the template is {name}")),
        ),
    }
    true
}

fn stats_line(s: &TurnStats) -> String {
    format!(
        "{} tokens, {:.1} tokens/s; prompt {} new + {} cached tokens; context {}/{}",
        s.generated,
        s.gen_tps(),
        s.evaluated,
        s.reused,
        s.context_used,
        s.n_ctx
    )
}

/// How things are shown.
struct Ui {
    interactive: bool,
    color: bool,
}

const DIM: &str = "\x1b[2m";
const RED: &str = "\x1b[31m";
const RESET: &str = "\x1b[0m";

impl Ui {
    fn styled(&self, style: &str, text: &str) -> String {
        if self.color {
            format!("{style}{text}{RESET}")
        } else {
            text.to_string()
        }
    }

    /// A line of output (stdout).
    fn line(&self, text: &str) {
        println!("{text}");
    }

    fn dim(&self, text: &str) {
        println!("{}", self.styled(DIM, text));
    }

    /// Something the user should know: on stdout in a terminal, on stderr for scripts.
    fn notice(&self, text: &str) {
        if self.interactive {
            self.dim(text);
        } else {
            eprintln!("{text}");
        }
    }

    fn error(&self, text: &str) {
        if self.interactive {
            println!("{}", self.styled(RED, &format!("error: {text}")));
        } else {
            eprintln!("error: {text}");
        }
    }

    /// Runs one answer, streaming it; Ctrl-C stops it.
    fn turn(
        &self,
        show_thinking: bool,
        f: impl FnOnce(
            &AtomicBool,
            &mut dyn FnMut(Event<'_>),
        ) -> Result<TurnStats, torchless_chat::ChatError>,
    ) {
        CANCEL.store(false, Ordering::SeqCst);
        GENERATING.store(true, Ordering::SeqCst);
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        let mut thinking = false;
        let dim = if self.color { DIM } else { "" };
        let reset = if self.color { RESET } else { "" };
        let result = f(&CANCEL, &mut |ev| match ev {
            Event::Answer(t) => {
                if thinking {
                    let _ = write!(out, "{reset}\n\n");
                    thinking = false;
                }
                let _ = out.write_all(t.as_bytes());
                let _ = out.flush();
            }
            Event::Thinking(t) if show_thinking => {
                if !thinking {
                    let _ = write!(out, "{dim}");
                    thinking = true;
                }
                let _ = out.write_all(t.as_bytes());
                let _ = out.flush();
            }
            Event::Thinking(_) => {}
            Event::Notice(n) => {
                if self.interactive {
                    let _ = writeln!(out, "{dim}{n}{reset}");
                } else {
                    eprintln!("{n}");
                }
            }
        });
        GENERATING.store(false, Ordering::SeqCst);
        if thinking {
            let _ = write!(out, "{reset}");
        }
        let _ = writeln!(out);
        let _ = out.flush();
        drop(out);
        match result {
            Ok(s) => {
                if s.stop == StopReason::Cancelled {
                    self.notice("[stopped]");
                }
                if s.stop == StopReason::ContextFull {
                    self.notice("[the context is full]");
                }
                if self.interactive {
                    self.dim(&format!("[{}]", stats_line(&s)));
                }
            }
            Err(e) => self.error(&e.to_string()),
        }
    }
}

/// What reading a line gave.
enum Read {
    Line(String),
    /// Ctrl-C at the prompt: the line is dropped.
    Interrupted,
    Eof,
}

/// Where lines come from.
trait Lines {
    fn read(&mut self, prompt: &str) -> Read;
    fn remember(&mut self, _entry: &str) {}
    fn finish(&mut self) {}
}

/// The terminal, through the line editor.
struct Terminal {
    ed: rustyline::DefaultEditor,
    history: Option<PathBuf>,
}

impl Terminal {
    fn new(history: Option<PathBuf>) -> Result<Terminal, CliError> {
        let mut ed = rustyline::DefaultEditor::new()
            .map_err(|e| CliError::Usage(format!("cannot start the line editor: {e}")))?;
        if let Some(h) = &history {
            let _ = ed.load_history(h);
        }
        Ok(Terminal { ed, history })
    }
}

impl Lines for Terminal {
    fn read(&mut self, prompt: &str) -> Read {
        use rustyline::error::ReadlineError;
        match self.ed.readline(prompt) {
            Ok(l) => Read::Line(l),
            Err(ReadlineError::Interrupted) => Read::Interrupted,
            Err(_) => Read::Eof,
        }
    }

    fn remember(&mut self, entry: &str) {
        let _ = self.ed.add_history_entry(entry);
    }

    fn finish(&mut self) {
        if let Some(h) = &self.history {
            if let Some(dir) = h.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let _ = self.ed.save_history(h);
        }
    }
}

/// Standard input that is not a terminal: one line a message, no prompt.
struct Piped<R>(R);

impl<R: BufRead> Lines for Piped<R> {
    fn read(&mut self, _prompt: &str) -> Read {
        let mut line = String::new();
        match self.0.read_line(&mut line) {
            Ok(0) | Err(_) => Read::Eof,
            Ok(_) => Read::Line(line.trim_end_matches(['\n', '\r']).to_string()),
        }
    }
}

/// The next message or command: one line, lines joined by a trailing `\`, or a block between
/// `"""` lines. `None` at the end of input.
fn read_message(lines: &mut dyn Lines) -> Option<String> {
    let first = match lines.read(">>> ") {
        Read::Line(l) => l,
        Read::Interrupted => return Some(String::new()),
        Read::Eof => return None,
    };
    let mut text = String::new();
    if first.trim() == "\"\"\"" {
        loop {
            match lines.read("... ") {
                Read::Line(l) if l.trim() == "\"\"\"" => break,
                Read::Line(l) => {
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    text.push_str(&l);
                }
                Read::Interrupted => return Some(String::new()),
                Read::Eof => break,
            }
        }
    } else {
        let mut line = first;
        while let Some(head) = line.strip_suffix('\\') {
            text.push_str(head);
            text.push('\n');
            line = match lines.read("... ") {
                Read::Line(l) => l,
                Read::Interrupted => return Some(String::new()),
                Read::Eof => String::new(),
            };
        }
        text.push_str(&line);
    }
    if !text.trim().is_empty() {
        lines.remember(&text);
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Script(Vec<&'static str>);

    impl Lines for Script {
        fn read(&mut self, _prompt: &str) -> Read {
            if self.0.is_empty() {
                Read::Eof
            } else {
                Read::Line(self.0.remove(0).to_string())
            }
        }
    }

    #[test]
    fn continued_lines_and_blocks_make_one_message() {
        let mut s = Script(vec![
            "one \\", "two", "\"\"\"", "a", "", "b", "\"\"\"", "/exit",
        ]);
        assert_eq!(read_message(&mut s).as_deref(), Some("one \ntwo"));
        assert_eq!(read_message(&mut s).as_deref(), Some("a\n\nb"));
        assert_eq!(read_message(&mut s).as_deref(), Some("/exit"));
        assert_eq!(read_message(&mut s), None);
    }
}
