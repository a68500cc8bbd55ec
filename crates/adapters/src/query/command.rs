//! The `command` source: run a metric's program once per variant and interval, and
//! read what it prints: a number, or a JSON document the metric's paths pick from.
//! It stands in for Argo's job metrics: any script that can count can judge.
//!
//! Owns running the program (placeholders filled in its arguments, the same values
//! in `RAMPART_METRIC_*` variables, a time limit, both pipes drained). It must not
//! involve a shell: a program that wants one names it. The program inherits rampart's
//! environment, the other providers' secrets with it, so nothing it prints reaches a
//! detail without being scrubbed of them.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use rampart_core::policy::{QuerySource, QuerySpec};
use rampart_core::ports::BoxFuture;
use serde_json::Value;
use tokio::io::AsyncReadExt;

use super::{Ask, QueryProvider, ReadError, Reading, Secret, number_at, said};

/// How long one run may take before it is killed.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `command` metrics' programs in the policy's directory.
#[derive(Debug)]
pub struct Command {
    dir: PathBuf,
    programs: Vec<String>,
    /// The providers whose secrets the programs inherit, asked at each read (keys a
    /// provider reads again, as CloudWatch's from the shared file, may change).
    others: Vec<Arc<dyn QueryProvider>>,
}

impl Command {
    /// Programs run in `dir`, where relative paths in them start.
    pub fn new(dir: &Path) -> Command {
        Command {
            dir: dir.to_path_buf(),
            programs: Vec::new(),
            others: Vec::new(),
        }
    }

    /// Also scrubs the secrets `others` hold, as they are at each read, from what the
    /// programs print (they inherit them).
    pub fn with_secrets_of(mut self, others: Vec<Arc<dyn QueryProvider>>) -> Command {
        self.others = others;
        self
    }

    fn secrets(&self) -> Vec<Secret> {
        self.others.iter().flat_map(|p| p.secrets()).collect()
    }

    /// Also checks, before the release, that each of `analysis`'s programs exists.
    pub fn with_programs(mut self, analysis: &rampart_core::policy::Analysis) -> Command {
        for m in &analysis.metrics {
            if let Some(QuerySource::Command(c)) = m.query.as_ref().map(|q| &q.source)
                && let Some(program) = c.argv.first()
                && !self.programs.contains(program)
            {
                self.programs.push(program.clone());
            }
        }
        self
    }

    /// What the program printed, with every secret to scrub from anything made of it.
    async fn document(
        &self,
        spec: &QuerySpec,
        ask: &Ask,
    ) -> Result<(Value, Vec<Secret>), ReadError> {
        let QuerySource::Command(c) = &spec.source else {
            return Err(ReadError::Other("not a `command` metric".into()));
        };
        let argv: Vec<String> = c.argv.iter().map(|a| ask.fill(a, str::to_string)).collect();
        let (status, out, err) = run(&argv, &self.dir, ask).await?;
        // Asked once it ended: a key refreshed while it ran may be in what it printed,
        // and a provider's secrets include every set it replaced, so those it held
        // when the program started are among them.
        let held = self.secrets();
        let secrets: Vec<&Secret> = held.iter().collect();
        if !status.success() {
            // Scrubbed before the tail is cut: a secret cut at its start would not match.
            return Err(ReadError::Command(format!(
                "`{}` {status}: {}",
                argv[0],
                crate::gates::tail(
                    super::scrub(&String::from_utf8_lossy(&err), &secrets).as_bytes()
                )
            )));
        }
        let text = String::from_utf8_lossy(&out);
        let text = text.trim();
        if let Ok(n) = text.parse::<f64>() {
            return Ok((Value::from(n), held));
        }
        match serde_json::from_str(text) {
            Ok(doc) => Ok((doc, held)),
            Err(_) => Err(ReadError::Command(format!(
                "`{}` printed neither a number nor JSON: {}",
                argv[0],
                said(text, &secrets)
            ))),
        }
    }
}

/// Kills a program's process group when dropped.
struct GroupKill(Option<nix::unistd::Pid>);

