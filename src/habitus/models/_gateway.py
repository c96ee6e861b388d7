"""The inference gateway: every model call checked by policy, held to budgets, and recorded with its provenance.

A call goes through, in order:

1. **policy** — the principal needs ``model:use`` on ``model:<provider>/<model>``
   (a ``policy.denied`` event and :class:`~habitus.errors.PolicyDeniedError` if not);
2. **budget** — the principal's (and its owner's) ``tokens`` budget must have room
   for the prompt, estimated, *before* anything is sent (a ``budget.exceeded`` event
   and :class:`~habitus.errors.BudgetExceededError` if not);
3. **concurrency** — at most ``concurrency`` calls in flight per provider;
4. **the call**, with the provider's timeout and retries;
5. **the record** — one transaction of its own appends ``model.called`` (its causes:
   the given ``causes`` and every memory, fact and message the prompt was built
   from) and charges the tokens actually used. On failure ``model.failed`` is
   appended instead and nothing is charged.

Embeddings take the same checks; concurrent :meth:`ModelGateway.embed` calls to
one model are gathered for a few milliseconds and sent in shared batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, ValidationError

from habitus.control._rules import check_principal
from habitus.errors import HabitatClosedError, HabitatError, InvalidRequestError, ModelUnavailableError
from habitus.ledger._rows import EventRef, as_uuid
from habitus.models import _kinds  # noqa: F401  (registers the model kinds)
from habitus.models._config import ProviderConfig
from habitus.models._content import call_content, fit
from habitus.models._estimate import estimate_tokens, request_chars
from habitus.models._scripted import ScriptedModel
from habitus.models._types import (
    ChatMessage,
    ChatRequest,
    Completion,
    ContextRecord,
    ModelProvider,
    OnText,
    ToolCall,
    ToolSpec,
    Usage,
)

if TYPE_CHECKING:
    from habitus._settings import Settings
    from habitus.control._control import Control
    from habitus.ledger._ledger import Ledger

__all__ = ["ModelCall", "ModelGateway"]

logger = logging.getLogger("habitus.models")

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
_CONTENT_SLACK = 512  # bytes kept free under max_content_bytes


class ModelCall(BaseModel):
    """A completed model call: the answer, the ``model.called`` event that records it, its latency and cost.

    Attributes:
        completion: What the model answered.
        event: Id of the ``model.called`` event (``ledger.why(event)`` lists what informed the call).
        provider: The provider that answered.
        model: The model that answered.
        latency_ms: How long the provider took, in milliseconds (retries included).
        cost: Prompt and completion tokens priced at the provider's configured rates.
    """

    model_config = ConfigDict(frozen=True)

    completion: Completion
    event: uuid.UUID
    provider: str
    model: str
    latency_ms: float
    cost: float = 0.0

    @property
    def text(self) -> str:
        """The answer's text."""
        return self.completion.text

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        """The tools the model asked to call, in order."""
        return self.completion.tool_calls

    @property
    def usage(self) -> Usage:
        """Tokens the call used."""
        return self.completion.usage


@dataclass
class _Waiter:
    texts: list[str]
    future: asyncio.Future[list[list[float]]]


@dataclass
class _Slot:
    """One provider, its settings, its concurrency limit and its pending embedding batches."""

    provider: ModelProvider
    config: ProviderConfig
    semaphore: asyncio.Semaphore
    pending: dict[str, list[_Waiter]] = field(default_factory=dict)  # by embedding model
    timers: dict[str, asyncio.TimerHandle] = field(default_factory=dict)


