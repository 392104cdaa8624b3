"""Runnable services of agent-mesh: demo agents (and, later, the HTTP bridge and mail ingestion)."""
