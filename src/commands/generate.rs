//! `torchless generate`: prompt in, streamed text out, speeds on stderr (or one JSON object).

use std::io::Write;

use torchless_model::{generate, GenerateOptions, Session, SessionOptions};
use torchless_tokenizer::{Message, TextStream};

use crate::options::{
    parse_ids, AttentionOpts, CliError, ModelOpts, SamplingOpts, SpeculationOpts,
};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelOpts,
    /// The prompt.
    #[arg(short = 'p', long)]
    pub prompt: Option<String>,
    /// Token ids to use as the prompt instead of text, e.g. 1,2,3.
    #[arg(long, conflicts_with = "prompt")]
    pub prompt_ids: Option<String>,
    /// Tokens to generate.
    #[arg(short = 'n', long = "n-predict", default_value_t = 128)]
    pub n_predict: usize,
    #[command(flatten)]
    pub sampling: SamplingOpts,
    #[command(flatten)]
    pub speculation: SpeculationOpts,
    #[command(flatten)]
    pub attention: AttentionOpts,
    /// Random seed (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Render the prompt with the model's chat template, as a user message.
    #[arg(long)]
    pub chat: bool,
    /// System message for --chat.
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// Chat template for --chat instead of the model's own: chatml, llama2, llama3, mistral,
    /// phi3, gemma, or a Jinja file.
    #[arg(long, requires = "chat")]
    pub template: Option<String>,
    /// Context length (default: the model's, at most 4096).
    #[arg(short = 'c', long = "ctx-size", default_value_t = 0)]
    pub ctx: usize,
    /// Prompt tokens per forward pass.
    #[arg(short = 'b', long = "batch-size", default_value_t = 512)]
    pub batch: usize,
    /// Print {prompt_ids, generated_ids, text, stop_reason, timings} as JSON instead of streaming.
    #[arg(long)]
    pub json: bool,
    /// Write the raw little-endian f32 logits of every evaluated position to this file.
    #[arg(long)]
    pub logits_out: Option<std::path::PathBuf>,
    /// Keep generating after an end-of-generation token.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Compute in the batch-invariant arithmetic order `torchless serve` uses, so that a
    /// served answer is reproduced token for token (same prompt, settings and seed).
    #[arg(long)]
    pub batch_invariant: bool,
}

