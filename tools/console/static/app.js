// The ansim control-center console page: an SVG map in a local metric projection (no tiles, no
// CDN), the alert list with the operator's buttons, agents, offline devices and walk-home
// sessions, kept live by the server-sent events of /api/events (tools/console/web.py).
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const M_PER_DEG = 111320;
const TYPE_LABELS = {
  sos: "SOS 비상", test_sos: "SOS 시험", bell_press: "비상벨", cancel: "취소", tamper: "훼손",
  low_battery: "배터리 부족", monitor: "귀가 요청", lamp_fault: "가로등 고장",
  device_offline: "장치 꺼짐", device_online: "장치 복귀",
};
const LIST_MAX = 200;  // alerts in the list: open ones first, then the newest
const STATE_LABELS = {
  new: "신규 new", acknowledged: "확인됨 acknowledged", dispatched: "출동 dispatched",
  resolved: "해결 resolved", escalated: "이관 escalated",
};
const CONNECTION_LABELS = {
  starting: "시작 중", connecting: "연결 중", connected: "연결됨", unreachable: "브로커 연결 불가",
  refused: "브로커 거부", disconnected: "연결 끊김", stopped: "콘솔 종료",
};

let state = { seq: 0, alerts: [], agents: [], offline: [], lights: [], walks: [], site: null, malformed: {}, connection: {} };
let selectedWalk = null;
let renderPending = false;
let view = null;  // the projection of the last render

// -- state -----------------------------------------------------------------------------------

function byKey(list, key, item) {
  const i = list.findIndex((x) => x[key] === item[key]);
  if (i < 0) list.push(item); else list[i] = item;
}

function apply(event) {
  if (event.seq <= state.seq) return;
  state.seq = event.seq;
  const d = event.data;
  switch (event.kind) {
    case "alert": byKey(state.alerts, "alert_id", d); break;
    case "agent": byKey(state.agents, "agent", d); break;
    case "light": byKey(state.lights, "device", d); break;
    case "walk": byKey(state.walks, "session", d); break;
    case "forget": state.alerts = state.alerts.filter((a) => a.alert_id !== d.alert_id); break;
    case "offline": byKey(state.offline, "device", d); break;
    case "online": state.offline = state.offline.filter((o) => o.device !== d.device); break;
    case "malformed": state.malformed[d.channel] = d.count; break;
    case "connection": state.connection = d; break;
  }
  scheduleRender();
}

function scheduleRender() {
  if (renderPending) return;
  renderPending = true;
  setTimeout(() => { renderPending = false; render(); }, 0);
}

// Where an alert is: the receivers' RSSI-weighted estimate when several heard it without a fix.
function where(a) {
  return a.estimate || a.location;
}

// -- projection ------------------------------------------------------------------------------

function points() {
  const pts = [];
  const site = state.site || { devices: [], cameras: [], facilities: [] };
  for (const list of [site.devices, site.cameras, site.facilities]) {
    for (const p of list) if (p.lat !== undefined) pts.push([p.lat, p.lon, 0]);
  }
  for (const a of state.alerts) {
    const loc = where(a);
    if (loc) pts.push([loc.lat, loc.lon, loc.accuracy_m || 0]);
    for (const h of a.heard) pts.push([h.lat, h.lon, 0]);
  }
  for (const a of state.agents) if (a.position) pts.push([a.position[0], a.position[1], 0]);
  for (const w of state.walks) for (const p of w.route) pts.push([p[0], p[1], 0]);
  return pts;
}

