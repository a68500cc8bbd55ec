//! Typed decoding of a [`Node`] tree that collects every problem, not just the first.
//!
//! Owns the mechanics of turning nodes into values: field lookup, unknown-field
//! detection, type errors and the "did you mean" hints. It must not hold policy rules;
//! those live with the policy types that call into it.

use std::fmt;

use crate::yaml::{Key, Node, NodeKind, Pos};

/// One problem found in a policy file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    /// Where the problem is.
    pub line: u32,
    /// Column of the problem.
    pub col: u32,
    /// The field path, such as `strategy.canary.steps[1].weight`.
    pub path: String,
    /// What is wrong, and what would be valid.
    pub message: String,
}

impl Diagnostic {
    /// A diagnostic at `pos` for `path`.
    pub fn new(pos: Pos, path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            line: pos.line,
            col: pos.col,
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}:{}: {}", self.line, self.col, self.message)
        } else {
            write!(
                f,
                "{}:{}: {}: {}",
                self.line, self.col, self.path, self.message
            )
        }
    }
}

/// Collects diagnostics while values are decoded.
#[derive(Debug, Default)]
pub struct Decoder {
    diagnostics: Vec<Diagnostic>,
    /// Problems that refuse a new release but not one already under way, whose
    /// stored policy an older rampart accepted (rules added since, see
    /// [`Decoder::refuse_new`]).
    for_new: Vec<Diagnostic>,
    /// Whether the policy is a release's stored one, taken up again: `for_new` is
    /// then no error.
    stored: bool,
}

impl Decoder {
    /// A decoder for a release's stored policy (see [`Decoder::refuse_new`]).
    pub fn stored() -> Decoder {
        Decoder {
            stored: true,
            ..Decoder::default()
        }
    }

    /// Records a problem.
    pub fn error(&mut self, pos: Pos, path: &str, message: impl Into<String>) {
        self.diagnostics.push(Diagnostic::new(pos, path, message));
    }

    /// Records a problem that refuses a new release, but not the resume of one an
    /// older rampart started with this policy: it would be left unfinished, traffic
    /// where it stood, with nothing able to finish it.
    pub fn refuse_new(&mut self, pos: Pos, path: &str, message: impl Into<String>) {
        let d = Diagnostic::new(pos, path, message);
        if self.stored {
            self.for_new.push(d);
        } else {
            self.diagnostics.push(d);
        }
    }

    /// Whether anything has gone wrong so far.
    pub fn has_errors(&self) -> bool {
        !self.diagnostics.is_empty()
    }

    /// Everything found, sorted by position.
    pub fn finish(mut self) -> Vec<Diagnostic> {
        self.diagnostics
            .sort_by(|a, b| (a.line, a.col, &a.path).cmp(&(b.line, b.col, &b.path)));
        self.diagnostics.dedup();
        self.diagnostics
    }

