//! The control plane's tables in the state store: API tokens (kept as hashes), the
//! hash-chained audit log, and the queue of releases submitted to `rampart serve`.
//!
//! Owns the chain's hashing rule and its verification. It must not decide who may do
//! what (roles are the server's) nor interpret release logs.

use sha2::{Digest, Sha256};

use super::StateStore;
use super::sql::{Row, Tx, Value, args};
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

/// The chain's last record: its id and hash (0 and the genesis hash when empty).
pub(super) type Head = (i64, String);

/// Reads the chain's last record inside `tx`. The caller holds the chain lock
/// (`Tx::lock_chain`), so the head stays the head until it commits.
pub(super) async fn head(tx: &mut Tx) -> Result<Head, PortError> {
    let last = tx
        .query_opt(
            "SELECT id, hash FROM chain ORDER BY id DESC LIMIT 1",
            args![],
        )
        .await?;
    match last {
        Some(r) => Ok((r.int(0)?, r.text(1)?)),
        None => Ok((0, GENESIS.to_string())),
    }
}

/// The statement that stores a chain record.
pub(super) const INSERT_CHAIN: &str = "INSERT INTO chain (id, at, actor, action, release_id, seq, body, prev, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";

/// The next record after `head`, hashed, with the arguments of [`INSERT_CHAIN`];
/// moves `head` on to it.
pub(super) fn next_record(
    head: &mut Head,
    at: Millis,
    actor: &str,
    action: &str,
    release: Option<(&str, Option<u64>)>,
    body: &str,
) -> Vec<Value> {
    let mut rec = ChainRecord {
        id: head.0 + 1,
        at,
        actor: actor.to_string(),
        action: action.to_string(),
        release_id: release.map(|(r, _)| r.to_string()),
        seq: release.and_then(|(_, s)| s),
        body: body.to_string(),
        prev: head.1.clone(),
        hash: String::new(),
    };
    rec.hash = rec.digest();
    let row = args![
        rec.id,
        rec.at,
        &rec.actor,
        &rec.action,
        rec.release_id.as_deref(),
        rec.seq,
        &rec.body,
        &rec.prev,
        &rec.hash
    ]
    .to_vec();
    *head = (rec.id, rec.hash);
    row
}

/// Appends a record to the chain inside `tx`, linked to the last one. The caller holds
/// the chain lock (`Tx::lock_chain`).
pub(super) async fn chain(
    tx: &mut Tx,
    at: Millis,
    actor: &str,
    action: &str,
    release: Option<(&str, Option<u64>)>,
    body: &str,
) -> Result<(), PortError> {
    let mut last = head(tx).await?;
    let row = next_record(&mut last, at, actor, action, release, body);
    tx.execute(INSERT_CHAIN, &row).await?;
    Ok(())
}

