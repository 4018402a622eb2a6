//! `torchless template`: a conversation rendered through a chat template, printed exactly (no
//! newline added), or the template's own error with a non-zero exit. For debugging templates,
//! and to test the chat-template module from outside.

use std::io::Write;
use std::path::PathBuf;

use torchless_tokenizer::{ChatTemplate, RenderOptions};

use crate::commands::tokenize::load_tokenizer;
use crate::options::{CliError, ModelOpts};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The model whose template (and BOS/EOS texts) to use; the default model when neither
    /// --template nor --template-file is given.
    #[command(flatten)]
    pub model: ModelOpts,
    /// A Jinja template file instead of the model's template.
    #[arg(long, conflicts_with = "template")]
    pub template_file: Option<PathBuf>,
    /// A built-in template (chatml, llama2, llama3, mistral, phi3 or gemma) or a Jinja file.
    #[arg(long)]
    pub template: Option<String>,
    /// The conversation: a JSON list of messages, or an object with "messages" (and
    /// optionally "tools", "documents", "add_generation_prompt").
    #[arg(long)]
    pub messages: PathBuf,
    /// Tools in OpenAI's function format (a JSON list).
    #[arg(long)]
    pub tools: Option<PathBuf>,
    /// End after the last message instead of where the assistant's reply begins.
    #[arg(long)]
    pub no_generation_prompt: bool,
    /// The BOS token's text (default: the model's, or empty without a model).
    #[arg(long)]
    pub bos: Option<String>,
    /// The EOS token's text (default: the model's, or empty without a model).
    #[arg(long)]
    pub eos: Option<String>,
    /// A further template variable, KEY=VALUE (VALUE read as JSON when it parses, else as
    /// text); repeatable.
    #[arg(long = "var", value_name = "KEY=VALUE")]
    pub vars: Vec<String>,
}

fn read_json(path: &PathBuf, what: &'static str) -> Result<serde_json::Value, CliError> {
    let text = std::fs::read_to_string(path).map_err(|source| CliError::Io {
        what,
        path: path.display().to_string(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| {
        CliError::Usage(format!(
            "{} is not valid JSON: {e}; give a JSON list",
            path.display()
        ))
    })
}

pub fn run(a: Args) -> Result<(), CliError> {
    let doc = read_json(&a.messages, "read messages file")?;
    let mut opts = RenderOptions {
        add_generation_prompt: !a.no_generation_prompt,
        ..RenderOptions::default()
    };
    let messages = match doc {
        serde_json::Value::Array(list) => list,
        serde_json::Value::Object(mut obj) => {
            opts.tools = obj.remove("tools");
            opts.documents = obj.remove("documents");
            if let Some(g) = obj.remove("add_generation_prompt") {
                opts.add_generation_prompt = g.as_bool().unwrap_or(true) && !a.no_generation_prompt;
            }
            match obj.remove("messages") {
                Some(serde_json::Value::Array(list)) => list,
                _ => {
                    return Err(CliError::Usage(format!(
                        "{}: the object has no \"messages\" list",
                        a.messages.display()
                    )))
                }
            }
        }
        _ => {
            return Err(CliError::Usage(format!(
                "{}: expected a list of messages or an object with \"messages\"",
                a.messages.display()
            )))
        }
    };
    if let Some(t) = &a.tools {
        opts.tools = Some(read_json(t, "read tools file")?);
    }
    for kv in &a.vars {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| CliError::Usage(format!("--var {kv}: expected KEY=VALUE")))?;
        let value = serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::from(v));
        opts.extra.insert(k.to_string(), value);
    }

    // The model is read only when its template or its BOS/EOS texts are asked for.
    let own = a.template.is_none() && a.template_file.is_none();
    let tok = if own || a.model.model.is_some() {
        Some(load_tokenizer(&a.model)?)
    } else {
        None
    };
    let (mbos, meos) = tok.as_ref().map(|t| t.bos_eos_text()).unwrap_or_default();
    let bos = a.bos.clone().unwrap_or(mbos);
    let eos = a.eos.clone().unwrap_or(meos);
    let template = if let Some(name) = &a.template {
        ChatTemplate::named(name, &bos, &eos)?
    } else if let Some(file) = &a.template_file {
        let src = std::fs::read_to_string(file).map_err(|source| CliError::Io {
            what: "read template file",
            path: file.display().to_string(),
            source,
        })?;
        ChatTemplate::new(&src, &bos, &eos)?
    } else {
        let src = tok
            .as_ref()
            .and_then(|t| t.chat_template_source())
            .ok_or_else(|| {
                CliError::Usage(format!(
                    "the model has no chat template; pass --template ({}) or --template-file",
                    torchless_tokenizer::builtin_templates::NAMES.join(", ")
                ))
            })?;
        ChatTemplate::new(src, &bos, &eos)?
    };
    let text = template.render_with(&messages, &opts)?;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .map_err(|source| CliError::Io {
            what: "write",
            path: "standard output".into(),
            source,
        })
}
