// Cleave console: plain JavaScript over the admin API (/api/v1), no build step.
// The API enforces every role; this script only hides what the role cannot use.
"use strict";

const state = { me: null, csrf: null, timer: null };
const ROLES = ["viewer", "operator", "admin"];
const can = (role) => state.me && ROLES.indexOf(state.me.role) >= ROLES.indexOf(role);

// ---- DOM helpers (text only: nothing from the API is parsed as HTML) ----
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "style") el.style.cssText = v; // CSSOM: allowed by the CSP, unlike style attributes
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
const $ = (sel) => document.querySelector(sel);
function show(...nodes) {
  const main = $("#main");
  main.replaceChildren(...nodes.flat().filter((n) => n !== null && n !== undefined && n !== false));
}
function flash(text, error) {
  const f = $("#flash");
  f.textContent = text;
  f.className = error ? "error" : "";
  f.hidden = false;
  clearTimeout(flash.t);
  flash.t = setTimeout(() => (f.hidden = true), error ? 10000 : 5000);
}

// ---- API ----
class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}
async function api(method, path, body) {
  const opts = { method, headers: {}, credentials: "same-origin" };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  if (method !== "GET" && state.csrf) opts.headers["X-Cleave-CSRF"] = state.csrf;
  const r = await fetch("/api/v1" + path, opts);
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = text; }
  if (r.status === 401 && path !== "/login") {
    state.me = null;
    location.hash = "#/login";
    throw new ApiError(401, "please log in");
  }
  if (!r.ok) throw new ApiError(r.status, (data && data.error) || r.statusText);
  return data;
}
// Runs an action, reports its outcome, and re-renders the page.
async function act(what, fn) {
  try {
    await fn();
    flash(what);
  } catch (e) {
    flash(`${e.message}`, true);
  }
  route();
}

