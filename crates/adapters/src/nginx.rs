//! nginx as the traffic router: rampart renders one include file per service, has
//! nginx validate it, reloads, and checks that the new split is the one being served.
//! A change of the weight alone needs no reload: nginx reads it per request from a
//! directory rampart swaps with one rename, because every reload resets the
//! keep-alive connections of clients caught between two requests (issue 21).
//!
//! Owns the rendered file (upstreams, two `split_clients` on the sticky key, match
//! rules as `map`s, the request log sent to rampart, and the service's `server`
//! block), the weight directory beside it, their generation counter, and restoring
//! the previous file when nginx refuses a new one. It must not touch the rest of
//! nginx's configuration.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use rampart_core::policy::{MatchSource, NginxSpec, RouteMatch, Sticky};
use rampart_core::ports::{BoxFuture, PortError, TrafficRouter};
use rampart_core::{Variant, Weight};
use tokio::sync::Mutex;

/// How long the new generation gets to be served after a reload.
const LOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// What the file says.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Split {
    /// Stable's endpoints.
    pub stable: Vec<SocketAddr>,
    /// The canary's endpoints.
    pub canary: Vec<SocketAddr>,
    /// The canary's share.
    pub weight: Weight,
    /// Requests sent to the canary whatever the weight.
    pub matches: Vec<RouteMatch>,
}

#[derive(Debug)]
struct State {
    split: Split,
    /// The generation of the latest change in force, of the file or of the weight.
    generation: u64,
    /// The highest generation number ever handed out: a number is used once, so an
    /// attempt that failed half way never rewrites a directory nginx may be reading.
    used: u64,
    /// The canary's share the weight directory gives now (read back after a restart).
    weight: Option<Weight>,
    /// The generation of the file nginx was last reloaded with.
    loaded: u64,
    /// Whether the weight changed since the last reload: requests still in flight
    /// to a variant that lost its share then run on the current workers, and a
    /// drain must reload to tell when they have finished.
    weight_since_reload: bool,
}

/// Rewrites, tests and reloads nginx.
#[derive(Debug)]
pub struct NginxRouter {
    spec: NginxSpec,
    service: String,
    log_to: SocketAddr,
    state: Mutex<State>,
}

fn err(msg: impl Into<String>) -> PortError {
    PortError::new(Into::<String>::into(msg))
}

