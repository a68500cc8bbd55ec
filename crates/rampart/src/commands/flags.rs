//! `rampart flags`: read, change and serve a service's feature flags.
//!
//! Owns the command-line side of the flag store: every change names who made it and
//! why (the store audits it), and reads use the same evaluation as the HTTP endpoint.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Subcommand;
use rampart_adapters::flags::FlagServer;
use rampart_adapters::store::StateStore;
use rampart_core::flags::{FlagState, RELEASE_ACTOR};
use rampart_core::ports::{Clock, FlagChange, FlagStore};
use rampart_core::{Millis, Policy, Weight};

use crate::report::Output;

/// The arguments of `rampart flags`.
#[derive(Debug, clap::Args)]
pub struct FlagsArgs {
    #[command(subcommand)]
    pub what: FlagsCommand,
}

/// What to do with flags.
#[derive(Debug, Subcommand)]
pub enum FlagsCommand {
    /// Every flag of the policy's service, with its default, ramp and allowlist.
    List {
        /// The policy file (its `flags.define` creates missing flags).
        #[arg(short = 'f', long = "file", value_name = "POLICY")]
        file: PathBuf,
        /// Where state is kept.
        #[arg(long, env = "RAMPART_STATE_DIR", default_value = ".rampart")]
        state_dir: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Whether a flag is on for a key (a user id), and why.
    Get {
        /// The flag.
        name: String,
        /// The key the application would ask with; without it, an anonymous caller.
        #[arg(long)]
        key: Option<String>,
        /// The policy file.
        #[arg(short = 'f', long = "file", value_name = "POLICY")]
        file: PathBuf,
        /// Where state is kept.
        #[arg(long, env = "RAMPART_STATE_DIR", default_value = ".rampart")]
        state_dir: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Change a flag's ramp or default. Audited with who and why.
    Set {
        /// The flag.
        name: String,
        /// The share of keys it is on for, 0 to 100.
        #[arg(long, value_parser = parse_ramp)]
        ramp: Option<Weight>,
        /// The value outside the ramp and the allowlist.
        #[arg(long, value_parser = ["on", "off"])]
        default: Option<String>,
        /// Why, for the audit trail.
        #[arg(long)]
        reason: String,
        /// Who; defaults to $USER, else $LOGNAME, else the user id.
        #[arg(long = "as", value_name = "NAME")]
        actor: Option<String>,
        /// The policy file.
        #[arg(short = 'f', long = "file", value_name = "POLICY")]
        file: PathBuf,
        /// Where state is kept.
        #[arg(long, env = "RAMPART_STATE_DIR", default_value = ".rampart")]
        state_dir: PathBuf,
        /// Output format (`json` prints the flag's new state).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Serve the flag endpoint on its own, until interrupted.
    Serve {
        /// The policy file.
        #[arg(short = 'f', long = "file", value_name = "POLICY")]
        file: PathBuf,
        /// Where to listen; defaults to the policy's `flags.listen`.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Where state is kept.
        #[arg(long, env = "RAMPART_STATE_DIR", default_value = ".rampart")]
        state_dir: PathBuf,
    },
}

fn parse_ramp(s: &str) -> Result<Weight, String> {
    Weight::parse(s)
}

/// Runs `rampart flags`.
pub async fn main(args: FlagsArgs, clock: Arc<dyn Clock>) -> i32 {
    run(args.what, clock.now()).await
}

/// Runs a `flags` command and returns the exit code.
async fn run(cmd: FlagsCommand, now: Millis) -> i32 {
    match go(cmd, now).await {
        Ok(()) => 0,
        Err((code, message)) => {
            eprintln!("error: {message}");
            code
        }
    }
}

type Failure = (i32, String);

/// The policy's service and its store, with the policy's flags defined.
async fn open(
    file: &Path,
    state_dir: &Path,
    now: Millis,
) -> Result<(Policy, Arc<StateStore>), Failure> {
    let text = crate::run::read_text(file).map_err(|e| (2, e.to_string()))?;
    // A flag command starts no release: rules for new releases only (an allowlist a
    // newer rampart refuses under `client-ip`) never lock the flags of a service.
    let policy = crate::run::load_stored_policy(file, &text).map_err(|e| (2, format!("{e:#}")))?;
    let store = StateStore::open(&state_dir.join("rampart.db"))
        .await
        .map_err(|e| (1, e.to_string()))?;
    let defs = policy.flags.as_ref().map_or(&[][..], |f| &f.define[..]);
    store
        .define(&policy.service, defs, now)
        .await
        .map_err(|e| (1, e.0))?;
    Ok((policy, Arc::new(store)))
}

fn line(f: &FlagState) -> String {
    let allow = if f.allow.is_empty() {
        String::new()
    } else {
        format!(", allowlist {}", f.allow.join(","))
    };
    format!(
        "{}: ramp {}, default {}{allow}",
        f.name,
        f.ramp,
        if f.default { "on" } else { "off" }
    )
}

async fn go(cmd: FlagsCommand, now: Millis) -> Result<(), Failure> {
    match cmd {
        FlagsCommand::List {
            file,
            state_dir,
            output,
        } => {
            let (policy, store) = open(&file, &state_dir, now).await?;
            let flags = store.flags(&policy.service).await.map_err(|e| (1, e.0))?;
            match output {
                Output::Json => println!(
                    "{}",
                    serde_json::json!({"service": policy.service, "flags": flags})
                ),
                Output::Text if flags.is_empty() => {
                    println!(
                        "{} has no flags; define them under `flags.define`",
                        policy.service
                    );
                }
                Output::Text => flags.iter().for_each(|f| println!("{}", line(f))),
            }
            Ok(())
        }
        FlagsCommand::Get {
            name,
            key,
            file,
            state_dir,
            output,
        } => {
            let (policy, store) = open(&file, &state_dir, now).await?;
            let flags = store.flags(&policy.service).await.map_err(|e| (1, e.0))?;
            let flag = flags
                .iter()
                .find(|f| f.name == name)
                .ok_or_else(|| (2, format!("{} has no flag `{name}`", policy.service)))?;
            let e = flag.evaluate(key.as_deref());
            match output {
                Output::Json => println!(
                    "{}",
                    serde_json::json!({"name": name, "key": key, "on": e.on, "reason": e.reason})
                ),
                Output::Text => println!(
                    "{name} is {} for {} ({})",
                    if e.on { "on" } else { "off" },
                    key.as_deref().unwrap_or("an anonymous caller"),
                    serde_json::to_value(e.reason)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default()
                ),
            }
            Ok(())
        }
        FlagsCommand::Set {
            name,
            ramp,
            default,
            reason,
            actor,
            file,
            state_dir,
            output,
        } => {
            if ramp.is_none() && default.is_none() {
                return Err((
                    2,
                    "nothing to change: give --ramp, --default or both".into(),
                ));
            }
            let (policy, store) = open(&file, &state_dir, now).await?;
            // A release that ramps this flag owns it until it ends: raising it would
            // be overwritten by its next step and measured as a cohort the flag no
            // longer follows. Turning it down (the kill switch) always goes through:
            // the release then rolls back at its next step instead of ramping it up
            // again.
            let releases = store
                .releases(&policy.service)
                .await
                .map_err(|e| (1, e.to_string()))?;
            let owner = releases.iter().find(|r| {
                r.outcome.is_none()
                    && rampart_core::Policy::from_stored(&r.policy)
                        .is_ok_and(|p| p.strategy.ramped_flag() == Some(name.as_str()))
            });
            let current = rampart_core::ports::FlagStore::flags(store.as_ref(), &policy.service)
                .await
                .map_err(|e| (1, e.0))?
                .into_iter()
                .find(|f| f.name == name);
            let raises = current.as_ref().is_some_and(|f| {
                ramp.is_some_and(|r| r > f.ramp) || (default.as_deref() == Some("on") && !f.default)
            });
            if let Some(owner) = owner {
                if raises {
                    return Err((
                        5,
                        format!(
                            "release {} of {} ramps flag `{name}` now: raising it would be overwritten by its next step. Turning it down is allowed (the release then rolls back at its next step); to end the release now, `rampart rollback {}`",
                            owner.id, policy.service, policy.service
                        ),
                    ));
                }
                eprintln!(
                    "release {} ramps `{name}`: it rolls back at its next step rather than ramp it up again (`rampart rollback {}` ends it now)",
                    owner.id, policy.service
                );
            }
            // A release's own changes are recorded as `rampart`: a person is never.
            let actor = match actor {
                Some(a) if a == RELEASE_ACTOR => {
                    return Err((
                        2,
                        format!(
                            "`--as {RELEASE_ACTOR}` is the name releases change flags under; give your own"
                        ),
                    ));
                }
                Some(a) => a,
                None => match crate::client::local_user() {
                    u if u == RELEASE_ACTOR => format!("{u} (cli)"),
                    u => u,
                },
            };
            let change = FlagChange {
                name,
                ramp,
                default: default.map(|d| d == "on"),
                actor,
                reason,
                at: now,
            };
            let after = store
                .set_flag(&policy.service, &change)
                .await
                .map_err(|e| (2, e.0))?;
            match output {
                Output::Json => println!(
                    "{}",
                    serde_json::json!({"service": policy.service, "flag": after})
                ),
                Output::Text => println!("{}", line(&after)),
            }
            Ok(())
        }
        FlagsCommand::Serve {
            file,
            listen,
            state_dir,
        } => {
            let (policy, store) = open(&file, &state_dir, now).await?;
            let listen = listen
                .or_else(|| policy.flags.as_ref().and_then(|f| f.listen))
                .ok_or_else(|| {
                    (
                        2,
                        "no address: give --listen, or set `flags.listen` in the policy".into(),
                    )
                })?;
            let server = FlagServer::bind(listen, store, &policy.service)
                .await
                .map_err(|e| {
                    (
                        1,
                        format!("the flag endpoint cannot listen on {listen}: {e}"),
                    )
                })?;
            println!(
                "serving {}'s flags on http://{}/flags until interrupted (Ctrl-C)",
                policy.service,
                server.local_addr()
            );
            let _ = tokio::signal::ctrl_c().await;
            Ok(())
        }
    }
}
