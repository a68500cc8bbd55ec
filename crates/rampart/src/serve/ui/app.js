// rampart dashboard: plain JavaScript, no dependencies, served from the binary.
// It reads the same API as the CLI (signed in by the session cookie) and follows the
// server-sent event stream to refresh what is on screen.
"use strict";

const $ = (sel) => document.querySelector(sel);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
let me = null;

async function api(path, method = "GET", body) {
  const opts = { method, headers: { "X-Rampart-UI": "1" } };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch("/api/v1" + path, opts);
  const data = await r.json().catch(() => ({}));
  if (r.status === 401) { location.href = "/"; throw new Error("signed out"); }
  if (!r.ok) throw new Error((data.error && data.error.message) || ("HTTP " + r.status));
  return data;
}

function age(ms) {
  const s = Math.max(0, Math.floor((Date.now() - ms) / 1000));
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
  return Math.floor(s / 3600) + "h" + String(Math.floor(s % 3600 / 60)).padStart(2, "0") + "m";
}

function pill(text, cls) { return `<span class="pill ${esc(cls || text)}">${esc(text)}</span>`; }

function phaseOf(r) { return r.paused_by ? pill(r.phase + " (paused)", "paused") : pill(r.phase); }

// === the list ===

async function showList() {
  const [services, releases, freeze] = await Promise.all([api("/services"), api("/releases?limit=100"), api("/freeze")]);
  const frozen = freeze.freezes.map((f) => `${f.scope === "*" ? "every service" : esc(f.scope)} frozen by ${esc(f.actor)}: ${esc(f.reason)}`);
  const svcRows = services.services.map((s) => {
    const w = s.window;
    const win = !w ? '<span class="muted">always</span>' : w.open ? pill("open") : `${pill("closed")} opens ${esc(w.opens || "not within 60 days")}`;
    return `<tr><td>${esc(s.service)}</td><td>${s.last ? phaseOf(s.last) : ""}</td><td>${s.last ? s.last.weight + "%" : ""}</td>
      <td>${s.freeze ? pill("frozen") + " " + esc(s.freeze.reason) : '<span class="muted">no</span>'}</td><td>${win}</td></tr>`;
  }).join("");
  const relRows = releases.map((r) => `<tr class="row" data-id="${esc(r.id)}"><td><a href="#/release/${encodeURIComponent(r.id)}">${esc(r.id)}</a></td>
      <td>${esc(r.service)}</td><td>${esc(r.version)}</td><td class="phase">${phaseOf(r)}</td><td class="weight">${r.weight}%</td>
      <td>${r.step ? r.step + "/" + r.steps : "-"}</td><td>${age(r.created_at)}</td></tr>`).join("");
  $("#view").innerHTML = `
    ${frozen.map((f) => `<div class="banner frozen" id="freeze-banner">${f}</div>`).join("")}
    <section><h2>Services</h2><table id="services"><thead><tr><th>Service</th><th>Last release</th><th>Weight</th><th>Freeze</th><th>Release window</th></tr></thead>
      <tbody>${svcRows || '<tr><td colspan="5" class="muted">no releases yet</td></tr>'}</tbody></table></section>
    <section><h2>Releases</h2><table id="releases"><thead><tr><th>Release</th><th>Service</th><th>Version</th><th>Phase</th><th>Weight</th><th>Step</th><th>Age</th></tr></thead>
      <tbody>${relRows || '<tr><td colspan="7" class="muted">no releases yet</td></tr>'}</tbody></table></section>`;
  for (const tr of document.querySelectorAll("tr.row")) tr.onclick = () => { location.hash = "#/release/" + encodeURIComponent(tr.dataset.id); };
}

// === one release ===

