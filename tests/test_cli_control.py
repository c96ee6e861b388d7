"""The control commands: grant, revoke, capabilities, check, approvals, budget(s), trust.

The approval decisions are also made while ``habitus run`` holds the habitat, as a real
process, where they travel through the habitat's inbox.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import Result

from habitus import Settings, SyncHabitat
from habitus.errors import ApprovalPendingError
from tests.test_cli_agents import app_running, events, eventually, run

WORKER_APP = textwrap.dedent(
    """
    from habitus import Agent, App, Message

    app = App("tools")


    @app.behaviour
    class Worker(Agent):
        async def on_message(self, msg: Message) -> None:
            await self.ctx.authorize("tool:call", "shell", detail={"command": msg.body})
            self.ctx.emit("note.recorded", content=f"ran {msg.body}")
    """
)


@pytest.fixture
def hab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    """``hab(*args)`` runs ``habitus -H <a new habitat> *args``."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "hab"
    assert run("init", str(path), "--name", "test").exit_code == 0

    def invoke(*args: str) -> Result:
        return run("-H", str(path), *args)

    return invoke


def opened(path: Path, *, read_only: bool = False) -> SyncHabitat:
    return SyncHabitat.open(
        path, read_only=read_only, settings=Settings.resolve(config_file=None, environ={}, path=path)
    )


def ask_for_approval(path: Path, principal: str, count: int = 1) -> None:
    """Leave ``count`` pending requests of ``principal`` to call the shell, made through the API."""
    with opened(path) as writer:
        for _ in range(count):
            with pytest.raises(ApprovalPendingError):
                writer.control.await_approval(principal, "tool:call", "tool:shell", timeout=0.01)


def approval_ids(hab: Callable[..., Result], *args: str) -> list[str]:
    listed = hab("approvals", "--json", *args)
    assert listed.exit_code == 0, listed.output
    return [json.loads(line)["id"] for line in listed.output.splitlines()]


def rows(output: str) -> list[list[str]]:
    """The cells of a table's rows (its header left out)."""
    return [line.split() for line in output.splitlines()[1:]]


# -- capabilities ----------------------------------------------------------------------------


def test_grant_check_and_revoke_round_trip(hab: Callable[..., Result], tmp_path: Path) -> None:
    assert hab("spawn", "scout", "--behaviour", "Scout", "--owner", "human:ada").exit_code == 0
    owner = hab("check", "human:ada", "message:send", "scout")  # the resource gets the prefix its action expects
    assert (owner.exit_code, owner.output.strip()) == (0, "allowed (human:ada owns agent 'scout')")
    denied = hab("check", "source:sensor-7", "message:send", "agent:scout")
    assert denied.exit_code == 8
    assert denied.output.strip() == "denied: no capability lets source:sensor-7 message:send agent:scout"
    assert hab("capabilities").output.strip() == "no capabilities granted"

    granted = hab("grant", "source:sensor-7", "message:send", "scout")
    assert granted.exit_code == 0, granted.output
    assert "source:sensor-7 may message:send agent:scout (#" in granted.output
    cap_id = granted.output.split("granted capability ")[1].split(":")[0]
    allowed = hab("check", "source:sensor-7", "message:send", "agent:scout")
    assert (allowed.exit_code, allowed.output.strip()) == (0, f"allowed (capability {cap_id} granted by system)")
    assert rows(hab("capabilities").output) == [
        [cap_id, "source:sensor-7", "message:send", "agent:scout", "system", "-", "-"]
    ]
    (listed,) = [json.loads(line) for line in hab("capabilities", "source:sensor-7", "--json").output.splitlines()]
    assert (listed["id"], listed["granted_by"], listed["approval"]) == (cap_id, "system", False)
    assert hab("capabilities", "source:other").output.strip() == "no capabilities granted that apply to source:other"
    assert hab("send", "scout", "31.4", "--from", "source:sensor-7").exit_code == 0

    not_theirs = hab("revoke", cap_id, "--by", "human:ada")
    assert not_theirs.exit_code == 8 and "it was granted by system, not human:ada" in not_theirs.output
    revoked = hab("revoke", cap_id)
    assert revoked.exit_code == 0, revoked.output
    assert revoked.output.strip() == f"revoked capability {cap_id}: source:sensor-7 message:send agent:scout"
    assert hab("check", "source:sensor-7", "message:send", "agent:scout").exit_code == 8
    assert hab("send", "scout", "31.5", "--from", "source:sensor-7").exit_code == 8
    assert hab("revoke", cap_id).exit_code == 2  # already taken back
    assert hab("capabilities").output.strip() == "no capabilities granted"

    (grant_event,) = events(tmp_path / "hab", "capability.granted")
    (revoke_event,) = events(tmp_path / "hab", "capability.revoked")
    assert (grant_event.actor, str(grant_event.id)) == ("system", cap_id)
    assert revoke_event.meta["capability"] == cap_id and grant_event.id in revoke_event.causes


