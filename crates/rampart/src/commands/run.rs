//! `rampart run`: releases a version, here (through the `run` engine) or, with
//! `--server`, on a `rampart serve` it then follows to the outcome.
//!
//! Owns turning the arguments into `RunOptions` and following a submitted release.
//! It must not decide anything about the release: the controller does.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rampart_core::ports::Clock;

use serde_json::json;

use crate::client::{Backend, Failure, NewRelease, POLL, Target, print_events, workdir_of};
use crate::report::{Output, RunError, fail, finish, outcome_code};
use crate::run::{RunOptions, run_release};

/// The arguments of `rampart run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The policy file.
    #[arg(short = 'f', long = "file", value_name = "POLICY")]
    pub file: PathBuf,
    /// The version to release (substituted for {version} in the policy).
    #[arg(long)]
    pub version: String,
    /// The version serving now. Defaults to the last version rampart left serving;
    /// without either, the release is an initial deployment.
    #[arg(long)]
    pub stable: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
    /// Where state and logs are kept.
    #[arg(long, env = "RAMPART_STATE_DIR", default_value = ".rampart")]
    pub state_dir: PathBuf,
    /// After the release ends, wait until interrupted (Ctrl-C or SIGTERM) before
    /// exiting. The service keeps serving either way, unless --stop-after.
    #[arg(long)]
    pub keep_running: bool,
    /// Stop the service when the release ends: its versions, and its data plane (by
    /// default the winner keeps serving, and `rampart stop` stops it).
    #[arg(long)]
    pub stop_after: bool,
    /// Who starts the release (approvers must be someone else); defaults to $USER,
    /// else $LOGNAME, else the user id.
    #[arg(long = "as", value_name = "NAME")]
    pub initiator: Option<String>,
    /// Release during a freeze as a hotfix, for this reason; it waits for an
    /// approval from someone else before anything runs.
    #[arg(long, value_name = "REASON")]
    pub hotfix: Option<String>,
    /// Serve `/metrics` (Prometheus text format) here while the release runs.
    #[arg(long, value_name = "ADDR", env = "RAMPART_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Submit the release to this `rampart serve` and follow it there (same exit
    /// codes); relative paths in the policy resolve next to the policy file.
    #[arg(long, value_name = "URL", env = "RAMPART_SERVER")]
    pub server: Option<String>,
    /// The API token, for --server (prefer the environment variable).
    #[arg(long, env = "RAMPART_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// With --server: where the policy's relative paths resolve on the server, which
    /// may not have the policy file's directory (a server in a cluster); relative to
    /// the server's working directory.
    #[arg(long, value_name = "DIR")]
    pub server_workdir: Option<String>,
}

/// Runs `rampart run`.
pub async fn main(args: RunArgs, clock: Arc<dyn Clock>) -> i32 {
    let RunArgs {
        file,
        version,
        stable,
        output,
        state_dir,
        keep_running,
        stop_after,
        initiator,
        hotfix,
        metrics_listen,
        server,
        token,
        server_workdir,
    } = args;
    // A version is put into commands and metric queries: refused before anything runs.
    for (flag, v) in [("--version", Some(&version)), ("--stable", stable.as_ref())] {
        if let Some(why) = v.and_then(|v| rampart_core::units::version_problem(v)) {
            return fail(output, &RunError::Invalid(format!("{flag}: {why}")));
        }
    }
    if server_workdir.is_some() && server.is_none() {
        return fail(
            output,
            &RunError::Invalid("--server-workdir needs --server".into()),
        );
    }
    if server.is_some() {
        let target = Target {
            server,
            token,
            state_dir,
            output,
        };
        return run_remote(
            &file,
            &version,
            stable.as_deref(),
            hotfix.as_deref(),
            server_workdir,
            &target,
            &clock,
        )
        .await;
    }
    let text = match crate::run::read_text(&file) {
        Ok(t) => t,
        Err(e) => return fail(output, &e.into()),
    };
    let opts = RunOptions {
        policy_path: file,
        policy_text: text,
        version,
        stable,
        state_dir,
        output,
        keep_running,
        attach: true,
        stop_after,
        initiator: initiator.unwrap_or_else(crate::client::local_user),
        hotfix,
        metrics_listen,
        served: None,
        clock,
    };
    finish(output, run_release(opts, None).await)
}

/// `rampart run --server`: submits the release, follows it, exits with its outcome.
async fn run_remote(
    policy_path: &Path,
    version: &str,
    stable: Option<&str>,
    hotfix: Option<&str>,
    server_workdir: Option<String>,
    target: &Target,
    clock: &Arc<dyn Clock>,
) -> i32 {
    let text = match crate::run::read_text(policy_path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let release = NewRelease {
        policy: &text,
        version,
        stable,
        hotfix,
        workdir: server_workdir.or_else(|| workdir_of(policy_path)),
    };
    let result = async {
        let backend = Backend::open(target, None, clock).await?;
        let created = match backend.submit(&release).await {
            Err(f) if f.code == "invalid_policy" => {
                // Point at the file, as a local run does.
                let lines: Vec<String> = f
                    .message
                    .split("; ")
                    .map(|l| format!("{}:{l}", policy_path.display()))
                    .collect();
                return Err(Failure {
                    message: lines.join("\n"),
                    ..f
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
