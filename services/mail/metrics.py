"""Prometheus counts of the mail service, in the process's one registry (`mesh.metrics.REGISTRY`)."""

from __future__ import annotations

from prometheus_client import Counter

from mesh.metrics import REGISTRY

MAIL_MESSAGES = Counter(
    "mesh_mail_messages",
    "Mail received over SMTP, by outcome (accepted or rejected) and reason.",
    ["outcome", "reason"],
    registry=REGISTRY,
)
