//! The control plane's tables in the SQLite store: API tokens (kept as hashes), the
//! hash-chained audit log, and the queue of releases submitted to `rampart serve`.
//!
//! Owns the chain's hashing rule and its verification. It must not decide who may do
//! what (roles are the server's) nor interpret release logs.

use rusqlite::{OptionalExtension, Transaction, params};
use sha2::{Digest, Sha256};

use super::{SqliteStore, db_err, to_i64};
use rampart_core::Millis;
use rampart_core::ports::{PortError, StoredInput};

/// The hash the first chain record links to.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of `text`, in lower-case hex.
pub fn sha256_hex(text: &str) -> String {
    hex(&Sha256::digest(text.as_bytes()))
}

/// One record of the audit chain.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ChainRecord {
    /// Position, from 1.
    pub id: i64,
    /// When.
    pub at: Millis,
    /// Who: a person, a token's name, or `rampart`.
    pub actor: String,
    /// What, e.g. `input:approved`, `request:pause`, `freeze_on`, `token_created`.
    pub action: String,
    /// The release it concerns, if any.
    pub release_id: Option<String>,
    /// The release log position it records, for `input:*` records.
    pub seq: Option<u64>,
    /// The record's content (for inputs: the stored input and its audit events).
    pub body: String,
    /// The previous record's hash.
    pub prev: String,
    /// SHA-256 over the previous hash and every field of this record.
    pub hash: String,
}

impl ChainRecord {
    fn digest(&self) -> String {
        sha256_hex(&format!(
            "{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}",
            self.prev,
            self.id,
            self.at,
            self.actor,
            self.action,
            self.release_id.as_deref().unwrap_or(""),
            self.seq.map(|s| s.to_string()).unwrap_or_default(),
            self.body
        ))
    }
}

/// Appends a record to the chain inside `tx`, linked to the last one.
pub(super) fn chain(
    tx: &Transaction<'_>,
    at: Millis,
    actor: &str,
    action: &str,
    release: Option<(&str, Option<u64>)>,
    body: &str,
) -> Result<(), PortError> {
    let last: Option<(i64, String)> = tx
        .query_row(
            "SELECT id, hash FROM chain ORDER BY id DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(db_err)?;
    let (last_id, prev) = last.unwrap_or((0, GENESIS.to_string()));
    let mut rec = ChainRecord {
        id: last_id + 1,
        at,
        actor: actor.to_string(),
        action: action.to_string(),
        release_id: release.map(|(r, _)| r.to_string()),
        seq: release.and_then(|(_, s)| s),
        body: body.to_string(),
        prev,
        hash: String::new(),
    };
    rec.hash = rec.digest();
    tx.execute(
        "INSERT INTO chain (id, at, actor, action, release_id, seq, body, prev, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            rec.id,
            to_i64(rec.at),
            rec.actor,
            rec.action,
            rec.release_id,
            rec.seq.map(to_i64),
            rec.body,
            rec.prev,
            rec.hash
        ],
    )
    .map_err(db_err)?;
    Ok(())
}

/// Queues an operator request for release `id` inside `tx`, and chains who asked.
pub(super) fn queue_command(
    tx: &Transaction<'_>,
    id: &str,
    command: &rampart_core::ports::OperatorCommand,
) -> Result<(), PortError> {
    tx.execute(
        "INSERT INTO commands (release_id, actor, reason, force, kind, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![id, command.actor, command.reason, command.force, command.kind.as_str(), to_i64(command.at)],
    )
    .map_err(db_err)?;
    let body = serde_json::json!({"reason": command.reason, "force": command.force}).to_string();
    chain(
        tx,
        command.at,
        &command.actor,
        &format!("request:{}", command.kind.as_str()),
        Some((id, None)),
        &body,
    )
}

/// The chain body of a stored input: exactly the columns the log keeps (its time, the
/// input, the audit events).
pub(super) fn input_body(at: Millis, input: &str, audit: &str) -> String {
    format!("{at}\n{input}\n{audit}")
}