def test_grants_by_a_principal_are_limited_to_what_it_holds(hab: Callable[..., Result]) -> None:
    assert hab("spawn", "scout", "--behaviour", "Scout", "--owner", "human:ada").exit_code == 0
    outsider = hab("grant", "agent:helper", "message:send", "agent:scout", "--by", "human:bob")
    assert outsider.exit_code == 8 and "human:bob does not hold message:send agent:scout itself" in outsider.output
    itself = hab("grant", "human:ada", "tool:call", "shell", "--by", "human:ada")
    assert itself.exit_code == 8 and "nobody widens their own capabilities" in itself.output

    lapsing = hab(
        "grant", "source:sensor-7", "message:send", "scout", "--by", "human:ada",
        "--approval", "--until", "2999-01-01T00:00:00+00:00",
    )  # fmt: skip
    assert lapsing.exit_code == 0, lapsing.output
    assert "each use approved by a human, until 2999-01-01T00:00:00+00:00" in lapsing.output
    (row,) = rows(hab("capabilities").output)
    assert row[1:] == [
        "source:sensor-7",
        "message:send",
        "agent:scout",
        "human:ada",
        "required",
        "2999-01-01T00:00:00+00:00",
    ]
    needs = hab("check", "source:sensor-7", "message:send", "scout")
    assert needs.exit_code == 0 and needs.output.startswith("needs approval (capability ")

    past = hab("grant", "source:sensor-7", "message:send", "scout", "--until", "2001-01-01")
    assert past.exit_code == 2 and "future" in past.output
    bad_action = hab("check", "human:ada", "send", "scout")
    assert bad_action.exit_code == 2 and "family:verb" in bad_action.output


def test_check_on_behalf_of_needs_the_delegation_and_the_right(hab: Callable[..., Result]) -> None:
    assert hab("spawn", "scout", "--behaviour", "Scout", "--owner", "human:ada").exit_code == 0
    assert hab("grant", "service:mailer", "message:send", "scout", "--by", "human:ada").exit_code == 0
    for_ada = ("check", "service:mailer", "message:send", "scout", "--on-behalf-of", "human:ada")
    undelegated = hab(*for_ada)
    assert (undelegated.exit_code, undelegated.output.strip()) == (
        8,
        "denied: human:ada has not delegated to service:mailer",
    )
    assert hab("grant", "service:mailer", "principal:act", "human:ada", "--by", "human:ada").exit_code == 0
    assert hab(*for_ada).output.startswith("allowed (")

    assert hab("grant", "service:mailer", "principal:act", "human:bob", "--by", "human:bob").exit_code == 0
    for_bob = hab("check", "service:mailer", "message:send", "scout", "--on-behalf-of", "human:bob")
    assert for_bob.exit_code == 8  # acting for bob adds nothing: bob may not message ada's scout
    assert "acting for human:bob, who may not: no capability lets human:bob message:send agent:scout" in for_bob.output


# -- approvals -------------------------------------------------------------------------------


def test_approvals_are_listed_approved_and_rejected(hab: Callable[..., Result], tmp_path: Path) -> None:
    me = f"human:{getpass.getuser()}"
    assert hab("spawn", "worker", "--behaviour", "Worker").exit_code == 0  # owned by the user, who may decide
    assert hab("approvals").output.strip() == "no pending approvals"
    ask_for_approval(tmp_path / "hab", "agent:worker", count=2)
    first, second = approval_ids(hab)
    assert rows(hab("approvals").output) == [
        [first, "agent:worker", "tool:call", "tool:shell", "pending", "-"],
        [second, "agent:worker", "tool:call", "tool:shell", "pending", "-"],
    ]

    approved = hab("approvals", "approve", first, "--reason", "looks safe")
    assert approved.exit_code == 0, approved.output
    assert approved.output.strip() == (
        f"approved request {first} (agent:worker tool:call tool:shell) as {me}: looks safe"
    )
    stranger = hab("approvals", "reject", second, "--by", "human:bob")
    assert stranger.exit_code == 8 and "no capability lets human:bob approval:decide agent:worker" in stranger.output
    own = hab("approvals", "approve", second, "--by", "agent:worker")
    assert own.exit_code == 8 and "nobody approves their own request" in own.output
    rejected = hab("approvals", "reject", second, "--by", me)
    assert rejected.exit_code == 0 and rejected.output.startswith(f"rejected request {second} ")

    assert hab("approvals").output.strip() == "no pending approvals"
    assert rows(hab("approvals", "--all").output) == [
        [first, "agent:worker", "tool:call", "tool:shell", "approved", me],
        [second, "agent:worker", "tool:call", "tool:shell", "rejected", me],
    ]
    documents = [json.loads(line) for line in hab("approvals", "--all", "--json").output.splitlines()]
    assert [(d["status"], d["reason"]) for d in documents] == [("approved", "looks safe"), ("rejected", None)]
    again = hab("approvals", "approve", first)
    assert again.exit_code == 2 and f"already approved by {me}" in again.output
    unknown = hab("approvals", "approve", str(uuid.uuid4()))
    assert unknown.exit_code == 3 and "no approval request" in unknown.output

    decided = events(tmp_path / "hab", "approval.decided")
    assert [(e.actor, e.meta["decision"]) for e in decided] == [(me, "approved"), (me, "rejected")]


