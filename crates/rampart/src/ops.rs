//! The operator commands' bodies: each resolves the release, asks the backend
//! (`client`), prints, and returns the exit code. Also `token`, `audit` and
//! `run --server`.
//!
//! Exit codes of these commands: 0 done; 2 refused or malformed (no or wrong token,
//! role, four eyes, bad input); 5 the release's state does not allow it (over, not
//! waiting, unknown, frozen); 1 anything else. `rollback` and `run --server` exit with
//! the release's outcome code, as `rampart run` does.

use std::path::Path;
use std::time::Duration;

use rampart_core::ports::Clock;
use serde_json::json;

use crate::client::{Backend, Failure, Target, print_events, print_list, print_release, show};
use crate::run::Output;

/// How often a waiting command looks at the release again.
const POLL: Duration = Duration::from_millis(300);

/// `approve`, `promote`, `pause`, `resume`, `abort`.
pub async fn act(
    what: &str,
    release: &str,
    reason: &str,
    actor: Option<&str>,
    target: &Target,
) -> i32 {
    match act_inner(what, release, reason, false, actor, target).await {
        Ok((_, answer)) => show(target.output, &answer, |a| {
            println!(
                "{what} of release {} requested",
                a["release"].as_str().unwrap_or(release)
            );
        }),
        Err(f) => f.report(target.output),
    }
}

async fn act_inner(
    what: &str,
    release: &str,
    reason: &str,
    force: bool,
    actor: Option<&str>,
    target: &Target,
) -> Result<(Backend, serde_json::Value), Failure> {
    if target.server.is_none() && actor.is_none() && matches!(what, "approve" | "promote") {
        return Err(Failure {
            code: "usage".into(),
            message: format!("{what} needs --as NAME (or --server with an approver's token)"),
        });
    }
    let backend = Backend::open(target, actor).await?;
    let view = backend.release(release).await?;
    let answer = backend.act(&view, what, reason, force).await?;
    Ok((backend, answer))
}

/// `rollback`: requests it, then waits for the outcome unless `no_wait`.
pub async fn rollback(
    release: &str,
    reason: Option<String>,
    force: bool,
    no_wait: bool,
    actor: Option<&str>,
    target: &Target,
) -> i32 {
    if force && reason.is_none() {
        eprintln!("error: --force needs --reason: say what was repaired, for the audit trail");
        return 2;
    }
    let reason = reason.unwrap_or_else(|| "requested from the command line".into());
    let (backend, answer) =
        match act_inner("rollback", release, &reason, force, actor, target).await {
            Ok(x) => x,
            Err(f) => return f.report(target.output),
        };
    let id = answer["release"].as_str().unwrap_or(release).to_string();
    if target.output == Output::Text {
        println!("rollback of release {id} requested");
    }
    if no_wait {
        if target.output == Output::Json {
            println!("{answer}");
        }
        return 0;
    }
    match wait_for_outcome(&backend, &id, Duration::from_secs(600)).await {
        Ok(Some(view)) => {
            let outcome = view.outcome.clone().unwrap_or_default();
            show(target.output, &view, |_| {
                println!("release {id}: {outcome}")
            });
            outcome_code(&outcome)
        }
        Ok(None) => {
            eprintln!(
                "release {id}: no controller acted on the request within 10 minutes; it stays queued and is applied when the release resumes"
            );
            1
        }
        Err(f) => f.report(target.output),
    }
}

/// The exit code of an outcome named in an answer (1 when it names none).
fn outcome_code(outcome: &str) -> i32 {
    serde_json::from_value::<rampart_core::release::OutcomeKind>(outcome.into())
        .map_or(1, |o| o.exit_code())
}

async fn wait_for_outcome(
    backend: &Backend,
    id: &str,
    limit: Duration,
) -> Result<Option<crate::serve::views::ReleaseView>, Failure> {
    let wait = async {
        loop {
            let view = backend.release(id).await?;
            if view.outcome.is_some() {
                return Ok(view);
            }
            tokio::time::sleep(POLL).await;
        }
    };
    match tokio::time::timeout(limit, wait).await {
        Ok(r) => r.map(Some),
        Err(_) => Ok(None),
    }
}

/// `status`.
pub async fn status(release: &str, target: &Target) -> i32 {
    let result = async {
        let backend = Backend::open(target, None).await?;
        backend.release(release).await
    }
    .await;
    match result {
        Ok(view) => show(target.output, &view, print_release),
        Err(f) => f.report(target.output),
    }
}

/// `list`.
pub async fn list(service: Option<&str>, limit: usize, target: &Target) -> i32 {
    let result = async {
        let backend = Backend::open(target, None).await?;
        backend.list(service, limit.clamp(1, 500)).await
    }
    .await;
    match result {
        Ok(list) => show(target.output, &list, |l| print_list(l)),
        Err(f) => f.report(target.output),
    }
}