    /// Opens `node` as a mapping whose only allowed keys are `known`. Unknown keys are
    /// reported at once, with the closest known key as a hint.
    pub fn map<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
        known: &'static [&'static str],
    ) -> Option<MapReader<'n>> {
        let NodeKind::Map(entries) = &node.kind else {
            self.error(
                node.pos,
                path,
                format!(
                    "expected a mapping with fields {}, found {}",
                    list(known),
                    node.type_name()
                ),
            );
            return None;
        };
        for (key, _) in entries {
            if !known.contains(&key.text.as_str()) {
                let hint = match closest(&key.text, known) {
                    Some(best) => format!("; did you mean `{best}`?"),
                    None => String::new(),
                };
                self.error(
                    key.pos,
                    &join(path, &key.text),
                    format!(
                        "unknown field `{}`{hint} valid fields here: {}",
                        key.text,
                        list(known)
                    ),
                );
            }
        }
        Some(MapReader {
            node,
            entries,
            path: path.to_string(),
        })
    }

    /// Decodes `node` as a list of `T`. A single value is not promoted to a list.
    pub fn seq<T>(
        &mut self,
        node: &Node,
        path: &str,
        mut item: impl FnMut(&mut Self, &Node, &str) -> Option<T>,
    ) -> Option<Vec<T>> {
        let NodeKind::Seq(items) = &node.kind else {
            self.error(
                node.pos,
                path,
                format!("expected a list, found {}", node.type_name()),
            );
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, child) in items.iter().enumerate() {
            match item(self, child, &format!("{path}[{i}]")) {
                Some(v) => out.push(v),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// Decodes `node` with `T`'s [`Decode`] impl.
    pub fn value<T: Decode>(&mut self, node: &Node, path: &str) -> Option<T> {
        T::decode(self, node, path)
    }
}

/// A mapping opened by [`Decoder::map`].
#[derive(Debug)]
pub struct MapReader<'n> {
    node: &'n Node,
    entries: &'n [(Key, Node)],
    path: String,
}

impl<'n> MapReader<'n> {
    /// The node for `key`, if present.
    pub fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, _)| k.text == key)
            .map(|(_, v)| v)
    }

    /// The path of `key` inside this mapping.
    pub fn path_of(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// Where the mapping starts.
    pub fn pos(&self) -> Pos {
        self.node.pos
    }

    /// The path of the mapping itself.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Which of `keys` are present, in the given order: a key written with no value
    /// (`webhook: ~`) counts, so a choice between keys sees what was written, and the
    /// key's own decoding says it has no value.
    pub fn present(&self, keys: &[&'static str]) -> Vec<&'static str> {
        keys.iter()
            .copied()
            .filter(|k| self.get(k).is_some())
            .collect()
    }

    /// Decodes a field that must be there.
    pub fn required<T: Decode>(&self, cx: &mut Decoder, key: &str) -> Option<T> {
        self.required_with(cx, key, T::decode)
    }

    /// Decodes a field that may be absent. A present but invalid value is reported and
    /// yields `None`, so callers can fall back to a default while the error stands.
    pub fn optional<T: Decode>(&self, cx: &mut Decoder, key: &str) -> Option<T> {
        let node = self.get(key)?;
        if node.kind == NodeKind::Null {
            return None;
        }
        T::decode(cx, node, &self.path_of(key))
    }

    /// Decodes a field with a custom function, if present.
    pub fn optional_with<T>(
        &self,
        cx: &mut Decoder,
        key: &str,
        f: impl FnOnce(&mut Decoder, &Node, &str) -> Option<T>,
    ) -> Option<T> {
        let node = self.get(key)?;
        f(cx, node, &self.path_of(key))
    }

    /// Decodes a required field with a custom function.
    pub fn required_with<T>(
        &self,
        cx: &mut Decoder,
        key: &str,
        f: impl FnOnce(&mut Decoder, &Node, &str) -> Option<T>,
    ) -> Option<T> {
        match self.get(key) {
            Some(node) => f(cx, node, &self.path_of(key)),
            None => {
                cx.error(
                    self.node.pos,
                    &self.path_of(key),
                    format!("missing required field `{key}`"),
                );
                None
            }
        }
    }
}

/// A type that can be decoded from a node, reporting problems into the [`Decoder`].
pub trait Decode: Sized {
    /// Decodes `node` found at `path`; on failure, records why and returns `None`.
    fn decode(cx: &mut Decoder, node: &Node, path: &str) -> Option<Self>;
}

/// The text of a scalar node, or an error naming what was expected.
pub fn scalar<'n>(cx: &mut Decoder, node: &'n Node, path: &str, expected: &str) -> Option<&'n str> {
    match &node.kind {
        NodeKind::Scalar { text, .. } => Some(text),
        _ => {
            cx.error(
                node.pos,
                path,
                format!("expected {expected}, found {}", node.type_name()),
            );
            None
        }
    }
}

impl Decode for String {
    fn decode(cx: &mut Decoder, node: &Node, path: &str) -> Option<Self> {
        scalar(cx, node, path, "a string").map(str::to_string)
    }
}

