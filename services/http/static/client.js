// agent-mesh browser client: one agent instance's live state, its requests, and chat with LLM agents.
//
//   import { connect } from "/client.js";
//   const agent = connect("counter", "demo", { token });          // token: only when the bridge has auth on
//   agent.on("state", ({ revision, state }) => render(state));    // now, and on every change, from any client
//   await agent.call({ add: 1 });                                 // the reply, or a thrown MeshError
//   for await (const delta of connect("triage", "me").chat("What is the capital of France?")) show(delta);
//
// Plain ES module, no bundler, no dependencies: the bridge serves it at /client.js.

const TERMINAL = new Set(["run_completed", "run_failed", "approval_requested"]);
const enc = encodeURIComponent;

/** An error answer of the bridge (RFC 9457 problem details): `code` is the mesh's stable error code. */
export class MeshError extends Error {
  constructor(problem, status) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.name = "MeshError";
    this.code = (problem && problem.code) || "http_" + status;
    this.status = status;
    this.problem = problem;
  }
}

/** Open instance `name` of agent type `type`. Options: `token` (bearer), `base` (the bridge's origin,
 * default this page's), `from` (a last event id to resume the live feed from), `live: false` (open
 * the live feed later, with `listen()`). */
export function connect(type, name, options = {}) {
  return new AgentConnection(type, name, options);
}

/** A JSON request to the bridge: the parsed body, or a thrown MeshError. */
export async function request(path, { token = "", base = "", method = "GET", body, headers = {}, signal } = {}) {
  const init = { method, headers: { ...headers }, signal };
  if (token) init.headers.Authorization = "Bearer " + token;
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(base + path, init);
  const text = await response.text();
  let parsed = null;
  try { parsed = text ? JSON.parse(text) : null; } catch { parsed = { detail: text.slice(0, 300) }; }
  if (!response.ok) throw new MeshError(parsed, response.status);
  return parsed;
}

export class AgentConnection extends EventTarget {
  constructor(type, name, { token = "", base = "", from = null, live = true } = {}) {
    super();
    this.type = type;
    this.name = name;
    this.token = token;
    this.base = base;
    this.lastEventId = from;
    this.state = undefined;      // {revision, state} once the feed has said
    this.status = "closed";      // "connecting" | "live" | "offline" | "closed"
    this._source = null;
    this._retry = null;
    this._closed = false;
    this._opened = null;
    if (live) this.listen(from);
  }

  /** The bridge path of this instance, plus `suffix`. */
  path(suffix = "") {
    return "/agents/" + enc(this.type) + "/" + enc(this.name) + suffix;
  }

  /** `on("state" | "event" | "status" | "unauthorized", fn)`: call `fn(detail)` for each; returns `off()`. */
  on(kind, fn) {
    const listener = (event) => fn(event.detail);
    this.addEventListener(kind, listener);
    return () => this.removeEventListener(kind, listener);
  }

  /** Resolves once the live feed is open (so nothing said after this moment is missed). */
  get ready() {
    if (!this._opened) this.listen(this.lastEventId);
    return this._opened.promise;
  }

  /** (Re)open the live feed, resuming after `from` (a last event id) when given. */
  listen(from = this.lastEventId) {
    this._closed = false;
    this.lastEventId = from;
    if (!this._opened || this._opened.settled) this._opened = deferred();
    this._connect();
    return this;
  }

  async _ticket() {
    return (await request("/auth/tickets", { token: this.token, base: this.base, method: "POST" })).ticket;
  }

  async _connect() {
    clearTimeout(this._retry);
    if (this._source) this._source.close();
    this._setStatus("connecting");
    const params = new URLSearchParams();
    if (this.lastEventId) params.set("last_event_id", this.lastEventId);
    if (this.token) {
      try {
        params.set("ticket", await this._ticket());
      } catch (error) {
        if (error.status === 401) this._emit("unauthorized", error);
        return this._reconnectLater();
      }
    }
    if (this._closed) return;
    const source = new EventSource(this.base + this.path("/events") + (String(params) ? "?" + params : ""));
    this._source = source;
    source.onopen = () => {
      this._setStatus("live");
      this._opened.settled = true;
      this._opened.resolve(this);
    };
    source.addEventListener("state", (message) => {
      this.lastEventId = message.lastEventId || this.lastEventId;
      this.state = JSON.parse(message.data);
      this._emit("state", this.state);
    });
    source.addEventListener("event", (message) => {
      this.lastEventId = message.lastEventId || this.lastEventId;
      this._emit("event", JSON.parse(message.data));
    });
    source.onerror = () => {
      if (source !== this._source) return;
      if (source.readyState === EventSource.CLOSED) this._reconnectLater();  // refused (an expired ticket): ask again
      else this._setStatus("connecting");  // the browser reconnects by itself, with Last-Event-ID
    };
  }