/// An nginx variable-safe form of `name`.
fn ident(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// A quoted nginx string.
fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The nginx variable holding a header's or cookie's value.
fn source_var(src: &MatchSource) -> String {
    match src {
        MatchSource::Header(h) => format!("$http_{}", ident(&h.to_ascii_lowercase())),
        MatchSource::Cookie(c) => format!("$cookie_{}", ident(c)),
    }
}

/// Renders the include file for `service`.
pub fn render(
    service: &str,
    spec: &NginxSpec,
    split: &Split,
    generation: u64,
    log_to: SocketAddr,
) -> String {
    let id = ident(service);
    let mut f = String::new();
    let _ = writeln!(
        f,
        "# Written by rampart for service {service}, generation {generation}. Do not edit: rampart\n# rewrites this file on every traffic change."
    );
    for (variant, eps) in [("stable", &split.stable), ("canary", &split.canary)] {
        let _ = writeln!(f, "upstream rampart_{id}_{variant} {{");
        if eps.is_empty() {
            // Never chosen while empty (its share is 0), but it must exist.
            f.push_str("    server 127.0.0.1:9 down;\n");
        }
        for ep in eps {
            let _ = writeln!(f, "    server {ep} max_fails=0;");
        }
        f.push_str("    keepalive 16;\n}\n");
    }
    if spec.sticky == Sticky::ClientIp {
        // rampart's own load comes from one address: stuck by it, all of it would
        // land on one variant. Its requests are spread by their id instead; everyone
        // else's key is their address, as before.
        let _ = writeln!(
            f,
            "map $http_x_rampart_load $rampart_{id}_load {{\n    \"\" \"\";\n    default $request_id;\n}}"
        );
    }
    let key = match &spec.sticky {
        Sticky::None => "$request_id".to_string(),
        Sticky::ClientIp => format!("$remote_addr$rampart_{id}_load"),
        Sticky::Header(h) => format!("$http_{}", ident(h)),
        Sticky::Cookie(c) => format!("$cookie_{}", ident(c)),
    };
    // Two independent hashes of the key, each a bucket 00-99: a request is in basis
    // point `100 * hi + lo` of 10 000, and goes to the canary when that is below the
    // weight, which the weight directory says (see `weight_files`).
    for (part, salt) in [("hi", ""), ("lo", "~")] {
        let _ = writeln!(f, "split_clients \"{key}{salt}\" $rampart_{id}_{part} {{");
        for bucket in 0..99 {
            let _ = writeln!(f, "    1% {bucket:02};");
        }
        f.push_str("    * 99;\n}\n");
    }
    let mut flags = Vec::new();
    for (i, m) in split.matches.iter().enumerate() {
        let var = format!("$rampart_{id}_m{i}");
        let _ = writeln!(f, "map {} {var} {{", source_var(&m.source));
        if m.values.is_empty() {
            f.push_str("    default 1;\n    \"\" \"\";\n");
        } else {
            f.push_str("    default \"\";\n");
            for v in &m.values {
                let _ = writeln!(f, "    {} 1;", quote(&format!("\\{v}")));
            }
        }
        f.push_str("}\n");
        flags.push(var);
    }
    let matched = if flags.is_empty() {
        "\"\"".to_string()
    } else {
        format!("\"{}\"", flags.concat())
    };
    let _ = writeln!(
        f,
        "map {matched} $rampart_{id}_variant {{\n    \"\" $rampart_{id}_split;\n    default canary;\n}}"
    );
    let _ = writeln!(
        f,
        "log_format rampart_{id} 'rampart-s {service} $rampart_{id}_variant $status $upstream_header_time $request_time';"
    );
    let dir = weight_dir(Path::new(&spec.include));
    let current = dir.join("current").display().to_string();
    let hi = quote(&format!("{current}/h$rampart_{id}_hi"));
    let lo = quote(&format!("{current}/l$rampart_{id}_hi$rampart_{id}_lo"));
    let state = quote(&format!("{current}/state"));
    let _ = writeln!(
        f,
        r#"server {{
    listen {listen};
    # The weight is read from files at every request: never from a cache (a weight
    # lowered by a rollback must hold for the next request), and through the symlink
    # rampart swaps.
    open_file_cache off;
    disable_symlinks off;
    set $rampart_{id}_split stable;
    if (-f {hi}) {{
        set $rampart_{id}_split canary;
    }}
    if (-f {lo}) {{
        set $rampart_{id}_split canary;
    }}
    location = /__rampart/{service} {{
        access_log off;
        default_type text/plain;
        return 200 "generation {generation}\n";
    }}
    location = /__rampart/{service}/weight {{
        access_log off;
        default_type text/plain;
        alias {state};
    }}
    location / {{
        proxy_pass http://rampart_{id}_$rampart_{id}_variant;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $host;
        proxy_next_upstream off;
        add_header x-rampart-variant $rampart_{id}_variant always;
        access_log syslog:server={log_to},nohostname rampart_{id};
    }}
}}"#,
        listen = spec.listen,
    );
    f
}