/// Queues an operator request for release `id` inside `tx`, and chains who asked.
pub(super) async fn queue_command(
    tx: &mut Tx,
    id: &str,
    command: &rampart_core::ports::OperatorCommand,
) -> Result<(), PortError> {
    tx.execute(
        "INSERT INTO commands (release_id, actor, reason, force, kind, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        args![id, &command.actor, &command.reason, command.force, command.kind.as_str(), command.at],
    )
    .await?;
    let body = serde_json::json!({"reason": command.reason, "force": command.force}).to_string();
    chain(
        tx,
        command.at,
        &command.actor,
        &format!("request:{}", command.kind.as_str()),
        Some((id, None)),
        &body,
    )
    .await
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

fn row_to_submission(r: &Row) -> Result<Submission, PortError> {
    Ok(Submission {
        id: r.text(0)?,
        service: r.text(1)?,
        version: r.text(2)?,
        stable: r.opt_text(3)?,
        hotfix: r.opt_text(4)?,
        initiator: r.text(5)?,
        policy: r.text(6)?,
        workdir: r.text(7)?,
        state: r.text(8)?,
        report: r.opt_text(9)?,
        created_at: r.uint(10)?,
    })
}

fn row_to_chain(r: &Row) -> Result<ChainRecord, PortError> {
    Ok(ChainRecord {
        id: r.int(0)?,
        at: r.uint(1)?,
        actor: r.text(2)?,
        action: r.text(3)?,
        release_id: r.opt_text(4)?,
        seq: r.opt_int(5)?.map(|s| u64::try_from(s).unwrap_or(0)),
        body: r.text(6)?,
        prev: r.text(7)?,
        hash: r.text(8)?,
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

// === impl StateStore: notes ===

impl StateStore {
    /// Records an action that changes no table (an approval asked for, say) in the
    /// audit chain, and returns the record's position.
    pub async fn note(
        &self,
        at: Millis,
        actor: &str,
        action: &str,
        release: Option<&str>,
        body: &str,
    ) -> Result<i64, PortError> {
        let mut tx = self.chained().await?;
        let mut last = head(&mut tx).await?;
        let row = next_record(
            &mut last,
            at,
            actor,
            action,
            release.map(|r| (r, None)),
            body,
        );
        tx.execute(INSERT_CHAIN, &row).await?;
        tx.commit().await?;
        Ok(last.0)
    }
}

// === impl StateStore: tokens ===

impl StateStore {
    /// Creates a token and returns its secret, which is not kept (only its SHA-256 is).
    /// Fails if an unrevoked token has that name.
    pub async fn create_token(
        &self,
        name: &str,
        role: &str,
        by: &str,
        at: Millis,
    ) -> Result<String, PortError> {
        let secret = format!("{TOKEN_PREFIX}{}", random_hex(32)?);
        let hash = sha256_hex(&secret);
        let mut tx = self.chained().await?;
        let live = tx
            .one(
                "SELECT EXISTS(SELECT 1 FROM tokens WHERE name = ?1 AND revoked_at IS NULL)",
                args![name],
            )
            .await?
            .bool(0)?;
        if live {
            return Err(PortError(format!(
                "a token named {name} exists; revoke it first (`rampart token revoke {name}`)"
            )));
        }
        tx.execute("DELETE FROM tokens WHERE name = ?1", args![name])
            .await?;
        tx.execute(
            "INSERT INTO tokens (name, role, hash, created_at, created_by) VALUES (?1, ?2, ?3, ?4, ?5)",
            args![name, role, hash.as_str(), at, by],
        )
        .await?;
        let body = serde_json::json!({"name": name, "role": role, "hash": hash}).to_string();
        chain(&mut tx, at, by, "token_created", None, &body).await?;
        tx.commit().await?;
        Ok(secret)
    }

    /// Revokes a token by name. Fails if no live token has that name.
    pub async fn revoke_token(&self, name: &str, by: &str, at: Millis) -> Result<(), PortError> {
        let mut tx = self.chained().await?;
        let n = tx
            .execute(
                "UPDATE tokens SET revoked_at = ?2 WHERE name = ?1 AND revoked_at IS NULL",
                args![name, at],
            )
            .await?;
        if n == 0 {
            return Err(PortError(format!("no live token named {name}")));
        }
        let body = serde_json::json!({"name": name}).to_string();
        chain(&mut tx, at, by, "token_revoked", None, &body).await?;
        tx.commit().await
    }

    /// The name and role of the live token with this secret.
    pub async fn token(&self, secret: &str) -> Result<Option<(String, String)>, PortError> {
        let hash = sha256_hex(secret);
        let row = self
            .db
            .conn()
            .await?
            .query_opt(
                "SELECT name, role FROM tokens WHERE hash = ?1 AND revoked_at IS NULL",
                args![hash],
            )
            .await?;
        row.map(|r| Ok((r.text(0)?, r.text(1)?))).transpose()
    }

    /// Every token, newest first, without secrets.
    pub async fn tokens(&self) -> Result<Vec<TokenInfo>, PortError> {
        let rows = self
            .db
            .conn()
            .await?
            .query(
                "SELECT name, role, created_at, created_by, revoked_at IS NOT NULL FROM tokens ORDER BY created_at DESC, name",
                args![],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(TokenInfo {
                    name: r.text(0)?,
                    role: r.text(1)?,
                    created_at: r.uint(2)?,
                    created_by: r.text(3)?,
                    revoked: r.bool(4)?,
                })
            })
            .collect()
    }
}

// === impl StateStore: submissions ===

impl StateStore {
    /// Queues a release for `rampart serve`, and records who asked.
    pub async fn submit(&self, s: &Submission) -> Result<(), PortError> {
        let mut tx = self.chained().await?;
        tx.execute(
            &format!("INSERT INTO submissions ({SUBMISSION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"),
            args![
                &s.id,
                &s.service,
                &s.version,
                s.stable.as_deref(),
                s.hotfix.as_deref(),
                &s.initiator,
                &s.policy,
                &s.workdir,
                &s.state,
                s.report.as_deref(),
                s.created_at
            ],
        )
        .await?;
        let body = serde_json::json!({
            "service": s.service,
            "version": s.version,
            "stable": s.stable,
            "hotfix": s.hotfix,
            "policy_sha256": sha256_hex(&s.policy),
        })
        .to_string();
        chain(
            &mut tx,
            s.created_at,
            &s.initiator,
            "release_submitted",
            Some((&s.id, None)),
            &body,
        )
        .await?;
        tx.commit().await
    }

    /// A submission by release id.
    pub async fn submission(&self, id: &str) -> Result<Option<Submission>, PortError> {
        let row = self
            .db
            .conn()
            .await?
            .query_opt(
                &format!("SELECT {SUBMISSION_COLUMNS} FROM submissions WHERE id = ?1"),
                args![id],
            )
            .await?;
        row.as_ref().map(row_to_submission).transpose()
    }

    /// Submissions not done yet, oldest first.
    pub async fn open_submissions(&self) -> Result<Vec<Submission>, PortError> {
        let rows = self
            .db
            .conn()
            .await?
            .query(
                &format!("SELECT {SUBMISSION_COLUMNS} FROM submissions WHERE state != 'done' ORDER BY rowid"),
                args![],
            )
            .await?;
        rows.iter().map(row_to_submission).collect()
    }

    /// Queues an operator request for exactly release `id`: fails when it does not
    /// exist or is over (a request meant for one release never reaches the next).
    pub async fn push_command_to(
        &self,
        id: &str,
        command: &rampart_core::ports::OperatorCommand,
    ) -> Result<(), PortError> {
        let mut tx = self.chained().await?;
        let open = tx
            .query_opt(
                "SELECT outcome IS NULL FROM releases WHERE id = ?1",
                args![id],
            )
            .await?
            .map(|r| r.bool(0))
            .transpose()?;
        match open {
            None => return Err(PortError(format!("no release {id}"))),
            Some(false) => return Err(PortError(format!("release {id} is over"))),
            Some(true) => {}
        }
        queue_command(&mut tx, id, command).await?;
        tx.commit().await
    }

    /// Claims a submission for running: `false` when it is done (withdrawn) already.
    pub async fn claim_submission(&self, id: &str) -> Result<bool, PortError> {
        let mut tx = self.acting().await?;
        let n = tx
            .execute(
                "UPDATE submissions SET state = 'running' WHERE id = ?1 AND state != 'done'",
                args![id],
            )
            .await?;
        tx.commit().await?;
        Ok(n > 0)
    }

    /// Withdraws a submission that has not started, with its final report. Fails when
    /// it has started (or is over).
    pub async fn withdraw(
        &self,
        id: &str,
        by: &str,
        report: &str,
        at: Millis,
    ) -> Result<(), PortError> {
        let mut tx = self.chained().await?;
        let n = tx
            .execute(
                "UPDATE submissions SET state = 'done', report = ?2 WHERE id = ?1 AND state = 'queued'",
                args![id, report],
            )
            .await?;
        if n == 0 {
            return Err(PortError(format!(
                "release {id} is no longer queued; abort it as a running release"
            )));
        }
        chain(
            &mut tx,
            at,
            by,
            "release_withdrawn",
            Some((id, None)),
            report,
        )
        .await?;
        tx.commit().await
    }

    /// Every service the store knows of (from releases and submissions), unordered.
    pub async fn services(&self) -> Result<Vec<String>, PortError> {
        let rows = self
            .db
            .conn()
            .await?
            .query(
                "SELECT service FROM releases UNION SELECT service FROM submissions",
                args![],
            )
            .await?;
        rows.iter().map(|r| r.text(0)).collect()
    }

    /// Every freeze in force: `scope` is a service, or `*` for every service.
    pub async fn freezes(&self) -> Result<Vec<serde_json::Value>, PortError> {
        let rows = self
            .db
            .conn()
            .await?
            .query(
                "SELECT scope, actor, reason, at FROM freezes ORDER BY scope",
                args![],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(serde_json::json!({
                    "scope": r.text(0)?,
                    "actor": r.text(1)?,
                    "reason": r.text(2)?,
                    "at": r.int(3)?,
                }))
            })
            .collect()
    }

    /// Moves a submission on (`running`, or `done` with its report).
    pub async fn set_submission(
        &self,
        id: &str,
        state: &str,
        report: Option<&str>,
    ) -> Result<(), PortError> {
        let mut tx = self.acting().await?;
        tx.execute(
            "UPDATE submissions SET state = ?2, report = COALESCE(?3, report) WHERE id = ?1",
            args![id, state, report],
        )
        .await?;
        tx.commit().await
    }
}

// === impl StateStore: listing and the chain ===

impl StateStore {
    /// Releases, newest first, optionally of one service, at most `limit`.
    pub async fn list_releases(
        &self,
        service: Option<&str>,
        limit: usize,
    ) -> Result<Vec<rampart_core::ports::ReleaseRecord>, PortError> {
        let rows = self
            .db
            .conn()
            .await?
            .query(
                &format!("SELECT {} FROM releases WHERE CAST(?1 AS TEXT) IS NULL OR service = ?1 ORDER BY created_at DESC, id DESC LIMIT ?2", super::RELEASE_COLUMNS),
                args![service, u64::try_from(limit).unwrap_or(u64::MAX)],
            )
            .await?;
        rows.iter().map(super::row_to_release).collect()
    }

    /// The position of the newest release log entry (0 when there is none), for
    /// following the logs of every release with [`StateStore::entries_after`].
    pub async fn log_cursor(&self) -> Result<i64, PortError> {
        self.db
            .conn()
            .await?
            .one("SELECT COALESCE(MAX(rowid), 0) FROM events", args![])
            .await?
            .int(0)
    }

    /// Release log entries appended after `cursor`, oldest first, at most `limit`, with
    /// their release id and their own cursor.
    pub async fn entries_after(
        &self,
        cursor: i64,
        limit: usize,
    ) -> Result<Vec<(i64, String, StoredInput)>, PortError> {
        let rows = self
            .db
            .conn()
            .await?
            .query(
                "SELECT seq, at, input, audit, rowid, release_id FROM events WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
                args![cursor, u64::try_from(limit).unwrap_or(u64::MAX)],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let release = r.text(5)?;
                let entry = super::row_to_entry(r, &release)?;
                Ok((r.int(4)?, release, entry))
            })
            .collect()
    }

    /// Chain records, oldest first; with `release`, only that release's.
    pub async fn chain_records(
        &self,
        release: Option<&str>,
    ) -> Result<Vec<ChainRecord>, PortError> {
        let rows = self
            .db
            .conn()
            .await?
            .query(
                "SELECT id, at, actor, action, release_id, seq, body, prev, hash FROM chain WHERE CAST(?1 AS TEXT) IS NULL OR release_id = ?1 ORDER BY id",
                args![release],
            )
            .await?;
        rows.iter().map(row_to_chain).collect()
    }

    /// Every row of a query the verifier reads whole.
    #[cfg(test)]
    pub(super) async fn rows(
        &self,
        sql: &str,
        args: &[super::sql::Value],
    ) -> Result<Vec<Row>, PortError> {
        self.db.conn().await?.query(sql, args).await
    }

    /// Checks the audit chain: every record's hash, every link, and that every release
    /// log entry and token written since the chain began matches what the chain
    /// recorded. A changed, inserted or deleted record or log entry is reported.
    pub async fn verify_chain(&self) -> Result<ChainReport, PortError> {
        // One snapshot for every read, so appends landing meanwhile (another replica,
        // a running release) are neither half seen nor taken for tampering.
        let mut snap = self.db.snapshot().await?;
        let records = snap
            .query(
                "SELECT id, at, actor, action, release_id, seq, body, prev, hash FROM chain ORDER BY id",
                args![],
            )
            .await?
            .iter()
            .map(row_to_chain)
            .collect::<Result<Vec<_>, _>>()?;
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
        let entries = snap.query(
                "SELECT rowid, release_id, seq, at, input, audit FROM events WHERE rowid > ?1 ORDER BY rowid",
                args![since],
            )
            .await?
            .iter()
            .map(|r| Ok((r.int(0)?, r.text(1)?, r.int(2)?, r.uint(3)?, r.text(4)?, r.text(5)?)))
            .collect::<Result<Vec<_>, PortError>>()?;
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
        let live = snap
            .query(
                "SELECT name, role, hash, revoked_at IS NULL FROM tokens",
                args![],
            )
            .await?
            .iter()
            .map(|r| Ok((r.text(0)?, r.text(1)?, r.text(2)?, r.bool(3)?)))
            .collect::<Result<Vec<_>, PortError>>()?;
        for (name, role, hash, is_live) in live {
            match (tokens.get(&name), is_live) {
                (Some(Some((r, h))), true) if *r == role && *h == hash => {}
                (_, false) => {}
                _ => problems.push(format!(
                    "token {name}: its role or secret differs from what the chain recorded"
                )),
            }
        }
        self.verify_tables(
            &mut snap,
            &created,
            &finished,
            &submitted,
            &frozen,
            &mut problems,
        )
        .await?;
        Ok(ChainReport {
            ok: problems.is_empty(),
            records: records.len() as u64,
            log_entries,
            head: prev,
            problems,
        })
    }

    /// Checks the releases, submissions and freezes tables against the chain.
    async fn verify_tables(
        &self,
        snap: &mut Tx,
        created: &std::collections::HashMap<String, serde_json::Value>,
        finished: &std::collections::HashMap<String, serde_json::Value>,
        submitted: &std::collections::HashMap<String, serde_json::Value>,
        frozen: &std::collections::HashMap<String, Option<(String, String)>>,
        problems: &mut Vec<String>,
    ) -> Result<(), PortError> {
        let releases = snap
            .query(
                "SELECT id, service, version, policy, outcome FROM releases",
                args![],
            )
            .await?
            .iter()
            .map(|r| {
                Ok((
                    r.text(0)?,
                    r.text(1)?,
                    r.text(2)?,
                    r.text(3)?,
                    r.opt_text(4)?,
                ))
            })
            .collect::<Result<Vec<_>, PortError>>()?;
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
        let subs = snap
            .query(
                &format!("SELECT {SUBMISSION_COLUMNS} FROM submissions"),
                args![],
            )
            .await?
            .iter()
            .map(row_to_submission)
            .collect::<Result<Vec<_>, _>>()?;
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
        let live = snap
            .query("SELECT scope, actor, reason FROM freezes", args![])
            .await?
            .iter()
            .map(|r| Ok((r.text(0)?, r.text(1)?, r.text(2)?)))
            .collect::<Result<Vec<_>, PortError>>()?;
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
