// rulechain's built-in dashboard: devices, alarms, chains and traces of a running engine, from
// its HTTP API and its WebSocket hub. No build step: this file is embedded in the binary.
//
// Everything shown that comes from outside (device ids come from MQTT topics, attributes and
// messages from devices) is put into the page as text (textContent), never as HTML.
"use strict";

const $ = (sel) => document.querySelector(sel);
const SEVERITIES = ["CRITICAL", "MAJOR", "MINOR", "WARNING", "INDETERMINATE"];

/** An element with attributes and children; strings become text nodes. */
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function fmt(v) {
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toFixed(2);
  if (v === null || v === undefined) return "–";
  return typeof v === "string" ? v : JSON.stringify(v);
}

function ago(ms) {
  if (!ms) return "never";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  return new Date(ms).toLocaleString();
}

// ---- the API, with the token when the engine wants one ----------------------------------------

let token = sessionStorage.getItem("rulechain.token") || new URLSearchParams(location.search).get("token");
let asking = null;

function askToken() {
  if (asking) return asking;
  asking = new Promise((resolve) => {
    const d = $("#token-dialog");
    $("#token-form").onsubmit = () => {
      token = $("#token-input").value.trim();
      sessionStorage.setItem("rulechain.token", token);
      asking = null;
      resolve();
      connect(true);
    };
    d.showModal();
  });
  return asking;
}

async function api(path, opts = {}) {
  for (let attempt = 0; attempt < 3; attempt++) {
    const headers = Object.assign({}, opts.headers || {});
    if (token) headers.Authorization = `Bearer ${token}`;
    const r = await fetch(path, Object.assign({}, opts, { headers }));
    if (r.status === 401) {
      await askToken();
      continue;
    }
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw Object.assign(new Error(body.error || `HTTP ${r.status}`), { status: r.status, body });
    return body;
  }
  throw new Error("no token");
}

// ---- the WebSocket, with reconnects and resubscribes -------------------------------------------

const rooms = new Set(["alarms"]);
const handlers = new Map(); // room → function(data, frame)
let ws = null;
let backoff = 500;

