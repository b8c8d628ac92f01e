// recstream dashboard: plain JS, no build. Polls the API once a second.
"use strict";

const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
                 "#e377c2", "#17becf", "#bcbd22", "#7f7f7f", "#393b79", "#ad494a"];
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
let currentUser = params.get("user") || "";
let lastRecIds = new Set();
let points = [];
let medoidColor = {};

$("api-key").value = localStorage.getItem("recstream-api-key") || "";
$("api-key").addEventListener("change", (e) => localStorage.setItem("recstream-api-key", e.target.value));

async function api(path) {
  const headers = {};
  const key = $("api-key").value;
  if (key) headers["X-API-Key"] = key;
  const r = await fetch(path, { headers });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw Object.assign(new Error(body.detail || r.statusText), { status: r.status });
  return body;
}

function color(i) { return i < 0 ? "#bbbbbb" : PALETTE[i % PALETTE.length]; }  // -1: an interest not listed
function esc(s) { return String(s ?? "").replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c])); }
function ago(ms) {
  const s = Math.max(0, (Date.now() - ms) / 1000);
  if (s < 90) return `${s.toFixed(1)} s ago`;
  if (s < 5400) return `${(s / 60).toFixed(0)} min ago`;
  if (s < 172800) return `${(s / 3600).toFixed(0)} h ago`;
  return `${(s / 86400).toFixed(0)} days ago`;
}

function selectUser(u) {
  currentUser = u;
  lastRecIds = new Set();
  const url = new URL(location.href);
  url.searchParams.set("user", u);
  history.replaceState(null, "", url);
  refresh();
}
$("user-select").addEventListener("change", (e) => e.target.value && selectUser(e.target.value));
$("user-go").addEventListener("click", () => $("user-input").value && selectUser($("user-input").value.trim()));
$("user-input").addEventListener("keydown", (e) => { if (e.key === "Enter") $("user-go").click(); });

async function refreshUsers() {
  try {
    const { users } = await api("/users?limit=50");
    const sel = $("user-select");
    const keep = currentUser;
    sel.innerHTML = users.length ? "" : "<option value=''>(no users yet)</option>";
    for (const u of users) {
      const o = document.createElement("option");
      o.value = u.user_id;
      o.textContent = `${u.user_id} · ${ago(u.last_event_ts)}`;
      sel.appendChild(o);
    }
    if (!keep && users.length) selectUser(users[0].user_id);
    sel.value = currentUser;
  } catch (e) { /* status line shows the problem */ }
}

async function refreshStatus() {
  const el = $("status");
  try {
    const r = await fetch("/readyz");
    const b = await r.json();
    el.textContent = r.ok ? `ready · ${b.items} items` : `catching up… ${b.items ?? 0} items`;
    el.classList.toggle("bad", !r.ok);
  } catch (e) { el.textContent = "API unreachable"; el.classList.add("bad"); }
}

function drawPlot(interests) {
  const canvas = $("plot");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!points.length) {
    ctx.fillStyle = "#889"; ctx.font = "14px sans-serif";
    ctx.fillText("no actions to show", 20, 30);
    return;
  }
  const xs = points.map((p) => p.x), ys = points.map((p) => p.y);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const pad = 28, w = canvas.width - 2 * pad, h = canvas.height - 2 * pad;
  const sx = (x) => pad + (x1 > x0 ? (x - x0) / (x1 - x0) : 0.5) * w;
  const sy = (y) => pad + (y1 > y0 ? 1 - (y - y0) / (y1 - y0) : 0.5) * h;
  for (const p of points) { p.px = sx(p.x); p.py = sy(p.y); }
  for (const p of points.filter((q) => !q.medoid)) {
    ctx.beginPath(); ctx.arc(p.px, p.py, 4, 0, 2 * Math.PI);
    ctx.fillStyle = color(p.interest); ctx.globalAlpha = 0.75; ctx.fill(); ctx.globalAlpha = 1;
  }
  ctx.font = "bold 12px sans-serif";
  for (const p of points.filter((q) => q.medoid)) {
    ctx.beginPath();
    ctx.moveTo(p.px, p.py - 9); ctx.lineTo(p.px + 9, p.py); ctx.lineTo(p.px, p.py + 9); ctx.lineTo(p.px - 9, p.py);
    ctx.closePath(); ctx.fillStyle = color(p.interest); ctx.fill();
    ctx.lineWidth = 2; ctx.strokeStyle = "#111"; ctx.stroke();
    ctx.fillStyle = "#111";
    const label = (p.title || p.item_id).slice(0, 28);
    ctx.fillText(label, Math.min(p.px + 11, canvas.width - ctx.measureText(label).width - 4), p.py - 8);
  }
}