class ModelGateway:
    """Providers by name, and calls to them that are checked, budgeted and recorded.

    Obtain it as :attr:`habitus.Habitat.models`. Providers come from the
    ``[models]`` table of ``habitus.toml`` and from ``HABITUS_MODEL_URL`` (a provider
    called ``default``); with none configured, a :class:`ScriptedModel` called
    ``scripted`` answers. Add others with :meth:`add_provider`.
    """

    embed_window_s: float = 0.002
    """How long an embedding request waits for others to share its batch."""

    def __init__(self, ledger: Ledger, control: Control, settings: Settings) -> None:
        self._ledger = ledger
        self._control = control
        self._max_content = max(settings.max_content_bytes - _CONTENT_SLACK, 1024)
        self._slots: dict[str, _Slot] = {}
        self._replaced: list[ModelProvider] = []
        self._flushes: set[asyncio.Task[None]] = set()
        self._default: str | None = None
        self._closed = False
        self._configure(settings)

    def _configure(self, settings: Settings) -> None:
        from habitus.models._openai import OpenAIProvider  # httpx, imported only when a provider needs it

        tables = dict(settings.models.providers)
        env = {
            k: v
            for k, v in (
                ("base_url", settings.model_url),
                ("api_key", settings.model_key),
                ("chat_model", settings.model_name),
            )
            if v
        }
        if settings.model_url or "default" in tables:
            # HABITUS_MODEL_* describe (or, over a [models.providers.default] table, override) `default`.
            base = tables.get("default", ProviderConfig())
            tables["default"] = base.model_copy(update=env) if env else base
        for name, config in tables.items():
            provider: ModelProvider
            if config.kind == "scripted":
                provider = ScriptedModel(name=name)
            else:
                provider = OpenAIProvider.from_config(name, config)
            self.add_provider(name, provider, config=config)
        wanted = settings.models.default
        if wanted is not None:
            if wanted not in self._slots:
                raise InvalidRequestError(
                    f"[models] default is {wanted!r}, but no provider has that name; configured: "
                    f"{', '.join(self._slots) or 'none'} (add [models.providers.{wanted}] to habitus.toml)"
                )
            self._default = wanted
        elif "default" in self._slots:
            self._default = "default"
        if not self._slots:
            self.add_provider("scripted", ScriptedModel(), config=ProviderConfig(kind="scripted"))
        if self._default is None:
            self._default = next(iter(self._slots))

    # -- providers --------------------------------------------------------------------------

    def add_provider(
        self, name: str, provider: ModelProvider, *, config: ProviderConfig | None = None, default: bool = False
    ) -> None:
        """Make ``provider`` available as ``name`` (replacing any provider of that name).

        Args:
            name: Letters, digits, ``_``, ``.`` and ``-`` (it is part of the
                ``model:<provider>/<model>`` resource policy checks).
            provider: Anything speaking :class:`ModelProvider`.
            config: Its concurrency, batch size, costs and default models (default:
                the defaults of :class:`ProviderConfig`, models from the provider).
            default: Make it the provider calls use when they name none.

        Raises:
            InvalidRequestError: A bad name, or an object that is not a provider.
        """
        if not isinstance(name, str) or not 1 <= len(name) <= 64 or not set(name) <= _NAME_CHARS:
            raise InvalidRequestError(f"a model provider's name is 1-64 letters, digits, '_', '.' or '-', not {name!r}")
        if not isinstance(provider, ModelProvider):
            raise InvalidRequestError(
                f"provider {name!r} must have a name and complete, embed and aclose methods "
                f"(see habitus.models.ModelProvider), not {type(provider).__name__}"
            )
        if config is None:
            config = ProviderConfig(
                kind="scripted" if isinstance(provider, ScriptedModel) else "openai",
                base_url=getattr(provider, "base_url", None),
                chat_model=getattr(provider, "chat_model", None),
                embedding_model=getattr(provider, "embedding_model", None),
            )
        old = self._slots.get(name)
        if old is not None and old.provider is not provider:
            self._replaced.append(old.provider)
        self._slots[name] = _Slot(provider, config, asyncio.Semaphore(config.concurrency))
        if default:
            self._default = name

    def provider(self, name: str | None = None) -> ModelProvider:
        """The provider called ``name`` (default: the default provider).

        Raises:
            InvalidRequestError: No provider has that name.
        """
        return self._slot(name)[1].provider

    def config(self, name: str | None = None) -> ProviderConfig:
        """The settings of the provider called ``name`` (default: the default provider).

        Raises:
            InvalidRequestError: No provider has that name.
        """
        return self._slot(name)[1].config

    @property
    def providers(self) -> list[str]:
        """Names of the providers, in the order they were added."""
        return list(self._slots)

    @property
    def default(self) -> str:
        """Name of the provider calls use when they name none."""
        assert self._default is not None  # set by the constructor
        return self._default

    def _slot(self, name: str | None) -> tuple[str, _Slot]:
        key = self.default if name is None else name
        slot = self._slots.get(key)
        if slot is None:
            raise InvalidRequestError(
                f"no model provider {key!r}; configured: {', '.join(self._slots)} "
                "(add one under [models.providers] in habitus.toml, or with add_provider)"
            )
        return key, slot

    def _model(self, name: str, slot: _Slot, model: str | None, *, embedding: bool) -> str:
        attr = "embedding_model" if embedding else "chat_model"
        found = model or getattr(slot.config, attr) or getattr(slot.provider, attr, None)
        if not isinstance(found, str) or not found:
            raise InvalidRequestError(
                f"model provider {name!r} has no {attr}; pass model=... or set "
                f"[models.providers.{name}] {attr} in habitus.toml"
            )
        return found

    # -- chat -------------------------------------------------------------------------------

    async def chat(
        self,
        principal: str,
        messages: str | Sequence[ChatMessage],
        *,
        provider: str | None = None,
        model: str | None = None,
        tools: Sequence[ToolSpec] = (),
        context: ContextRecord | None = None,
        causes: Iterable[EventRef] = (),
        on_text: OnText | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        on_behalf_of: str | None = None,
        tainted: bool = False,
    ) -> ModelCall:
        """Ask a model, as ``principal``, and record the call.

        Args:
            principal: Who calls (``agent:scout``); it needs ``model:use`` on
                ``model:<provider>/<model>``, and its tokens are charged.
            messages: The conversation, or one string (a single user message).
            provider: Which provider (default: :attr:`default`).
            model: Which model (default: the provider's ``chat_model``).
            tools: Tools the model may ask to call.
            context: What the prompt was built from: its memories, facts and
                messages become causes of the ``model.called`` event.
            causes: Further events that led to the call (committed events).
            on_text: Stream the answer, calling this with each piece of text.
            max_tokens: Most tokens to generate.
            temperature: Sampling temperature, 0 to 2.
            tainted: The call is made while handling untrusted content (a handler of an
                untrusted message): its ``model.called`` (or ``model.failed``) is labelled
                ``trust: untrusted``, as is every call by a principal labelled untrusted and
                every call whose ``context`` includes untrusted content.
            on_behalf_of: The principal ``principal`` acts for; both must be allowed.

        Returns:
            The answer, with the id of its ``model.called`` event, latency and cost.

        Raises:
            InvalidRequestError: A malformed request, or an unknown provider.
            PolicyDeniedError: ``principal`` may not use that model.
            BudgetExceededError: Its tokens budget has no room for the prompt; nothing was sent.
            ModelUnavailableError: The provider failed, after its retries (``model.failed`` records it).
            ModelTimeoutError: The provider did not answer in time, after its retries.
        """
        self._open()
        name, slot = self._slot(provider)
        model_name = self._model(name, slot, model, embedding=False)
        check_principal(principal)
        request = _request(model_name, messages, tools, max_tokens, temperature)
        context = context or ContextRecord()
        all_causes = _causes(causes, context)
        shared: dict[str, Any] = {  # meta that model.called and model.failed both carry
            "memories": len(context.memories),
            "facts": len(context.facts),
            "messages": len(context.messages),
        }
        if tainted or context.untrusted or self._control.trust_of(principal) == "untrusted":
            shared["trust"] = "untrusted"
        await self._control.require(principal, "model:use", f"model:{name}/{model_name}", on_behalf_of=on_behalf_of)
        await self._control.check_budget(principal, "tokens", max(estimate_tokens(request_chars(request)), 1))
        record = self._ledger.transaction()  # now: a read-only or closed habitat fails before the call, not after
        started: float | None = None
        try:
            async with slot.semaphore:
                started = time.perf_counter()
                completion = await slot.provider.complete(request, on_text=on_text)
        except Exception as exc:  # recorded as model.failed, then raised as it was
            latency = 0.0 if started is None else (time.perf_counter() - started) * 1000
            await self._failed(principal, name, model_name, "chat", exc, latency, all_causes, shared, on_behalf_of)
            raise
        latency = (time.perf_counter() - started) * 1000
        usage = completion.usage
        cost = (
            usage.prompt_tokens * slot.config.prompt_cost_per_1k
            + usage.completion_tokens * slot.config.completion_cost_per_1k
        ) / 1000
        content, truncated = fit(call_content(request, completion), self._max_content)
        meta: dict[str, Any] = {
            "provider": name,
            "model": model_name[:256],
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "latency_ms": round(latency, 3),
            "cost": cost,
            "finish_reason": completion.finish_reason[:256] or "stop",
            "tool_calls": [c.name[:256] for c in completion.tool_calls[:32]],
            "streamed": on_text is not None,
            "context_tokens": context.tokens,
            **shared,
        }
        if truncated:
            meta["truncated"] = True
        if on_behalf_of is not None and on_behalf_of != principal:
            meta["on_behalf_of"] = on_behalf_of
        # A transaction of its own, never the caller's: the tokens were spent even if the caller fails later.
        async with record as tx:
            event = tx.append("model.called", actor=principal, content=content, meta=meta, causes=all_causes)
            await self._control.charge(tx, principal, "tokens", usage.total_tokens, spent=True)
        return ModelCall(
            completion=completion,
            event=event,
            provider=name,
            model=model_name,
            latency_ms=meta["latency_ms"],
            cost=cost,
        )

    async def _failed(
        self,
        principal: str,
        provider: str,
        model: str,
        operation: str,
        exc: Exception,
        latency: float,
        causes: Sequence[uuid.UUID],
        shared: dict[str, Any],
        on_behalf_of: str | None,
    ) -> None:
        meta: dict[str, Any] = {
            "provider": provider,
            "model": model[:256],
            "operation": operation,
            "error": _error_name(exc),
            "message": (str(exc) or type(exc).__name__)[:1000],
            "attempts": max(int(getattr(exc, "attempts", 1)), 1),
            "latency_ms": round(latency, 3),
            **shared,
        }
        if on_behalf_of is not None and on_behalf_of != principal:
            meta["on_behalf_of"] = on_behalf_of
        try:
            await self._ledger.append("model.failed", actor=principal, meta=meta, causes=causes)
        except HabitatError as record_error:  # the call's own error matters more than its record's
            logger.warning("could not record model.failed for %s: %s", principal, record_error)

    # -- embeddings -------------------------------------------------------------------------

    async def embed(
        self,
        principal: str,
        texts: Sequence[str],
        *,
        provider: str | None = None,
        model: str | None = None,
        causes: Iterable[EventRef] = (),
    ) -> list[list[float]]:
        """Embed ``texts`` as ``principal`` (one vector each, in order) and record a ``model.embedded`` event.

        Calls to the same model made within :attr:`embed_window_s` of each other
        share requests of up to ``embed_batch`` texts; a large call is split the same way.
        Tokens (estimated, about four characters each) count against the ``tokens`` budget.

        Raises:
            InvalidRequestError: A malformed request, an unknown provider, or no embedding model.
            PolicyDeniedError: ``principal`` may not use that model.
            BudgetExceededError: Its tokens budget has no room; nothing was sent.
            ModelUnavailableError: The provider failed, after its retries (``model.failed`` records it).
        """
        self._open()
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise InvalidRequestError("embed takes a sequence of texts (strings), not one string or other values")
        name, slot = self._slot(provider)
        model_name = self._model(name, slot, model, embedding=True)
        check_principal(principal)
        cause_ids = _causes(causes, ContextRecord())
        await self._control.require(principal, "model:use", f"model:{name}/{model_name}")
        if not texts:
            return []
        tokens = max(estimate_tokens(sum(len(t) for t in texts)), 1)
        await self._control.check_budget(principal, "tokens", tokens)
        record = self._ledger.transaction()
        started = time.perf_counter()
        try:
            vectors = await self._enqueue(slot, model_name, list(texts))
        except Exception as exc:  # recorded as model.failed, then raised as it was
            latency = (time.perf_counter() - started) * 1000
            await self._failed(principal, name, model_name, "embed", exc, latency, cause_ids, {}, None)
            raise
        meta = {
            "provider": name,
            "model": model_name[:256],
            "texts": len(texts),
            "tokens": tokens,
            "dimensions": len(vectors[0]) if vectors else 0,
            "latency_ms": round((time.perf_counter() - started) * 1000, 3),
        }
        async with record as tx:
            tx.append("model.embedded", actor=principal, meta=meta, causes=cause_ids)
            await self._control.charge(tx, principal, "tokens", tokens, spent=True)
        return vectors

    def _enqueue(self, slot: _Slot, model: str, texts: list[str]) -> asyncio.Future[list[list[float]]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[list[float]]] = loop.create_future()
        waiting = slot.pending.setdefault(model, [])
        waiting.append(_Waiter(texts, future))
        if sum(len(w.texts) for w in waiting) >= slot.config.embed_batch:
            self._flush(slot, model)  # a full batch goes at once
        elif model not in slot.timers:
            slot.timers[model] = loop.call_later(self.embed_window_s, self._flush, slot, model)
        return future

    def _flush(self, slot: _Slot, model: str) -> None:
        timer = slot.timers.pop(model, None)
        if timer is not None:
            timer.cancel()
        waiters = slot.pending.pop(model, [])
        if waiters:
            task = asyncio.get_running_loop().create_task(self._send(slot, model, waiters))
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    async def _send(self, slot: _Slot, model: str, waiters: list[_Waiter]) -> None:
        """Send the gathered texts in batches, then hand each caller its vectors (or the error of its batch)."""
        size = slot.config.embed_batch
        flat = [t for w in waiters for t in w.texts]
        batches = [flat[i : i + size] for i in range(0, len(flat), size)]

        async def one(batch: list[str]) -> list[list[float]]:
            async with slot.semaphore:
                vectors = await slot.provider.embed(batch, model=model)
            if len(vectors) != len(batch):
                raise ModelUnavailableError(
                    f"model provider {slot.provider.name!r} returned {len(vectors)} embeddings for "
                    f"{len(batch)} texts (model {model!r})"
                )
            return vectors

        results = await asyncio.gather(*(one(b) for b in batches), return_exceptions=True)
        position = 0
        for waiter in waiters:
            count = len(waiter.texts)
            first, last = position // size, (position + count - 1) // size
            mine = results[first : last + 1]
            if not waiter.future.done():
                failure = next((r for r in mine if isinstance(r, BaseException)), None)
                if isinstance(failure, asyncio.CancelledError):
                    waiter.future.cancel()
                elif failure is not None:
                    waiter.future.set_exception(failure)
                else:
                    joined = [v for r in mine if not isinstance(r, BaseException) for v in r]
                    offset = position - first * size
                    waiter.future.set_result(joined[offset : offset + count])
            position += count

    # -- closing ----------------------------------------------------------------------------

    def _open(self) -> None:
        if self._closed:
            raise HabitatClosedError("the habitat is closed, and its model gateway with it; open it again")

    async def aclose(self) -> None:
        """Stop pending embedding batches and close every provider's connections."""
        self._closed = True
        for slot in self._slots.values():
            for timer in slot.timers.values():
                timer.cancel()
            slot.timers.clear()
            for waiters in slot.pending.values():
                for waiter in waiters:
                    waiter.future.cancel()
            slot.pending.clear()
        for task in list(self._flushes):
            task.cancel()
        for task in list(self._flushes):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for provider in [*self._replaced, *(s.provider for s in self._slots.values())]:
            try:
                await provider.aclose()
            except Exception as exc:  # noqa: BLE001 - one provider failing to close must not stop the rest
                logger.warning("closing model provider %r failed: %s", provider.name, exc)