// ---- formatting ----
function bytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${v.toFixed(v < 10 && i ? 1 : 0)} ${units[i]}`;
}
function parseSize(s) {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)\s*$/i.exec(s);
  if (!m) throw new Error(`size ${JSON.stringify(s)}: use e.g. 64MiB or 10GiB`);
  const pow = "_kmgtp".indexOf(m[2].toLowerCase() || "_");
  return Math.round(parseFloat(m[1]) * Math.pow(1024, Math.max(pow, 0)));
}
function ago(ms) {
  if (!ms) return "never";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  return new Date(ms).toLocaleString();
}
const badge = (s) => h("span", { class: `badge ${s}` }, s);
const healthOf = (v) => (v.health && v.health.state) || "unknown";
// A volume's mirror in a few words: this side's role, the state (with a resync's progress) and
// the lag; nothing for a volume without one.
function mirrorCell(m) {
  if (!m) return "";
  const role = m.role === "primary" ? "primary" : "mirror";
  const pct = m.resync_total ? Math.floor((100 * Math.min(m.resync_done, m.resync_total)) / m.resync_total) : 0;
  const state = m.state === "resyncing" && m.resync_total ? `resyncing ${pct}%` : m.state;
  return h("span", { title: `${m.mode} mirror, peer ${m.peer}${m.detail ? `: ${m.detail}` : ""}` },
    `${role} `, h("span", { class: `badge ${m.state}` }, state),
    h("div", { class: "muted" }, `lag ${bytes(m.lag_bytes)}, ${m.lag_changes} changes`));
}
function table(id, headers, rows) {
  return h("table", { id },
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", { class: x.endsWith(" ") ? "num" : null }, x.trim())))),
    h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: headers.length, class: "muted" }, "none"))));
}
function meter(used, total) {
  const pct = total ? Math.round((100 * used) / total) : 0;
  return h("div", { class: "meter", title: `${pct}% used` }, h("div", { style: `width:${pct}%` }));
}

// ---- confirmation for anything that destroys data ----
function confirmDestroy(text, word) {
  return new Promise((resolve) => {
    const box = $("#confirm");
    const input = $("#confirm-input");
    const ok = $("#confirm-ok");
    $("#confirm-text").textContent = text;
    $("#confirm-word").textContent = word;
    input.value = "";
    ok.disabled = true;
    box.hidden = false;
    input.focus();
    const done = (answer) => {
      box.hidden = true;
      input.oninput = ok.onclick = $("#confirm-cancel").onclick = null;
      resolve(answer);
    };
    input.oninput = () => (ok.disabled = input.value !== word);
    ok.onclick = () => done(true);
    $("#confirm-cancel").onclick = () => done(false);
  });
}

// ---- live charts from /metrics (the same counters Prometheus scrapes) ----
// Per volume: bytes read and written, and the sums and counts of the latency histograms.
const SERIES = {
  cleave_volume_read_bytes_total: "rb", cleave_volume_write_bytes_total: "wb",
  cleave_volume_read_latency_seconds_sum: "rs", cleave_volume_read_latency_seconds_count: "rc",
  cleave_volume_write_latency_seconds_sum: "ws", cleave_volume_write_latency_seconds_count: "wc",
};
const metrics = { samples: [], timer: null, every: 2000, keep: 60 };
// The Prometheus text format: `name{labels} value` lines; only the series above are kept.
function parseMetrics(text) {
  const vols = {};
  for (const line of text.split("\n")) {
    const m = /^([a-z_]+)\{([^}]*)\} (\S+)$/.exec(line);
    if (!m || !SERIES[m[1]]) continue;
    const v = /(?:^|,)volume="((?:[^"\\]|\\.)*)"/.exec(m[2]);
    if (!v) continue;
    const name = v[1].replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
    (vols[name] = vols[name] || {})[SERIES[m[1]]] = parseFloat(m[3]);
  }
  return vols;
}
async function pollMetrics() {
  if (document.body.dataset.page !== "dashboard" || !state.me) return;
  try {
    const r = await fetch("/metrics", { credentials: "same-origin" });
    if (!r.ok) return;
    metrics.samples.push({ t: Date.now() / 1000, vols: parseMetrics(await r.text()) });
    if (metrics.samples.length > metrics.keep) metrics.samples.shift();
    drawCharts();
  } catch (_) { /* the next poll tries again */ }
}
function startMetrics() {
  if (!metrics.timer) metrics.timer = setInterval(pollMetrics, metrics.every);
  if (!metrics.samples.length) setTimeout(pollMetrics, 0); // once the page is marked as the dashboard
}
// Rates between consecutive samples: MiB/s read and written, mean latency (ms) of the
// reads and writes that finished in the interval.
function rates(name) {
  const out = [];
  for (let i = 1; i < metrics.samples.length; i++) {
    const a = metrics.samples[i - 1], b = metrics.samples[i];
    const x = a.vols[name], y = b.vols[name];
    if (!x || !y) continue;
    const dt = b.t - a.t || 1;
    const d = (k) => Math.max(0, (y[k] || 0) - (x[k] || 0));
    const mean = (s, c) => (d(c) ? (1000 * d(s)) / d(c) : null);
    out.push({ t: b.t, read: d("rb") / dt / 1048576, write: d("wb") / dt / 1048576, rlat: mean("rs", "rc"), wlat: mean("ws", "wc") });
  }
  return out;
}
const COLORS = { read: "#2457c5", write: "#d9730d" };
// A small line chart: one line per key, the time axis the last `keep` polls.
function lineChart(canvas, points, keys, unit) {
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height, pad = { l: 44, r: 8, t: 8, b: 16 };
  ctx.clearRect(0, 0, W, H);
  const vals = points.flatMap((p) => keys.map((k) => p[k])).filter((v) => v !== null);
  const max = Math.max(...vals, unit === "ms" ? 1 : 0.1) * 1.15;
  // The time axis: what has been collected, at least 30 s, at most the last `keep` polls.
  const now = Date.now() / 1000;
  const first = metrics.samples.length ? metrics.samples[0].t : now;
  const span = Math.min((metrics.keep * metrics.every) / 1000, Math.max(30, now - first));
  const X = (t) => pad.l + ((W - pad.l - pad.r) * (t - (now - span))) / span;
  const Y = (v) => H - pad.b - ((H - pad.t - pad.b) * v) / max;
  ctx.strokeStyle = "#d8dde5";
  ctx.fillStyle = "#5b6574";
  ctx.font = "10px system-ui, sans-serif";
  for (const f of [0, 0.5, 1]) {
    const y = Y(max * f / 1.15);
    ctx.beginPath(); ctx.moveTo(pad.l, y); ctx.lineTo(W - pad.r, y); ctx.stroke();
    ctx.fillText(`${(max * f / 1.15).toFixed(max < 10 ? 1 : 0)} ${unit}`, 2, y + 3);
  }
  ctx.fillText(span >= 90 ? `${Math.round(span / 60)} min ago` : `${Math.round(span)} s ago`, pad.l, H - 3);
  ctx.fillText("now", W - pad.r - 20, H - 3);
  for (const k of keys) {
    ctx.strokeStyle = COLORS[k.startsWith("r") ? "read" : "write"];
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    let pen = false;
    for (const p of points) {
      if (p[k] === null) { pen = false; continue; }
      if (pen) ctx.lineTo(X(p.t), Y(p[k])); else ctx.moveTo(X(p.t), Y(p[k]));
      pen = true;
    }
    ctx.stroke();
  }
}
function drawCharts() {
  for (const box of document.querySelectorAll("#charts [data-chart-volume]")) {
    const name = box.dataset.chartVolume;
    const r = rates(name);
    lineChart(box.querySelector("canvas.throughput"), r, ["read", "write"], "MiB/s");
    lineChart(box.querySelector("canvas.latency"), r, ["rlat", "wlat"], "ms");
    const last = r[r.length - 1];
    box.dataset.points = r.length;
    box.querySelector(".now").textContent = last
      ? `now: read ${last.read.toFixed(1)} MiB/s, write ${last.write.toFixed(1)} MiB/s` +
        (last.wlat !== null ? `, write ${last.wlat.toFixed(1)} ms` : "") + (last.rlat !== null ? `, read ${last.rlat.toFixed(1)} ms` : "")
      : "collecting…";
  }
}
function chartsFor(volumes) {
  const legend = () => h("span", { class: "legend" }, h("span", { class: "key read" }, "read"), " ", h("span", { class: "key write" }, "write"));
  return h("div", { id: "charts" }, volumes.filter((v) => !v.open_error).map((v) => h("div", { class: "chart card", dataset: { chartVolume: v.name } },
    h("div", { class: "label" }, `Volume ${v.name} `, legend()),
    h("div", { class: "pair" },
      h("figure", {}, h("canvas", { class: "throughput", width: 250, height: 100 }), h("figcaption", {}, "Throughput")),
      h("figure", {}, h("canvas", { class: "latency", width: 250, height: 100 }), h("figcaption", {}, "Mean latency"))),
    h("div", { class: "muted now" }, "collecting…"))));
}

// Health changes of one volume, from the events the gateway records.
function healthHistory(name, events) {
  const mine = events.filter((e) => e.kind.startsWith("volume_") && e.detail.startsWith(`${name}:`));
  const st = (k) => k.replace(/^volume_/, "");
  return table("health-history", ["When", "State", "Detail"], mine.slice(-20).reverse().map((e) => h("tr", {},
    h("td", {}, ago(e.time_unix_ms)), h("td", {}, badge(st(e.kind))), h("td", {}, e.detail.slice(name.length + 1).trim()))));
}

// ---- pages ----
function loginPage() {
  $("#top").hidden = true;
  $("#alerts").hidden = true;
  const err = h("p", { class: "error", id: "login-error" });
  const name = h("input", { id: "login-name", name: "username", autocomplete: "username", required: true });
  const pass = h("input", { id: "login-password", type: "password", autocomplete: "current-password", required: true });
  const form = h("form", { class: "login", id: "login-form" },
    h("h1", {}, "Cleave"),
    h("label", {}, "User", name),
    h("label", {}, "Password", pass),
    err,
    h("button", { id: "login-submit", class: "primary", type: "submit" }, "Log in"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const me = await api("POST", "/login", { name: name.value, password: pass.value });
      state.me = me;
      state.csrf = me.csrf;
      location.hash = "#/";
    } catch (e) {
      err.textContent = e.message;
    }
  });
  show(form);
  name.focus();
}

async function dashboard() {
  const [nodes, volumes, events, tasks] = await Promise.all([
    api("GET", "/nodes"), api("GET", "/volumes"), api("GET", "/events"), api("GET", "/tasks"),
  ]);
  const up = nodes.filter((n) => n.status === "up");
  const capacity = up.reduce((a, n) => a + n.capacity_bytes, 0);
  const free = up.reduce((a, n) => a + n.free_bytes, 0);
  const health = {};
  for (const v of volumes) health[healthOf(v)] = (health[healthOf(v)] || 0) + 1;
  const card = (id, label, value, extra) =>
    h("div", { class: "card", id }, h("div", { class: "label" }, label), h("div", { class: "value" }, value), extra);
  show(
    h("h1", {}, "Dashboard"),
    h("div", { class: "cards" },
      card("card-capacity", "Pool capacity", bytes(capacity), h("div", {}, meter(capacity - free, capacity), h("span", { class: "muted" }, `${bytes(free)} free`))),
      card("card-nodes", "Nodes", `${up.length} up`, h("span", { class: nodes.length - up.length ? "badge down" : "muted" }, `${nodes.length - up.length} down`)),
      card("card-volumes", "Volumes", `${volumes.length}`, h("div", {}, Object.entries(health).map(([k, n]) => h("span", {}, badge(k), ` ${n} `)))),
      card("card-tasks", "Tasks running", `${tasks.filter((t) => t.state === "running" || t.state === "queued").length}`, h("span", { class: "muted" }, `${tasks.length} in all`))),
    h("h2", {}, "Throughput and latency"),
    chartsFor(volumes),
    h("h2", {}, "Recent events"),
    table("events-table", ["When", "Event", "Detail"],
      events.slice(-15).reverse().map((e) => h("tr", {}, h("td", {}, ago(e.time_unix_ms)), h("td", {}, badge(e.kind)), h("td", {}, e.detail)))));
  drawCharts();
  startMetrics();
  refreshIn(5000);
}

async function nodesPage() {
  const controls = await api("GET", "/controls");
  // With child controls, the whole tree: every child's nodes too, each naming its control.
  const nodes = await api("GET", controls.length ? "/nodes?all=true" : "/nodes");
  const tree = controls.length > 0;
  const name = (id) => (controls.find((c) => c.id === id) || { name: id }).name;
  show(
    h("h1", {}, "Nodes"),
    h("p", { class: "muted" }, "Storage nodes register themselves (cleave node --control HOST:PORT). A node silent past the heartbeat timeout is down."),
    table("nodes-table", ["Id", tree && "Control", "Address", "Site", "Status", "Capacity ", "Free ", "Used", "Shares ", "Last seen"].filter(Boolean),
      nodes.map((n) => h("tr", { dataset: { node: n.id, status: n.status } },
        h("td", {}, h("code", {}, n.id)), tree && h("td", {}, n.control ? name(n.control) : "this one"),
        h("td", {}, n.address), h("td", {}, n.site), h("td", {}, badge(n.status)),
        h("td", { class: "num" }, bytes(n.capacity_bytes)), h("td", { class: "num" }, bytes(n.free_bytes)),
        h("td", {}, meter(n.capacity_bytes - n.free_bytes, n.capacity_bytes)),
        h("td", { class: "num" }, n.objects), h("td", {}, ago(n.last_seen_unix_ms))))),
    tree && h("h2", {}, "Child control servers"),
    tree && table("controls-table", ["Name", "Site", "Status", "Nodes up ", "Nodes down ", "Capacity ", "Free ", "API", "Last seen"],
      controls.map((c) => h("tr", { dataset: { control: c.id, status: c.status } },
        h("td", {}, c.name), h("td", {}, c.site), h("td", {}, badge(c.status)),
        h("td", { class: "num" }, c.summary.nodes_up), h("td", { class: "num" }, c.summary.nodes_down),
        h("td", { class: "num" }, bytes(c.summary.capacity_bytes)), h("td", { class: "num" }, bytes(c.summary.free_bytes)),
        h("td", {}, h("code", {}, c.api)), h("td", {}, ago(c.last_seen_unix_ms))))));
  refreshIn(3000);
}

async function startTask(kind, volume) {
  const t = await api("POST", "/tasks", { kind, volume });
  location.hash = "#/tasks";
  flash(`task ${t.id} (${kind} ${volume}) queued`);
}

async function volumesPage() {
  const [volumes, groups] = await Promise.all([api("GET", "/volumes"), api("GET", "/groups")]);
  const clientsOf = (v) => [...new Set(groups.filter((g) => v.groups.includes(g.name)).flatMap((g) => g.clients))];
  const form = h("form", { class: "inline", id: "volume-form" },
    h("label", {}, "Name", h("input", { id: "vol-name", required: true, pattern: "[A-Za-z0-9._-]{1,64}" })),
    h("label", {}, "Size", h("input", { id: "vol-size", value: "1GiB", size: 8 })),
    h("label", {}, "M (needed)", h("input", { id: "vol-m", type: "number", min: 1, max: 32, value: 2, style: "width:5em" })),
    h("label", {}, "N (shares)", h("input", { id: "vol-n", type: "number", min: 1, max: 32, value: 3, style: "width:5em" })),
    h("label", {}, "Client (optional)", h("input", { id: "vol-client", placeholder: "host name" })),
    h("button", { id: "vol-create", class: "primary", type: "submit" }, "Create volume"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    act("volume created", async () => {
      const body = {
        name: $("#vol-name").value.trim(),
        size_bytes: parseSize($("#vol-size").value),
        m: parseInt($("#vol-m").value, 10),
        n: parseInt($("#vol-n").value, 10),
      };
      const client = $("#vol-client").value.trim();
      if (client) body.client = client;
      const v = await api("POST", "/volumes", body);
      if (v.credentials) showCredentials(v.credentials);
    });
  });
  const rows = volumes.map((v) => h("tr", { dataset: { volume: v.name } },
    h("td", {}, h("a", { href: `#/volumes/${encodeURIComponent(v.name)}` }, v.name)),
    h("td", { class: "num" }, bytes(v.size_bytes)),
    h("td", {}, `${v.m}-of-${v.n}`),
    h("td", {}, badge(healthOf(v))),
    h("td", { class: "mirror" }, mirrorCell(v.mirror)),
    h("td", { class: "num" }, bytes(v.dirty_bytes)),
    h("td", {}, v.targets.map((t) => h("div", {}, h("code", {}, t)))),
    h("td", {}, v.groups.join(", "), h("div", { class: "muted" }, clientsOf(v).join(", "))),
    h("td", {}, can("operator") && [
      h("button", { type: "button", dataset: { action: "scrub" }, onclick: () => act("scrub started", () => startTask("scrub", v.name)) }, "Scrub"), " ",
      h("button", { type: "button", dataset: { action: "repair" }, onclick: () => act("repair started", () => startTask("repair", v.name)) }, "Repair"), " ",
      h("button", { type: "button", class: "danger", dataset: { action: "delete" }, onclick: async () => {
        if (await confirmDestroy(`Delete volume ${v.name} and every share of it on its ${v.n} targets? This cannot be undone.`, v.name)) {
          act(`volume ${v.name} deleted`, () => api("DELETE", `/volumes/${encodeURIComponent(v.name)}`));
        }
      } }, "Delete")])));
  show(
    h("h1", {}, "Volumes"),
    can("operator") ? form : null,
    table("volumes-table", ["Name", "Size ", "Layout", "Health", "Mirror", "Dirty ", "Placement", "Groups / clients", ""], rows));
  refreshIn(5000);
}

