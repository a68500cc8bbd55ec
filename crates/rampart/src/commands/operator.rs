//! `rampart approve`, `promote`, `pause`, `resume` and `abort`: the operator actions
//! that ask for one change to a release and print the answer (one body, `act`).
//!
//! Exit codes of these commands: 0 done; 2 refused or malformed (no or wrong token,
//! role, four eyes, bad input); 5 the release's state does not allow it (over, not
//! waiting, unknown, frozen); 1 anything else. They must not decide anything: the
//! server (or the controller reading the local store) does.

use std::sync::Arc;

use rampart_core::ports::Clock;

use crate::client::{Backend, Failure, Target, show};

/// The arguments of `rampart approve`.
#[derive(Debug, clap::Args)]
pub struct ApproveArgs {
    /// The release id (or the service name).
    pub release: String,
    /// Who approves (without --server; with it, the token's name).
    #[arg(long = "as", value_name = "NAME")]
    pub approver: Option<String>,
    #[command(flatten)]
    pub target: Target,
}

/// The arguments of `rampart promote`.
#[derive(Debug, clap::Args)]
pub struct PromoteArgs {
    /// The release id (or the service name).
    pub release: String,
    /// Why, for the audit trail.
    #[arg(long)]
    pub reason: String,
    /// Who promotes (without --server).
    #[arg(long = "as", value_name = "NAME")]
    pub actor: Option<String>,
    #[command(flatten)]
    pub target: Target,
}

/// The arguments of `rampart pause`.
#[derive(Debug, clap::Args)]
pub struct PauseArgs {
    /// The release id (or the service name).
    pub release: String,
    /// Why, for the audit trail.
    #[arg(long, default_value = "paused from the command line")]
    pub reason: String,
    /// Who pauses (without --server).
    #[arg(long = "as", value_name = "NAME")]
    pub actor: Option<String>,
    #[command(flatten)]
    pub target: Target,
}

/// The arguments of `rampart resume`.
#[derive(Debug, clap::Args)]
pub struct ResumeArgs {
    /// The release id (or the service name).
    pub release: String,
    /// Who resumes (without --server).
    #[arg(long = "as", value_name = "NAME")]
    pub actor: Option<String>,
    #[command(flatten)]
    pub target: Target,
}

/// The arguments of `rampart abort`.
#[derive(Debug, clap::Args)]
pub struct AbortArgs {
    /// The release id (or the service name).
    pub release: String,
    /// Why, for the audit trail.
    #[arg(long)]
    pub reason: String,
    /// Who aborts (without --server).
    #[arg(long = "as", value_name = "NAME")]
    pub actor: Option<String>,
    #[command(flatten)]
    pub target: Target,
}

/// Runs `rampart approve`.
pub async fn approve(args: ApproveArgs, clock: Arc<dyn Clock>) -> i32 {
    act(
        "approve",
        &args.release,
        "",
        args.approver.as_deref(),
        &args.target,
        &clock,
    )
    .await
}

/// Runs `rampart promote`.
pub async fn promote(args: PromoteArgs, clock: Arc<dyn Clock>) -> i32 {
    act(
        "promote",
        &args.release,
        &args.reason,
        args.actor.as_deref(),
        &args.target,
        &clock,
    )
    .await
}

/// Runs `rampart pause`.
pub async fn pause(args: PauseArgs, clock: Arc<dyn Clock>) -> i32 {
    act(
        "pause",
        &args.release,
        &args.reason,
        args.actor.as_deref(),
        &args.target,
        &clock,
    )
    .await
}

/// Runs `rampart resume`.
pub async fn resume(args: ResumeArgs, clock: Arc<dyn Clock>) -> i32 {
    act(
        "resume",
        &args.release,
        "",
        args.actor.as_deref(),
        &args.target,
        &clock,
    )
    .await
}

/// Runs `rampart abort`.
pub async fn abort(args: AbortArgs, clock: Arc<dyn Clock>) -> i32 {
    act(
        "abort",
        &args.release,
        &args.reason,
        args.actor.as_deref(),
        &args.target,
        &clock,
    )
    .await
}

/// `approve`, `promote`, `pause`, `resume`, `abort`.
async fn act(
    what: &str,
    release: &str,
    reason: &str,
    actor: Option<&str>,
    target: &Target,
    clock: &Arc<dyn Clock>,
) -> i32 {
    match act_inner(what, release, reason, false, actor, target, clock).await {
        Ok((_, answer)) => show(target.output, &answer, |a| {
            println!(
                "{what} of release {} requested",
                a["release"].as_str().unwrap_or(release)
            );
        }),
        Err(f) => f.report(target.output),
    }
}

/// Asks the backend to act on a release (`rollback` too); gives the backend and its answer.
pub(super) async fn act_inner(
    what: &str,
    release: &str,
    reason: &str,
    force: bool,
    actor: Option<&str>,
    target: &Target,
    clock: &Arc<dyn Clock>,
) -> Result<(Backend, serde_json::Value), Failure> {
    if target.server.is_none() && actor.is_none() && matches!(what, "approve" | "promote") {
        return Err(Failure::new(
            "usage",
            format!("{what} needs --as NAME (or --server with an approver's token)"),
        ));
    }
    let backend = Backend::open(target, actor, clock).await?;
    let view = backend.target(release).await?;
    let answer = backend.act(&view, what, reason, force).await?;
    Ok((backend, answer))
}
