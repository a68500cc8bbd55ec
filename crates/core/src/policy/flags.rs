//! The `flags` section: the flags rampart manages and where applications read them,
//! with its decoder. The flags' evaluation rule is `crate::flags`; this must not
//! evaluate.

use super::values::decode_addr;
use crate::decode::Decoder;
use crate::yaml::{Node, NodeKind};

/// The built-in feature-flag store's configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct FlagsSpec {
    /// Where applications read flags over HTTP while rampart runs, if anywhere.
    pub listen: Option<std::net::SocketAddr>,
    /// The flags, with their defaults and allowlists.
    pub define: Vec<crate::flags::FlagDef>,
}

pub(super) fn decode_flags(cx: &mut Decoder, node: &Node, path: &str) -> Option<FlagsSpec> {
    let m = cx.map(node, path, &["listen", "define"])?;
    let listen = m.optional_with(cx, "listen", decode_addr);
    let define = m
        .optional_with(cx, "define", |cx, n, p| {
            cx.seq(n, p, crate::flags::decode_def)
        })
        .unwrap_or_default();
    if let Some(items) = m.get("define").and_then(|n| match &n.kind {
        NodeKind::Seq(items) => Some(items),
        _ => None,
    }) {
        for (i, d) in define.iter().enumerate() {
            if define[..i].iter().any(|e| e.name == d.name) {
                cx.error(
                    items[i].pos,
                    &format!("{path}.define[{i}].name"),
                    format!("flag `{}` is defined twice", d.name),
                );
            }
        }
    }
    Some(FlagsSpec { listen, define })
}