/// `events`; with `follow`, until the release is over (JSON: one event per line).
pub async fn events(release: &str, after: Option<u64>, follow: bool, target: &Target) -> i32 {
    let result = async {
        let backend = Backend::open(target, None).await?;
        let view = backend.release(release).await?;
        let mut after = after;
        loop {
            let events = backend.events(&view.id, after).await?;
            if let Some(last) = events.last() {
                after = Some(last.seq);
            }
            match (follow, target.output) {
                (false, Output::Json) => {
                    println!("{}", serde_json::to_string(&events).unwrap_or_default())
                }
                (true, Output::Json) => {
                    for e in &events {
                        println!("{}", serde_json::to_string(e).unwrap_or_default());
                    }
                }
                (_, Output::Text) => print_events(&events),
            }
            if !follow || backend.release(&view.id).await?.outcome.is_some() && events.is_empty() {
                return Ok::<(), Failure>(());
            }
            tokio::time::sleep(POLL).await;
        }
    }
    .await;
    match result {
        Ok(()) => 0,
        Err(f) => f.report(target.output),
    }
}

/// `freeze on|off`.
pub async fn freeze(
    on: bool,
    service: Option<&str>,
    reason: &str,
    actor: Option<&str>,
    target: &Target,
) -> i32 {
    let result = async {
        let backend = Backend::open(target, actor).await?;
        backend.freeze(on, service, reason).await
    }
    .await;
    match result {
        Ok(answer) => show(target.output, &answer, |_| {
            let scope = service.map_or("every service".to_string(), |s| format!("service {s}"));
            println!(
                "{scope}: releases {}",
                if on { "frozen" } else { "no longer frozen" }
            );
        }),
        Err(f) => f.report(target.output),
    }
}

