// The conversation of an LLM instance: its memory (the finished parts) plus the message being written
// now, from its text deltas. Memory stores a model turn's parts when the turn has ended, before the
// next turn writes, so the view fetches memory's new items when a new message starts, after other
// events of a run, and when the run ends; a streamed message gives way to memory's copy of it once
// that arrives (and at the latest when the run ends). Each part shows once, also after a reload.

import { compact, el, pretty } from "./dom.js";

const SEGMENT_ENDS = new Set(["agent_switched", "handoff", "tool_called", "tool_output", "message_output", "approval_decided"]);
const RUN_ENDS = new Set(["run_completed", "run_failed", "approval_requested"]);
const PAGE = 100;

function textOf(content) {
  if (typeof content === "string") return content;
  if (Array.isArray(content)) return content.map((part) => part.text || part.refusal || "").join("");
  return content == null ? "" : compact(content, 2000);
}

function handoffTarget(output) {
  try {
    const parsed = JSON.parse(output);
    return parsed && parsed.assistant;
  } catch { return null; }
}

export class ChatView {
  /** `log`: the role="log" element; `status`: a role="status" line; `agent`: a client.js connection. */
  constructor({ log, status, older, agent, entryLabel, onError }) {
    this.log = log;
    this.status = status;
    this.olderButton = older;
    this.agent = agent;
    this.entryLabel = entryLabel;
    this.onError = onError || (() => {});
    this.memory = el("div", { className: "memory" });
    this.liveArea = el("div", { className: "live" });
    this.log.replaceChildren(this.memory, this.liveArea);
    this.lastSeq = 0;
    this.firstSeq = null;
    this.calls = new Map();      // call id -> tool block (memory)
    this.orphans = new Map();    // call id -> output seen before its call (paging back)
    this.pending = new Map();    // approval id -> pending approval
    this.live = [];              // {kind: "user" | "text" | "error" | "approvals", node, settled}
    this.stored = [];            // texts of answers memory gained during this run, not yet matched
    this.liveAgent = null;
    this.speaker = null;         // who wrote the latest memory message (after handoffs)
    this.refreshing = Promise.resolve();
    if (this.olderButton) this.olderButton.onclick = () => this.loadOlder();
  }

  /** Render the newest page of memory and pending approvals; returns the live feed's resume point. */
  async load() {
    const page = await this.agent.messages({ limit: PAGE });
    this.memory.replaceChildren();
    this.calls.clear();
    this.append(page.items);
    this._setMore(page.more);
    this._renderApprovals();
    return page.last_event_id;
  }

  async loadOlder() {
    if (this.firstSeq == null) return;
    const page = await this.agent.messages({ limit: PAGE, before: this.firstSeq });
    const fragment = el("div", { className: "older" });
    const saved = this.speaker;
    this.speaker = null;
    for (const entry of page.items) this._render(entry, fragment);
    this.speaker = saved;
    this.memory.prepend(...fragment.childNodes);
    if (page.items.length) this.firstSeq = page.items[0].seq;
    this._setMore(page.more);
  }

  _setMore(more) {
    if (this.olderButton) this.olderButton.hidden = !more;
  }

  /** The instance's state lists its open approvals (read from the live feed: asking the instance
   * would wait behind a run in progress). */
  showState(state) {
    if (!state || !Array.isArray(state.pending)) return;
    this.pending = new Map(state.pending.filter((a) => !a.decision).map((a) => [a.id, a]));
    this._renderApprovals();
  }

  /** Append memory entries ({seq, item}) newer than what is shown. */
  append(entries) {
    for (const entry of entries) {
      if (entry.seq <= this.lastSeq) continue;
      this._render(entry, this.memory);
      this.lastSeq = entry.seq;
      if (this.firstSeq == null) this.firstSeq = entry.seq;
    }
  }

  _render({ seq, item }, parent) {
    const node = this._node(item);
    if (node) {
      node.dataset.seq = seq;
      parent.append(node);
    }
  }