impl Decode for bool {
    fn decode(cx: &mut Decoder, node: &Node, path: &str) -> Option<Self> {
        match scalar(cx, node, path, "true or false")? {
            "true" => Some(true),
            "false" => Some(false),
            other => {
                cx.error(
                    node.pos,
                    path,
                    format!("expected true or false, found `{other}`"),
                );
                None
            }
        }
    }
}

macro_rules! decode_int {
    ($($t:ty),*) => {$(
        impl Decode for $t {
            fn decode(cx: &mut Decoder, node: &Node, path: &str) -> Option<Self> {
                let text = scalar(cx, node, path, "a whole number")?;
                match text.trim().parse::<$t>() {
                    Ok(v) => Some(v),
                    Err(_) => {
                        cx.error(
                            node.pos,
                            path,
                            format!(
                                "expected a whole number between {} and {}, found `{text}`",
                                <$t>::MIN,
                                <$t>::MAX
                            ),
                        );
                        None
                    }
                }
            }
        }
    )*};
}
decode_int!(u16, u32, u64);

impl Decode for f64 {
    fn decode(cx: &mut Decoder, node: &Node, path: &str) -> Option<Self> {
        let text = scalar(cx, node, path, "a number")?;
        match text.trim().parse::<f64>() {
            Ok(v) if v.is_finite() => Some(v),
            _ => {
                cx.error(
                    node.pos,
                    path,
                    format!("expected a finite number, found `{text}`"),
                );
                None
            }
        }
    }
}

impl<T: Decode> Decode for Vec<T> {
    fn decode(cx: &mut Decoder, node: &Node, path: &str) -> Option<Self> {
        cx.seq(node, path, |cx, n, p| T::decode(cx, n, p))
    }
}

/// Decodes a scalar that must be one of `allowed`.
pub fn one_of(
    cx: &mut Decoder,
    node: &Node,
    path: &str,
    allowed: &'static [&'static str],
) -> Option<&'static str> {
    let text = scalar(cx, node, path, &format!("one of {}", list(allowed)))?;
    if let Some(found) = allowed.iter().find(|a| **a == text) {
        return Some(found);
    }
    let hint = match closest(text, allowed) {
        Some(best) => format!("; did you mean `{best}`?"),
        None => String::new(),
    };
    cx.error(
        node.pos,
        path,
        format!(
            "`{text}` is not valid{hint} expected one of {}",
            list(allowed)
        ),
    );
    None
}

/// `a.b` path joining that tolerates an empty root.
pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Formats a list of names as `` `a`, `b` or `c` ``.
pub fn list(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    match quoted.len() {
        0 => String::from("(none)"),
        1 => quoted[0].clone(),
        n => format!("{} or {}", quoted[..n - 1].join(", "), quoted[n - 1]),
    }
}

/// The known name closest to `word`, if it is close enough to be a likely typo.
pub fn closest<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (edit_distance(&word, k), *k))
        .filter(|(d, k)| *d <= (k.len().max(word.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Optimal-string-alignment distance: Levenshtein plus adjacent transpositions, so
/// `wieght` is one edit from `weight`.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::parse;

    #[test]
    fn unknown_field_suggests_the_closest_known_one() {
        let node = parse("wieght: 5\n").unwrap();
        let mut cx = Decoder::default();
        cx.map(&node, "step", &["weight", "bake"]);
        let d = cx.finish();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].path, "step.wieght");
        assert!(d[0].message.contains("did you mean `weight`"), "{}", d[0]);
    }

    #[test]
    fn far_off_names_get_no_suggestion() {
        assert_eq!(closest("zzzzzz", &["weight", "bake"]), None);
        assert_eq!(closest("bak", &["weight", "bake"]), Some("bake"));
    }

    #[test]
    fn integers_out_of_range_are_reported() {
        let node = parse("70000").unwrap();
        let mut cx = Decoder::default();
        assert_eq!(cx.value::<u16>(&node, "x"), None);
        assert!(cx.finish()[0].message.contains("between 0 and 65535"));
    }
}