function connect(force) {
  if (ws && !force) return;
  if (ws) ws.close();
  const url = new URL("ws", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  if (token) url.searchParams.set("token", token);
  const sock = new WebSocket(url);
  ws = sock;
  sock.onopen = () => {
    backoff = 500;
    $("#link").textContent = "live";
    $("#link").className = "link up";
    sock.send(JSON.stringify({ op: "subscribe", rooms: [...rooms] }));
  };
  sock.onmessage = (ev) => {
    let f;
    try { f = JSON.parse(ev.data); } catch { return; }
    if (f.op === "snapshot") {
      (f.alarms || []).forEach((a) => upsertAlarm(a));
      if (f.data && handlers.has(f.room)) handlers.get(f.room)(f.data, f);
    } else if (!f.op && f.room) {
      if (f.room === "alarms") upsertAlarm(f.data);
      const h = handlers.get(f.room);
      if (h) h(f.data, f);
    }
  };
  sock.onclose = () => {
    if (ws !== sock) return;
    ws = null;
    $("#link").textContent = "offline";
    $("#link").className = "link down";
    // Backoff with jitter, doubling to 10 s; then everything is subscribed again.
    setTimeout(() => connect(false), backoff * (0.75 + Math.random() / 4));
    backoff = Math.min(backoff * 2, 10000);
  };
}

function join(room, handler) {
  rooms.add(room);
  handlers.set(room, handler);
  if (ws && ws.readyState === 1) ws.send(JSON.stringify({ op: "subscribe", rooms: [room] }));
}

function leave(room) {
  if (room === "alarms") return;
  rooms.delete(room);
  handlers.delete(room);
  if (ws && ws.readyState === 1) ws.send(JSON.stringify({ op: "unsubscribe", rooms: [room] }));
}

// ---- redraws, batched per animation frame --------------------------------------------------------

const dirty = new Set();
let frame = 0;
function redraw(fn) {
  if (fn.gen !== undefined && fn.gen !== pageGen) return; // a page left since
  dirty.add(fn);
  if (!frame) frame = requestAnimationFrame(() => {
    frame = 0;
    const fns = [...dirty];
    dirty.clear();
    fns.forEach((f) => f());
  });
}

// ---- state -------------------------------------------------------------------------------------

const state = { devices: [], alarms: new Map(), spark: new Map(), held: new Map() };

function upsertAlarm(a) {
  if (!a || !a.id) return;
  if (a.status === "CLEARED_ACK") state.alarms.delete(a.id);
  else state.alarms.set(a.id, a);
  redraw(drawAlarmCount);
  if (page.name === "alarms" || page.name === "device") redraw(page.draw);
}

function drawAlarmCount() {
  const active = [...state.alarms.values()].filter((a) => a.status.startsWith("ACTIVE")).length;
  $("#alarm-count").textContent = active ? String(active) : "";
}

function who() {
  const n = $("#who").value.trim();
  localStorage.setItem("rulechain.who", n);
  return n || undefined;
}

async function alarmAction(id, action) {
  try {
    const r = await api(`api/alarms/${encodeURIComponent(id)}/${action}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ by: who() }),
    });
    const a = state.alarms.get(id);
    if (a) upsertAlarm(Object.assign({}, a, { status: r.status }));
  } catch (e) {
    alert(`${action}: ${e.message}`);
  }
}

// ---- pages -------------------------------------------------------------------------------------

let page = { name: "", draw() {}, stop() {} };
// Counts the pages shown: a page's timers and answers still in flight when it is left must not
// draw over the next page, nor poll again.
let pageGen = 0;
/** `fn`, marked as the current page's: once the page is left, `redraw` skips it. */
function ofPage(fn) {
  fn.gen = pageGen;
  return fn;
}
/** Whether the page that captured `gen` is still the one shown. */
const shown = (gen) => gen === pageGen;

function sparkline(canvas, values) {
  const w = (canvas.width = canvas.clientWidth * devicePixelRatio || 200);
  const h = (canvas.height = 36 * devicePixelRatio);
  const c = canvas.getContext("2d");
  c.clearRect(0, 0, w, h);
  if (values.length < 2) return;
  const lo = Math.min(...values), hi = Math.max(...values);
  const span = hi - lo || 1;
  c.strokeStyle = "#2563eb";
  c.lineWidth = 1.5 * devicePixelRatio;
  c.beginPath();
  values.forEach((v, i) => {
    const x = (i / (values.length - 1)) * w;
    const y = h - 2 - ((v - lo) / span) * (h - 4);
    if (i) c.lineTo(x, y); else c.moveTo(x, y);
  });
  c.stroke();
}

function devicesPage() {
  const gen = pageGen;
  const main = $("#main");
  let timer = 0;
  const draw = () => {
    const grid = el("div", { class: "grid", id: "devices" });
    for (const d of state.devices) {
      const canvas = el("canvas");
      const first = Object.keys(d.latest || {})[0];
      const card = el("div", {
        class: `card ${d.online ? "online" : "offline"} ${d.severity ? "sev-" + d.severity : ""}`,
        "data-device": d.id,
        onclick: () => { location.hash = `#/device/${encodeURIComponent(d.id)}`; },
      },
        el("div", { class: "id" }, el("span", { class: `dot ${d.online ? "on" : ""}` }), d.id),
        el("div", { class: "meta" }, d.type || "no type", " · ", d.online ? "online" : "offline", " · ", ago(d.last_seen),
          d.open_alarms ? el("span", { class: `sev ${d.severity || ""}` }, ` · ${d.open_alarms} alarm${d.open_alarms > 1 ? "s" : ""}`) : null),
        el("div", { class: "vals" }, Object.entries(d.latest || {}).map(([k, v]) => el("span", { class: "val", "data-field": k }, `${k} ${fmt(v)}  `))),
        canvas);
      grid.append(card);
      const series = first && state.spark.get(`${d.id}\u0000${first}`);
      if (series) requestAnimationFrame(() => sparkline(canvas, series.map((p) => p[1])));
    }
    main.replaceChildren(el("h1", {}, `Devices (${state.devices.length})`),
      state.devices.length ? grid : el("p", { class: "muted" }, "No device has sent a message yet."));
  };
  const poll = async () => {
    try {
      const r = await api("api/devices?limit=500");
      state.devices = r.devices;
      for (const d of r.devices.slice(0, 60)) {
        const first = Object.keys(d.latest || {})[0];
        if (!first) continue;
        const key = `${d.id}\u0000${first}`;
        if (!state.spark.has(key)) {
          const h = await api(`api/devices/${encodeURIComponent(d.id)}/history?field=${encodeURIComponent(first)}&since=15m`).catch(() => null);
          state.spark.set(key, h ? h.points : []);
        } else {
          const s = state.spark.get(key);
          const t = d.last_seen || Date.now();
          if (!s.length || s[s.length - 1][0] < t) s.push([t, d.latest[first]]);
          if (s.length > 200) s.splice(0, s.length - 200);
        }
      }
      redraw(draw);
    } catch (e) {
      if (shown(gen)) main.replaceChildren(el("p", { class: "muted" }, `Cannot read the devices: ${e.message}`));
    }
    if (shown(gen)) timer = setTimeout(poll, 2000);
  };
  poll();
  return { name: "devices", draw, stop() { clearTimeout(timer); } };
}

