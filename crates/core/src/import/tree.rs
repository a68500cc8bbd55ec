//! Reading Kubernetes manifests as [`Node`] trees: the documents of each file, what
//! kind of object each is, and small accessors. Owns no mapping.

use crate::yaml::{Key, Node, NodeKind, Pos};

/// One object of the input: a document of a file.
#[derive(Clone, Debug)]
pub(super) struct Doc {
    /// The file, as the caller named it.
    pub file: String,
    /// The document's index in its file, from 0.
    pub index: usize,
    /// `apiVersion`.
    pub api: String,
    /// `kind`.
    pub kind: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`, if set.
    pub namespace: Option<String>,
    /// The whole document.
    pub node: Node,
}

impl Doc {
    /// `Rollout demo`: how comments and reports name the object.
    pub fn label(&self) -> String {
        format!("{} {}", self.kind, self.name)
    }

    /// Whether the object is `kind` of the API group `group`.
    pub fn is(&self, group: &str, kind: &str) -> bool {
        self.kind == kind && self.api.split('/').next() == Some(group)
    }
}

/// What a reference to an object by name finds among the inputs.
#[derive(Debug)]
pub(super) enum Found<'d> {
    /// The one object the cluster would use.
    One(&'d Doc),
    /// None; the namespaces an object of that kind and name is in, if any.
    Missing(Vec<String>),
    /// Two objects the reference could mean (the same name in one namespace, or twice
    /// with no namespace): which one the cluster holds depends on the order they were
    /// applied in, so the import names both instead of guessing.
    Twice(&'d Doc, &'d Doc),
}

/// The object of `kind` in API `group` named `name` that a reference from namespace
/// `namespace` resolves to, as the cluster resolves it: in that namespace (`None`: a
/// cluster-scoped kind, or a referrer whose namespace is not written: found by name
/// alone). A manifest without a namespace is
/// applied into the namespace `kubectl` is given, so it stands for any, behind one
/// that names the namespace.
pub(super) fn resolve<'d>(
    docs: &'d [Doc],
    group: &str,
    kind: &str,
    name: &str,
    namespace: Option<&str>,
) -> Found<'d> {
    let mut named: Vec<&Doc> = docs
        .iter()
        .filter(|d| d.is(group, kind) && d.name == name)
        .collect();
    // The same file given twice holds the same object once.
    named.sort_by(|a, b| (&a.file, a.index).cmp(&(&b.file, b.index)));
    named.dedup_by(|a, b| (&a.file, a.index) == (&b.file, b.index));
    let unplaced = || -> Vec<&Doc> {
        named
            .iter()
            .copied()
            .filter(|d| d.namespace.is_none())
            .collect()
    };
    // Where the reference looks first, then where else it may be.
    let (first, then): (Vec<&Doc>, Vec<&Doc>) = match namespace {
        Some(ns) => (
            named
                .iter()
                .copied()
                .filter(|d| d.namespace.as_deref() == Some(ns))
                .collect(),
            unplaced(),
        ),
        // Applied beside the referrer, most likely; else wherever it is.
        None => (unplaced(), named.clone()),
    };
    let pool = if first.is_empty() { then } else { first };
    match pool.as_slice() {
        [one] => Found::One(one),
        [a, b, ..] => Found::Twice(a, b),
        [] => {
            let mut elsewhere: Vec<String> =
                named.iter().filter_map(|d| d.namespace.clone()).collect();
            elsewhere.sort();
            elsewhere.dedup();
            Found::Missing(elsewhere)
        }
    }
}

/// What a missing reference's message adds when an object of its name is in other
/// `namespaces` (`Found::Missing`): nothing when it is nowhere.
pub(super) fn found_elsewhere(name: &str, namespaces: &[String], looked_in: &str) -> String {
    if namespaces.is_empty() {
        return String::new();
    }
    format!(
        "; a `{name}` is in namespace {}, not {looked_in}",
        namespaces.join(", ")
    )
}

/// Why a reference finding `a` and `b` is refused, for `referrer` (`this Rollout`).
pub(super) fn twice(name: &str, referrer: &str, a: &Doc, b: &Doc) -> String {
    let at = |d: &Doc| format!("{} document {}", d.file, d.index);
    match (&a.namespace, &b.namespace) {
        (Some(x), Some(y)) if x != y => format!(
            "`{name}` is in namespace {x} ({}) and in {y} ({}), and {referrer} names no namespace to choose by: give it its namespace, or pass only the one in force",
            at(a),
            at(b)
        ),
        _ => format!(
            "`{name}` is defined twice where {referrer} would find it ({} and {}); which one the cluster holds depends on the order they were applied: pass only the one in force",
            at(a),
            at(b)
        ),
    }
}

/// The value under `key` of a mapping.
pub(super) fn get<'a>(n: &'a Node, key: &str) -> Option<&'a Node> {
    entries(n)
        .iter()
        .find(|(k, _)| k.text == key)
        .map(|(_, v)| v)
}

/// The value at a path of keys.
pub(super) fn at<'a>(n: &'a Node, keys: &[&str]) -> Option<&'a Node> {
    keys.iter().try_fold(n, |n, k| get(n, k))
}

/// A scalar's text.
pub(super) fn text(n: &Node) -> Option<&str> {
    match &n.kind {
        NodeKind::Scalar { text, .. } => Some(text),
        _ => None,
    }
}

/// The scalar text at `key`.
pub(super) fn str_at<'a>(n: &'a Node, key: &str) -> Option<&'a str> {
    get(n, key).and_then(text)
}

/// A mapping's entries (none for anything else).
pub(super) fn entries(n: &Node) -> &[(Key, Node)] {
    match &n.kind {
        NodeKind::Map(e) => e,
        _ => &[],
    }
}

/// A sequence's items (none for anything else).
pub(super) fn items(n: &Node) -> &[Node] {
    match &n.kind {
        NodeKind::Seq(v) => v,
        _ => &[],
    }
}

/// A whole number (`30`, `"30"`).
pub(super) fn int(n: &Node) -> Option<i64> {
    text(n).and_then(|t| t.trim().parse().ok())
}

/// A number (`0.95`, `"95"`).
pub(super) fn num(n: &Node) -> Option<f64> {
    text(n)
        .and_then(|t| t.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite())
}

/// `true`/`false`.
pub(super) fn boolean(n: &Node) -> Option<bool> {
    match text(n)? {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

/// Where a node starts; a missing node is at the start of its document.
pub(super) fn pos_of(n: Option<&Node>) -> Pos {
    n.map_or(Pos { line: 1, col: 1 }, |n| n.pos)
}

/// Classifies a parsed document; `None` for an empty one or one that is no object.
pub(super) fn classify(file: &str, index: usize, node: Node) -> Option<Doc> {
    let kind = str_at(&node, "kind")?.to_string();
    let api = str_at(&node, "apiVersion").unwrap_or_default().to_string();
    let meta = get(&node, "metadata");
    let name = meta
        .and_then(|m| str_at(m, "name"))
        .unwrap_or_default()
        .to_string();
    let namespace = meta.and_then(|m| str_at(m, "namespace")).map(String::from);
    Some(Doc {
        file: file.to_string(),
        index,
        api,
        kind,
        name,
        namespace,
        node,
    })
}

/// A Go duration (`30s`, `1m30s`, `1.5h`, `250ms`) or a bare number of seconds, in
/// milliseconds. Negative or unparseable: `None`.
pub(super) fn duration_ms(t: &str) -> Option<u64> {
    let t = t.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return secs.checked_mul(1000);
    }
    let mut total = 0f64;
    let mut rest = t;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(digits);
        let value: f64 = number.parse().ok()?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "ns" => 1e-6,
            "us" | "µs" => 1e-3,
            "ms" => 1.0,
            "s" => 1e3,
            "m" => 60e3,
            "h" => 3600e3,
            "d" => 86_400e3,
            _ => return None,
        };
        total += value * scale;
        rest = tail;
    }
    (0.0..1e15).contains(&total).then_some(total.round() as u64)
}

/// A node holding a duration (a string, or a bare number of seconds).
pub(super) fn duration_of(n: &Node) -> Option<u64> {
    text(n).and_then(duration_ms)
}

/// Where the field at `path` (`spec.metrics[2].provider`) is in `n`: the deepest part
/// of the path found.
pub(super) fn pos_at(n: &Node, path: &str) -> Pos {
    let mut cur = n;
    for part in path.split('.') {
        let (key, index) = match part.split_once('[') {
            Some((k, rest)) => (k, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        let Some(next) = get(cur, key) else { break };
        cur = next;
        if let Some(i) = index {
            let Some(item) = items(cur).get(i) else { break };
            cur = item;
        }
    }
    cur.pos
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_argo_and_flagger_write_them() {
        assert_eq!(duration_ms("30"), Some(30_000));
        assert_eq!(duration_ms("1m30s"), Some(90_000));
        assert_eq!(duration_ms("1.5h"), Some(5_400_000));
        assert_eq!(duration_ms("250ms"), Some(250));
        assert_eq!(duration_ms("5x"), None);
        assert_eq!(duration_ms(""), None);
        assert_eq!(duration_ms("-1s"), None);
    }
}
