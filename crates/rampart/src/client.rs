//! The operator commands (`status`, `list`, `events`, `approve`, `promote`, `pause`,
//! `resume`, `abort`, `rollback`, `freeze`) against a `rampart serve` or, without
//! `--server`, the local state directory. Both give the API's JSON shapes, so
//! `--output json` is the same either way.
//!
//! Owns talking to the server and printing tables. It must not decide anything: the
//! server (or the controller reading the local store) does.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rampart_adapters::store::StateStore;
use rampart_core::Millis;
use rampart_core::instead::with_command;
use rampart_core::ports::{Clock, CommandKind, Freeze, OperatorCommand, Store};
use serde_json::{Value, json};

use crate::report::Output;
use crate::serve::views::{EventView, Loaded, ReleaseView, queued_view};

/// Where the commands act.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// A `rampart serve` to talk to (such as http://127.0.0.1:7070); without it, the
    /// local state directory's store.
    #[arg(long, env = "RAMPART_SERVER")]
    pub server: Option<String>,
    /// The API token, for --server (prefer the environment variable).
    #[arg(long, env = "RAMPART_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Where state is kept, without --server.
    #[arg(long, env = "RAMPART_STATE_DIR", default_value = ".rampart")]
    pub state_dir: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
}

/// Why a command failed, with its exit code.
#[derive(Debug)]
pub struct Failure {
    /// The API's error code, or `unreachable`, `usage`.
    pub code: String,
    /// For people.
    pub message: String,
    /// The HTTP status of the server's answer, when a server answered.
    pub status: Option<u16>,
    /// The `details` of the server's error (such as `instead`, what to do about it),
    /// or null.
    pub details: Value,
}

impl Failure {
    /// A failure that no server answered (or not with an error body).
    pub fn new(code: &str, message: impl Into<String>) -> Failure {
        Failure {
            code: code.into(),
            message: message.into(),
            status: None,
            details: Value::Null,
        }
    }

    /// 2 for a refused or malformed request, 5 for a conflict with the release's state
    /// (over, not waiting, frozen) or an unknown release, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self.code.as_str() {
            "unauthorized" | "forbidden" | "four_eyes" | "invalid_request" | "invalid_policy"
            | "usage" => 2,
            "conflict" | "frozen" | "not_found" => 5,
            _ => 1,
        }
    }

    /// Prints the failure (JSON on stdout with `--output json`) and returns the code.
    pub fn report(&self, output: Output) -> i32 {
        if output == Output::Json {
            println!(
                "{}",
                json!({"error": {"code": self.code, "message": self.message}})
            );
        }
        eprintln!("error: {}", self.message);
        self.exit_code()
    }
}

type Result<T> = std::result::Result<T, Failure>;

/// A connection to where releases are.
#[derive(Debug)]
pub enum Backend {
    /// A `rampart serve`.
    Remote {
        /// Base URL without a trailing slash.
        base: String,
        /// The bearer token.
        token: String,
    },
    /// The local store; requests are recorded as `actor`.
    Local {
        /// The store.
        store: Arc<StateStore>,
        /// Who acts, from `--as` or `$USER`.
        actor: String,
        /// When requests are recorded.
        clock: Arc<dyn Clock>,
    },
}

/// Who acts from this command line when nobody says: `$USER (cli)`.
pub fn cli_actor() -> String {
    format!("{} (cli)", local_user())
}

/// The person at this command line when `--as` is not given: `$USER`, else `$LOGNAME`,
/// else the process's user id (`uid 1000`): a service manager or a container often
/// sets neither, and "unknown" said nothing about who started a release.
pub fn local_user() -> String {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().next()?.parse().ok())
        });
    user_named(
        std::env::var("USER").ok(),
        std::env::var("LOGNAME").ok(),
        uid,
    )
}

