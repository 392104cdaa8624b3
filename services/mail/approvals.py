"""Approval by mail: a pending tool call is mailed to the approvers; their reply decides it.

The approval mail comes from the instance's signed address `<type>+<name>+t<approval id>-<mac>@domain`
(HMAC-SHA256 with `MESH_SMTP_SECRET`). A reply to it is acted on only when the token verifies for
that instance, the envelope sender is a configured approver, a trusted authentication verdict (if
any) is not `fail`, the mail is not automatic, and its first line is `approve` or `reject [reason]`.
The decision goes to the instance as `{"op": "approve"|"reject", "id", "by", "reason"}` (the LLM agent
protocol); the resumed run's answer is mailed to the person who asked, in their thread.
"""

from __future__ import annotations

import re
import time
from typing import Any

import structlog

from mesh import subjects, wire
from mesh.client import MeshClient
from mesh.errors import MeshError
from mesh.mail import InboundEmail
from services.mail.config import MailConfig
from services.mail.outbox import Outbox, build_reply, new_message, reply_subject, reply_text
from services.mail.routing import Route, agent_address, sign_token, verify_token
from services.mail.store import MailStore, short_hash

_DECISION = re.compile(r"^\s*(approve|reject)\b[\s:,.-]*(.*)$", re.IGNORECASE)

log = structlog.get_logger("mesh.mail")


def first_line(text: str) -> str:
    return next((line for line in text.splitlines() if line.strip()), "")


class MailApprovals:
    def __init__(self, store: MailStore, client: MeshClient, outbox: Outbox, config: MailConfig) -> None:
        self.store = store
        self.client = client
        self.outbox = outbox
        self.config = config

    async def request(self, agent_type: str, name: str, mail: InboundEmail, result: dict[str, Any]) -> None:
        """Mail every configured approver about each new pending approval in an agent's reply."""
        approvals = [a for a in result.get("approvals") or [] if isinstance(a, dict) and a.get("id")]
        if not approvals:
            return
        if not self.config.approvers or self.config.secret is None:
            log.info(
                "mail.approval_not_mailed",
                agent_type=agent_type,
                agent_name=name,
                reason="no MESH_SMTP_APPROVERS or MESH_SMTP_SECRET configured",
            )
            return
        for approval in approvals:
            approval_id = str(approval["id"])
            await self.store.put_record(
                "approval",
                short_hash(agent_type, name, approval_id),
                {
                    "requester": mail.sender,
                    "message_id": mail.message_id,
                    "references": mail.references,
                    "subject": mail.subject,
                    "at": time.time(),
                },
            )
            token = sign_token(self.config.secret, agent_type, name, approval_id)
            text = (
                f"{agent_type}/{name} wants to call the tool `{approval.get('tool')}` with:\n\n"
                f"    {approval.get('arguments')}\n\n"
                f"It was asked by {mail.sender or 'an unknown sender'} ({mail.subject!r}):\n\n"
                + "\n".join(f"    {line}" for line in mail.text.splitlines()[:20])
                + "\n\nReply to this mail with `approve` or `reject <reason>` as the first line."
                f"\nApproval {approval_id}; it expires at {approval.get('expires_at')}.\n"
            )
            for approver in self.config.approvers:
                message = new_message(
                    from_address=agent_address(agent_type, name, self.config.domain, token),
                    from_name=f"{agent_type.capitalize()} approvals",
                    to=approver,
                    domain=self.config.domain,
                    subject=f"Approval needed: {approval.get('tool')} for {agent_type}/{name}",
                    text=text,
                )
                await self.outbox.enqueue(message, short_hash("approval", approval_id, approver))
            log.info(
                "mail.approval_requested",
                agent_type=agent_type,
                agent_name=name,
                approval_id=approval_id,
                approvers=list(self.config.approvers),
            )

    async def handle_reply(self, route: Route, name: str, mail: InboundEmail) -> str:
        """Decide an approval from a reply to an approval mail; returns the outcome recorded for dedupe."""
        bound = log.bind(mail_id=mail.mail_id, agent_type=route.agent_type, agent_name=name, sender=mail.sender)
        assert route.token is not None
        approval_id = verify_token(self.config.secret, route.agent_type, name, route.token)
        sender = mail.sender.lower()
        refusal = None
        if approval_id is None:
            refusal = "invalid token"
        elif sender not in self.config.approvers:
            refusal = "sender is not an approver"
        elif mail.auth.verdict == "fail":
            refusal = "sender authentication failed"
        elif mail.automatic:
            refusal = f"automatic mail ({mail.automatic_reason})"
        match = _DECISION.match(first_line(mail.text))
        if refusal is None and match is None:
            refusal = "first line is neither 'approve' nor 'reject [reason]'"
        if refusal is not None or match is None or approval_id is None:
            bound.warning("mail.approval_refused", reason=refusal)
            return "refused"
        decision, reason = match.group(1).lower(), match.group(2).strip() or None
        request = {"op": decision, "id": approval_id, "by": sender, "reason": reason}
        try:
            body = await self.client.call_raw(
                subjects.agent_subject(route.agent_type, name), wire.dumps(request), timeout=self.config.call_timeout
            )
        except MeshError as err:
            bound.info("mail.approval_failed", approval_id=approval_id, code=err.code, error=err.message)
            await self._tell(route.agent_type, name, mail, f"Your decision was not applied ({err.code}): {err.message}")
            return f"failed:{err.code}"
        result = wire.loads(body)
        bound.info("mail.approval_decided", approval_id=approval_id, decision=decision)
        answer = reply_text(result) or ""
        await self._tell(route.agent_type, name, mail, f"Recorded: {decision}d {approval_id}.\n\n{answer}")
        await self._answer_requester(route.agent_type, name, approval_id, answer)
        return f"{decision}d"

    async def _tell(self, agent_type: str, name: str, mail: InboundEmail, text: str) -> None:
        reply = build_reply(
            mail,
            from_address=agent_address(agent_type, name, self.config.domain),
            from_name=f"{agent_type.capitalize()} approvals",
            text=text,
            domain=self.config.domain,
        )
        await self.outbox.enqueue(reply, short_hash("approval-ack", mail.mail_id))

    async def _answer_requester(self, agent_type: str, name: str, approval_id: str, answer: str) -> None:
        found = await self.store.get_record("approval", short_hash(agent_type, name, approval_id))
        if found is None or not found[0].get("requester"):
            return
        record = found[0]
        message = new_message(
            from_address=agent_address(agent_type, name, self.config.domain),
            from_name=agent_type.capitalize(),
            to=record["requester"],
            subject=reply_subject(record.get("subject") or ""),
            text=answer,
            domain=self.config.domain,
            in_reply_to=record.get("message_id"),
            references=record.get("references"),
        )
        message.message.replace_header("Auto-Submitted", "auto-replied")
        await self.outbox.enqueue(message, short_hash("approval-answer", approval_id))