/// The generation a rendered file carries, if it is one of rampart's.
fn generation_of(text: &str) -> Option<u64> {
    let rest = &text[text.find(", generation ")? + ", generation ".len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The directory beside the include file whose `current` entry (a symlink to one
/// generation's directory, swapped with one rename) holds the weight nginx reads per
/// request: `include` plus `.weight`, so that a `conf.d/*.conf` glob skips it.
pub fn weight_dir(include: &Path) -> std::path::PathBuf {
    let mut name = include.as_os_str().to_owned();
    name.push(".weight");
    name.into()
}

/// The empty files that send a weight's share to the canary: `hNN` for each whole
/// percent below it (every `lo` of that `hi`), then `lHHLL` for each basis point of
/// the next percent. Users already on the canary stay there as the weight grows.
pub fn weight_files(weight: Weight) -> Vec<String> {
    let bp = weight.basis_points();
    let (whole, rest) = (bp / 100, bp % 100);
    let mut files: Vec<String> = (0..whole).map(|hi| format!("h{hi:02}")).collect();
    files.extend((0..rest).map(|lo| format!("l{whole:02}{lo:02}")));
    files
}

async fn run(cmd: &[String]) -> Result<(), String> {
    let Some((prog, args)) = cmd.split_first() else {
        return Err("empty command".into());
    };
    let out = tokio::process::Command::new(prog)
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .map_err(|_| format!("`{}` did not finish within 30s", cmd.join(" ")))?
        .map_err(|e| format!("`{}`: {e}", cmd.join(" ")))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(format!(
        "`{}` failed ({}): {}",
        cmd.join(" "),
        out.status,
        stderr.trim()
    ))
}

impl NginxRouter {
    /// A router for `service` writing `spec.include` and the weight directory beside
    /// it; nginx sends its request log to `log_to`.
    pub fn new(spec: NginxSpec, service: &str, log_to: SocketAddr) -> NginxRouter {
        let loaded = std::fs::read_to_string(&spec.include)
            .ok()
            .and_then(|t| generation_of(&t))
            .unwrap_or(0);
        let dir = weight_dir(Path::new(&spec.include));
        let current = std::fs::read_to_string(dir.join("current/state")).ok();
        let weighed = current
            .as_deref()
            .and_then(|t| generation_of(&format!(", {t}")))
            .unwrap_or(0);
        // Every generation directory left behind counts as used.
        let left = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str()?.strip_prefix('g')?.parse().ok())
            .max()
            .unwrap_or(0);
        NginxRouter {
            spec,
            service: service.to_string(),
            log_to,
            state: Mutex::new(State {
                split: Split::default(),
                generation: loaded.max(weighed),
                used: loaded.max(weighed).max(left),
                weight: current.as_deref().and_then(weight_of),
                loaded,
                // Unknown after a restart: a drain reloads to be sure.
                weight_since_reload: true,
            }),
        }
    }

    /// Puts `next` in force. When the file would say what nginx already loaded, only
    /// the weight directory changes (no reload); otherwise writes, tests, reloads and
    /// verifies, and on any failure the previous file and weight are put back and
    /// nginx keeps (or goes back to) what it served.
    async fn apply(&self, state: &mut State, next: Split) -> Result<(), PortError> {
        let path = Path::new(&self.spec.include);
        let before = std::fs::read_to_string(path).ok();
        let unchanged = render(&self.service, &self.spec, &next, state.loaded, self.log_to);
        if state.loaded > 0 && before.as_deref() == Some(unchanged.as_str()) {
            return self.reweigh(state, next.weight).await.map(|()| {
                state.split = next;
            });
        }
        // A falling canary share (a rollback) goes in force first, through the weight
        // the loaded file already reads: it never waits for, nor depends on, a reload
        // (`nginx -t` refusing the new match rules, say).
        // Best effort: when nginx is not seen reading it (it may serve an older file,
        // after a controller crash between writing one and reloading), the reload
        // below still puts the new weight in force.
        if state.loaded > 0
            && state.weight.is_some_and(|w| next.weight < w)
            && self.reweigh(state, next.weight).await.is_ok()
        {
            state.split.weight = next.weight;
        }
        state.used += 1;
        let generation = state.used;
        let text = render(&self.service, &self.spec, &next, generation, self.log_to);
        write_atomically(path, &text)?;
        let restore = |why: String| -> PortError {
            let put_back = match &before {
                Some(old) => write_atomically(path, old).err(),
                None => std::fs::remove_file(path).err().map(|e| err(e.to_string())),
            };
            match put_back {
                None => err(format!("{why}; the previous configuration is kept")),
                Some(e) => err(format!(
                    "{why}; restoring the previous file failed too: {e}"
                )),
            }
        };
        if let Err(e) = run(&self.spec.test).await {
            return Err(restore(format!(
                "nginx rejected the new configuration: {e}"
            )));
        }
        let dir = weight_dir(path);
        let previous = std::fs::read_link(dir.join("current")).ok();
        if let Err(e) = write_weight(&dir, next.weight, generation) {
            return Err(restore(e.0));
        }
        let serving: Vec<u32> = self
            .workers()
            .into_iter()
            .filter(|(_, shutting_down)| !shutting_down)
            .map(|(pid, _)| pid)
            .collect();
        if let Err(e) = run(&self.spec.reload).await {
            let e = restore(format!("nginx did not reload: {e}"));
            if let Some(previous) = previous {
                let _ = point_current(&dir, &previous);
            }
            // Whatever happened, ask nginx to serve the restored file.
            let _ = run(&self.spec.reload).await;
            return Err(e);
        }
        // Reloaded: whether or not it is seen served in time, this is what nginx has.
        state.weight = Some(next.weight);
        state.generation = generation;
        state.loaded = generation;
        state.weight_since_reload = false;
        self.verify(generation, generation, &serving).await?;
        state.split = next;
        Ok(())
    }

    /// Changes only the weight directory, under the file nginx has loaded: no reload.
    async fn reweigh(&self, state: &mut State, weight: Weight) -> Result<(), PortError> {
        state.used += 1;
        let generation = state.used;
        write_weight(
            &weight_dir(Path::new(&self.spec.include)),
            weight,
            generation,
        )?;
        // Current from here, whether or not nginx is seen reading it in time.
        state.weight = Some(weight);
        state.generation = generation;
        state.weight_since_reload = true;
        self.verify(state.loaded, generation, &[]).await
    }

    /// Waits until nginx answers with file generation `loaded` and weight generation
    /// `weighed` on a fresh connection, and every worker that served before (`old`)
    /// has stopped taking connections: from then on no new request is split the old
    /// way.
    async fn verify(&self, loaded: u64, weighed: u64, old: &[u32]) -> Result<(), PortError> {
        let url = format!("http://{}/__rampart/{}", self.spec.listen, self.service);
        let deadline = tokio::time::Instant::now() + LOAD_TIMEOUT;
        let mut checks = [
            (url.clone(), format!("generation {loaded}\n"), false),
            (
                format!("{url}/weight"),
                format!("generation {weighed} "),
                false,
            ),
        ];
        loop {
            let mut last = None;
            for (url, want, seen) in checks.iter_mut().filter(|c| !c.2) {
                match crate::http::get_text(url, Duration::from_secs(2)).await {
                    Ok((200, body)) if body.starts_with(&*want) => {
                        *seen = true;
                    }
                    Ok((status, body)) => last = Some(format!("{url}: {status} {}", body.trim())),
                    Err(e) => last = Some(format!("{url}: {e}")),
                }
            }
            if last.is_none() {
                let still: Vec<u32> = self
                    .workers()
                    .into_iter()
                    .filter(|(pid, down)| !down && old.contains(pid))
                    .map(|(pid, _)| pid)
                    .collect();
                if still.is_empty() {
                    return Ok(());
                }
                last = Some(format!(
                    "worker(s) {still:?} of the previous configuration still accept connections"
                ));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(err(format!(
                    "nginx does not serve generation {loaded} with weight generation {weighed} after {}s (last answer: {})",
                    LOAD_TIMEOUT.as_secs(),
                    last.unwrap_or_default()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The workers of the nginx in `spec.pid`, and whether each is shutting down
    /// (finishing requests under a previous configuration, accepting none).
    fn workers(&self) -> Vec<(u32, bool)> {
        let master = std::fs::read_to_string(&self.spec.pid)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok());
        let Some(master) = master else {
            return Vec::new();
        };
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| parent_of(*pid) == Some(master))
            .filter_map(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                let title = String::from_utf8_lossy(&cmdline);
                title
                    .starts_with("nginx: worker process")
                    .then(|| (pid, title.contains("is shutting down")))
            })
            .collect()
    }

    fn old_workers(&self) -> usize {
        self.workers().iter().filter(|(_, down)| *down).count()
    }

    /// Waits until no request runs under a split from before the latest change. After
    /// weight changes without a reload, the requests still in flight to a variant that
    /// lost its share run on the current workers, where nothing tells when they end:
    /// one reload moves them to the old workers, which nginx retires once they finish.
    async fn wait_old_workers(&self, timeout: Duration) -> Result<(), PortError> {
        {
            let mut state = self.state.lock().await;
            if state.weight_since_reload && state.loaded > 0 {
                let serving: Vec<u32> = self
                    .workers()
                    .into_iter()
                    .filter(|(_, down)| !down)
                    .map(|(pid, _)| pid)
                    .collect();
                run(&self.spec.reload)
                    .await
                    .map_err(|e| err(format!("nginx did not reload to drain: {e}")))?;
                self.verify(state.loaded, state.generation, &serving)
                    .await?;
                state.weight_since_reload = false;
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let n = self.old_workers();
            if n == 0 {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(err(format!(
                    "{n} nginx worker(s) still finishing requests under the previous configuration after {}ms",
                    timeout.as_millis()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The weight a weight directory's `state` file gives (`generation G weight W`).
fn weight_of(state: &str) -> Option<Weight> {
    let rest = &state[state.find(" weight ")? + " weight ".len()..];
    Weight::parse(rest.trim()).ok()
}

/// Writes generation `generation` of the weight directory and makes it current with
/// one rename, so a request sees either the previous weight or this one; removes the
/// generations before the previous one.
fn write_weight(dir: &Path, weight: Weight, generation: u64) -> Result<(), PortError> {
    use std::os::unix::fs::PermissionsExt as _;
    let io = |what: &Path, e: std::io::Error| err(format!("writing {}: {e}", what.display()));
    // nginx's workers (another user) read it whatever rampart's umask.
    let readable = |p: &Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).map_err(|e| io(p, e))
    };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    readable(dir, 0o755)?;
    let name = format!("g{generation}");
    let gen_dir = dir.join(&name);
    if gen_dir.exists() {
        // Left by an attempt that failed before it became current.
        std::fs::remove_dir_all(&gen_dir).map_err(|e| io(&gen_dir, e))?;
    }
    std::fs::create_dir(&gen_dir).map_err(|e| io(&gen_dir, e))?;
    readable(&gen_dir, 0o755)?;
    for file in weight_files(weight) {
        let p = gen_dir.join(file);
        std::fs::File::create(&p).map_err(|e| io(&p, e))?;
        readable(&p, 0o644)?;
    }
    let state = gen_dir.join("state");
    std::fs::write(&state, format!("generation {generation} weight {weight}\n"))
        .map_err(|e| io(&state, e))?;
    readable(&state, 0o644)?;
    let previous = std::fs::read_link(dir.join("current")).ok();
    point_current(dir, Path::new(&name))?;
    // Keep the current and the previous generation; a request may still be reading it.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.filter_map(Result::ok) {
            let n = e.file_name();
            let keep = n == name.as_str() || previous.as_deref() == Some(Path::new(&n));
            if !keep && n.to_string_lossy().starts_with('g') {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(())
}

/// Points `dir/current` at `target` (relative to `dir`) with one rename.
fn point_current(dir: &Path, target: &Path) -> Result<(), PortError> {
    let tmp = dir.join("current.rampart-tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)
        .and_then(|()| std::fs::rename(&tmp, dir.join("current")))
        .map_err(|e| err(format!("writing {}: {e}", dir.join("current").display())))
}

fn write_atomically(path: &Path, text: &str) -> Result<(), PortError> {
    let tmp = path.with_extension("rampart-tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| err(format!("writing {}: {e}", path.display())))
}

impl TrafficRouter for NginxRouter {
    fn set_backends<'a>(
        &'a self,
        variant: Variant,
        endpoints: &'a [SocketAddr],
    ) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(async move {
            let mut state = self.state.lock().await;
            let mut next = state.split.clone();
            match variant {
                Variant::Stable => next.stable = endpoints.to_vec(),
                Variant::Canary => next.canary = endpoints.to_vec(),
            }
            self.apply(&mut state, next).await
        })
    }

    fn set_weight<'a>(
        &'a self,
        weight: Weight,
        matches: &'a [RouteMatch],
    ) -> BoxFuture<'a, Result<Weight, PortError>> {
        Box::pin(async move {
            let mut state = self.state.lock().await;
            let mut next = state.split.clone();
            next.weight = weight;
            next.matches = matches.to_vec();
            self.apply(&mut state, next).await?;
            Ok(state.split.weight)
        })
    }

    fn drain(&self, _variant: Variant, timeout: Duration) -> BoxFuture<'_, Result<(), PortError>> {
        // A variant's requests after a change run on the workers of the previous
        // configuration; nginx retires them once those requests finish.
        Box::pin(self.wait_old_workers(timeout))
    }

    fn drain_endpoints<'a>(
        &'a self,
        _endpoints: &'a [SocketAddr],
        timeout: Duration,
    ) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(self.wait_old_workers(timeout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> NginxSpec {
        NginxSpec {
            listen: "127.0.0.1:8080".parse().unwrap(),
            include: "/tmp/x.conf".into(),
            test: vec!["nginx".into(), "-t".into()],
            reload: vec!["nginx".into(), "-s".into(), "reload".into()],
            sticky: Sticky::Header("x-user-id".into()),
            pid: "/run/nginx.pid".into(),
        }
    }

    #[test]
    fn the_file_renders_two_hashes_match_maps_and_no_weight() {
        let split = Split {
            stable: vec!["127.0.0.1:4001".parse().unwrap()],
            canary: vec![],
            weight: Weight::from_basis_points(1250).unwrap(),
            matches: vec![RouteMatch {
                source: MatchSource::Cookie("beta".into()),
                values: vec!["1".into(), "say \"hi\"".into()],
            }],
        };
        let log = "127.0.0.1:5140".parse().unwrap();
        let text = render("check-out", &spec(), &split, 7, log);
        assert!(
            text.contains("split_clients \"$http_x_user_id\" $rampart_check_out_hi {\n    1% 00;"),
            "{text}"
        );
        assert!(
            text.contains("split_clients \"$http_x_user_id~\" $rampart_check_out_lo {"),
            "{text}"
        );
        assert!(text.contains("    1% 98;\n    * 99;\n}"), "{text}");
        assert!(
            text.contains("if (-f \"/tmp/x.conf.weight/current/h$rampart_check_out_hi\")"),
            "{text}"
        );
        assert!(text.contains("upstream rampart_check_out_canary {\n    server 127.0.0.1:9 down;"));
        assert!(text.contains("map $cookie_beta $rampart_check_out_m0 {\n    default \"\";\n    \"\\\\1\" 1;\n    \"\\\\say \\\"hi\\\"\" 1;\n}"), "{text}");
        assert!(text.contains("map \"$rampart_check_out_m0\" $rampart_check_out_variant"));
        assert!(
            text.contains("access_log syslog:server=127.0.0.1:5140,nohostname rampart_check_out;")
        );
        assert!(
            text.contains(
                "'rampart-s check-out $rampart_check_out_variant $status $upstream_header_time $request_time'"
            ),
            "time to response headers, like the embedded proxy, then the total time: {text}"
        );
        assert_eq!(generation_of(&text), Some(7));
        assert_eq!(
            render(
                "check-out",
                &spec(),
                &Split {
                    weight: Weight::FULL,
                    ..split.clone()
                },
                7,
                log
            ),
            text,
            "the weight is not in the file: changing it needs no reload"
        );
    }

    #[test]
    fn the_weight_files_cover_its_basis_points_and_grow_with_it() {
        let at = |bp| weight_files(Weight::from_basis_points(bp).unwrap());
        assert!(at(0).is_empty());
        let eighth = at(1250);
        assert_eq!(eighth.len(), 12 + 50);
        assert_eq!(eighth[11], "h11");
        assert_eq!(eighth[12], "l1200");
        assert_eq!(eighth[61], "l1249");
        assert_eq!(at(10_000).len(), 100);
        // The buckets `100 * hi + lo` a weight sends to the canary are exactly those below
        // it: a user on the canary stays there as the weight grows.
        for bp in [1, 99, 100, 101, 1250, 3333, 9999, 10_000] {
            let buckets: Vec<u32> = at(bp)
                .iter()
                .flat_map(|f| {
                    let n: u32 = f[1..].parse().unwrap();
                    if f.starts_with('h') {
                        n * 100..n * 100 + 100
                    } else {
                        n..n + 1
                    }
                })
                .collect();
            assert_eq!(buckets, (0..u32::from(bp)).collect::<Vec<_>>(), "{bp}");
        }
    }
}
