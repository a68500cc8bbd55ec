//! The audit chain: a hash-chained record of everything done to the store (each
//! record's hash covers the previous one's), and its verification against the tables.
//!
//! Owns the chain's hashing rule, appending records inside a caller's transaction, and
//! `verify_chain`. It must not decide who may do what (roles are the server's) nor
//! interpret release logs beyond comparing them with what the chain recorded.

use sha2::{Digest, Sha256};

use super::StateStore;
use super::error::StoreError;
use super::sql::{Row, Tx, Value, args, db_err};
use super::submissions::{SUBMISSION_COLUMNS, row_to_submission};
use rampart_core::Millis;
use rampart_core::ports::StoredInput;

/// The hash the first chain record links to.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// SHA-256 of `text`, in lower-case hex.
pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
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
    /// The record after `head`, hashed: the one rule both stores link records by.
    pub(crate) fn next(
        head: &Head,
        at: Millis,
        actor: &str,
        action: &str,
        release: Option<(&str, Option<u64>)>,
        body: &str,
    ) -> ChainRecord {
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
        rec
    }

    /// The record's hash: [`HASH_V2`] and SHA-256 over the previous hash and every
    /// field, each length-prefixed (an absent field told apart from an empty one), so
    /// no two different records hash alike.
    pub(crate) fn digest(&self) -> String {
        let mut text = String::from("rampart-chain/2");
        let mut field = |value: Option<&str>| match value {
            Some(v) => text.push_str(&format!("\n{}:{v}", v.len())),
            None => text.push_str("\n-"),
        };
        field(Some(&self.prev));
        field(Some(&self.id.to_string()));
        field(Some(&self.at.to_string()));
        field(Some(&self.actor));
        field(Some(&self.action));
        field(self.release_id.as_deref());
        field(self.seq.map(|s| s.to_string()).as_deref());
        field(Some(&self.body));
        format!("{HASH_V2}{}", sha256_hex(&text))
    }

    /// Whether the record's hash is its own (the way it was written: [`HASH_V2`] or
    /// the first way).
    pub(crate) fn intact(&self) -> bool {
        if self.hash.starts_with(HASH_V2) {
            self.digest() == self.hash
        } else {
            self.digest_v1() == self.hash
        }
    }

    /// The hash of records written before [`HASH_V2`]: fields joined with line breaks,
    /// which a field holding one (or an empty field for an absent one) could shift
    /// unseen. Checked only for records older than every record hashed the new way.
    fn digest_v1(&self) -> String {
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

/// What new records' hashes begin with: their hashing is [`ChainRecord::digest`].
const HASH_V2: &str = "v2:";

/// Walks the chain's links in order: each record must link to the one before it and
/// match its hash, by the hashing its hash names (`v2:`, else the one before it). A
/// record of either kind may follow one of the other: a rampart before the new hashing
/// (a replica not yet upgraded, a rollback of the binary) still appends the old kind,
/// and a record's kind cannot be changed without changing its hash, which the next
/// record links to.
pub(crate) struct Links {
    prev: String,
}

impl Links {
    pub(crate) fn new() -> Links {
        Links {
            prev: GENESIS.to_string(),
        }
    }

    /// The last record's hash (the genesis hash before any).
    pub(crate) fn head(self) -> String {
        self.prev
    }

    /// Adds to `problems` what is wrong with `r`'s place after the records before it:
    /// a broken link, or content that does not match its hash.
    pub(crate) fn check(&mut self, r: &ChainRecord, problems: &mut Vec<String>) {
        if r.prev != self.prev {
            problems.push(format!(
                "record {}: does not link to the record before it (one was changed, inserted or removed)",
                r.id
            ));
        }
        let expected = if r.hash.starts_with(HASH_V2) {
            r.digest()
        } else {
            r.digest_v1()
        };
        if expected != r.hash {
            problems.push(format!(
                "record {} ({} by {}): its content does not match its hash",
                r.id, r.action, r.actor
            ));
        }
        self.prev = r.hash.clone();
    }
}

/// The chain's last record: its id and hash (0 and the genesis hash when empty).
pub(crate) type Head = (i64, String);

/// Reads the chain's last record inside `tx`. The caller holds the chain lock
/// (`Tx::lock_chain`), so the head stays the head until it commits.
pub(super) async fn head(tx: &mut Tx) -> Result<Head, StoreError> {
    let last = tx
        .query_opt(
            "SELECT id, hash FROM chain ORDER BY id DESC LIMIT 1",
            args![],
        )
        .await?;
    match last {
        Some(r) => Ok((r.int(0)?, r.text(1)?)),
        None => Ok(genesis()),
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
    let rec = ChainRecord::next(head, at, actor, action, release, body);
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
) -> Result<(), StoreError> {
    let mut last = head(tx).await?;
    let row = next_record(&mut last, at, actor, action, release, body);
    tx.execute(INSERT_CHAIN, &row).await?;
    Ok(())
}

/// The head of an empty chain.
pub(crate) fn genesis() -> Head {
    (0, GENESIS.to_string())
}

/// The chain body of a stored input: exactly the columns the log keeps (its time, the
/// input, the audit events).
pub(crate) fn input_body(at: Millis, input: &str, audit: &str) -> String {
    format!("{at}\n{input}\n{audit}")
}

/// The request an operator input must have been asked for with, by its input type.
pub(crate) fn request_for(input_type: &str) -> Option<&'static str> {
    match input_type {
        "approved" => Some("approve"),
        "pause" => Some("pause"),
        "unpause" => Some("resume"),
        "promote" => Some("promote"),
        _ => None,
    }
}

/// Forced rollbacks asked for (`request:rollback` with `force`) and applied
/// (`input:abort` with `force`), by release and actor: a rollback applied with force
/// that nobody asked for with force (the flag flipped in the queued row) goes past the
/// migration guard, a deployer's right, without trace but here.
#[derive(Default)]
pub(crate) struct Forced(std::collections::HashMap<(String, String), u32>);

impl Forced {
    /// Notes chain record `id` (`action` on `release` by `actor`, with `body`); says
    /// in `problems` when it applies a forced rollback nobody asked for.
    pub(crate) fn note(
        &mut self,
        record: (i64, &str, &str, &str),
        body: &str,
        problems: &mut Vec<String>,
    ) {
        let (id, action, release, actor) = record;
        let key = (release.to_string(), actor.to_string());
        let forced = |json: &str| {
            serde_json::from_str::<serde_json::Value>(json)
                .is_ok_and(|v| v["force"] == serde_json::Value::Bool(true))
        };
        match action {
            "request:rollback" if forced(body) => *self.0.entry(key).or_default() += 1,
            // The input's JSON is the body's second line (see `input_body`).
            "input:abort" if body.lines().nth(1).is_some_and(forced) => match self.0.get_mut(&key) {
                Some(n) if *n > 0 => *n -= 1,
                _ => problems.push(format!(
                    "record {id}: release {release} applies a forced rollback by {actor} that nobody asked for with force"
                )),
            },
            _ => {}
        }
    }
}

/// Who an input came from, for the chain.
pub(crate) fn input_actor(entry: &StoredInput) -> String {
    use rampart_core::release::Input;
    match &entry.input {
        Input::Approved { by, .. } => by.clone(),
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

pub(super) fn row_to_chain(r: &Row) -> Result<ChainRecord, StoreError> {
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

/// Whether the store holds anything the chain covers.
async fn holds_chained_data(tx: &mut Tx) -> Result<bool, StoreError> {
    tx.one(
        "SELECT EXISTS(SELECT 1 FROM releases) OR EXISTS(SELECT 1 FROM tokens) OR EXISTS(SELECT 1 FROM submissions) OR EXISTS(SELECT 1 FROM freezes)",
        args![],
    )
    .await?
    .bool(0)
}

/// What the chain says of the tables it covers, for [`StateStore::verify_tables`].
#[derive(Clone, Copy)]
struct Chained<'a> {
    created: &'a std::collections::HashMap<String, serde_json::Value>,
    finished: &'a std::collections::HashMap<String, serde_json::Value>,
    submitted: &'a std::collections::HashMap<String, serde_json::Value>,
    frozen: &'a std::collections::HashMap<String, Option<(String, String)>>,
    /// The release rows the chain began with; `None` from an older rampart.
    existing: Option<&'a std::collections::HashSet<String>>,
    /// Submissions recorded leaving the queue.
    dequeued: &'a std::collections::HashSet<String>,
}

/// Which release log entries predate the chain, from its `chain_started` record.
#[derive(Debug, Default)]
enum Before {
    /// No `chain_started` record: every entry must be in the chain.
    #[default]
    Nothing,
    /// A chain started by an older rampart: entries at or below this row position.
    Rows(i64),
    /// The last entry of each release that had one when the chain started.
    Entries(std::collections::HashMap<String, i64>),
}

impl Before {
    fn from_body(body: &str) -> Before {
        let v = serde_json::from_str::<serde_json::Value>(body).unwrap_or_default();
        match v["releases_before"].as_object() {
            Some(m) => Before::Entries(
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_i64().unwrap_or(-1)))
                    .collect(),
            ),
            None => Before::Rows(v["log_entries_before"].as_i64().unwrap_or(0)),
        }
    }

    /// Whether an entry predates the chain. An entry of a release the chain saw
    /// created never does, wherever the database put its row.
    fn covers(&self, chained_release: bool, release: &str, seq: i64, rowid: i64) -> bool {
        !chained_release
            && match self {
                Before::Nothing => false,
                Before::Rows(n) => rowid <= *n,
                Before::Entries(m) => m.get(release).is_some_and(|last| seq <= *last),
            }
    }
}

// === impl StateStore: the chain ===

impl StateStore {
    /// Begins the audit chain once: when this open created the chain's table (a new
    /// store, or one from before the chain), recording which release log entries
    /// predate it (those cannot be verified); or when the store holds nothing the
    /// chain covers. A chain found empty in a store that holds releases, tokens,
    /// submissions or freezes was emptied: it is left so, for `verify_chain` to
    /// report, never restarted over the evidence.
    pub(super) async fn start_chain(&self, table_is_new: bool) -> Result<(), StoreError> {
        let mut tx = self.chained().await?;
        let started = tx
            .one("SELECT EXISTS(SELECT 1 FROM chain)", args![])
            .await?
            .bool(0)?;
        // An existing table, found empty while the store holds what it covers: emptied.
        let emptied = !table_is_new && holds_chained_data(&mut tx).await?;
        if started || emptied {
            return tx.commit().await;
        }
        let r = tx
            .one(
                "SELECT COALESCE(MAX(rowid), 0), COALESCE(MAX(at), 0) FROM events",
                args![],
            )
            .await?;
        let (rowid, at) = (r.int(0)?, r.uint(1)?);
        let mut before = serde_json::Map::new();
        for r in tx
            .query(
                "SELECT release_id, MAX(seq) FROM events GROUP BY release_id",
                args![],
            )
            .await?
        {
            before.insert(r.text(0)?, r.int(1)?.into());
        }
        // Every release row there is now: any other one without a `release_created`
        // record was inserted after the chain began.
        let mut existing = Vec::new();
        for r in tx.query("SELECT id FROM releases", args![]).await? {
            existing.push(serde_json::Value::from(r.text(0)?));
        }
        let body = serde_json::json!({
            "log_entries_before": rowid,
            "releases_before": before,
            "releases_existing": existing,
        })
        .to_string();
        chain(&mut tx, at, "rampart", "chain_started", None, &body).await?;
        tx.commit().await
    }

    /// Records an action that changes no table (an approval asked for, say) in the
    /// audit chain, and returns the record's position.
    pub async fn note(
        &self,
        at: Millis,
        actor: &str,
        action: &str,
        release: Option<&str>,
        body: &str,
    ) -> Result<i64, StoreError> {
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

    /// [`StateStore::note`] for a replica acting on a release: refused unless it still
    /// holds the lease (a deposed leader must not record, then do, what its successor
    /// may be doing).
    pub async fn note_acting(
        &self,
        at: Millis,
        action: &str,
        release: &str,
        body: &str,
    ) -> Result<i64, StoreError> {
        let mut tx = self.acting().await?;
        let mut last = head(&mut tx).await?;
        let row = next_record(
            &mut last,
            at,
            "rampart",
            action,
            Some((release, None)),
            body,
        );
        tx.execute(INSERT_CHAIN, &row).await?;
        tx.commit().await?;
        Ok(last.0)
    }

    /// Checks one release's log against the chain before it is acted on again: every
    /// entry must be the one the chain recorded at its position. A release created
    /// before the chain began has nothing to check against.
    pub(super) async fn check_release_log(&self, release_id: &str) -> Result<(), StoreError> {
        let records = self.chain_records(Some(release_id)).await?;
        if !records.iter().any(|r| r.action == "release_created") {
            return Ok(());
        }
        let mut logged: std::collections::HashMap<u64, String> = records
            .into_iter()
            .filter(|r| r.action.starts_with("input:"))
            .filter_map(|r| Some((r.seq?, r.body)))
            .collect();
        let rows = self
            .db
            .conn()
            .await?
            .query(
                "SELECT seq, at, input, audit FROM events WHERE release_id = ?1 ORDER BY seq",
                args![release_id],
            )
            .await?;
        for r in &rows {
            let seq = r.uint(0)?;
            let body = input_body(r.uint(1)?, &r.text(2)?, &r.text(3)?);
            if logged.remove(&seq).as_deref() != Some(body.as_str()) {
                return Err(StoreError::Tampered(format!(
                    "release {release_id}'s log entry {seq} is not what the audit chain recorded: rampart will not act on it (check the store with `rampart audit verify`)"
                )));
            }
        }
        if let Some(seq) = logged.keys().min() {
            return Err(StoreError::Tampered(format!(
                "release {release_id}'s log entry {seq} was recorded by the audit chain but is gone: rampart will not act on it (check the store with `rampart audit verify`)"
            )));
        }
        Ok(())
    }

    /// Chain records, oldest first; with `release`, only that release's.
    pub async fn chain_records(
        &self,
        release: Option<&str>,
    ) -> Result<Vec<ChainRecord>, StoreError> {
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
    ) -> Result<Vec<Row>, StoreError> {
        self.db.conn().await?.query(sql, args).await
    }

    /// Checks the audit chain: every record's hash, every link, and that every release
    /// log entry and token written since the chain began matches what the chain
    /// recorded. A changed, inserted or deleted record or log entry is reported.
    pub async fn verify_chain(&self) -> Result<ChainReport, StoreError> {
        // One snapshot for every read, so appends landing meanwhile (another replica,
        // a running release) are neither half seen nor taken for tampering.
        // On a connection of its own: the check reads the whole history, and releases
        // must go on appending meanwhile. One check at a time.
        let _turn = self
            .long_reads
            .acquire()
            .await
            .map_err(|e| db_err(e.to_string()))?;
        let mut snap = self.long_reader().await?.snapshot().await?;
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
        let mut links = Links::new();
        let mut logged = std::collections::HashMap::new();
        let mut tokens = std::collections::HashMap::new();
        let mut before = Before::Nothing;
        // Requests asked and not yet applied, by (release, request, actor).
        let mut asked: std::collections::HashMap<(String, String, String), u32> =
            std::collections::HashMap::new();
        // What the chain says of releases, submissions and freezes.
        let mut created = std::collections::HashMap::new();
        let mut finished = std::collections::HashMap::new();
        let mut submitted = std::collections::HashMap::new();
        // The release rows the chain began with (none recorded by an older rampart),
        // and the submissions it saw leave the queue (withdrawn, or done).
        let mut existing: Option<std::collections::HashSet<String>> = None;
        let mut dequeued = std::collections::HashSet::new();
        let mut frozen: std::collections::HashMap<String, Option<(String, String)>> =
            std::collections::HashMap::new();
        let mut forced = Forced::default();
        let json = |body: &str| serde_json::from_str::<serde_json::Value>(body).unwrap_or_default();
        for r in &records {
            links.check(r, &mut problems);
            if let Some(rel) = &r.release_id {
                forced.note((r.id, &r.action, rel, &r.actor), &r.body, &mut problems);
            }
            match r.action.as_str() {
                "chain_started" => {
                    before = Before::from_body(&r.body);
                    existing = json(&r.body)["releases_existing"].as_array().map(|ids| {
                        ids.iter()
                            .filter_map(|id| id.as_str().map(str::to_string))
                            .collect()
                    });
                }
                "release_withdrawn" | "submission_done" => {
                    if let Some(rel) = &r.release_id {
                        dequeued.insert(rel.clone());
                    }
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
                        // A release that ran left its queue (a replica of an older
                        // rampart marks it done without `submission_done`).
                        dequeued.insert(rel.clone());
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
        match records.first() {
            Some(first) if first.action != "chain_started" => problems.push(format!(
                "the chain does not begin with its chain_started record: records before {} were deleted",
                first.id
            )),
            None if holds_chained_data(&mut snap).await? => problems.push(
                "the store holds releases, tokens, submissions or freezes but no audit chain: the chain was emptied".into(),
            ),
            _ => {}
        }
        // Every entry is read, whatever its row position: a row id is the database's
        // to give, and an explicit one puts a forged entry anywhere.
        let entries = snap
            .query(
                "SELECT rowid, release_id, seq, at, input, audit FROM events ORDER BY rowid",
                args![],
            )
            .await?
            .iter()
            .map(|r| {
                Ok((
                    r.int(0)?,
                    r.text(1)?,
                    r.int(2)?,
                    r.uint(3)?,
                    r.text(4)?,
                    r.text(5)?,
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let mut log_entries = 0;
        for (rowid, release, seq, at, input, audit) in entries {
            if before.covers(created.contains_key(&release), &release, seq, rowid) {
                continue;
            }
            log_entries += 1;
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
            .collect::<Result<Vec<_>, StoreError>>()?;
        for (name, role, hash, is_live) in live {
            match (tokens.get(&name), is_live) {
                (Some(Some((r, h))), true) if *r == role && *h == hash => {}
                (_, false) => {}
                _ => problems.push(format!(
                    "token {name}: its role or secret differs from what the chain recorded"
                )),
            }
        }
        let chained = Chained {
            created: &created,
            finished: &finished,
            submitted: &submitted,
            frozen: &frozen,
            existing: existing.as_ref(),
            dequeued: &dequeued,
        };
        self.verify_tables(&mut snap, &chained, &mut problems)
            .await?;
        Ok(ChainReport {
            ok: problems.is_empty(),
            records: records.len() as u64,
            log_entries,
            head: links.head(),
            problems,
        })
    }

    /// Checks the releases, submissions and freezes tables against the chain.
    async fn verify_tables(
        &self,
        snap: &mut Tx,
        chained: &Chained<'_>,
        problems: &mut Vec<String>,
    ) -> Result<(), StoreError> {
        let Chained {
            created,
            finished,
            submitted,
            frozen,
            existing,
            dequeued,
        } = *chained;
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
            .collect::<Result<Vec<_>, StoreError>>()?;
        for id in created.keys() {
            if !releases.iter().any(|r| &r.0 == id) {
                problems.push(format!(
                    "release {id}: created in the chain but its row is gone from the releases table (deleted)"
                ));
            }
        }
        for (id, service, version, policy, outcome) in releases {
            // Releases created before the chain began have no record; since the chain
            // records which rows it began with, any other row without one was inserted.
            let Some(c) = created.get(&id) else {
                if existing.is_some_and(|ids| !ids.contains(&id)) {
                    problems.push(format!(
                        "release {id}: in the releases table but never recorded created in the chain (inserted)"
                    ));
                }
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
        for id in submitted.keys() {
            if !subs.iter().any(|s| &s.id == id) {
                problems.push(format!(
                    "submission {id}: submitted in the chain but its row is gone from the submissions table (deleted)"
                ));
            }
        }
        for s in &subs {
            // Recorded leaving the queue since submissions are marked `tracked`.
            let tracked = submitted
                .get(&s.id)
                .is_some_and(|v| v["tracked"] == serde_json::json!(true));
            if tracked && s.state == "done" && !dequeued.contains(&s.id) {
                problems.push(format!(
                    "submission {}: done, but the chain never recorded it withdrawn or finished (dropped from the queue)",
                    s.id
                ));
            }
        }
        for s in subs {
            let ok = submitted.get(&s.id).is_some_and(|v| {
                v["initiator"] == s.initiator.as_str()
                    && v["version"] == s.version.as_str()
                    && v["service"] == s.service.as_str()
                    && v["policy_sha256"] == sha256_hex(&s.policy).as_str()
                    && v["stable"] == serde_json::json!(s.stable)
                    && v["hotfix"] == serde_json::json!(s.hotfix)
                    // Recorded since the directory was: older records have none.
                    && v.get("workdir").is_none_or(|w| *w == s.workdir.as_str())
            });
            if !ok {
                problems.push(format!(
                    "submission {}: differs from what the chain recorded (initiator, version, stable, hotfix, policy or directory)",
                    s.id
                ));
            }
        }
        let live = snap
            .query("SELECT scope, actor, reason FROM freezes", args![])
            .await?
            .iter()
            .map(|r| Ok((r.text(0)?, r.text(1)?, r.text(2)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(head: &Head, release: Option<&str>, old: bool) -> ChainRecord {
        let mut r = ChainRecord::next(
            head,
            7,
            "alice",
            "freeze_on",
            release.map(|r| (r, None)),
            "b",
        );
        if old {
            r.hash = r.digest_v1();
        }
        r
    }

    fn problems(chain: &[ChainRecord]) -> Vec<String> {
        let (mut links, mut problems) = (Links::new(), Vec::new());
        chain.iter().for_each(|r| links.check(r, &mut problems));
        problems
    }

    /// Three records after `start`, each hashed the old way or not.
    fn chain(old: [bool; 3]) -> Vec<ChainRecord> {
        let mut head = genesis();
        old.iter()
            .map(|o| {
                let r = record(&head, None, *o);
                head = (r.id, r.hash.clone());
                r
            })
            .collect()
    }

    /// Records of both hashings verify in any order (a replica not yet upgraded appends
    /// the old kind after the new), and an edit of either kind is found.
    #[test]
    fn a_chain_of_both_hashings_verifies_and_an_edit_of_either_is_found() {
        for kinds in [
            [true, true, false],
            [true, false, true],
            [false, true, false],
        ] {
            assert_eq!(problems(&chain(kinds)), Vec::<String>::new(), "{kinds:?}");
            for edited in 0..3 {
                let mut c = chain(kinds);
                c[edited].actor = "mallory".into();
                let found = problems(&c);
                assert!(
                    found.len() == 1 && found[0].contains("does not match its hash"),
                    "{kinds:?} {edited}: {found:?}"
                );
            }
        }
    }

    #[test]
    fn an_absent_field_and_an_empty_one_hash_apart_and_so_do_shifted_lines() {
        let g = genesis();
        assert_ne!(
            record(&g, None, false).hash,
            record(&g, Some(""), false).hash
        );
        assert_eq!(
            record(&g, None, true).hash,
            record(&g, Some(""), true).hash,
            "the old way"
        );
        let shifted =
            |actor: &str, action: &str| ChainRecord::next(&g, 7, actor, action, None, "b");
        assert_ne!(shifted("a\nb", "c").hash, shifted("a", "b\nc").hash);
    }
}
