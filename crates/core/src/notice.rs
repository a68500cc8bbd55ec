//! What a notice is about: the moments of a release's comms plan, and the cadence names
//! a policy's `notify.on` lists. A leaf shared by the policy and the state machine: it
//! must not import either (that is what keeps them free of an import cycle).

/// What a notice is about: the moments of a release's comms plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    /// The release started.
    Started,
    /// A step's traffic is in force (or the release holds for a window).
    Step,
    /// A human must approve.
    Approval,
    /// A rollback started.
    Rollback,
    /// Stopped where it stood; a human must act.
    Halted,
    /// Handed to a human after breaking migrations.
    Escalated,
    /// Done: the new version serves all traffic.
    Promoted,
    /// Done: rolled back.
    RolledBack,
    /// Done: never started.
    Blocked,
}

impl NoticeKind {
    /// `snake_case` name.
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::Started => "started",
            NoticeKind::Step => "step",
            NoticeKind::Approval => "approval",
            NoticeKind::Rollback => "rollback",
            NoticeKind::Halted => "halted",
            NoticeKind::Escalated => "escalated",
            NoticeKind::Promoted => "promoted",
            NoticeKind::RolledBack => "rolled_back",
            NoticeKind::Blocked => "blocked",
        }
    }

    /// The name a policy's `on:` list uses: the three endings are all `done`.
    pub fn cadence(self) -> &'static str {
        match self {
            NoticeKind::Promoted | NoticeKind::RolledBack | NoticeKind::Blocked => "done",
            k => k.as_str(),
        }
    }

    /// Every cadence name, in release order.
    pub const CADENCE: [&'static str; 7] = [
        "started",
        "step",
        "approval",
        "rollback",
        "halted",
        "escalated",
        "done",
    ];
}
