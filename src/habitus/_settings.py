"""One typed settings object, resolved once: defaults < habitus.toml < HABITUS_* environment < flags."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from habitus.control._config import ControlConfig
from habitus.errors import InvalidRequestError
from habitus.models._config import ModelsConfig

__all__ = ["Settings"]

_ENV_PREFIX = "HABITUS_"
_FILE_ONLY = {"control", "models"}  # tables, not values: set in habitus.toml


class Settings(BaseModel):
    """Settings of a habitat and of the process using it.

    Attributes:
        path: The habitat directory.
        durability: ``normal`` survives a killed process (SQLite synchronous=NORMAL
            in WAL mode); ``full`` also survives power loss, with an fsync per commit.
        commit_process: When ledger commits move from the writer thread to a writer
            process that runs beside the agents on another core: ``auto`` (under
            sustained load), ``always`` or ``never``.
        checkpoint_every: Sign a checkpoint automatically after this many events
            (one is also signed when the habitat is closed).
        max_content_bytes: Largest content accepted by an append.
        max_meta_bytes: Largest meta (as canonical JSON) accepted by an append.
        mailbox_capacity: Most messages waiting in one agent's mailbox; sending
            to a full mailbox raises ``MailboxFullError``.
        max_attempts: Deliveries of a message before it is dead-lettered.
        idle_seconds: An agent with no work for this long is passivated (leaves memory).
        max_active_agents: Most agents in memory at once; the rest wait their turn.
        gc_threshold: Young-generation threshold of Python's garbage collector while
            agents run (see ``RuntimeOptions.gc_threshold``); 0 leaves the collector alone.
        embedder: Which embedder memory uses: ``auto`` (the local model when
            installed, else ``embeddings_url`` when set, else lexical-only),
            ``local``, ``local:/path/to/model``, ``openai:MODEL``, ``hash``, ``lexical``.
        embeddings_url: Base URL of an OpenAI-compatible ``/v1`` endpoint for ``openai:`` embedders.
        embeddings_key: API key for that endpoint (prefer ``HABITUS_EMBEDDINGS_KEY`` to a file).
        memory_capacity: Most memories one agent keeps (0: no limit); beyond it the
            least valuable (by importance and recency) are forgotten.
        server_host: Address ``habitus serve`` and ``habitus up`` listen on (loopback by default).
        server_port: Their port.
        control: Grants, approval rules, budgets and trust labels (the ``[control]``
            table of ``habitus.toml``), recorded as events when the habitat opens for writing.
        models: Model providers for the inference gateway (the ``[models]`` table).
        model_url: Base URL of an OpenAI-compatible ``/v1`` endpoint: a provider called
            ``default`` without a ``[models]`` table (``HABITUS_MODEL_URL``).
        model_key: Its API key (``HABITUS_MODEL_KEY``).
        model_name: Its chat model (``HABITUS_MODEL_NAME``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path = Path("habitat")
    durability: Literal["normal", "full"] = "normal"
    commit_process: Literal["auto", "always", "never"] = "auto"
    checkpoint_every: int = Field(default=10_000, ge=1, le=100_000_000)
    max_content_bytes: int = Field(default=1_048_576, ge=1, le=256 * 1_048_576)
    max_meta_bytes: int = Field(default=16_384, ge=2, le=1_048_576)
    mailbox_capacity: int = Field(default=10_000, ge=1, le=100_000_000)
    max_attempts: int = Field(default=5, ge=1, le=1000)
    idle_seconds: float = Field(default=60.0, gt=0)
    max_active_agents: int = Field(default=10_000, ge=1)
    gc_threshold: int = Field(default=10_000, ge=0)
    embedder: str = Field(default="auto", min_length=1)
    embeddings_url: str | None = None
    embeddings_key: str | None = None
    memory_capacity: int = Field(default=0, ge=0)
    server_host: str = Field(default="127.0.0.1", min_length=1)
    server_port: int = Field(default=7077, ge=0, le=65535)
    control: ControlConfig = Field(default_factory=ControlConfig)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    model_url: str | None = None
    model_key: str | None = None
    model_name: str | None = None

    @classmethod
    def resolve(
        cls,
        *,
        config_file: Path | None = None,
        environ: Mapping[str, str] | None = None,
        **flags: Any,
    ) -> Settings:
        """Combine every source, later ones winning; ``None`` flags are ignored.

        Args:
            config_file: A TOML file; default ``habitus.toml`` in the working
                directory when it exists.
            environ: Environment to read ``HABITUS_*`` from (default ``os.environ``).
            flags: Values given on the command line or in code.

        Raises:
            InvalidRequestError: An unknown setting or a bad value, naming its source.
        """
        values: dict[str, Any] = {}
        file = config_file if config_file is not None else Path("habitus.toml")
        if file.exists():
            try:
                data = tomllib.loads(file.read_text(encoding="utf-8"))
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise InvalidRequestError(f"cannot read settings file {str(file)!r}: {exc}") from None
            _check_keys(data, f"settings file {str(file)!r}")
            values.update(data)
        elif config_file is not None:
            raise InvalidRequestError(f"settings file {str(config_file)!r} does not exist")
        env = os.environ if environ is None else environ
        for key in cls.model_fields:
            if key in _FILE_ONLY:
                continue
            raw = env.get(_ENV_PREFIX + key.upper())
            if raw is not None:
                values[key] = raw
        values.update({k: v for k, v in flags.items() if v is not None})
        _check_keys(values, "settings")
        try:
            return cls.model_validate(values, strict=False)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise InvalidRequestError(f"setting {where!r}: {err['msg']} (got {err.get('input')!r})") from None


def _check_keys(values: Mapping[str, Any], source: str) -> None:
    unknown = sorted(set(values) - set(Settings.model_fields))
    if unknown:
        known = ", ".join(Settings.model_fields)
        raise InvalidRequestError(f"unknown setting {unknown[0]!r} in {source}; known settings: {known}")
