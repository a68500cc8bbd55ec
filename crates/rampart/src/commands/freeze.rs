//! `rampart freeze on|off`: freezes releases (of one service, or all) or lifts the
//! freeze, audited.
//!
//! It must not decide who may freeze: the server (or the local store) does.

use std::sync::Arc;

use rampart_core::ports::Clock;

use crate::client::{Backend, Target, show};

/// The arguments of `rampart freeze`.
#[derive(Debug, clap::Args)]
pub struct FreezeArgs {
    /// `on` or `off`.
    #[arg(value_parser = ["on", "off"])]
    pub state: String,
    /// Only this service; without it, every service.
    #[arg(long)]
    pub service: Option<String>,
    /// Why, for the audit trail.
    #[arg(long)]
    pub reason: String,
    /// Who (without --server).
    #[arg(long = "as", value_name = "NAME")]
    pub actor: Option<String>,
    #[command(flatten)]
    pub target: Target,
}

/// Runs `rampart freeze`.
pub async fn main(args: FreezeArgs, clock: Arc<dyn Clock>) -> i32 {
    let FreezeArgs {
        state,
        service,
        reason,
        actor,
        target,
    } = args;
    freeze(
        state == "on",
        service.as_deref(),
        &reason,
        actor.as_deref(),
        &target,
        &clock,
    )
    .await
}

/// `freeze on|off`.
async fn freeze(
    on: bool,
    service: Option<&str>,
    reason: &str,
    actor: Option<&str>,
    target: &Target,
    clock: &Arc<dyn Clock>,
) -> i32 {
    let result = async {
        let backend = Backend::open(target, actor, clock).await?;
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