/// [`local_user`] from what the environment says.
fn user_named(user: Option<String>, logname: Option<String>, uid: Option<u32>) -> String {
    [user, logname]
        .into_iter()
        .flatten()
        .find(|n| !n.trim().is_empty())
        .or_else(|| uid.map(|u| format!("uid {u}")))
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod who {
    use super::user_named;

    #[test]
    fn the_local_user_is_user_then_logname_then_the_uid() {
        let s = |v: &str| Some(v.to_string());
        assert_eq!(user_named(s("alice"), s("bob"), Some(1000)), "alice");
        assert_eq!(user_named(None, s("bob"), Some(1000)), "bob");
        assert_eq!(user_named(s(" "), None, Some(1000)), "uid 1000");
        assert_eq!(user_named(None, None, None), "unknown");
    }
}

/// How often a waiting command looks at the release again.
pub const POLL: Duration = Duration::from_millis(300);

const TIMEOUT: Duration = Duration::from_secs(30);

impl Backend {
    /// The backend `target` names; `actor` is who acts locally, at `clock`'s time.
    pub async fn open(
        target: &Target,
        actor: Option<&str>,
        clock: &Arc<dyn Clock>,
    ) -> Result<Backend> {
        match &target.server {
            Some(server) => {
                let Some(token) = target.token.clone().filter(|t| !t.is_empty()) else {
                    return Err(Failure::new(
                        "usage",
                        "--server needs a token: set RAMPART_TOKEN (create one with `rampart token create`)",
                    ));
                };
                Ok(Backend::Remote {
                    base: server.trim_end_matches('/').to_string(),
                    token,
                })
            }
            None => {
                let store = crate::serve::open_store(None, &target.state_dir)
                    .await
                    .map_err(|e| Failure::new("internal", e))?;
                let actor = actor.map_or_else(cli_actor, str::to_string);
                check_actor(&actor)?;
                Ok(Backend::Local {
                    store,
                    actor,
                    clock: clock.clone(),
                })
            }
        }
    }

    /// Sends one API request and returns the JSON answer.
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let Backend::Remote { base, token } = self else {
            return Err(Failure::new("internal", "not connected to a server"));
        };
        let url = format!("{base}{path}");
        let headers = [
            ("authorization", format!("Bearer {token}")),
            ("content-type", "application/json".to_string()),
        ];
        let (status, text) = rampart_adapters::http::send_with(
            method,
            &url,
            body.map(|b| b.to_string()),
            &headers,
            TIMEOUT,
        )
        .await
        .map_err(|e| Failure::new("unreachable", format!("{base}: {e}")))?;
        answer(method, &url, status, &text)
    }

    /// Submits a release to the server (`rampart serve` queues it) and returns its
    /// queued view.
    pub async fn submit(&self, release: &NewRelease<'_>) -> Result<Value> {
        let body = serde_json::to_value(release)
            .map_err(|e| Failure::new("internal", format!("the release to submit: {e}")))?;
        self.call("POST", "/api/v1/releases", Some(body)).await
    }

    /// The release an action (approve, abort, pause...) by this name is for: a release
    /// by id, or, by a service's name, its release in progress (a release queued behind
    /// it is the latest, and withdrawing that one instead would leave the running one
    /// going); the latest when none is in progress.
    pub async fn target(&self, id_or_service: &str) -> Result<ReleaseView> {
        let named = self.release(id_or_service).await?;
        if named.id == id_or_service || named.service != id_or_service {
            return Ok(named);
        }
        let recent = self.list(Some(id_or_service), 50).await?;
        Ok(recent
            .into_iter()
            .find(|v| v.outcome.is_none() && v.phase != "queued")
            .unwrap_or(named))
    }

    /// A release by id, or the latest release of a service by name.
    pub async fn release(&self, id_or_service: &str) -> Result<ReleaseView> {
        match self {
            Backend::Remote { .. } => {
                let path = format!("/api/v1/releases/{}", encode(id_or_service));
                match self.call("GET", &path, None).await {
                    Ok(v) => parse(v),
                    Err(f) if f.code == "not_found" => {
                        let list = self.list(Some(id_or_service), 1).await?;
                        list.into_iter().next().ok_or(f)
                    }
                    Err(f) => Err(f),
                }
            }
            Backend::Local { store, .. } => {
                let submission = store.submission(id_or_service).await.ok().flatten();
                match Loaded::read(store, id_or_service).await {
                    Some(Ok(l)) => Ok(l.view(submission.and_then(|s| s.report).as_deref())),
                    Some(Err(e)) => Err(Failure::new("internal", e)),
                    None => match submission {
                        Some(s) => Ok(queued_view(&s)),
                        None => {
                            let list = self.list(Some(id_or_service), 1).await?;
                            list.into_iter().next().ok_or_else(|| {
                                Failure::new(
                                    "not_found",
                                    format!("no release or service named {id_or_service}"),
                                )
                            })
                        }
                    },
                }
            }
        }
    }

    /// Releases, newest first.
    pub async fn list(&self, service: Option<&str>, limit: usize) -> Result<Vec<ReleaseView>> {
        match self {
            Backend::Remote { .. } => {
                let mut path = format!("/api/v1/releases?limit={limit}");
                if let Some(s) = service {
                    path.push_str(&format!("&service={}", encode(s)));
                }
                parse(self.call("GET", &path, None).await?)
            }
            Backend::Local { store, .. } => {
                let records = store
                    .list_releases(service, limit)
                    .await
                    .map_err(|e| Failure::new("internal", e.to_string()))?;
                let mut out = Vec::new();
                for rec in records {
                    let report = store
                        .submission(&rec.id)
                        .await
                        .ok()
                        .flatten()
                        .and_then(|s| s.report);
                    match Loaded::read(store, &rec.id).await {
                        Some(Ok(l)) => out.push(l.view(report.as_deref())),
                        Some(Err(e)) => return Err(Failure::new("internal", e)),
                        None => {}
                    }
                }
                Ok(out)
            }
        }
    }

    /// A release's audit events after log entry `after`.
    pub async fn events(&self, id: &str, after: Option<u64>) -> Result<Vec<EventView>> {
        match self {
            Backend::Remote { .. } => {
                let mut path = format!("/api/v1/releases/{}/events", encode(id));
                if let Some(a) = after {
                    path.push_str(&format!("?after={a}"));
                }
                let v = self.call("GET", &path, None).await?;
                parse(v["events"].clone())
            }
            Backend::Local { store, .. } => match Loaded::read(store, id).await {
                Some(Ok(l)) => Ok(l.events(after)),
                Some(Err(e)) => Err(Failure::new("internal", e)),
                None => Ok(Vec::new()),
            },
        }
    }

    /// Asks the release's controller to act; returns the API's answer.
    pub async fn act(
        &self,
        release: &ReleaseView,
        what: &str,
        reason: &str,
        force: bool,
    ) -> Result<Value> {
        match self {
            Backend::Remote { .. } => {
                let path = format!("/api/v1/releases/{}/{what}", encode(&release.id));
                // `force` only when asked: only a rollback takes it (`request-approval`
                // refuses a body with it).
                let mut body = json!({ "reason": reason });
                if force {
                    body["force"] = true.into();
                }
                self.call("POST", &path, Some(body)).await
            }
            Backend::Local {
                store,
                actor,
                clock,
            } => {
                // `abort` is a rollback request without force.
                let name = if what == "abort" { "rollback" } else { what };
                let Some(kind) = CommandKind::parse(name) else {
                    return Err(Failure::new("usage", format!("unknown action {what}")));
                };
                let loaded = match Loaded::read(store, &release.id).await {
                    Some(Ok(l)) => l,
                    Some(Err(e)) => return Err(Failure::new("internal", e)),
                    None => {
                        return Err(Failure::new(
                            "not_found",
                            format!("no release {}", release.id),
                        ));
                    }
                };
                // The same admission as the API's: four eyes, approvals only when one
                // is awaited, no promotion during a freeze.
                crate::operator::admit(store, &loaded, kind, actor, what, clock.now())
                    .await
                    .map_err(|r| Failure::new(r.why.code(), r.message))?;
                let command = OperatorCommand {
                    kind,
                    actor: actor.clone(),
                    reason: reason.to_string(),
                    force,
                    at: clock.now(),
                };
                store
                    .push_command_to(&release.id, &command)
                    .await
                    .map_err(|e| Failure::new("conflict", e.to_string()))?;
                let id = release.id.clone();
                Ok(json!({"release": id, "request": what, "queued": true}))
            }
        }
    }

    /// Freezes or unfreezes; returns the freezes in force.
    pub async fn freeze(&self, on: bool, service: Option<&str>, reason: &str) -> Result<Value> {
        match self {
            Backend::Remote { .. } => {
                let body = json!({"state": if on { "on" } else { "off" }, "service": service, "reason": reason});
                self.call("POST", "/api/v1/freeze", Some(body)).await
            }
            Backend::Local {
                store,
                actor,
                clock,
            } => {
                if let Some(problem) = freeze_problem(on, service, reason) {
                    return Err(Failure::new("invalid_request", problem));
                }
                let by = Freeze {
                    actor: actor.clone(),
                    reason: reason.to_string(),
                    at: clock.now(),
                };
                store
                    .set_freeze(service, on, &by)
                    .await
                    .map_err(|e| Failure::new("internal", e.0))?;
                let freezes = store
                    .freezes()
                    .await
                    .map_err(|e| Failure::new("internal", e.to_string()))?;
                Ok(json!({ "freezes": freezes }))
            }
        }
    }
}

