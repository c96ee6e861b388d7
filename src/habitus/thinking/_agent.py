"""ThinkingAgent: an agent whose handler is a model, with its memory as context and tools to act.

The loop, for each message: receive → recall and assemble a context (:func:`build_context`)
→ call the model → run the tools it asks for and call it again with their results, up to
``max_steps`` calls → act on the final answer (reply, remember). Every step is an event:
``memory.recalled``, ``model.called`` (caused by the message, the memories, facts and
messages in its prompt, and the tool results it was shown), ``tool.called`` and
``tool.returned`` (caused by the call that asked for them), the reply and the memory of it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from habitus.agents._behaviour import Agent
from habitus.agents._models import Message
from habitus.errors import ApprovalPendingError, InvalidRequestError, PolicyDeniedError
from habitus.models._types import ChatMessage, ToolCall
from habitus.thinking._context import BuiltContext

if TYPE_CHECKING:
    from habitus.models._gateway import ModelCall

__all__ = ["ThinkingAgent", "Thought", "ToolUse"]

_LAST_STEP = (
    "You have no tool calls left for this task. Answer now with what you know, and say what you could not find out."
)


class ToolUse(BaseModel):
    """One tool call a model asked for, and what came of it.

    Attributes:
        call: What the model asked for (its call id, the tool's name, the arguments).
        ok: True when the tool returned a value.
        value: What it returned (when ``ok``).
        error_type: Why not, when not ``ok``: the tool's failure (``exception``,
            ``invalid_arguments``, ``timeout``... see ``habitus.tools``) or the refusal's
            error class (``PolicyDeniedError``, ``BudgetExceededError``,
            ``ApprovalRejectedError``, ``ApprovalPendingError``, ``UnknownToolError``).
        error: What went wrong, in a sentence.
        called: The ``tool.called`` event (``None`` when it was refused before running).
        result: The ``tool.returned`` or ``tool.failed`` event (``None`` when it never ran).
    """

    model_config = ConfigDict(frozen=True)

    call: ToolCall
    ok: bool
    value: Any = None
    error_type: str | None = None
    error: str | None = None
    called: uuid.UUID | None = None
    result: uuid.UUID | None = None

    def as_message(self) -> ChatMessage:
        """The ``tool`` message that shows the model this result: the value (text as is, else
        JSON), or ``{"error": {"type": ..., "message": ...}}``."""
        if self.ok:
            content = self.value if isinstance(self.value, str) else _json(self.value)
        else:
            content = _json({"error": {"type": self.error_type or "error", "message": self.error or "it failed"}})
        return ChatMessage(role="tool", content=content, tool_call_id=self.call.id, name=self.call.name)


class Thought(BaseModel):
    """What a :class:`ThinkingAgent` made of one message.

    Attributes:
        message: The message it handled.
        task: The task it gave the model (:meth:`ThinkingAgent.task_for`).
        text: The model's final answer (empty if it gave none).
        finished: False when the model still asked for tools at the last of ``max_steps`` calls.
        model_calls: The ``model.called`` events, in order.
        tool_results: The tool calls the model asked for, in order, with their results.
        context: The context the prompts started from: what was in them, by event id.
    """

    model_config = ConfigDict(frozen=True)

    message: Message
    task: str
    text: str
    finished: bool
    model_calls: list[uuid.UUID]
    tool_results: list[ToolUse]
    context: BuiltContext


class ThinkingAgent(Agent):
    """An agent that thinks with a model: its memory is the context, registered tools its hands.

    Subclass it and set the class attributes; register it like any agent
    (``app.behaviour``). It needs ``model:use`` on its model and ``tool:call`` on its tools
    (see docs/control.md). Every message it does not route elsewhere goes to
    :meth:`think`; ``@handles`` methods may call ``await self.think(msg)`` too.

    Example:
        >>> @app.behaviour  # doctest: +SKIP
        ... class Analyst(ThinkingAgent):
        ...     system_prompt = "You analyse greenhouse readings. Be brief."
        ...     tools = ("thermostat",)
        ...     max_steps = 3
    """

    system_prompt: ClassVar[str] = (
        "You are an agent in a Habitus habitat. Answer the task briefly and accurately, using the context "
        "you are given and the tools you are offered. Say so when you do not know."
    )
    """The system message of every prompt."""

    provider: ClassVar[str | None] = None
    """The gateway's provider to use (``None``: its default)."""

    model: ClassVar[str | None] = None
    """The provider's model to use (``None``: the provider's default)."""

    tools: ClassVar[Sequence[str]] = ()
    """Names of registered tools offered to the model."""

    recall_k: ClassVar[int] = 8
    """Memories recalled for each task."""

    context_tokens: ClassVar[int] = 2000
    """Token budget of the assembled prompt (system prompt, context and task)."""

    max_steps: ClassVar[int] = 4
    """Most model calls per message; each but the last may ask for tools."""

    max_tokens: ClassVar[int | None] = None
    """Most tokens per completion (``None``: the provider's default)."""

    temperature: ClassVar[float | None] = None
    """Sampling temperature (``None``: the provider's default)."""

    remember_messages: ClassVar[bool] = True
    """Remember the messages it receives (kind ``message``) and its answers (``message``, or ``note``
    when there is no one to reply to)."""

    async def on_message(self, msg: Message) -> None:
        """Think about every message no other handler takes."""
        await self.think(msg)

    def task_for(self, msg: Message) -> str:
        """The task the model is given for ``msg``: who said what (override to frame it otherwise)."""
        body = msg.body
        text = body if isinstance(body, str) else f"<{len(body)} bytes>" if isinstance(body, bytes) else _json(body)
        if msg.type == "timer":
            return f"Your timer fired with this payload: {text}"
        about = f" (type {msg.type!r})" if msg.type else ""
        where = f" on topic {msg.topic!r}" if msg.topic else ""
        return f"{msg.sender} says{about}{where}:\n{text}"

    def recall_now(self, msg: Message) -> datetime | None:
        """The moment time expressions in the task are read from (default: the clock; override in simulations)."""
        return None

    async def think(self, msg: Message, *, task: str | None = None) -> Thought:
        """Run the loop for ``msg``, then :meth:`act` on the result; return the :class:`Thought`.

        ``task`` replaces :meth:`task_for`'s framing of the message for this call.

        A tool call that is refused, unknown, or fails is shown to the model as a ``tool``
        message holding ``{"error": {"type", "message"}}`` rather than raised. A model
        call that is refused or fails raises: the handler fails and the message is retried.
        """
        steps, name = self.max_steps, type(self).__name__
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise InvalidRequestError(f"{name}.max_steps must be a positive integer, not {steps!r}")
        if isinstance(self.tools, str):
            raise InvalidRequestError(f"{name}.tools is a sequence of tool names, not one string: ({self.tools!r},)")
        ctx = self.ctx
        task = self.task_for(msg) if task is None else task
        context = await ctx.build_context(
            task,
            budget_tokens=self.context_tokens,
            system_prompt=self.system_prompt,
            recall_k=self.recall_k,
            now=self.recall_now(msg),
        )
        conversation = list(context.messages)
        calls: list[uuid.UUID] = []
        uses: list[ToolUse] = []
        shown: list[uuid.UUID] = []  # events of the tool results the next call is shown
        text, finished = "", False
        for step in range(1, steps + 1):
            last = step == steps
            prompt = conversation
            if last and step > 1:  # tool rounds are spent: ask for the answer
                prompt = [*conversation, ChatMessage(role="user", content=_LAST_STEP)]
            call: ModelCall = await ctx.chat(
                prompt,
                tools=tuple(self.tools),
                context=context.record,
                provider=self.provider,
                model=self.model,
                max_tokens=self.max_tokens,
                temperature=self.temperature,
                causes=[*calls[-1:], *shown],
            )
            calls.append(call.event)
            text = call.text
            if not call.tool_calls:
                finished = True
                break
            if last:
                break
            conversation.append(ChatMessage(role="assistant", content=call.text or None, tool_calls=call.tool_calls))
            shown = []
            for requested in call.tool_calls:
                use = await self._use_tool(requested, call.event)
                uses.append(use)
                seen = use.result or use.called
                if seen is not None:
                    shown.append(seen)
                conversation.append(use.as_message())
        thought = Thought(
            message=msg,
            task=task,
            text=text,
            finished=finished,
            model_calls=calls,
            tool_results=uses,
            context=context,
        )
        await self.act(thought)
        return thought

    async def act(self, thought: Thought) -> None:
        """Act on a thought: reply to the sender, and remember the answer.

        It replies when the message was a request, or a direct message from an agent
        that is not itself a reply (so two thinking agents never answer each other
        forever). With ``remember_messages`` it remembers the answer, its sources the
        model call that gave it and the reply. Override to act otherwise (send to
        someone else, set a fact, emit a decision...).
        """
        msg = thought.message
        ctx = self.ctx
        answer = thought.text.strip() or (
            f"(no answer: stopped after {len(thought.model_calls)} model calls)" if not thought.finished else ""
        )
        reply: uuid.UUID | None = None
        if answer and _expects_answer(msg):
            reply = await ctx.reply(answer, causes=thought.model_calls[-1:])
        if not (self.remember_messages and answer):
            return
        sources = [*thought.model_calls[-1:], *([reply] if reply is not None else [])]
        meta: dict[str, Any] = {"speaker": ctx.principal, "about": str(msg.id)}
        if reply is not None:
            meta["direction"], meta["with"] = "sent", msg.sender
        await ctx.memory.remember(
            answer, kind="message" if reply is not None else "note", meta=meta, source=sources, thread=msg.thread
        )

    async def _use_tool(self, requested: ToolCall, asked_by: uuid.UUID) -> ToolUse:
        if requested.name not in self.tools:
            offered = ", ".join(self.tools) or "none"
            why = f"tool {requested.name!r} is not offered to you; offered: {offered}"
            return ToolUse(call=requested, ok=False, error_type="UnknownToolError", error=why)
        try:
            result = await self.ctx.call_tool(
                requested.name, dict(requested.arguments), call_id=requested.id, causes=[asked_by]
            )
        except (PolicyDeniedError, ApprovalPendingError, InvalidRequestError) as refused:
            # Refused (policy, budget, a human), undecided, unknown or malformed: the model hears why.
            return ToolUse(call=requested, ok=False, error_type=type(refused).__name__, error=str(refused))
        failure = result.error
        return ToolUse(
            call=requested,
            ok=result.ok,
            value=result.value,
            error_type=failure.type if failure is not None else None,
            error=(f"{failure.exception}: " if failure.exception else "") + failure.message if failure else None,
            called=result.called,
            result=result.result,
        )


def _expects_answer(msg: Message) -> bool:
    if msg.expects_reply:
        return True
    return msg.sender.startswith("agent:") and msg.topic is None and msg.in_reply_to is None and msg.type != "timer"


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)