function devicePage(id) {
  const gen = pageGen;
  const main = $("#main");
  const room = `device/${id}`;
  const charts = new Map(); // field → {plot, xs, ys}
  let detail = null;
  let timer = 0;
  let lastFrame = 0;
  const box = el("div", { class: "charts", id: "charts" });
  const attrs = el("div");
  const alarms = el("div");
  main.replaceChildren(el("h1", {}, el("a", { href: "#/" }, "Devices"), " / ", el("span", { id: "device-id" }, id)), box, alarms, attrs);

  const addPoint = (field, ts, v) => {
    let c = charts.get(field);
    if (!c) {
      const div = el("div", { class: "chart", "data-field": field });
      box.append(div);
      c = { xs: [], ys: [], plot: null, div };
      c.plot = new uPlot({
        width: Math.max(360, div.clientWidth - 16), height: 200, title: field,
        series: [{}, { label: field, stroke: "#2563eb", width: 1.5 }],
        axes: [{}, {}],
      }, [[], []], div);
      charts.set(field, c);
    }
    const t = ts / 1000;
    if (c.xs.length && t <= c.xs[c.xs.length - 1]) return;
    c.xs.push(t);
    c.ys.push(v);
    const cut = Date.now() / 1000 - 15 * 60;
    while (c.xs.length && c.xs[0] < cut) { c.xs.shift(); c.ys.shift(); }
    redraw(c.draw || (c.draw = () => c.plot.setData([c.xs, c.ys])));
  };

  const drawDetail = () => {
    if (!detail) return;
    const rows = Object.entries(detail.attributes || {}).map(([k, a]) =>
      el("tr", {}, el("td", {}, k), el("td", {}, fmt(a.value)), el("td", { class: "muted" }, a.source)));
    attrs.replaceChildren(el("h2", {}, "Attributes"),
      rows.length ? el("table", {}, el("tr", {}, el("th", {}, "name"), el("th", {}, "value"), el("th", {}, "source")), rows)
        : el("p", { class: "muted" }, "none"));
    const open = [...state.alarms.values()].filter((a) => a.device === id);
    alarms.replaceChildren(el("h2", {}, "Alarms"), open.length ? alarmTable(open) : el("p", { class: "muted" }, "none open"));
  };

  const load = async () => {
    try {
      detail = await api(`api/devices/${encodeURIComponent(id)}`);
    } catch (e) {
      main.replaceChildren(el("p", {}, `${id}: ${e.message}`));
      return;
    }
    for (const a of detail.alarms || []) upsertAlarm(a);
    for (const t of detail.telemetry || []) {
      const h = await api(`api/devices/${encodeURIComponent(id)}/history?field=${encodeURIComponent(t.field)}&since=15m`).catch(() => null);
      for (const [ts, v] of (h ? h.points : [])) addPoint(t.field, ts, v);
    }
    redraw(drawDetail);
    // Live over the WebSocket (when a chain pushes the device's room); polled when nothing comes.
    join(room, (data, f) => {
      lastFrame = Date.now();
      for (const [k, v] of Object.entries(data || {})) if (typeof v === "number" && k !== "ts") addPoint(k, f.ts || Date.now(), v);
    });
    const poll = async () => {
      if (Date.now() - lastFrame > 5000) {
        const d = await api(`api/devices/${encodeURIComponent(id)}`).catch(() => null);
        if (d) {
          detail = d;
          for (const t of d.telemetry || []) addPoint(t.field, t.ts, t.value);
          redraw(drawDetail);
        }
      }
      if (shown(gen)) timer = setTimeout(poll, 2000);
    };
    timer = setTimeout(poll, 2000);
  };
  load();
  return { name: "device", draw: drawDetail, stop() { clearTimeout(timer); leave(room); } };
}