/// The request an operator input must have been asked for with, by its input type.
fn request_for(input_type: &str) -> Option<&'static str> {
    match input_type {
        "approved" => Some("approve"),
        "pause" => Some("pause"),
        "unpause" => Some("resume"),
        "promote" => Some("promote"),
        _ => None,
    }
}

/// Who an input came from, for the chain.
pub(super) fn input_actor(entry: &StoredInput) -> String {
    use rampart_core::release::Input;
    match &entry.input {
        Input::Approved { by } => by.clone(),
        Input::Abort { actor, .. }
        | Input::Pause { actor, .. }
        | Input::Unpause { actor }
        | Input::Promote { actor, .. } => actor.clone(),
        Input::Start { initiator, .. } if !initiator.is_empty() => initiator.clone(),
        _ => "rampart".into(),
    }
}

/// What `verify` found.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ChainReport {
    /// Whether the chain and everything it covers are intact.
    pub ok: bool,
    /// Chain records checked.
    pub records: u64,
    /// Release log entries checked against the chain.
    pub log_entries: u64,
    /// The last record's hash: keep it elsewhere to detect a truncated tail later.
    pub head: String,
    /// Every problem found, first first.
    pub problems: Vec<String>,
}

/// An API token as listed: never its secret or hash.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TokenInfo {
    /// Unique name: the identity recorded for what the token does.
    pub name: String,
    /// `viewer`, `deployer`, `approver`, `admin` (checked by the server).
    pub role: String,
    /// When it was created.
    pub created_at: Millis,
    /// Who created it.
    pub created_by: String,
    /// Whether it was revoked.
    pub revoked: bool,
}

/// A release submitted to `rampart serve`, as queued.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Submission {
    /// The release id it gets.
    pub id: String,
    /// Service name.
    pub service: String,
    /// The version to release.
    pub version: String,
    /// The version serving now, if the submitter named it.
    pub stable: Option<String>,
    /// Why this is a hotfix during a freeze, if it is one.
    pub hotfix: Option<String>,
    /// Who submitted it.
    pub initiator: String,
    /// The policy text.
    pub policy: String,
    /// Where the policy's relative paths resolve.
    pub workdir: String,
    /// `queued`, `running` or `done`.
    pub state: String,
    /// The final report (JSON), once done.
    pub report: Option<String>,
    /// When it was submitted.
    pub created_at: Millis,
}

fn row_to_submission(r: &rusqlite::Row<'_>) -> rusqlite::Result<Submission> {
    Ok(Submission {
        id: r.get(0)?,
        service: r.get(1)?,
        version: r.get(2)?,
        stable: r.get(3)?,
        hotfix: r.get(4)?,
        initiator: r.get(5)?,
        policy: r.get(6)?,
        workdir: r.get(7)?,
        state: r.get(8)?,
        report: r.get(9)?,
        created_at: r.get::<_, i64>(10)?.try_into().unwrap_or(0),
    })
}

const SUBMISSION_COLUMNS: &str =
    "id, service, version, stable, hotfix, initiator, policy, workdir, state, report, created_at";

fn random_hex(bytes: usize) -> Result<String, PortError> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| PortError(format!("no randomness for a token: {e}")))?;
    Ok(hex(&buf))
}

/// The prefix of every API token (so a leaked one is easy to find and scan for).
pub const TOKEN_PREFIX: &str = "rampart_";

// === impl SqliteStore: tokens ===

impl SqliteStore {
    /// Creates a token and returns its secret, which is not kept (only its SHA-256 is).
    /// Fails if an unrevoked token has that name.
    pub fn create_token(
        &self,
        name: &str,
        role: &str,
        by: &str,
        at: Millis,
    ) -> Result<String, PortError> {
        let secret = format!("{TOKEN_PREFIX}{}", random_hex(32)?);
        let hash = sha256_hex(&secret);
        self.with(|c| {
            let tx = c.transaction().map_err(db_err)?;
            let live: bool = tx
                .query_row(
                    "SELECT EXISTS(SELECT 1 FROM tokens WHERE name = ?1 AND revoked_at IS NULL)",
                    [name],
                    |r| r.get(0),
                )
                .map_err(db_err)?;
            if live {
                return Err(PortError(format!(
                    "a token named {name} exists; revoke it first (`rampart token revoke {name}`)"
                )));
            }
            tx.execute("DELETE FROM tokens WHERE name = ?1", [name])
                .map_err(db_err)?;
            tx.execute(
                "INSERT INTO tokens (name, role, hash, created_at, created_by) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![name, role, hash, to_i64(at), by],
            )
            .map_err(db_err)?;
            let body = serde_json::json!({"name": name, "role": role, "hash": hash}).to_string();
            chain(&tx, at, by, "token_created", None, &body)?;
            tx.commit().map_err(db_err)
        })?;
        Ok(secret)
    }

