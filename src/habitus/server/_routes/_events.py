"""The ledger over HTTP: query, get, why, effects, proofs, verify, checkpoints, and a live stream (SSE).

Each route calls :class:`~habitus._acting.Acting` (its ``_Reading`` part), so a client
sees exactly the events its principal may see, and an event it may not see answers 404
like one that does not exist. The stream ends when the client goes away, when the
habitat closes, or when :func:`stop_streams` is called (a server shutting down calls
it first, so that open streams do not hold it up).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import AwareDatetime, BaseModel, BeforeValidator

from habitus._acting import Acting
from habitus.errors import HabitatError
from habitus.ledger._models import Checkpoint, Event, InclusionProof, Page, Subgraph, VerifyReport
from habitus.server._app import Actor

__all__ = ["ApiError", "router", "stop_streams"]

log = logging.getLogger("habitus.server")

_SEQ_MAX = 2**62  # seqs, cursors and sizes are SQLite integers: bigger is nonsense, refused with a 422


class ApiError(BaseModel):
    """The body of every error response: what kind of error, and what was wrong."""

    error: str
    message: str


def _error(description: str) -> dict[str, Any]:
    return {"model": ApiError, "description": description}


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error("The request is malformed (the message says how)."),
    401: _error("No token, or an unknown, revoked or expired one."),
    403: _error("Policy refused it (a suspended or retired agent reads nothing)."),
    422: _error("A parameter is invalid: not an id, out of range, an unknown kind."),
}
_JSON_ERRORS: dict[int | str, dict[str, Any]] = {  # for the stream, whose own media type is not JSON
    status: {
        "description": spec["description"],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ApiError"}}},
    }
    for status, spec in _ERRORS.items()
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: _error("No such event, or one this principal may not see (the two look the same).")
}


async def _each_once(request: Request) -> None:
    """Refuse a query parameter given twice: none of these routes takes a list, so which would count?"""
    seen: set[str] = set()
    for name, _ in request.query_params.multi_items():
        if name in seen:
            raise RequestValidationError([{"loc": ("query", name), "msg": "given more than once", "type": "repeated"}])
        seen.add(name)


router = APIRouter(tags=["events"], responses=_ERRORS, dependencies=[Depends(_each_once)])

_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


def _rfc3339(value: object) -> object:
    # The spec says date-time (RFC 3339); pydantic alone would also take "1700000000" or "2026-05-01".
    if isinstance(value, str) and not _RFC3339.fullmatch(value):
        hint = " (a '+' in a URL reads as a space: send it as %2B)" if " " in value else ""
        raise ValueError(f"expected an RFC 3339 time with its offset, such as 2026-05-01T12:00:00Z{hint}")
    return value


def _time(description: str) -> Any:
    return Query(description=f"{description} An RFC 3339 time with its offset: 2026-05-01T12:00:00Z.")


EventId = Annotated[uuid.UUID, Path(description="The event's id (a UUID).")]
Depth = Annotated[int, Query(ge=0, le=10_000, description="Most cause (or effect) hops to walk.")]
Limit = Annotated[int, Query(ge=1, le=10_000, description="Most events to return.")]


@router.get(
    "/events",
    response_model=Page,
    summary="Events this principal may see, filtered, one page at a time",
    description="Follow `next_cursor` until it is null. A page may hold fewer than `limit` events "
    "(even none) while `next_cursor` is set: the server stopped reading early; go on from the cursor.",
)
async def list_events(
    who: Actor,
    actor: Annotated[str | None, Query(max_length=300, description="Exact principal.")] = None,
    kind: Annotated[str | None, Query(max_length=300, description="A kind, or a family: `message.*`.")] = None,
    thread: Annotated[str | None, Query(max_length=300, description="Exact thread id.")] = None,
    since: Annotated[AwareDatetime | None, BeforeValidator(_rfc3339), _time("Committed at or after.")] = None,
    until: Annotated[AwareDatetime | None, BeforeValidator(_rfc3339), _time("Committed before.")] = None,
    cursor: Annotated[int | None, Query(ge=0, le=_SEQ_MAX, description="`next_cursor` of the last page.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    order: Annotated[Literal["asc", "desc"], Query(description="Oldest or newest first.")] = "asc",
) -> Page:
    return await who.events(
        actor=actor, kind=kind, thread=thread, since=since, until=until, cursor=cursor, limit=limit, order=order
    )


@router.get("/events/{event_id}", response_model=Event, responses=_NOT_FOUND, summary="One event")
async def get_event(who: Actor, event_id: EventId) -> Event:
    return await who.event(event_id)


@router.get(
    "/events/{event_id}/why",
    response_model=Subgraph,
    responses=_NOT_FOUND,
    summary="Its causes, back towards their origins",
    description="Causes this principal may not see are redacted: id, seq, ts and kind only, actor `hidden`.",
)
async def why(who: Actor, event_id: EventId, depth: Depth = 50, limit: Limit = 1000) -> Subgraph:
    return await who.why(event_id, depth=depth, limit=limit)


@router.get(
    "/events/{event_id}/effects",
    response_model=Subgraph,
    responses=_NOT_FOUND,
    summary="Everything it led to",
    description="Effects this principal may not see are redacted: id, seq, ts and kind only, actor `hidden`.",
)
async def effects(who: Actor, event_id: EventId, depth: Depth = 50, limit: Limit = 1000) -> Subgraph:
    return await who.effects(event_id, depth=depth, limit=limit)


@router.get(
    "/events/{event_id}/proof",
    response_model=InclusionProof,
    responses=_NOT_FOUND,
    summary="Proof that it is in the ledger's tree",
)
async def proof(
    who: Actor,
    event_id: EventId,
    tree_size: Annotated[
        int | None, Query(ge=1, le=_SEQ_MAX, description="Prove against the first `tree_size` events (default: all).")
    ] = None,
) -> InclusionProof:
    return await who.proof(event_id, tree_size=tree_size)


@router.get("/verify", response_model=VerifyReport, summary="Recompute and check the whole ledger")
async def verify(who: Actor) -> VerifyReport:
    return await who.verify()


@router.get("/checkpoints", response_model=list[Checkpoint], summary="Every signed checkpoint, oldest first")
async def checkpoints(who: Actor) -> list[Checkpoint]:
    return await who.checkpoints()


# -- the live stream ----------------------------------------------------------------------------


class _Streams:
    """The open streams of one app, and the switch that ends them."""

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.open = 0


def _streams(app: FastAPI) -> _Streams:
    streams: _Streams | None = getattr(app.state, "event_streams", None)
    if streams is None:
        streams = app.state.event_streams = _Streams()
    return streams


def stop_streams(app: FastAPI) -> None:
    """End every open ``/v1/stream`` of ``app``, and any opened later (for a server shutting down)."""
    _streams(app).stop.set()


async def _reader(who: Actor) -> Acting:
    await who.require_reading()  # refuse with a 403 now, not in the middle of a 200
    return who


async def _until(stop: asyncio.Event, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
    """``events`` until ``stop`` is set (``events`` may wait for the next commit a long time)."""
    stopping = asyncio.ensure_future(stop.wait())
    step: asyncio.Future[Event] | None = None
    try:
        while not stop.is_set():
            step = asyncio.ensure_future(anext(events))
            await asyncio.wait((step, stopping), return_when=asyncio.FIRST_COMPLETED)
            if not step.done():
                return
            try:
                event = step.result()
            except StopAsyncIteration:
                return
            step = None
            yield event
    finally:
        # Shielded: a cancelled stream (the client went away) must still stop its reader
        # before closing it, or the reader outlives the request.
        with anyio.CancelScope(shield=True):
            stopping.cancel()
            if step is not None and not step.done():
                step.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await step
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()


@router.get(
    "/stream",
    response_class=EventSourceResponse,
    responses=_JSON_ERRORS,
    summary="Events this principal may see, as they commit (Server-Sent Events)",
    description="Each event is one message: `event:` its kind, `id:` its seq, `data:` the event as JSON. "
    "Resume with `after` (a seq) or the `Last-Event-ID` header that browsers send when they reconnect; "
    "without either the stream starts with the next commit. Comments (`: ping`) keep idle connections open.",
)
async def stream(
    request: Request,
    who: Annotated[Acting, Depends(_reader)],
    after: Annotated[int | None, Query(ge=0, le=_SEQ_MAX, description="Start after this seq.")] = None,
    last_event_id: Annotated[
        int | None, Header(alias="Last-Event-ID", ge=0, le=_SEQ_MAX, description="The last seq received.")
    ] = None,
) -> AsyncIterator[ServerSentEvent]:
    streams = _streams(request.app)
    streams.open += 1
    try:
        start = after if after is not None else last_event_id
        async for event in _until(streams.stop, who.tail(after=start)):
            yield ServerSentEvent(raw_data=event.model_dump_json(), event=event.kind, id=str(event.seq))
    except HabitatError as exc:  # the habitat closed under the stream (or its store failed): end it
        log.warning("event stream for %s ended: %s", who.principal, exc)
    finally:
        streams.open -= 1
