// agent-mesh dashboard: plain ES modules, no build step. It talks to the bridge through /client.js.
//
// /ui/{type}/{name} opens an instance (the address bar follows what is open; #chat, #request, #state
// and #timeline pick the view). LLM agent types get a chat; other types a request form generated
// from their schema; every instance has its state as a tree and its timeline.

import { connect, request } from "/client.js";
import { ChatView } from "./chat.js";
import { $, el, uiPath } from "./dom.js";
import { admitsOp, makeResolver } from "./forms.js";
import { RequestPanel } from "./request.js";
import { Timeline } from "./timeline.js";
import { jsonTree } from "./tree.js";

const VIEWS = ["chat", "request", "state", "timeline"];
let token = sessionStorage.getItem("mesh-token") || "";
let catalog = null;          // {types, doc, at}
let current = null;          // the open instance: {type, name, agent, info, chat, panel, timeline}
let openSerial = 0;

function api(path, options = {}) {
  const used = token;
  return request(path, { token: used, ...options }).catch((error) => {
    if (error.status === 401) askForToken(used);
    throw error;
  });
}

/** Show the sign-in form, unless the refusal was of a token the person has since replaced. */
function askForToken(used = token) {
  if (used !== token || !$("token-form").hidden) return;
  $("token-form").hidden = false;
  $("token").focus();
}

// -- catalog: types, schemas, methods ----------------------------------------------------------

async function loadCatalog(force = false) {
  if (catalog && !force && Date.now() - catalog.at < 5000) return catalog;
  const [listing, doc] = await Promise.all([api("/agents"), api("/openapi.json").catch(() => ({ paths: {} }))]);
  catalog = { types: listing.types || [], doc, at: Date.now() };
  return catalog;
}

function bodySchema(operation) {
  const content = operation && operation.requestBody && operation.requestBody.content;
  return content && content["application/json"] ? content["application/json"].schema : null;
}

/** What the dashboard knows of a type: its request schema, methods, and whether it is an LLM agent. */
function typeInfo(type) {
  const doc = catalog ? catalog.doc : { paths: {} };
  const listed = catalog ? catalog.types.find((t) => t.type === type) : null;
  const resolve = makeResolver(doc);
  const operation = doc.paths && doc.paths[`/agents/${type}/{name}`] ? doc.paths[`/agents/${type}/{name}`].post : null;
  const schema = bodySchema(operation);
  const methods = new Map();
  for (const [path, item] of Object.entries(doc.paths || {})) {
    const prefix = `/agents/${type}/{name}/methods/`;
    if (!path.startsWith(prefix) || !item.post || path.slice(prefix.length).includes("/")) continue;
    const name = decodeURIComponent(path.slice(prefix.length));
    if (!name.startsWith("{")) {
      methods.set(name, { name, schema: bodySchema(item.post), input: Boolean(item.post.requestBody), description: item.post.description || "" });
    }
  }
  for (const method of (listed && listed.methods) || []) {
    const name = typeof method === "string" ? method : method.name;
    if (name && !methods.has(name)) {
      methods.set(name, { name, schema: method.request_schema || null, input: method.request_schema != null, description: method.description || "" });
    }
  }
  return {
    type,
    schema,
    resolve,
    methods: [...methods.values()],
    description: (listed && listed.description) || "",
    chat: admitsOp(schema, "message", resolve),
    approvals: admitsOp(schema, "approvals", resolve),
  };
}

// -- navigation --------------------------------------------------------------------------------

