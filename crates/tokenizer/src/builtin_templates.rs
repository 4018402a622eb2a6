//! Chat templates for models that carry none, chosen by name (`--template NAME`): the prompt
//! formats of the common families, written here as Jinja so that they go through the same
//! renderer as a model's own template. Content may be a string or a list of parts (the text
//! parts are joined); a system message is placed where each format puts it.
//!
//! Only the template texts live here; rendering is [`crate::template`]'s.

// Layout: every tag strips the whitespace around it (`{%- -%}`), and every piece of output is
// an expression (`{{ '...\n' }}`), so the line breaks and indentation below are not output.

/// The text of a message's content, whether a string or a list of `{"type": "text"}` parts.
const TEXT_MACRO: &str = r#"
{%- macro text(c) -%}
  {%- if c is string -%}{{- c -}}
  {%- elif c is iterable -%}
    {%- for p in c -%}{%- if p.type == 'text' -%}{{- p.text -}}{%- endif -%}{%- endfor -%}
  {%- endif -%}
{%- endmacro -%}
"#;

const CHATML: &str = r#"
{%- for m in messages -%}
  {{- '<|im_start|>' + m.role + '\n' + text(m.content) + '<|im_end|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}
"#;

/// Llama 2: the system text inside the first `[INST]`, each exchange closed by EOS.
const LLAMA2: &str = r#"
{%- set ns = namespace(sys='') -%}
{%- for m in messages -%}
  {%- if m.role == 'system' -%}{%- set ns.sys = text(m.content) -%}
  {%- elif m.role == 'user' -%}
    {{- bos_token + '[INST] ' -}}
    {%- if ns.sys -%}{{- '<<SYS>>\n' + ns.sys + '\n<</SYS>>\n\n' -}}{%- set ns.sys = '' -%}{%- endif -%}
    {{- text(m.content) | trim + ' [/INST]' -}}
  {%- elif m.role == 'assistant' -%}
    {{- ' ' + text(m.content) | trim + ' ' + eos_token -}}
  {%- endif -%}
{%- endfor -%}
"#;

const LLAMA3: &str = r#"
{{- bos_token -}}
{%- for m in messages -%}
  {{- '<|start_header_id|>' + m.role + '<|end_header_id|>\n\n' + text(m.content) | trim + '<|eot_id|>' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}{%- endif -%}
"#;

/// Mistral: `[INST]` without a system role; a system message goes before the first user text.
const MISTRAL: &str = r#"
{%- set ns = namespace(sys='') -%}
{{- bos_token -}}
{%- for m in messages -%}
  {%- if m.role == 'system' -%}{%- set ns.sys = text(m.content) -%}
  {%- elif m.role == 'user' -%}
    {{- '[INST] ' -}}
    {%- if ns.sys -%}{{- ns.sys + '\n\n' -}}{%- set ns.sys = '' -%}{%- endif -%}
    {{- text(m.content) + ' [/INST]' -}}
  {%- elif m.role == 'assistant' -%}
    {{- text(m.content) + eos_token -}}
  {%- endif -%}
{%- endfor -%}
"#;

const PHI3: &str = r#"
{%- for m in messages -%}
  {{- '<|' + m.role + '|>\n' + text(m.content) + '<|end|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|assistant|>\n' -}}{%- endif -%}
"#;

/// Gemma: turns of `user` and `model`; a system message opens the first user turn.
const GEMMA: &str = r#"
{%- set ns = namespace(sys='') -%}
{{- bos_token -}}
{%- for m in messages -%}
  {%- if m.role == 'system' -%}{%- set ns.sys = text(m.content) -%}
  {%- else -%}
    {{- '<start_of_turn>' + ('model' if m.role == 'assistant' else m.role) + '\n' -}}
    {%- if ns.sys and m.role == 'user' -%}{{- ns.sys + '\n\n' -}}{%- set ns.sys = '' -%}{%- endif -%}
    {{- text(m.content) | trim + '<end_of_turn>\n' -}}
  {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<start_of_turn>model\n' -}}{%- endif -%}
"#;

/// The names `--template` takes, in the order help texts list them.
pub const NAMES: [&str; 6] = ["chatml", "llama2", "llama3", "mistral", "phi3", "gemma"];

/// The Jinja source of the built-in template `name`.
pub fn source(name: &str) -> Option<String> {
    let body = match name {
        "chatml" => CHATML,
        "llama2" => LLAMA2,
        "llama3" => LLAMA3,
        "mistral" => MISTRAL,
        "phi3" => PHI3,
        "gemma" => GEMMA,
        _ => return None,
    };
    Some(format!("{TEXT_MACRO}{body}"))
}