// New credentials are shown once, under the page that made them (after its re-render).
function showCredentials(c) {
  state.credentials = c;
}
function credentialsBox(c) {
  return h("div", { id: "credentials" },
    h("h2", {}, `Credentials for client ${c.client} (shown once)`),
    h("p", { class: "muted" }, "Save these as ca-cert.pem, client-cert.pem and client-key.pem on the host (nbd-client -cacertfile -certfile -keyfile)."),
    h("div", { class: "secret" }, c.ca_pem), h("div", { class: "secret" }, c.cert_pem), h("div", { class: "secret" }, c.key_pem));
}

async function volumePage(name) {
  const [v, groups, events] = await Promise.all([api("GET", `/volumes/${encodeURIComponent(name)}`), api("GET", "/groups"), api("GET", "/events")]);
  const kv = (k, val) => h("tr", {}, h("th", {}, k), h("td", {}, val));
  show(
    h("h1", {}, `Volume ${v.name}`),
    h("table", { id: "volume-detail" }, h("tbody", {},
      kv("Health", v.open_error ? h("span", {}, badge(healthOf(v)), ` cannot open (retrying): ${v.open_error}`) : badge(healthOf(v))),
      kv("Size", `${bytes(v.size_bytes)} in chunks of ${bytes(v.chunk_size)}`),
      kv("Layout", `${v.m}-of-${v.n}: any ${v.m} of its ${v.n} targets rebuild it`),
      kv("NBD", h("code", {}, v.nbd_uri)),
      kv("Cache", `${bytes(v.cache_bytes)} used, ${bytes(v.dirty_bytes)} not yet destaged`),
      kv("Last destage", v.last_destage_error ? `failed: ${v.last_destage_error}` : v.last_destage_unix || "never"))),
    h("h2", {}, "Placement"),
    table("placement-table", ["Share", "Target", "State"], v.targets.map((t, i) => {
      const down = v.health && v.health.targets_down && v.health.targets_down.includes(t);
      return h("tr", {}, h("td", {}, i), h("td", {}, h("code", {}, t)), h("td", {}, badge(down ? "down" : "up")));
    })),
    h("h2", {}, "Health history"),
    healthHistory(v.name, events),
    h("h2", {}, "Clients"),
    table("access-table", ["Group", "Rights", "Clients"], groups.filter((g) => g.grants[v.name]).map((g) => {
      const grant = g.grants[v.name];
      const regions = (grant.regions || []).map((r) => `${bytes(r.offset)}+${bytes(r.length)}`).join(", ");
      return h("tr", {}, h("td", {}, g.name), h("td", {}, grant.mode, regions ? ` (only ${regions})` : ""), h("td", {}, g.clients.join(", ")));
    })));
  refreshIn(5000);
}

