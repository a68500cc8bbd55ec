//! `rampart load`: steady HTTP load to a URL, with counts at the end; the generator
//! itself is `crate::load`.

use std::time::Duration;

use rampart_core::units::parse_duration;

use crate::report::Output;

/// The arguments of `rampart load`.
#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// Target, such as http://127.0.0.1:8080/.
    #[arg(long)]
    pub url: String,
    /// Requests per second.
    #[arg(long, default_value_t = 100)]
    pub rps: u32,
    /// Stop after this long (such as 60s); runs until interrupted if absent.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Send a user id in this header, for sticky routing.
    #[arg(long)]
    pub user_header: Option<String>,
    /// Distinct users to simulate.
    #[arg(long, default_value_t = 1000)]
    pub users: u64,
    /// Output format (`json` prints `{"url", "sent", "ok", "failed", "canary"}`).
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
}

/// Runs `rampart load` until its duration ends or it is interrupted.
pub async fn main(args: LoadArgs) -> i32 {
    let LoadArgs {
        url,
        rps,
        duration,
        user_header,
        users,
        output,
    } = args;
    let stats = std::sync::Arc::new(crate::load::LoadStats::default());
    let spec = crate::load::LoadSpec {
        url: url.clone(),
        rps,
        user_header,
        users,
        duration,
        paths: Vec::new(),
        headers: Vec::new(),
        cut_on_stop: false,
    };
    tokio::select! {
        () = crate::load::generate(spec, stats.clone()) => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    use std::sync::atomic::Ordering::Relaxed;
    let (sent, ok, failed, canary) = (
        stats.sent.load(Relaxed),
        stats.ok.load(Relaxed),
        stats.failed.load(Relaxed),
        stats.canary.load(Relaxed),
    );
    match output {
        Output::Json => println!(
            "{}",
            serde_json::json!({"url": url, "sent": sent, "ok": ok, "failed": failed, "canary": canary})
        ),
        Output::Text => println!("sent {sent} ok {ok} failed {failed} canary {canary}"),
    }
    // Nothing got an answer: no service at the URL, which a script must not take for
    // a load that ran.
    if ok == 0 && failed > 0 {
        eprintln!("error: none of the {sent} requests to {url} got an answer");
        return 1;
    }
    0
}
