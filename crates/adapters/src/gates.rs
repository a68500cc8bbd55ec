//! Pre-release gates run on this machine: environment, HTTP and command checks.
//!
//! Owns running one gate and describing what it saw. It must not decide what a
//! failure means; the state machine blocks the release.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rampart_core::policy::{Gate, GateCheck};
use rampart_core::ports::{BoxFuture, GateRunner};
use rampart_core::release::GateResult;
use tokio::io::AsyncReadExt;

use crate::http::get_status;

/// Runs gates from the controller's own process: its environment, its network.
#[derive(Debug, Default, Clone)]
pub struct LocalGates {
    /// The lock file a command run alone holds ([`LocalGates::alone_by`]).
    alone: Option<PathBuf>,
}

impl LocalGates {
    /// Gates whose commands run alone ([`GateRunner::run_alone`]) hold `lock` (a file,
    /// created if absent) while they run: the command and every process it starts get
    /// the locked file as their standard input, so the lock outlives a controller
    /// that dies while they run, and the next run waits for them.
    pub fn alone_by(lock: PathBuf) -> LocalGates {
        LocalGates { alone: Some(lock) }
    }

    async fn run_gate(&self, gate: &Gate, alone: bool) -> GateResult {
        let (ok, detail) = match &gate.check {
            GateCheck::Env(vars) => check_env(vars),
            GateCheck::Http {
                url,
                status,
                timeout,
            } => match get_status(url, *timeout).await {
                Ok(code) if status.map_or((200..300).contains(&code), |s| s == code) => {
                    (true, format!("{url} answered {code}"))
                }
                Ok(code) => (
                    false,
                    format!(
                        "{url} answered {code}, expected {}",
                        status.map_or("2xx".to_string(), |s| s.to_string())
                    ),
                ),
                Err(e) => (false, format!("{url}: {e}")),
            },
            GateCheck::Command { run, timeout } => {
                let lock = self.alone.as_deref().filter(|_| alone);
                run_command(run, *timeout, lock).await
            }
        };
        GateResult {
            name: gate.name.clone(),
            ok,
            detail,
        }
    }
}

impl GateRunner for LocalGates {
    fn run<'a>(&'a self, gate: &'a Gate) -> BoxFuture<'a, GateResult> {
        Box::pin(self.run_gate(gate, false))
    }

    fn run_alone<'a>(&'a self, gate: &'a Gate) -> BoxFuture<'a, GateResult> {
        Box::pin(self.run_gate(gate, true))
    }
}

/// Takes `path`'s lock, waiting up to `wait` for whoever holds it (a run of the same
/// command that a controller which died left running). The lock goes when the last
/// copy of the file is closed, never unlocked by hand: a command cut off at its
/// timeout may leave children running with it, and they keep it.
async fn hold(path: &Path, wait: Duration) -> Result<std::fs::File, String> {
    let take = async {
        loop {
            // The file stays empty: it is the command's standard input.
            let file = crate::lockfile::open(path)
                .map_err(|(what, e)| format!("{what} {}: {e}", path.display()))?;
            match file.try_lock() {
                Ok(()) => return Ok(file),
                Err(std::fs::TryLockError::WouldBlock) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(format!("{}: {e}", path.display()));
                }
            }
        }
    };
    tokio::time::timeout(wait, take).await.unwrap_or_else(|_| {
        Err(format!(
            "an earlier run of this command (a controller that stopped started it) still ran after {}s, so it was not run again beside it",
            wait.as_secs()
        ))
    })
}

fn check_env(vars: &[String]) -> (bool, String) {
    let missing: Vec<&str> = vars
        .iter()
        .filter(|v| std::env::var_os(v).is_none_or(|x| x.is_empty()))
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        (true, format!("{} set", vars.join(", ")))
    } else {
        (false, format!("not set: {}", missing.join(", ")))
    }
}

