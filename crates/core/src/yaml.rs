//! A YAML document as a tree of nodes that remember where they came from.
//!
//! Owns turning YAML text into [`Node`]s with line and column, so that every later
//! error can point at the exact spot. It must not know anything about policies.

use std::collections::HashMap;
use std::fmt;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

/// A position in the source text, both 1-based, as editors show them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    /// Line, starting at 1.
    pub line: u32,
    /// Column, starting at 1.
    pub col: u32,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

fn pos(span: &Span) -> Pos {
    let clamp = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    Pos {
        line: clamp(span.start.line()),
        col: clamp(span.start.col().saturating_add(1)),
    }
}

/// One YAML value and where it starts.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// What the value is.
    pub kind: NodeKind,
    /// Where the value starts.
    pub pos: Pos,
}

/// The shape of a YAML value. Scalars keep their text: typing happens during decoding,
/// where the expected type is known (so `"10"` and `10` both decode as a number).
#[derive(Clone, Debug, PartialEq)]
pub enum NodeKind {
    /// An explicit or implicit null (`~`, `null`, or nothing).
    Null,
    /// A scalar and whether it was quoted.
    Scalar { text: String, quoted: bool },
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping with string keys, in document order.
    Map(Vec<(Key, Node)>),
}

/// A mapping key and its position.
#[derive(Clone, Debug, PartialEq)]
pub struct Key {
    /// The key text.
    pub text: String,
    /// Where the key starts.
    pub pos: Pos,
}

impl Node {
    /// The value of `key` in this mapping; `None` in a mapping without it, or in a
    /// node that is not a mapping.
    pub fn field(&self, key: &str) -> Option<&Node> {
        match &self.kind {
            NodeKind::Map(entries) => entries.iter().find(|(k, _)| k.text == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Where `key` is in this mapping, or where this node is when it has no such
    /// key: where an error about the key points.
    pub fn pos_of(&self, key: &str) -> Pos {
        self.field(key).map_or(self.pos, |n| n.pos)
    }

    /// A short name for the node's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match &self.kind {
            NodeKind::Null => "null",
            NodeKind::Scalar { .. } => "a scalar",
            NodeKind::Seq(_) => "a list",
            NodeKind::Map(_) => "a mapping",
        }
    }
}

/// A YAML syntax error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{pos}: {message}")]
pub struct SyntaxError {
    /// Where the parser stopped.
    pub pos: Pos,
    /// What the parser said.
    pub message: String,
}

enum Frame {
    Seq(Pos, usize, Vec<Node>),
    Map(MapFrame),
}

const MERGE_TAKES: &str =
    "a merge key `<<` takes a mapping or a list of mappings (an alias of one: `<<: *name`)";

/// A mapping being built.
struct MapFrame {
    pos: Pos,
    anchor: usize,
    entries: Vec<(Key, Node)>,
    /// The key whose value comes next; `None` when a key comes next.
    pending: Option<Key>,
    /// Whether the pending key is the merge key `<<` (plain, not quoted).
    merging: bool,
    /// Where the mapping's merge key is, once read.
    merge_key: Option<Pos>,
    /// What merge keys brought in, in order: an entry of the mapping itself wins over
    /// them, and among them the first wins (YAML's merge key type).
    merged: Vec<(Key, Node)>,
}

impl MapFrame {
    /// The finished mapping: its own entries, then what was merged in and not
    /// overridden.
    fn finish(self) -> (Node, usize) {
        let MapFrame {
            pos,
            anchor,
            mut entries,
            merged,
            ..
        } = self;
        for (k, v) in merged {
            if !entries.iter().any(|(e, _)| e.text == k.text) {
                entries.push((k, v));
            }
        }
        (
            Node {
                kind: NodeKind::Map(entries),
                pos,
            },
            anchor,
        )
    }

