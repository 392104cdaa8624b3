"""SMTP ingestion: agents reachable by mail, replying in-thread, losing nothing.

server.py     aiosmtpd sessions: route at RCPT, store durably at DATA, then 250
routing.py    recipient address → agent instance (pluggable resolver), signed tokens
parse.py      raw bytes → `mesh.mail.InboundEmail` (html.py: HTML bodies to text)
store.py      JetStream streams, object store and KV records
processor.py  stored mail → agent turn → reply, at least once, deduplicated
outbox.py     durable replies through the relay (aiosmtplib)
approvals.py  pending approvals decided by mail
service.py    all of the above on one NATS connection

Nothing is imported here: a `mesh worker` reads `settings.py` without loading the service.
"""
