"""Every NATS and JetStream exception the mesh meets, mapped once onto the mesh error tree.

nats-py raises its own classes (`nats.errors.*`, `nats.js.errors.*`), some of them subclasses of
several others (a CAS conflict on a key is a `KeyValueError`, a `BadRequestError` and an
`APIError`), and some errors only show in a JetStream API error code. Modules outside the seam never
see them: the seam calls `map_error` (or wraps a block in `map_errors`) and raises the mesh error
`from` the original, so the cause stays in the traceback.

A timeout means different things to different callers: a request to an agent that did not answer
in time is `MeshTimeout`, but a JetStream API call that did not answer (a stream leader election, a
restarting server) is `Unavailable`, to be retried. Callers say which with `timeout=`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import nats.errors
import nats.js.errors as jse

from mesh.errors import (
    BadReply,
    ConnectionFailed,
    MeshError,
    MeshTimeout,
    NameInvalid,
    NoResponders,
    NotStored,
    PayloadTooLarge,
    RequestError,
    StateConflict,
    Unavailable,
)

WRONG_LAST_SEQUENCE = (10071, 10164)
"""JetStream error codes of a failed compare-and-set (`Nats-Expected-Last-Subject-Sequence`, and
the same check on a KV create); nats-py reports only the first as `KeyWrongLastSequenceError`."""
MESSAGE_TOO_LARGE = 10054
"""The stream's (or bucket's) `max_msg_size` refused the message."""

# Most specific first: the first class an exception is an instance of decides.
_CORE: tuple[tuple[type[BaseException], type[MeshError], str], ...] = (
    (nats.errors.NoRespondersError, NoResponders, "nobody is subscribed"),
    (nats.errors.ConnectionClosedError, ConnectionFailed, "the NATS connection is closed"),
    (nats.errors.ConnectionDrainingError, ConnectionFailed, "the NATS connection is draining"),
    (nats.errors.ConnectionReconnectingError, Unavailable, "the NATS connection is reconnecting"),
    (nats.errors.OutboundBufferLimitError, Unavailable, "reconnecting, and the outgoing buffer is full"),
    (nats.errors.StaleConnectionError, Unavailable, "the NATS connection went stale; reconnecting"),
    (nats.errors.SlowConsumerError, Unavailable, "a subscription fell behind and messages were dropped"),
    (nats.errors.MaxPayloadError, PayloadTooLarge, "the message is over NATS max_payload"),
    (nats.errors.BadSubjectError, NameInvalid, "not a valid NATS subject"),
    (nats.errors.BadHeaderError, RequestError, "a header NATS cannot carry"),
    (nats.errors.NoServersError, ConnectionFailed, "no NATS server could be reached"),
    (nats.errors.AuthorizationError, ConnectionFailed, "NATS refused the credentials"),
    (nats.errors.InvalidUserCredentialsError, ConnectionFailed, "the NATS credentials are invalid"),
    (nats.errors.SecureConnRequiredError, ConnectionFailed, "the NATS server requires TLS"),
    (nats.errors.SecureConnWantedError, ConnectionFailed, "the NATS server does not offer TLS"),
    (nats.errors.SecureConnFailedError, ConnectionFailed, "the TLS handshake with NATS failed"),
    (nats.errors.ProtocolError, ConnectionFailed, "NATS protocol error"),
    (nats.errors.JsonParseError, BadReply, "a NATS reply is not JSON"),
    (jse.NoStreamResponseError, NoResponders, "no stream stores this subject (or its leader is being elected)"),
    (jse.TooManyStalledMsgsError, Unavailable, "too many JetStream publishes await their ack"),
    (jse.ConsumerSequenceMismatchError, Unavailable, "a JetStream consumer lost messages; it restarts"),
    (jse.InvalidKeyError, NameInvalid, "not a valid KV key"),
    (jse.InvalidBucketNameError, NameInvalid, "not a valid bucket name"),
    (jse.InvalidObjectNameError, NameInvalid, "not a valid object name"),
    (jse.KeyValueLimitMarkerTTLNotSupportedError, RequestError, "the server does not support limit markers"),
)
_BY_STATUS: dict[int, type[MeshError]] = {
    400: RequestError,
    404: NotStored,
    408: Unavailable,
    409: Unavailable,  # JetStream's 409s are transient: leadership change, consumer deleted, max waiting
    413: PayloadTooLarge,
    500: Unavailable,
    503: Unavailable,
}


def map_error(exc: BaseException, what: str = "", *, timeout: type[MeshError] = MeshTimeout) -> MeshError:
    """The mesh error for `exc`, raised by nats-py (or the socket under it) while doing `what`.

    Mesh errors are returned as they are; an exception nats-py does not own becomes a plain
    `MeshError`. The caller raises the result `from exc`.
    """
    if isinstance(exc, MeshError):
        return exc
    prefix = f"{what}: " if what else ""
    if isinstance(exc, jse.APIError):
        return _api_error(exc, prefix)
    if isinstance(exc, TimeoutError):  # nats.errors.TimeoutError (and its flush/drain/fetch kinds) too
        return timeout(f"{prefix}no answer in time")
    for cls, mesh_cls, text in _CORE:
        if isinstance(exc, cls):
            return mesh_cls(f"{prefix}{text}{_detail(exc)}")
    if isinstance(exc, OSError):
        return ConnectionFailed(f"{prefix}{type(exc).__name__}: {exc}")
    if isinstance(exc, jse.Error):
        return MeshError(f"{prefix}JetStream: {exc}")
    if isinstance(exc, nats.errors.Error):
        return MeshError(f"{prefix}NATS: {exc}")
    return MeshError(f"{prefix}{type(exc).__name__}: {exc}")


def _api_error(exc: jse.APIError, prefix: str) -> MeshError:
    err_code = getattr(exc, "err_code", None)
    description = getattr(exc, "description", None) or type(exc).__name__
    if isinstance(exc, jse.KeyWrongLastSequenceError) or err_code in WRONG_LAST_SEQUENCE:
        return StateConflict(f"{prefix}changed since the expected revision ({description})")
    if err_code == MESSAGE_TOO_LARGE:
        return PayloadTooLarge(f"{prefix}{description}")
    if isinstance(exc, jse.NotFoundError):  # also buckets, keys (deleted or absent) and objects
        return NotStored(f"{prefix}{_not_found(exc, description)}")
    if isinstance(exc, jse.NoKeysError):
        return NotStored(f"{prefix}the bucket holds no keys")
    if isinstance(exc, jse.KeyHistoryTooLargeError):
        return RequestError(f"{prefix}a KV bucket keeps at most 64 revisions of a key")
    if isinstance(exc, jse.ServiceUnavailableError):
        return Unavailable(f"{prefix}JetStream is unavailable ({description})")
    code = getattr(exc, "code", None)
    cls = _BY_STATUS.get(code or 0, MeshError)
    return cls(f"{prefix}JetStream refused: {description}" + (f" (error {err_code})" if err_code else ""))


def _not_found(exc: jse.APIError, description: str) -> str:
    if isinstance(exc, jse.BucketNotFoundError):
        return "no such bucket"
    if isinstance(exc, (jse.KeyNotFoundError, jse.KeyDeletedError)):
        return "no such key"
    if isinstance(exc, (jse.ObjectNotFoundError, jse.ObjectDeletedError)):
        return "no such object"
    return description


def _detail(exc: BaseException) -> str:
    text = str(exc)
    generic = not text or text.startswith("nats: ") and len(text) < 40
    return "" if generic else f" ({text})"


@contextmanager
def map_errors(what: str = "", *, timeout: type[MeshError] = MeshTimeout) -> Iterator[None]:
    """Raise nats-py's exceptions from the block as mesh errors (`map_error`); others pass unchanged."""
    try:
        yield
    except (nats.errors.Error, TimeoutError, OSError) as exc:
        raise map_error(exc, what, timeout=timeout) from exc


def is_nats_error(exc: BaseException) -> bool:
    """True for the exceptions `map_errors` translates (for callers that log before mapping)."""
    return isinstance(exc, (nats.errors.Error, TimeoutError, OSError))