    /// Takes in the value of a merge key: a mapping, or a list of mappings. Anything
    /// else is refused at the key (an alias's value was written elsewhere).
    fn merge(&mut self, value: Node, key: &Key) -> Result<(), SyntaxError> {
        let refuse = |n: &Node| SyntaxError {
            pos: key.pos,
            message: format!("{MERGE_TAKES}, found {} at {}", n.type_name(), n.pos),
        };
        let maps = match value.kind {
            NodeKind::Map(entries) => vec![entries],
            NodeKind::Seq(items) => {
                if let Some(bad) = items.iter().find(|n| !matches!(n.kind, NodeKind::Map(_))) {
                    return Err(refuse(bad));
                }
                items
                    .into_iter()
                    .filter_map(|n| match n.kind {
                        NodeKind::Map(entries) => Some(entries),
                        _ => None,
                    })
                    .collect()
            }
            _ => return Err(refuse(&value)),
        };
        for (k, v) in maps.into_iter().flatten() {
            if !self.merged.iter().any(|(m, _)| m.text == k.text) {
                self.merged.push((k, v));
            }
        }
        Ok(())
    }
}

/// Parses one YAML document into a [`Node`] tree.
///
/// At most this many values, aliases expanded, in one document.
pub const MAX_VALUES: usize = 100_000;

/// How deeply collections may nest. A policy nests about ten levels, a Kubernetes
/// manifest about twenty; without a limit a few hundred kilobytes of `- - - ...`
/// build a tree whose recursive drop overflows the stack and aborts the process.
pub const MAX_DEPTH: usize = 64;

/// How many collections deep `n` nests (a scalar: 0). Bounded by [`MAX_DEPTH`]: every
/// node was built within it.
fn depth_of_node(n: &Node) -> usize {
    match &n.kind {
        NodeKind::Seq(items) => 1 + items.iter().map(depth_of_node).max().unwrap_or(0),
        NodeKind::Map(entries) => {
            1 + entries
                .iter()
                .map(|(_, v)| depth_of_node(v))
                .max()
                .unwrap_or(0)
        }
        _ => 0,
    }
}

fn size_of_node(n: &Node) -> usize {
    match &n.kind {
        NodeKind::Seq(items) => items
            .iter()
            .map(size_of_node)
            .fold(1, usize::saturating_add),
        NodeKind::Map(entries) => entries
            .iter()
            .map(|(_, v)| size_of_node(v))
            .fold(1, usize::saturating_add),
        _ => 1,
    }
}

/// Aliases are expanded and merge keys (`<<: *name`) applied. Duplicate keys,
/// non-scalar keys and more than one document are errors, because each would silently
/// drop part of a policy.
pub fn parse(src: &str) -> Result<Node, SyntaxError> {
    single(src, Merges::Apply)
}

/// [`parse`], with merge keys kept as ordinary `<<` entries: every value as written,
/// those a mapping's own fields override included (for a walk that must see all of
/// the text, as redaction does).
pub fn parse_as_written(src: &str) -> Result<Node, SyntaxError> {
    single(src, Merges::Keep)
}

fn single(src: &str, merges: Merges) -> Result<Node, SyntaxError> {
    let mut docs = parse_stream(src, true, merges).map_err(|(_, e)| e)?;
    Ok(docs.pop().unwrap_or(Node {
        kind: NodeKind::Null,
        pos: Pos { line: 1, col: 1 },
    }))
}

/// What a plain `<<` key does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Merges {
    /// YAML's merge key: the mappings it names are merged in.
    #[default]
    Apply,
    /// An ordinary key.
    Keep,
}

/// A syntax error in one document of a multi-document stream.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("document {document}: {error}")]
pub struct DocumentError {
    /// The document's index in the stream, from 0.
    pub document: usize,
    /// The error.
    pub error: SyntaxError,
}

/// Parses every document of a stream (`---` separated, as Kubernetes manifests are),
/// each as [`parse`] does one: an empty document is [`NodeKind::Null`].
pub fn parse_documents(src: &str) -> Result<Vec<Node>, DocumentError> {
    parse_stream(src, false, Merges::Apply)
        .map_err(|(document, error)| DocumentError { document, error })
}

