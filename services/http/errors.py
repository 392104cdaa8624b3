"""The errors only the HTTP bridge raises: each one an answer to an HTTP request, never a NATS reply.

They join the mesh's one exception tree (`mesh.errors`) with stable codes, which the bridge sends
as the `code` of its problem documents and in the `Mesh-Error-Code` header:

    MeshError
    ├── RequestError
    │   ├── Unauthorized          no valid bearer token or ticket                unauthorized 401
    │   ├── Forbidden             WebSocket Origin not allowed                   forbidden 403
    │   ├── NotFound              no such route, state or run                    not_found 404
    │   │   └── ModelNotFound     no LLM agent type by that model name (/v1)     model_not_found 404
    │   ├── MethodNotAllowed      route exists, method does not                  method_not_allowed 405
    │   └── IdempotencyKeyReused  same key, different request                    idempotency_key_reused 422
    └── IdempotencyInProgress     the first request with this key still runs     idempotency_in_progress 409

No worker sends these codes, so `mesh.errors.error_from_wire` does not know them.
"""

from __future__ import annotations

from mesh.errors import MeshError, RequestError


class Unauthorized(RequestError):
    code = "unauthorized"
    status = 401


class Forbidden(RequestError):
    code = "forbidden"
    status = 403


class NotFound(RequestError):
    code = "not_found"
    status = 404


class ModelNotFound(NotFound):
    """OpenAI-compatible API: `model` names no LLM agent type being served (OpenAI's own code)."""

    code = "model_not_found"


class MethodNotAllowed(RequestError):
    code = "method_not_allowed"
    status = 405


class IdempotencyKeyReused(RequestError):
    code = "idempotency_key_reused"
    status = 422


class IdempotencyInProgress(MeshError):
    code = "idempotency_in_progress"
    status = 409


HTTP_ERRORS: tuple[type[MeshError], ...] = (
    Unauthorized,
    Forbidden,
    NotFound,
    ModelNotFound,
    MethodNotAllowed,
    IdempotencyKeyReused,
    IdempotencyInProgress,
)
"""The bridge's own errors; subjects.md's "HTTP error codes" table lists the same codes."""
