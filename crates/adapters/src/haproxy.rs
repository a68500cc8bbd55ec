//! HAProxy as the traffic router, through its runtime API: no reload, ever.
//!
//! Owns mapping the versions' endpoints onto the backend's pre-declared server slots
//! (`server-template stable 1-N ...` and `server-template canary 1-N ...`), turning a
//! canary share into per-server weights (0 to 256), reading the weights back, and
//! draining slots by their live session counts. It must not write HAProxy's
//! configuration: the slots and the request log are the operator's, once.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use rampart_core::policy::RouteMatch;
use rampart_core::ports::{BoxFuture, PortError, TrafficRouter};
use rampart_core::{Variant, Weight};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::Mutex;

/// HAProxy's largest server weight.
const MAX_WEIGHT: u64 = 256;

/// One runtime-API command's time limit.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
struct State {
    /// Slot name -> the endpoint it serves, per variant.
    slots: HashMap<Variant, BTreeMap<String, Option<SocketAddr>>>,
    /// Slots taken out of rotation by the last change, with the endpoint they served.
    retired: Vec<(String, SocketAddr)>,
    weight: Weight,
    discovered: bool,
    /// Take the split in force as this router's weight when it first reads the slots.
    keep_split: bool,
}

/// Sets server weights on a running HAProxy.
#[derive(Debug)]
pub struct HaproxyRouter {
    socket: PathBuf,
    backend: String,
    state: Mutex<State>,
}

fn err(msg: impl Into<String>) -> PortError {
    PortError::new(Into::<String>::into(msg))
}

/// Runtime-API answers that mean the command was refused.
fn refused(answer: &str) -> bool {
    let a = answer.trim_start();
    [
        "No such",
        "Invalid",
        "Unknown",
        "Require",
        "Can't",
        "Cannot",
        "Permission denied",
        "Missing",
        "'set server",
    ]
    .iter()
    .any(|p| a.starts_with(p))
}

/// Per-server weights for a share (in basis points) spread over `servers` servers.
pub fn server_weight(share_bp: u16, servers: usize) -> u64 {
    if servers == 0 || share_bp == 0 {
        return 0;
    }
    let total = u64::from(share_bp) * MAX_WEIGHT;
    let per = (total + 5_000 * servers as u64) / (10_000 * servers as u64);
    per.clamp(1, MAX_WEIGHT)
}

impl HaproxyRouter {
    /// A router for `backend` on the runtime API at `socket`, for a new release: its
    /// first change of backends weighs the canary at 0 %.
    pub fn new(socket: impl Into<PathBuf>, backend: &str) -> HaproxyRouter {
        HaproxyRouter {
            socket: socket.into(),
            backend: backend.to_string(),
            state: Mutex::new(State::default()),
        }
    }

    /// The same router taking over the split HAProxy has in force (a resumed release,
    /// `rampart stop --canary`): it keeps that weight until asked for another.
    pub fn keeping_the_split(self) -> HaproxyRouter {
        let mut state = self.state.into_inner();
        state.keep_split = true;
        HaproxyRouter {
            state: Mutex::new(state),
            ..self
        }
    }

    /// Sends one command and returns the answer.
    pub async fn command(&self, cmd: &str) -> Result<String, PortError> {
        let exchange = async {
            let mut s = UnixStream::connect(&self.socket).await.map_err(|e| {
                err(format!(
                    "HAProxy runtime API at {}: {e}",
                    self.socket.display()
                ))
            })?;
            s.write_all(format!("{cmd}\n").as_bytes())
                .await
                .map_err(|e| err(format!("HAProxy runtime API: {e}")))?;
            let mut out = String::new();
            s.read_to_string(&mut out)
                .await
                .map_err(|e| err(format!("HAProxy runtime API: {e}")))?;
            Ok::<_, PortError>(out)
        };
        let out = tokio::time::timeout(COMMAND_TIMEOUT, exchange)
            .await
            .map_err(|_| err(format!("HAProxy did not answer `{cmd}` within 5s")))??;
        if refused(&out) {
            return Err(err(format!("HAProxy refused `{cmd}`: {}", out.trim())));
        }
        Ok(out)
    }

