//! Writing the imported policy as YAML text with comments that point at the source
//! fields. Owns quoting and layout; it must not decide what is mapped.

use std::fmt::Write as _;

/// A YAML value to write.
#[derive(Clone, Debug)]
pub(super) enum Y {
    /// A scalar or flow value, already written (`30s`, `"a b"`, `{max: 1}`).
    Raw(String),
    /// A block mapping.
    Map(Vec<E>),
    /// A block sequence, each item with an optional comment.
    Seq(Vec<(Y, Option<String>)>),
}

/// A mapping entry with an optional comment.
#[derive(Clone, Debug)]
pub(super) struct E {
    pub key: String,
    pub val: Y,
    pub comment: Option<String>,
}

/// An entry without a comment.
pub(super) fn e(key: &str, val: Y) -> E {
    E {
        key: key.to_string(),
        val,
        comment: None,
    }
}

/// An entry with a comment.
pub(super) fn ec(key: &str, val: Y, comment: impl Into<String>) -> E {
    E {
        key: key.to_string(),
        val,
        comment: Some(comment.into()),
    }
}

/// A string value, quoted when YAML could read it as anything else.
pub(super) fn s(text: &str) -> Y {
    Y::Raw(quote(text))
}

/// A value written as is (numbers, durations, flow mappings).
pub(super) fn raw(text: impl Into<String>) -> Y {
    Y::Raw(text.into())
}

/// A number, without a trailing `.0`.
pub(super) fn n(v: f64) -> Y {
    Y::Raw(number(v))
}

/// A number as YAML reads it back.
pub(super) fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// A list of strings, in flow style.
pub(super) fn list(items: &[String]) -> Y {
    Y::Raw(format!(
        "[{}]",
        items
            .iter()
            .map(|i| quote(i))
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// `text` as a YAML scalar: plain when it is a simple word that YAML reads back as
/// the same string, double-quoted (JSON escapes) otherwise.
pub(super) fn quote(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        && text.starts_with(|c: char| c.is_ascii_alphabetic())
        && !matches!(
            text.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off" | "null" | "y" | "n"
        );
    if plain {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One line of comment text: no line breaks.
fn one_line(c: &str) -> String {
    c.replace(['\n', '\r'], " ")
}

fn line(out: &mut String, pad: usize, text: &str, comment: Option<&String>) {
    out.push_str(&" ".repeat(pad));
    out.push_str(text);
    if let Some(c) = comment {
        out.push_str("  # ");
        out.push_str(&one_line(c));
    }
    out.push('\n');
}

fn comment_line(out: &mut String, pad: usize, comment: Option<&String>) {
    if let Some(c) = comment {
        out.push_str(&" ".repeat(pad));
        out.push_str("# ");
        out.push_str(&one_line(c));
        out.push('\n');
    }
}

/// Writes a block mapping at `pad` spaces.
pub(super) fn write_map(out: &mut String, entries: &[E], pad: usize) {
    for en in entries {
        let key = quote(&en.key);
        match &en.val {
            Y::Raw(v) => line(out, pad, &format!("{key}: {v}"), en.comment.as_ref()),
            Y::Map(m) if m.is_empty() => {
                line(out, pad, &format!("{key}: {{}}"), en.comment.as_ref())
            }
            Y::Seq(v) if v.is_empty() => line(out, pad, &format!("{key}: []"), en.comment.as_ref()),
            Y::Map(m) => {
                comment_line(out, pad, en.comment.as_ref());
                line(out, pad, &format!("{key}:"), None);
                write_map(out, m, pad + 2);
            }
            Y::Seq(items) => {
                comment_line(out, pad, en.comment.as_ref());
                line(out, pad, &format!("{key}:"), None);
                write_seq(out, items, pad + 2);
            }
        }
    }
}

fn write_seq(out: &mut String, items: &[(Y, Option<String>)], pad: usize) {
    for (item, comment) in items {
        match item {
            Y::Raw(v) => line(out, pad, &format!("- {v}"), comment.as_ref()),
            Y::Map(m) if m.is_empty() => line(out, pad, "- {}", comment.as_ref()),
            Y::Map(m) => {
                comment_line(out, pad, comment.as_ref());
                let mut inner = String::new();
                write_map(&mut inner, m, pad + 2);
                // The first entry (after its own comment lines) goes on the dash's line.
                let mut dashed = false;
                for l in inner.lines() {
                    if !dashed && !l.trim_start().starts_with('#') {
                        out.push_str(&" ".repeat(pad));
                        out.push_str("- ");
                        out.push_str(l.get(pad + 2..).unwrap_or(l.trim_start()));
                        dashed = true;
                    } else {
                        out.push_str(l);
                    }
                    out.push('\n');
                }
            }
            Y::Seq(inner) => {
                comment_line(out, pad, comment.as_ref());
                line(out, pad, "-", None);
                write_seq(out, inner, pad + 2);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_what_yaml_would_read_as_something_else() {
        assert_eq!(quote("checkout"), "checkout");
        assert_eq!(quote("on"), "\"on\"");
        assert_eq!(quote("10"), "\"10\"");
        assert_eq!(quote("a: b"), "\"a: b\"");
        assert_eq!(quote("say \"hi\"\n"), "\"say \\\"hi\\\"\\n\"");
        assert_eq!(quote(""), "\"\"");
    }

    #[test]
    fn writes_block_yaml_that_parses_back() {
        let doc = vec![
            ec("service", s("demo"), "from Rollout demo"),
            e(
                "steps",
                Y::Seq(vec![
                    (
                        Y::Map(vec![ec("weight", n(20.0), "w"), e("bake", raw("30s"))]),
                        Some("from steps[0]".into()),
                    ),
                    (raw("{approval: approver}"), None),
                ]),
            ),
        ];
        let mut out = String::new();
        write_map(&mut out, &doc, 0);
        let node = crate::yaml::parse(&out).unwrap();
        let steps = super::super::tree::get(&node, "steps").unwrap();
        assert_eq!(super::super::tree::items(steps).len(), 2, "{out}");
        assert!(out.contains("  - weight: 20  # w\n"), "{out}");
    }
}
