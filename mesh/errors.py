"""The mesh's exceptions: one tree, each error with a stable code that travels on the wire.

    MeshError
    ├── RequestError            the request itself is wrong; retrying it unchanged will not help
    │   ├── BadJson             body is not JSON                                   bad_json 400
    │   ├── NameInvalid         instance or type name cannot be addressed          name_invalid 400
    │   ├── PayloadTooLarge     body over the configured request limit             payload_too_large 413
    │   ├── SchemaMismatch      JSON does not match the handler's request model    schema_mismatch 422
    │   ├── MethodNotFound      `Mesh-Method` names no method marked `@mesh.method`  method_not_found 404
    │   ├── ApprovalNotFound    no such approval on this LLM instance              approval_not_found 404
    │   ├── ApprovalDecided     the approval was already decided (or expired)      approval_decided 409
    │   ├── ApprovalPending     a message came while a run awaits approval         approval_pending 409
    │   └── ConnectionGone      the instance holds no such connection (closed)     connection_gone 410
    ├── AgentError              the handler raised                                 handler_error 500
    ├── StateError              a turn produced state that cannot be saved
    │   ├── StateInvalid        state fails its own model's validation             state_invalid 500
    │   └── StateTooLarge       serialized state over the configured limit         state_too_large 507
    ├── StateConflict           a compare-and-set on state or directory lost        conflict 409
    ├── CallCycle               the call would wait on an instance already waiting  call_cycle 508
    ├── NoResponders            no worker serves this agent type                   no_responders 503
    ├── Unavailable             a worker cannot take the turn now; retry           unavailable 503
    ├── MeshTimeout             the deadline passed before a reply                 timeout 504
    ├── OutcomeUnknown          the request may or may not have taken effect       outcome_unknown 504
    ├── ConnectionFailed        cannot reach NATS                                  connection_failed 503
    ├── NotStored               a stream, bucket, key or message is not stored     not_stored 404
    └── BadReply                the agent's reply is not JSON                      bad_reply 502

`code` is the stable identifier (the `Mesh-Error-Code` header); `status` is the HTTP-like number sent
in `Nats-Service-Error-Code`, following the NATS micro convention.

The HTTP bridge adds its own leaves to this tree (401, 403, 404, 405, 409, 422 answers that never
travel on NATS) in `services/http/errors.py`.
"""

from __future__ import annotations

from typing import ClassVar


class MeshError(Exception):
    """Base of every error the mesh raises or sends over the wire."""

    code: ClassVar[str] = "mesh_error"
    status: ClassVar[int] = 500

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.code)
        self.message = message or self.code

    def to_wire(self) -> dict[str, object]:
        return {"code": self.code, "status": self.status, "message": self.message}


class RequestError(MeshError):
    code = "bad_request"
    status = 400


class BadJson(RequestError):
    code = "bad_json"
    status = 400


class NameInvalid(RequestError):
    code = "name_invalid"
    status = 400


class PayloadTooLarge(RequestError):
    code = "payload_too_large"
    status = 413


class SchemaMismatch(RequestError):
    code = "schema_mismatch"
    status = 422


class MethodNotFound(RequestError):
    code = "method_not_found"
    status = 404


class ApprovalNotFound(RequestError):
    code = "approval_not_found"
    status = 404


class ApprovalDecided(RequestError):
    code = "approval_decided"
    status = 409


class ApprovalPending(RequestError):
    code = "approval_pending"
    status = 409


class ConnectionGone(RequestError):
    """An event or send names a connection the instance does not hold (it closed, or was reaped
    after its bridge died)."""

    code = "connection_gone"
    status = 410


class AgentError(MeshError):
    code = "handler_error"
    status = 500


class StateError(MeshError):
    code = "state_error"
    status = 500


class StateInvalid(StateError):
    code = "state_invalid"
    status = 500


class StateTooLarge(StateError):
    code = "state_too_large"
    status = 507


class StateConflict(MeshError):
    code = "conflict"
    status = 409


class CallCycle(MeshError):
    code = "call_cycle"
    status = 508


class NoResponders(MeshError):
    code = "no_responders"
    status = 503


class Unavailable(MeshError):
    code = "unavailable"
    status = 503


class MeshTimeout(MeshError):
    code = "timeout"
    status = 504


class OutcomeUnknown(MeshError):
    """The request may or may not have taken effect, and the mesh could not find out which.

    Raised when a state write was sent but its acknowledgement never came and reading the key back
    could not settle it, and by `MeshClient` when an attempt was answered so and no later attempt
    settled it. Never treat it as "nothing ran": retry with the same request id (`Mesh-Request-Id`,
    which `MeshClient` reuses on its own retries) to get the original reply, or the one run.
    """

    code = "outcome_unknown"
    status = 504


class ConnectionFailed(MeshError):
    code = "connection_failed"
    status = 503


class NotStored(MeshError):
    """JetStream has no such stream, bucket, key, object or message (mapped from its 404s)."""

    code = "not_stored"
    status = 404


class BadReply(MeshError):
    code = "bad_reply"
    status = 502


def _leaves(cls: type[MeshError]) -> list[type[MeshError]]:
    found: list[type[MeshError]] = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_leaves(sub))
    return found


_ALL: list[type[MeshError]] = [MeshError, *_leaves(MeshError)]
ERRORS_BY_CODE: dict[str, type[MeshError]] = {cls.code: cls for cls in _ALL}
"""Every error class by its wire code; the table in subjects.md lists the same codes."""


def error_from_wire(code: str | None, status: str | int | None, message: str) -> MeshError:
    """Rebuild the typed exception a remote agent sent, so callers can `except StateConflict`."""
    cls = ERRORS_BY_CODE.get(code or "")
    if cls is None:
        err = MeshError(message)
        if status is not None:
            try:
                err.status = int(status)  # type: ignore[misc]
            except ValueError:
                pass
        return err
    return cls(message)
