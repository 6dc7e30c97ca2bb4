// gjproxy's live console: one Server-Sent Events stream (/api/events) drives the whole page.
// Plain DOM, no library, no build step. Every text from the network goes in as textContent.
"use strict";

const KEY = "gjproxy-console-secret";
let secret = null;
let source = null;
let latest = null;
let sortKey = "rate";
let ascending = false;

const $ = (id) => document.getElementById(id);

function takeSecretFromUrl() {
  const url = new URL(location.href);
  const token = url.searchParams.get("token");
  if (token) {
    sessionStorage.setItem(KEY, token);
    url.searchParams.delete("token");
    history.replaceState(null, "", url.pathname + url.search + url.hash);
  }
  return sessionStorage.getItem(KEY);
}

function showLogin(why) {
  if (source) { source.close(); source = null; }
  $("console").hidden = true;
  $("login").hidden = false;
  $("login-why").textContent = why;
  setState("locked", "");
}

function setState(text, kind) {
  const state = $("state");
  state.textContent = text;
  state.className = "state " + kind;
}

async function start() {
  secret = takeSecretFromUrl();
  if (!secret) { showLogin("This console needs its secret."); return; }
  let answer;
  try {
    answer = await fetch("/version", { headers: { Authorization: "Bearer " + secret } });
  } catch (error) {
    setState("unreachable", "lost");
    setTimeout(start, 3000);
    return;
  }
  if (answer.status === 401) {
    sessionStorage.removeItem(KEY);
    showLogin("That secret is wrong.");
    return;
  }
  $("version").textContent = (await answer.json()).version;
  $("login").hidden = true;
  $("console").hidden = false;
  source = new EventSource("/api/events?token=" + encodeURIComponent(secret));
  source.onmessage = (event) => { latest = JSON.parse(event.data); render(latest); setState("live", "live"); };
  source.onerror = () => { setState("reconnecting", "lost"); };
}

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY, $("secret").value);
  $("secret").value = "";
  start();
});

// --- formatting -----------------------------------------------------------------------------

function bytes(count) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = count, unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit++; }
  return (unit ? value.toFixed(1) : String(value)) + " " + units[unit];
}

function rate(count) { return bytes(count) + "/s"; }

function age(seconds) {
  if (seconds < 60) return Math.floor(seconds) + " s";
  if (seconds < 3600) return Math.floor(seconds / 60) + " min " + Math.floor(seconds % 60) + " s";
  return Math.floor(seconds / 3600) + " h " + Math.floor((seconds % 3600) / 60) + " min";
}

function row(cells, attributes) {
  const tr = document.createElement("tr");
  for (const [name, value] of Object.entries(attributes || {})) tr.setAttribute(name, value);
  for (const cell of cells) {
    const td = document.createElement("td");
    if (cell instanceof Node) td.appendChild(cell);
    else if (Array.isArray(cell)) { td.textContent = cell[0]; td.className = cell[1]; }
    else td.textContent = cell;
    tr.appendChild(td);
  }
  return tr;
}

function fill(table, rows) {
  const body = $(table).querySelector("tbody");
  body.replaceChildren(...rows);
}

// --- rendering ------------------------------------------------------------------------------

function render(data) {
  $("role").textContent = data.role;
  fill("tunnels", data.tunnels.map((t) => row([
    t.server, t.user || "-", t.dialect,
    [t.state, t.state === "up" ? "ok" : "bad"],
    age(t.for),
    t.rtt_ms === null ? "-" : t.rtt_ms + " ms",
    [String(t.channels), "num"], [rate(t.upload_rate), "num"], [rate(t.download_rate), "num"],
  ], { "data-id": t.id, "data-state": t.state })));
  $("rate-up").textContent = rate(data.traffic.up);
  $("rate-down").textContent = rate(data.traffic.down);
  drawChart(data.history);
  renderConnections(data);
  $("users-section").hidden = !data.users;
  if (data.users) {
    fill("users", data.users.map((u) => row([
      u.user, String(u.tunnels.length), String(u.connections), String(u.refusals),
    ])));
  }
  fill("notes", data.notes.map((n) => row([
    n.time.replace("T", " ").replace("Z", ""), [n.kind, n.kind === "warning" ? "" : "bad"],
    n.user || "-", n.source || "-", n.target || "-", n.text,
  ], { "data-kind": n.kind })));
}