pub fn run(a: Args) -> Result<(), CliError> {
    if a.prompt.is_none() && a.prompt_ids.is_none() {
        return Err(CliError::Usage(
            "give a prompt with -p TEXT or --prompt-ids 1,2,3".into(),
        ));
    }
    let model = a.model.load()?;
    let prompt_ids = match (&a.prompt_ids, &a.prompt) {
        (Some(ids), _) => parse_ids(ids)?,
        (None, Some(text)) => {
            let tok = model.require_tokenizer()?;
            if a.chat {
                let mut msgs = Vec::new();
                if let Some(s) = &a.system {
                    msgs.push(Message::new("system", s.as_str()));
                }
                msgs.push(Message::new("user", text.as_str()));
                let template = a
                    .template
                    .as_deref()
                    .map(|t| tok.template_named(t))
                    .transpose()?;
                tok.encode_chat_with(template.as_ref(), &msgs)?
            } else {
                tok.encode(text, true, true)?
            }
        }
        (None, None) => Vec::new(),
    };
    if prompt_ids.is_empty() {
        return Err(CliError::Usage("the prompt is empty".into()));
    }
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    });
    let opts = GenerateOptions {
        max_tokens: a.n_predict,
        sampler: a.sampling.config(seed, model.config().vocab)?,
        stop_at_eog: !a.ignore_eos,
        record_logits: a.logits_out.is_some(),
    };
    let mut logits_file = match &a.logits_out {
        Some(p) => Some(std::io::BufWriter::new(std::fs::File::create(p).map_err(
            |source| CliError::Io {
                what: "create",
                path: p.display().to_string(),
                source,
            },
        )?)),
        None => None,
    };
    let mut write_err = None;
    let mut session = Session::try_with_model(
        torchless_model::session::ModelRef::Borrowed(&model),
        SessionOptions {
            n_ctx: a.ctx,
            n_batch: a.batch,
            numerics: if a.batch_invariant || a.speculation.enabled() {
                torchless_kernels::Numerics::BatchInvariant
            } else {
                torchless_kernels::Numerics::LlamaCpp
            },
            attention: a.attention.options()?,
            ..SessionOptions::default()
        },
    )?;
    if prompt_ids.len() > session.n_ctx() {
        return Err(torchless_model::ModelError::ContextFull {
            need: prompt_ids.len(),
            max: session.n_ctx(),
        }
        .into());
    }
    let spec = if a.speculation.enabled() {
        if a.logits_out.is_some() {
            return Err(CliError::Usage(
                "--logits-out cannot be combined with speculative decoding".into(),
            ));
        }
        let o = a.speculation.options()?;
        let p = a
            .speculation
            .proposer(&model, &a.model, session.n_ctx(), &opts.sampler)?;
        p.map(|p| (p, o))
    } else {
        None
    };
    let tok = model.tokenizer();
    let mut stream = TextStream::new();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let streaming = !a.json;
    let mut on_token = |t: u32| {
        if streaming {
            if let Some(tok) = tok {
                let text = stream.push(tok.token_bytes(t, false));
                // A closed stdout (e.g. `| head`) ends generation quietly.
                return out
                    .write_all(text.as_bytes())
                    .and_then(|_| out.flush())
                    .is_ok();
            }
        }
        true
    };
    let (result, spec_stats) = match spec {
        Some((mut proposer, spec_opts)) => {
            let (g, s) = torchless_model::speculative::generate(
                &mut session,
                proposer.as_mut(),
                &prompt_ids,
                &opts,
                &spec_opts,
                &mut on_token,
            )?;
            (g, Some((proposer.name(), s)))
        }
        None => (
            generate(
                &mut session,
                &prompt_ids,
                &opts,
                |row| {
                    if let Some(f) = logits_file.as_mut() {
                        let bytes: Vec<u8> = row.iter().flat_map(|v| v.to_le_bytes()).collect();
                        if let Err(e) = f.write_all(&bytes) {
                            write_err.get_or_insert(e);
                        }
                    }
                },
                &mut on_token,
            )?,
            None,
        ),
    };
    if streaming {
        let _ = writeln!(out, "{}", stream.finish());
    }
    if let Some(mut f) = logits_file {
        if let Some(e) = write_err.take().or_else(|| f.flush().err()) {
            let path = a
                .logits_out
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            return Err(CliError::Io {
                what: "write logits to",
                path,
                source: e,
            });
        }
    }
    let t = result.timings;
    if a.json {
        let text = tok
            .map(|t| t.decode(&result.generated, false))
            .unwrap_or_default();
        let j = serde_json::json!({
            "prompt_ids": prompt_ids,
            "generated_ids": result.generated,
            "text": text,
            "stop_reason": result.stop.as_str(),
            "timings": {
                "prompt_tokens": t.prompt_tokens,
                "prompt_ms": t.prompt_secs * 1e3,
                "prompt_tokens_per_s": t.prompt_tps(),
                "generated_tokens": result.generated.len(),
                "generation_ms": t.gen_secs * 1e3,
                "generation_tokens_per_s": t.gen_tps(),
            },
        });
        let mut j = j;
        if let Some((name, s)) = &spec_stats {
            j["speculation"] = serde_json::json!({
                "proposer": name,
                "rounds": s.rounds,
                "drafted": s.drafted,
                "accepted": s.accepted,
                "acceptance": s.acceptance(),
                "tokens_per_pass": s.tokens_per_pass(),
                "draft_share": s.draft_share(),
            });
        }
        let _ = writeln!(out, "{j}");
    } else {
        if let Some((name, s)) = &spec_stats {
            eprintln!(
                "\nspeculation ({name}): {:.1}% of {} drafted tokens accepted, {:.2} tokens per \
                 target pass, drafting {:.0}% of the time",
                100.0 * s.acceptance(),
                s.drafted,
                s.tokens_per_pass(),
                100.0 * s.draft_share()
            );
        }
        eprintln!(
            "\nprompt: {} tokens, {:.1} tokens/s | generation: {} tokens, {:.1} tokens/s | stop: {}",
            t.prompt_tokens,
            t.prompt_tps(),
            result.generated.len(),
            t.gen_tps(),
            result.stop.as_str()
        );
    }
    Ok(())
}