async function tasksPage() {
  const tasks = await api("GET", "/tasks");
  show(
    h("h1", {}, "Tasks"),
    h("p", { class: "muted" }, "Long work runs one task at a time; this page follows it live."),
    table("tasks-table", ["Id", "Kind", "Volume", "State", "Progress", "Started", "Result"],
      tasks.slice().reverse().map((t) => h("tr", { dataset: { task: t.id, state: t.state } },
        h("td", {}, t.id), h("td", {}, t.kind), h("td", {}, t.volume),
        h("td", { class: "state" }, badge(t.state)),
        h("td", {}, h("progress", { max: 1, value: t.progress }), ` ${Math.round(t.progress * 100)}%`),
        h("td", {}, ago(t.created_unix_ms)),
        h("td", {}, t.error ? h("span", { class: "badge failed" }, t.error) : t.result ? h("code", {}, JSON.stringify(t.result)) : "")))));
  refreshIn(tasks.some((t) => t.state === "running" || t.state === "queued") ? 700 : 3000);
}

async function groupsPage() {
  const [groups, clients, volumes] = await Promise.all([api("GET", "/groups"), api("GET", "/clients"), api("GET", "/volumes")]);
  const admin = can("admin");
  const addForm = h("form", { class: "inline", id: "group-form" },
    h("label", {}, "New group", h("input", { id: "group-name", required: true })),
    h("button", { class: "primary", type: "submit" }, "Add group"));
  addForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    act("group added", () => api("POST", "/groups", { name: $("#group-name").value.trim() }));
  });
  const options = (names) => names.map((n) => h("option", { value: n }, n));
  const sections = groups.map((g) => {
    const join = h("select", {}, options(clients.map((c) => c.name).filter((c) => !g.clients.includes(c))));
    const vol = h("select", {}, options(volumes.map((v) => v.name)));
    const mode = h("select", {}, h("option", { value: "read-write" }, "read-write"), h("option", { value: "read-only" }, "read-only"));
    return h("section", { dataset: { group: g.name } },
      h("h2", {}, `Group ${g.name}`),
      table(null, ["Client", ""], g.clients.map((c) => h("tr", {}, h("td", {}, c), h("td", {}, admin && h("button", { type: "button",
        onclick: () => act(`${c} left ${g.name}`, () => api("DELETE", `/groups/${g.name}/clients/${c}`)) }, "Remove from group"))))),
      admin && h("p", {}, "Add client ", join, " ", h("button", { type: "button", onclick: () => join.value && act(`${join.value} joined ${g.name}`, () => api("PUT", `/groups/${g.name}/clients/${join.value}`)) }, "Add")),
      table(null, ["Volume", "Rights", ""], Object.entries(g.grants).map(([v, grant]) => h("tr", {},
        h("td", {}, v),
        h("td", {}, grant.mode, (grant.regions || []).length ? ` (regions: ${grant.regions.map((r) => `${r.offset}+${r.length}`).join(", ")})` : ""),
        h("td", {}, admin && h("button", { type: "button", class: "danger", onclick: async () => {
          const others = groups.filter((o) => o.name !== g.name && o.grants[v]).length;
          if (others === 0) {
            if (await confirmDestroy(`${g.name} is the last group that can reach ${v}: revoking it crypto-erases the volume and deletes it.`, v)) {
              act(`${v} erased`, () => api("DELETE", `/groups/${g.name}/volumes/${v}?erase=true`));
            }
          } else {
            act(`${g.name} can no longer reach ${v}`, () => api("DELETE", `/groups/${g.name}/volumes/${v}`));
          }
        } }, "Revoke"))))),
      admin && h("p", {}, "Grant ", vol, " ", mode, " ", h("button", { type: "button", onclick: () => vol.value && act(`${g.name} granted ${vol.value}`, () => api("PUT", `/groups/${g.name}/volumes/${vol.value}`, { mode: mode.value })) }, "Grant")),
      admin && h("p", {}, h("button", { type: "button", class: "danger", onclick: async () => {
        if (await confirmDestroy(`Delete group ${g.name}? Volumes that only it can reach are crypto-erased.`, g.name)) {
          act(`group ${g.name} deleted`, () => api("DELETE", `/groups/${g.name}?erase=true`));
        }
      } }, "Delete group")));
  });
  show(h("h1", {}, "Groups"), h("p", { class: "muted" }, "A group is a community of interest: its clients get its rights on volumes, whole or by region."), admin ? addForm : null, ...sections);
}