function makeView(svg) {
  const pts = points();
  if (!pts.length) return null;
  const lat0 = pts.reduce((s, p) => s + p[0], 0) / pts.length;
  const lon0 = pts.reduce((s, p) => s + p[1], 0) / pts.length;
  const kx = M_PER_DEG * Math.cos(lat0 * Math.PI / 180);
  const project = (lat, lon) => [(lon - lon0) * kx, -(lat - lat0) * M_PER_DEG];
  let minX = Infinity, minY = Infinity, maxX = -Infinity, maxY = -Infinity;
  for (const [lat, lon, r] of pts) {
    const [x, y] = project(lat, lon);
    minX = Math.min(minX, x - r); maxX = Math.max(maxX, x + r);
    minY = Math.min(minY, y - r); maxY = Math.max(maxY, y + r);
  }
  let w = Math.max(maxX - minX, 100), h = Math.max(maxY - minY, 100);
  const box = svg.getBoundingClientRect();
  const aspect = box.width > 0 && box.height > 0 ? box.width / box.height : 1.5;
  if (w / h < aspect) w = h * aspect; else h = w / aspect;
  w *= 1.25; h *= 1.25;  // margins
  const cx = (minX + maxX) / 2, cy = (minY + maxY) / 2;
  const px = box.width > 0 ? w / box.width : 1;  // metres per screen pixel
  return {
    project, px, lat0, lon0, kx,
    viewBox: [cx - w / 2, cy - h / 2, w, h],
    unproject: (x, y) => [lat0 - y / M_PER_DEG, lon0 + x / kx],
  };
}

// -- drawing ---------------------------------------------------------------------------------

function el(tag, attrs, parent) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== undefined && v !== null) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}

function label(parent, x, y, text, size, cls) {
  const t = el("text", { x, y, "font-size": size, "stroke-width": size / 5, class: "map-label " + (cls || "") }, parent);
  t.textContent = text;
  return t;
}

