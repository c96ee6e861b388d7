"""The habitat as one principal sees it: every call acts as that principal, through the control layer."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from habitus._acting_manage import _Managing
from habitus._acting_read import _Reading
from habitus.agents._registry import agent_id
from habitus.control._rules import RESERVED_KINDS, check_principal
from habitus.errors import InvalidRequestError

if TYPE_CHECKING:
    from habitus._habitat import Habitat
    from habitus.agents._models import AgentInfo, Message
    from habitus.control._approvals import Approval
    from habitus.control._rules import Capability, Decision
    from habitus.ledger._models import Erasure, Event
    from habitus.ledger._rows import EventRef
    from habitus.memory._memory import AgentMemory

__all__ = ["Acting"]


class Acting(_Reading, _Managing):
    """The habitat as ``principal`` sees it (``hab.acting_as("human:ada")``).

    Every method acts as the principal (and, with ``on_behalf_of``, for the
    principal who delegated to it): what it sends, remembers, reads, grants and
    decides passes the same checks as everything else, and each refusal is a
    ``policy.denied`` event and a :class:`~habitus.errors.PolicyDeniedError`.
    This is what the server and MCP hand to a client with a token; the plain
    :class:`~habitus.Habitat` is the operator's, like holding the database file.
    """

    def __init__(self, habitat: Habitat, principal: str, on_behalf_of: str | None = None) -> None:
        check_principal(principal)
        if on_behalf_of is not None:
            check_principal(on_behalf_of, what="on_behalf_of")
        self._hab = habitat
        self.principal = principal
        self.on_behalf_of = on_behalf_of if on_behalf_of != principal else None

    async def _delegated(self) -> None:
        if self.on_behalf_of is not None:
            await self._hab.control.require(self.principal, "principal:act", self.on_behalf_of)

    # -- messages ---------------------------------------------------------------------------

    async def send(self, to: str, body: Any, *, type: str | None = None, thread: str | None = None) -> Event:  # noqa: A002
        """Send a message to an agent (needs ``message:send`` on it)."""
        await self._delegated()
        return await self._hab.messages.send(
            to, body, sender=self.principal, type=type, thread=thread, on_behalf_of=self.on_behalf_of
        )

    async def publish(self, topic: str, body: Any, *, type: str | None = None, thread: str | None = None) -> Event:  # noqa: A002
        """Publish to a topic (needs ``message:publish`` on ``topic:<topic>``)."""
        await self._delegated()
        return await self._hab.messages.publish(
            topic, body, sender=self.principal, type=type, thread=thread, on_behalf_of=self.on_behalf_of
        )

    async def request(
        self,
        to: str,
        body: Any,
        *,
        timeout: float = 30.0,
        type: str | None = None,  # noqa: A002 - the message's type
        thread: str | None = None,
    ) -> Message:
        """Send a request and wait for the reply (needs ``message:send`` on the agent)."""
        await self._delegated()
        return await self._hab.messages.request(
            to, body, sender=self.principal, timeout=timeout, type=type, thread=thread, on_behalf_of=self.on_behalf_of
        )

    # -- agents -----------------------------------------------------------------------------

    async def spawn(
        self,
        agent: str,
        *,
        behaviour: str,
        name: str | None = None,
        labels: dict[str, str] | None = None,
        topics: Iterable[str] = (),
    ) -> AgentInfo:
        """Register an agent this principal owns (humans and services own agents; agents do not)."""
        if not self.principal.startswith(("human:", "service:")):
            await self._hab.control.deny(
                self.principal, "agent:spawn", f"agent:{agent}", "only humans and services own agents"
            )
        return await self._hab.agents.spawn(
            agent, behaviour=behaviour, owner=self.principal, name=name, labels=labels, topics=topics
        )

    async def state(self, agent: str) -> dict[str, Any]:
        """An agent's durable state (needs ``state:read`` on it: its owner and itself by default)."""
        aid = agent_id(agent)
        await self._hab.agents.get(aid)
        await self._hab.control.require(self.principal, "state:read", f"agent:{aid}", on_behalf_of=self.on_behalf_of)
        return await self._hab.agents.state(aid)

    async def suspend(self, agent: str, *, reason: str | None = None) -> AgentInfo:
        """Suspend an agent (needs ``agent:manage`` on it: its owner by default)."""
        return await self._hab.agents.suspend(await self._manage(agent), by=self.principal, reason=reason)

    async def resume(self, agent: str, *, reason: str | None = None) -> AgentInfo:
        """Resume a suspended agent (needs ``agent:manage`` on it)."""
        return await self._hab.agents.resume(await self._manage(agent), by=self.principal, reason=reason)

    async def retire(self, agent: str, *, reason: str | None = None) -> AgentInfo:
        """Retire an agent for good (needs ``agent:manage`` on it)."""
        return await self._hab.agents.retire(await self._manage(agent), by=self.principal, reason=reason)

    async def _manage(self, agent: str) -> str:
        aid = agent_id(agent)
        await self._hab.agents.get(aid)
        await self._hab.control.require(self.principal, "agent:manage", f"agent:{aid}", on_behalf_of=self.on_behalf_of)
        return aid

    # -- memory and the ledger --------------------------------------------------------------

    def memory(self, agent: str | None = None) -> AgentMemory:
        """An agent's memory used as this principal (default: the principal's own, for an agent).

        Raises:
            InvalidRequestError: No agent given and the principal is not an agent.
        """
        if agent is None:
            if not self.principal.startswith("agent:"):
                raise InvalidRequestError(f"{self.principal} is not an agent: name the agent whose memory to use")
            agent = self.principal
        return self._hab.memories.of(agent, principal=self.principal, on_behalf_of=self.on_behalf_of)

    async def append(
        self,
        kind: str,
        *,
        content: Any = None,
        meta: dict[str, Any] | None = None,
        causes: Iterable[EventRef] = (),
        thread: str | None = None,
        at: datetime | None = None,
    ) -> Event:
        """Append an event as this principal (needs ``ledger:append`` on ``kind:<kind>``).

        Kinds only Habitus appends (``message.*``, ``capability.*``, ``memory.*``...)
        are refused: use the API that appends them, so their checks run.
        """
        control = self._hab.control
        resource = f"kind:{kind}"
        if kind.startswith(RESERVED_KINDS):
            await control.deny(self.principal, "ledger:append", resource, "only Habitus appends this kind; use its API")
        await control.require(self.principal, "ledger:append", resource, on_behalf_of=self.on_behalf_of)
        return await self._hab.ledger.append(
            kind, actor=self.principal, content=content, meta=meta, causes=causes, thread=thread, at=at
        )

    async def erase(self, event: EventRef, *, reason: str) -> Erasure:
        """Erase an event's content (needs ``ledger:erase`` on its actor: one's own events, or one's agents').

        Memories and facts are forgotten through their agent's memory instead, so their
        indexes forget them too. Where an approval rule covers erasure, this waits for it.

        Raises:
            InvalidRequestError: The event is a memory or fact, or no reason was given.
            PolicyDeniedError: Not this principal's to erase (recorded as ``policy.denied``).
        """
        if not isinstance(reason, str) or not reason.strip():
            raise InvalidRequestError("erase needs a reason (a non-empty string)")
        target = await self._hab.ledger.get(event)
        if target.kind in ("memory.remembered", "fact.asserted"):
            raise InvalidRequestError(
                f"event {target.id} is a memory: forget it with acting_as(...).memory({target.meta.get('agent')!r})"
                ".forget(...), so recall forgets it too"
            )
        await self._delegated()
        detail = {"event": str(target.id), "kind": target.kind, "reason": reason}
        await self._hab.control.authorize(
            self.principal, "ledger:erase", target.actor, on_behalf_of=self.on_behalf_of, detail=detail
        )
        return await self._hab.ledger.erase(target.id, reason=reason, by=self.principal)

    # -- policy -----------------------------------------------------------------------------

    async def authorize(
        self, action: str, resource: str, *, detail: Any = None, timeout: float | None = None
    ) -> Decision:
        """Check an action (a tool call, a model use...), waiting for a human where one must approve."""
        await self._delegated()
        return await self._hab.control.authorize(
            self.principal, action, resource, on_behalf_of=self.on_behalf_of, detail=detail, timeout=timeout
        )

    async def grant(
        self, subject: str, action: str, resource: str, *, approval: bool = False, until: datetime | None = None
    ) -> Capability:
        """Grant part of what this principal holds to ``subject`` (never more, never to itself)."""
        return await self._hab.control.grant(
            subject, action, resource, by=self.principal, approval=approval, until=until
        )

    async def revoke(self, capability: str | uuid.UUID) -> Capability:
        """Take back a capability this principal granted."""
        return await self._hab.control.revoke(capability, by=self.principal)

    async def approve(self, approval: str | uuid.UUID, *, reason: str | None = None) -> Approval:
        """Approve a request of an agent this principal owns (or may decide for)."""
        return await self._hab.control.approve(approval, by=self.principal, reason=reason)

    async def reject(self, approval: str | uuid.UUID, *, reason: str | None = None) -> Approval:
        """Reject a request of an agent this principal owns (or may decide for)."""
        return await self._hab.control.reject(approval, by=self.principal, reason=reason)
