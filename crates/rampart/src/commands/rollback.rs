//! `rampart rollback`: asks for a release's rollback, then waits for its outcome and
//! exits with its code, as `rampart run` does.
//!
//! It must not roll anything back itself: the server (or the controller reading the
//! local store) does, in order.

use std::sync::Arc;
use std::time::Duration;

use rampart_core::ports::Clock;

use super::operator::act_inner;
use crate::client::{Backend, Failure, POLL, Target, show};
use crate::report::{Output, outcome_code};

/// The arguments of `rampart rollback`.
#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    /// The release id or the service.
    pub service: String,
    /// Why, for the audit trail (required with --force).
    #[arg(long)]
    pub reason: Option<String>,
    /// Roll the code back even though the release shipped non-backward-compatible
    /// migrations: say so only once the data is repaired.
    #[arg(long)]
    pub force: bool,
    /// Return as soon as the request is queued.
    #[arg(long)]
    pub no_wait: bool,
    /// Who asks (without --server; defaults to $USER).
    #[arg(long = "as", value_name = "NAME")]
    pub actor: Option<String>,
    #[command(flatten)]
    pub target: Target,
}

/// Runs `rampart rollback`.
pub async fn main(args: RollbackArgs, clock: Arc<dyn Clock>) -> i32 {
    let RollbackArgs {
        service,
        reason,
        force,
        no_wait,
        actor,
        target,
    } = args;
    rollback(
        &service,
        reason,
        force,
        no_wait,
        actor.as_deref(),
        &target,
        &clock,
    )
    .await
}

/// `rollback`: requests it, then waits for the outcome unless `no_wait`.
async fn rollback(
    release: &str,
    reason: Option<String>,
    force: bool,
    no_wait: bool,
    actor: Option<&str>,
    target: &Target,
    clock: &Arc<dyn Clock>,
) -> i32 {
    if force && reason.is_none() {
        eprintln!("error: --force needs --reason: say what was repaired, for the audit trail");
        return 2;
    }
    let reason = reason.unwrap_or_else(|| "requested from the command line".into());
    let (backend, answer) =
        match act_inner("rollback", release, &reason, force, actor, target, clock).await {
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