function renderMap() {
  const svg = document.getElementById("map");
  view = makeView(svg);
  svg.replaceChildren();
  if (!view) {
    svg.setAttribute("viewBox", "0 0 300 200");
    label(svg, 20, 100, "표시할 위치가 없습니다 (nothing to show yet)", 12);
    return;
  }
  svg.setAttribute("viewBox", view.viewBox.join(" "));
  const px = view.px;
  const P = (lat, lon) => view.project(lat, lon);
  const site = state.site || { devices: [], cameras: [], facilities: [] };
  const layers = {};
  for (const name of ["street", "facilities", "cameras", "devices", "lights", "agents", "walks", "accuracy", "alerts"]) {
    layers[name] = el("g", { class: "layer layer-" + name }, svg);
  }
  // the street, drawn through the streetlights in registry order
  const lightsPos = site.devices.filter((d) => d.role === "streetlight" && d.lat !== undefined);
  if (lightsPos.length > 1) {
    el("polyline", { class: "street-line", "stroke-width": 14 * px,
      points: lightsPos.map((d) => P(d.lat, d.lon).join(",")).join(" ") }, layers.street);
  }
  for (const f of site.facilities) {
    const [x, y] = P(f.lat, f.lon);
    const s = 7 * px;
    el("path", { class: "facility", "data-facility": f.id,
      d: `M${x},${y - s} L${x + s},${y + s} L${x - s},${y + s} Z` }, layers.facilities);
    label(layers.facilities, x + 9 * px, y + 4 * px, f.name, 11 * px);
  }
  for (const c of site.cameras) {
    const [x, y] = P(c.lat, c.lon);
    el("rect", { class: "camera", "data-camera": c.id, x: x - 4 * px, y: y - 4 * px, width: 8 * px, height: 8 * px },
      layers.cameras);
    label(layers.cameras, x + 6 * px, y + 12 * px, c.id, 9 * px);
  }
  const lightStates = Object.fromEntries(state.lights.map((l) => [l.device, l]));
  const offline = new Set(state.offline.map((o) => o.device));
  for (const d of site.devices) {
    if (d.lat === undefined) continue;
    const [x, y] = P(d.lat, d.lon);
    if (d.role === "streetlight") {
      const ls = lightStates[d.id];
      const level = ls ? ls.actual_pct : null;
      el("circle", { class: "light" + (ls && ls.blinking ? " blinking" : "") + (offline.has(d.id) ? " offline" : ""),
        "data-device": d.id, "data-mode": ls ? ls.mode : "unknown", "data-level": level === null ? "" : level,
        cx: x, cy: y, r: 6 * px, "stroke-width": 1.5 * px,
        fill: level === null ? "#bbb" : `rgba(245, 197, 24, ${0.25 + 0.75 * level / 100})` }, layers.lights);
    } else {
      el("circle", { class: `device device-${d.role}` + (offline.has(d.id) ? " offline" : ""), "data-device": d.id,
        cx: x, cy: y, r: 5 * px, "stroke-width": 1.5 * px }, layers.devices);
    }
  }
  for (const a of state.agents) {
    if (!a.position) continue;
    const [x, y] = P(a.position[0], a.position[1]);
    const g = el("g", { class: "agent-marker", "data-agent": a.agent, "data-state": a.state }, layers.agents);
    el("rect", { x: x - 6 * px, y: y - 6 * px, width: 12 * px, height: 12 * px, "stroke-width": 1.5 * px }, g);
    label(g, x + 8 * px, y - 8 * px, a.agent, 10 * px);
  }
  for (const w of state.walks) {
    if (w.state !== "active") continue;
    el("polyline", { class: "walk-route", "data-session": w.session, "stroke-width": 3 * px,
      points: w.route.map((p) => P(p[0], p[1]).join(",")).join(" ") }, layers.walks);
    const [x, y] = P(w.position[0], w.position[1]);
    el("circle", { class: "walker", "data-session": w.session, cx: x, cy: y, r: 7 * px, "stroke-width": 2 * px }, layers.walks);
    label(layers.walks, x + 9 * px, y + 4 * px, "귀가 " + w.session, 11 * px);
  }
  for (const a of state.alerts) {
    const loc = where(a);
    if (!loc) continue;
    const [x, y] = P(loc.lat, loc.lon);
    if (a.estimate) {  // a line from each receiver that heard it
      const receivers = a.reports.filter((r) => r.location && r.location.source === "receiver")
        .map((r) => [r.agent, r.location.lat, r.location.lon]).concat(a.heard.map((h) => [h.agent, h.lat, h.lon]));
      for (const [agent, lat, lon] of receivers) {
        const [rx, ry] = P(lat, lon);
        el("line", { class: "receiver-line", "data-alert-id": a.alert_id, "data-agent": agent, x1: rx, y1: ry, x2: x, y2: y,
          "stroke-width": 1.5 * px }, layers.accuracy);
      }
    }
    if (loc.accuracy_m) {
      el("circle", { class: "accuracy-circle", "data-alert-id": a.alert_id, cx: x, cy: y, r: loc.accuracy_m,
        "stroke-width": 1.5 * px }, layers.accuracy);
    }
    const g = el("g", { class: `alert-marker state-${a.state}`, id: "alert-marker-" + a.alert_id,
      "data-alert-id": a.alert_id, "data-state": a.state, "data-type": a.type }, layers.alerts);
    el("circle", { cx: x, cy: y, r: 9 * px, "stroke-width": 2 * px }, g);
    label(g, x + 11 * px, y - 9 * px, TYPE_LABELS[a.type] || a.type, 13 * px, "alert-label");
  }
  const scale = document.getElementById("scale");
  scale.textContent = `1 px ≈ ${px.toFixed(2)} m`;
}

function text(tag, content, cls) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  e.textContent = content;
  return e;
}

function fmtPos(loc) {
  if (!loc) return "위치 없음 (no location)";
  const acc = loc.accuracy_m === null || loc.accuracy_m === undefined ? "?" : Math.round(loc.accuracy_m);
  const source = loc.source === "rssi" ? `수신 세기 추정 RSSI estimate, ${loc.receivers} receivers` : loc.source || "?";
  return `${loc.lat.toFixed(5)}, ${loc.lon.toFixed(5)} ±${acc} m (${source})`;
}

function button(cls, content, onClick, disabled) {
  const b = text("button", content, cls);
  b.type = "button";
  b.disabled = !!disabled;
  b.addEventListener("click", onClick);
  return b;
}