impl Drop for GroupKill {
    fn drop(&mut self) {
        if let Some(group) = self.0 {
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Runs `argv` in `dir` and returns how it exited, its standard output and its
/// standard error; or why it could not be run to its end.
async fn run(
    argv: &[String],
    dir: &Path,
    ask: &Ask,
) -> Result<(std::process::ExitStatus, Vec<u8>, Vec<u8>), ReadError> {
    let Some(program) = argv.first() else {
        return Err(ReadError::Command("the command is empty".into()));
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(&argv[1..])
        .current_dir(dir)
        .env("RAMPART_METRIC_SERVICE", &ask.service)
        .env("RAMPART_METRIC_VARIANT", ask.variant)
        .env("RAMPART_METRIC_VERSION", &ask.version)
        .env("RAMPART_METRIC_FROM", (ask.from / 1000).to_string())
        .env("RAMPART_METRIC_TO", (ask.to / 1000).to_string())
        .env(
            "RAMPART_METRIC_INTERVAL",
            super::prom_duration(ask.interval),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: at the time limit the whole group is killed, so a
        // child it started cannot hold the pipes open past it.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| ReadError::Command(format!("could not start `{program}`: {e}")))?;
    // Whatever ends the read (done, the time limit, the measurement giving up on it),
    // nothing the program started outlives it.
    let _group = GroupKill(
        child
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .map(nix::unistd::Pid::from_raw),
    );
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    // Both pipes at once: a program filling one while rampart reads the other would
    // hang until the time limit.
    let finished = async {
        let (out, err) = tokio::join!(
            capped(stdout.as_mut(), OUTPUT_LIMIT),
            capped(stderr.as_mut(), OUTPUT_LIMIT)
        );
        (child.wait().await, out, err)
    };
    match tokio::time::timeout(TIMEOUT, finished).await {
        Err(_) => Err(ReadError::Command(format!(
            "`{program}` did not finish within {}s and was killed",
            TIMEOUT.as_secs()
        ))),
        Ok((Err(e), _, _)) => Err(ReadError::Command(format!("`{program}`: {e}"))),
        Ok((_, (_, true), _)) => Err(ReadError::Command(format!(
            "`{program}` printed more than {} KiB: a metric is a number or a small JSON object",
            OUTPUT_LIMIT / 1024
        ))),
        Ok((Ok(status), (out, false), (err, _))) => Ok((status, out, err)),
    }
}

/// What rampart keeps of each of a program's outputs; the rest is read and dropped,
/// so a program printing without end costs no memory (the time limit ends it).
const OUTPUT_LIMIT: usize = 1 << 20;

/// All of `pipe` read, the first `limit` bytes kept; `true` when there was more.
async fn capped<R: tokio::io::AsyncRead + Unpin>(
    pipe: Option<&mut R>,
    limit: usize,
) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let Some(pipe) = pipe else {
        return (kept, false);
    };
    let mut chunk = vec![0u8; 16 * 1024];
    let mut over = false;
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => return (kept, over),
            Ok(n) => {
                let room = limit.saturating_sub(kept.len());
                kept.extend_from_slice(&chunk[..n.min(room)]);
                over |= n > room;
            }
        }
    }
}

/// Whether `program` would run: a file that may be executed, relative to `dir` with a
/// `/`, else on `PATH`. A script without its execute bit is found by name but cannot
/// start, so it is not one.
fn found(program: &str, dir: &Path) -> bool {
    if program.contains('/') {
        return runnable(&dir.join(program));
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|p| runnable(&p.join(program))))
        .unwrap_or(false)
}

/// Whether `path` is a file with an execute bit set.
fn runnable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

impl QueryProvider for Command {
    fn read<'a>(&'a self, spec: &'a QuerySpec, ask: &'a Ask) -> BoxFuture<'a, Reading> {
        Box::pin(async move {
            match self.document(spec, ask).await {
                Ok((doc, held)) => {
                    let secrets: Vec<&Secret> = held.iter().collect();
                    Reading {
                        value: number_at(&doc, &spec.query, &secrets),
                        samples: spec
                            .samples
                            .as_deref()
                            .map(|p| number_at(&doc, p, &secrets)),
                        histogram: None,
                    }
                }
                Err(e) => Reading {
                    value: Err(e),
                    samples: None,
                    histogram: None,
                },
            }
        })
    }

    fn check(&self) -> BoxFuture<'_, Result<String, ReadError>> {
        Box::pin(async move {
            match self.programs.iter().find(|p| !found(p, &self.dir)) {
                Some(missing) => Err(ReadError::Command(format!(
                    "`{missing}` is not a program here (relative to {}, or on PATH): no such file, or one without its execute bit",
                    self.dir.display()
                ))),
                None => Ok(format!("{} found", self.programs.join(", "))),
            }
        })
    }
}
