// Small DOM helpers shared by the dashboard's modules.

export const $ = (id) => document.getElementById(id);

/** `el("button", {className: "x", onclick, attrs: {"aria-label": "..."}}, "text", child)` */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  const { attrs, dataset, ...rest } = props;
  Object.assign(node, rest);
  for (const [key, value] of Object.entries(attrs || {})) if (value != null && value !== false) node.setAttribute(key, value);
  Object.assign(node.dataset, dataset || {});
  for (const child of children) if (child != null && child !== false) node.append(child);
  return node;
}

/** JSON on one line, cut to `max` characters. */
export function compact(value, max = 160) {
  let text;
  try { text = typeof value === "string" ? value : JSON.stringify(value); } catch { text = String(value); }
  if (text === undefined) text = "";
  return text.length > max ? text.slice(0, max - 1) + "…" : text;
}

/** Pretty JSON; strings that hold JSON (tool arguments) are parsed first. */
export function pretty(value) {
  if (typeof value === "string") {
    try { return JSON.stringify(JSON.parse(value), null, 2); } catch { return value; }
  }
  try { return JSON.stringify(value, null, 2); } catch { return String(value); }
}

export function timeOf(data) {
  const at = data && (data.at || data.ended_at || data.decided_at || data.requested_at || data.started_at);
  // The flight recorder writes epoch seconds; LLM events write ISO 8601 text.
  const date = typeof at === "number" ? new Date(at < 1e12 ? at * 1000 : at) : at ? new Date(at) : new Date();
  return Number.isNaN(date.getTime()) ? new Date() : date;
}

export function uiPath(type, name) {
  return "/ui/" + encodeURIComponent(type) + (name == null ? "" : "/" + encodeURIComponent(name));
}