def test_a_decision_reaches_the_running_process_through_its_inbox(hab: Callable[..., Result], tmp_path: Path) -> None:
    path = tmp_path / "hab"
    app_file = tmp_path / "tools.py"
    app_file.write_text(WORKER_APP)
    assert hab("spawn", "worker", "--behaviour", "Worker", "--owner", "human:ada").exit_code == 0
    assert hab("grant", "agent:worker", "tool:call", "shell", "--approval").exit_code == 0
    assert hab("send", "worker", "ls -l", "--from", "human:ada").exit_code == 0

    with app_running(path, app_file) as process:
        process.read_until("running app")
        eventually(lambda: bool(events(path, "approval.requested")), "the worker asking for approval")
        (request,) = approval_ids(hab)
        assert not events(path, "note.recorded")  # it waits

        refused = hab("approvals", "reject", request, "--by", "human:bob", "--wait", "30")
        assert refused.exit_code == 8, refused.output
        assert "the running process refused the decision: human:bob may not approval:decide" in refused.output
        assert approval_ids(hab) == [request]  # still pending

        approved = hab("approvals", "approve", request, "--by", "human:ada", "--reason", "fine", "--wait", "30")
        assert approved.exit_code == 0, approved.output
        assert approved.output.strip().endswith(
            f"approved request {request} (agent:worker tool:call tool:shell) as human:ada: fine: "
            "recorded by the running process"
        )
        eventually(lambda: bool(events(path, "note.recorded")), "the worker going ahead")
        assert process.interrupt() == 0

    assert [e.content for e in events(path, "note.recorded")] == ["ran ls -l"]
    (decided,) = events(path, "approval.decided")
    assert (decided.actor, decided.meta["decision"], decided.meta["reason"]) == ("human:ada", "approved", "fine")
    assert list((path / "inbox").iterdir()) == []  # recorded, and the refusal was read and cleared


HOLDER = textwrap.dedent(
    """
    import sys

    from habitus import Settings, SyncHabitat

    path = sys.argv[1]
    with SyncHabitat.open(path, settings=Settings.resolve(config_file=None, environ={}, path=path)):
        print("holding", flush=True)
        sys.stdin.read()  # holds the writer lock, and never looks at the inbox, until stdin closes
    """
)


