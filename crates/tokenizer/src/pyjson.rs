//! Python's `json.dumps` output for template values: the `tojson` filter as transformers
//! defines it for chat templates (`ensure_ascii=False` by default, `indent`, `separators`,
//! `sort_keys`), so that tool schemas and tool-call arguments render byte for byte as they do
//! there. minijinja's own `tojson` writes compact JSON with HTML escapes, which differs.
//!
//! It formats values; it knows nothing of templates beyond minijinja's `Value`.

use minijinja::value::{Kwargs, Rest, ValueKind};
use minijinja::{Error, ErrorKind, Value};

/// How `json.dumps` was called.
#[derive(Clone, Debug)]
pub struct DumpOptions {
    pub ensure_ascii: bool,
    /// Text put before each nested item (`indent=2` → two spaces); `None`: one line.
    pub indent: Option<String>,
    pub item_sep: String,
    pub key_sep: String,
    pub sort_keys: bool,
}

impl Default for DumpOptions {
    fn default() -> Self {
        DumpOptions {
            ensure_ascii: false,
            indent: None,
            item_sep: ", ".into(),
            key_sep: ": ".into(),
            sort_keys: false,
        }
    }
}

/// The `tojson` filter: `value|tojson`, `value|tojson(indent=2)`, and the positional order of
/// transformers' signature `(ensure_ascii, indent, separators, sort_keys)`.
pub fn tojson_filter(value: &Value, args: Rest<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    let mut named: [Option<Value>; 4] = Default::default();
    for (i, a) in args.iter().enumerate() {
        if i >= 4 {
            return Err(Error::new(
                ErrorKind::TooManyArguments,
                "tojson takes at most 4 arguments",
            ));
        }
        named[i] = Some(a.clone());
    }
    for (i, key) in ["ensure_ascii", "indent", "separators", "sort_keys"]
        .iter()
        .enumerate()
    {
        if let Some(v) = kwargs.get::<Option<Value>>(key)? {
            named[i] = Some(v);
        }
    }
    kwargs.assert_all_used()?;
    let given = |v: &Option<Value>| v.clone().filter(|v| !v.is_none() && !v.is_undefined());
    let mut o = DumpOptions {
        ensure_ascii: given(&named[0]).is_some_and(|v| v.is_true()),
        sort_keys: given(&named[3]).is_some_and(|v| v.is_true()),
        ..DumpOptions::default()
    };
    if let Some(ind) = given(&named[1]) {
        o.indent = Some(match ind.as_str() {
            Some(s) => s.to_string(),
            None => {
                let n = i64::try_from(ind.clone()).map_err(|_| {
                    Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: indent must be a number or a string",
                    )
                })?;
                " ".repeat(n.max(0) as usize)
            }
        });
        o.item_sep = ",".into();
    }
    if let Some(seps) = given(&named[2]) {
        let parts: Vec<Value> = seps.try_iter()?.collect();
        match parts.as_slice() {
            [a, b] if a.as_str().is_some() && b.as_str().is_some() => {
                o.item_sep = a.as_str().unwrap_or_default().to_string();
                o.key_sep = b.as_str().unwrap_or_default().to_string();
            }
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: separators must be two strings",
                ))
            }
        }
    }
    Ok(Value::from_safe_string(dumps(value, &o)?))
}

/// `json.dumps(value, ...)` with options `o`.
pub fn dumps(value: &Value, o: &DumpOptions) -> Result<String, Error> {
    let mut out = String::new();
    dump(value, o, 0, &mut out)?;
    Ok(out)
}

fn newline(o: &DumpOptions, level: usize, out: &mut String) {
    if let Some(ind) = &o.indent {
        out.push('\n');
        for _ in 0..level {
            out.push_str(ind);
        }
    }
}

fn dump(v: &Value, o: &DumpOptions, level: usize, out: &mut String) -> Result<(), Error> {
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => number(v, out),
        ValueKind::String | ValueKind::Bytes => string(v.as_str().unwrap_or_default(), o, out),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            container(('[', ']'), &items, o, level, out, |item, out| {
                dump(item, o, level + 1, out)
            })?;
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if o.sort_keys {
                keys.sort_by_key(key_text);
            }
            container(('{', '}'), &keys, o, level, out, |k, out| {
                string(&key_text(k), o, out);
                out.push_str(&o.key_sep);
                dump(&v.get_item(k)?, o, level + 1, out)
            })?;
        }
        _ => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: a {} cannot be written as JSON", v.kind()),
            ))
        }
    }
    Ok(())
}

