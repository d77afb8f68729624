//! Chat templates (`tokenizer.chat_template`, HF Jinja) rendered with minijinja.
//!
//! The environment mimics `transformers`' `apply_chat_template`:
//! - `trim_blocks` and `lstrip_blocks` on, trailing newline dropped;
//! - globals `messages`, `add_generation_prompt`, `bos_token`, `eos_token`, `unk_token`,
//!   `pad_token`, `tools` and `documents` (none unless given), functions `raise_exception(msg)` (fails the render with `msg`) and
//!   `strftime_now(fmt)` (UTC clock, or the time fixed by [`ChatTemplate::with_now`]);
//! - Python string/dict/list methods (`.strip()`, `.startswith()`, `.split()`, `.items()`,
//!   `.get()`, …) via `minijinja-contrib`'s pycompat;
//! - `tojson` is Python's `json.dumps` (separators `", "`/`": "`, no HTML escaping, non-ASCII kept,
//!   `indent`, `sort_keys`, `ensure_ascii` honoured), not minijinja's HTML-safe variant.
//!
//! Invariant: rendering never panics; template errors (syntax, `raise_exception`, undefined
//! attribute access) come back as [`TokenizerError::Template`].

use minijinja::value::{Kwargs, Rest, ValueKind};
use minijinja::{Environment, Error, ErrorKind, Value};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::TokenizerError;

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
    pub fn system(content: impl Into<String>) -> ChatMessage {
        ChatMessage::new("system", content)
    }
    pub fn user(content: impl Into<String>) -> ChatMessage {
        ChatMessage::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> ChatMessage {
        ChatMessage::new("assistant", content)
    }
}

const NAME: &str = "chat_template";

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// Unix seconds for `strftime_now`; `i64::MIN` = read the system clock.
    now: Arc<AtomicI64>,
    bos_token: String,
    eos_token: String,
    unk_token: String,
    pad_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

fn template_err(e: Error) -> TokenizerError {
    // Include the chain of causes (minijinja puts details in `source`).
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        let _ = write!(msg, ": {s}");
        src = s.source();
    }
    TokenizerError::Template(msg)
}

impl ChatTemplate {
    /// Compile `source`. Special-token strings default to empty; see
    /// [`ChatTemplate::with_special_tokens`] ([`super::Tokenizer::chat_template`] sets them).
    pub fn new(source: &str) -> Result<ChatTemplate, TokenizerError> {
        let now = Arc::new(AtomicI64::new(i64::MIN));
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        let clock = Arc::clone(&now);
        env.add_function("strftime_now", move |fmt: String| -> Result<Value, Error> {
            let fixed = clock.load(Ordering::Relaxed);
            let secs = if fixed == i64::MIN {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0)
            } else {
                fixed
            };
            Ok(Value::from(strftime(&fmt, secs)))
        });
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, source.to_string())
            .map_err(template_err)?;
        Ok(ChatTemplate {
            env,
            now,
            bos_token: String::new(),
            eos_token: String::new(),
            unk_token: String::new(),
            pad_token: String::new(),
        })
    }

    /// Bind the special-token strings the template may use (`bos_token`, …).
    pub fn with_special_tokens(
        mut self,
        bos: &str,
        eos: &str,
        unk: &str,
        pad: &str,
    ) -> ChatTemplate {
        self.bos_token = bos.to_string();
        self.eos_token = eos.to_string();
        self.unk_token = unk.to_string();
        self.pad_token = pad.to_string();
        self
    }

    /// Fix the clock `strftime_now` reads (Unix seconds, UTC), for reproducible prompts.
    pub fn with_now(self, unix_secs: i64) -> ChatTemplate {
        self.now
            .store(unix_secs.max(i64::MIN + 1), Ordering::Relaxed);
        self
    }

    /// Render a conversation. `add_generation_prompt` appends the assistant header.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        self.render_with(messages, add_generation_prompt, &serde_json::Value::Null)
    }

    /// [`ChatTemplate::render`] with extra template variables from a JSON object (e.g.
    /// `{"reasoning_effort": "high"}` for gpt-oss); they override the defaults. Object keys
    /// arrive in `serde_json`'s order (sorted, as the crate builds serde_json without
    /// `preserve_order`); maps built inside the template keep their insertion order.
    pub fn render_with(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        extra: &serde_json::Value,
    ) -> Result<String, TokenizerError> {
        let msgs: Vec<Value> = messages
            .iter()
            .map(|m| {
                Value::from_iter([
                    ("role", Value::from(m.role.as_str())),
                    ("content", Value::from(m.content.as_str())),
                ])
            })
            .collect();
        let mut ctx: Vec<(String, Value)> = vec![
            ("messages".into(), Value::from(msgs)),
            (
                "add_generation_prompt".into(),
                Value::from(add_generation_prompt),
            ),
            ("bos_token".into(), Value::from(self.bos_token.as_str())),
            ("eos_token".into(), Value::from(self.eos_token.as_str())),
            ("unk_token".into(), Value::from(self.unk_token.as_str())),
            ("pad_token".into(), Value::from(self.pad_token.as_str())),
            // transformers passes these as None when the caller gives none.
            ("tools".into(), Value::from(())),
            ("documents".into(), Value::from(())),
        ];
        if let serde_json::Value::Object(map) = extra {
            for (k, v) in map {
                ctx.retain(|(name, _)| name != k);
                ctx.push((k.clone(), Value::from_serialize(v)));
            }
        }
        let ctx = Value::from_iter(ctx);
        let tmpl = self.env.get_template(NAME).map_err(template_err)?;
        tmpl.render(ctx).map_err(template_err)
    }
}