@contextlib.contextmanager
def held_open(path: Path) -> Iterator[None]:
    """Another process holding the habitat for writing without running an app (a script, say)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdin is not None and holder.stdout is not None
    try:
        assert holder.stdout.readline().strip() == "holding"
        yield
    finally:
        holder.stdin.close()
        assert holder.wait(timeout=30) == 0
        holder.stdout.close()


def test_a_decision_nobody_looks_at_stays_queued_in_the_inbox(hab: Callable[..., Result], tmp_path: Path) -> None:
    path = tmp_path / "hab"
    assert hab("spawn", "worker", "--behaviour", "Worker", "--owner", "human:ada").exit_code == 0
    ask_for_approval(path, "agent:worker")
    (request,) = approval_ids(hab)

    with held_open(path):
        assert hab("spawn", "other", "--behaviour", "Worker").exit_code == 4  # the lock is held
        queued = hab("approvals", "approve", request, "--by", "human:ada", "--wait", "0.5")
        assert queued.exit_code == 4, queued.output
        assert f"approval {request} is still pending: the decision is queued in {path / 'inbox'}" in queued.output
        assert len(list((path / "inbox").glob("*.json"))) == 1
        assert approval_ids(hab) == [request]
        unknown = hab("approvals", "reject", str(uuid.uuid4()), "--by", "human:ada")
        assert unknown.exit_code == 3 and "no approval request" in unknown.output  # checked before queueing
        assert len(list((path / "inbox").glob("*.json"))) == 1

    with opened(path) as writer:  # the next process to open it for writing records what waits in the inbox
        decided = writer.control.approval(request)
    assert (decided.status, decided.decided_by) == ("approved", "human:ada")
    assert list((path / "inbox").iterdir()) == []


# -- budgets and trust -----------------------------------------------------------------------


def test_budgets_are_set_listed_with_usage_and_removed(hab: Callable[..., Result]) -> None:
    for agent in ("scout", "planner"):
        assert hab("spawn", agent, "--behaviour", "X", "--owner", "human:ada").exit_code == 0
    assert hab("budgets").output.strip() == "no budgets set"
    set_messages = hab("budget", "agent:scout", "messages", "2")
    assert set_messages.output.strip() == "set the budget of agent:scout: at most 2 messages per day"
    assert hab("budget", "human:ada", "tokens", "1000", "--period", "hour").exit_code == 0
    custom = hab("budget", "agent:scout", "tool_calls", "5", "--period", "90", "--by", "human:ada")
    assert custom.output.strip() == "set the budget of agent:scout: at most 5 tool_calls per 90 s"
    not_owner = hab("budget", "agent:scout", "messages", "100", "--by", "human:bob")
    assert not_owner.exit_code == 8 and "only the habitat or the agent's owner may" in not_owner.output

    assert hab("send", "planner", "one", "--from", "agent:scout").exit_code == 0
    assert rows(hab("budgets").output) == [
        ["agent:scout", "messages", "1", "2", "day"],
        ["agent:scout", "tool_calls", "0", "5", "90", "s"],
        ["human:ada", "tokens", "0", "1000", "hour"],
    ]
    assert [r[:2] for r in rows(hab("budgets", "agent:scout").output)] == [
        ["agent:scout", "messages"],
        ["agent:scout", "tool_calls"],
        ["human:ada", "tokens"],  # its owner's budget binds it too
    ]
    assert hab("budgets", "agent:planner").output.splitlines()[1].split()[:2] == ["human:ada", "tokens"]
    (messages,) = [
        b
        for b in map(json.loads, hab("budgets", "agent:scout", "--json").output.splitlines())
        if b["meter"] == "messages"
    ]
    assert (messages["used"], messages["limit"], messages["period"]) == (1, 2, 86_400)

    assert hab("send", "planner", "two", "--from", "agent:scout").exit_code == 0
    over = hab("send", "planner", "three", "--from", "agent:scout")
    assert over.exit_code == 8 and "budget is 2 per 86400 s and 2 are used" in over.output
    removed = hab("budget", "agent:scout", "messages", "none")
    assert removed.output.strip() == "removed the messages budget of agent:scout"
    assert hab("send", "planner", "three", "--from", "agent:scout").exit_code == 0
    assert "messages" not in hab("budgets").output

    assert hab("budget", "agent:scout", "pennies", "3").exit_code == 2
    lots = hab("budget", "agent:scout", "messages", "lots")
    assert lots.exit_code == 2 and "LIMIT must be a whole number or 'none'" in lots.output
    assert hab("budget", "agent:scout", "messages", "3", "--period", "fortnight").exit_code == 2


def test_trust_labels_mark_what_a_principal_sends(hab: Callable[..., Result], tmp_path: Path) -> None:
    assert hab("spawn", "scout", "--behaviour", "X", "--owner", "human:ada").exit_code == 0
    assert hab("grant", "source:*", "message:send", "agent:scout").exit_code == 0
    assert hab("trust", "source:sensor-7").output.strip() == "content from source:sensor-7 is untrusted"
    assert hab("trust", "agent:scout").output.strip() == "content from agent:scout is trusted"

    labelled = hab("trust", "source:sensor-7", "trusted")
    assert labelled.output.strip() == "content from source:sensor-7 is now labelled trusted"
    assert hab("trust", "source:sensor-7").output.strip() == "content from source:sensor-7 is trusted"
    assert hab("trust", "source:web").output.strip() == "content from source:web is untrusted"
    assert hab("send", "scout", "31.4", "--from", "source:sensor-7").exit_code == 0
    assert hab("send", "scout", "buy now!", "--from", "source:web").exit_code == 0

    sensor, web = events(tmp_path / "hab", "message.sent")
    assert "trust" not in sensor.meta and web.meta["trust"] == "untrusted"
    (label,) = events(tmp_path / "hab", "trust.labelled")
    assert (label.actor, label.meta) == ("system", {"principal": "source:sensor-7", "label": "trusted"})
    assert hab("trust", "source:web", "maybe").exit_code == 2