    /// Revokes a token by name. Fails if no live token has that name.
    pub fn revoke_token(&self, name: &str, by: &str, at: Millis) -> Result<(), PortError> {
        self.with(|c| {
            let tx = c.transaction().map_err(db_err)?;
            let n = tx
                .execute(
                    "UPDATE tokens SET revoked_at = ?2 WHERE name = ?1 AND revoked_at IS NULL",
                    params![name, to_i64(at)],
                )
                .map_err(db_err)?;
            if n == 0 {
                return Err(PortError(format!("no live token named {name}")));
            }
            let body = serde_json::json!({"name": name}).to_string();
            chain(&tx, at, by, "token_revoked", None, &body)?;
            tx.commit().map_err(db_err)
        })
    }

    /// The name and role of the live token with this secret.
    pub fn token(&self, secret: &str) -> Result<Option<(String, String)>, PortError> {
        let hash = sha256_hex(secret);
        self.with(|c| {
            c.query_row(
                "SELECT name, role FROM tokens WHERE hash = ?1 AND revoked_at IS NULL",
                [hash],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db_err)
        })
    }

    /// Every token, newest first, without secrets.
    pub fn tokens(&self) -> Result<Vec<TokenInfo>, PortError> {
        self.with(|c| {
            let mut stmt = c
                .prepare("SELECT name, role, created_at, created_by, revoked_at IS NOT NULL FROM tokens ORDER BY created_at DESC, name")
                .map_err(db_err)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(TokenInfo {
                        name: r.get(0)?,
                        role: r.get(1)?,
                        created_at: r.get::<_, i64>(2)?.try_into().unwrap_or(0),
                        created_by: r.get(3)?,
                        revoked: r.get(4)?,
                    })
                })
                .map_err(db_err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
        })
    }
}

// === impl SqliteStore: submissions ===

impl SqliteStore {
    /// Queues a release for `rampart serve`, and records who asked.
    pub fn submit(&self, s: &Submission) -> Result<(), PortError> {
        self.with(|c| {
            let tx = c.transaction().map_err(db_err)?;
            tx.execute(
                &format!("INSERT INTO submissions ({SUBMISSION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"),
                params![s.id, s.service, s.version, s.stable, s.hotfix, s.initiator, s.policy, s.workdir, s.state, s.report, to_i64(s.created_at)],
            )
            .map_err(db_err)?;
            let body = serde_json::json!({
                "service": s.service,
                "version": s.version,
                "stable": s.stable,
                "hotfix": s.hotfix,
                "policy_sha256": sha256_hex(&s.policy),
            })
            .to_string();
            chain(&tx, s.created_at, &s.initiator, "release_submitted", Some((&s.id, None)), &body)?;
            tx.commit().map_err(db_err)
        })
    }