// ------------------------------------------------------------------------------------------------
// tojson (Python json.dumps)
// ------------------------------------------------------------------------------------------------

fn tojson(value: &Value, args: Rest<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    let mut indent: Option<Value> = args.first().cloned();
    if indent.is_none() {
        indent = kwargs.get::<Option<Value>>("indent")?;
    }
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match v.as_i64() {
            Some(n) => Some(" ".repeat(n.max(0) as usize)),
            None => Some(v.as_str().unwrap_or("").to_string()),
        },
    };
    let ensure_ascii = kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false);
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    let _ = kwargs.get::<Option<Value>>("separators")?;
    kwargs.assert_all_used()?;
    let opts = JsonOpts {
        indent,
        ensure_ascii,
        sort_keys,
    };
    let mut out = String::new();
    write_json(&mut out, value, &opts, 0)?;
    Ok(Value::from_safe_string(out))
}

struct JsonOpts {
    indent: Option<String>,
    ensure_ascii: bool,
    sort_keys: bool,
}

fn write_json_str(out: &mut String, s: &str, ensure_ascii: bool) {
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
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if ensure_ascii && (c as u32) > 0x7E => {
                let mut buf = [0u16; 2];
                for u in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{u:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn python_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    if f == f.trunc() && f.abs() < 1e16 {
        return format!("{f:.1}");
    }
    let s = format!("{f:?}");
    match s.split_once('e') {
        Some((m, e)) if !e.starts_with('-') => format!("{m}e+{e:0>2}"),
        Some((m, e)) => format!("{m}e-{:0>2}", &e[1..]),
        None => s,
    }
}

fn newline(out: &mut String, opts: &JsonOpts, depth: usize) {
    if let Some(ind) = &opts.indent {
        out.push('\n');
        for _ in 0..depth {
            out.push_str(ind);
        }
    }
}

fn write_json(out: &mut String, v: &Value, opts: &JsonOpts, depth: usize) -> Result<(), Error> {
    if depth > 128 {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "tojson: value nested too deeply",
        ));
    }
    let item_sep = if opts.indent.is_some() { "," } else { ", " };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if v.is_integer() {
                let _ = write!(out, "{v}");
            } else {
                let f = f64::try_from(v.clone()).unwrap_or(f64::NAN);
                out.push_str(&python_float(f));
            }
        }
        ValueKind::String => write_json_str(out, v.as_str().unwrap_or(""), opts.ensure_ascii),
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if opts.sort_keys {
                keys.sort();
            }
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, opts, depth + 1);
                match k.as_str() {
                    Some(s) => write_json_str(out, s, opts.ensure_ascii),
                    None => write_json_str(out, &k.to_string(), opts.ensure_ascii),
                }
                out.push_str(": ");
                write_json(out, &v.get_item(k)?, opts, depth + 1)?;
            }
            newline(out, opts, depth);
            out.push('}');
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, it) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, opts, depth + 1);
                write_json(out, it, opts, depth + 1)?;
            }
            newline(out, opts, depth);
            out.push(']');
        }
        _ => write_json_str(out, &v.to_string(), opts.ensure_ascii),
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// strftime (UTC)
// ------------------------------------------------------------------------------------------------

/// Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

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
const DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// Python `datetime.strftime` for the common directives (`%Y %m %d %H %M %S %y %b %B %a %A %j
/// %e %p %I %%`); others are copied through verbatim.
pub(crate) fn strftime(fmt: &str, unix_secs: i64) -> String {
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (secs / 3600, secs / 60 % 60, secs % 60);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let doy = days - days_from_civil(y, 1, 1) + 1;
    let mut out = String::with_capacity(fmt.len() + 16);
    let mut it = fmt.chars();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('Y') => {
                let _ = write!(out, "{y:04}");
            }
            Some('y') => {
                let _ = write!(out, "{:02}", y.rem_euclid(100));
            }
            Some('m') => {
                let _ = write!(out, "{m:02}");
            }
            Some('d') => {
                let _ = write!(out, "{d:02}");
            }
            Some('e') => {
                let _ = write!(out, "{d:>2}");
            }
            Some('H') => {
                let _ = write!(out, "{hh:02}");
            }
            Some('I') => {
                let h12 = if hh % 12 == 0 { 12 } else { hh % 12 };
                let _ = write!(out, "{h12:02}");
            }
            Some('p') => out.push_str(if hh < 12 { "AM" } else { "PM" }),
            Some('M') => {
                let _ = write!(out, "{mm:02}");
            }
            Some('S') => {
                let _ = write!(out, "{ss:02}");
            }
            Some('j') => {
                let _ = write!(out, "{doy:03}");
            }
            Some('B') => out.push_str(MONTHS[(m - 1) as usize]),
            Some('b') => out.push_str(&MONTHS[(m - 1) as usize][..3]),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 } as i64;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_formats_utc_dates() {
        // 2025-08-05 12:34:56 UTC, a Tuesday.
        let t = 1_754_397_296;
        assert_eq!(strftime("%Y-%m-%d", t), "2025-08-05");
        assert_eq!(
            strftime("%d %b %Y %H:%M:%S %a %j %%", t),
            "05 Aug 2025 12:34:56 Tue 217 %"
        );
        assert_eq!(strftime("%B %A %I%p %y", t), "August Tuesday 12PM 25");
        assert_eq!(strftime("%Y-%m-%d", 0), "1970-01-01");
        assert_eq!(strftime("%Y-%m-%d", 951_782_400), "2000-02-29");
        assert_eq!(strftime("%Y-%m-%d %H", -1), "1969-12-31 23");
        for days in [-800_000i64, -1, 0, 59, 10_957, 20_000, 800_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn tojson_is_python_json_dumps() {
        let t = ChatTemplate::new(
            "{% set x = {'b': [1, true, 's'], 'a': {}} %}{{ x | tojson }}|{{ x | tojson(indent=2) }}|{{ 'é<\"\\n' | tojson }}|{{ 'é' | tojson(ensure_ascii=true) }}|{{ 1.5 | tojson }}|{{ none | tojson }}|{{ x | tojson(sort_keys=true) }}|{{ y | tojson }}",
        )
        .unwrap();
        let out = t
            .render_with(&[], false, &serde_json::json!({"y": {"z": 1, "k": [null]}}))
            .unwrap();
        assert_eq!(
            out,
            "{\"b\": [1, true, \"s\"], \"a\": {}}|{\n  \"b\": [\n    1,\n    true,\n    \"s\"\n  ],\n  \"a\": {}\n}|\"é<\\\"\\n\"|\"\\u00e9\"|1.5|null|{\"a\": {}, \"b\": [1, true, \"s\"]}|{\"k\": [null], \"z\": 1}"
        );
        assert_eq!(python_float(1e20), "1e+20");
        assert_eq!(python_float(2.0), "2.0");
        assert_eq!(python_float(1e-7), "1e-07");
    }

    #[test]
    fn python_methods_and_errors() {
        let t = ChatTemplate::new(
            "{% for m in messages %}{{ m['content'].strip() }}{% if m.role.startswith('us') %}U{% endif %}{% endfor %}{{ bos_token }}",
        )
        .unwrap()
        .with_special_tokens("<s>", "</s>", "", "");
        assert_eq!(
            t.render(&[ChatMessage::user("  hi \n")], false).unwrap(),
            "hiU<s>"
        );
        let bad = ChatTemplate::new("{{ raise_exception('no system role') }}").unwrap();
        match bad.render(&[], false) {
            Err(TokenizerError::Template(m)) => assert!(m.contains("no system role"), "{m}"),
            other => panic!("expected a template error, got {other:?}"),
        }
        assert!(matches!(
            ChatTemplate::new("{% if %}"),
            Err(TokenizerError::Template(_))
        ));
        let ns = ChatTemplate::new("{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}").unwrap();
        assert_eq!(
            ns.render(&[ChatMessage::user("a"), ChatMessage::user("b")], false)
                .unwrap(),
            "2"
        );
    }

    #[test]
    fn trim_and_lstrip_blocks_like_hf() {
        let t = ChatTemplate::new("{% for m in messages %}\n  {{ m.content }}\n{% endfor %}\n")
            .unwrap();
        assert_eq!(
            t.render(&[ChatMessage::user("a"), ChatMessage::user("b")], false)
                .unwrap(),
            "  a\n  b\n"
        );
    }
}
