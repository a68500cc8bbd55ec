//! `rampart stop`: stops a service that releases left serving: its data plane (which
//! drains its connections first) and its versions.
//!
//! Owns the order of stopping. Refuses while a release of the service is unfinished:
//! that release owns the service until its outcome.

use std::path::PathBuf;

use rampart_adapters::process::ProcessDeployer;
use rampart_adapters::store::StateStore;
use rampart_core::ports::{Deployer, Store};
use rampart_core::release::Variant;

use crate::report::RunError;

/// The arguments of `rampart stop`.
#[derive(Debug, clap::Args)]
pub struct StopArgs {
    /// The service's policy file.
    #[arg(short = 'f', long = "file", value_name = "POLICY")]
    pub file: PathBuf,
    /// Where state and logs are kept.
    #[arg(long, env = "RAMPART_STATE_DIR", default_value = ".rampart")]
    pub state_dir: PathBuf,
}

/// Runs `rampart stop`.
pub async fn main(args: StopArgs) -> i32 {
    match stop(&args).await {
        Ok(lines) => {
            for line in lines {
                println!("{line}");
            }
            0
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            e.exit_code()
        }
    }
}

async fn stop(args: &StopArgs) -> Result<Vec<String>, RunError> {
    let text = std::fs::read_to_string(&args.file)
        .map_err(|e| RunError::Invalid(format!("{}: {e}", args.file.display())))?;
    let policy = crate::run::load_policy(&args.file, &text)?;
    let internal = |e: String| RunError::Internal(anyhow::anyhow!(e));
    let store = StateStore::open(&args.state_dir.join("rampart.db"))
        .await
        .map_err(|e| internal(e.to_string()))?;
    if let Some(active) = store
        .active(&policy.service)
        .await
        .map_err(|e| internal(e.to_string()))?
    {
        return Err(RunError::Blocked(format!(
            "release {} of {} {} is unfinished and owns the service until its outcome; finish it (`rampart run -f {} --version {}`) or roll it back (`rampart rollback {}`) first",
            active.id,
            policy.service,
            active.version,
            args.file.display(),
            active.version,
            active.id
        )));
    }
    // First, so that neither a running `serve`'s supervisor nor its next start brings
    // the service back.
    let files = rampart_adapters::proxy::plane::PlaneFiles::new(&args.state_dir, &policy.service);
    files
        .create_dir()
        .and_then(|()| {
            std::fs::write(files.stopped(), "stopped by `rampart stop`\n").map_err(|source| {
                rampart_adapters::proxy::plane::PlaneError::Io {
                    path: files.stopped(),
                    source,
                }
            })
        })
        .map_err(|e| internal(e.to_string()))?;
    let mut lines = Vec::new();
    if crate::dataplane::attach::stop(&policy.service, &args.state_dir).await? {
        lines.push(format!(
            "{}: the data plane stopped (open connections drained)",
            policy.service
        ));
    }
    if let Some(process) = policy.process() {
        let base = args
            .file
            .parent()
            .map(PathBuf::from)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        let deployer =
            ProcessDeployer::new(&policy.service, process.clone(), &base, &args.state_dir);
        for v in [Variant::Canary, Variant::Stable] {
            let detail = deployer
                .stop(v)
                .await
                .map_err(|e| internal(e.to_string()))?;
            lines.push(format!("{} {}: {detail}", policy.service, v.as_str()));
        }
    }
    if lines.is_empty() {
        lines.push(format!("{}: nothing of it runs here", policy.service));
    }
    Ok(lines)
}