async function clientsPage() {
  const clients = await api("GET", "/clients");
  const admin = can("admin");
  const form = h("form", { class: "inline", id: "client-form" },
    h("label", {}, "New client (host)", h("input", { id: "client-name", required: true })),
    h("button", { id: "client-add", class: "primary", type: "submit" }, "Issue certificate"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    act("client added", async () => showCredentials(await api("POST", "/clients", { name: $("#client-name").value.trim() })));
  });
  show(h("h1", {}, "Clients"),
    h("p", { class: "muted" }, "Hosts that attach disks over NBD with TLS, known by a certificate from this control's CA, or over iSCSI from the initiators listed, with the client's CHAP secret."),
    admin ? form : null,
    table("clients-table", ["Client", "Certificate fingerprint (SHA-256)", "Groups", "iSCSI initiators", "Added", ""], clients.map((c) => h("tr", { dataset: { client: c.name } },
      h("td", {}, c.name), h("td", {}, h("code", {}, c.fingerprint)), h("td", {}, c.groups.join(", ")),
      h("td", {}, (c.initiators || []).map((i) => i.chap ? i.name : `${i.name} (no CHAP)`).join(", ") + (c.chap ? ` [CHAP ${c.chap}]` : "")),
      h("td", {}, ago(c.created_unix_ms)),
      h("td", {}, admin && h("button", { type: "button", class: "danger", onclick: async () => {
        if (await confirmDestroy(`Remove client ${c.name}? Its certificate stops opening anything at once.`, c.name)) {
          act(`client ${c.name} removed`, () => api("DELETE", `/clients/${c.name}`));
        }
      } }, "Remove"))))));
}