function alarmTable(list) {
  const rank = (s) => SEVERITIES.indexOf(s);
  list.sort((a, b) => rank(a.severity) - rank(b.severity) || b.start_ts - a.start_ts);
  const held = state.held;
  return el("table", { id: "alarms" },
    el("tr", {}, ["severity", "device", "type", "status", "since", "message", "by", ""].map((h) => el("th", {}, h))),
    list.map((a) => el("tr", { "data-alarm": a.id, "data-status": a.status },
      el("td", { class: `sev ${a.severity}` }, a.severity),
      el("td", {}, el("a", { href: `#/device/${encodeURIComponent(a.device)}` }, a.device)),
      el("td", {}, el("a", { class: "history", href: `#/alarm/${encodeURIComponent(a.id)}`, title: "history and comments" }, a.type)),
      el("td", { class: "status" }, a.status,
        held.has(a.id) ? el("span", { class: "badge silenced", title: held.get(a.id) }, " silenced") : null),
      el("td", {}, ago(a.start_ts)),
      el("td", {}, a.message || ""),
      el("td", { class: "muted" }, [a.acked_by && `acked by ${a.acked_by}`, a.cleared_by && `cleared by ${a.cleared_by}`].filter(Boolean).join(", ")),
      el("td", {},
        a.status.endsWith("UNACK") ? el("button", { class: "ack", onclick: () => alarmAction(a.id, "ack") }, "Acknowledge") : null,
        a.status.startsWith("ACTIVE") ? el("button", { class: "clear", onclick: () => alarmAction(a.id, "clear") }, "Clear") : null,
        el("a", { class: "button silence", href: `#/silences?device=${encodeURIComponent(a.device)}&type=${encodeURIComponent(a.type)}` }, "Silence")))));
}

/** Which open alarms' notifications are held, from the API (the WebSocket does not say). */
async function loadHeld() {
  const r = await api("api/alarms");
  state.held = new Map();
  for (const a of r.alarms) {
    if (a.silenced_by) state.held.set(a.id, `held by silence ${a.silenced_by}`);
    else if (a.inhibited_by) state.held.set(a.id, `held: ${a.inhibited_by} is open`);
    upsertAlarm(a);
  }
}

function alarmsPage() {
  let timer = 0;
  const draw = () => {
    const list = [...state.alarms.values()];
    $("#main").replaceChildren(el("h1", {}, `Alarms (${list.length} open)`),
      list.length ? alarmTable(list) : el("p", { class: "muted" }, "No open alarm."));
  };
  const gen = pageGen;
  const poll = () => loadHeld().then(() => redraw(draw)).catch(() => {}).finally(() => { if (shown(gen)) timer = setTimeout(poll, 5000); });
  poll();
  return { name: "alarms", draw, stop() { clearTimeout(timer); } };
}

