"""Tokens: secrets bound to principals, for the server and MCP over HTTP.

A token is shown once, when it is created; the habitat keeps only its SHA-256
(in a ``token.created`` event, so who was given access, when and by whom is in
the ledger). Presenting the secret to the server makes every request act as its
principal, through the same checks as everything else.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from habitus.control._rules import check_principal
from habitus.errors import InvalidRequestError, ReadOnlyHabitatError
from habitus.ledger._codec import from_micros, to_micros
from habitus.ledger._kinds import KindSpec, MetaModel, register_kinds
from habitus.storage._abstract import EventQuery, Row

if TYPE_CHECKING:
    from habitus.ledger._ledger import Ledger
    from habitus.storage._projections import Op
    from habitus.storage._sqlite import SQLiteStore

__all__ = ["TokenInfo", "Tokens"]

_PREFIX = "hab_"
_KINDS = ("token.created", "token.revoked")


class _CreatedMeta(MetaModel):
    """Meta of ``token.created``: whose token, its digest (never the secret), its name and expiry."""

    token: Annotated[str, Field(min_length=1, max_length=64)]
    principal: Annotated[str, Field(min_length=1, max_length=256)]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    name: Annotated[str, Field(max_length=256)] | None = None
    expires: int | None = None


class _RevokedMeta(MetaModel):
    """Meta of ``token.revoked``."""

    token: Annotated[str, Field(min_length=1, max_length=64)]
    principal: Annotated[str, Field(min_length=1, max_length=256)]


register_kinds(
    KindSpec(
        "token.created", "A token bound to a principal was created (only its digest is kept).", _CreatedMeta, "none"
    ),
    KindSpec("token.revoked", "A token was revoked; requests presenting it are refused.", _RevokedMeta, "none"),
)


class TokenInfo(BaseModel):
    """A token as listed (never its secret).

    Attributes:
        id: Its short public id (the secret starts with ``hab_<id>_``).
        principal: Who presenting it acts as.
        name: What it is for.
        created: When it was created.
        created_by: Who created it.
        expires: When it stops working, if it does.
    """

    model_config = ConfigDict(frozen=True)

    id: str
    principal: str
    name: str | None = None
    created: datetime
    created_by: str
    expires: datetime | None = None


class Tokens:
    """Create, list, revoke and check tokens (``hab.control.tokens``)."""

    def __init__(self, ledger: Ledger, store: SQLiteStore) -> None:
        self._ledger = ledger
        self._store = store
        self._by_id: dict[str, tuple[TokenInfo, str]] = {}  # id -> (info, sha256 hex)
        self._seen_seq = 0
        self._loaded = False
        ledger.on_commit(self._committed)

    async def create(
        self, principal: str, *, name: str | None = None, expires: datetime | None = None, by: str = "system"
    ) -> tuple[TokenInfo, str]:
        """Create a token for ``principal``; return it and its secret (shown this once, never stored).

        Raises:
            InvalidRequestError: A malformed principal, name or expiry.
        """
        check_principal(principal)
        check_principal(by, what="by")
        if principal == "system":
            raise InvalidRequestError("no token acts as 'system'; the habitat's operator uses the library or the CLI")
        if name is not None and (not isinstance(name, str) or len(name) > 256):
            raise InvalidRequestError(f"name must be at most 256 characters, not {name!r}")
        if expires is not None and (expires.tzinfo is None or expires <= datetime.now(UTC)):
            raise InvalidRequestError(f"expires must be a future, timezone-aware time, not {expires!r}")
        if self._store.read_only:
            raise ReadOnlyHabitatError("a read-only habitat cannot create tokens; open it for writing")
        token_id = secrets.token_hex(6)
        secret = f"{_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
        meta: dict[str, Any] = {"token": token_id, "principal": principal, "sha256": _digest(secret)}
        if name:
            meta["name"] = name
        if expires is not None:
            meta["expires"] = to_micros(expires)
        await self._ledger.append("token.created", actor=by, meta=meta)
        self._load()
        return self._by_id[token_id][0], secret

    async def revoke(self, token: str, *, by: str = "system") -> TokenInfo:
        """Revoke a token by its id; requests presenting it fail from now on.

        Raises:
            InvalidRequestError: No such token.
        """
        self._load()
        found = self._by_id.get(token)
        if found is None:
            raise InvalidRequestError(f"no token {token!r}; list them with 'habitus token list'")
        await self._ledger.append("token.revoked", actor=by, meta={"token": token, "principal": found[0].principal})
        self._load()
        return found[0]

    def list(self) -> list[TokenInfo]:
        """Tokens in force, oldest first."""
        self._load()
        return sorted((info for info, _ in self._by_id.values()), key=lambda t: t.created)

    def verify(self, secret: str) -> str | None:
        """The principal ``secret`` acts as, or None (unknown, revoked, expired or malformed)."""
        if not isinstance(secret, str) or not secret.startswith(_PREFIX) or len(secret) > 200:
            return None
        token_id = secret[len(_PREFIX) :].split("_", 1)[0]
        self._load()
        found = self._by_id.get(token_id)
        if found is None or not hmac.compare_digest(found[1], _digest(secret)):
            return None
        info = found[0]
        if info.expires is not None and datetime.now(UTC) >= info.expires:
            return None
        return info.principal

    def _load(self) -> None:
        """Read the token events not seen yet: all of them the first time; then a writer follows its
        own commits, and a read-only handle (another process writes) looks again each time."""
        if self._loaded and not self._store.read_only:
            return
        while True:
            rows = self._store.query(EventQuery(kinds=_KINDS, min_seq=self._seen_seq + 1, limit=10_000))
            for row in rows:
                self._apply(row)
            if len(rows) < 10_000:
                break
        self._loaded = True

    def _committed(self, ops: Sequence[Op], rows: Sequence[Row]) -> None:
        if self._loaded:
            for row in rows:
                if row[5] in _KINDS and row[0] > self._seen_seq:
                    self._apply(row)

    def _apply(self, row: Row) -> None:
        seq, _id, ts, _at, actor, kind, _thread, meta_text = row[:8]
        meta = json.loads(meta_text)
        if kind == "token.created":
            expires = meta.get("expires")
            info = TokenInfo(
                id=meta["token"],
                principal=meta["principal"],
                name=meta.get("name"),
                created=from_micros(ts),
                created_by=actor,
                expires=from_micros(expires) if expires is not None else None,
            )
            self._by_id[info.id] = (info, meta["sha256"])
        else:
            self._by_id.pop(meta["token"], None)
        self._seen_seq = max(self._seen_seq, seq)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