// A line chart of `series` ([{name, cls, points: [[x, y|null]]}]) as SVG.
function chart(series, unit, yMaxFloor) {
  const W = 520, H = 160, L = 42, B = 18, T = 8;
  const xs = series.flatMap((s) => s.points.map((p) => p[0]));
  const ys = series.flatMap((s) => s.points.map((p) => p[1]).filter((y) => y !== null));
  if (!xs.length) return '<p class="muted">no intervals yet</p>';
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1);
  const y1 = Math.max(yMaxFloor, ...ys) * 1.1;
  const X = (x) => L + (x - x0) / (x1 - x0) * (W - L - 6);
  const Y = (y) => T + (1 - y / y1) * (H - T - B);
  const lines = series.map((s) => {
    const pts = s.points.filter((p) => p[1] !== null).map((p) => `${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join(" ");
    return `<polyline fill="none" stroke-width="2" stroke="var(--${s.cls})" points="${pts}"/>`;
  }).join("");
  const grid = [0, 0.5, 1].map((f) => `<line x1="${L}" x2="${W}" y1="${Y(y1 / 1.1 * f)}" y2="${Y(y1 / 1.1 * f)}" stroke="#eee"/>
    <text x="2" y="${Y(y1 / 1.1 * f) + 3}">${(y1 / 1.1 * f).toFixed(unit === "%" ? 1 : 0)}${unit}</text>`).join("");
  return `<svg class="chart" viewBox="0 0 ${W} ${H}" preserveAspectRatio="none">${grid}${lines}
    <text x="${L}" y="${H - 4}">${x0.toFixed(0)}s</text><text x="${W - 30}" y="${H - 4}">${x1.toFixed(0)}s</text></svg>`;
}

function stepChart(weights, now) {
  const pts = [];
  for (const w of weights) {
    if (pts.length) pts.push([w.t_s, pts[pts.length - 1][1]]);
    pts.push([w.t_s, w.weight]);
  }
  if (pts.length) pts.push([Math.max(now, pts[pts.length - 1][0]), pts[pts.length - 1][1]]);
  return chart([{ name: "canary", cls: "canary", points: pts }], "%", 100);
}

// What a person may do about an event, the dashboard's way: the button on this page,
// or the command where the page has none.
function instead(i) {
  if (!i) return "";
  const say = {
    approve: () => `Approve it on this page (anyone but ${esc(i.not_by)}).`,
    rollback: () => `Abort and roll back switches to the previous version at once.`,
    force_rollback: () => `Roll forward with a fixed version, or repair the data, then move ${esc(i.service)}'s users back to the previous version: <code>rampart stop -f POLICY --canary --force --reason ...</code>`,
    hotfix: () => `Only a hotfix may run now: <code>rampart run --hotfix REASON</code>`,
  }[i.action];
  return say ? ` <span class="instead">${say()}</span>` : "";
}

function buttons(r) {
  if (r.outcome || !me) return "";
  const approver = me.role === "approver" || me.role === "admin";
  const deployer = me.role === "deployer" || me.role === "admin";
  const mine = me.name === r.initiator;
  const b = [];
  if (approver && r.phase === "awaiting_approval" && !mine) b.push('<button class="primary" id="approve">Approve</button>');
  if (approver && (r.phase === "progressing" || r.phase === "awaiting_approval") && !mine) b.push('<button id="promote">Promote now</button>');
  if (deployer && !r.paused_by && r.phase !== "rolling_back") b.push('<button id="pause">Pause</button>');
  if (deployer && r.paused_by) b.push('<button id="resume">Resume</button>');
  if (deployer && r.phase !== "rolling_back") b.push('<button class="danger" id="abort">Abort and roll back</button>');
  if (!b.length) return mine && approver ? '<p class="muted">You started this release: someone else must approve it.</p>' : "";
  return `<div class="actions"><input id="reason" placeholder="reason (recorded in the audit log)">${b.join("")}</div>`;
}

async function showRelease(id) {
  const [r, ev, m] = await Promise.all([
    api("/releases/" + encodeURIComponent(id)),
    api("/releases/" + encodeURIComponent(id) + "/events"),
    api("/releases/" + encodeURIComponent(id) + "/metrics"),
  ]);
  const now = (r.updated_at - r.created_at) / 1000;
  const iv = m.intervals;
  const errPts = (v) => iv.map((p) => [p.t_s, p[v].error_rate === null ? null : p[v].error_rate * 100]);
  const latPts = (v) => iv.map((p) => [p.t_s, p[v].p99_ms]);
  const reason = (input) => (input && input.value.trim()) || "from the dashboard";
  $("#view").innerHTML = `
    <p><a href="#/">&larr; all releases</a></p>
    <div id="message"></div>
    ${r.awaiting_approval ? `<div class="banner ask" id="ask">${esc(r.awaiting_approval)}${instead(r.instead)}</div>` : ""}
    <section><h2>${esc(r.service)} ${esc(r.version)} <span class="muted">${esc(r.id)}</span></h2>
      <dl class="facts">
        <dt>Phase</dt><dd id="phase">${esc(r.phase)}</dd>
        <dt>Canary weight</dt><dd id="weight">${r.weight}%</dd>
        <dt>Step</dt><dd>${r.step ? r.step + " of " + r.steps : "-"}</dd>
        <dt>Stable</dt><dd>${esc(r.stable || "none")}</dd>
        <dt>Started by</dt><dd>${esc(r.initiator)}, ${age(r.created_at)} ago</dd>
        ${r.paused_by ? `<dt>Paused by</dt><dd>${esc(r.paused_by)}</dd>` : ""}
        <dt>Last verdict</dt><dd>${r.last_verdict ? pill(r.last_verdict) : "-"} <span class="muted">${r.intervals} interval(s)</span></dd>
        <dt>Outcome</dt><dd id="outcome">${r.outcome ? pill(r.outcome) : "-"}</dd>
        ${r.decision ? `<dt>Decision</dt><dd>${esc(r.decision.kind)} by ${esc(r.decision.by)}: ${esc(r.decision.reason)}</dd>` : ""}
      </dl>
      ${buttons(r)}
    </section>
    <div class="grid">
      <section><h2>Canary weight</h2>${stepChart(m.weights, now)}</section>
      <section><h2>Error rate</h2>${chart([{ name: "stable", cls: "stable", points: errPts("stable") }, { name: "canary", cls: "canary", points: errPts("canary") }], "%", 1)}
        <div class="legend"><span class="stable">&#9632; stable</span> <span class="canary">&#9632; canary</span></div></section>
      <section><h2>Latency p99</h2>${chart([{ name: "stable", cls: "stable", points: latPts("stable") }, { name: "canary", cls: "canary", points: latPts("canary") }], "ms", 10)}
        <div class="legend"><span class="stable">&#9632; stable</span> <span class="canary">&#9632; canary</span></div></section>
      <section><h2>Judged on</h2><table id="judged"><thead><tr><th>Metric</th><th>Better</th><th>Judge</th><th>Fails when</th></tr></thead><tbody>
        ${(r.metrics || []).map((x) => `<tr><td>${esc(x.name)}</td><td>${x.direction === "higher_is_better" ? "higher" : "lower"}</td><td>${esc(x.judge)}</td><td>${esc(x.fails_when)}</td></tr>`).join("")}
      </tbody></table></section>
      <section><h2>Verdict of each interval</h2><div class="verdicts" id="verdicts">${iv.map((p) => `<span class="${esc(p.verdict)}" title="${p.t_s.toFixed(0)}s: ${esc(p.verdict)}"></span>`).join("")}</div>
        <p class="legend">green pass, red fail, amber inconclusive or no data</p></section>
    </div>
    <section><h2>Timeline</h2><table id="timeline"><thead><tr><th>t</th><th>Event</th><th>Weight</th><th>What</th><th>Who</th></tr></thead><tbody>
      ${ev.events.map((e) => `<tr><td>${e.t_s.toFixed(1)}s</td><td>${esc(e.kind)}</td><td>${e.weight}%</td><td>${esc(e.message)}${instead(e.instead)}</td><td>${esc(e.actor)}</td></tr>`).join("")}
    </tbody></table></section>`;
  for (const what of ["approve", "promote", "pause", "resume", "abort"]) {
    const b = document.getElementById(what);
    if (!b) continue;
    b.onclick = async () => {
      b.disabled = true;
      try {
        await api(`/releases/${encodeURIComponent(id)}/${what}`, "POST", { reason: reason($("#reason")) });
        $("#message").innerHTML = `<div class="banner ask">${esc(what)} requested; the release applies it within a second</div>`;
      } catch (e) {
        $("#message").innerHTML = `<div class="banner error">${esc(e.message)}</div>`;
        b.disabled = false;
      }
    };
  }
}

// === routing and live updates ===

let pending = null;
async function render() {
  const m = location.hash.match(/^#\/release\/(.+)$/);
  try {
    if (m) await showRelease(decodeURIComponent(m[1]));
    else await showList();
  } catch (e) {
    $("#view").innerHTML = `<div class="banner error">${esc(e.message)}</div>`;
  }
}
function soon() {
  // Many entries arrive together: one refresh for a burst, keeping a typed reason.
  if (pending) return;
  pending = setTimeout(async () => {
    pending = null;
    const typed = $("#reason") && $("#reason").value;
    const focused = document.activeElement && document.activeElement.id === "reason";
    await render();
    if (typed && $("#reason")) $("#reason").value = typed;
    if (focused && $("#reason")) $("#reason").focus();
  }, 300);
}

async function start() {
  $("#logout").onclick = async () => {
    await fetch("/ui/logout", { method: "POST", headers: { "X-Rampart-UI": "1" } });
    location.href = "/";
  };
  me = await api("/whoami");
  $("#who").textContent = `${me.name} (${me.role})`;
  window.addEventListener("hashchange", render);
  await render();
  const stream = new EventSource("/api/v1/stream");
  stream.addEventListener("entry", soon);
  stream.addEventListener("lagged", soon);
  // Ages tick and a dropped stream reconnects; a slow refresh keeps the page true.
  setInterval(soon, 5000);
}

start();
