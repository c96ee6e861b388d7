"""The message kinds the runtime adds: publishing, failed deliveries and dead letters."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from habitus.ledger._kinds import KindSpec, MetaModel, register_kinds

__all__ = ["MESSAGE_KINDS"]

_Name = Annotated[str, Field(min_length=1, max_length=256)]


class PublishedMeta(MetaModel):
    """Meta of ``message.published``: the topic, and how many agents it was queued for."""

    topic: _Name
    type: _Name | None = None
    recipients: int
    trust: Literal["untrusted"] | None = None


class DeliveryFailedMeta(MetaModel):
    """Meta of ``message.failed`` and ``message.dead_lettered``."""

    agent: _Name
    message_seq: int
    attempt: int
    error: Annotated[str, Field(max_length=2000)]


MESSAGE_KINDS = (
    KindSpec(
        "message.published",
        "A principal published a message to a topic; subscribers got it queued.",
        PublishedMeta,
        "required",
    ),
    KindSpec(
        "message.failed",
        "A handler raised on a message; it will be retried after a backoff.",
        DeliveryFailedMeta,
        "none",
    ),
    KindSpec(
        "message.dead_lettered",
        "A message failed too many times (or its agent was retired) and moved to the dead letters.",
        DeliveryFailedMeta,
        "none",
    ),
)

register_kinds(*MESSAGE_KINDS)
