// A JSON value as a collapsible tree (native <details>, so keyboard and screen readers work as usual).

import { el } from "./dom.js";

/** The tree of `value`; objects and arrays deeper than `openDepth` start collapsed. */
export function jsonTree(value, { label = null, depth = 0, openDepth = 2 } = {}) {
  const key = label == null ? null : el("span", { className: "key", textContent: label });
  if (value !== null && typeof value === "object") {
    const entries = Array.isArray(value) ? value.map((v, i) => [String(i), v]) : Object.entries(value);
    const size = Array.isArray(value) ? `[${entries.length}]` : `{${entries.length}}`;
    const summary = el("summary", {}, key, key ? " " : null, el("span", { className: "muted", textContent: size }));
    const list = el("ul", { attrs: { role: "group" } });
    for (const [k, v] of entries) list.append(el("li", {}, jsonTree(v, { label: k, depth: depth + 1, openDepth })));
    return el("details", { className: "node", open: depth < openDepth }, summary, list);
  }
  const kind = value === null ? "null" : typeof value;
  const text = typeof value === "string" ? JSON.stringify(value) : String(value);
  return el("div", { className: "leaf" }, key, key ? ": " : null, el("span", { className: "v-" + kind, textContent: text }));
}
