//! Chat templates: the Jinja template a model ships (`tokenizer.chat_template`) rendered with
//! minijinja, with the Python string methods and helper functions HuggingFace templates use.
//! One module serves `generate --chat`, `chat` and `serve`.

use serde::Serialize;

use crate::TokenizerError;

/// One chat message with text content (the common case; [`ChatTemplate::render_with`] takes
/// messages of any shape: content as a list of parts, `tool_calls`, `tool` roles).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// What a template sees besides the messages, as transformers passes it.
#[derive(Clone, Debug, Default)]
pub struct RenderOptions {
    /// End where the assistant's reply begins.
    pub add_generation_prompt: bool,
    /// Tools in OpenAI's function format (`None` renders as `none`).
    pub tools: Option<serde_json::Value>,
    /// Documents for retrieval-augmented templates.
    pub documents: Option<serde_json::Value>,
    /// Further keyword variables (`enable_thinking`, `date_string`, ...).
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    bos: String,
    eos: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChatTemplate")
    }
}

/// Marks the errors a template raises on purpose (`raise_exception`), so that their message
/// is reported as the template wrote it.
const RAISED: &str = "\u{1}raised:";

fn raise_exception(msg: String) -> Result<String, minijinja::Error> {
    Err(minijinja::Error::new(
        minijinja::ErrorKind::InvalidOperation,
        format!("{RAISED}{msg}"),
    ))
}

/// A minijinja error as one line: the template's own message when it raised one, else what
/// went wrong and where (with the causes minijinja chains).
fn template_error(e: minijinja::Error) -> TokenizerError {
    if let Some(msg) = e.detail().and_then(|d| d.strip_prefix(RAISED)) {
        return TokenizerError::TemplateRaised(msg.to_string());
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        if let Some(msg) = c.to_string().split_once(RAISED).map(|(_, m)| m.to_string()) {
            return TokenizerError::TemplateRaised(msg);
        }
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    TokenizerError::Template(text)
}

/// `strftime_now(fmt)` for the few formats templates use (%d %b %Y %B %m %y %H %M), in UTC.
fn strftime_now(fmt: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let month = MONTHS[(m - 1) as usize];
    let (h, mi) = ((secs / 3600) % 24, (secs / 60) % 60);
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y % 100)),
            Some('b') => out.push_str(&month[..3]),
            Some('B') => out.push_str(month),
            Some('H') => out.push_str(&format!("{h:02}")),
            Some('M') => out.push_str(&format!("{mi:02}")),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

impl ChatTemplate {
    /// Compiles `source` as transformers configures Jinja (trim_blocks, lstrip_blocks, loop
    /// controls, its `tojson`, Python string methods, `raise_exception`, `strftime_now`);
    /// `bos` and `eos` are the texts of the model's BOS/EOS tokens.
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<ChatTemplate, TokenizerError> {
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", crate::pyjson::tojson_filter);
        env.add_template_owned("chat", source.to_string())
            .map_err(template_error)?;
        Ok(ChatTemplate {
            env,
            bos: bos.to_string(),
            eos: eos.to_string(),
        })
    }

    /// The built-in template `name` (one of [`crate::builtin_templates::NAMES`]).
    pub fn builtin(name: &str, bos: &str, eos: &str) -> Result<ChatTemplate, TokenizerError> {
        let src = crate::builtin_templates::source(name).ok_or_else(|| {
            TokenizerError::Template(format!(
                "no built-in template '{name}'; the choices are {}",
                crate::builtin_templates::NAMES.join(", ")
            ))
        })?;
        ChatTemplate::new(&src, bos, eos)
    }

    /// What `--template` names: a built-in template, else a Jinja file.
    pub fn named(name: &str, bos: &str, eos: &str) -> Result<ChatTemplate, TokenizerError> {
        if crate::builtin_templates::source(name).is_some() {
            return ChatTemplate::builtin(name, bos, eos);
        }
        match std::fs::read_to_string(name) {
            Ok(src) => ChatTemplate::new(&src, bos, eos),
            Err(e) => Err(TokenizerError::Template(format!(
                "'{name}' is neither a built-in template ({}) nor a readable file: {e}",
                crate::builtin_templates::NAMES.join(", ")
            ))),
        }
    }

