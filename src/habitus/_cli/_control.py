"""Control commands: grant, revoke, capabilities, check, approvals, budget, budgets and trust.

Each is a thin call to :class:`habitus.control.Control`. Commands that only read
open the habitat read-only; the others need the writer lock, except
``approvals approve`` and ``approvals reject``, which, while another process
holds the habitat, leave the decision in its inbox and wait for it to be recorded.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, cast, get_args

import click

from habitus._cli._agents import _me, _with_habitat
from habitus._cli._main import _Context, _parse_time, cli
from habitus._cli._render import _grid
from habitus._habitat import Habitat
from habitus.control import Approval, Budget, Capability, Decision, Meter
from habitus.control._config import PERIODS
from habitus.control._rules import check_action, check_principal, normalise_resource
from habitus.errors import (
    ERROR_TABLE,
    ApprovalPendingError,
    HabitatError,
    HabitatLockedError,
    HabitatUnavailableError,
    InvalidRequestError,
    PolicyDeniedError,
)

__all__ = ["approvals", "budget", "budgets", "capabilities", "check", "grant", "revoke", "trust"]

F = TypeVar("F", bound=Callable[..., Any])

_POLL = 0.1  # seconds between looks at a queued decision's file, waiting for the holder to take it


def _json_lines(models: Sequence[Capability | Approval | Budget]) -> None:
    for model in models:
        click.echo(model.model_dump_json())


# -- capabilities ---------------------------------------------------------------------------


def _grant_text(cap: Capability) -> str:
    extras = ", each use approved by a human" if cap.approval else ""
    if cap.until is not None:
        extras += f", until {cap.until.isoformat()}"
    return f"{cap.subject} may {cap.action} {cap.resource}{extras}"


@cli.command()
@click.argument("subject")
@click.argument("action")
@click.argument("resource")
@click.option("--by", "by", default="system", show_default=True, metavar="PRINCIPAL", help="Who grants it.")
@click.option("--approval", is_flag=True, help="Each use also waits for a human's approval.")
@click.option("--until", metavar="TIME", help="When it lapses (ISO 8601; UTC if no zone).")
@click.pass_obj
def grant(obj: _Context, subject: str, action: str, resource: str, by: str, approval: bool, until: str | None) -> None:
    """Grant SUBJECT the right to ACTION on resources matching RESOURCE."""
    lapses = _parse_time(until, "until")

    async def work(hab: Habitat) -> Capability:
        return await hab.control.grant(subject, action, resource, by=by, approval=approval, until=lapses)

    cap = _with_habitat(obj, read_only=False, work=work)
    click.echo(f"granted capability {cap.id}: {_grant_text(cap)} (#{cap.seq}, by {cap.granted_by})")


@cli.command()
@click.argument("capability_id")
@click.option("--by", "by", default="system", show_default=True, metavar="PRINCIPAL", help="Who takes it back.")
@click.pass_obj
def revoke(obj: _Context, capability_id: str, by: str) -> None:
    """Take back a capability (only the habitat or whoever granted it may)."""

    async def work(hab: Habitat) -> Capability:
        return await hab.control.revoke(capability_id, by=by)

    cap = _with_habitat(obj, read_only=False, work=work)
    click.echo(f"revoked capability {cap.id}: {cap.subject} {cap.action} {cap.resource}")


@cli.command()
@click.argument("subject", required=False)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per capability.")
@click.pass_obj
def capabilities(obj: _Context, subject: str | None, as_json: bool) -> None:
    """List the capabilities in force (those that apply to SUBJECT, if given)."""

    async def work(hab: Habitat) -> list[Capability]:
        return hab.control.capabilities(subject)

    caps = _with_habitat(obj, read_only=True, work=work)
    if as_json:
        _json_lines(caps)
        return
    if not caps:
        click.echo("no capabilities granted" + (f" that apply to {subject}" if subject else ""))
        return
    headers = ("ID", "SUBJECT", "ACTION", "RESOURCE", "GRANTED BY", "APPROVAL", "UNTIL")
    rows = [
        (
            str(c.id),
            c.subject,
            c.action,
            c.resource,
            c.granted_by,
            "required" if c.approval else "-",
            c.until.isoformat() if c.until else "-",
        )
        for c in caps
    ]
    click.echo(_grid(headers, rows))


@cli.command()
@click.argument("principal")
@click.argument("action")
@click.argument("resource")
@click.option("--on-behalf-of", metavar="PRINCIPAL", help="Check it as PRINCIPAL acting for this one.")
@click.pass_obj
def check(obj: _Context, principal: str, action: str, resource: str, on_behalf_of: str | None) -> None:
    """Say whether PRINCIPAL may ACTION on RESOURCE, and why; exits 8 when it may not."""
    check_principal(principal)
    if on_behalf_of is not None:
        check_principal(on_behalf_of, what="--on-behalf-of")
    # Resources are normalised as grant and authorize do, so 'tool:call shell' asks about tool:shell.
    resource = normalise_resource(check_action(action), resource)

    async def work(hab: Habitat) -> Decision:
        return hab.control.decide(principal, action, resource, on_behalf_of=on_behalf_of)

    decision = _with_habitat(obj, read_only=True, work=work)
    if not decision.allowed:
        click.echo(f"denied: {decision.reason}")
        sys.exit(ERROR_TABLE[PolicyDeniedError].exit_code)
    click.echo(f"{'needs approval' if decision.approval else 'allowed'} ({decision.reason})")


# -- approvals ------------------------------------------------------------------------------


@cli.group(invoke_without_command=True)
@click.option("--all", "show_all", is_flag=True, help="All requests, decided ones too (default: pending ones).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per request.")
@click.pass_context
def approvals(ctx: click.Context, show_all: bool, as_json: bool) -> None:
    """List the requests waiting for a human's approval; 'approve' and 'reject' decide them."""
    if ctx.invoked_subcommand is not None:
        return
    obj: _Context = ctx.obj

    async def work(hab: Habitat) -> list[Approval]:
        return hab.control.approvals(status=None if show_all else "pending")

    found = _with_habitat(obj, read_only=True, work=work)
    if as_json:
        _json_lines(found)
        return
    if not found:
        click.echo("no approval requests" if show_all else "no pending approvals")
        return
    headers = ("ID", "PRINCIPAL", "ACTION", "RESOURCE", "STATUS", "DECIDED BY")
    rows = [(str(a.id), a.principal, a.action, a.resource, a.status, a.decided_by or "-") for a in found]
    click.echo(_grid(headers, rows))