function renderAlerts() {
  const list = document.getElementById("alerts");
  list.replaceChildren();
  const order = { new: 0, escalated: 0, acknowledged: 1, dispatched: 2, resolved: 3 };
  const alerts = [...state.alerts].sort((a, b) => (order[a.state] - order[b.state]) || (b.first_seen - a.first_seen));
  for (const a of alerts.slice(0, LIST_MAX)) {
    const li = document.createElement("li");
    li.className = `alert-item state-${a.state}`;
    li.dataset.alertId = a.alert_id;
    li.dataset.state = a.state;
    li.appendChild(text("span", STATE_LABELS[a.state] || a.state, "state"));
    li.appendChild(text("div", `${TYPE_LABELS[a.type] || a.type} · ${a.device.name} (${a.device.id})`, "title"));
    li.appendChild(text("div", `${a.alert_id} · ${new Date(a.first_seen * 1000).toLocaleTimeString("ko-KR")}`, "detail"));
    li.appendChild(text("div", "위치 " + fmtPos(where(a)), "detail location"));
    if (a.cameras.length) {
      li.appendChild(text("div", "CCTV " + a.cameras.map((c) => `${c.name} ${c.distance_m === null ? "" : Math.round(c.distance_m) + " m"}`).join(", "), "detail cameras"));
    }
    li.appendChild(text("div", "에이전트 " + a.reports.map((r) => r.agent + (r.rssi === null ? "" : ` (${r.rssi} dBm)`)).join(", "), "detail reports"));
    if (a.heard.length) {
      li.appendChild(text("div", "수신 heard " + a.heard.map((h) => h.agent + (h.rssi === null ? "" : ` (${h.rssi} dBm)`)).join(", "), "detail heard"));
    }
    if (a.escalated) li.appendChild(text("div", `상급 이관: ${a.escalated_from} 미확인 (escalated)`, "detail"));
    if (a.acks.length) {
      li.appendChild(text("div", "보낸 확인 " + a.acks.map((k) => `${k.status}→${k.agent}: ${k.result}`).join(", "), "detail acks"));
    }
    const buttons = document.createElement("div");
    buttons.className = "buttons";
    const rank = { new: 0, escalated: 0, acknowledged: 1, dispatched: 2, resolved: 3 }[a.state];
    buttons.appendChild(button("btn-ack", "확인 ack", () => act(a.alert_id, "ack"), rank >= 1));
    buttons.appendChild(button("btn-dispatch", "출동 dispatch", () => act(a.alert_id, "dispatch"), rank >= 2 || a.test));
    buttons.appendChild(button("btn-resolve", "해결 resolve", () => act(a.alert_id, "resolve"), rank >= 3));
    if (a.type === "monitor") {
      buttons.appendChild(button("btn-walk", "귀가 모니터링", () => prefillWalk(a)));
    }
    li.appendChild(buttons);
    list.appendChild(li);
  }
}

function renderSide() {
  const conn = document.getElementById("connection");
  conn.dataset.state = state.connection.state || "starting";
  conn.textContent = `${CONNECTION_LABELS[state.connection.state] || state.connection.state} ${state.connection.detail || ""}`;
  const open = state.alerts.filter((a) => a.state !== "resolved").length;
  const bad = Object.values(state.malformed).reduce((s, n) => s + n, 0);
  document.getElementById("counts").textContent = `미해결 ${open} open · 오류 메시지 ${bad} malformed`;
  const fresh = state.alerts.filter((a) => a.state === "new" || a.state === "escalated").length;
  document.title = (fresh ? `(${fresh}) ` : "") + "안심 관제 콘솔 · ansim control center";
  const agents = document.getElementById("agents");
  agents.replaceChildren(...state.agents.map((a) => {
    const li = text("li", `${a.state === "online" ? "●" : "○"} ${a.agent} ${a.state} (session ${a.session}${a.site ? ", " + a.site : ""})`, "agent-item");
    li.dataset.agent = a.agent; li.dataset.state = a.state;
    return li;
  }));
  const offline = document.getElementById("offline");
  offline.replaceChildren(...state.offline.map((o) => {
    const li = text("li", `${o.device} · ${o.reason || ""} · 마지막 ${o.last_heard || "?"} · ${o.agent}`, "offline-item");
    li.dataset.device = o.device;
    return li;
  }));
  const select = document.getElementById("walk-agent");
  const keep = select.value;
  select.replaceChildren(...state.agents.map((a) => { const o = text("option", a.agent); o.value = a.agent; return o; }));
  if (keep) select.value = keep;
  const walks = document.getElementById("walks");
  walks.replaceChildren(...state.walks.map((w) => {
    const li = text("li", `${w.session} → ${w.agent}: ${w.state} @ ${w.position[0].toFixed(5)}, ${w.position[1].toFixed(5)} `,
      "walk-item" + (w.session === selectedWalk ? " selected" : ""));
    li.dataset.session = w.session; li.dataset.state = w.state;
    if (w.state === "active") {
      li.appendChild(button("btn-walk-select", "선택 select", () => { selectedWalk = w.session; scheduleRender(); }));
      li.appendChild(button("btn-walk-arrived", "도착 arrived", () => walk({ session: w.session, action: "arrived" })));
      li.appendChild(button("btn-walk-stop", "중지 stop", () => walk({ session: w.session, action: "stop" })));
    }
    return li;
  }));
  const route = document.getElementById("walk-route");
  if (!route.value && state.site) {
    const lights = state.site.devices.filter((d) => d.role === "streetlight" && d.lat !== undefined);
    if (lights.length > 1) route.value = [lights[0], lights[lights.length - 1]].map((d) => `${d.lat},${d.lon}`).join("\n");
  }
  const session = document.getElementById("walk-session");
  if (!session.value) session.value = "walk-" + (state.walks.length + 1);
}