/// `rampart token ...`: manages the API tokens in the store directly (run it on the
/// server's machine).
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create a token; prints it once, on stdout. Only its hash is kept.
    Create {
        /// `viewer`, `deployer`, `approver`, `admin`, or `agent` (an AI agent through
        /// `rampart mcp`: never approves, promotes, resumes or lifts a freeze).
        #[arg(long, value_parser = ["viewer", "deployer", "approver", "admin", "agent"])]
        role: String,
        /// A unique name: what the token does is recorded under it.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        store: StoreArgs,
        /// Output format (`json` prints `{"name", "role", "token"}`).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// List tokens (names and roles; never secrets).
    List {
        #[command(flatten)]
        store: StoreArgs,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Revoke a token by name.
    Revoke {
        /// The token's name.
        name: String,
        #[command(flatten)]
        store: StoreArgs,
        /// Output format (`json` prints `{"name", "revoked"}`).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
}

/// `rampart audit ...`.
#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain and every release log against it: exit 0 when intact, 4
    /// when anything was changed, inserted or removed.
    Verify {
        #[command(flatten)]
        store: StoreArgs,
        /// Also require that the chain still holds a record with this hash (a head
        /// printed earlier and kept elsewhere: detects a truncated tail).
        #[arg(long, value_name = "HASH")]
        expect_head: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
}

/// Which store a server-side command opens.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// Where state is kept.
    #[arg(long, env = "RAMPART_STATE_DIR", default_value = ".rampart")]
    pub state_dir: std::path::PathBuf,
    /// The store: `sqlite:PATH` or `postgres://...`; defaults to the state directory's.
    #[arg(long, env = "RAMPART_STORE", hide_env_values = true)]
    pub store: Option<String>,
}

async fn open(
    store: &StoreArgs,
) -> Result<std::sync::Arc<rampart_adapters::store::StateStore>, i32> {
    crate::serve::open_store(store.store.as_deref(), &store.state_dir)
        .await
        .map_err(|e| {
            eprintln!("error: {e}");
            2
        })
}

/// `rampart token`.
pub async fn token(what: TokenCommand) -> i32 {
    let now = rampart_adapters::clock::TokioClock::new().now();
    match what {
        TokenCommand::Create {
            role,
            name,
            store,
            output,
        } => {
            if let Err(e) = crate::serve::api::check_token_name(&name) {
                eprintln!("error: {e}");
                return 2;
            }
            let store = match open(&store).await {
                Ok(s) => s,
                Err(code) => return code,
            };
            match store
                .create_token(&name, &role, &crate::client::cli_actor(), now)
                .await
            {
                Ok(secret) => {
                    match output {
                        Output::Json => println!(
                            "{}",
                            serde_json::json!({"name": name, "role": role, "token": secret})
                        ),
                        Output::Text => println!("{secret}"),
                    }
                    eprintln!("token {name} ({role}) created; it is shown only this once");
                    0
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    5
                }
            }
        }
        TokenCommand::List { store, output } => {
            let store = match open(&store).await {
                Ok(s) => s,
                Err(code) => return code,
            };
            match store.tokens().await {
                Ok(tokens) => show(output, &tokens, |ts| {
                    for t in ts {
                        println!(
                            "{:<24} {:<9} by {}{}",
                            t.name,
                            t.role,
                            t.created_by,
                            if t.revoked { " (revoked)" } else { "" }
                        );
                    }
                }),
                Err(e) => {
                    eprintln!("error: {e}");
                    1
                }
            }
        }
        TokenCommand::Revoke {
            name,
            store,
            output,
        } => {
            let store = match open(&store).await {
                Ok(s) => s,
                Err(code) => return code,
            };
            match store
                .revoke_token(&name, &crate::client::cli_actor(), now)
                .await
            {
                Ok(()) => {
                    match output {
                        Output::Json => {
                            println!("{}", serde_json::json!({"name": name, "revoked": true}));
                        }
                        Output::Text => println!("token {name} revoked"),
                    }
                    0
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    5
                }
            }
        }
    }
}

/// `rampart audit`.
pub async fn audit(what: AuditCommand) -> i32 {
    let AuditCommand::Verify {
        store,
        expect_head,
        output,
    } = what;
    let store = match open(&store).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut report = match store.verify_chain().await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    if let Some(head) = expect_head {
        let held = store
            .chain_records(None)
            .await
            .map(|rs| rs.iter().any(|r| r.hash == head))
            .unwrap_or(false);
        if !held {
            report.ok = false;
            report.problems.push(format!(
                "no record has the expected head {head} (records were removed from the end)"
            ));
        }
    }
    show(output, &report, |r| {
        for p in &r.problems {
            println!("TAMPERED: {p}");
        }
        println!(
            "{}: {} chain record(s), {} release log entr(ies) checked; head {}",
            if r.ok { "intact" } else { "NOT intact" },
            r.records,
            r.log_entries,
            r.head
        );
    });
    if report.ok { 0 } else { 4 }
}

/// `rampart run --server`: submits the release, follows it, exits with its outcome.
pub async fn run_remote(
    policy_path: &Path,
    version: &str,
    stable: Option<&str>,
    hotfix: Option<&str>,
    target: &Target,
) -> i32 {
    let text = match std::fs::read_to_string(policy_path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {}: {e}", policy_path.display());
            return 2;
        }
    };
    let workdir = policy_path
        .canonicalize()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .map(|p| p.display().to_string());
    let body = json!({
        "policy": text,
        "version": version,
        "stable": stable,
        "hotfix": hotfix,
        "workdir": workdir,
    });
    let result = async {
        let backend = Backend::open(target, None).await?;
        let created = backend.call("POST", "/api/v1/releases", Some(body)).await;
        let created = match created {
            Err(f) if f.code == "invalid_policy" => {
                // Point at the file, as a local run does.
                let lines: Vec<String> = f
                    .message
                    .split("; ")
                    .map(|l| format!("{}:{l}", policy_path.display()))
                    .collect();
                return Err(Failure {
                    code: f.code,
                    message: lines.join("\n"),
                });
            }
            other => other?,
        };
        let id = created["id"].as_str().unwrap_or_default().to_string();
        if target.output == Output::Text {
            println!(
                "release {id} submitted to {}",
                target.server.as_deref().unwrap_or("")
            );
        }
        let mut after = None;
        loop {
            let events = backend.events(&id, after).await?;
            if let Some(last) = events.last() {
                after = Some(last.seq);
            }
            if target.output == Output::Text {
                print_events(&events);
            } else {
                for e in &events {
                    eprintln!(
                        "{:>8.1}s  {}  {}",
                        e.event.t_s, e.event.kind, e.event.message
                    );
                }
            }
            let view = backend.release(&id).await?;
            if view.outcome.is_some() && (view.report.is_some() || view.phase == "blocked") {
                return Ok(view);
            }
            tokio::time::sleep(POLL).await;
        }
    }
    .await;
    match result {
        Ok(view) => {
            let report = view
                .report
                .clone()
                .unwrap_or_else(|| json!({"outcome": view.outcome}));
            let outcome = report["outcome"].as_str().unwrap_or_default().to_string();
            let code = report["exit_code"]
                .as_i64()
                .and_then(|c| i32::try_from(c).ok())
                .unwrap_or_else(|| outcome_code(&outcome));
            match target.output {
                Output::Json => println!("{report}"),
                Output::Text => {
                    println!();
                    println!(
                        "outcome: {} {} {outcome} (exit {code})",
                        view.service, view.version
                    );
                    println!("why:     {}", report["reason"].as_str().unwrap_or_default());
                }
            }
            code
        }
        Err(f) if f.code == "frozen" => {
            if target.output == Output::Json {
                println!(
                    "{}",
                    json!({"outcome": "blocked", "reason": f.message, "decided_at_s": 0.0, "timeline": []})
                );
            }
            eprintln!("error: {}", f.message);
            5
        }
        Err(f) => f.report(target.output),
    }
}