    /// A submission by release id.
    pub fn submission(&self, id: &str) -> Result<Option<Submission>, PortError> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {SUBMISSION_COLUMNS} FROM submissions WHERE id = ?1"),
                [id],
                row_to_submission,
            )
            .optional()
            .map_err(db_err)
        })
    }

    /// Submissions not done yet, oldest first.
    pub fn open_submissions(&self) -> Result<Vec<Submission>, PortError> {
        self.with(|c| {
            let mut stmt = c
                .prepare(&format!("SELECT {SUBMISSION_COLUMNS} FROM submissions WHERE state != 'done' ORDER BY rowid"))
                .map_err(db_err)?;
            let rows = stmt.query_map([], row_to_submission).map_err(db_err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
        })
    }

    /// Queues an operator request for exactly release `id`: fails when it does not
    /// exist or is over (a request meant for one release never reaches the next).
    pub fn push_command_to(
        &self,
        id: &str,
        command: &rampart_core::ports::OperatorCommand,
    ) -> Result<(), PortError> {
        self.with(|c| {
            let tx = c.transaction().map_err(db_err)?;
            let open: Option<bool> = tx
                .query_row(
                    "SELECT outcome IS NULL FROM releases WHERE id = ?1",
                    [id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db_err)?;
            match open {
                None => return Err(PortError(format!("no release {id}"))),
                Some(false) => return Err(PortError(format!("release {id} is over"))),
                Some(true) => {}
            }
            queue_command(&tx, id, command)?;
            tx.commit().map_err(db_err)
        })
    }

    /// Claims a submission for running: `false` when it is done (withdrawn) already.
    pub fn claim_submission(&self, id: &str) -> Result<bool, PortError> {
        self.with(|c| {
            let n = c
                .execute(
                    "UPDATE submissions SET state = 'running' WHERE id = ?1 AND state != 'done'",
                    [id],
                )
                .map_err(db_err)?;
            Ok(n > 0)
        })
    }

    /// Withdraws a submission that has not started, with its final report. Fails when
    /// it has started (or is over).
    pub fn withdraw(&self, id: &str, by: &str, report: &str, at: Millis) -> Result<(), PortError> {
        self.with(|c| {
            let tx = c.transaction().map_err(db_err)?;
            let n = tx
                .execute(
                    "UPDATE submissions SET state = 'done', report = ?2 WHERE id = ?1 AND state = 'queued'",
                    params![id, report],
                )
                .map_err(db_err)?;
            if n == 0 {
                return Err(PortError(format!(
                    "release {id} is no longer queued; abort it as a running release"
                )));
            }
            chain(&tx, at, by, "release_withdrawn", Some((id, None)), report)?;
            tx.commit().map_err(db_err)
        })
    }

    /// Every service the store knows of (from releases and submissions), unordered.
    pub fn services(&self) -> Result<Vec<String>, PortError> {
        self.with(|c| {
            let mut stmt = c
                .prepare("SELECT service FROM releases UNION SELECT service FROM submissions")
                .map_err(db_err)?;
            let rows = stmt.query_map([], |r| r.get(0)).map_err(db_err)?;
            rows.collect::<Result<Vec<String>, _>>().map_err(db_err)
        })
    }

    /// Every freeze in force: `scope` is a service, or `*` for every service.
    pub fn freezes(&self) -> Result<Vec<serde_json::Value>, PortError> {
        self.with(|c| {
            let mut stmt = c
                .prepare("SELECT scope, actor, reason, at FROM freezes ORDER BY scope")
                .map_err(db_err)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(serde_json::json!({
                        "scope": r.get::<_, String>(0)?,
                        "actor": r.get::<_, String>(1)?,
                        "reason": r.get::<_, String>(2)?,
                        "at": r.get::<_, i64>(3)?,
                    }))
                })
                .map_err(db_err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
        })
    }

    /// Moves a submission on (`running`, or `done` with its report).
    pub fn set_submission(
        &self,
        id: &str,
        state: &str,
        report: Option<&str>,
    ) -> Result<(), PortError> {
        self.with(|c| {
            c.execute(
                "UPDATE submissions SET state = ?2, report = COALESCE(?3, report) WHERE id = ?1",
                params![id, state, report],
            )
            .map_err(db_err)?;
            Ok(())
        })
    }
}

// === impl SqliteStore: listing and the chain ===