function alarmPage(id) {
  let data = null;
  let timer = 0;
  // Built once: what a redraw replaces is the alarm and its history, never the comment being
  // typed (a poll every 3 s would take its focus, or its text).
  const form = el("form", { class: "inline", id: "comment-form", onsubmit: async (ev) => {
    ev.preventDefault();
    const text = ev.target.elements.text.value;
    try {
      await api(`api/alarms/${encodeURIComponent(id)}/comments`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ text, by: who() }) });
      ev.target.reset();
      load();
    } catch (e) { alert(`comment: ${e.message}`); }
  } },
  el("label", {}, "Comment ", el("input", { name: "text", size: 50, required: true })),
  el("button", { type: "submit" }, "Add"));
  const top = el("div");
  const history = el("div");
  const draw = () => {
    if (!data) return;
    const a = data.alarm || state.alarms.get(id);
    if (!form.isConnected) {
      $("#main").replaceChildren(
        el("h1", {}, el("a", { href: "#/alarms" }, "Alarms"), " / ", el("span", { id: "alarm-id" }, id)),
        top, el("h2", {}, "History"), history, form);
    }
    top.replaceChildren(
      a ? el("p", {}, el("span", { class: `sev ${a.severity}` }, a.severity), " ", a.type, " on ",
        el("a", { href: `#/device/${encodeURIComponent(a.device)}` }, a.device), " · ", el("span", { class: "status" }, a.status), " · ", a.message || "") : el("p", { class: "muted" }, "no longer open"),
      el("div", { class: "actions" },
        a && a.status.endsWith("UNACK") ? el("button", { class: "ack", onclick: () => alarmAction(id, "ack").then(load) }, "Acknowledge") : null,
        a && a.status.startsWith("ACTIVE") ? el("button", { class: "clear", onclick: () => alarmAction(id, "clear").then(load) }, "Clear") : null));
    history.replaceChildren(
      el("table", { id: "history" },
        el("tr", {}, ["time", "what", "who", ""].map((h) => el("th", {}, h))),
        data.history.slice().reverse().map((e) => el("tr", { "data-kind": e.kind },
          el("td", {}, new Date(e.ts).toLocaleString()),
          el("td", {}, e.kind.replace("_", " ")),
          el("td", {}, e.by),
          el("td", {}, e.text || "")))));
  };
  const gen = pageGen;
  const load = () => api(`api/alarms/${encodeURIComponent(id)}/history`)
    .then((r) => { data = r; redraw(draw); })
    .catch((e) => { if (shown(gen)) $("#main").replaceChildren(el("h1", {}, "Alarm"), el("p", { class: "muted" }, e.message)); });
  const poll = () => load().finally(() => { if (shown(gen)) timer = setTimeout(poll, 3000); });
  poll();
  return { name: "alarms", draw, stop() { clearTimeout(timer); } };
}