  _reconnectLater() {
    this._setStatus("offline");
    if (!this._closed) this._retry = setTimeout(() => this._connect(), 2000);
  }

  _setStatus(status) {
    if (this.status === status) return;
    this.status = status;
    this._emit("status", status);
  }

  _emit(kind, detail) {
    this.dispatchEvent(new CustomEvent(kind, { detail }));
  }

  /** Stop the live feed. */
  close() {
    this._closed = true;
    clearTimeout(this._retry);
    if (this._source) this._source.close();
    this._source = null;
    this._setStatus("closed");
  }

  _request(suffix, options = {}) {
    return request(this.path(suffix), { token: this.token, base: this.base, ...options }).catch((error) => {
      if (error.status === 401) this._emit("unauthorized", error);
      throw error;
    });
  }

  /** Send `payload` (to `method`, a `@mesh.method`, if given) and return the agent's reply. */
  call(payload, { method, signal, idempotencyKey } = {}) {
    const headers = idempotencyKey ? { "Idempotency-Key": idempotencyKey } : {};
    return this._request(method ? "/methods/" + enc(method) : "", { method: "POST", body: payload ?? null, headers, signal });
  }

  /** Send without waiting for the reply: returns the run resource (`GET run.id` later, at /runs/{id}). */
  send(payload, { method } = {}) {
    return this._request(method ? "/methods/" + enc(method) : "", {
      method: "POST", body: payload ?? null, headers: { Prefer: "respond-async" },
    });
  }

  /** Ask an LLM agent: an async iterator of the answer's text deltas as the model writes them.
   * `run.id` names the run; `run.reply` resolves to the final reply (status, output, approvals). */
  chat(text, { runId = newRunId() } = {}) {
    const queue = [];
    let wake = null;
    let finished = false;
    let failure = null;
    const stop = (error) => {
      if (finished) return;
      finished = true;
      failure = error || null;
      off();
      if (wake) wake();
    };
    const off = this.on("event", (event) => {
      const data = event.data || {};
      if (data.run_id !== runId) return;
      if (event.kind === "text_delta") queue.push(data.delta);
      else if (TERMINAL.has(event.kind)) return stop();
      else return;
      if (wake) wake();
    });
    const reply = this.ready
      .then(() => this.call({ op: "message", input: text, run_id: runId }))
      .then((answer) => {
        // The reply can overtake the run's last events: give them a moment to arrive.
        setTimeout(() => stop(), 5000);
        return answer;
      }, (error) => {
        if (error.code !== "timeout") stop(error);  // a long run outlives the HTTP wait; its events still come
        throw error;
      });
    reply.catch(() => {});
    return {
      id: runId,
      reply,
      [Symbol.asyncIterator]() {
        return {
          async next() {
            while (!queue.length && !finished) await new Promise((resolve) => { wake = resolve; });
            wake = null;
            if (queue.length) return { value: queue.shift(), done: false };
            if (failure) throw failure;
            return { value: undefined, done: true };
          },
          async return() { stop(); return { value: undefined, done: true }; },
        };
      },
    };
  }

  /** A page of an LLM instance's conversation: `{items: [{seq, item}], more, last_event_id}`. */
  messages({ limit, before, after } = {}) {
    const params = new URLSearchParams();
    for (const [key, value] of Object.entries({ limit, before, after })) if (value != null) params.set(key, value);
    return this._request("/messages" + (String(params) ? "?" + params : ""));
  }

  /** Pending approvals and recent decisions of an LLM instance. */
  approvals() { return this._request("/approvals"); }
  approve(id, { reason } = {}) { return this._decide(id, "approve", reason); }
  reject(id, { reason } = {}) { return this._decide(id, "reject", reason); }
  _decide(id, decision, reason) {
    return this._request("/approvals/" + enc(id) + "/" + decision, { method: "POST", body: reason ? { reason } : null });
  }

  /** Forget an LLM instance's conversation. */
  clearMemory() { return this.call({ op: "clear_memory" }); }

  /** A connection the instance itself holds (`/agents/{type}/{name}/connect`): a WebSocket whose
   * frames reach the agent's `on_message`, and to which the agent writes (`on_connect`, `broadcast`).
   * `query` reaches the agent as the connection's query (e.g. `{name: "ann"}`). */
  async socket({ query = {} } = {}) {
    const params = new URLSearchParams(query);
    if (this.token) params.set("ticket", await this._ticket());
    const origin = new URL(this.base || location.href, location.href);
    const scheme = origin.protocol === "https:" ? "wss:" : "ws:";
    return new WebSocket(`${scheme}//${origin.host}${this.path("/connect")}${String(params) ? "?" + params : ""}`);
  }
}

function deferred() {
  const result = {};
  result.promise = new Promise((resolve, reject) => { result.resolve = resolve; result.reject = reject; });
  return result;
}

function newRunId() {
  const bytes = crypto.getRandomValues(new Uint8Array(8));
  return "run_" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