def _request(
    model: str,
    messages: str | Sequence[ChatMessage],
    tools: Sequence[ToolSpec],
    max_tokens: int | None,
    temperature: float | None,
) -> ChatRequest:
    if isinstance(messages, str):
        messages = (ChatMessage(role="user", content=messages),)
    if not messages:
        raise InvalidRequestError("a model call needs at least one message")
    bad = next((m for m in messages if not isinstance(m, ChatMessage)), None)
    if bad is not None:
        raise InvalidRequestError(f"messages must be ChatMessage objects (or one string), not {type(bad).__name__}")
    try:
        return ChatRequest(
            model=model, messages=tuple(messages), tools=tuple(tools), max_tokens=max_tokens, temperature=temperature
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise InvalidRequestError(f"model request {where!r}: {err['msg']} (got {err.get('input')!r})") from None


def _causes(causes: Iterable[EventRef], context: ContextRecord) -> list[uuid.UUID]:
    """The given causes, then the context's memories, facts and messages, each once."""
    seen: dict[uuid.UUID, None] = {}
    for ref in (*causes, *context.memories, *context.facts, *context.messages):
        seen.setdefault(as_uuid(ref), None)
    return list(seen)


def _error_name(exc: Exception) -> str:
    """The public name of an error (a provider's private subclass is reported as the Habitus error it is)."""
    for cls in type(exc).__mro__:
        if cls.__module__ == "habitus.errors":
            return cls.__name__
    return type(exc).__name__[:256]
