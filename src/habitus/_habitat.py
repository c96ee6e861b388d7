"""A habitat: one directory holding a ledger, its signing key and its lock."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

from habitus._acting import Acting
from habitus._settings import Settings
from habitus._version import __version__
from habitus.agents._behaviour import App
from habitus.agents._registry import Agents
from habitus.agents._runtime import Runtime, RuntimeOptions
from habitus.control._control import Control
from habitus.errors import (
    HabitatExistsError,
    HabitatLockedError,
    HabitatNotFoundError,
    IntegrityError,
    InvalidRequestError,
    ReadOnlyHabitatError,
)
from habitus.ledger._ledger import Ledger
from habitus.ledger._prepare import LedgerLimits
from habitus.ledger._signing import Signer
from habitus.memory._embedders import Embedder
from habitus.memory._memory import AgentMemory, MemoryService
from habitus.messaging._messenger import Messenger
from habitus.storage._sqlite import SQLiteStore
from habitus.tools import _kinds as _tool_kinds  # noqa: F401  (the tool.* kinds exist before the registry does)

if TYPE_CHECKING:
    from habitus.models._gateway import ModelGateway
    from habitus.tools._registry import ToolRegistry

__all__ = ["Habitat", "HabitatInfo"]

_FORMAT = "habitus-habitat/1"
_INFO = "habitat.json"
_KEY = "checkpoint.key"
_LOCK = "writer.lock"
_DB = "ledger.db"
_INBOX = "inbox"


class HabitatInfo:
    """What ``habitat.json`` says about a habitat."""

    __slots__ = ("created", "id", "name", "public_key")

    def __init__(self, *, id: str, name: str, created: str, public_key: str) -> None:  # noqa: A002
        self.id = id
        self.name = name
        self.created = created
        self.public_key = public_key

    @classmethod
    def read(cls, path: Path) -> HabitatInfo:
        """Read and check ``habitat.json`` in ``path``."""
        file = path / _INFO
        if not file.exists():
            raise HabitatNotFoundError(
                f"{str(path)!r} is not a habitat (no {_INFO}); create one with 'habitus init {path}'"
            )
        try:
            data: dict[str, Any] = json.loads(file.read_text(encoding="utf-8"))
            if data.get("format") != _FORMAT:
                raise IntegrityError(f"{str(file)!r} has format {data.get('format')!r}, expected {_FORMAT!r}")
            return cls(id=data["id"], name=data["name"], created=data["created"], public_key=data["public_key"])
        except (OSError, ValueError, KeyError) as exc:
            raise IntegrityError(f"cannot read {str(file)!r}: {exc}") from None


class Habitat:
    """A habitat opened by this process (async API).

    Open with :meth:`init` (new) or :meth:`open` (existing), and close with
    :meth:`close` or ``async with``. One process at a time may open a habitat
    for writing; others may open it ``read_only`` at the same time and see its
    writes as they commit.

    Example:
        >>> async with await Habitat.open("habitat", create=True) as hab:  # doctest: +SKIP
        ...     event = await hab.ledger.append("note.recorded", actor="human:ada", content="hello")
    """

    def __init__(
        self,
        path: Path,
        info: HabitatInfo,
        ledger: Ledger,
        store: SQLiteStore,
        lock: IO[str] | None,
        settings: Settings,
    ) -> None:
        self._path = path
        self._info = info
        self._ledger = ledger
        self._store = store
        self._lock = lock
        self._settings = settings
        self._closed = False
        self._agents = Agents(ledger, store)
        self._control = Control(ledger, store, self._agents)
        self._control.inbox = path / _INBOX
        self._messages = Messenger(
            ledger, store, self._agents, self._control, mailbox_capacity=settings.mailbox_capacity
        )
        self._memories = MemoryService(ledger, store, self._agents, settings, self._control)
        self._runtime: Runtime | None = None
        self._models: ModelGateway | None = None
        self._tools: ToolRegistry | None = None

    # -- opening ----------------------------------------------------------------------

    @classmethod
    async def init(
        cls, path: str | Path | None = None, *, name: str | None = None, settings: Settings | None = None
    ) -> Habitat:
        """Create a new habitat in ``path`` (which must not exist or be empty) and open it.

        Raises:
            HabitatExistsError: ``path`` already holds a habitat or other files.
        """
        settings = settings or Settings.resolve()
        where = Path(path) if path is not None else settings.path
        if (where / _INFO).exists():
            raise HabitatExistsError(f"{str(where)!r} already holds a habitat; open it instead")
        if where.exists() and (not where.is_dir() or any(where.iterdir())):
            raise HabitatExistsError(f"{str(where)!r} exists and is not an empty directory; choose another path")
        made = not where.exists()
        try:
            where.mkdir(parents=True, exist_ok=True)
            signer = Signer.create(where / _KEY)
            info = HabitatInfo(
                id=str(uuid.uuid4()),
                name=name or where.resolve().name,
                created=datetime.now(UTC).isoformat(),
                public_key=signer.public_key_hex,
            )
            lock = _take_lock(where)
            store = SQLiteStore(where / _DB, durability=settings.durability)
            store.set_meta("habitat_id", info.id)
            store.set_meta("public_key", info.public_key)
            ledger = Ledger(store, signer=signer, public_key=info.public_key, limits=_limits(settings))
            await ledger._start()
            hab = cls(where, info, ledger, store, lock, settings)
            await ledger.append(
                "habitat.created", actor="system", meta={"name": info.name, "habitus_version": __version__}
            )
            await ledger.checkpoint()
            await hab._control.load_config(settings.control)
            _write_info(where, info)
        except BaseException:
            with contextlib.suppress(Exception):
                if "hab" in locals():
                    await hab.close()
                elif "store" in locals():
                    store.close()
            if made:
                shutil.rmtree(where, ignore_errors=True)
            else:
                for child in list(where.iterdir()):
                    if child.is_dir():
                        shutil.rmtree(child, ignore_errors=True)
                    else:
                        child.unlink(missing_ok=True)
            raise
        return hab

    @classmethod
    async def open(
        cls,
        path: str | Path | None = None,
        *,
        create: bool = False,
        read_only: bool = False,
        settings: Settings | None = None,
    ) -> Habitat:
        """Open an existing habitat (or create it with ``create=True``).

        Raises:
            HabitatNotFoundError: No habitat at ``path`` and ``create`` is false.
            HabitatLockedError: Another process has it open for writing.
        """
        settings = settings or Settings.resolve()
        where = Path(path) if path is not None else settings.path
        if create and not read_only and not (where / _INFO).exists():
            return await cls.init(where, settings=settings)
        info = HabitatInfo.read(where)
        lock = None if read_only else _take_lock(where)
        try:
            store = SQLiteStore(where / _DB, read_only=read_only, durability=settings.durability)
            signer = None if read_only else Signer.load(where / _KEY)
            if signer is not None and signer.public_key_hex != info.public_key:
                raise IntegrityError(f"the signing key in {str(where)!r} does not match the habitat's public key")
            ledger = Ledger(store, signer=signer, public_key=info.public_key, limits=_limits(settings))
            await ledger._start()
        except BaseException:
            if lock is not None:
                lock.close()
            raise
        hab = cls(where, info, ledger, store, lock, settings)
        if not read_only:
            try:
                await hab._control.load_config(settings.control)
                await hab._control.process_inbox()
            except BaseException:
                await hab.close()
                raise
        return hab

    # -- using ------------------------------------------------------------------------

    @property
    def ledger(self) -> Ledger:
        """The habitat's causal ledger."""
        return self._ledger

    @property
    def agents(self) -> Agents:
        """The habitat's agents: spawn, look up, suspend, resume, retire."""
        return self._agents

    @property
    def messages(self) -> Messenger:
        """Messaging from outside the agents: send, publish, request, reply."""
        return self._messages

    @property
    def control(self) -> Control:
        """The policy: capabilities, approvals, budgets, trust labels, and the one check everything passes."""
        return self._control

    def acting_as(self, principal: str, *, on_behalf_of: str | None = None) -> Acting:
        """The habitat as ``principal`` sees it: every call acts as it, through the control layer.

        Example:
            >>> ada = hab.acting_as("human:ada")  # doctest: +SKIP
            >>> await ada.send("scout", "look north")  # doctest: +SKIP

        Raises:
            InvalidRequestError: ``principal`` is not a principal.
        """
        return Acting(self, principal, on_behalf_of)

    @property
    def memories(self) -> MemoryService:
        """Memory for all agents: grants, reindexing, sweeping expired and excess memories, the embedder."""
        return self._memories

    def memory(self, agent: str) -> AgentMemory:
        """One agent's memory: ``remember``, ``recall``, ``forget``, ``assert_fact``, ``facts``.

        Example:
            >>> mem = hab.memory("scout")  # doctest: +SKIP
            >>> await mem.remember("The bridge is closed", at=datetime(2026, 5, 3, tzinfo=UTC))  # doctest: +SKIP
            >>> (await mem.recall("is the bridge open?")).hits[0].record.text  # doctest: +SKIP
            'The bridge is closed'
        """
        return self._memories.of(agent)

    @property
    def models(self) -> ModelGateway:
        """The inference gateway: every model call checked, budgeted and recorded as ``model.called``."""
        if self._models is None:
            from habitus.models._gateway import ModelGateway

            self._models = ModelGateway(self._ledger, self._control, self._settings)
        return self._models

    @property
    def tools(self) -> ToolRegistry:
        """The tool registry: Python functions, sandboxed programs and MCP servers' tools, each call an event."""
        if self._tools is None:
            from habitus.tools._registry import ToolRegistry

            self._tools = ToolRegistry(self._ledger, self._control)
        return self._tools

    def use_embedder(self, embedder: Embedder) -> None:
        """Use ``embedder`` for memory instead of the one the settings name (before any memory is used)."""
        self._memories.set_embedder(embedder)

    async def start(self, app: App, *, options: RuntimeOptions | None = None) -> Runtime:
        """Start running ``app``'s agents in this process; stop with :meth:`close` (or ``Runtime.stop``).

        Raises:
            ReadOnlyHabitatError: The habitat was opened read-only.
            InvalidRequestError: An app is already running here.
        """
        if self._runtime is not None:
            raise InvalidRequestError("an app is already running in this habitat; close it first")
        if self._store.read_only:
            raise ReadOnlyHabitatError("a read-only habitat cannot run agents; open it for writing")
        settings = self._settings
        options = options or RuntimeOptions(
            max_attempts=settings.max_attempts,
            idle_seconds=settings.idle_seconds,
            max_active=settings.max_active_agents,
            gc_threshold=settings.gc_threshold or None,
        )
        runtime = Runtime(
            app,
            ledger=self._ledger,
            store=self._store,
            agents=self._agents,
            messenger=self._messages,
            memories=self._memories,
            options=options,
            models=lambda: self.models,
            tools=lambda: self.tools,
        )
        await runtime.start()
        self._runtime = runtime
        return runtime

    async def run(self, app: App, *, options: RuntimeOptions | None = None) -> None:
        """Run ``app`` until cancelled (Ctrl-C in ``habitus run``); the next run resumes where it stopped."""
        runtime = await self.start(app, options=options)
        try:
            await asyncio.Event().wait()
        finally:
            await runtime.stop()
            self._runtime = None

    @property
    def path(self) -> Path:
        """The habitat directory."""
        return self._path

    @property
    def name(self) -> str:
        """The habitat's name (default: its directory's name)."""
        return self._info.name

    @property
    def id(self) -> str:
        """The habitat's unique id."""
        return self._info.id

    @property
    def read_only(self) -> bool:
        """True when opened read-only."""
        return self._store.read_only

    async def close(self) -> None:
        """Commit what is queued, sign a final checkpoint, and release the habitat. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._runtime is not None:
                await self._runtime.stop()
                self._runtime = None
            if self._tools is not None:
                await self._tools.aclose()
            if self._models is not None:
                await self._models.aclose()
            await self._ledger._close()
        finally:
            self._store.close()
            if self._lock is not None:
                self._lock.close()

    async def __aenter__(self) -> Habitat:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


def _limits(settings: Settings) -> LedgerLimits:
    return LedgerLimits(
        max_content_bytes=settings.max_content_bytes,
        max_meta_bytes=settings.max_meta_bytes,
        checkpoint_every=settings.checkpoint_every,
        inline_commits=settings.durability != "full",
        commit_process=settings.commit_process,
    )


def _take_lock(path: Path) -> IO[str]:
    """Hold an exclusive advisory lock on the habitat for as long as the file stays open."""
    fh = open(path / _LOCK, "a+", encoding="utf-8")  # noqa: SIM115 - held open as the lock
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "unknown"
        fh.close()
        raise HabitatLockedError(
            f"the habitat {str(path)!r} is open for writing by another process (pid {holder}); "
            "open it read-only to look at it, or stop that process first"
        ) from None
    except OSError as exc:
        fh.close()
        raise InvalidRequestError(f"cannot lock the habitat {str(path)!r}: {exc}") from None
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    return fh


def _write_info(path: Path, info: HabitatInfo) -> None:
    data = {
        "format": _FORMAT,
        "id": info.id,
        "name": info.name,
        "created": info.created,
        "public_key": info.public_key,
    }
    tmp = path / (_INFO + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path / _INFO)