  _node(item) {
    if (item.role === "user") {
      this.speaker = null;
      return this._message("user", "You", textOf(item.content));
    }
    if (item.type === "message" || item.role === "assistant") {
      return this._message("assistant", this.speaker || this.entryLabel, textOf(item.content));
    }
    if (item.type === "function_call") {
      if ((item.name || "").startsWith("transfer_to_")) {
        const block = el("p", { className: "note handoff", textContent: `Handing off (${item.name})…` });
        this.calls.set(item.call_id, { handoff: block });
        return block;
      }
      return this._tool(item);
    }
    if (item.type === "function_call_output") {
      const known = this.calls.get(item.call_id);
      const output = textOf(item.output);
      if (known && known.handoff) {
        const target = handoffTarget(output);
        if (target) {
          known.handoff.textContent = `Handed off to ${target}`;
          this.speaker = target;
        }
        return null;
      }
      if (known) {
        this._setResult(known, output);
        return null;
      }
      const orphan = el("p", { className: "note", textContent: `Tool result: ${compact(output, 300)}` });
      this.orphans.set(item.call_id, orphan);
      return orphan;
    }
    if (item.type === "reasoning") return null;
    return el("details", { className: "note raw" }, el("summary", { textContent: item.type || "item" }), el("pre", { textContent: pretty(item) }));
  }

  _message(kind, who, text) {
    return el("article", { className: "msg " + kind, attrs: { "aria-label": who } },
      el("p", { className: "who", textContent: who }),
      el("div", { className: "text", textContent: text }));
  }

  _tool(item) {
    const result = el("dd", { className: "result muted", textContent: "not run yet" });
    const approval = el("div", { className: "approval" });
    const node = el("article", { className: "tool", attrs: { "aria-label": `Tool call ${item.name}` } },
      el("p", { className: "who" }, "Tool call ", el("code", { textContent: item.name })),
      el("dl", {},
        el("dt", { textContent: "Arguments" }), el("dd", {}, el("pre", { textContent: pretty(item.arguments) })),
        el("dt", { textContent: "Result" }), result),
      approval);
    const block = { node, result, approval, name: item.name };
    this.calls.set(item.call_id, block);
    const orphan = this.orphans.get(item.call_id);
    if (orphan) {
      this._setResult(block, orphan.textContent.replace(/^Tool result: /, ""));
      orphan.remove();
      this.orphans.delete(item.call_id);
    }
    return node;
  }

  _setResult(block, output) {
    block.result.className = "result";
    block.result.replaceChildren(el("pre", { textContent: pretty(output) }));
    block.approval.replaceChildren();
    block.done = true;
  }

  _renderApprovals() {
    const unplaced = [];
    for (const block of this.calls.values()) if (block.approval && !block.done) block.approval.replaceChildren();
    for (const approval of this.pending.values()) {
      const block = this.calls.get(approval.call_id);
      const controls = this._approvalControls(approval);
      if (block && block.approval && !block.done) {
        block.result.textContent = "waiting for approval";
        block.approval.replaceChildren(controls);
      } else unplaced.push(el("article", { className: "tool", attrs: { "aria-label": `Approval ${approval.id}` } },
        el("p", { className: "who" }, "Tool call ", el("code", { textContent: approval.tool })),
        el("pre", { textContent: pretty(approval.arguments) }), controls));
    }
    this._setLive("approvals", unplaced);
  }

  _approvalControls(approval) {
    const approve = el("button", { type: "button", className: "approve", textContent: "Approve" });
    const reject = el("button", { type: "button", className: "reject", textContent: "Reject" });
    const note = el("span", { className: "muted", textContent: `${approval.agent || "The agent"} asks to run ${approval.tool}` });
    const decide = async (decision) => {
      approve.disabled = reject.disabled = true;
      note.textContent = decision === "approve" ? "Approved; the run resumes…" : "Rejected; the run resumes…";
      try {
        await (decision === "approve" ? this.agent.approve(approval.id) : this.agent.reject(approval.id));
      } catch (error) {
        note.textContent = `${error.code}: ${error.message}`;
        approve.disabled = reject.disabled = false;
        return;
      }
      this.pending.delete(approval.id);
      this._renderApprovals();
      this.refresh();
    };
    approve.onclick = () => decide("approve");
    reject.onclick = () => decide("reject");
    return el("div", { className: "decide", attrs: { role: "group", "aria-label": `Approval ${approval.id}` } }, note, approve, reject);
  }

  _setLive(kind, nodes) {
    for (const part of this.live.filter((p) => p.kind === kind)) part.node.remove();
    this.live = this.live.filter((p) => p.kind !== kind);
    for (const node of nodes) {
      this.live.push({ kind, node, settled: true });
      this.liveArea.append(node);
    }
  }

  /** Show the user's message at once; memory's copy replaces it. */
  sending(text) {
    const node = this._message("user sending", "You", text);
    this.live.push({ kind: "user", node, settled: true });
    this.liveArea.append(node);
    return node;
  }