    /// Learns the backend's `stable<N>` and `canary<N>` slots, once.
    async fn discover(&self, state: &mut State) -> Result<(), PortError> {
        if state.discovered {
            return Ok(());
        }
        let out = self
            .command(&format!("show servers state {}", self.backend))
            .await?;
        // The weight in force, from the slots in service (zero when none serves).
        let mut weighed = [0u64; 2];
        for slot in server_slots(&out) {
            let variant = match slot.name.trim_end_matches(|c: char| c.is_ascii_digit()) {
                "stable" => Variant::Stable,
                "canary" => Variant::Canary,
                _ => continue,
            };
            if slot.endpoint.is_some() {
                weighed[usize::from(variant == Variant::Canary)] += slot.weight;
            }
            // A slot in service keeps the address it serves: a router started after
            // another one set it (a resumed release, `rampart stop --canary`) must
            // retire it, and weigh it, like any other.
            state
                .slots
                .entry(variant)
                .or_default()
                .insert(slot.name, slot.endpoint);
        }
        // Taking over a split (a resumed release, `rampart stop --canary`), it stays in
        // force until this router is asked for another: weighed at 0 % at the first
        // change, the canary's users (at 100 %, everyone) would go back for a moment.
        // A new release starts from 0 %, as it thinks it does.
        let total = weighed[0] + weighed[1];
        if let Some(bp) = (weighed[1] * 10_000 + total / 2)
            .checked_div(total)
            .filter(|_| state.keep_split)
        {
            state.weight = u16::try_from(bp)
                .ok()
                .and_then(Weight::from_basis_points)
                .unwrap_or(Weight::FULL);
        }
        for v in [Variant::Stable, Variant::Canary] {
            if state.slots.get(&v).is_none_or(BTreeMap::is_empty) {
                return Err(err(format!(
                    "backend `{}` has no `{}<N>` servers; declare them with `server-template {} 1-4 127.0.0.1:9 disabled`",
                    self.backend,
                    v.as_str(),
                    v.as_str()
                )));
            }
        }
        state.discovered = true;
        Ok(())
    }

    fn set_server(&self, slot: &str, what: &str) -> String {
        format!("set server {}/{slot} {what}", self.backend)
    }

    /// Puts the current weight in force on every slot in service, and reads it back.
    /// Servers that keep some traffic get their weight before any is set to 0, so there
    /// is never a moment with every server at 0 (which HAProxy answers with 503s).
    async fn apply_weights(&self, state: &State) -> Result<(), PortError> {
        let shares = [
            (Variant::Stable, 10_000 - state.weight.basis_points()),
            (Variant::Canary, state.weight.basis_points()),
        ];
        let mut plan: Vec<(String, u64)> = Vec::new();
        for (variant, share) in shares {
            let Some(slots) = state.slots.get(&variant) else {
                continue;
            };
            let live: Vec<&String> = slots
                .iter()
                .filter(|(_, ep)| ep.is_some())
                .map(|(s, _)| s)
                .collect();
            let w = server_weight(share, live.len());
            plan.extend(live.into_iter().map(|slot| (slot.clone(), w)));
        }
        plan.sort_by_key(|(_, w)| *w == 0);
        for (slot, w) in plan {
            self.command(&self.set_server(&slot, &format!("weight {w}")))
                .await?;
            let answer = self
                .command(&format!("get weight {}/{slot}", self.backend))
                .await?;
            let got = answer.split_whitespace().next().unwrap_or("");
            if got != w.to_string() {
                return Err(err(format!(
                    "{}/{slot} reports weight `{}` after setting {w}",
                    self.backend,
                    answer.trim()
                )));
            }
        }
        Ok(())
    }

    /// Current sessions on these slots, from `show stat`.
    async fn sessions(&self, slots: &[String]) -> Result<u64, PortError> {
        let out = self.command("show stat").await?;
        let mut lines = out.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or("")
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let col = |name: &str| header.iter().position(|h| *h == name);
        let (Some(px), Some(sv), Some(scur)) = (col("pxname"), col("svname"), col("scur")) else {
            return Err(err(
                "HAProxy's `show stat` has no pxname, svname or scur column",
            ));
        };
        let mut total = 0;
        for line in lines {
            let f: Vec<&str> = line.split(',').collect();
            if f.get(px) == Some(&self.backend.as_str())
                && f.get(sv).is_some_and(|s| slots.iter().any(|x| x == s))
            {
                total += f.get(scur).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            }
        }
        Ok(total)
    }

