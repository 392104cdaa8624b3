"""The one seam to nats-py and nats-server (private: the mesh's public face for it is `mesh.bus`).

Only modules in this package import nats-py. The rest of the mesh gets from here the types it
hints with (`Connection`, `Message`, `JetStream`, `Subscription`: nats-py's own classes), the
operations it needs (connect, request, publish, KV, streams, consumers, the micro service, the
embedded server), and mesh errors only: `map_error` turns every NATS and JetStream exception into
the mesh error tree, once (`errors`). The measured hot-path shortcuts (`outbox`, `inbox`) rely on
nats-py internals that `selfcheck` verifies at start-up, falling back to the public API.
"""

from mesh._nats.connection import (
    Connection,
    JetStream,
    Message,
    NatsOptions,
    Subscription,
    connect,
    drain,
    next_message,
    redact_servers,
    subscribe,
    unsubscribe,
    watch_connection,
    worker_subjects_denied,
)
from mesh._nats.errors import map_error, map_errors
from mesh._nats.healing import Healer, healer_of
from mesh._nats.inbox import ReplyInbox, inbox_of, request
from mesh._nats.kv import Bucket, Change, Objects, Watch, bind_bucket, open_bucket, open_objects
from mesh._nats.outbox import publish, publish_now
from mesh._nats.server import NatsServer, find_binary, free_port
from mesh._nats.service import Service
from mesh._nats.streams import (
    Ack,
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    PullConsumer,
    RetentionPolicy,
    StorageType,
    Stored,
    StreamConfig,
    SubjectTransform,
    add_pull_consumer,
    delete_stored,
    ensure_stream,
    find_stream,
    follow_stream,
    get_stored,
    last_stored,
    pull_consumer,
    purge,
    read_subject,
    store,
    stream_for,
    stream_subjects,
)

__all__ = [
    "Ack",
    "AckPolicy",
    "Bucket",
    "Change",
    "Connection",
    "ConsumerConfig",
    "DeliverPolicy",
    "DiscardPolicy",
    "Healer",
    "JetStream",
    "Message",
    "NatsOptions",
    "NatsServer",
    "Objects",
    "PullConsumer",
    "ReplyInbox",
    "RetentionPolicy",
    "Service",
    "StorageType",
    "Stored",
    "StreamConfig",
    "SubjectTransform",
    "Subscription",
    "Watch",
    "add_pull_consumer",
    "bind_bucket",
    "connect",
    "delete_stored",
    "drain",
    "ensure_stream",
    "find_binary",
    "find_stream",
    "follow_stream",
    "free_port",
    "get_stored",
    "healer_of",
    "inbox_of",
    "last_stored",
    "map_error",
    "map_errors",
    "next_message",
    "open_bucket",
    "open_objects",
    "publish",
    "publish_now",
    "pull_consumer",
    "purge",
    "read_subject",
    "redact_servers",
    "request",
    "store",
    "stream_for",
    "stream_subjects",
    "subscribe",
    "unsubscribe",
    "watch_connection",
    "worker_subjects_denied",
]