fn parse_stream(
    src: &str,
    single: bool,
    merges: Merges,
) -> Result<Vec<Node>, (usize, SyntaxError)> {
    let mut docs: Vec<Node> = Vec::new();
    let mut documents = 0usize;
    let fresh = || Stream {
        merges,
        ..Stream::default()
    };
    let mut current = fresh();
    for item in Parser::new_from_str(src) {
        let doc = documents.saturating_sub(1);
        let (event, span) = item.map_err(|e| {
            (
                doc,
                SyntaxError {
                    pos: Pos {
                        line: u32::try_from(e.marker().line()).unwrap_or(u32::MAX),
                        col: u32::try_from(e.marker().col() + 1).unwrap_or(u32::MAX),
                    },
                    message: e.info().to_string(),
                },
            )
        })?;
        match event {
            Event::DocumentStart(_) => {
                documents += 1;
                if single && documents > 1 {
                    return Err((
                        doc + 1,
                        SyntaxError {
                            pos: pos(&span),
                            message: "a policy file holds exactly one YAML document".into(),
                        },
                    ));
                }
                current = fresh();
            }
            Event::DocumentEnd => {
                let at = Pos { line: 1, col: 1 };
                docs.push(current.root.take().unwrap_or(Node {
                    kind: NodeKind::Null,
                    pos: at,
                }));
            }
            event => current.event(event, &span).map_err(|e| (doc, e))?,
        }
    }
    Ok(docs)
}

/// The state of one document being built.
#[derive(Default)]
struct Stream {
    stack: Vec<Frame>,
    // Each anchor with the number of values it holds: aliases copy them, and nested
    // aliases multiply, so the total is capped (a few hundred bytes could otherwise
    // expand to billions of values).
    // And how deeply it nests: an alias must not take the tree past MAX_DEPTH.
    anchors: HashMap<usize, (Node, usize, usize)>,
    values: usize,
    root: Option<Node>,
    merges: Merges,
}

