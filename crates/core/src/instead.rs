//! What a person may do about an event or a notice, as data. Audit messages say what
//! happened and why in words; the way to act is this structured value, which the
//! command line, the dashboard, MCP and the notification hooks each render their own
//! way (a command, a button, a tool, a line in a chat). A leaf: it imports nothing of
//! the release machine.

/// An action open to a person, named by what it does, not by how an interface asks
/// for it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Instead {
    /// Approve the release: it waits for that (an approval point, a migration
    /// review, a hotfix, a window). Anyone but `not_by` may.
    Approve {
        /// The release id.
        release: String,
        /// Who may not: the release's initiator (four eyes).
        not_by: String,
    },
    /// Switch back to the previous version, which is kept running for a while.
    Rollback {
        /// The service.
        service: String,
    },
    /// Roll the code back although the release shipped breaking migrations, once the
    /// data is repaired; the reason goes to the audit trail.
    ForceRollback {
        /// The service.
        service: String,
    },
    /// Start the release as a hotfix, with a reason: the one kind of release a freeze
    /// lets through, after an approval.
    Hotfix {
        /// The service.
        service: String,
    },
}

impl Instead {
    /// How to ask for it from rampart's command line, for the renderings that show a
    /// command (the terminal, a chat notice). The dashboard shows a button and MCP a
    /// tool instead; the audit message itself never carries this.
    pub fn command_line(&self) -> String {
        match self {
            Instead::Approve { release, not_by } => {
                format!("`rampart approve {release} --as NAME` (anyone but {not_by})")
            }
            Instead::Rollback { service } => format!("`rampart rollback {service}`"),
            // The release is over (escalated): its canary is settled on the service,
            // by its policy.
            Instead::ForceRollback { .. } => {
                "`rampart stop -f POLICY --canary --force --reason \"...\"`".to_string()
            }
            Instead::Hotfix { .. } => "`rampart run --hotfix REASON`".to_string(),
        }
    }
}

/// `message`, then the command that acts on it when there is one: the one text
/// rendering, for the terminal and chat notices.
pub fn with_command(message: &str, instead: Option<&Instead>) -> String {
    match instead {
        Some(i) => format!(
            "{}. To act: {}",
            message.trim_end_matches('.'),
            i.command_line()
        ),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stored shape is a contract of the audit trail (the API, webhooks and old
    /// logs carry it): one `action` tag and the fields.
    #[test]
    fn the_stored_shape() {
        let approve = Instead::Approve {
            release: "shop-1".into(),
            not_by: "alice".into(),
        };
        assert_eq!(
            serde_json::to_value(&approve).unwrap(),
            serde_json::json!({"action": "approve", "release": "shop-1", "not_by": "alice"})
        );
        let force: Instead =
            serde_json::from_str(r#"{"action":"force_rollback","service":"shop"}"#).unwrap();
        assert_eq!(
            force,
            Instead::ForceRollback {
                service: "shop".into()
            }
        );
        assert_eq!(
            force.command_line(),
            "`rampart stop -f POLICY --canary --force --reason \"...\"`"
        );
        assert_eq!(
            approve.command_line(),
            "`rampart approve shop-1 --as NAME` (anyone but alice)"
        );
        assert_eq!(
            with_command("ESCALATED: roll forward.", Some(&force)),
            "ESCALATED: roll forward. To act: `rampart stop -f POLICY --canary --force --reason \"...\"`"
        );
        assert_eq!(with_command("promoted", None), "promoted");
    }
}