function renderConnections(data) {
  const filter = $("filter").value.trim().toLowerCase();
  let rows = data.connections.map((c) => ({ ...c, rate: c.upload_rate + c.download_rate }));
  if (filter) {
    rows = rows.filter((c) => [c.source, c.destination, c.route, c.user, c.tunnel]
      .some((text) => String(text).toLowerCase().includes(filter)));
  }
  rows.sort((a, b) => {
    const x = a[sortKey], y = b[sortKey];
    const order = typeof x === "number" ? x - y : String(x).localeCompare(String(y));
    return ascending ? order : -order;
  });
  const shown = data.open > data.connections.length ? ` (the busiest ${data.connections.length} shown)` : "";
  $("open-count").textContent = `${data.open} open${shown}`;
  const tunnels = Object.fromEntries(data.tunnels.map((t) => [t.id, t.server]));
  fill("connections", rows.map((c) => {
    const button = document.createElement("button");
    button.className = "close";
    button.textContent = "close";
    button.title = "reset this connection";
    button.addEventListener("click", () => closeConnection(c.id, button));
    return row([
      c.source, c.destination, c.route, c.user || "-", tunnels[c.tunnel] || c.tunnel || "-",
      [bytes(c.upload), "num bytes-up"], [bytes(c.download), "num bytes-down"],
      [rate(c.rate), "num"], [age(c.age), "num"], button,
    ], { "data-id": c.id, "data-upload": c.upload, "data-download": c.download });
  }));
}

async function closeConnection(id, button) {
  button.disabled = true;
  const answer = await fetch("/api/connections/" + encodeURIComponent(id), {
    method: "DELETE", headers: { Authorization: "Bearer " + secret },
  });
  if (answer.status === 401) showLogin("That secret is no longer accepted.");
}

for (const th of document.querySelectorAll("#connections th[data-key]")) {
  th.addEventListener("click", () => {
    const key = th.dataset.key;
    ascending = key === sortKey ? !ascending : false;
    sortKey = key;
    for (const other of document.querySelectorAll("#connections th")) other.classList.remove("sorted", "asc");
    th.classList.add("sorted");
    if (ascending) th.classList.add("asc");
    if (latest) renderConnections(latest);
  });
}
$("filter").addEventListener("input", () => { if (latest) renderConnections(latest); });

// --- the chart: two lines, bytes/s up and down, over the last 5 minutes ---------------------

function drawChart(points) {
  const canvas = $("chart");
  const scale = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 900, height = canvas.clientHeight || 160;
  if (canvas.width !== width * scale) { canvas.width = width * scale; canvas.height = height * scale; }
  const g = canvas.getContext("2d");
  g.setTransform(scale, 0, 0, scale, 0, 0);
  g.clearRect(0, 0, width, height);
  canvas.dataset.points = String(points.length);
  const left = 70, bottom = height - 18, top = 8;
  const peak = Math.max(1024, ...points.map((p) => Math.max(p[1], p[2])));
  g.strokeStyle = "#e3e6eb"; g.fillStyle = "#5b6b82"; g.font = "11px system-ui, sans-serif";
  for (let i = 0; i <= 4; i++) {
    const y = bottom - ((bottom - top) * i) / 4;
    g.beginPath(); g.moveTo(left, y); g.lineTo(width - 4, y); g.stroke();
    g.fillText(rate(Math.round((peak * i) / 4)), 4, y + 4);
  }
  g.fillText("-5 min", left, height - 4);
  g.fillText("now", width - 28, height - 4);
  if (!points.length) return;
  const now = points[points.length - 1][0];
  const x = (at) => left + ((width - 4 - left) * (300 - (now - at))) / 300;
  const y = (value) => bottom - ((bottom - top) * value) / peak;
  for (const [index, color] of [[1, "#d9822b"], [2, "#2b6cd9"]]) {
    g.strokeStyle = color; g.lineWidth = 1.5; g.beginPath();
    points.forEach((p, i) => (i ? g.lineTo(x(p[0]), y(p[index])) : g.moveTo(x(p[0]), y(p[index]))));
    g.stroke();
  }
}

start();