    /// Renders the conversation; with `add_generation_prompt` it ends where the assistant's
    /// reply begins.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        self.render_with(
            messages,
            &RenderOptions {
                add_generation_prompt,
                ..RenderOptions::default()
            },
        )
    }

    /// Renders messages of any shape ([`Message`]s, or JSON objects with content parts,
    /// `tool_calls`, ...) with the variables of `opts`.
    pub fn render_with<M: Serialize>(
        &self,
        messages: &[M],
        opts: &RenderOptions,
    ) -> Result<String, TokenizerError> {
        let tmpl = self.env.get_template("chat").map_err(template_error)?;
        fn value<T: Serialize + ?Sized>(v: &T) -> minijinja::Value {
            minijinja::Value::from_serialize(v)
        }
        let ctx = minijinja::context! {
            messages => value(messages),
            add_generation_prompt => opts.add_generation_prompt,
            bos_token => self.bos,
            eos_token => self.eos,
            tools => opts.tools.as_ref().map(value),
            documents => opts.documents.as_ref().map(value),
        };
        let ctx = if opts.extra.is_empty() {
            ctx
        } else {
            // The fixed variables win over keyword variables of the same name.
            minijinja::context! { ..ctx, ..value(&opts.extra) }
        };
        tmpl.render(ctx).map_err(template_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_chatml_with_python_methods() {
        let src = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content.strip() }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
        let t = ChatTemplate::new(src, "<s>", "</s>").unwrap();
        let out = t.render(&[Message::new("user", " hi ")], true).unwrap();
        assert_eq!(
            out,
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn raise_exception_is_an_error() {
        let t = ChatTemplate::new("{{ raise_exception('no system role') }}", "", "").unwrap();
        let e = t.render(&[], false).unwrap_err();
        assert!(
            matches!(&e, TokenizerError::TemplateRaised(m) if m == "no system role"),
            "{e}"
        );
        assert!(ChatTemplate::new("{% if %}", "", "").is_err());
    }

    #[test]
    fn strftime_formats_a_date() {
        let s = strftime_now("%d %b %Y".into());
        assert_eq!(s.len(), 11, "{s}");
    }

    fn chat() -> Vec<serde_json::Value> {
        serde_json::from_str(
            r#"[{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": [{"type": "text", "text": "Why?"}]}]"#,
        )
        .unwrap()
    }

    #[test]
    fn builtin_templates_render_each_format() {
        let gen = RenderOptions {
            add_generation_prompt: true,
            ..RenderOptions::default()
        };
        let cases = [
            ("chatml", "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nWhy?<|im_end|>\n<|im_start|>assistant\n"),
            ("llama2", "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello. </s><s>[INST] Why? [/INST]"),
            ("llama3", "<s><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhy?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"),
            ("mistral", "<s>[INST] Be brief.\n\nHi [/INST]Hello.</s>[INST] Why? [/INST]"),
            ("phi3", "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello.<|end|>\n<|user|>\nWhy?<|end|>\n<|assistant|>\n"),
            ("gemma", "<s><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n<start_of_turn>user\nWhy?<end_of_turn>\n<start_of_turn>model\n"),
        ];
        for (name, want) in cases {
            let t = ChatTemplate::builtin(name, "<s>", "</s>").unwrap();
            assert_eq!(t.render_with(&chat(), &gen).unwrap(), want, "{name}");
        }
        let e = ChatTemplate::builtin("vicuna", "", "").unwrap_err();
        assert!(e.to_string().contains("chatml, llama2"), "{e}");
    }

    #[test]
    fn tools_tool_calls_and_keyword_variables_reach_the_template() {
        let src = "{% if tools is not none %}{{ tools|tojson }}\n{% endif %}\
{% for m in messages %}{% if m.tool_calls %}{% for c in m.tool_calls %}call {{ c.function.name }} {{ c.function.arguments|tojson }}\n{% endfor %}\
{% elif m.role == 'tool' %}result {{ m.content }}\n{% else %}{{ m.role }}: {{ m.content }}\n{% endif %}{% endfor %}\
{% if documents is none %}no documents{% endif %} {{ day }}{% for x in [1, 2, 3] %}{% if x == 2 %}{% break %}{% endif %} {{ x }}{% endfor %}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        let msgs: Vec<serde_json::Value> = serde_json::from_str(
            r#"[{"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris", "unit": "c"}}}]},
                {"role": "tool", "content": "21"}]"#,
        )
        .unwrap();
        let mut extra = serde_json::Map::new();
        extra.insert("day".into(), "Monday".into());
        let opts = RenderOptions {
            tools: Some(
                serde_json::json!([{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]),
            ),
            extra,
            ..RenderOptions::default()
        };
        assert_eq!(
            t.render_with(&msgs, &opts).unwrap(),
            "[{\"type\": \"function\", \"function\": {\"name\": \"weather\", \"parameters\": {\"type\": \"object\"}}}]\n\
user: Weather in Paris?\ncall weather {\"city\": \"Paris\", \"unit\": \"c\"}\nresult 21\nno documents Monday 1"
        );
        // Without tools, `tools` is none rather than undefined.
        let plain = t
            .render_with(&msgs[..1], &RenderOptions::default())
            .unwrap();
        assert_eq!(plain, "user: Weather in Paris?\nno documents  1");
    }
}
