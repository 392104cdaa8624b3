"""The OpenAPI 3.1 document, built from discovery so every served agent type gets its own typed route.

Request and reply schemas come from the `$SRV.INFO` endpoint metadata each worker publishes
(`mesh.request_schema`, `mesh.reply_schema`); their `$defs` move to `components.schemas`.
"""

from __future__ import annotations

from typing import Any

from mesh import __version__, subjects
from services.http import a2a, openai_api
from services.http.bridge import AgentType

PROBLEM = {"$ref": "#/components/schemas/Problem"}
PROBLEM_RESPONSE = {
    "description": "an error (RFC 9457 problem details)",
    "content": {"application/problem+json": {"schema": PROBLEM}},
}
NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "instance name: any text of 1 to 256 characters without '/' (percent-encoded in the URL)",
    "schema": {"type": "string", "minLength": 1, "maxLength": 256, "pattern": "^[^/]+$"},
}
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "a retried POST with the same key returns the first response and does not run again",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x21-\\x7e]+$"},
}
PREFER = {
    "name": "Prefer",
    "in": "header",
    "required": False,
    "description": "respond-async: reply 202 at once with a Location to poll; wait=N: wait at most N seconds",
    "schema": {"type": "string", "enum": ["respond-async"]},
}
ACCEPTED = {
    "description": "accepted (Prefer: respond-async); poll the Location",
    "headers": {"Location": {"schema": {"type": "string"}}},
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Run"}}},
}
RUN = {
    "type": "object",
    "required": ["id", "status", "agent"],
    "properties": {
        "id": {"type": "string"},
        "status": {"enum": ["pending", "succeeded", "failed"]},
        "agent": {"type": "object", "properties": {"type": {"type": "string"}, "name": {"type": "string"}}},
        "created_at": {"type": "number"},
        "finished_at": {"type": "number"},
        "result": {},
        "problem": PROBLEM,
    },
}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _hoist(schema: dict[str, Any] | None, prefix: str, components: dict[str, Any]) -> dict[str, Any]:
    """Move `$defs` into components and point `$ref`s there, so refs resolve from the document root."""
    if not schema:
        return {}
    schema = dict(schema)
    for key, value in (schema.pop("$defs", None) or {}).items():
        components[f"{prefix}_{key}"] = _rewrite(value, prefix)
    rewritten: dict[str, Any] = _rewrite(schema, prefix)
    return rewritten


def _rewrite(node: Any, prefix: str) -> Any:
    if isinstance(node, dict):
        out = {k: _rewrite(v, prefix) for k, v in node.items()}
        ref = out.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            out["$ref"] = f"#/components/schemas/{prefix}_{ref.removeprefix('#/$defs/')}"
        return out
    if isinstance(node, list):
        return [_rewrite(v, prefix) for v in node]
    return node


