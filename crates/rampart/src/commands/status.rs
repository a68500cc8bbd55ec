//! `rampart status`: one release (phase, weight, step, what it waits for, its decision).
//!
//! Only reads and prints; it must not change the release.

use std::sync::Arc;

use rampart_core::ports::Clock;

use crate::client::{Backend, Target, print_release, show};

/// The arguments of `rampart status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The release id (or a service name, for its latest release).
    pub release: String,
    #[command(flatten)]
    pub target: Target,
}

/// Runs `rampart status`.
pub async fn main(args: StatusArgs, clock: Arc<dyn Clock>) -> i32 {
    status(&args.release, &args.target, &clock).await
}

/// `status`.
async fn status(release: &str, target: &Target, clock: &Arc<dyn Clock>) -> i32 {
    let result = async {
        let backend = Backend::open(target, None, clock).await?;
        backend.release(release).await
    }
    .await;
    match result {
        Ok(view) => show(target.output, &view, |r| print_release(r, clock.now())),
        Err(f) => f.report(target.output),
    }
}
