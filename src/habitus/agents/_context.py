"""What a handler can do: everything it stages commits with the acknowledgement of its message."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from habitus.agents._models import AgentInfo, Message
from habitus.control._rules import RESERVED_KINDS
from habitus.errors import InvalidRequestError
from habitus.ledger._codec import to_micros
from habitus.ledger._ledger import Ledger
from habitus.ledger._rows import EventRef, as_uuid
from habitus.ledger._transaction import Transaction
from habitus.storage._projections import TimerDelete, TimerPut

if TYPE_CHECKING:
    from habitus.agents._registry import Agents
    from habitus.control._rules import Decision
    from habitus.memory._memory import AgentMemory, MemoryService
    from habitus.messaging._messenger import Messenger
    from habitus.models._gateway import ModelCall, ModelGateway
    from habitus.models._types import ChatMessage, ContextRecord, OnText, ToolSpec
    from habitus.thinking._context import BuiltContext, TokenCounter
    from habitus.tools._registry import ToolRegistry
    from habitus.tools._tool import ToolResult

__all__ = ["AgentContext", "AgentState"]

_DELETED = object()
_TIMER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/+-]{0,127}$")


class AgentState:
    """An agent's durable state: values you can ``get``, ``set`` and ``delete``.

    Changes are staged with the message being handled and committed with its
    acknowledgement; if the handler fails, they are discarded.
    """

    def __init__(self, committed: dict[str, Any], stage: Callable[[str, str, Any], None]) -> None:
        self._committed = committed
        self._pending: dict[str, Any] = {}
        self._stage = stage

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key``, or ``default``."""
        if key in self._pending:
            value = self._pending[key]
            return default if value is _DELETED else value
        return self._committed.get(key, default)

    def __contains__(self, key: str) -> bool:
        return self.get(key, _DELETED) is not _DELETED

    def set(self, key: str, value: Any) -> None:
        """Set ``key`` to a JSON-serialisable value."""
        _check_key(key)
        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(f"state value for {key!r} is not JSON: {exc}") from None
        self._stage("set", key, value)
        self._pending[key] = value

    def delete(self, key: str) -> None:
        """Remove ``key`` (no error if it is absent)."""
        _check_key(key)
        if key in self:
            self._stage("delete", key, None)
            self._pending[key] = _DELETED

    def items(self) -> dict[str, Any]:
        """Every key and value, staged changes included."""
        merged = {**self._committed, **self._pending}
        return {k: v for k, v in merged.items() if v is not _DELETED}

    def _commit(self) -> None:
        if not self._pending:  # most handlers change no state
            return
        for key, value in self._pending.items():
            if value is _DELETED:
                self._committed.pop(key, None)
            else:
                self._committed[key] = value
        self._pending.clear()

    def _rollback(self) -> None:
        self._pending.clear()


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not 1 <= len(key) <= 256:
        raise InvalidRequestError(f"state keys are strings of 1-256 characters, not {key!r}")