def _decision_options(fn: F) -> F:
    fn = click.option(
        "--wait",
        default=10.0,
        show_default=True,
        metavar="SECONDS",
        help="While another process holds the habitat: how long to wait for it to record the decision.",
    )(fn)
    fn = click.option("--reason", help="Why (recorded in the ledger).")(fn)
    fn = click.option("--by", "by", metavar="PRINCIPAL", help="Who decides (default: human:<your user name>).")(fn)
    fn = click.argument("approval_id", metavar="ID")(fn)
    return fn


@approvals.command()
@_decision_options
@click.pass_obj
def approve(obj: _Context, approval_id: str, by: str | None, reason: str | None, wait: float) -> None:
    """Approve the pending request ID; the principal waiting for it goes ahead."""
    _decide(obj, approval_id, "approved", by or _me(), reason, wait)


@approvals.command()
@_decision_options
@click.pass_obj
def reject(obj: _Context, approval_id: str, by: str | None, reason: str | None, wait: float) -> None:
    """Reject the pending request ID; the principal waiting for it is refused."""
    _decide(obj, approval_id, "rejected", by or _me(), reason, wait)


def _decide(
    obj: _Context,
    approval_id: str,
    decision: Literal["approved", "rejected"],
    by: str,
    reason: str | None,
    wait: float,
) -> None:
    if not 0 <= wait <= 3600:
        raise InvalidRequestError(f"--wait must be between 0 and 3600 seconds, not {wait!r}")

    async def record(hab: Habitat) -> Approval:
        act = hab.control.approve if decision == "approved" else hab.control.reject
        return await act(approval_id, by=by, reason=reason)

    try:
        done = _with_habitat(obj, read_only=False, work=record)
    except HabitatLockedError:
        done = _with_habitat(obj, read_only=True, work=lambda hab: _queue(hab, approval_id, decision, by, reason, wait))
        click.echo(f"{_decided_text(done)}: recorded by the running process")
        return
    click.echo(_decided_text(done))


def _decided_text(a: Approval) -> str:
    because = f": {a.reason}" if a.reason else ""
    return f"{a.status} request {a.id} ({a.principal} {a.action} {a.resource}) as {a.decided_by}{because}"


