//! nginx as the traffic router: rampart renders one include file per service, has
//! nginx validate it, reloads, and checks that the new split is the one being served.
//!
//! Owns the rendered file (upstreams, a `split_clients` on the sticky key, match rules
//! as `map`s, the request log sent to rampart, and the service's `server` block), its
//! generation counter, and restoring the previous file when nginx refuses a new one.
//! It must not touch the rest of nginx's configuration.

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
    generation: u64,
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
    let key = match &spec.sticky {
        Sticky::None => "$request_id".to_string(),
        Sticky::ClientIp => "$remote_addr".to_string(),
        Sticky::Header(h) => format!("$http_{}", ident(h)),
        Sticky::Cookie(c) => format!("$cookie_{}", ident(c)),
    };
    let bp = split.weight.basis_points();
    let _ = writeln!(f, "split_clients \"{key}\" $rampart_{id}_split {{");
    match bp {
        0 => f.push_str("    * stable;\n"),
        10_000 => f.push_str("    * canary;\n"),
        _ => {
            let _ = writeln!(f, "    {}.{:02}% canary;", bp / 100, bp % 100);
            f.push_str("    * stable;\n");
        }
    }
    f.push_str("}\n");
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
        "log_format rampart_{id} 'rampart-s {service} $rampart_{id}_variant $status $upstream_header_time';"
    );
    let _ = writeln!(
        f,
        r#"server {{
    listen {listen};
    location = /__rampart/{service} {{
        access_log off;
        default_type text/plain;
        return 200 "generation {generation} weight {weight}\n";
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
        weight = split.weight,
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
    /// A router for `service` writing `spec.include`; nginx sends its request log to
    /// `log_to`.
    pub fn new(spec: NginxSpec, service: &str, log_to: SocketAddr) -> NginxRouter {
        let generation = std::fs::read_to_string(&spec.include)
            .ok()
            .and_then(|t| generation_of(&t))
            .unwrap_or(0);
        NginxRouter {
            spec,
            service: service.to_string(),
            log_to,
            state: Mutex::new(State {
                split: Split::default(),
                generation,
            }),
        }
    }

    /// Writes, tests, reloads and verifies `next`; on any failure the previous file is
    /// put back and nginx keeps (or goes back to) what it served.
    async fn apply(&self, state: &mut State, next: Split) -> Result<(), PortError> {
        let path = Path::new(&self.spec.include);
        let before = std::fs::read_to_string(path).ok();
        let generation = state.generation + 1;
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
        let serving: Vec<u32> = self
            .workers()
            .into_iter()
            .filter(|(_, shutting_down)| !shutting_down)
            .map(|(pid, _)| pid)
            .collect();
        if let Err(e) = run(&self.spec.reload).await {
            let e = restore(format!("nginx did not reload: {e}"));
            // Whatever happened, ask nginx to serve the restored file.
            let _ = run(&self.spec.reload).await;
            return Err(e);
        }
        self.verify(generation, &serving).await?;
        state.split = next;
        state.generation = generation;
        Ok(())
    }

    /// Waits until nginx answers with `generation` on a fresh connection, and every
    /// worker that served before (`old`) has stopped taking connections: from then on
    /// no new request is split the old way.
    async fn verify(&self, generation: u64, old: &[u32]) -> Result<(), PortError> {
        let url = format!("http://{}/__rampart/{}", self.spec.listen, self.service);
        let want = format!("generation {generation} ");
        let deadline = tokio::time::Instant::now() + LOAD_TIMEOUT;
        loop {
            let last = match crate::http::get_text(&url, Duration::from_secs(2)).await {
                Ok((200, body)) if body.starts_with(&want) => {
                    let still: Vec<u32> = self
                        .workers()
                        .into_iter()
                        .filter(|(pid, down)| !down && old.contains(pid))
                        .map(|(pid, _)| pid)
                        .collect();
                    if still.is_empty() {
                        return Ok(());
                    }
                    format!(
                        "worker(s) {still:?} of the previous configuration still accept connections"
                    )
                }
                Ok((status, body)) => format!("{status} {}", body.trim()),
                Err(e) => e.to_string(),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(err(format!(
                    "nginx reloaded but does not serve generation {generation} at {url} after {}s (last answer: {last})",
                    LOAD_TIMEOUT.as_secs()
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

    async fn wait_old_workers(&self, timeout: Duration) -> Result<(), PortError> {
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
    fn the_split_renders_with_two_decimals_and_match_maps() {
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
        assert!(text.contains("split_clients \"$http_x_user_id\" $rampart_check_out_split {\n    12.50% canary;\n    * stable;\n}"), "{text}");
        assert!(text.contains("upstream rampart_check_out_canary {\n    server 127.0.0.1:9 down;"));
        assert!(text.contains("map $cookie_beta $rampart_check_out_m0 {\n    default \"\";\n    \"\\\\1\" 1;\n    \"\\\\say \\\"hi\\\"\" 1;\n}"), "{text}");
        assert!(text.contains("map \"$rampart_check_out_m0\" $rampart_check_out_variant"));
        assert!(
            text.contains("access_log syslog:server=127.0.0.1:5140,nohostname rampart_check_out;")
        );
        assert!(
            text.contains(
                "'rampart-s check-out $rampart_check_out_variant $status $upstream_header_time'"
            ),
            "time to response headers, like the embedded proxy: {text}"
        );
        assert_eq!(generation_of(&text), Some(7));
        let zero = render("s", &spec(), &Split::default(), 1, log);
        assert!(
            zero.contains("split_clients \"$http_x_user_id\" $rampart_s_split {\n    * stable;\n}")
        );
    }
}