/// What is wrong with a freeze change, if anything: it needs a reason, and a freeze
/// put on a scope a service can have (one of `Checkout` would stop nothing: services
/// are lower case; one made by an older rampart can still be taken off). The server
/// and the local state directory refuse the same changes.
pub fn freeze_problem(on: bool, service: Option<&str>, reason: &str) -> Option<String> {
    if reason.trim().is_empty() {
        return Some("a freeze change needs a reason".into());
    }
    match service {
        Some(s) if on && !rampart_core::policy::valid_service_name(s) => Some(format!(
            "`{s}` is not a service name (1 to 63 lower-case letters, digits, `-`, `_` or `.`, starting with a letter or digit): a freeze of it would stop no release"
        )),
        _ => None,
    }
}

/// A server's answer: its JSON on a 2xx, else the failure its error body names. An
/// answer without rampart's error body (a proxy's page, a framework's rejection) is
/// named by its status.
fn answer(method: &str, url: &str, status: u16, text: &str) -> Result<Value> {
    let value: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    if (200..300).contains(&status) {
        return Ok(value);
    }
    let error = &value["error"];
    let code = error["code"].as_str().unwrap_or(match status {
        400 | 413 | 422 => "invalid_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        409 => "conflict",
        _ => "internal",
    });
    let message = error["message"].as_str().map_or_else(
        || {
            let start: String = text.chars().take(200).collect();
            match start.trim() {
                "" => format!("{method} {url}: HTTP {status}"),
                start => format!("{method} {url}: HTTP {status}: {start}"),
            }
        },
        str::to_string,
    );
    Err(Failure {
        status: Some(status),
        details: error["details"].clone(),
        ..Failure::new(code, message)
    })
}

