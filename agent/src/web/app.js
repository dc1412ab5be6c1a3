// The live cluster view: renders each snapshot the agent sends on /events (server-sent
// events). No framework, no build step: plain DOM built with textContent (never innerHTML), so
// a hostile name in the cluster cannot inject markup.
"use strict";

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function bytes(n) {
  if (!n) return "0";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}

function cpus(nano) {
  return (nano / 1e9).toFixed(nano % 1e9 ? 2 : 0);
}

function renderServices(snap) {
  const body = document.querySelector("#services tbody");
  body.replaceChildren();
  if (!snap.services.length) {
    const tr = el("tr");
    const td = el("td", "empty", "no services");
    td.colSpan = 6;
    tr.append(td);
    body.append(tr);
  }
  for (const s of snap.services) {
    const tr = el("tr", "service");
    tr.dataset.service = s.spec.name;
    const mode = s.spec.mode === "Global" || s.spec.mode.Global !== undefined ? "global" : "replicated";
    const converged = s.running === s.desired;
    const conv = el("td", "conv " + (converged ? "ok" : "no"), s.running + "/" + s.desired);
    const ports = (s.spec.task.ports || []).map(p => p.published + ":" + p.target + "/" + (p.udp ? "udp" : "tcp")).join(", ");
    const update = s.update_status ? s.update_status.state : "";
    tr.append(el("td", "", s.spec.name), el("td", "", mode), conv, el("td", "", s.spec.task.image),
              el("td", "", ports), el("td", "", update));
    body.append(tr);
  }
}

function renderNodes(snap) {
  const box = document.getElementById("nodes");
  box.replaceChildren();
  const reserved = {};
  const bySvc = {};
  for (const s of snap.services) bySvc[s.id] = s;
  const tasks = snap.tasks.filter(t => t.current && t.desired_state !== "Shutdown" && t.desired_state !== "Remove");
  for (const t of tasks) {
    if (t.state !== "Running" || !bySvc[t.service_id]) continue;
    const r = bySvc[t.service_id].spec.task.resources.reservations;
    const acc = reserved[t.node_id] || (reserved[t.node_id] = { cpu: 0, mem: 0 });
    acc.cpu += r.nano_cpus || 0;
    acc.mem += r.memory_bytes || 0;
  }
  const nodes = snap.nodes.slice().sort((a, b) => a.hostname.localeCompare(b.hostname, undefined, { numeric: true }));
  for (const n of nodes) {
    const col = el("div", "node" + (n.status === "Down" ? " down" : ""));
    col.dataset.node = n.hostname;
    const head = el("div", "head");
    head.append(el("div", "name", n.hostname));
    const badges = el("div", "badges");
    badges.append(el("span", "badge role", n.role));
    if (n.manager_status === "Leader") badges.append(el("span", "badge leader", "leader"));
    badges.append(el("span", "badge " + n.status.toLowerCase(), n.status));
    badges.append(el("span", "badge " + n.availability.toLowerCase(), n.availability));
    head.append(badges);
    const mine = tasks.filter(t => t.node_id === n.id);
    const r = reserved[n.id] || { cpu: 0, mem: 0 };
    head.append(el("div", "res", mine.filter(t => t.state === "Running").length + " running · CPU " +
      cpus(r.cpu) + "/" + cpus(n.nano_cpus) + " · mem " + bytes(r.mem) + "/" + bytes(n.memory_bytes)));
    col.append(head);
    const list = el("div", "tasks");
    if (!mine.length) list.append(el("div", "empty", "no tasks"));
    mine.sort((a, b) => a.name.localeCompare(b.name, undefined, { numeric: true }));
    for (const t of mine) {
      const card = el("div", "task " + t.state.toLowerCase());
      card.dataset.service = t.service_name;
      card.dataset.state = t.state.toLowerCase();
      card.title = t.id + (t.err ? " — " + t.err : "");
      card.append(el("div", "svc", t.name), el("div", "st", t.state + (t.err ? ": " + t.err : "")));
      list.append(card);
    }
    col.append(list);
    box.append(col);
  }
}

function render(snap) {
  const err = document.getElementById("error");
  err.style.display = snap.error ? "block" : "none";
  err.textContent = snap.error || "";
  const leader = snap.nodes.find(n => n.manager_status === "Leader");
  const ready = snap.nodes.filter(n => n.status === "Ready").length;
  const count = (n, what) => n + " " + what + (n === 1 ? "" : "s");
  document.getElementById("summary").textContent = count(snap.nodes.length, "node") + " (" + ready + " ready) · " +
    count(snap.services.length, "service") + " · leader " + (leader ? leader.hostname : "none") +
    " · updated " + new Date(snap.at_ms).toLocaleTimeString();
  renderServices(snap);
  renderNodes(snap);
}

function connect() {
  const conn = document.getElementById("conn");
  const source = new EventSource("events");
  source.onopen = () => { conn.textContent = "live"; conn.className = "live"; };
  source.onerror = () => { conn.textContent = "reconnecting"; conn.className = ""; };
  source.onmessage = (e) => {
    try { render(JSON.parse(e.data)); } catch (x) { console.error(x); }
  };
}

connect();
