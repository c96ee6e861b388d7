"""What agents and messages look like to users."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, JsonValue

from habitus.ledger._models import Event, construct_checked, fast_event
from habitus.ledger._rows import event_fields
from habitus.storage._abstract import Row

__all__ = ["AgentInfo", "AgentStatusName", "Message", "message_from_row"]

AgentStatusName = Literal["spawned", "active", "suspended", "retired"]


class AgentInfo(BaseModel):
    """An agent's identity and lifecycle status.

    Attributes:
        id: The agent's id; its principal is ``agent:<id>``.
        name: A human-readable name.
        owner: The principal who answers for it (``human:…`` or ``service:…``).
        labels: Free-form string labels.
        behaviour: Name of the behaviour (class or function) the app runs it with.
        topics: Topic patterns it subscribes to.
        status: ``spawned``, ``active``, ``suspended`` or ``retired``.
        spawned_seq: Seq of its ``agent.spawned`` event.
        updated_seq: Seq of its latest lifecycle event.
    """

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    owner: str
    labels: dict[str, str]
    behaviour: str
    topics: list[str]
    status: AgentStatusName
    spawned_seq: int
    updated_seq: int

    @property
    def principal(self) -> str:
        """``agent:<id>``."""
        return f"agent:{self.id}"


class Message(BaseModel):
    """A message as a handler receives it.

    Attributes:
        id: The message event's id (cite it as a cause, reply to it).
        seq: The message event's seq.
        sender: The principal that sent it.
        to: The recipient principal (``agent:<id>``) or, if published, the topic.
        type: The message type that selected the handler, if any.
        topic: The topic it was published on, if it was published.
        body: The content: text, a JSON object or array, or bytes.
        thread: Its thread.
        expects_reply: True for a request.
        in_reply_to: For a reply, the id of the request it answers.
        attempt: 1 on first delivery, more on retries.
        trust: ``untrusted`` when it carries content from outside (a ``source:`` principal,
            or an agent handling such content), else ``trusted``.
        event: The underlying ledger event.
    """

    model_config = ConfigDict(frozen=True, ser_json_bytes="base64", val_json_bytes="base64")

    id: uuid.UUID
    seq: int
    sender: str
    to: str
    type: str | None = None
    topic: str | None = None
    body: Any = None
    thread: str | None = None
    ts: datetime
    expects_reply: bool = False
    in_reply_to: uuid.UUID | None = None
    attempt: int = 1
    trust: Literal["trusted", "untrusted"] = "trusted"
    event: Event

    @classmethod
    def from_event(cls, event: Event, *, attempt: int = 1) -> Message:
        """Read a ``message.sent``, ``message.published`` or ``timer.fired`` event as a message."""
        return _message(event.__dict__, event, attempt)


def _message(fields: dict[str, Any], event: Event, attempt: int) -> Message:
    """The message of an event whose field values are ``fields`` (read from the dict, not the model)."""
    meta: dict[str, JsonValue] = fields["meta"]
    kind = fields["kind"]
    topic = meta.get("topic") if kind == "message.published" else None
    kind_type = "timer" if kind == "timer.fired" else meta.get("type")
    reply = meta.get("in_reply_to")
    to = meta.get("to") or meta.get("agent") or topic or ""
    # Built from a committed event whose fields the ledger already checked: no re-validation.
    return construct_checked(
        Message,
        {
            "id": fields["id"],
            "seq": fields["seq"],
            "sender": fields["actor"],
            "to": to if type(to) is str else str(to),
            "type": kind_type if isinstance(kind_type, str) else None,
            "topic": topic if isinstance(topic, str) else None,
            "body": fields["content"],
            "thread": fields["thread"],
            "ts": fields["ts"],
            "expects_reply": bool(meta.get("expects_reply", False)),
            "in_reply_to": uuid.UUID(reply) if isinstance(reply, str) else None,
            "attempt": attempt,
            "trust": "untrusted" if meta.get("trust") == "untrusted" else "trusted",
            "event": event,
        },
        _MESSAGE_FIELDS,
    )


_MESSAGE_FIELDS = set(Message.model_fields)


def message_from_row(row: Row, *, attempt: int = 1) -> Message:
    """``Message.from_event(event_from_row(row), attempt=attempt)``, reading the event's values once.

    Every delivery builds one; the message and its event share their values.
    """
    fields = event_fields(row)
    return _message(fields, fast_event(fields), attempt)