impl SqliteStore {
    /// Releases, newest first, optionally of one service, at most `limit`.
    pub fn list_releases(
        &self,
        service: Option<&str>,
        limit: usize,
    ) -> Result<Vec<rampart_core::ports::ReleaseRecord>, PortError> {
        self.with(|c| {
            let mut stmt = c
                .prepare("SELECT id, service, version, policy, created_at, outcome FROM releases WHERE ?1 IS NULL OR service = ?1 ORDER BY created_at DESC, id DESC LIMIT ?2")
                .map_err(db_err)?;
            let rows = stmt
                .query_map(params![service, i64::try_from(limit).unwrap_or(i64::MAX)], super::row_to_release)
                .map_err(db_err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
        })
    }

    /// The position of the newest release log entry (0 when there is none), for
    /// following the logs of every release with [`SqliteStore::entries_after`].
    pub fn log_cursor(&self) -> Result<i64, PortError> {
        self.with(|c| {
            c.query_row("SELECT COALESCE(MAX(rowid), 0) FROM events", [], |r| {
                r.get(0)
            })
            .map_err(db_err)
        })
    }

    /// Release log entries appended after `cursor`, oldest first, at most `limit`, with
    /// their release id and their own cursor.
    pub fn entries_after(
        &self,
        cursor: i64,
        limit: usize,
    ) -> Result<Vec<(i64, String, StoredInput)>, PortError> {
        self.with(|c| {
            let mut stmt = c
                .prepare("SELECT rowid, release_id, seq, at, input, audit FROM events WHERE rowid > ?1 ORDER BY rowid LIMIT ?2")
                .map_err(db_err)?;
            let rows = stmt
                .query_map(params![cursor, i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, String>(5)?,
                    ))
                })
                .map_err(db_err)?;
            let mut out = Vec::new();
            for row in rows {
                let (rowid, release, seq, at, input, audit) = row.map_err(db_err)?;
                let (Ok(input), Ok(events)) =
                    (serde_json::from_str(&input), serde_json::from_str(&audit))
                else {
                    return Err(db_err(format!("entry {seq} of {release} is unreadable")));
                };
                out.push((
                    rowid,
                    release,
                    StoredInput {
                        seq: u64::try_from(seq).unwrap_or(0),
                        at: u64::try_from(at).unwrap_or(0),
                        input,
                        events,
                    },
                ));
            }
            Ok(out)
        })
    }

    /// Chain records, oldest first; with `release`, only that release's.
    pub fn chain_records(&self, release: Option<&str>) -> Result<Vec<ChainRecord>, PortError> {
        self.with(|c| {
            let mut stmt = c
                .prepare("SELECT id, at, actor, action, release_id, seq, body, prev, hash FROM chain WHERE ?1 IS NULL OR release_id = ?1 ORDER BY id")
                .map_err(db_err)?;
            let rows = stmt
                .query_map([release], |r| {
                    Ok(ChainRecord {
                        id: r.get(0)?,
                        at: r.get::<_, i64>(1)?.try_into().unwrap_or(0),
                        actor: r.get(2)?,
                        action: r.get(3)?,
                        release_id: r.get(4)?,
                        seq: r.get::<_, Option<i64>>(5)?.map(|s| s.try_into().unwrap_or(0)),
                        body: r.get(6)?,
                        prev: r.get(7)?,
                        hash: r.get(8)?,
                    })
                })
                .map_err(db_err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
        })
    }

    /// Checks the audit chain: every record's hash, every link, and that every release
    /// log entry and token written since the chain began matches what the chain
    /// recorded. A changed, inserted or deleted record or log entry is reported.
    pub fn verify_chain(&self) -> Result<ChainReport, PortError> {
        let records = self.chain_records(None)?;
        let mut problems = Vec::new();
        let mut prev = GENESIS.to_string();
        let mut logged = std::collections::HashMap::new();
        let mut tokens = std::collections::HashMap::new();
        let mut since = i64::MAX;
        // Requests asked and not yet applied, by (release, request, actor).
        let mut asked: std::collections::HashMap<(String, String, String), u32> =
            std::collections::HashMap::new();
        // What the chain says of releases, submissions and freezes.
        let mut created = std::collections::HashMap::new();
        let mut finished = std::collections::HashMap::new();
        let mut submitted = std::collections::HashMap::new();
        let mut frozen: std::collections::HashMap<String, Option<(String, String)>> =
            std::collections::HashMap::new();
        let json = |body: &str| serde_json::from_str::<serde_json::Value>(body).unwrap_or_default();
        for r in &records {
            if r.prev != prev {
                problems.push(format!(
                    "record {}: does not link to the record before it (one was changed, inserted or removed)",
                    r.id
                ));
            }
            if r.digest() != r.hash {
                problems.push(format!(
                    "record {} ({} by {}): its content does not match its hash",
                    r.id, r.action, r.actor
                ));
            }
            prev = r.hash.clone();
            match r.action.as_str() {
                "chain_started" => {
                    since = serde_json::from_str::<serde_json::Value>(&r.body)
                        .ok()
                        .and_then(|v| v["log_entries_before"].as_i64())
                        .unwrap_or(0);
                }
                a if a.starts_with("input:") => {
                    if let (Some(rel), Some(seq)) = (&r.release_id, r.seq) {
                        logged.insert((rel.clone(), seq), (r.id, r.body.clone()));
                        if let Some(kind) = request_for(&a["input:".len()..]) {
                            let key = (rel.clone(), kind.to_string(), r.actor.clone());
                            match asked.get_mut(&key) {
                                Some(n) if *n > 0 => *n -= 1,
                                _ => problems.push(format!(
                                    "record {}: release {rel} entry {seq} applies a {kind} by {} that nobody asked for",
                                    r.id, r.actor
                                )),
                            }
                        }
                    }
                }
                a if a.starts_with("request:") => {
                    if let Some(rel) = &r.release_id {
                        let key = (
                            rel.clone(),
                            a["request:".len()..].to_string(),
                            r.actor.clone(),
                        );
                        *asked.entry(key).or_default() += 1;
                    }
                }
                "release_created" => {
                    if let Some(rel) = &r.release_id {
                        created.insert(rel.clone(), json(&r.body));
                    }
                }
                "release_finished" => {
                    if let Some(rel) = &r.release_id {
                        finished.insert(rel.clone(), json(&r.body));
                    }
                }
                "release_submitted" => {
                    if let Some(rel) = &r.release_id {
                        let mut v = json(&r.body);
                        v["initiator"] = r.actor.clone().into();
                        submitted.insert(rel.clone(), v);
                    }
                }
                "freeze_on" | "freeze_off" => {
                    let v = json(&r.body);
                    let scope = v["scope"].as_str().unwrap_or("*").to_string();
                    let state = (r.action == "freeze_on").then(|| {
                        (
                            r.actor.clone(),
                            v["reason"].as_str().unwrap_or_default().to_string(),
                        )
                    });
                    frozen.insert(scope, state);
                }
                "token_created" | "token_revoked" => {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&r.body) {
                        let name = v["name"].as_str().unwrap_or_default().to_string();
                        let state = (r.action == "token_created").then(|| {
                            (
                                v["role"].as_str().unwrap_or_default().to_string(),
                                v["hash"].as_str().unwrap_or_default().to_string(),
                            )
                        });
                        tokens.insert(name, state);
                    }
                }
                _ => {}
            }
        }
        let entries: Vec<(i64, String, i64, u64, String, String)> = self.with(|c| {
            let mut stmt = c
                .prepare("SELECT rowid, release_id, seq, at, input, audit FROM events WHERE rowid > ?1 ORDER BY rowid")
                .map_err(db_err)?;
            let rows = stmt
                .query_map([since], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, i64>(3)?.try_into().unwrap_or(0), r.get(4)?, r.get(5)?))
                })
                .map_err(db_err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
        })?;
        let log_entries = entries.len() as u64;
        for (_, release, seq, at, input, audit) in entries {
            let seq = u64::try_from(seq).unwrap_or(0);
            match logged.remove(&(release.clone(), seq)) {
                None => problems.push(format!(
                    "release {release} entry {seq}: not in the audit chain (inserted after the fact)"
                )),
                Some((id, body)) if body != input_body(at, &input, &audit) => problems.push(format!(
                    "release {release} entry {seq}: differs from what chain record {id} recorded (changed after the fact)"
                )),
                Some(_) => {}
            }
        }
        let mut missing: Vec<_> = logged.into_iter().collect();
        missing.sort_by_key(|(_, (id, _))| *id);
        for ((release, seq), (id, _)) in missing {
            problems.push(format!(
                "release {release} entry {seq}: recorded by chain record {id} but gone from the log (deleted)"
            ));
        }
        let live: Vec<(String, String, String, bool)> = self.with(|c| {
            let mut stmt = c
                .prepare("SELECT name, role, hash, revoked_at IS NULL FROM tokens")
                .map_err(db_err)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .map_err(db_err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
        })?;
        for (name, role, hash, is_live) in live {
            match (tokens.get(&name), is_live) {
                (Some(Some((r, h))), true) if *r == role && *h == hash => {}
                (_, false) => {}
                _ => problems.push(format!(
                    "token {name}: its role or secret differs from what the chain recorded"
                )),
            }
        }
        self.verify_tables(&created, &finished, &submitted, &frozen, &mut problems)?;
        Ok(ChainReport {
            ok: problems.is_empty(),
            records: records.len() as u64,
            log_entries,
            head: prev,
            problems,
        })
    }

    /// Checks the releases, submissions and freezes tables against the chain.
    fn verify_tables(
        &self,
        created: &std::collections::HashMap<String, serde_json::Value>,
        finished: &std::collections::HashMap<String, serde_json::Value>,
        submitted: &std::collections::HashMap<String, serde_json::Value>,
        frozen: &std::collections::HashMap<String, Option<(String, String)>>,
        problems: &mut Vec<String>,
    ) -> Result<(), PortError> {
        type Row = (String, String, String, String, Option<String>);
        let releases: Vec<Row> = self.with(|c| {
            let mut stmt = c
                .prepare("SELECT id, service, version, policy, outcome FROM releases")
                .map_err(db_err)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })
                .map_err(db_err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
        })?;
        for (id, service, version, policy, outcome) in releases {
            // Releases created before the chain began have no record.
            let Some(c) = created.get(&id) else {
                continue;
            };
            if c["service"] != service.as_str()
                || c["version"] != version.as_str()
                || c["policy_sha256"] != sha256_hex(&policy).as_str()
            {
                problems.push(format!(
                    "release {id}: its service, version or policy differs from what the chain recorded"
                ));
            }
            let recorded = finished.get(&id).and_then(|f| f["outcome"].as_str());
            if recorded != outcome.as_deref() {
                problems.push(format!(
                    "release {id}: its outcome ({}) differs from what the chain recorded ({})",
                    outcome.as_deref().unwrap_or("none"),
                    recorded.unwrap_or("none")
                ));
            }
        }
        let subs: Vec<Submission> = self.with(|c| {
            let mut stmt = c
                .prepare(&format!("SELECT {SUBMISSION_COLUMNS} FROM submissions"))
                .map_err(db_err)?;
            let rows = stmt.query_map([], row_to_submission).map_err(db_err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
        })?;
        for s in subs {
            let ok = submitted.get(&s.id).is_some_and(|v| {
                v["initiator"] == s.initiator.as_str()
                    && v["version"] == s.version.as_str()
                    && v["service"] == s.service.as_str()
                    && v["policy_sha256"] == sha256_hex(&s.policy).as_str()
            });
            if !ok {
                problems.push(format!(
                    "submission {}: differs from what the chain recorded (initiator, version or policy)",
                    s.id
                ));
            }
        }
        let live: Vec<(String, String, String)> = self.with(|c| {
            let mut stmt = c
                .prepare("SELECT scope, actor, reason FROM freezes")
                .map_err(db_err)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .map_err(db_err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
        })?;
        for (scope, actor, reason) in &live {
            if frozen.get(scope) != Some(&Some((actor.clone(), reason.clone()))) {
                problems.push(format!("freeze of {scope}: not what the chain recorded"));
            }
        }
        for (scope, state) in frozen {
            if state.is_some() && !live.iter().any(|(s, _, _)| s == scope) {
                problems.push(format!(
                    "freeze of {scope}: recorded by the chain but gone from the table (lifted without a record)"
                ));
            }
        }
        Ok(())
    }
}