function parseLocation() {
  const legacy = location.hash.match(/^#\/([^/]+)\/(.+)$/);  // the old dashboard's links
  if (legacy) history.replaceState(null, "", uiPath(decodeURIComponent(legacy[1]), decodeURIComponent(legacy[2])));
  const match = location.pathname.match(/^\/ui\/([^/]+)(?:\/([^/]+))?\/?$/);
  const view = location.hash.slice(1);
  return {
    type: match ? decodeURIComponent(match[1]) : null,
    name: match && match[2] ? decodeURIComponent(match[2]) : null,
    view: VIEWS.includes(view) ? view : null,
  };
}

function navigate(type, name, view = null) {
  const target = uiPath(type, name) + (view ? "#" + view : "");
  if (location.pathname + location.hash !== target) history.pushState(null, "", target);
  route();
}

async function route() {
  const { type, name, view } = parseLocation();
  document.body.classList.remove("nav-open");
  if (!type) {
    closeInstance();
    return;
  }
  if ($("type-label").textContent !== type) loadInstances(type);
  if (!name) {
    closeInstance();
    return;
  }
  if (!current || current.type !== type || current.name !== name) await openInstance(type, name, view);
  else showView(view || (current.info.chat ? "chat" : "request"));
}

// -- sidebar -----------------------------------------------------------------------------------

async function loadTypes() {
  const list = $("types");
  try {
    const { types } = await loadCatalog(true);
    list.replaceChildren();
    if (!types.length) list.append(el("li", { className: "muted", textContent: "no agent types are served" }));
    for (const t of types) {
      const link = el("a", { href: uiPath(t.type), textContent: t.type, title: t.description || "" });
      link.onclick = (event) => { event.preventDefault(); navigate(t.type, null); };
      const item = el("li", { dataset: { type: t.type } }, link, el("span", { className: "count", textContent: `${t.workers}×`, title: `${t.workers} worker(s)` }));
      list.append(item);
    }
    markActive();
  } catch (error) {
    list.replaceChildren(el("li", { className: "error", textContent: error.message }));
  }
}

async function loadInstances(type) {
  $("open-type").value = type;
  $("type-label").textContent = type;
  markActive();
  const list = $("instances");
  try {
    const { instances } = await api("/agents/" + encodeURIComponent(type));
    list.replaceChildren();
    if (!instances.length) list.append(el("li", { className: "muted", textContent: "no stored instances" }));
    for (const name of instances) {
      const link = el("a", { href: uiPath(type, name), textContent: name });
      link.onclick = (event) => { event.preventDefault(); navigate(type, name); };
      list.append(el("li", { dataset: { name } }, link));
    }
    markActive();
  } catch (error) {
    list.replaceChildren(el("li", { className: "error", textContent: error.message }));
  }
}

function markActive() {
  for (const li of $("types").children) {
    const on = li.dataset.type === $("type-label").textContent;
    li.classList.toggle("active", on);
    const link = li.querySelector("a");
    if (link) link.toggleAttribute("aria-current", on);
  }
  for (const li of $("instances").children) {
    const on = Boolean(current && li.dataset.name === current.name && current.type === $("type-label").textContent);
    li.classList.toggle("active", on);
    const link = li.querySelector("a");
    if (link) link.toggleAttribute("aria-current", on);
  }
}

// -- an instance -------------------------------------------------------------------------------

function closeInstance() {
  if (current) current.agent.close();
  current = null;
  $("instance").hidden = true;
  $("empty").hidden = false;
  setConnection("closed");
  markActive();
}

function setConnection(status) {
  const pill = $("conn");
  pill.textContent = status === "live" ? "live" : status === "connecting" ? "connecting" : "offline";
  pill.className = "pill " + (status === "live" ? "on" : "off");
}

async function openInstance(type, name, view) {
  const serial = ++openSerial;
  if (current) current.agent.close();
  try { await loadCatalog(); } catch { /* the views fall back to raw JSON */ }
  if (serial !== openSerial) return;
  const info = typeInfo(type);
  const agent = connect(type, name, { token, live: false });
  const timeline = new Timeline($("timeline"));
  timeline.clear();
  current = { type, name, agent, info, timeline, chat: null, panel: null };
  $("empty").hidden = true;
  $("instance").hidden = false;
  $("title").textContent = `${type}/${name}`;
  $("kind").textContent = info.chat ? "LLM agent" : info.description;
  document.title = `${type}/${name} · agent-mesh`;
  $("tab-chat").hidden = !info.chat;
  $("tab-request").hidden = info.chat;
  $("state-tree").replaceChildren(el("p", { className: "muted", textContent: "loading…" }));
  $("revision").textContent = "";
  $("calls").replaceChildren();
  $("calls").hidden = true;
  markActive();
  showView(view || (info.chat ? "chat" : "request"));

  agent.on("status", setConnection);
  agent.on("unauthorized", () => askForToken(agent.token));
  agent.on("state", (message) => {
    showState(message);
    if (current && current.chat) current.chat.showState(message.state);
  });
  agent.on("event", (event) => {
    timeline.add(event);
    if (current && current.chat) current.chat.handle(event);
    if (current && current.panel) current.panel.handle(event);
  });

  let from = null;
  if (info.chat) {
    const chat = new ChatView({
      log: $("conversation"), status: $("chat-status"), older: $("older"), agent, entryLabel: type,
      onError: (error) => {
        if (error.status === 401) askForToken(agent.token);
        else console.error("chat:", error);
      },
    });
    current.chat = chat;
    try { from = await chat.load(); } catch (error) { chat.showError(error); }
  } else {
    current.panel = new RequestPanel($("request-panel"), { agent, info });
    current.panel.render();
  }
  if (serial !== openSerial) return;
  agent.listen(from);
}

function showState(message) {
  if (!current) return;
  const { state, revision } = message;
  $("revision").textContent = revision ? `revision ${revision}` : "";
  $("state-tree").replaceChildren(state === null ? el("p", { className: "muted", textContent: "No state saved yet." }) : jsonTree(state, { label: "state" }));
  showCalls(state);
  const listed = Array.from($("instances").children).some((li) => li.dataset.name === current.name);
  if (revision && !listed && $("type-label").textContent === current.type) loadInstances(current.type);
}

/** Phone calls put `calls[<call id>].transcript` in their instance's state: show it live. */
function showCalls(state) {
  const calls = state && typeof state === "object" && state.calls && typeof state.calls === "object" ? state.calls : null;
  const box = $("calls");
  const entries = calls ? Object.entries(calls).filter(([, call]) => call && typeof call === "object") : [];
  box.hidden = !entries.length;
  box.replaceChildren(...entries.map(([id, call]) => {
    const transcript = Array.isArray(call.transcript) ? call.transcript : call.transcript ? [call.transcript] : [];
    const lines = transcript.map((entry) => {
      if (typeof entry === "string") return el("li", { textContent: entry });
      const who = entry.role || entry.speaker || entry.who || entry.from || entry.source || "";
      const text = entry.text || entry.content || entry.transcript || JSON.stringify(entry);
      return el("li", {}, who ? el("strong", { textContent: who + ": " }) : null, String(text));
    });
    const status = call.status || call.state || "";
    return el("section", { className: "phone-call", attrs: { "aria-label": `Call ${id}` } },
      el("h3", {}, `Call ${id}`, status ? el("span", { className: "pill", textContent: status }) : null),
      lines.length ? el("ol", { className: "transcript", attrs: { "aria-live": "polite" } }, ...lines) : el("p", { className: "muted", textContent: "no transcript yet" }));
  }));
}

function showView(view) {
  if (!current) return;
  if (view === "chat" && !current.info.chat) view = "request";
  if (view === "request" && current.info.chat) view = "chat";
  for (const name of VIEWS) {
    const tab = $("tab-" + name);
    const on = name === view;
    tab.setAttribute("aria-selected", String(on));
    tab.tabIndex = on ? 0 : -1;
    $("view-" + name).hidden = !on;
  }
}

function selectTab(view) {
  if (!current) return;
  history.replaceState(null, "", uiPath(current.type, current.name) + "#" + view);
  showView(view);
}

// -- wiring ------------------------------------------------------------------------------------

function wire() {
  for (const view of VIEWS) $("tab-" + view).onclick = () => selectTab(view);
  $("tablist").onkeydown = (event) => {
    if (event.key !== "ArrowRight" && event.key !== "ArrowLeft") return;
    const tabs = VIEWS.map((v) => $("tab-" + v)).filter((t) => !t.hidden);
    const index = tabs.findIndex((t) => t.getAttribute("aria-selected") === "true");
    const next = tabs[(index + (event.key === "ArrowRight" ? 1 : tabs.length - 1)) % tabs.length];
    selectTab(next.id.slice(4));
    next.focus();
  };
  $("open-form").onsubmit = (event) => {
    event.preventDefault();
    const type = $("open-type").value.trim();
    const name = $("open-name").value.trim();
    if (type && name) navigate(type, name);
  };
  $("token-form").onsubmit = (event) => {
    event.preventDefault();
    token = $("token").value.trim();
    sessionStorage.setItem("mesh-token", token);
    $("token-form").hidden = true;
    catalog = null;
    const open = current;
    current = null;
    if (open) open.agent.close();
    loadTypes().then(route);
  };
  $("nav-toggle").onclick = () => {
    const open = document.body.classList.toggle("nav-open");
    $("nav-toggle").setAttribute("aria-expanded", String(open));
  };
  $("chat-form").onsubmit = (event) => {
    event.preventDefault();
    sendChat();
  };
  $("message").onkeydown = (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("chat-form").requestSubmit();
    }
  };
  $("clear-memory").onclick = () => $("confirm-clear").showModal();
  $("confirm-clear").onclose = async () => {
    if ($("confirm-clear").returnValue !== "clear" || !current || !current.chat) return;
    try {
      await current.agent.clearMemory();
      current.chat.reset();
    } catch (error) { current.chat.showError(error); }
  };
  window.onpopstate = () => route();
}

async function sendChat() {
  if (!current || !current.chat) return;
  const text = $("message").value.trim();
  if (!text) return;
  $("message").value = "";
  const { chat, agent } = current;
  const shown = chat.sending(text);
  const run = agent.chat(text);
  try {
    for await (const _ of run) { /* the conversation renders the run's events as they come */ }
    const reply = await run.reply;
    if (reply && reply.status === "failed") chat.showError({ code: "run_failed", message: String(reply.output || "the run failed") });
  } catch (error) {
    chat.failed(shown, error);
  }
}

wire();
loadTypes().then(route);