def build_openapi(types: list[AgentType], *, auth: bool) -> dict[str, Any]:
    components: dict[str, Any] = {
        "Problem": {
            "type": "object",
            "required": ["type", "title", "status", "code"],
            "properties": {
                "type": {"type": "string"},
                "title": {"type": "string"},
                "status": {"type": "integer"},
                "detail": {"type": "string"},
                "code": {"type": "string"},
                "instance": {"type": "string"},
            },
        },
        "Run": RUN,
    }
    names = [t.type for t in types]
    type_param = {
        "name": "type",
        "in": "path",
        "required": True,
        "description": "agent type",
        "schema": {"type": "string", "enum": names} if names else {"type": "string", "pattern": subjects.TYPE_PATTERN.pattern},
    }
    paths: dict[str, Any] = {
        "/agents": {
            "get": {
                "summary": "List the agent types being served ($SRV.INFO)",
                "operationId": "listTypes",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "types": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "properties": {
                                            "type": {"type": "string"},
                                            "workers": {"type": "integer"},
                                            "description": {"type": "string"},
                                        },
                                    },
                                }
                            },
                        }
                    ),
                    "default": PROBLEM_RESPONSE,
                },
            }
        },
        "/agents/{type}": {
            "get": {
                "summary": "List the stored instances of a type (keys of KV mesh_state)",
                "operationId": "listInstances",
                "parameters": [type_param],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "type": {"type": "string"},
                                "instances": {"type": "array", "items": {"type": "string"}},
                            },
                        }
                    ),
                    "default": PROBLEM_RESPONSE,
                },
            }
        },
        "/agents/{type}/{name}/state": {
            "get": {
                "summary": "Read an instance's stored state",
                "operationId": "getState",
                "parameters": [type_param, NAME],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "type": {"type": "string"},
                                "name": {"type": "string"},
                                "revision": {"type": "integer"},
                                "state": {},
                            },
                        }
                    ),
                    "default": PROBLEM_RESPONSE,
                },
            }
        },
        "/agents/{type}/{name}/messages": {
            "get": {
                "summary": "Read an LLM instance's conversation (its memory), a page at a time",
                "description": "Items are the SDK's conversation items, oldest first. `last_event_id` is where "
                "/events (Last-Event-ID or ?last_event_id=) continues this page: it replays the text being "
                "streamed now, which memory does not hold yet.",
                "operationId": "getMessages",
                "parameters": [
                    type_param,
                    NAME,
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "description": "items per page (default 100)",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                    },
                    {
                        "name": "before",
                        "in": "query",
                        "required": False,
                        "description": "the newest items older than this seq (the next page back)",
                        "schema": {"type": "integer", "minimum": 1},
                    },
                    {
                        "name": "after",
                        "in": "query",
                        "required": False,
                        "description": "the oldest items newer than this seq (catching up); not with before",
                        "schema": {"type": "integer", "minimum": 0},
                    },
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["type", "name", "items", "more", "last_event_id"],
                            "properties": {
                                "type": {"type": "string"},
                                "name": {"type": "string"},
                                "items": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["seq", "item"],
                                        "properties": {"seq": {"type": "integer"}, "item": {"type": "object"}},
                                    },
                                },
                                "more": {
                                    "type": "boolean",
                                    "description": "more items lie beyond this page (older; newer with after)",
                                },
                                "last_event_id": {"type": ["string", "null"]},
                            },
                        }
                    ),
                    "default": PROBLEM_RESPONSE,
                },
            }
        },
        "/agents/{type}/{name}/events": {
            "get": {
                "summary": "Live state and events as Server-Sent Events (resume with Last-Event-ID)",
                "operationId": "streamEvents",
                "parameters": [type_param, NAME],
                "responses": {
                    "200": {"description": "event stream", "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                    "default": PROBLEM_RESPONSE,
                },
            }
        },
        "/agents/{type}/{name}/approvals": {
            "get": {
                "summary": 'List an instance\'s pending approvals and recent decisions ({"op": "approvals"})',
                "operationId": "listApprovals",
                "parameters": [type_param, NAME],
                "responses": {
                    "200": _json(
                        {"type": "object", "properties": {"pending": {"type": "array"}, "decisions": {"type": "array"}}}
                    ),
                    "default": PROBLEM_RESPONSE,
                },
            }
        },
        "/agents/{type}/{name}/approvals/{id}/{decision}": {
            "post": {
                "summary": 'Approve or reject a pending approval ({"op": "approve"|"reject", ...})',
                "operationId": "decideApproval",
                "parameters": [
                    type_param,
                    NAME,
                    {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[^/]+$"}},
                    {"name": "decision", "in": "path", "required": True, "schema": {"enum": ["approve", "reject"]}},
                    PREFER,
                ],
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {"reason": {"type": "string"}},
                                "additionalProperties": False,
                            }
                        }
                    },
                },
                "responses": {"200": _json({}), "202": ACCEPTED, "default": PROBLEM_RESPONSE},
            }
        },
        "/runs/{id}": {
            "get": {
                "summary": "Poll a run started with Prefer: respond-async",
                "operationId": "getRun",
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/Run"}, "finished"),
                    "202": _json({"$ref": "#/components/schemas/Run"}, "still running"),
                    "default": PROBLEM_RESPONSE,
                },
            }
        },
        "/auth/tickets": {
            "post": {
                "summary": "A short-lived ticket for EventSource/WebSocket (?ticket=)",
                "operationId": "createTicket",
                "responses": {
                    "200": _json(
                        {"type": "object", "properties": {"ticket": {"type": "string"}, "expires_in": {"type": "integer"}}}
                    ),
                    "default": PROBLEM_RESPONSE,
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "Liveness",
                "operationId": "health",
                "security": [],
                "responses": {"200": _json({"type": "object"}), "default": PROBLEM_RESPONSE},
            }
        },
    }
    paths["/agents/{type}"]["post"] = {
        "summary": "A fresh instance with a unique name (nothing is sent until its first request)",
        "operationId": "createInstance",
        "parameters": [type_param],
        "responses": {
            "201": {
                "description": "the new instance's address",
                "headers": {"Location": {"schema": {"type": "string"}, "description": "/agents/{type}/{name}"}},
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["type", "name"],
                            "properties": {"type": {"type": "string"}, "name": {"type": "string"}},
                        }
                    }
                },
            },
            "default": PROBLEM_RESPONSE,
        },
    }
    for agent in types:
        for method in agent.methods.values():
            prefix = f"{agent.type}_{method.name}"
            operation: dict[str, Any] = {
                "summary": f"Run method {method.name} of agents.{agent.type}.<name> (Mesh-Method: {method.name})",
                "description": method.description or f"method {method.name} of agent type {agent.type}",
                "operationId": f"call_{agent.type}_{method.name}".replace("-", "_"),
                "parameters": [NAME],
                "responses": {
                    "200": _json(_hoist(method.reply_schema, f"{prefix}_reply", components), "the method's reply"),
                    "default": PROBLEM_RESPONSE,
                },
            }
            if method.request_schema is not None:
                schema = _hoist(method.request_schema, f"{prefix}_request", components)
                operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
            paths[f"/agents/{agent.type}/{{name}}/methods/{method.name}"] = {"post": operation}
        request = _hoist(agent.request_schema, f"{agent.type}_request", components)
        reply = _hoist(agent.reply_schema, f"{agent.type}_reply", components)
        paths[f"/agents/{agent.type}/{{name}}"] = {
            "post": {
                "summary": f"Send a request to agents.{agent.type}.<name> and return the reply",
                "description": agent.description or f"agent type {agent.type}",
                "operationId": f"call_{agent.type}".replace("-", "_"),
                "parameters": [NAME, IDEMPOTENCY_KEY, PREFER],
                "requestBody": {"required": True, "content": {"application/json": {"schema": request}}},
                "responses": {"200": _json(reply, "the agent's reply"), "202": ACCEPTED, "default": PROBLEM_RESPONSE},
            }
        }
    paths.update(openai_api.OPENAPI_PATHS)
    paths.update(a2a.OPENAPI_PATHS)
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "agent-mesh HTTP bridge",
            "version": __version__,
            "description": "Routes mirror NATS subjects; see subjects.md.",
        },
        "paths": paths,
        "components": {"schemas": components},
    }
    if auth:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        doc["security"] = [{"bearer": []}]
    return doc
