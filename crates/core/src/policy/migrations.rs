//! The `migrations` section: where the release's SQL is, how it is applied and who
//! approves breaking changes, with its decoder. Classifying SQL is
//! `crate::migrations`; this must not read or run it.

use std::time::Duration;

use super::strategy::{Approval, decode_approval};
use super::values::{DAY, decode_argv, positive};
use crate::decode::{Decoder, one_of};
use crate::yaml::{Node, NodeKind};

/// The release's database migrations.
#[derive(Clone, Debug, PartialEq)]
pub struct Migrations {
    /// Directory of the `.sql` files this version ships (`{version}` is substituted),
    /// relative to the policy file. They are classified before anything runs.
    pub dir: String,
    /// The command that applies them; `{file}` runs it once per file, in name order.
    pub command: Vec<String>,
    /// Escalate to a human instead of rolling back the code when the release shipped
    /// `contract` or `irreversible` changes and then fails.
    pub escalate: bool,
    /// Time limit per command.
    pub timeout: Duration,
    /// The approval a breaking (`contract` or `irreversible`) migration needs before it
    /// runs; `None` when the policy says `approval: none`.
    pub approval: Option<Approval>,
}

impl Migrations {
    /// The directory of the migrations `version` ships, relative to the policy file.
    pub fn dir_for(&self, version: &str) -> String {
        self.dir.replace("{version}", version)
    }
}

pub(super) fn decode_migrations(cx: &mut Decoder, node: &Node, path: &str) -> Option<Migrations> {
    let m = cx.map(
        node,
        path,
        &["dir", "command", "on_incompatible", "timeout", "approval"],
    )?;
    let approval = match m.get("approval") {
        None => Some(Approval {
            role: "migration-reviewer".into(),
            timeout: Duration::from_secs(24 * 3600),
        }),
        Some(n) if matches!(&n.kind, NodeKind::Scalar { text, .. } if text == "none") => None,
        Some(n) => decode_approval(cx, n, &m.path_of("approval")),
    };
    let dir = m.required::<String>(cx, "dir");
    let command = m.required_with(cx, "command", decode_argv);
    let escalate = !matches!(
        m.optional_with(cx, "on_incompatible", |cx, n, p| one_of(
            cx,
            n,
            p,
            &["escalate", "rollback"]
        )),
        Some("rollback")
    );
    let timeout = positive(cx, &m, "timeout", DAY).unwrap_or(Duration::from_secs(600));
    Some(Migrations {
        dir: dir?,
        command: command?,
        escalate,
        timeout,
        approval,
    })
}
