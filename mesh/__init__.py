"""agent-mesh: addressable, stateful AI agents on a NATS message bus."""

from mesh.agent import Agent  # noqa: E402
from mesh.bus import NatsOptions, NatsServer, connect  # noqa: E402
from mesh.client import MeshClient  # noqa: E402
from mesh.context import TurnContext, current_turn  # noqa: E402
from mesh.delivery import DurableDelivery  # noqa: E402
from mesh.durable import DurableOptions  # noqa: E402
from mesh.errors import (  # noqa: E402
    AgentError,
    ApprovalDecided,
    ApprovalNotFound,
    ApprovalPending,
    BadJson,
    CallCycle,
    ConnectionFailed,
    ConnectionGone,
    MeshError,
    MeshTimeout,
    MethodNotFound,
    NameInvalid,
    NoResponders,
    NotStored,
    OutcomeUnknown,
    PayloadTooLarge,
    RequestError,
    SchemaMismatch,
    StateConflict,
    StateError,
    StateInvalid,
    StateTooLarge,
    Unavailable,
)
from mesh.llm import LLMAgent, LLMReply  # noqa: E402
from mesh.mail import InboundEmail  # noqa: E402
from mesh.methods import method  # noqa: E402
from mesh.runtime import Runtime, RuntimeOptions  # noqa: E402
from mesh.subjects import agent_subject, decode_name, encode_name, instance_key  # noqa: E402
from mesh.tools import agent_tool  # noqa: E402
from mesh.version import __version__  # noqa: E402

__all__ = [
    "Agent",
    "AgentError",
    "ApprovalDecided",
    "ApprovalNotFound",
    "ApprovalPending",
    "BadJson",
    "CallCycle",
    "ConnectionFailed",
    "ConnectionGone",
    "DurableDelivery",
    "DurableOptions",
    "InboundEmail",
    "LLMAgent",
    "LLMReply",
    "MeshClient",
    "MeshError",
    "MeshTimeout",
    "MethodNotFound",
    "NameInvalid",
    "NatsOptions",
    "NatsServer",
    "NoResponders",
    "NotStored",
    "OutcomeUnknown",
    "PayloadTooLarge",
    "RequestError",
    "Runtime",
    "RuntimeOptions",
    "SchemaMismatch",
    "StateConflict",
    "StateError",
    "StateInvalid",
    "StateTooLarge",
    "TurnContext",
    "Unavailable",
    "__version__",
    "agent_subject",
    "agent_tool",
    "connect",
    "current_turn",
    "decode_name",
    "encode_name",
    "instance_key",
    "method",
]