async function usersPage() {
  if (!can("admin")) {
    show(h("h1", {}, "Users"), h("p", {}, `You are ${state.me.name} (${state.me.role}). Only admins manage users.`), tokenForm());
    return;
  }
  const users = await api("GET", "/users");
  const form = h("form", { class: "inline", id: "user-form" },
    h("label", {}, "Name", h("input", { id: "user-name", required: true })),
    h("label", {}, "Password", h("input", { id: "user-password", type: "password", autocomplete: "new-password", minlength: 8, required: true })),
    h("label", {}, "Role", h("select", { id: "user-role" }, ROLES.map((r) => h("option", { value: r }, r)))),
    h("button", { class: "primary", type: "submit" }, "Add user"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    act("user added", () => api("POST", "/users", { name: $("#user-name").value.trim(), password: $("#user-password").value, role: $("#user-role").value }));
  });
  show(h("h1", {}, "Users"), form,
    table("users-table", ["User", "Role", "API tokens", ""], users.map((u) => {
      const role = h("select", { onchange: () => act(`${u.name} is now ${role.value}`, () => api("PUT", `/users/${u.name}`, { role: role.value })) },
        ROLES.map((r) => h("option", { value: r, selected: r === u.role }, r)));
      return h("tr", { dataset: { user: u.name } }, h("td", {}, u.name), h("td", {}, role),
        h("td", {}, u.tokens.map((t) => h("div", {}, h("code", {}, t.id), ` ${t.label} `,
          h("button", { type: "button", onclick: () => act("token revoked", () => api("DELETE", `/users/${u.name}/tokens/${t.id}`)) }, "Revoke")))),
        h("td", {}, u.name !== state.me.name && h("button", { type: "button", class: "danger", onclick: async () => {
          if (await confirmDestroy(`Remove user ${u.name} and its API tokens?`, u.name)) act(`user ${u.name} removed`, () => api("DELETE", `/users/${u.name}`));
        } }, "Remove")));
    })),
    tokenForm());
}