function render() {
  renderMap();
  renderAlerts();
  renderSide();
}

// -- actions ---------------------------------------------------------------------------------

async function post(path, body) {
  const message = document.getElementById("message");
  try {
    const r = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body || {}) });
    const answer = await r.json();
    message.textContent = r.ok ? "" : `오류 (error): ${answer.error}`;
    return answer;
  } catch (err) {
    message.textContent = `오류 (error): ${err}`;
    return null;
  }
}

function act(alertId, action) {
  return post(`/api/alerts/${encodeURIComponent(alertId)}/${action}`, {});
}

function walk(body) {
  return post("/api/monitor", body);
}

function prefillWalk(alert) {
  const agent = alert.agents[0];
  document.getElementById("walk-agent").value = agent;
  document.getElementById("walk-session").value = "walk-" + alert.device.id;
  const loc = where(alert);
  if (loc) {
    const route = document.getElementById("walk-route");
    const lines = route.value.split("\n").filter((l) => l.trim());
    const home = lines.length ? lines[lines.length - 1] : `${loc.lat},${loc.lon}`;
    route.value = `${loc.lat},${loc.lon}\n${home}`;
  }
}

document.getElementById("walk-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const route = document.getElementById("walk-route").value.split("\n").map((l) => l.trim()).filter((l) => l)
    .map((l) => l.split(",").map(Number));
  const session = document.getElementById("walk-session").value;
  const answer = await walk({ agent: document.getElementById("walk-agent").value, session, action: "start", route });
  if (answer && answer.session) { selectedWalk = session; document.getElementById("walk-session").value = ""; }
});

document.getElementById("map").addEventListener("click", (e) => {
  const w = state.walks.find((x) => x.session === selectedWalk && x.state === "active");
  if (!w || !view) return;
  const svg = document.getElementById("map");
  const pt = svg.createSVGPoint();
  pt.x = e.clientX; pt.y = e.clientY;
  const m = pt.matrixTransform(svg.getScreenCTM().inverse());
  const [lat, lon] = view.unproject(m.x, m.y);
  walk({ session: w.session, action: "update", position: [lat, lon] });
});

window.addEventListener("resize", scheduleRender);

// -- live updates ----------------------------------------------------------------------------

function connect() {
  const source = new EventSource("/api/events");
  source.addEventListener("snapshot", (e) => { state = JSON.parse(e.data); scheduleRender(); });
  source.addEventListener("change", (e) => apply(JSON.parse(e.data)));
  source.onerror = () => {
    state.connection = { state: "disconnected", detail: "콘솔 서버 (console server)" };
    scheduleRender();  // EventSource reconnects by itself; the next snapshot replaces everything
  };
}

connect();