async def _queue(
    hab: Habitat,
    approval_id: str,
    decision: Literal["approved", "rejected"],
    by: str,
    reason: str | None,
    wait: float,
) -> Approval:
    """Leave the decision in the inbox of the process holding the habitat, and wait for it to record it."""
    current = hab.control.approval(approval_id)
    if current.status != "pending":
        raise InvalidRequestError(f"approval {current.id} was already {current.status} by {current.decided_by}")
    posted = hab.control.post_decision(current.id, decision, by=by, reason=reason)
    click.echo(
        f"another process holds the habitat; left the decision in {posted} and waiting up to {wait:g} s for it",
        err=True,
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    # The holder records the decision, or writes <file>.refused, before it removes <file>: once the
    # file is gone, the ledger or the refusal says what became of it.
    while posted.exists():
        if loop.time() >= deadline:
            raise ApprovalPendingError(
                f"approval {current.id} is still pending: the decision is queued in {posted}; the process "
                "holding the habitat records it when it next looks at its inbox (a running app looks about "
                "twice a second), or else the next process to open the habitat for writing does"
            )
        await asyncio.sleep(_POLL)
    refused = posted.with_suffix(".refused")
    now = hab.control.approval(current.id)
    if (now.status, now.decided_by) == (decision, by):  # recorded (a refusal beside it came from a second look)
        refused.unlink(missing_ok=True)
        return now
    if refused.exists():
        raise _refusal(refused)
    by_whom = f" by {now.decided_by}" if now.decided_by else ""
    raise HabitatUnavailableError(
        f"{posted} was removed before it was recorded; approval {now.id} is {now.status}{by_whom}"
    )


def _refusal(refused: Path) -> HabitatError:
    """The error the running process wrote in ``refused`` (``Type: message``), as an error of that type."""
    text = refused.read_text(encoding="utf-8").strip()
    refused.unlink(missing_ok=True)  # its reason is reported now; nothing else reads it
    name, _, message = text.partition(": ")
    kind = next((cls for cls in ERROR_TABLE if cls.__name__ == name), InvalidRequestError)
    return kind(f"the running process refused the decision: {message or text}")


# -- budgets --------------------------------------------------------------------------------


def _period_text(seconds: int) -> str:
    names = {v: k for k, v in PERIODS.items()}
    return names.get(seconds, f"{seconds} s")


@cli.command()
@click.argument("subject")
@click.argument("meter", type=click.Choice(get_args(Meter)))
@click.argument("limit")
@click.option("--period", default="day", show_default=True, help="minute, hour, day, week, month, or seconds.")
@click.option("--by", "by", default="system", show_default=True, metavar="PRINCIPAL", help="Who sets it.")
@click.pass_obj
def budget(obj: _Context, subject: str, meter: str, limit: str, period: str, by: str) -> None:
    """Allow SUBJECT at most LIMIT of METER per period ('none' removes the limit)."""
    most: int | None = None
    if limit.lower() != "none":
        try:
            most = int(limit)
        except ValueError:
            raise InvalidRequestError(f"LIMIT must be a whole number or 'none', not {limit!r}") from None
    per: int | str = int(period) if period.isdigit() else period

    async def work(hab: Habitat) -> None:
        await hab.control.set_budget(subject, cast(Meter, meter), most, period=per, by=by)

    _with_habitat(obj, read_only=False, work=work)
    if most is None:
        click.echo(f"removed the {meter} budget of {subject}")
    else:
        per_text = _period_text(per) if isinstance(per, int) else per
        click.echo(f"set the budget of {subject}: at most {most} {meter} per {per_text}")


@cli.command()
@click.argument("subject", required=False)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per budget.")
@click.pass_obj
def budgets(obj: _Context, subject: str | None, as_json: bool) -> None:
    """List the budgets in force and what is used of them (those that bind SUBJECT, if given)."""

    async def work(hab: Habitat) -> list[Budget]:
        return hab.control.budgets(subject)

    found = _with_habitat(obj, read_only=True, work=work)
    if as_json:
        _json_lines(found)
        return
    if not found:
        click.echo("no budgets set" + (f" that bind {subject}" if subject else ""))
        return
    headers = ("SUBJECT", "METER", "USED", "LIMIT", "PER")
    rows = [(b.subject, b.meter, str(b.used), str(b.limit), _period_text(b.period)) for b in found]
    click.echo(_grid(headers, rows))


# -- trust ----------------------------------------------------------------------------------


@cli.command()
@click.argument("principal")
@click.argument("label", type=click.Choice(["trusted", "untrusted"]), required=False)
@click.pass_obj
def trust(obj: _Context, principal: str, label: str | None) -> None:
    """Label content from PRINCIPAL (a pattern such as 'source:*' too) trusted or untrusted; without LABEL, show it."""
    if label is None:

        async def show(hab: Habitat) -> str:
            return hab.control.trust_of(principal)

        click.echo(f"content from {principal} is {_with_habitat(obj, read_only=True, work=show)}")
        return

    async def work(hab: Habitat) -> None:
        await hab.control.label(principal, label, by="system")

    _with_habitat(obj, read_only=False, work=work)
    click.echo(f"content from {principal} is now labelled {label}")
