// Forms generated from JSON Schema: the request schema each agent type publishes (and each method's),
// as labelled inputs; what a form cannot express falls back to a JSON field.

import { el } from "./dom.js";

let lastId = 0;
const nextId = (prefix) => `${prefix}-${++lastId}`;

export class FormError extends Error {}

/** A `$ref` resolver over `root` (an OpenAPI document, or a schema with `$defs`). */
export function makeResolver(root) {
  return function resolve(schema) {
    let current = schema || {};
    for (let hops = 0; current && current.$ref && hops < 32; hops++) {
      let target = root;
      for (const part of current.$ref.replace(/^#\//, "").split("/")) {
        target = target ? target[part.replace(/~1/g, "/").replace(/~0/g, "~")] : undefined;
      }
      const { $ref, ...rest } = current;
      current = { ...(target || {}), ...rest };
    }
    return current || {};
  };
}

/** Whether `schema` admits an object whose `op` is the constant `op` (LLM agents' control messages). */
export function admitsOp(schema, op, resolve, seen = new Set()) {
  if (!schema || typeof schema !== "object" || seen.has(schema)) return false;
  seen.add(schema);
  const resolved = resolve(schema);
  const prop = resolved.properties && resolve(resolved.properties.op || {});
  if (prop && (prop.const === op || (prop.enum || []).includes(op))) return true;
  for (const key of ["anyOf", "oneOf", "allOf"]) {
    if ((resolved[key] || []).some((sub) => admitsOp(sub, op, resolve, seen))) return true;
  }
  return false;
}

function variants(schema) {
  return schema.anyOf || schema.oneOf || null;
}

function isNull(schema) {
  return schema.type === "null";
}

function typeOf(schema) {
  if (Array.isArray(schema.type)) return schema.type.find((t) => t !== "null") || "null";
  if (schema.type) return schema.type;
  if (schema.properties) return "object";
  if (schema.enum) return "enum";
  return null;
}

function variantLabel(schema, resolve, index) {
  const s = resolve(schema);
  const op = s.properties && resolve(s.properties.op || {});
  if (op && op.const != null) return String(op.const);
  return s.title || typeOf(s) || `option ${index + 1}`;
}

/** A form for values of `schema`: `{element, read(), write(value)}`. `read()` throws FormError. */
export function buildForm(schema, resolve, { label = "Request" } = {}) {
  return field(schema || {}, resolve, { label, required: true, top: true });
}

function field(schema, resolve, { label, required, top = false, description }) {
  schema = resolve(schema);
  description = description || schema.description;
  const options = variants(schema);
  if (options) {
    const real = options.filter((o) => !isNull(resolve(o)));
    if (real.length === 1) return field(real[0], resolve, { label, required: false, top, description });
    return choiceField(real, resolve, { label, required, description });
  }
  if (schema.const !== undefined) return constField(schema.const, label);
  if (schema.enum) return enumField(schema, { label, required, description });
  const type = typeOf(schema);
  if (type === "object" && schema.properties) return objectField(schema, resolve, { label, top, description });
  if (type === "string" || type === "integer" || type === "number") return inputField(schema, type, { label, required, description });
  if (type === "boolean") return booleanField({ label, description, initial: schema.default === true });
  if (type === "null") return { element: el("p", { className: "muted", textContent: "No input needed." }), read: () => null, write() {} };
  if (type === "array" && ["string", "integer", "number"].includes(typeOf(resolve(schema.items || {})))) {
    return listField(typeOf(resolve(schema.items)), { label, required, description });
  }
  return jsonField({ label, required, description });
}

function labelled(label, input, description, required) {
  const id = input.id || (input.id = nextId("f"));
  const hint = description ? el("small", { className: "hint", id: id + "-hint", textContent: description }) : null;
  if (hint) input.setAttribute("aria-describedby", hint.id);
  if (required) input.required = true;
  return el("div", { className: "field" }, el("label", { htmlFor: id }, label, required ? el("span", { className: "req", textContent: " *", attrs: { "aria-hidden": "true" } }) : null), input, hint);
}

function objectField(schema, resolve, { label, top, description }) {
  const required = new Set(schema.required || []);
  const children = Object.entries(schema.properties).map(([key, sub]) => [key, field(sub, resolve, { label: key, required: required.has(key) })]);
  const body = children.map(([, child]) => child.element);
  const element = top
    ? el("div", { className: "object" }, ...body)
    : el("fieldset", { className: "object" }, el("legend", { textContent: label }), description ? el("small", { className: "hint", textContent: description }) : null, ...body);
  return {
    element,
    read() {
      const value = {};
      for (const [key, child] of children) {
        const v = child.read();
        if (v !== undefined) value[key] = v;
        else if (required.has(key)) throw new FormError(`${key} is required`);
      }
      return value;
    },
    write(value) {
      for (const [key, child] of children) child.write(value && typeof value === "object" ? value[key] : undefined);
    },
  };
}

function inputField(schema, type, { label, required, description }) {
  const long = type === "string" && (schema.maxLength == null || schema.maxLength > 200) && /text|message|body|prompt|input/i.test(label);
  const input = long ? el("textarea", { rows: 3 }) : el("input", { type: type === "string" ? "text" : "number" });
  if (type === "integer") input.step = "1";
  if (type !== "string") input.inputMode = type === "integer" ? "numeric" : "decimal";
  if (schema.pattern && !long) input.pattern = schema.pattern;
  if (schema.minimum != null) input.min = schema.minimum;
  if (schema.maximum != null) input.max = schema.maximum;
  if (schema.default != null) input.value = schema.default;
  if (schema.examples && schema.examples.length) input.placeholder = String(schema.examples[0]);
  return {
    element: labelled(label, input, description, required),
    read() {
      if (input.value === "") return undefined;
      if (type === "string") return input.value;
      const number = Number(input.value);
      if (!Number.isFinite(number) || (type === "integer" && !Number.isInteger(number))) throw new FormError(`${label} must be ${type === "integer" ? "a whole number" : "a number"}`);
      return number;
    },
    write(value) { input.value = value == null ? "" : String(value); },
  };
}

function enumField(schema, { label, required, description }) {
  const select = el("select", {});
  if (!required) select.append(el("option", { value: "", textContent: "—" }));
  schema.enum.forEach((value, index) => select.append(el("option", { value: String(index), textContent: String(value) })));
  return {
    element: labelled(label, select, description, required),
    read: () => (select.value === "" ? undefined : schema.enum[Number(select.value)]),
    write(value) {
      const index = schema.enum.indexOf(value);
      select.value = index < 0 ? (required ? "0" : "") : String(index);
    },
  };
}

function constField(value, label) {
  return {
    element: el("p", { className: "const" }, el("span", { className: "muted", textContent: label + ": " }), el("code", { textContent: JSON.stringify(value) })),
    read: () => value,
    write() {},
  };
}

function booleanField({ label, description, initial }) {
  const input = el("input", { type: "checkbox", checked: initial, id: nextId("f") });
  const hint = description ? el("small", { className: "hint", textContent: description }) : null;
  return {
    element: el("div", { className: "field check" }, input, el("label", { htmlFor: input.id, textContent: label }), hint),
    read: () => input.checked,
    write(value) { input.checked = value === true; },
  };
}

function listField(itemType, { label, required, description }) {
  const input = el("textarea", { rows: 3, placeholder: "one per line" });
  return {
    element: labelled(label, input, description, required),
    read() {
      const lines = input.value.split("\n").map((line) => line.trim()).filter(Boolean);
      if (!lines.length) return required ? [] : undefined;
      if (itemType === "string") return lines;
      return lines.map((line) => {
        const number = Number(line);
        if (!Number.isFinite(number)) throw new FormError(`${label}: ${line} is not a number`);
        return number;
      });
    },
    write(value) { input.value = Array.isArray(value) ? value.join("\n") : ""; },
  };
}

function jsonField({ label, required, description }) {
  const input = el("textarea", { rows: 3, spellcheck: false, className: "code", placeholder: "JSON" });
  return {
    element: labelled(label, input, description || "any JSON value", required),
    read() {
      if (!input.value.trim()) return required ? null : undefined;
      try { return JSON.parse(input.value); } catch (error) { throw new FormError(`${label} is not JSON: ${error.message}`); }
    },
    write(value) { input.value = value === undefined ? "" : JSON.stringify(value, null, 2); },
  };
}

function choiceField(options, resolve, { label, required, description }) {
  const select = el("select", {});
  options.forEach((option, index) => select.append(el("option", { value: String(index), textContent: variantLabel(option, resolve, index) })));
  const slot = el("div", { className: "variant" });
  let current = null;
  const show = () => {
    current = field(options[Number(select.value)], resolve, { label: `${label} (${select.selectedOptions[0].textContent})`, required });
    slot.replaceChildren(current.element);
  };
  select.onchange = show;
  show();
  return {
    element: el("div", { className: "choice" }, labelled(`${label}: kind`, select, description, false), slot),
    read: () => current.read(),
    write(value) { current.write(value); },
  };
}
