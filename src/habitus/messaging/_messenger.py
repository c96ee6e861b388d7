"""Sending, publishing, requesting and replying: messages as events, mailboxes as projections."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from habitus.agents._models import Message, message_from_row
from habitus.agents._registry import Agents, agent_id
from habitus.errors import (
    InvalidRequestError,
    MailboxFullError,
    NoAppRunningError,
    PolicyDeniedError,
    RequestTimeoutError,
)
from habitus.ledger._ledger import Ledger
from habitus.ledger._models import Event
from habitus.ledger._transaction import Transaction
from habitus.messaging import _kinds  # noqa: F401  (registers the message kinds)
from habitus.messaging._topics import check_topic, matches
from habitus.storage._abstract import HabitatStore, Row
from habitus.storage._projections import MailboxAck, MailboxDead, MailboxPut, Op

if TYPE_CHECKING:
    from habitus.control._control import Control

__all__ = ["Messenger"]


class Messenger:
    """Messages between principals: ``send``, ``publish``, ``request``, ``reply``.

    Obtain it as :attr:`habitus.Habitat.messages`. A message is a
    ``message.sent`` event; sending it to an agent queues it in that agent's
    mailbox in the same commit. Inside a handler use the handler's context
    instead, so the message commits with the handler's other effects.
    """

    def __init__(
        self, ledger: Ledger, store: HabitatStore, agents: Agents, control: Control, *, mailbox_capacity: int
    ) -> None:
        self._control = control
        self._ledger = ledger
        self._store = store
        self._agents = agents
        self._capacity = mailbox_capacity
        # Exact depths of every mailbox, loaded on first use (one snapshot, with the seq it was taken
        # at) and then kept by the commit listener: this process is the only writer.
        self._depth: dict[str, int] | None = None
        self._depth_seq = 0
        self._waiting: dict[bytes, asyncio.Future[Message]] = {}
        self._subscriptions: dict[str, list[str]] | None = None  # pattern -> agents
        self.answering = False  # an app runs in this process (the runtime sets it): requests can be answered
        agents.listen(self._lifecycle)
        ledger.on_commit(self._committed)

    @property
    def control(self) -> Control:
        """The control layer every send and delivery is checked by."""
        return self._control

    # -- the public API ---------------------------------------------------------------------

    async def send(
        self,
        to: str,
        body: Any,
        *,
        sender: str,
        type: str | None = None,  # noqa: A002 - the message's type
        thread: str | None = None,
        on_behalf_of: str | None = None,
    ) -> Event:
        """Send a message to an agent; durable and queued in its mailbox when this returns.

        Raises:
            UnknownAgentError: No such agent.
            AgentRetiredError: The agent is retired.
            MailboxFullError: Its mailbox is at capacity (retry later).
            PolicyDeniedError: Policy refused it (recorded as ``policy.denied``).
            BudgetExceededError: It would exceed the sender's message budget.
        """
        async with self._ledger.transaction() as tx:
            await self.stage_send(tx, sender, to, body, type=type, thread=thread, on_behalf_of=on_behalf_of)
        return tx.events[0]  # the transaction holds just this message

    async def publish(
        self,
        topic: str,
        body: Any,
        *,
        sender: str,
        type: str | None = None,  # noqa: A002
        thread: str | None = None,
        on_behalf_of: str | None = None,
    ) -> Event:
        """Publish to a topic: every agent subscribed to a matching pattern gets it queued.

        Needs ``message:publish`` on ``topic:<topic>`` (no principal but the habitat holds it by default).
        """
        async with self._ledger.transaction() as tx:
            await self.stage_publish(tx, sender, topic, body, type=type, thread=thread, on_behalf_of=on_behalf_of)
        return tx.events[0]  # the transaction holds just this message

    async def request(
        self,
        to: str,
        body: Any,
        *,
        sender: str,
        timeout: float = 30.0,
        type: str | None = None,  # noqa: A002
        thread: str | None = None,
        on_behalf_of: str | None = None,
    ) -> Message:
        """Send a request and wait for the agent's reply (needs a running app to handle it).

        Raises:
            RequestTimeoutError: No reply within ``timeout`` seconds; names the recipient.
            NoAppRunningError: No app runs in this process, so nothing could answer (nothing is sent).
        """
        if timeout <= 0:
            raise InvalidRequestError(f"timeout must be positive, not {timeout!r}")
        if not self.answering:
            raise NoAppRunningError(
                f"no app is running in this process to answer a request to {to!r}; start one "
                "(hab.start(app), 'habitus run', or 'habitus serve --app') and ask again; nothing was sent"
            )
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        async with self._ledger.transaction() as tx:
            message_id = await self.stage_send(
                tx, sender, to, body, type=type, thread=thread, expects_reply=True, on_behalf_of=on_behalf_of
            )
            self._waiting[message_id.bytes] = future
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise RequestTimeoutError(
                f"agent {agent_id(to)!r} did not reply within {timeout:g} s (request {message_id}); "
                "is an app running that handles it?"
            ) from None
        finally:
            self._waiting.pop(message_id.bytes, None)

    async def reply(self, message: Message, body: Any, *, sender: str, type: str | None = None) -> Event:  # noqa: A002
        """Answer a request from outside a handler (handlers use their context's ``reply``)."""
        async with self._ledger.transaction() as tx:
            await self.stage_reply(tx, sender, message, body, type=type)
        return tx.events[0]  # the transaction holds just this message

    def depth(self, agent: str) -> int:
        """Messages waiting in an agent's mailbox (dead letters excluded)."""
        return self._depth_of(agent_id(agent))

    def _depth_of(self, aid: str) -> int:
        if self._store.read_only:
            return self._store.mailbox_depth(aid)  # another process writes: read what it committed
        if self._depth is None:
            self._depth_seq, self._depth = self._store.mailbox_depths()
        return max(0, self._depth.get(aid, 0))

    # -- staging (used by the API above and by handler contexts) ---------------------------

    async def stage_send(
        self,
        tx: Transaction,
        sender: str,
        to: str,
        body: Any,
        *,
        type: str | None = None,  # noqa: A002
        thread: str | None = None,
        expects_reply: bool = False,
        in_reply_to: uuid.UUID | None = None,
        answering: bool = False,
        on_behalf_of: str | None = None,
        tainted: bool = False,
        causes: Sequence[uuid.UUID] = (),
    ) -> uuid.UUID:
        """Stage a message to an agent (or, for a reply, to any principal) in ``tx``.

        ``answering`` marks a reply by the request's own recipient, which needs no
        capability; ``tainted`` marks a message sent while handling untrusted content.
        """
        to_agent = None
        control = self._control
        epoch = -1
        if to.startswith(("human:", "service:", "source:")) or to == "system":
            if in_reply_to is None:
                raise InvalidRequestError(f"messages go to agents; {to!r} can only receive replies")
            recipient = to
        else:
            to_agent = agent_id(to)
            recipient = f"agent:{to_agent}"
            self._agents.require_reachable(to_agent)
            if not answering and sender != "system":
                epoch = control.epoch  # before any wait for an approval: a change meanwhile asks again
                decision = control.decide(sender, "message:send", recipient, on_behalf_of=on_behalf_of)
                if not decision.allowed:
                    await control.deny(sender, "message:send", recipient, decision.reason)
                if decision.approval:  # a grant or rule that wants a human for each message
                    await control.approved(sender, "message:send", recipient, on_behalf_of=on_behalf_of)
            depth = self._depth_of(to_agent)
            # (counting this transaction's own mail for the agent only matters near the capacity)
            if depth + len(tx.ops) >= self._capacity and depth + _staged_for(tx, to_agent) >= self._capacity:
                raise MailboxFullError(
                    f"the mailbox of agent {to_agent!r} is full ({self._capacity} messages waiting); retry later"
                )
        if sender != "system" and control.has_budgets():  # (no coroutine per message when nothing is counted)
            await control.charge(tx, sender, "messages")
        meta: dict[str, Any] = {"to": recipient}
        if type is not None:
            meta["type"] = type
        if expects_reply:
            meta["expects_reply"] = True
        if in_reply_to is not None:
            meta["in_reply_to"] = str(in_reply_to)
        if tainted or control.trust_of(sender) == "untrusted":
            meta["trust"] = "untrusted"
        if on_behalf_of is not None and on_behalf_of != sender:
            meta["on_behalf_of"] = on_behalf_of
        cited = [in_reply_to, *causes] if in_reply_to is not None else list(causes)
        message_id = tx.append("message.sent", actor=sender, content=body, meta=meta, thread=thread, causes=cited)
        if to_agent is not None:
            tx.project(MailboxPut(to_agent, tx.last_id_bytes(), sender, epoch))
        return message_id

    async def stage_reply(
        self,
        tx: Transaction,
        sender: str,
        message: Message,
        body: Any,
        *,
        type: str | None = None,  # noqa: A002
        tainted: bool = False,
        causes: Sequence[uuid.UUID] = (),
    ) -> uuid.UUID:
        """Stage the reply to ``message`` (to its sender, caused by it, in its thread)."""
        return await self.stage_send(
            tx,
            sender,
            message.sender,
            body,
            type=type,
            thread=message.thread,
            in_reply_to=message.id,
            answering=message.to == sender,
            tainted=tainted,
            causes=causes,
        )

    async def stage_publish(
        self,
        tx: Transaction,
        sender: str,
        topic: str,
        body: Any,
        *,
        type: str | None = None,  # noqa: A002
        thread: str | None = None,
        on_behalf_of: str | None = None,
        tainted: bool = False,
    ) -> uuid.UUID:
        """Stage a published message and queue it for every matching subscriber."""
        check_topic(topic)
        control = self._control
        if sender != "system":
            await control.require(sender, "message:publish", f"topic:{topic}", on_behalf_of=on_behalf_of)
            await control.charge(tx, sender, "messages")
        recipients = []
        staged = _staged(tx)  # counted once: a publish may reach thousands of subscribers
        for agent in await self._subscribers(topic):
            if self._agents.status(agent) in ("retired", None):
                continue
            if self.depth(agent) + staged.get(agent, 0) >= self._capacity:
                raise MailboxFullError(
                    f"the mailbox of agent {agent!r}, subscribed to {topic!r}, is full; retry the publish later"
                )
            recipients.append(agent)
        meta: dict[str, Any] = {"topic": topic, "recipients": len(recipients)}
        if type is not None:
            meta["type"] = type
        if tainted or control.trust_of(sender) == "untrusted":
            meta["trust"] = "untrusted"
        message_id = tx.append("message.published", actor=sender, content=body, meta=meta, thread=thread)
        for agent in recipients:
            tx.project(MailboxPut(agent, message_id.bytes, sender))
        return message_id

    async def check_delivery(self, message: Message, recipient: str) -> str | None:
        """Check again, at delivery, that the sender may still reach ``recipient``; the refusal, or None.

        A capability revoked, or a sender suspended, after the message was queued
        stops it here (recorded as ``policy.denied``). Replies and timers pass. (The
        runtime skips this check for mail sent from its own process while nothing a
        decision depends on has changed: see ``MailboxPut.allowed_at``.)
        """
        sender = message.sender
        if sender == "system" or message.in_reply_to is not None:
            return None
        if message.topic is not None:
            action, resource = "message:publish", f"topic:{message.topic}"
        else:
            action, resource = "message:send", recipient
        decision = self._control.decide(sender, action, resource)
        if decision.allowed:
            return None
        try:
            await self._control.deny(sender, action, resource, decision.reason)
        except PolicyDeniedError as exc:
            return str(exc)
        return None  # pragma: no cover - deny always raises

    async def _subscribers(self, topic: str) -> list[str]:
        if self._subscriptions is None:
            rows = await asyncio.to_thread(self._store.subscriptions)
            table: dict[str, list[str]] = {}
            for agent, topics in rows:
                for pattern in json.loads(topics):
                    table.setdefault(pattern, []).append(agent)
            self._subscriptions = table
        found: list[str] = []
        for pattern, agents in self._subscriptions.items():
            if matches(pattern, topic):
                found.extend(a for a in agents if a not in found)
        return found

    # -- after a commit ---------------------------------------------------------------------

    def _committed(self, ops: Sequence[Op], rows: Sequence[Row]) -> None:
        """After every commit (in commit order): mailbox depths and replies to waiting requests."""
        depth = self._depth
        # A commit whose events the depth snapshot already saw must not be counted twice.
        if depth is not None and rows and rows[-1][0] <= self._depth_seq:
            depth = None
        if depth is not None:
            for op in ops:
                if isinstance(op, MailboxPut):
                    depth[op.agent] = depth.get(op.agent, 0) + 1
                elif isinstance(op, MailboxAck | MailboxDead):
                    depth[op.agent] = depth.get(op.agent, 0) - 1
        if self._waiting:
            for row in rows:
                if row[5] != "message.sent" or '"in_reply_to"' not in row[7]:
                    continue
                answered = json.loads(row[7])["in_reply_to"]
                future = self._waiting.get(uuid.UUID(answered).bytes)
                if future is not None and not future.done():
                    future.set_result(message_from_row(row))

    def _lifecycle(self, agent: str, status: str) -> None:
        # Retiring needs nothing here: the same commit dead-lettered its mail (MailboxDead ops).
        if status == "subscribed":
            self._subscriptions = None  # reloaded on the next publish


def _staged(tx: Transaction) -> Counter[str]:
    """Messages ``tx`` already queues for each agent (they count against its mailbox's capacity)."""
    return Counter(op.agent for op in tx.ops if isinstance(op, MailboxPut))


def _staged_for(tx: Transaction, agent: str) -> int:
    """Messages ``tx`` already queues for ``agent`` (a handler stages a few; no counter needed)."""
    return sum(1 for op in tx.ops if isinstance(op, MailboxPut) and op.agent == agent)