async fn run_command(argv: &[String], timeout: Duration, lock: Option<&Path>) -> (bool, String) {
    let held = match lock {
        Some(path) => match hold(path, timeout).await {
            Ok(held) => Some(held),
            Err(e) => return (false, e),
        },
        None => None,
    };
    let stdin = match held.as_ref().map(std::fs::File::try_clone) {
        Some(Ok(file)) => Stdio::from(file),
        Some(Err(e)) => return (false, format!("the run's lock could not be passed on: {e}")),
        None => Stdio::null(),
    };
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return (false, format!("could not start `{}`: {e}", argv[0])),
    };
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    // Both pipes are drained at once: a command that fills one while rampart waits on
    // the other would otherwise hang until the timeout.
    let collect = async {
        let read_out = async {
            let mut buf = Vec::new();
            if let Some(s) = stdout.as_mut() {
                let _ = s.read_to_end(&mut buf).await;
            }
            buf
        };
        let read_err = async {
            let mut buf = Vec::new();
            if let Some(s) = stderr.as_mut() {
                let _ = s.read_to_end(&mut buf).await;
            }
            buf
        };
        let (out, err) = tokio::join!(read_out, read_err);
        let status = child.wait().await;
        (status, out, err)
    };
    match tokio::time::timeout(timeout, collect).await {
        Err(_) => (
            false,
            format!(
                "`{}` did not finish within {}s and was killed",
                argv.join(" "),
                timeout.as_secs()
            ),
        ),
        Ok((Err(e), _, _)) => (false, format!("`{}`: {e}", argv[0])),
        Ok((Ok(status), out, err)) => {
            let text = tail(if err.is_empty() { &out } else { &err });
            if status.success() {
                (true, format!("`{}` exited 0", argv.join(" ")))
            } else {
                (false, format!("`{}` {status}: {text}", argv.join(" ")))
            }
        }
    }
}

/// The last few hundred bytes of output, on one line.
pub fn tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(400);
    String::from_utf8_lossy(&bytes[start..])
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn gate(check: GateCheck) -> Gate {
        Gate {
            name: "g".into(),
            check,
        }
    }

    #[tokio::test]
    async fn command_gate_reports_exit_status_and_output() {
        let ok = LocalGates::default()
            .run(&gate(GateCheck::Command {
                run: vec!["true".into()],
                timeout: Duration::from_secs(5),
            }))
            .await;
        assert!(ok.ok, "{ok:?}");
        let bad = LocalGates::default()
            .run(&gate(GateCheck::Command {
                run: vec!["sh".into(), "-c".into(), "echo broken >&2; exit 3".into()],
                timeout: Duration::from_secs(5),
            }))
            .await;
        assert!(!bad.ok);
        assert!(
            bad.detail.contains("broken") && bad.detail.contains('3'),
            "{bad:?}"
        );
        let missing = LocalGates::default()
            .run(&gate(GateCheck::Command {
                run: vec!["/nonexistent/x".into()],
                timeout: Duration::from_secs(5),
            }))
            .await;
        assert!(!missing.ok && missing.detail.contains("could not start"));
    }

    #[tokio::test]
    async fn command_gate_with_lots_of_stderr_does_not_hang() {
        let r = LocalGates::default()
            .run(&gate(GateCheck::Command {
                run: vec![
                    "sh".into(),
                    "-c".into(),
                    "head -c 300000 /dev/zero >&2; echo done".into(),
                ],
                timeout: Duration::from_secs(20),
            }))
            .await;
        assert!(r.ok, "{r:?}");
    }

    #[tokio::test]
    async fn command_gate_times_out() {
        let r = LocalGates::default()
            .run(&gate(GateCheck::Command {
                run: vec!["sleep".into(), "30".into()],
                timeout: Duration::from_millis(200),
            }))
            .await;
        assert!(!r.ok && r.detail.contains("did not finish"), "{r:?}");
    }

    #[tokio::test]
    async fn env_gate_names_missing_variables() {
        let r = LocalGates::default()
            .run(&gate(GateCheck::Env(vec![
                "PATH".into(),
                "RAMPART_SURELY_UNSET_VAR".into(),
            ])))
            .await;
        assert!(!r.ok);
        assert_eq!(r.detail, "not set: RAMPART_SURELY_UNSET_VAR");
    }

    #[tokio::test]
    async fn http_gate_against_a_closed_port_fails() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let r = LocalGates::default()
            .run(&gate(GateCheck::Http {
                url: format!("http://127.0.0.1:{port}/"),
                status: None,
                timeout: Duration::from_secs(2),
            }))
            .await;
        assert!(!r.ok, "{r:?}");
    }
}
