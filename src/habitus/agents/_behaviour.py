"""How agents are written: classes with handlers, or plain async functions, gathered in an App."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from habitus.agents._models import Message
from habitus.errors import InvalidRequestError, UnknownBehaviourError
from habitus.messaging._topics import check_topic, matches

if TYPE_CHECKING:
    from habitus.agents._context import AgentContext

__all__ = ["Agent", "App", "Behaviour", "FunctionHandler", "handles"]

FunctionHandler = Callable[["AgentContext", Message], Awaitable[None]]
F = TypeVar("F", bound=Callable[..., Awaitable[None]])


def handles(type: str | None = None, *, topic: str | None = None) -> Callable[[F], F]:  # noqa: A002
    """Mark an :class:`Agent` method as the handler of a message type or a topic pattern.

    Example:
        >>> class Scout(Agent):  # doctest: +SKIP
        ...     @handles("check")
        ...     async def check(self, msg: Message) -> None:
        ...         await self.ctx.reply("all quiet")
    """
    if (type is None) == (topic is None):
        raise InvalidRequestError("handles() takes a message type or a topic pattern, exactly one")
    if topic is not None:
        check_topic(topic, pattern=True)

    def mark(fn: F) -> F:
        fn.__habitus_handles__ = (type, topic)  # type: ignore[attr-defined]
        return fn

    return mark


class Agent:
    """Base class of agents written as classes.

    Handlers are async methods marked with :func:`handles` (by message type or
    topic pattern); :meth:`on_message` receives everything else and
    :meth:`on_timer` the timers. ``self.ctx`` is the :class:`AgentContext`:
    send, reply, publish, emit events, durable state and timers, all committed
    with the acknowledgement of the message being handled.
    """

    topics: ClassVar[tuple[str, ...]] = ()
    """Topic patterns agents of this class subscribe to when spawned."""

    remember_messages: ClassVar[bool] = False
    """Remember every message these agents receive and send (kind ``message``, in their private memory)."""

    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx

    async def on_message(self, msg: Message) -> None:
        """Messages no other handler takes. By default they are refused (and dead-lettered)."""
        raise InvalidRequestError(
            f"{type(self).__name__} has no handler for message type {msg.type!r}"
            + (f" on topic {msg.topic!r}" if msg.topic else "")
        )

    async def on_timer(self, msg: Message) -> None:
        """A timer this agent set came due; ``msg.body`` is its payload."""
        await self.on_message(msg)


@dataclass
class Behaviour:
    """A registered behaviour: how to make an agent of it and which handler takes a message."""

    name: str
    factory: Callable[[AgentContext], Any]
    function: FunctionHandler | None = None
    by_type: dict[str, str] = field(default_factory=dict)
    by_topic: list[tuple[str, str]] = field(default_factory=list)
    topics: tuple[str, ...] = ()
    remember_messages: bool = False

    def handler(self, instance: Any, msg: Message) -> Callable[[], Awaitable[None]]:
        """The coroutine function that handles ``msg`` for ``instance``."""
        return lambda: self.handle(instance, msg)

    def handle(self, instance: Any, msg: Message) -> Awaitable[None]:
        """Start handling ``msg`` with ``instance``: the handler's coroutine."""
        if self.function is not None:
            return self.function(instance, msg)
        msg_type = msg.type
        if msg_type == "timer" and "timer" not in self.by_type:
            return instance.on_timer(msg)  # type: ignore[no-any-return]
        name = self.by_type.get(msg_type or "")
        if name is None and msg.topic is not None:
            name = next((m for pattern, m in self.by_topic if matches(pattern, msg.topic)), None)
        return getattr(instance, name or "on_message")(msg)  # type: ignore[no-any-return]


class App:
    """A habitat app: the behaviours it runs and the agents it starts with.

    ``habitus run app.py`` imports the module and runs its ``app``. Declared
    agents are spawned on the first run only; later runs resume the same
    agents, mailboxes, state and timers.

    Example:
        >>> app = App("greenhouse")  # doctest: +SKIP
        >>> @app.behaviour
        ... class Scout(Agent): ...
        >>> app.agent("scout", "Scout", owner="human:ada")
    """

    def __init__(self, name: str = "app") -> None:
        self.name = name
        self._behaviours: dict[str, Behaviour] = {}
        self.agents: list[dict[str, Any]] = []

    def behaviour(self, target: Any = None, *, name: str | None = None, remember_messages: bool | None = None) -> Any:
        """Register an :class:`Agent` subclass or an ``async def handler(ctx, msg)`` (usable as a decorator).

        ``remember_messages`` makes its agents remember every message they
        receive and send (default: the class's ``remember_messages``, else off).
        """

        def register(obj: Any) -> Any:
            key = name or obj.__name__
            if key in self._behaviours:
                raise InvalidRequestError(f"behaviour {key!r} is registered twice")
            described = _describe(key, obj)
            if remember_messages is not None:
                described.remember_messages = remember_messages
            self._behaviours[key] = described
            return obj

        return register if target is None else register(target)

    def agent(
        self,
        id: str,  # noqa: A002
        behaviour: str,
        *,
        owner: str = "system",
        name: str | None = None,
        labels: dict[str, str] | None = None,
        topics: Iterable[str] | None = None,
    ) -> None:
        """Declare an agent the app starts with (spawned if it does not exist yet)."""
        self.agents.append(
            {"id": id, "behaviour": behaviour, "owner": owner, "name": name, "labels": labels, "topics": topics}
        )

    def get(self, name: str) -> Behaviour:
        """The behaviour called ``name``.

        Raises:
            UnknownBehaviourError: The app registers no such behaviour.
        """
        found = self._behaviours.get(name)
        if found is None:
            known = ", ".join(sorted(self._behaviours)) or "none"
            raise UnknownBehaviourError(f"the app has no behaviour {name!r}; it has: {known}")
        return found

    @property
    def behaviours(self) -> list[str]:
        """Names of the registered behaviours."""
        return sorted(self._behaviours)


def _describe(key: str, obj: Any) -> Behaviour:
    if inspect.isclass(obj) and issubclass(obj, Agent):
        by_type: dict[str, str] = {}
        by_topic: list[tuple[str, str]] = []
        for attr, member in inspect.getmembers(obj, inspect.iscoroutinefunction):
            marker = getattr(member, "__habitus_handles__", None)
            if marker is None:
                continue
            msg_type, topic = marker
            if msg_type is not None:
                by_type[msg_type] = attr
            else:
                by_topic.append((topic, attr))
        return Behaviour(key, obj, None, by_type, by_topic, tuple(obj.topics), bool(obj.remember_messages))
    if inspect.iscoroutinefunction(obj):
        return Behaviour(key, lambda ctx: ctx, obj)
    raise InvalidRequestError(f"{obj!r} is neither an Agent subclass nor an async function(ctx, msg)")
