// The request view of agent types that are not LLM agents: a form generated from the type's request
// schema (with a raw JSON toggle), its methods with their own forms, and pending approvals.

import { buildForm, FormError } from "./forms.js";
import { compact, el, pretty } from "./dom.js";

/** A schema form with a "Raw JSON" toggle: `{element, read()}`. */
export function requestEditor(schema, resolve, { label, idPrefix }) {
  const usable = schema && Object.keys(schema).length > 0;
  const form = buildForm(schema, resolve, { label });
  const raw = el("textarea", { id: idPrefix + "-raw", rows: 5, spellcheck: false, className: "code", hidden: usable });
  const rawLabel = el("label", { htmlFor: raw.id, className: "visually-hidden", textContent: `${label} as JSON` });
  const toggle = el("input", { type: "checkbox", id: idPrefix + "-toggle", checked: !usable });
  const fields = el("div", { className: "fields", hidden: !usable }, form.element);
  if (!usable) raw.value = "null";
  toggle.onchange = () => {
    if (toggle.checked) {
      try { raw.value = JSON.stringify(form.read(), null, 2); } catch { /* keep what the box had */ }
    } else {
      try { form.write(JSON.parse(raw.value)); } catch { /* the form keeps its values */ }
    }
    raw.hidden = !toggle.checked;
    fields.hidden = toggle.checked;
  };
  const element = el("div", { className: "editor" },
    el("div", { className: "toggle" }, toggle, el("label", { htmlFor: toggle.id, textContent: "Raw JSON" })),
    fields, rawLabel, raw);
  return {
    element,
    read() {
      if (!toggle.checked) return form.read();
      try { return JSON.parse(raw.value || "null"); } catch (error) { throw new FormError(`not JSON: ${error.message}`); }
    },
  };
}

function showReply(target, reply) {
  target.className = "reply";
  target.textContent = pretty(reply);
}

function showError(target, error) {
  target.className = "reply error";
  target.textContent = error instanceof FormError ? error.message : `${error.code || "error"}: ${error.message}`;
}

export class RequestPanel {
  constructor(root, { agent, info }) {
    this.root = root;
    this.agent = agent;
    this.info = info;
    this.approvalsList = null;
  }

  render() {
    const { info, agent } = this;
    const editor = requestEditor(info.schema, info.resolve, { label: "Request", idPrefix: "request" });
    const reply = el("pre", { id: "reply", className: "reply muted", attrs: { "aria-live": "polite" }, textContent: "No request sent yet." });
    const send = el("button", { type: "submit", id: "send-request", textContent: "Send" });
    const form = el("form", { id: "request-form", noValidate: true, attrs: { "aria-labelledby": "request-heading" } },
      el("h3", { id: "request-heading", textContent: "Request" }),
      editor.element, el("div", { className: "actions" }, send));
    form.onsubmit = async (event) => {
      event.preventDefault();
      let body;
      try { body = editor.read(); } catch (error) { return showError(reply, error); }
      send.disabled = true;
      reply.className = "reply muted";
      reply.textContent = "Sending…";
      try { showReply(reply, await agent.call(body)); } catch (error) { showError(reply, error); }
      send.disabled = false;
    };
    const parts = [form, el("section", { className: "card-ish", attrs: { "aria-label": "Reply" } }, el("h3", { textContent: "Reply" }), reply)];
    if (info.methods.length) parts.push(this._methods());
    if (info.approvals) {
      this.approvalsList = el("ul", { id: "approvals", className: "approvals" }, el("li", { className: "muted", textContent: "none" }));
      parts.push(el("section", { attrs: { "aria-label": "Pending approvals" } }, el("h3", { textContent: "Pending approvals" }), this.approvalsList));
      this.loadApprovals();
    }
    this.root.replaceChildren(...parts);
  }

  _methods() {
    const { info, agent } = this;
    const section = el("section", { attrs: { "aria-labelledby": "methods-heading" } }, el("h3", { id: "methods-heading", textContent: "Methods" }));
    for (const method of info.methods) {
      const editor = method.input
        ? requestEditor(method.schema, info.resolve, { label: method.name, idPrefix: "method-" + method.name })
        : { element: el("p", { className: "muted", textContent: "It takes no input." }), read: () => null };
      const out = el("pre", { className: "reply muted", hidden: true, attrs: { "aria-live": "polite" } });
      const button = el("button", { type: "submit", textContent: `Call ${method.name}` });
      const form = el("form", { className: "method", noValidate: true, attrs: { "aria-label": `Method ${method.name}` } },
        el("h4", {}, el("code", { textContent: method.name })),
        method.description ? el("p", { className: "muted", textContent: method.description }) : null,
        editor.element, el("div", { className: "actions" }, button), out);
      form.onsubmit = async (event) => {
        event.preventDefault();
        let body;
        out.hidden = false;
        try { body = editor.read(); } catch (error) { return showError(out, error); }
        button.disabled = true;
        try { showReply(out, await agent.call(body, { method: method.name })); } catch (error) { showError(out, error); }
        button.disabled = false;
      };
      section.append(form);
    }
    return section;
  }

  async loadApprovals() {
    if (!this.approvalsList) return;
    const list = this.approvalsList;
    let pending = [];
    try { pending = ((await this.agent.approvals()).pending || []).filter((a) => !a.decision); } catch (error) {
      list.replaceChildren(el("li", { className: "error", textContent: `${error.code}: ${error.message}` }));
      return;
    }
    list.replaceChildren();
    if (!pending.length) list.append(el("li", { className: "muted", textContent: "none" }));
    for (const approval of pending) {
      const approve = el("button", { type: "button", className: "approve", textContent: "Approve" });
      const reject = el("button", { type: "button", className: "reject", textContent: "Reject" });
      const decide = async (decision) => {
        approve.disabled = reject.disabled = true;
        try { await (decision === "approve" ? this.agent.approve(approval.id) : this.agent.reject(approval.id)); } catch (error) {
          list.append(el("li", { className: "error", textContent: `${error.code}: ${error.message}` }));
        }
        this.loadApprovals();
      };
      approve.onclick = () => decide("approve");
      reject.onclick = () => decide("reject");
      list.append(el("li", { dataset: { id: approval.id } },
        el("div", { className: "what" }, el("strong", { textContent: approval.tool || "approval" }), " ", el("code", { textContent: compact(approval.arguments) })),
        approve, reject, el("span", { className: "muted", textContent: approval.id })));
    }
  }

  handle(event) {
    if (/^approval/.test(event.kind)) this.loadApprovals();
  }
}