    async fn wait_idle(&self, slots: Vec<String>, timeout: Duration) -> Result<(), PortError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let n = self.sessions(&slots).await?;
            if n == 0 {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(err(format!(
                    "{n} session(s) still open on {} after {}ms",
                    slots.join(", "),
                    timeout.as_millis()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// One server `show servers state` lists.
#[derive(Debug, PartialEq, Eq)]
struct Slot {
    name: String,
    /// Its address, when it is in service (not in maintenance).
    endpoint: Option<SocketAddr>,
    /// Its weight as set (`srv_uweight`).
    weight: u64,
}

/// The servers `show servers state` lists. Columns are found by the header's names.
fn server_slots(out: &str) -> Vec<Slot> {
    let header: Vec<&str> = out
        .lines()
        .find_map(|l| l.strip_prefix("# be_id"))
        .map(|rest| {
            std::iter::once("be_id")
                .chain(rest.split_whitespace())
                .collect()
        })
        .unwrap_or_default();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (name_at, addr_at, admin_at, weight_at, port_at) = (
        col("srv_name").unwrap_or(3),
        col("srv_addr").unwrap_or(4),
        col("srv_admin_state").unwrap_or(6),
        col("srv_uweight").unwrap_or(7),
        col("srv_port").unwrap_or(18),
    );
    // Forced, inherited and resolution maintenance. Not 0x04 (configured): HAProxy
    // keeps it on a server declared `disabled` after `state ready` put it in service;
    // nor 0x40, which says an FQDN was set over the runtime API.
    const MAINT: u32 = 0x01 | 0x02 | 0x20;
    out.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let name = f.get(name_at)?.to_string();
            let in_service = f
                .get(admin_at)
                .and_then(|a| a.parse::<u32>().ok())
                .is_some_and(|a| a & MAINT == 0);
            let endpoint = in_service
                .then(|| {
                    let ip: std::net::IpAddr = f.get(addr_at)?.parse().ok()?;
                    let port: u16 = f.get(port_at)?.parse().ok()?;
                    Some(SocketAddr::new(ip, port))
                })
                .flatten();
            let weight = f.get(weight_at).and_then(|w| w.parse().ok()).unwrap_or(0);
            Some(Slot {
                name,
                endpoint,
                weight,
            })
        })
        .collect()
}

impl TrafficRouter for HaproxyRouter {
    fn set_backends<'a>(
        &'a self,
        variant: Variant,
        endpoints: &'a [SocketAddr],
    ) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(async move {
            let mut state = self.state.lock().await;
            self.discover(&mut state).await?;
            let slots = state.slots.entry(variant).or_default();
            if endpoints.len() > slots.len() {
                return Err(err(format!(
                    "{} endpoint(s) for {} but backend `{}` has {} `{}<N>` slot(s); declare more with server-template",
                    endpoints.len(),
                    variant.as_str(),
                    self.backend,
                    slots.len(),
                    variant.as_str()
                )));
            }
            // Endpoints keep their slots; new ones take free slots; gone ones retire.
            let mut retired = Vec::new();
            for (slot, ep) in slots.iter_mut() {
                if let Some(addr) = *ep
                    && !endpoints.contains(&addr)
                {
                    retired.push((slot.clone(), addr));
                    *ep = None;
                }
            }
            let mut added = Vec::new();
            for addr in endpoints {
                if slots.values().any(|e| *e == Some(*addr)) {
                    continue;
                }
                // A slot retired just now still finishes its open requests: a new
                // endpoint takes another free slot if there is one; reused, the slot
                // is no longer retired (it would end in maintenance, serving nothing).
                let was_retired = |slot: &String| retired.iter().any(|(s, _)| s == slot);
                let free = slots
                    .iter()
                    .filter(|(_, e)| e.is_none())
                    .map(|(s, _)| s.clone())
                    .min_by_key(|s| was_retired(s));
                if let Some(slot) = free {
                    retired.retain(|(s, _)| *s != slot);
                    slots.insert(slot.clone(), Some(*addr));
                    added.push((slot, *addr));
                }
            }
            // Addresses while still in maintenance, then the weights, then in service:
            // a new slot never takes traffic at a stale weight.
            for (slot, addr) in &added {
                self.command(
                    &self.set_server(slot, &format!("addr {} port {}", addr.ip(), addr.port())),
                )
                .await?;
            }
            self.apply_weights(&state).await?;
            for (slot, _) in &added {
                self.command(&self.set_server(slot, "state ready")).await?;
            }
            for (slot, _) in &retired {
                // In maintenance a server takes no new requests; open ones finish.
                self.command(&self.set_server(slot, "state maint")).await?;
            }
            state.retired = retired;
            Ok(())
        })
    }

    fn set_weight<'a>(
        &'a self,
        weight: Weight,
        matches: &'a [RouteMatch],
    ) -> BoxFuture<'a, Result<Weight, PortError>> {
        Box::pin(async move {
            if !matches.is_empty() {
                return Err(err(
                    "HAProxy match rules need a reload; rampart sets weights only",
                ));
            }
            let mut state = self.state.lock().await;
            self.discover(&mut state).await?;
            let before = state.weight;
            state.weight = weight;
            if let Err(e) = self.apply_weights(&state).await {
                state.weight = before;
                return Err(e);
            }
            Ok(weight)
        })
    }

    fn drain(&self, variant: Variant, timeout: Duration) -> BoxFuture<'_, Result<(), PortError>> {
        Box::pin(async move {
            let slots: Vec<String> = {
                let state = self.state.lock().await;
                state
                    .slots
                    .get(&variant)
                    .map(|s| s.keys().cloned().collect())
                    .unwrap_or_default()
            };
            self.wait_idle(slots, timeout).await
        })
    }

    fn drain_endpoints<'a>(
        &'a self,
        endpoints: &'a [SocketAddr],
        timeout: Duration,
    ) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(async move {
            let slots: Vec<String> = {
                let state = self.state.lock().await;
                state
                    .retired
                    .iter()
                    .filter(|(_, a)| endpoints.contains(a))
                    .map(|(s, _)| s.clone())
                    .collect()
            };
            if slots.is_empty() {
                return Ok(());
            }
            self.wait_idle(slots, timeout).await
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn slots_in_service_keep_their_address_as_haproxy_reports_it() {
        // `show servers state shop` from HAProxy 2.6, after `set server shop/stable1
        // addr 127.0.0.1 port 8081` and `state ready` on a `server-template ...
        // disabled` backend.
        let out = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n3 shop 1 stable1 127.0.0.1 2 4 1 1 0 1 0 0 8 0 0 0 - 8081 - 0 0 - - 0\n3 shop 2 stable2 127.0.0.1 0 5 1 1 1 1 0 0 8 0 0 0 - 9 - 0 0 - - 0\n3 shop 3 canary1 127.0.0.1 0 1 1 1 1 1 0 0 8 0 0 0 - 8082 - 0 0 - - 0\n";
        let slot = |name: &str, endpoint: Option<&str>, weight| super::Slot {
            name: name.into(),
            endpoint: endpoint.map(|e| e.parse().unwrap()),
            weight,
        };
        assert_eq!(
            super::server_slots(out),
            [
                slot("stable1", Some("127.0.0.1:8081"), 1),
                slot("stable2", None, 1),
                slot("canary1", None, 1),
            ]
        );
    }

    use super::*;

    #[test]
    fn shares_become_server_weights() {
        assert_eq!(server_weight(8000, 1), 205);
        assert_eq!(server_weight(2000, 1), 51);
        assert_eq!(server_weight(10_000, 2), 128);
        assert_eq!(server_weight(10, 1), 1, "a share never rounds to nothing");
        assert_eq!(server_weight(0, 3), 0);
        assert_eq!(server_weight(5000, 0), 0);
    }

    #[test]
    fn refusals_are_recognised() {
        assert!(refused("No such server.\n"));
        assert!(refused("Invalid server state.\n"));
        assert!(!refused("\n"));
        assert!(!refused(
            "IP changed from '127.0.0.1' to '127.0.0.1', port changed from '9' to '4000' by 'stats socket command'\n"
        ));
    }
}