function silencesPage(prefill) {
  let list = [];
  const status = el("p", { class: "muted", id: "silence-status" });
  const fields = ["device", "type", "device_type", "chain", "severity"];
  const form = el("form", { id: "silence-form", onsubmit: async (ev) => {
    ev.preventDefault();
    const f = ev.target.elements;
    const matchers = {};
    for (const k of fields) if (f[k].value.trim()) matchers[k] = f[k].value.trim();
    const body = { matchers, duration: f.duration.value.trim(), comment: f.comment.value, by: who(), expire_on_clear: f.expire_on_clear.checked };
    if (f.every.value.trim()) body.every = f.every.value.trim();
    try {
      const s = await api("api/silences", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
      status.textContent = `silence ${s.id} is ${s.state} until ${new Date(s.ends_at).toLocaleString()}`;
      load();
    } catch (e) { status.textContent = `${e.message}${e.body && e.body.detail ? ` (${JSON.stringify(e.body.detail)})` : ""}`; }
  } },
  el("fieldset", {}, el("legend", {}, "Match (a name or a glob such as pump-*; every one given must match)"),
    fields.map((k) => el("label", {}, k.replace("_", " "), " ", el("input", { name: k, size: 14, value: prefill.get(k) || "" })))),
  el("fieldset", {}, el("legend", {}, "When"),
    el("label", {}, "for ", el("input", { name: "duration", size: 6, value: "2h", required: true })),
    el("label", {}, "every ", el("input", { name: "every", size: 6, placeholder: "7d: weekly" })),
    el("label", {}, el("input", { name: "expire_on_clear", type: "checkbox" }), " end when the alarm clears")),
  el("label", {}, "Comment ", el("input", { name: "comment", size: 40, required: true })),
  el("button", { type: "submit" }, "Silence"));
  // The form is built once and left in place: a redraw replaces the list only (re-attaching
  // the form took the focus from a field being typed in, and the keystrokes with it).
  const listBox = el("div");
  const draw = () => {
    if (!form.isConnected) $("#main").replaceChildren(el("h1", {}, "Silences"), form, status, listBox);
    listBox.replaceChildren(
      list.length ? el("table", { id: "silences" },
        el("tr", {}, ["state", "matches", "from", "until", "by", "comment", ""].map((h) => el("th", {}, h))),
        list.map((s) => el("tr", { "data-silence": s.id, "data-state": s.state },
          el("td", { class: "status" }, s.state),
          el("td", {}, Object.entries(s.matchers).map(([k, v]) => `${k}=${v}`).join(", ")),
          el("td", {}, new Date(s.starts_at).toLocaleString()),
          el("td", {}, new Date(s.expired_at || s.ends_at).toLocaleString(), s.every ? ` (every ${Math.round(s.every / 3600000)} h)` : "", s.expire_on_clear ? " or a clear" : ""),
          el("td", {}, s.by || ""),
          el("td", {}, s.comment || ""),
          el("td", {}, s.state !== "expired" ? el("button", { class: "expire", onclick: async () => {
            try {
              await api(`api/silences/${encodeURIComponent(s.id)}${who() ? `?by=${encodeURIComponent(who())}` : ""}`, { method: "DELETE" });
              load();
            } catch (e) { alert(`expire: ${e.message}`); }
          } }, "Expire") : null))))
        : el("p", { class: "muted" }, "No silences."));
  };
  const load = () => api("api/silences").then((r) => { list = r.silences; redraw(draw); }).catch((e) => { status.textContent = e.message; });
  draw();
  load();
  let timer = setInterval(load, 5000);
  return { name: "silences", draw, stop() { clearInterval(timer); } };
}

function chainsPage() {
  let timer = 0;
  let data = null;
  const draw = () => {
    if (!data) return;
    const outcomes = ["pass", "else", "stop", "held", "suppressed", "error"];
    const problems = data.last_reload.problems || [];
    $("#main").replaceChildren(
      el("h1", {}, `Chains (generation ${data.generation})`),
      el("h2", {}, "Last reload"),
      problems.length
        ? el("ul", { class: "problems", id: "problems" }, problems.map((p) =>
          el("li", { class: p.severity }, `${p.path}:${p.line}:${p.column}: ${p.severity}: ${p.message}`, p.hint ? ` (${p.hint})` : "")))
        : el("p", { class: "muted" }, `no problems · ${data.last_reload.reloads} reloads, ${data.last_reload.failed} failed`),
      ...data.chains.map((c) => el("section", { "data-chain": c.name },
        el("h2", {}, c.name, el("span", { class: "muted" }, ` · ${c.path} · ${c.messages} messages`)),
        el("table", {},
          el("tr", {}, el("th", {}, "node"), el("th", {}, "kind"), outcomes.map((o) => el("th", { class: "num" }, o))),
          c.nodes.map((n) => el("tr", { "data-node": n.id },
            el("td", {}, n.id), el("td", { class: "muted" }, n.kind),
            outcomes.map((o) => el("td", { class: `num ${n.outcomes[o] ? "" : "zero"}` }, String(n.outcomes[o] || 0)))))))));
  };
  const gen = pageGen;
  const poll = async () => {
    data = await api("api/chains").catch(() => data);
    redraw(draw);
    if (shown(gen)) timer = setTimeout(poll, 2000);
  };
  poll();
  return { name: "chains", draw, stop() { clearTimeout(timer); } };
}

function shadowPage() {
  let data = null;
  let timer = 0;
  const status = el("p", { class: "muted", id: "shadow-status" });
  const start = el("form", { class: "inline", id: "shadow-form", onsubmit: async (ev) => {
    ev.preventDefault();
    try {
      const r = await api("api/shadow", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ dir: ev.target.elements.dir.value.trim(), by: who() || undefined }) });
      status.textContent = `shadow of ${r.dir} running (${r.chains} chains)`;
      load();
    } catch (e) {
      const d = e.body && Array.isArray(e.body.detail) ? e.body.detail.map((p) => `${p.path}:${p.line}:${p.column}: ${p.message}`).join("; ") : "";
      status.textContent = `${e.message}${d ? `: ${d}` : ""}`;
    }
  } },
  el("label", {}, "Candidate rules directory ", el("input", { name: "dir", size: 40, required: true, placeholder: "/srv/rulechain/rules-next" })),
  el("button", { type: "submit" }, "Start shadow"));
  const when = (ms) => (ms ? new Date(ms).toLocaleString() : "–");
  // A node's outcomes on one side: "pass 3, else 1"; "none" when it ran for nothing; "–" when
  // that side has no such node.
  const outcomes = (o) => (!o ? "–" : Object.keys(o).length ? Object.entries(o).map(([k, v]) => `${k} ${v}`).join(", ") : "none");
  const alarmRows = (id, title, list) => list.length ? [el("h2", {}, `${title} (${list.length})`),
    el("table", { id },
      el("tr", {}, ["type", "device", "chain", "severity", "live", "candidate", "what changed"].map((h) => el("th", {}, h))),
      list.map((a) => el("tr", { "data-device": a.device, "data-type": a.type },
        el("td", {}, a.type),
        el("td", {}, el("a", { href: `#/device/${encodeURIComponent(a.device)}` }, a.device)),
        el("td", {}, a.chain),
        el("td", {}, el("span", { class: `sev ${(a.candidate || a.base).severity}` }, (a.candidate || a.base).severity)),
        el("td", {}, a.base ? `${when(a.base.start)} → ${a.base.end ? when(a.base.end) : "open"}` : "–"),
        el("td", {}, a.candidate ? `${when(a.candidate.start)} → ${a.candidate.end ? when(a.candidate.end) : "open"}` : "–"),
        el("td", {}, (a.changes || []).join(", "), a.start_shift_ms ? ` (${a.start_shift_ms > 0 ? "+" : ""}${a.start_shift_ms / 1000} s)` : ""))))] : [];
  const lastBox = el("div");
  const draw = () => {
    if (!data) return;
    const s = data.shadow;
    const last = data.last_promotion;
    const lastLine = last ? el("p", { class: "muted", id: "last-promotion" },
      `last promoted ${when(last.at)} by ${last.by || "–"} from ${last.from} (generation ${last.generation}; ${last.written.length} files written, ${last.removed.length} removed)`) : null;
    if (!s.running) {
      // The form stays in place while the page polls (re-attaching it took the focus).
      if (!start.isConnected) {
        $("#main").replaceChildren(el("h1", {}, "Shadow"),
          el("p", {}, "No shadow runs. A shadow runs candidate rules on the live messages, from the live state; their alarms, commands and notifications are counted, never sent."),
          start, status, lastBox);
      }
      lastBox.replaceChildren(...(lastLine ? [lastLine] : []));
      return;
    }
    const summary = data.equal ? "no difference so far"
      : `${data.added.length} alarms added, ${data.removed.length} removed, ${data.changed.length} changed`;
    $("#main").replaceChildren(
      el("h1", {}, "Shadow"),
      el("p", { id: "shadow-head" }, `Candidate ${s.dir} · ${s.chains.length} chains · since ${when(s.started_at)}${s.started_by ? ` · started by ${s.started_by}` : ""} · ${data.messages} messages`),
      el("p", { id: "shadow-summary", class: data.equal ? "muted" : "differs" }, summary),
      el("div", { class: "actions" },
        el("button", { id: "promote", onclick: async () => {
          if (!confirm(`Promote ${s.dir}? Its chain files replace the rules directory's, and the rules reload.`)) return;
          try {
            const p = await api("api/rules/promote", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ by: who() || undefined }) });
            status.textContent = `promoted: generation ${p.generation}, ${p.written.length} files written`;
            load();
          } catch (e) { status.textContent = `promote: ${e.message}`; }
        } }, "Promote"),
        el("button", { id: "stop-shadow", onclick: async () => {
          try { await api("api/shadow", { method: "DELETE" }); load(); } catch (e) { status.textContent = e.message; }
        } }, "Stop")),
      status,
      ...alarmRows("shadow-removed", "Removed: the live rules raise them, the candidate does not", data.removed),
      ...alarmRows("shadow-added", "Added: only the candidate raises them", data.added),
      ...alarmRows("shadow-changed", "Changed", data.changed),
      ...(data.effects.length ? [el("h2", {}, "Effects that differ"),
        el("table", { id: "shadow-effects" },
          el("tr", {}, ["kind", "chain", "live", "candidate"].map((h) => el("th", {}, h))),
          data.effects.map((e) => el("tr", {}, el("td", {}, e.kind), el("td", {}, e.chain), el("td", { class: "num" }, String(e.base)), el("td", { class: "num" }, String(e.candidate)))))] : []),
      ...(data.examples.length ? [el("h2", {}, "First examples"),
        el("ul", { id: "shadow-examples" }, data.examples.flatMap((k) => [
          ...k.only_base.map((x) => el("li", {}, `live only · ${k.kind} · ${when(x.ts)} · ${x.device} · ${x.chain} · ${x.what}`)),
          ...k.only_candidate.map((x) => el("li", {}, `candidate only · ${k.kind} · ${when(x.ts)} · ${x.device} · ${x.chain} · ${x.what}`))]))] : []),
      ...(data.nodes.length ? [el("h2", {}, "Nodes that decide differently"),
        el("table", { id: "shadow-nodes" },
          el("tr", {}, ["chain", "node", "kind", "live", "candidate"].map((h) => el("th", {}, h))),
          data.nodes.map((n) => el("tr", {}, el("td", {}, n.chain), el("td", {}, n.node), el("td", { class: "muted" }, n.kind),
            el("td", {}, outcomes(n.base)),
            el("td", {}, outcomes(n.candidate)))))] : []),
      ...(lastLine ? [lastLine] : []));
  };
  const load = () => api("api/shadow").then((r) => { data = r; redraw(draw); }).catch((e) => { status.textContent = e.message; });
  const gen = pageGen;
  const poll = () => load().finally(() => { if (shown(gen)) timer = setTimeout(poll, 2000); });
  poll();
  return { name: "shadow", draw, stop() { clearTimeout(timer); } };
}