function tokenForm() {
  const label = h("input", { id: "token-label", placeholder: "what it is for" });
  const out = h("div");
  const form = h("form", { class: "inline", id: "token-form" }, h("label", {}, "New API token for me", label), h("button", { type: "submit" }, "Create token"), out);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const t = await api("POST", "/me/tokens", { label: label.value });
      out.replaceChildren(h("p", {}, "Shown once: "), h("div", { class: "secret" }, t.token));
    } catch (e) { flash(e.message, true); }
  });
  return h("div", {}, h("h2", {}, "My API tokens"), form);
}

// ---- the banner of serious events ----
// The kinds of event that put a banner at the top of every page until dismissed: volumes
// degraded or unavailable, mirrors in trouble and, for highly available gateways, failover,
// fencing, path loss, a lost standby cache (FLUSHes wait for the targets meanwhile) and a
// gateway that stopped answering another's heartbeats. The one list of them.
const SERIOUS = [
  "volume_degraded", "volume_unavailable",
  "mirror-degraded", "mirror-split-brain", "mirror-lagging",
  "gateway_failover", "gateway_fenced", "path_lost", "standby_lost", "peer_lost",
];
// Older events are in the events list only; a dismissal is kept by this browser.
const BANNER_HOURS = 24;
const DISMISSED = "cleave.banner.dismissed";