$("plot").addEventListener("mousemove", (e) => {
  const canvas = $("plot"), rect = canvas.getBoundingClientRect();
  const mx = (e.clientX - rect.left) * canvas.width / rect.width;
  const my = (e.clientY - rect.top) * canvas.height / rect.height;
  let best = null, bestD = 64;
  for (const p of points) {
    const d = (p.px - mx) ** 2 + (p.py - my) ** 2;
    if (d < bestD) { best = p; bestD = d; }
  }
  const tip = $("tooltip");
  if (!best) { tip.hidden = true; return; }
  tip.hidden = false;
  tip.textContent = `${best.title || best.item_id}${best.medoid ? " (medoid)" : ""}`;
  tip.style.left = `${e.clientX - canvas.parentElement.getBoundingClientRect().left + 12}px`;
  tip.style.top = `${e.clientY - canvas.parentElement.getBoundingClientRect().top + 12}px`;
});

function drawClusters(body) {
  const list = $("clusters");
  const max = Math.max(...body.interests.map((i) => i.importance), 1e-9);
  medoidColor = {};
  list.innerHTML = "";
  body.interests.forEach((it, n) => {
    medoidColor[it.medoid] = color(n);
    const li = document.createElement("li");
    li.className = "cluster";
    li.dataset.medoid = it.medoid;
    li.innerHTML = `<div class="bar-row"><span class="swatch" style="background:${color(n)}"></span>
      <span class="cluster-title">${esc(it.title || it.medoid)}</span></div>
      <div class="bar-row"><div class="bar" style="width:${Math.max(4, 260 * it.importance / max)}px;background:${color(n)}"></div>
      <span class="cluster-meta">importance ${it.importance.toFixed(2)} · ${it.size} actions · medoid ${esc(it.medoid)}</span></div>`;
    list.appendChild(li);
  });
}

function drawFreshness(interests, recs) {
  const parts = [`${interests.n_actions} recent actions`, `last event ${ago(interests.last_event_ts)}`];
  const fresh = recs.freshness_ms ?? interests.freshness_ms;
  if (fresh != null) parts.push(`<b>freshness ${fresh} ms</b> (event → recommendations reflecting it)`);
  else parts.push("freshness: n/a (loaded before this replica was live)");
  parts.push(`answered in ${recs.took_ms} ms`);
  $("freshness").innerHTML = parts.join(" · ");
}

function drawRecs(recs, interests) {
  const box = $("recs");
  const kind = $("recs-kind");
  kind.textContent = recs.cold_start ? `cold start: ${recs.reason || "popular items"}` : "personalized";
  kind.classList.toggle("cold", recs.cold_start);
  const groups = new Map();
  for (const item of recs.items) {
    const key = item.interest || "popular";
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(item);
  }
  const titleOf = Object.fromEntries(interests.interests.map((i) => [i.medoid, i.title]));
  box.innerHTML = "";
  const ids = new Set();
  for (const [medoid, items] of groups) {
    const div = document.createElement("div");
    div.className = "rec-group";
    div.dataset.medoid = medoid;
    div.style.borderLeftColor = medoidColor[medoid] || "#999";
    const head = medoid === "popular" ? "Popular now" : `because of “${esc(titleOf[medoid] || medoid)}”`;
    div.innerHTML = `<h3>${head}</h3>`;
    for (const item of items) {
      ids.add(item.item_id);
      const row = document.createElement("div");
      row.className = "rec-item" + (lastRecIds.size && !lastRecIds.has(item.item_id) ? " new" : "");
      row.dataset.item = item.item_id;
      row.innerHTML = `<span>${esc(item.title || item.item_id)}</span><span class="score">${item.score.toFixed(3)}</span>`;
      div.appendChild(row);
    }
    box.appendChild(div);
  }
  lastRecIds = ids;
}

let busy = false;
async function refresh() {
  if (!currentUser || busy) return;
  busy = true;
  const u = encodeURIComponent(currentUser);
  try {
    const recs = await api(`/users/${u}/recommendations?k=20&explain=true`);
    let interests = { interests: [], n_actions: 0, last_event_ts: Date.now() };
    try {
      interests = await api(`/users/${u}/interests?points=true`);
    } catch (e) { if (e.status !== 404) throw e; }
    points = interests.points || [];
    drawClusters(interests);
    drawPlot(interests);
    drawRecs(recs, interests);
    drawFreshness(interests, recs);
    document.body.dataset.loadedUser = currentUser;
  } catch (e) {
    $("status").textContent = `error: ${e.message}`;
    $("status").classList.add("bad");
  } finally { busy = false; }
}

refreshStatus(); refreshUsers();
if (currentUser) refresh();
setInterval(refresh, 1000);
setInterval(refreshStatus, 3000);
setInterval(refreshUsers, 5000);