function tracePage() {
  const list = el("div", { id: "trace" });
  const status = el("p", { class: "muted" });
  const entries = [];
  // An entry arrives once from the API and may again as the room's snapshot: kept by `seq`.
  const seen = new Set();
  const add = (t) => { if (!seen.has(t.seq)) { seen.add(t.seq); entries.push(t); } };
  // Node kinds, by chain and node, from the chains' description.
  const kinds = new Map();
  const draw = () => {
    list.replaceChildren(...entries.slice(-100).reverse().map((t) => el("details", { open: true, "data-seq": t.seq },
      el("summary", {}, `${new Date(t.ts).toLocaleTimeString()} · ${t.device} · ${t.chain}`),
      el("table", {}, t.steps.map((s) => el("tr", {},
        el("td", {}, s.node), el("td", { class: "muted kind" }, kinds.get(`${t.chain}\u0000${s.node}`) || ""), el("td", {}, s.outcome),
        el("td", {}, el("code", {}, JSON.stringify(s.msg)))))))));
  };
  api("api/chains").then((c) => {
    for (const ch of c.chains) for (const n of ch.nodes) kinds.set(`${ch.name}\u0000${n.id}`, n.kind);
    redraw(draw);
  }).catch(() => {});
  const form = el("form", { class: "inline", onsubmit: async (ev) => {
    ev.preventDefault();
    const f = new FormData(ev.target);
    const body = {};
    for (const [k, v] of f.entries()) if (v !== "") body[k] = k === "limit" ? Number(v) : v;
    try {
      const r = await api("api/trace", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
      status.textContent = `tracing ${r.trace.device || "every device"} · ${r.trace.chain || "every chain"} · up to ${r.trace.limit} messages for ${r.trace.duration}`;
    } catch (e) { status.textContent = e.message; }
  } },
  el("label", {}, "device", el("input", { name: "device", placeholder: "any" })),
  el("label", {}, "chain", el("input", { name: "chain", placeholder: "any" })),
  el("label", {}, "messages", el("input", { name: "limit", type: "number", value: 20, min: 1 })),
  el("label", {}, "for", el("input", { name: "duration", value: "60s", size: 5 })),
  el("button", { type: "submit" }, "Trace"));
  $("#main").replaceChildren(el("h1", {}, "Trace"), form, status, list);
  api("api/trace").then((r) => { r.entries.forEach(add); redraw(draw); }).catch((e) => { status.textContent = e.message; });
  join("trace", (data) => { add(data); redraw(draw); });
  return { name: "trace", draw, stop() { leave("trace"); } };
}

function route() {
  page.stop();
  pageGen++;
  const raw = location.hash.slice(1) || "/";
  const [path, q] = raw.split("?");
  const h = decodeURIComponent(path);
  if (h.startsWith("/device/")) page = devicePage(h.slice(8));
  else if (h.startsWith("/alarm/")) page = alarmPage(h.slice(7));
  else if (h === "/alarms") page = alarmsPage();
  else if (h === "/silences") page = silencesPage(new URLSearchParams(q || ""));
  else if (h === "/chains") page = chainsPage();
  else if (h === "/shadow") page = shadowPage();
  else if (h === "/trace") page = tracePage();
  else page = devicesPage();
  ofPage(page.draw);
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("on", a.dataset.page === page.name);
}

$("#who").value = localStorage.getItem("rulechain.who") || "";
window.addEventListener("hashchange", route);
api("api/alarms").then((r) => r.alarms.forEach(upsertAlarm)).catch(() => {});
connect(false);
route();