  failed(node, error) {
    node.classList.add("failed");
    this.live = this.live.filter((p) => p.node !== node);
    this.showError(error);
    node.remove();
  }

  showError(error) {
    const node = el("p", { className: "note error", attrs: { role: "alert" }, textContent: `${error.code || "error"}: ${error.message}` });
    this.live.push({ kind: "error", node, settled: true });
    this.liveArea.append(node);
  }

  /** One live event of this instance. */
  handle(event) {
    const data = event.data || {};
    switch (event.kind) {
      case "text_delta": {
        let part = this.live.find((p) => p.kind === "text" && !p.settled);
        if (!part) {
          const who = this.liveAgent || this.speaker || this.entryLabel;
          const node = this._message("assistant streaming", who, "");
          node.setAttribute("aria-busy", "true");
          part = { kind: "text", node, settled: false, text: "" };
          this.live.push(part);
          this.liveArea.append(node);
          this.refresh();  // a new message starts only after memory stored the turns before it
        }
        part.text += data.delta || "";
        part.node.querySelector(".text").textContent = part.text;
        this._status(`${this.liveAgent || "The agent"} is writing…`);
        return;
      }
      case "agent_switched":
        if (this.liveAgent == null) this.entryLabel = data.agent;  // a run starts at its entry agent
        this.liveAgent = data.agent;
        this._status(`${data.agent} is answering…`);
        break;
      case "handoff":
        this.liveAgent = data.to;
        this._status(`${data.from} handed off to ${data.to}`);
        break;
      case "approval_requested":
        this.pending.set(data.id, data);
        this._status(`Waiting for approval of ${data.tool}`);
        break;
      case "approval_decided":
        this.pending.delete(data.id);
        break;
      case "run_completed":
        this.liveAgent = null;
        this._status("");
        break;
      case "run_failed":
        this.liveAgent = null;
        this._status("");
        this.showError({ code: "run_failed", message: data.error || "the run failed" });
        break;
      default:
        return;
    }
    this._settle();
    this.refresh({ final: RUN_ENDS.has(event.kind) });
  }

  /** The message being streamed is complete: it shows until memory's copy of it arrives. */
  _settle() {
    for (const part of this.live) {
      if (part.kind === "text" && !part.settled) {
        part.settled = true;
        part.node.removeAttribute("aria-busy");
        part.node.classList.remove("streaming");
      }
    }
    this._match();
  }

  _match() {
    for (const part of this.live.filter((p) => p.kind === "text" && p.settled)) {
      const index = this.stored.indexOf(part.text);
      if (index < 0) continue;
      this.stored.splice(index, 1);
      part.node.remove();
      this.live = this.live.filter((p) => p !== part);
    }
  }

  _status(text) {
    if (this.status) this.status.textContent = text;
  }

  /** Fetch what memory gained since the last item shown. `final`: the run is over, so memory
   * holds all of it and nothing streamed needs to stay. */
  refresh({ final = false } = {}) {
    const ending = final ? this.live.filter((p) => p.kind === "text") : [];
    this.refreshing = this.refreshing.then(() => this._refresh(final, ending)).catch((error) => this.onError(error));
    return this.refreshing;
  }

  async _refresh(final, ending) {
    let more = true;
    const gained = [];
    while (more) {
      const page = await this.agent.messages({ after: this.lastSeq, limit: 1000 });
      gained.push(...page.items.filter((entry) => entry.seq > this.lastSeq));
      this.append(page.items);
      more = page.more && page.items.length > 0;
    }
    for (const { item } of gained) {
      if (item.role === "user") {
        for (const part of this.live.filter((p) => p.kind === "user")) part.node.remove();
        this.live = this.live.filter((p) => p.kind !== "user");
      } else if (item.type === "message" && item.role === "assistant") {
        this.stored.push(textOf(item.content));
      }
    }
    this._match();
    if (final) {
      for (const part of ending) part.node.remove();
      this.live = this.live.filter((p) => !ending.includes(p));
      this.stored = [];
    }
    this._renderApprovals();
  }

  /** Forget everything shown (after memory was cleared). */
  reset() {
    this.memory.replaceChildren();
    this.liveArea.replaceChildren();
    this.live = [];
    this.stored = [];
    this.calls.clear();
    this.orphans.clear();
    this.lastSeq = 0;
    this.firstSeq = null;
    this.speaker = null;
    this._setMore(false);
    this._status("");
  }
}
