//! `rampart events`: a release's audit events, once or followed to the release's end.
//!
//! Only reads and prints; it must not change the release.

use std::sync::Arc;

use rampart_core::ports::Clock;

use crate::client::{Backend, Failure, POLL, Target, print_events};
use crate::report::Output;

/// The arguments of `rampart events`.
#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// The release id (or a service name, for its latest release).
    pub release: String,
    /// Only events of log entries after this one.
    #[arg(long)]
    pub after: Option<u64>,
    /// Keep printing new events until the release is over.
    #[arg(long)]
    pub follow: bool,
    #[command(flatten)]
    pub target: Target,
}

/// Runs `rampart events`.
pub async fn main(args: EventsArgs, clock: Arc<dyn Clock>) -> i32 {
    events(&args.release, args.after, args.follow, &args.target, &clock).await
}

/// `events`; with `follow`, until the release is over (JSON: one event per line).
async fn events(
    release: &str,
    after: Option<u64>,
    follow: bool,
    target: &Target,
    clock: &Arc<dyn Clock>,
) -> i32 {
    let result = async {
        let backend = Backend::open(target, None, clock).await?;
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