/// A list or an object: `open`, the items (each written by `item`) with separators and, with
/// an indent, one per line, then `close`; empty ones stay `[]` / `{}`.
fn container(
    (open, close): (char, char),
    items: &[Value],
    o: &DumpOptions,
    level: usize,
    out: &mut String,
    mut item: impl FnMut(&Value, &mut String) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    if !items.is_empty() {
        for (i, x) in items.iter().enumerate() {
            if i > 0 {
                out.push_str(&o.item_sep);
            }
            newline(o, level + 1, out);
            item(x, out)?;
        }
        newline(o, level, out);
    }
    out.push(close);
    Ok(())
}

/// A map key as Python writes it (keys that are not strings become their JSON text).
fn key_text(k: &Value) -> String {
    match k.kind() {
        ValueKind::String => k.as_str().unwrap_or_default().to_string(),
        ValueKind::None | ValueKind::Undefined => "null".into(),
        ValueKind::Bool => (if k.is_true() { "true" } else { "false" }).into(),
        _ => {
            let mut s = String::new();
            number(k, &mut s);
            s
        }
    }
}

fn number(v: &Value, out: &mut String) {
    if v.is_integer() {
        out.push_str(&v.to_string());
        return;
    }
    match f64::try_from(v.clone()) {
        Ok(x) => out.push_str(&float_repr(x)),
        Err(_) => out.push_str(&v.to_string()),
    }
}

/// Python's `repr(float)`: the shortest digits that round-trip, positional for exponents in
/// -4..16, scientific (`1e-05`, `1.5e+16`) outside; `Infinity`/`NaN` as json.dumps writes them.
pub fn float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "d.ddde-5".
    let sci = format!("{:e}", x);
    let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mant) = match mant.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mant),
    };
    let digits: String = mant.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exp) {
        let point = exp + 1;
        let s = if point <= 0 {
            format!("0.{}{}", "0".repeat((-point) as usize), digits)
        } else if point as usize >= digits.len() {
            format!("{}{}.0", digits, "0".repeat(point as usize - digits.len()))
        } else {
            format!(
                "{}.{}",
                &digits[..point as usize],
                &digits[point as usize..]
            )
        };
        format!("{sign}{s}")
    } else {
        let m = if digits.len() > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits
        };
        let es = if exp < 0 { '-' } else { '+' };
        format!("{sign}{m}e{es}{:02}", exp.abs())
    }
}

fn string(s: &str, o: &DumpOptions, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (o.ensure_ascii && (c as u32) > 0x7f) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{:04x}", unit));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(json: &str) -> Value {
        Value::from_serialize(serde_json::from_str::<serde_json::Value>(json).unwrap())
    }

    #[test]
    fn writes_what_python_json_dumps_writes() {
        let o = DumpOptions::default();
        // json.dumps({"b": [1, 2.5, None, True], "a": "é\n\"x\""}, ensure_ascii=False)
        let x = v(r#"{"b": [1, 2.5, null, true], "a": "é\n\"x\""}"#);
        assert_eq!(
            dumps(&x, &o).unwrap(),
            r#"{"b": [1, 2.5, null, true], "a": "é\n\"x\""}"#
        );
        let sorted = DumpOptions {
            sort_keys: true,
            ensure_ascii: true,
            ..o.clone()
        };
        assert_eq!(
            dumps(&x, &sorted).unwrap(),
            r#"{"a": "\u00e9\n\"x\"", "b": [1, 2.5, null, true]}"#
        );
        // json.dumps({"a": [1, {}], "b": []}, indent=2)
        let ind = DumpOptions {
            indent: Some("  ".into()),
            item_sep: ",".into(),
            ..o
        };
        assert_eq!(
            dumps(&v(r#"{"a": [1, {}], "b": []}"#), &ind).unwrap(),
            "{\n  \"a\": [\n    1,\n    {}\n  ],\n  \"b\": []\n}"
        );
    }

    #[test]
    fn floats_follow_python_repr() {
        for (x, want) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (1e16, "1e+16"),
            (123456.789, "123456.789"),
            (-2.5e-7, "-2.5e-07"),
            (1e15, "1000000000000000.0"),
        ] {
            assert_eq!(float_repr(x), want, "{x}");
        }
    }

    #[test]
    fn the_filter_reads_transformers_arguments() {
        let mut env = minijinja::Environment::new();
        env.add_filter("tojson", tojson_filter);
        let out = env
            .render_str(
                "{{ x|tojson }}|{{ x|tojson(indent=1) }}|{{ x|tojson(separators=(',', ':')) }}",
                minijinja::context! { x => v(r#"{"k": ["<a&b>"]}"#) },
            )
            .unwrap();
        assert_eq!(
            out,
            "{\"k\": [\"<a&b>\"]}|{\n \"k\": [\n  \"<a&b>\"\n ]\n}|{\"k\":[\"<a&b>\"]}"
        );
    }
}