impl Stream {
    fn event(&mut self, event: Event<'_>, span: &Span) -> Result<(), SyntaxError> {
        let Stream {
            stack,
            anchors,
            values,
            root,
            merges,
        } = self;
        let at = pos(span);
        let finished: Option<(Node, usize)> = match event {
            Event::Scalar(text, style, anchor, _tag) => {
                let quoted = !matches!(style, ScalarStyle::Plain);
                let kind =
                    if !quoted && matches!(text.as_ref(), "" | "~" | "null" | "Null" | "NULL") {
                        NodeKind::Null
                    } else {
                        NodeKind::Scalar {
                            text: text.into_owned(),
                            quoted,
                        }
                    };
                Some((Node { kind, pos: at }, anchor))
            }
            Event::Alias(id) => match anchors.get(&id) {
                Some((_, _, depth)) if stack.len() + depth > MAX_DEPTH => {
                    return Err(SyntaxError {
                        pos: at,
                        message: format!(
                            "the document nests deeper than {MAX_DEPTH} levels through its aliases"
                        ),
                    });
                }
                Some((node, size, _)) => {
                    *values = values.saturating_add(*size);
                    if *values > MAX_VALUES {
                        return Err(SyntaxError {
                            pos: at,
                            message: format!(
                                "the document expands to more than {MAX_VALUES} values through its aliases"
                            ),
                        });
                    }
                    Some((node.clone(), 0))
                }
                None => {
                    return Err(SyntaxError {
                        pos: at,
                        message: "alias refers to an unknown anchor".into(),
                    });
                }
            },
            Event::SequenceStart(..) | Event::MappingStart(..) if stack.len() >= MAX_DEPTH => {
                return Err(SyntaxError {
                    pos: at,
                    message: format!("the document nests deeper than {MAX_DEPTH} levels"),
                });
            }
            Event::SequenceStart(anchor, _) => {
                stack.push(Frame::Seq(at, anchor, Vec::new()));
                None
            }
            Event::MappingStart(anchor, _) => {
                stack.push(Frame::Map(MapFrame {
                    pos: at,
                    anchor,
                    entries: Vec::new(),
                    pending: None,
                    merging: false,
                    merge_key: None,
                    merged: Vec::new(),
                }));
                None
            }
            Event::SequenceEnd => match stack.pop() {
                Some(Frame::Seq(p, anchor, items)) => Some((
                    Node {
                        kind: NodeKind::Seq(items),
                        pos: p,
                    },
                    anchor,
                )),
                _ => None,
            },
            Event::MappingEnd => match stack.pop() {
                Some(Frame::Map(m)) => Some(m.finish()),
                _ => None,
            },
            _ => None,
        };
        let Some((node, anchor)) = finished else {
            return Ok(());
        };
        *values = values.saturating_add(1);
        if *values > MAX_VALUES {
            return Err(SyntaxError {
                pos: node.pos,
                message: format!("the document holds more than {MAX_VALUES} values"),
            });
        }
        if anchor != 0 {
            anchors.insert(
                anchor,
                (node.clone(), size_of_node(&node), depth_of_node(&node)),
            );
        }
        match stack.last_mut() {
            None => *root = Some(node),
            Some(Frame::Seq(_, _, items)) => items.push(node),
            Some(Frame::Map(m)) => match m.pending.take() {
                Some(key) if m.merging => {
                    m.merging = false;
                    m.merge(node, &key)?;
                }
                None => {
                    if let NodeKind::Scalar {
                        text,
                        quoted: false,
                    } = &node.kind
                        && text == "<<"
                        && *merges == Merges::Apply
                    {
                        if let Some(first) = m.merge_key {
                            return Err(SyntaxError {
                                pos: node.pos,
                                message: format!(
                                    "duplicate key `<<` (first defined at {first}): merge several mappings with one, `<<: [*a, *b]`"
                                ),
                            });
                        }
                        m.merge_key = Some(node.pos);
                        m.merging = true;
                        m.pending = Some(Key {
                            text: text.clone(),
                            pos: node.pos,
                        });
                        return Ok(());
                    }
                    let NodeKind::Scalar { text, .. } = node.kind else {
                        let what = match node.kind {
                            NodeKind::Null => "an empty key",
                            _ => "a complex key",
                        };
                        return Err(SyntaxError {
                            pos: node.pos,
                            message: format!("{what} is not supported; keys are plain words"),
                        });
                    };
                    if let Some((first, _)) = m.entries.iter().find(|(k, _)| k.text == text) {
                        return Err(SyntaxError {
                            pos: node.pos,
                            message: format!(
                                "duplicate key `{text}` (first defined at {})",
                                first.pos
                            ),
                        });
                    }
                    m.pending = Some(Key {
                        text,
                        pos: node.pos,
                    });
                }
                Some(key) => m.entries.push((key, node)),
            },
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A document nested deeper than any policy or manifest is refused where it goes
    /// too deep (its tree would overflow the stack when dropped); one at the limit reads.
    #[test]
    fn nesting_is_bounded() {
        let deep = format!("{}x", "- ".repeat(100_000));
        let Err(e) = parse(&deep) else {
            panic!("a document nested 100000 deep was read");
        };
        assert!(e.message.contains("deeper than 64"), "{}", e.message);
        assert!(parse(&format!("{}x", "- ".repeat(MAX_DEPTH))).is_ok());
        assert!(parse(&format!("{}x", "- ".repeat(MAX_DEPTH + 1))).is_err());
        // Aliases nest too: each level puts the one before inside two more.
        let mut doc = String::from("a0: &a0 [x]\n");
        for i in 1..40 {
            doc.push_str(&format!("a{i}: &a{i} [[*a{}]]\n", i - 1));
        }
        let Err(e) = parse(&doc) else {
            panic!("aliases nested 80 deep were read");
        };
        assert!(e.message.contains("through its aliases"), "{}", e.message);
    }

    #[test]
    fn nested_aliases_cannot_expand_without_bound() {
        // Each level multiplies by ten: 10^9 values from a few hundred bytes.
        let mut doc = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        let mut prev = 'a';
        for level in ['b', 'c', 'd', 'e', 'f', 'g', 'h', 'i'] {
            let refs = vec![format!("*{prev}"); 10].join(", ");
            doc.push_str(&format!("{level}: &{level} [{refs}]\n"));
            prev = level;
        }
        let err = parse(&doc).unwrap_err();
        assert!(err.message.contains("aliases"), "{err}");
        // Modest reuse is fine.
        assert!(parse("a: &a [1, 2]\nb: *a\nc: *a\n").is_ok());
    }

    #[test]
    fn keeps_positions_of_nested_values() {
        let node = parse("a:\n  b: [1, 2]\n  c: x\n").unwrap();
        let NodeKind::Map(top) = &node.kind else {
            panic!("not a map")
        };
        let NodeKind::Map(inner) = &top[0].1.kind else {
            panic!("not a map")
        };
        assert_eq!(inner[0].0.pos, Pos { line: 2, col: 3 });
        assert_eq!(inner[1].1.pos, Pos { line: 3, col: 6 });
    }

    fn map_of(src: &str) -> Vec<(String, String)> {
        let node = parse(src).unwrap();
        let NodeKind::Map(entries) = node.kind else {
            panic!("not a map")
        };
        let item = entries.into_iter().last().unwrap().1;
        let NodeKind::Map(entries) = item.kind else {
            panic!("not a map: {item:?}")
        };
        entries
            .into_iter()
            .map(|(k, v)| {
                let v = match v.kind {
                    NodeKind::Scalar { text, .. } => text,
                    other => format!("{other:?}"),
                };
                (k.text, v)
            })
            .collect()
    }

    /// YAML's merge key: `<<: *name` (or a list of aliases, or an inline mapping)
    /// brings a mapping's entries in; the mapping's own entries win wherever they are
    /// written, and among merged mappings the first wins.
    #[test]
    fn merge_keys_bring_entries_in_and_own_entries_win() {
        let pairs = |p: &[(&str, &str)]| -> Vec<(String, String)> {
            p.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let got = map_of("base: &b {x: 1, y: 2, z: 3}\nm: {y: own, <<: *b, z: own}\n");
        assert_eq!(got, pairs(&[("y", "own"), ("z", "own"), ("x", "1")]));
        let got = map_of("a: &a {x: a}\nb: &b {x: b, y: b}\nm: {<<: [*a, *b]}\n");
        assert_eq!(got, pairs(&[("x", "a"), ("y", "b")]));
        // Inline, block style, nested values copied whole.
        let got = map_of("m:\n  <<: {x: 1, n: {deep: 2}}\n  y: 2\n");
        assert_eq!(got[..2], pairs(&[("y", "2"), ("x", "1")]));
        assert!(got[2].1.contains("deep"), "{got:?}");
        // A merged mapping that is itself anchored carries its merges along.
        let got = map_of("a: &a {x: 1}\nb: &b {<<: *a, y: 2}\nm: {<<: *b}\n");
        assert_eq!(got, pairs(&[("y", "2"), ("x", "1")]));
        // A quoted `<<` is an ordinary key.
        let got = map_of("m: {'<<': {x: 1}}\n");
        assert_eq!(got[0].0, "<<");
    }

    /// Anything but a mapping or a list of mappings is refused at the key, naming what
    /// was found and where (an alias's value is written elsewhere).
    #[test]
    fn a_merge_key_takes_only_mappings() {
        for doc in [
            "m:\n  <<: 5\n",
            "m:\n  <<: [{x: 1},\n    5]\n",
            "a: &a [1]\nm:\n  <<: *a\n",
        ] {
            let err = parse(doc).unwrap_err();
            let at = doc.lines().position(|l| l.contains("<<")).unwrap() + 1;
            assert_eq!(err.pos.line as usize, at, "{doc}: {err}");
            assert!(err.message.contains("merge key"), "{err}");
            assert!(err.message.contains("found a "), "{err}");
        }
    }

    #[test]
    fn rejects_duplicate_keys_with_both_positions() {
        let err = parse("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(err.pos.line, 3);
        assert!(err.message.contains("first defined at 1:1"), "{err}");
    }

    #[test]
    fn expands_aliases() {
        let node = parse("x: &w 5\ny: *w\n").unwrap();
        let NodeKind::Map(m) = node.kind else {
            panic!()
        };
        assert_eq!(m[0].1.kind, m[1].1.kind);
    }

    #[test]
    fn reports_syntax_errors_with_line() {
        let err = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.pos.line >= 1, "{err}");
    }

    #[test]
    fn a_stream_holds_every_document_with_its_own_positions() {
        let docs = parse_documents("a: 1\n---\n---\nb: &x [1]\nc: *x\n").unwrap();
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[1].kind, NodeKind::Null);
        let NodeKind::Map(m) = &docs[2].kind else {
            panic!("not a map")
        };
        assert_eq!(m[1].0.pos, Pos { line: 5, col: 1 });
        // Anchors belong to their document.
        let err = parse_documents("a: &x 1\n---\nb: *x\n").unwrap_err();
        assert_eq!(err.document, 1);
        let err = parse_documents("a: 1\n---\nb: [1\n").unwrap_err();
        assert_eq!(err.document, 1, "{err}");
        assert!(parse("a: 1\n---\nb: 2\n").is_err());
    }

    #[test]
    fn empty_document_is_null() {
        assert_eq!(parse("").unwrap().kind, NodeKind::Null);
    }
}
