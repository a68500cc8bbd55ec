//! `rampart list`: releases, newest first.
//!
//! Only reads and prints; it must not change anything.

use std::sync::Arc;

use rampart_core::ports::Clock;

use crate::client::{Backend, Target, print_list, show};

/// The arguments of `rampart list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only this service.
    #[arg(long)]
    pub service: Option<String>,
    /// At most this many.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    #[command(flatten)]
    pub target: Target,
}

/// Runs `rampart list`.
pub async fn main(args: ListArgs, clock: Arc<dyn Clock>) -> i32 {
    list(args.service.as_deref(), args.limit, &args.target, &clock).await
}

/// `list`.
async fn list(service: Option<&str>, limit: usize, target: &Target, clock: &Arc<dyn Clock>) -> i32 {
    let result = async {
        let backend = Backend::open(target, None, clock).await?;
        backend.list(service, limit.clamp(1, 500)).await
    }
    .await;
    match result {
        Ok(list) => show(target.output, &list, |l| print_list(l, clock.now())),
        Err(f) => f.report(target.output),
    }
}