class AgentContext:
    """A handler's view of its agent and of the habitat.

    Every effect — messages, published messages, replies, events, state
    changes, timers — is staged in the transaction of the message being
    handled and commits with its acknowledgement, all or nothing. The message
    is the cause of every one of them.
    """

    def __init__(
        self,
        info: AgentInfo,
        state: dict[str, Any],
        *,
        ledger: Ledger,
        agents: Agents,
        messenger: Messenger,
        memories: MemoryService | None = None,
        remember_messages: bool = False,
        models: Callable[[], ModelGateway] | None = None,
        tools: Callable[[], ToolRegistry] | None = None,
    ) -> None:
        self.agent = info
        self._principal = info.principal  # asked for on every send: built once (an agent's id never changes)
        self.state = AgentState(state, self._stage_state)
        self._ledger = ledger
        self._agents = agents
        self._messenger = messenger
        self._memories = memories
        self._models = models  # called on first use: a habitat that never calls a model never builds the gateway
        self._tools = tools
        self.remember_messages = remember_messages and memories is not None
        self._tx: Transaction | None = None
        self._message: Message | None = None
        self.timers_set = False

    @property
    def principal(self) -> str:
        """``agent:<id>``: the actor of everything this agent does."""
        return self._principal

    @property
    def message(self) -> Message:
        """The message being handled."""
        if self._message is None:
            raise InvalidRequestError("no message is being handled")
        return self._message

    @property
    def _tainted(self) -> bool:
        return self._message is not None and self._message.trust == "untrusted"

    @property
    def ledger(self) -> Ledger:
        """The ledger, for reading (``why``, ``query``...); write through this context instead."""
        return self._ledger

    def _begin(self, tx: Transaction, message: Message) -> None:
        self._tx = tx
        self._message = message
        self.timers_set = False

    def _end(self, *, committed: bool) -> None:
        if committed:
            self.state._commit()
        else:
            self.state._rollback()
        self._tx = None

    @property
    def _transaction(self) -> Transaction:
        if self._tx is None:
            raise InvalidRequestError(
                "this agent's context is used outside a handler (after it returned, or from a task it left "
                "running); effects must be staged while the handler runs"
            )
        return self._tx

    @property
    def memory(self) -> AgentMemory:
        """This agent's memory; what it remembers (and each recall's event) commits with the handler's effects.

        Raises:
            InvalidRequestError: The habitat runs without memory, or no message is being handled.
        """
        if self._memories is None:
            raise InvalidRequestError("this runtime has no memory service")
        from habitus.memory._memory import AgentMemory

        return AgentMemory(self._memories, self.agent.id, self._transaction, tainted=self._tainted)

    async def _remember_message(self, message: Message, *, received: bool) -> None:
        body = message.body if isinstance(message.body, str) else json.dumps(message.body, ensure_ascii=False)
        if not body.strip():
            return
        other = message.sender if received else message.to
        await self.memory.remember(
            body,
            kind="message",
            meta={"speaker": message.sender, "direction": "received" if received else "sent", "with": other},
            source=[message.id],
            thread=message.thread,
            at=message.ts,
        )

    # -- effects ----------------------------------------------------------------------------

    async def send(
        self,
        to: str,
        body: Any,
        *,
        type: str | None = None,  # noqa: A002
        causes: Sequence[uuid.UUID] = (),
    ) -> uuid.UUID:
        """Send a message to an agent (committed with this handler's other effects).

        Its causes are the message being handled and ``causes`` (say, the model call
        whose answer it carries), so ``why`` on it shows where it came from.
        """
        sent = await self._messenger.stage_send(
            self._transaction, self.principal, to, body, type=type, tainted=self._tainted, causes=causes
        )
        if self.remember_messages:
            await self._remember_sent(sent, to, body)
        return sent

    async def _remember_sent(self, sent: uuid.UUID, to: str, body: Any) -> None:
        text = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
        if text.strip():
            await self.memory.remember(
                text,
                kind="message",
                meta={"speaker": self.principal, "direction": "sent", "with": to},
                source=[sent],
                thread=self._message.thread if self._message else None,
            )

    async def publish(self, topic: str, body: Any, *, type: str | None = None) -> uuid.UUID:  # noqa: A002
        """Publish to a topic."""
        return await self._messenger.stage_publish(
            self._transaction, self.principal, topic, body, type=type, tainted=self._tainted
        )

    async def reply(
        self,
        body: Any,
        *,
        type: str | None = None,  # noqa: A002
        causes: Sequence[uuid.UUID] = (),
    ) -> uuid.UUID:
        """Reply to the message being handled (its sender gets it; a waiting ``request`` returns it).

        ``causes``: events besides the request that led to the reply (the model call that wrote it...).
        """
        return await self._messenger.stage_reply(
            self._transaction, self.principal, self.message, body, type=type, tainted=self._tainted, causes=causes
        )

    def emit(
        self,
        kind: str,
        *,
        content: Any = None,
        meta: dict[str, Any] | None = None,
        causes: Iterable[EventRef] = (),
        at: datetime | None = None,
    ) -> uuid.UUID:
        """Record an event by this agent (an observation, a note, a decision...).

        Raises:
            PolicyDeniedError: ``kind`` is one only Habitus appends (``message.*``,
                ``capability.*``...); send, remember or ask the control layer instead.
        """
        control = self._messenger.control
        if kind.startswith(RESERVED_KINDS):
            raise control.refuse_soon(
                self.principal, "ledger:append", f"kind:{kind}", "only Habitus appends this kind; use its API"
            )
        decision = control.decide(self.principal, "ledger:append", f"kind:{kind}")
        if not decision.allowed:  # suspended while this handler runs, say
            raise control.refuse_soon(self.principal, "ledger:append", f"kind:{kind}", decision.reason)
        return self._transaction.append(kind, actor=self.principal, content=content, meta=meta, causes=causes, at=at)

    async def authorize(
        self, action: str, resource: str, *, detail: Any = None, timeout: float | None = None
    ) -> Decision:
        """Check that this agent may do ``action`` on ``resource`` (a tool call, a model use...).

        Where a human must approve, this asks (``approval.requested``, caused by the
        message being handled) and waits; after a restart the redelivered message
        finds the same request and its decision instead of asking again.

        Raises:
            PolicyDeniedError: Refused (recorded as ``policy.denied``).
            ApprovalRejectedError: A human rejected it.
            ApprovalPendingError: ``timeout`` seconds passed with no decision.
        """
        return await self._messenger.control.authorize(self.principal, action, resource, detail=detail, timeout=timeout)

    # -- models, tools and context ------------------------------------------------------------
    # Model and tool calls record their events in transactions of their own, at once: they
    # happened even if the handler fails later (a retried message calls again).

    async def chat(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[ToolSpec | str] = (),
        context: ContextRecord | BuiltContext | None = None,
        model: str | None = None,
        provider: str | None = None,
        on_text: OnText | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        causes: Iterable[EventRef] = (),
    ) -> ModelCall:
        """Call a model as this agent (``hab.models.chat``), caused by the message being handled.

        ``tools`` are specs or names of registered tools; ``context`` (a
        :class:`~habitus.thinking.BuiltContext` or its record) makes the memories, facts
        and messages that went into the prompt causes of the ``model.called`` event.

        Raises:
            PolicyDeniedError: The agent may not use the model (``model:use``), or a budget is spent.
            ModelUnavailableError: The provider failed (recorded as ``model.failed``).
        """
        from habitus.models._types import ContextRecord

        if context is not None and not isinstance(context, ContextRecord):
            context = context.record
        return await self._gateway().chat(
            self.principal,
            messages,
            provider=provider,
            model=model,
            tools=self._tool_specs(tools),
            context=context,
            causes=self._causes(causes),
            on_text=on_text,
            max_tokens=max_tokens,
            temperature=temperature,
            tainted=self._tainted,
        )

    async def call_tool(
        self,
        name: str,
        arguments: dict[str, Any] | None = None,
        *,
        call_id: str | None = None,
        causes: Iterable[EventRef] = (),
    ) -> ToolResult:
        """Call a registered tool as this agent (``hab.tools.call``), caused by the message being handled.

        A tool that fails comes back with ``ok=False``; a refusal raises.

        Raises:
            UnknownToolError: No tool of that name.
            PolicyDeniedError: The agent may not call it (``tool:call``), a budget is spent,
                or a human rejected it (``ApprovalRejectedError``).
        """
        return await self._registry().call(
            self.principal,
            name,
            arguments or {},
            causes=self._causes(causes),
            call_id=call_id,
            tainted=self._tainted,
        )

    async def build_context(
        self,
        task: str,
        *,
        budget_tokens: int = 2000,
        system_prompt: str | None = None,
        recall_k: int = 8,
        max_messages: int = 12,
        max_facts: int = 20,
        count_tokens: TokenCounter | None = None,
        now: datetime | None = None,
    ) -> BuiltContext:
        """Assemble a prompt for ``task`` from this agent's facts, recalled memories and conversation.

        See :func:`habitus.thinking.build_context`; here the conversation is the thread of
        the message being handled (that message itself is left out: put what it asks in
        ``task``), and the recall's event commits with the handler's other effects.
        """
        from habitus.thinking._context import assemble

        message = self.message
        return await assemble(
            self.memory,
            self._ledger,
            task,
            budget_tokens=budget_tokens,
            thread=message.thread,
            exclude=(message.id,),
            system_prompt=system_prompt,
            recall_k=recall_k,
            max_messages=max_messages,
            max_facts=max_facts,
            count_tokens=count_tokens,
            now=now,
        )

    def _gateway(self) -> ModelGateway:
        if self._models is None:
            raise InvalidRequestError("this runtime has no model gateway; start the app with Habitat.start")
        return self._models()

    def _registry(self) -> ToolRegistry:
        if self._tools is None:
            raise InvalidRequestError("this runtime has no tool registry; start the app with Habitat.start")
        return self._tools()

    def _causes(self, extra: Iterable[EventRef]) -> list[uuid.UUID]:
        found = [self.message.id]
        for ref in extra:
            cause = as_uuid(ref)
            if cause not in found:
                found.append(cause)
        return found

    def _tool_specs(self, tools: Sequence[ToolSpec | str]) -> list[ToolSpec]:
        names = [t for t in tools if isinstance(t, str)]
        if not names:
            return [t for t in tools if not isinstance(t, str)]
        named = {spec.name: spec for spec in self._registry().specs(names)}
        return [named[t] if isinstance(t, str) else t for t in tools]

    def set_timer(
        self,
        name: str,
        *,
        after: float | timedelta | None = None,
        at: datetime | None = None,
        payload: Any = None,
    ) -> None:
        """Ask to be woken (``on_timer``) after a delay or at a time; replaces a timer of the same name.

        Timers are durable: they fire after a restart too (late, if the app was down).
        """
        if not isinstance(name, str) or not _TIMER_RE.match(name):
            raise InvalidRequestError(f"timer name {name!r} must be a short identifier")
        if (after is None) == (at is None):
            raise InvalidRequestError("set_timer needs exactly one of after= or at=")
        if at is not None:
            if at.tzinfo is None:
                raise InvalidRequestError(f"timer time {at!r} must be timezone-aware")
            due = to_micros(at)
        else:
            seconds = after.total_seconds() if isinstance(after, timedelta) else float(after or 0)
            if seconds < 0:
                raise InvalidRequestError(f"timer delay must not be negative, got {after!r}")
            due = time.time_ns() // 1000 + int(seconds * 1_000_000)
        tx = self._transaction
        timer_id = f"{self.agent.id}/{name}"
        content = {"payload": payload} if payload is not None else None
        event = tx.append(
            "timer.set", actor=self.principal, meta={"agent": self.agent.id, "timer": name, "due": due}, content=content
        )
        tx.project(TimerPut(timer_id, self.agent.id, due, event.bytes))
        self.timers_set = True

    def cancel_timer(self, name: str) -> None:
        """Forget a timer set earlier (no error if there is none)."""
        self._transaction.project(TimerDelete(f"{self.agent.id}/{name}"))

    def _stage_state(self, action: str, key: str, value: Any) -> None:
        if action == "set":
            self._agents.stage_state(self._transaction, self.agent.id, key, value, actor=self.principal)
        else:
            self._agents.stage_delete(self._transaction, self.agent.id, key, actor=self.principal)