async function alerts() {
  const box = $("#alerts");
  const away = () => !state.me || location.hash.startsWith("#/login");
  if (away()) { box.hidden = true; return; }
  let events;
  try { events = await api("GET", "/events"); } catch (_) { return; }
  if (away()) return; // logged out meanwhile
  const since = Math.max(Number(localStorage.getItem(DISMISSED)) || 0, Date.now() - BANNER_HOURS * 3600e3);
  const serious = events.filter((e) => SERIOUS.includes(e.kind) && e.time_unix_ms > since);
  box.hidden = serious.length === 0;
  if (!serious.length) return;
  const newest = serious[serious.length - 1].time_unix_ms;
  const dismiss = () => { localStorage.setItem(DISMISSED, String(newest)); box.hidden = true; };
  box.replaceChildren(
    h("strong", {}, serious.length === 1 ? "1 serious event" : `${serious.length} serious events`),
    h("ul", {}, serious.slice(-5).reverse().map((e) => h("li", { dataset: { kind: e.kind } },
      h("code", {}, e.kind), ` ${e.detail} `, h("span", { class: "muted" }, ago(e.time_unix_ms))))),
    h("button", { id: "alerts-dismiss", type: "button", onclick: dismiss }, "Dismiss"));
}

// ---- routing ----
function refreshIn(ms) {
  clearTimeout(state.timer);
  const at = location.hash;
  state.timer = setTimeout(() => {
    // Not while the user types or confirms.
    if (location.hash === at && $("#confirm").hidden && !(document.activeElement && ["INPUT", "SELECT"].includes(document.activeElement.tagName))) route();
    else refreshIn(ms);
  }, ms);
}

const pages = { "": dashboard, nodes: nodesPage, volumes: volumesPage, tasks: tasksPage, groups: groupsPage, clients: clientsPage, users: usersPage };

async function route() {
  clearTimeout(state.timer);
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  if (parts[0] === "login") return loginPage();
  if (!state.me) {
    try {
      state.me = await api("GET", "/me");
      state.csrf = state.me.csrf;
    } catch (_) { return; }
  }
  $("#top").hidden = false;
  alerts();
  $("#whoami").textContent = `${state.me.name} (${state.me.role})`;
  for (const a of document.querySelectorAll("header nav a")) {
    a.classList.toggle("active", a.getAttribute("href") === `#/${parts[0]}`);
  }
  try {
    if (parts[0] === "volumes" && parts[1]) await volumePage(parts[1]);
    else await (pages[parts[0]] || dashboard)();
    if (state.credentials) {
      $("#main").append(credentialsBox(state.credentials));
      state.credentials = null;
      clearTimeout(state.timer); // keep them on screen until the user moves on
    }
    document.body.dataset.page = parts[0] || "dashboard";
  } catch (e) {
    if (e.status !== 401) show(h("h1", {}, "Error"), h("p", { class: "error" }, e.message));
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("#logout").addEventListener("click", async () => {
    try { await api("POST", "/logout"); } catch (_) { /* the session is gone either way */ }
    state.me = null;
    state.csrf = null;
    location.hash = "#/login";
  });
  window.addEventListener("hashchange", route);
  setInterval(alerts, 10000); // also on the pages that do not refresh themselves
  route();
});
