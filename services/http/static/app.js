// agent-mesh dashboard: plain JS, no build step. Talks to the bridge's own routes only.
"use strict";
const $ = (id) => document.getElementById(id);
const enc = encodeURIComponent;
let token = sessionStorage.getItem("mesh-token") || "";
let current = null;   // {type, name}
let socket = null;
let requestId = 0;
let approvalsTimer = null;

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (token) headers["Authorization"] = "Bearer " + token;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) { $("token-form").hidden = false; throw new Error("sign in with a bearer token"); }
  const text = await response.text();
  const body = text ? JSON.parse(text) : null;
  if (!response.ok && response.status !== 202) {
    const err = new Error((body && (body.detail || body.title)) || response.statusText);
    err.problem = body; throw err;
  }
  return body;
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  for (const child of children) node.append(child);
  return node;
}

function setConnected(on) {
  $("conn").textContent = on ? "live" : "offline";
  $("conn").className = "pill " + (on ? "on" : "off");
}

async function loadTypes() {
  try {
    const { types } = await api("/agents");
    const list = $("types");
    list.replaceChildren();
    if (!types.length) list.append(el("li", { className: "muted", textContent: "no agent types are served" }));
    for (const t of types) {
      const item = el("li", { title: t.description || "" }, t.type, el("span", { className: "count", textContent: t.workers + "×" }));
      item.dataset.type = t.type;
      item.onclick = () => loadInstances(t.type);
      list.append(item);
    }
  } catch (e) { $("types").replaceChildren(el("li", { className: "error", textContent: e.message })); }
}

async function loadInstances(type) {
  $("open-type").value = type;
  $("type-label").textContent = type;
  for (const li of $("types").children) li.classList.toggle("active", li.dataset.type === type);
  try {
    const { instances } = await api("/agents/" + enc(type));
    const list = $("instances");
    list.replaceChildren();
    if (!instances.length) list.append(el("li", { className: "muted", textContent: "no stored instances" }));
    for (const name of instances) {
      const item = el("li", { textContent: name });
      if (current && current.type === type && current.name === name) item.classList.add("active");
      item.onclick = () => openInstance(type, name);
      list.append(item);
    }
  } catch (e) { $("instances").replaceChildren(el("li", { className: "error", textContent: e.message })); }
}

function base(type, name) { return "/agents/" + enc(type) + "/" + enc(name); }

async function openInstance(type, name) {
  current = { type, name };
  if ($("type-label").textContent !== type) loadInstances(type);
  for (const li of $("instances").children) li.classList.toggle("active", li.textContent === name);
  location.hash = "#/" + enc(type) + "/" + enc(name);
  $("empty").hidden = true;
  $("instance").hidden = false;
  $("title").textContent = type + "/" + name;
  $("state").textContent = "—";
  $("revision").textContent = "";
  $("timeline").replaceChildren();
  $("reply").textContent = "";
  connect();
  loadApprovals();
  clearInterval(approvalsTimer);
  approvalsTimer = setInterval(loadApprovals, 3000);
}

async function connect() {
  if (socket) { socket.onclose = null; socket.close(); }
  const target = current;
  let query = "";
  if (token) {
    try { query = "?ticket=" + enc((await api("/auth/tickets", { method: "POST" })).ticket); } catch (e) { return; }
  }
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(proto + "//" + location.host + base(target.type, target.name) + "/ws" + query);
  socket = ws;
  ws.onopen = () => setConnected(true);
  ws.onclose = () => {
    setConnected(false);
    if (socket === ws && current === target) setTimeout(() => { if (socket === ws) connect(); }, 1000);
  };
  ws.onmessage = (message) => {
    const data = JSON.parse(message.data);
    if (data.type === "state") showState(data);
    else if (data.type === "event") { addTimeline(data.kind, data.data); if (/approv/.test(data.kind)) loadApprovals(); }
    else if (data.type === "reply") { $("reply").className = ""; $("reply").textContent = JSON.stringify(data.body, null, 2); }
    else if (data.type === "error") { $("reply").className = "error"; $("reply").textContent = data.problem.code + ": " + data.problem.detail; }
  };
}

function showState(data) {
  $("state").textContent = data.state === null ? "(no state saved yet)" : JSON.stringify(data.state, null, 2);
  $("revision").textContent = data.revision ? "rev " + data.revision : "";
  addTimeline("state", data.state);
  const listed = Array.from($("instances").children).some((li) => li.textContent === current.name);
  if (data.revision && !listed) loadInstances(current.type);
}

function addTimeline(kind, data) {
  const time = new Date().toLocaleTimeString();
  const item = el("li", {}, el("span", { className: "muted", textContent: time }),
    el("span", { className: "kind", textContent: kind }), el("pre", { textContent: JSON.stringify(data) }));
  $("timeline").prepend(item);
  while ($("timeline").children.length > 200) $("timeline").lastChild.remove();
}

async function send(event) {
  event.preventDefault();
  let body;
  try { body = JSON.parse($("message").value); }
  catch (e) { $("reply").className = "error"; $("reply").textContent = "not JSON: " + e.message; return; }
  $("reply").className = "muted"; $("reply").textContent = "sending…";
  if (socket && socket.readyState === WebSocket.OPEN) {
    socket.send(JSON.stringify({ type: "request", id: ++requestId, body }));
    return;
  }
  try {
    const reply = await api(base(current.type, current.name), { method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" } });
    $("reply").className = ""; $("reply").textContent = JSON.stringify(reply, null, 2);
  } catch (e) { $("reply").className = "error"; $("reply").textContent = e.message; }
}

async function loadApprovals() {
  if (!current) return;
  const target = current;
  let approvals = [];
  try { approvals = (await api(base(target.type, target.name) + "/approvals")).pending || []; }
  catch (e) { $("approvals").replaceChildren(el("li", { className: "error", textContent: e.message })); return; }
  if (current !== target) return;
  const list = $("approvals");
  list.replaceChildren();
  if (!approvals.length) { list.append(el("li", { className: "muted", textContent: "none" })); return; }
  for (const a of approvals) {
    const what = el("div", { className: "what" }, el("strong", { textContent: a.tool || "approval" }), " ",
      el("code", { textContent: typeof a.arguments === "string" ? a.arguments : JSON.stringify(a.arguments || {}) }));
    const approve = el("button", { className: "approve", textContent: "Approve" });
    const reject = el("button", { className: "reject", textContent: "Reject" });
    approve.onclick = () => decide(a.id, "approve");
    reject.onclick = () => decide(a.id, "reject");
    const item = el("li", {}, what, approve, reject, el("span", { className: "muted", textContent: a.id }));
    item.dataset.id = a.id;
    list.append(item);
  }
}

async function decide(id, decision) {
  try {
    await api(base(current.type, current.name) + "/approvals/" + enc(id) + "/" + decision, { method: "POST" });
    addTimeline(decision, { id });
  } catch (e) { addTimeline("error", e.message); }
  loadApprovals();
}

$("send-form").onsubmit = send;
$("open-form").onsubmit = (e) => { e.preventDefault(); if ($("open-type").value && $("open-name").value) openInstance($("open-type").value, $("open-name").value); };
$("token-form").onsubmit = (e) => {
  e.preventDefault(); token = $("token").value.trim(); sessionStorage.setItem("mesh-token", token);
  $("token-form").hidden = true; loadTypes(); if (current) openInstance(current.type, current.name);
};
loadTypes();
const match = location.hash.match(/^#\/([^/]+)\/(.+)$/);
if (match) openInstance(decodeURIComponent(match[1]), decodeURIComponent(match[2]));
