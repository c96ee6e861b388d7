"""The kind families the ledger itself defines: habitat, content, message, note,
observation, decision and policy. Later subsystems declare theirs beside their code."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from habitus.ledger._kinds import KindSpec, MetaModel, register_kinds

__all__ = ["CORE_KINDS"]

_Name = Annotated[str, Field(min_length=1, max_length=256)]
_Id = Annotated[str, Field(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")]


class HabitatCreatedMeta(MetaModel):
    """Meta of ``habitat.created``."""

    name: _Name
    habitus_version: _Name


class ContentErasedMeta(MetaModel):
    """Meta of ``content.erased``: which event lost its content, and why."""

    target: _Id
    target_seq: Annotated[int, Field(ge=1)]
    reason: Annotated[str, Field(min_length=1, max_length=1000)]


class MessageSentMeta(MetaModel):
    """Meta of ``message.sent``: the recipient, and how the message relates to others.

    ``type`` selects the recipient's handler; ``expects_reply`` marks a request;
    ``in_reply_to`` is the id of the request a reply answers; ``trust`` is
    ``untrusted`` when it carries content from outside (see the control layer);
    ``on_behalf_of`` names the principal the sender acted for, by delegation.
    """

    to: _Name
    type: _Name | None = None
    expects_reply: bool = False
    in_reply_to: _Id | None = None
    trust: Literal["untrusted"] | None = None
    on_behalf_of: _Name | None = None


class NoteMeta(MetaModel):
    """Meta of ``note.recorded``."""

    tags: Annotated[list[_Name], Field(default_factory=list, max_length=32)]


class ObservationMeta(MetaModel):
    """Meta of ``observation.recorded``: where the observation came from."""

    source: _Name | None = None
    tags: Annotated[list[_Name], Field(default_factory=list, max_length=32)]


class DecisionMeta(MetaModel):
    """Meta of ``decision.made``: the action chosen."""

    action: _Name


class PolicyDeniedMeta(MetaModel):
    """Meta of ``policy.denied``: who was refused what, on which resource."""

    principal: _Name
    action: _Name
    resource: _Name
    reason: Annotated[str, Field(min_length=1, max_length=1000)]


CORE_KINDS = (
    KindSpec("habitat.created", "The habitat was initialised; always seq 1.", HabitatCreatedMeta, "none"),
    KindSpec(
        "content.erased",
        "An event's content and salt were deleted; its leaf stays, so the ledger still verifies.",
        ContentErasedMeta,
        "none",
    ),
    KindSpec("message.sent", "A principal sent a message to another principal or topic.", MessageSentMeta, "required"),
    KindSpec("note.recorded", "A principal wrote down a note.", NoteMeta, "required"),
    KindSpec(
        "observation.recorded", "A principal recorded something it observed in the world.", ObservationMeta, "required"
    ),
    KindSpec("decision.made", "A principal decided on an action, citing its causes.", DecisionMeta, "optional"),
    KindSpec("policy.denied", "A request was refused by policy.", PolicyDeniedMeta, "none"),
)

register_kinds(*CORE_KINDS)