/// A release to submit: the body of `POST /api/v1/releases`.
#[derive(Debug, serde::Serialize)]
pub struct NewRelease<'a> {
    /// The policy, as YAML text.
    pub policy: &'a str,
    /// The version to release.
    pub version: &'a str,
    /// The version serving now, if the submitter names it.
    pub stable: Option<&'a str>,
    /// Why it may run during a freeze (it then needs an approval).
    pub hotfix: Option<&'a str>,
    /// Where the policy's relative paths resolve on the server (`workdir_of`).
    pub workdir: Option<String>,
}

/// Where a policy file's relative paths resolve: the directory of the file, canonical
/// (so a server, and the rule that an agent releases only what humans released from
/// the same directory, see one name for it).
pub fn workdir_of(policy_file: &Path) -> Option<String> {
    policy_file
        .canonicalize()
        .ok()
        .and_then(|p| p.parent().map(|d| d.display().to_string()))
}

fn parse<T: serde::de::DeserializeOwned>(v: Value) -> Result<T> {
    serde_json::from_value(v).map_err(|e| {
        Failure::new(
            "internal",
            format!("unexpected answer from the server: {e}"),
        )
    })
}

use rampart_adapters::http::encode;

// === printing ===

/// Seconds as `1h02m`, `3m20s`, `45s`.
fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// The release table; ages are counted to `now`.
pub fn print_list(list: &[ReleaseView], now: Millis) {
    let rows: Vec<[String; 7]> = list
        .iter()
        .map(|r| {
            [
                printable(&r.id).into_owned(),
                printable(&r.service).into_owned(),
                printable(&r.version).into_owned(),
                match &r.paused_by {
                    Some(_) => format!("{} (paused)", r.phase),
                    None => r.phase.clone(),
                },
                format!("{}%", r.weight),
                if r.step > 0 {
                    format!("{}/{}", r.step, r.steps)
                } else {
                    "-".into()
                },
                age(now.saturating_sub(r.created_at)),
            ]
        })
        .collect();
    let header = [
        "RELEASE", "SERVICE", "VERSION", "PHASE", "WEIGHT", "STEP", "AGE",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let text: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// One release, for people; its age is counted to `now`.
pub fn print_release(r: &ReleaseView, now: Millis) {
    println!("release:   {}", printable(&r.id));
    println!(
        "service:   {} {} (stable: {})",
        printable(&r.service),
        printable(&r.version),
        printable(r.stable.as_deref().unwrap_or("none"))
    );
    let step = if r.step > 0 {
        format!(", step {}/{}", r.step, r.steps)
    } else {
        String::new()
    };
    println!("phase:     {}{step}, canary weight {}%", r.phase, r.weight);
    println!(
        "started:   by {}, {} ago",
        printable(&r.initiator),
        age(now.saturating_sub(r.created_at))
    );
    if let Some(by) = &r.paused_by {
        println!("paused:    by {}", printable(by));
    }
    if let Some(ask) = &r.awaiting_approval {
        println!(
            "waiting:   {}",
            printable(&with_command(ask, r.instead.as_ref()))
        );
    }
    if let Some(v) = &r.last_verdict {
        println!("analysis:  {} interval(s), last verdict {v}", r.intervals);
    }
    if let Some(d) = &r.decision {
        println!(
            "decision:  {:?} by {}: {}",
            d.kind,
            printable(&d.by),
            printable(&d.reason)
        );
    }
    if let Some(o) = &r.outcome {
        println!("outcome:   {o}");
    }
}

/// Refuses a name to act as (`--as`) that is blank, or has surrounding whitespace or
/// a control character: `" alice"` would be someone other than `alice` to four eyes,
/// and a line break in a name forges lines in what people read.
fn check_actor(actor: &str) -> Result<()> {
    if actor.trim().is_empty() || actor.trim() != actor || actor.chars().any(char::is_control) {
        return Err(Failure::new(
            "usage",
            format!(
                "`--as {}` is not a name to act as: give a name without surrounding spaces or control characters",
                printable(actor)
            ),
        ));
    }
    Ok(())
}

/// Events, one per line.
pub fn print_events(events: &[EventView]) {
    for e in events {
        println!(
            "{:>8.1}s  {:<22} {:>6}  {}  ({})",
            e.event.t_s,
            printable(&e.event.kind),
            e.event.weight.to_string(),
            printable(&with_command(&e.event.message, e.event.instead.as_ref())),
            printable(&e.event.actor)
        );
    }
}

/// `text` for a terminal: its control characters (a line break, a carriage return,
/// an escape sequence that rewrites the screen) written as escapes (`\n`, `\u{1b}`).
/// Reasons and names come from whoever asked (an agent, a CI token): printed as they
/// are, one could forge an event line or retitle the reader's terminal.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    std::borrow::Cow::Owned(
        text.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

/// Prints `value` as JSON or with `text`, and returns 0.
pub fn show<T: serde::Serialize>(output: Output, value: &T, text: impl FnOnce(&T)) -> i32 {
    match output {
        Output::Json => println!("{}", serde_json::to_string(value).unwrap_or_default()),
        Output::Text => text(value),
    }
    0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

    use serde_json::json;

    use super::answer;

    #[test]
    fn an_error_without_rampart_s_body_is_named_by_its_status() {
        let f = answer("GET", "http://h/api/v1/x", 404, "<html>no such page</html>").unwrap_err();
        assert_eq!(f.code, "not_found");
        assert_eq!(f.exit_code(), 5);
        assert_eq!(f.status, Some(404));
        assert_eq!(
            f.message,
            "GET http://h/api/v1/x: HTTP 404: <html>no such page</html>"
        );
        let f = answer("POST", "http://h/api/v1/x", 401, "").unwrap_err();
        assert_eq!((f.code.as_str(), f.exit_code()), ("unauthorized", 2));
        assert_eq!(f.message, "POST http://h/api/v1/x: HTTP 401");
        let f = answer("GET", "http://h/", 502, "bad gateway").unwrap_err();
        assert_eq!((f.code.as_str(), f.exit_code()), ("internal", 1));
    }

    #[test]
    fn an_error_keeps_the_server_s_code_message_and_details() {
        let body = json!({"error": {"code": "forbidden", "message": "agents may not", "details": {"role": "agent", "instead": "ask a human"}}});
        let f = answer("POST", "http://h/", 403, &body.to_string()).unwrap_err();
        assert_eq!(f.code, "forbidden");
        assert_eq!(f.message, "agents may not");
        assert_eq!(f.details["instead"], "ask a human");
        assert_eq!(f.status, Some(403));
    }

    #[test]
    fn a_success_is_the_answer_s_json() {
        let v = answer("GET", "http://h/", 200, r#"{"id": "r1"}"#).unwrap();
        assert_eq!(v["id"], "r1");
    }
}
