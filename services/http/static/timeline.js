// The timeline: each event of an instance as one readable line, its raw JSON one click away.

import { compact, el, timeOf } from "./dom.js";

const MAX_LINES = 300;

function ms(value) {
  return value == null ? "" : ` in ${Math.round(value * 10) / 10} ms`;
}

function bytes(value) {
  if (value == null) return "";
  return value < 1024 ? `${value} B` : `${(value / 1024).toFixed(1)} KiB`;
}

/** [category, text] of one event: the category picks the line's colour. */
export function describe(kind, d) {
  d = d || {};
  switch (kind) {
    case "turn": return ["turn", `turn ${d.outcome || "ok"}${ms(d.duration_ms)}${d.caller ? ` · called by ${d.caller}` : ""}`];
    case "error": return ["error", `turn failed: ${d.outcome || "error"}${d.error ? ` — ${d.error}` : ""}`];
    case "call": return ["call", `called ${d.to || "?"}: ${d.outcome || "ok"}${ms(d.duration_ms)}`];
    case "state": return ["state", `state saved: revision ${d.revision ?? "?"}${d.size != null ? `, ${bytes(d.size)}` : ""}`];
    case "schedule": return ["call", `schedule fired: ${d.schedule || "?"}`];
    case "dead_letter": return ["error", `dead letter ${d.error_code || ""}: ${d.error || ""} after ${d.attempts ?? "?"} attempts`];
    case "approval_requested": return ["approval", `approval requested: ${d.tool || "?"} ${compact(d.arguments, 100)}`];
    case "approval_decided": return ["approval", `approval ${d.decision || "decided"} by ${d.by || "?"}${d.reason ? ` (${d.reason})` : ""}`];
    case "approval": return ["approval", `approval: ${compact(d, 120)}`];
    case "agent_switched": return ["llm", `${d.agent || "?"} is answering`];
    case "handoff": return ["llm", `handoff: ${d.from || "?"} → ${d.to || "?"}`];
    case "tool_called": return ["call", `${d.agent || "agent"} called tool ${d.tool || "?"}(${compact(d.arguments, 100)})`];
    case "tool_output": return ["call", `tool result: ${compact(d.output, 120)}`];
    case "message_output": return ["llm", `${d.agent || "agent"} finished a message`];
    case "run_completed": return ["turn", `run completed: ${d.agent || "?"} answered${d.model ? ` (${d.model})` : ""}`];
    case "run_failed": return ["error", `run failed: ${d.error || "?"}`];
    default: return ["other", `${kind}: ${compact(d, 120)}`];
  }
}

export class Timeline {
  constructor(list) {
    this.list = list;
    this.streams = new Map();  // run id -> {item, text} of its text deltas, shown as one line
  }

  clear() {
    this.list.replaceChildren();
    this.streams.clear();
  }

  add(event) {
    const data = event.data || {};
    if (event.kind === "text_delta") return this._delta(data);
    const [category, text] = describe(event.kind, data);
    this._prepend(this._line(event.kind, category, text, data, timeOf(data)));
  }

  _delta(data) {
    let stream = this.streams.get(data.run_id);
    if (!stream) {
      stream = { text: "", item: null };
      this.streams.set(data.run_id, stream);
      if (this.streams.size > 20) this.streams.delete(this.streams.keys().next().value);
    }
    stream.text += data.delta || "";
    const shown = stream.text.length > 120 ? "…" + stream.text.slice(-119) : stream.text;
    const item = this._line("text_delta", "llm", `streaming: ${shown}`, { run_id: data.run_id, text: stream.text }, new Date());
    if (stream.item && stream.item.isConnected) stream.item.replaceWith(item);
    else this._prepend(item);
    stream.item = item;
  }

  _line(kind, category, text, data, at) {
    const summary = el("summary", {},
      el("time", { dateTime: at.toISOString(), textContent: at.toLocaleTimeString() }),
      el("span", { className: "kind " + category, textContent: kind }),
      el("span", { className: "what", textContent: text }));
    return el("li", { dataset: { kind, category } },
      el("details", {}, summary, el("pre", { textContent: JSON.stringify(data, null, 2) })));
  }

  _prepend(item) {
    this.list.prepend(item);
    while (this.list.children.length > MAX_LINES) this.list.lastChild.remove();
  }
}
