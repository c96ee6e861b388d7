"""Crash safety of the runtime: an app SIGKILLed mid-handling loses no message and doubles no effect.

The test queues a known workload in a habitat: messages to a few agents, some of which ask
their handler to send a follow-up to another agent, some to set a timer (a few due only after
the process that set them is dead), and many to sleep between staging their effects so a kill
can land while effects are half-staged. Then, again and again, a child process opens the
habitat and runs the app, and the test kills it with SIGKILL at a random moment while work is
still pending. Finally a child runs the app to completion and the test checks, from the ledger,
what a user relies on: every message and every follow-up was handled exactly once, every timer
fired exactly once and its firing was handled exactly once, the agents' durable counters match
what was handled, no mailbox holds a message, nothing was dead-lettered, and the ledger verifies.
"""

from __future__ import annotations

import asyncio
import random
import signal
import sys
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

from habitus import Event, Habitat, Settings
from habitus.agents import SpawnSpec

SEED = 20_250_302
AGENTS = ("w0", "w1", "w2", "w3", "w4")
MESSAGES = 2000
KILLS = 24
MIN_KILLS = 20  # kills that must land while messages or timers were still pending
START_TIMEOUT = 60.0
FINISH_TIMEOUT = 60.0

CHILD_CODE = r"""
import asyncio
import sys
from pathlib import Path

from habitus import Agent, App, Habitat, Message, Settings, handles
from habitus.agents import RuntimeOptions

PATH = Path(sys.argv[1])

app = App("crash")


@app.behaviour
class Worker(Agent):
    @handles("work")
    async def work(self, msg: Message) -> None:
        body = msg.body
        key = body["key"]
        self.ctx.emit("note.recorded", content={"handled": key, "message": str(msg.id)})
        if body["sleep"]:
            await asyncio.sleep(body["sleep"])  # a kill here finds the note staged but not committed
        forward = body["forward"]
        if forward is not None:
            await self.ctx.send(forward["to"], forward["body"], type="work")
        if body["timer"] is not None:
            self.ctx.set_timer(f"t-{key}", after=body["timer"], payload={"key": key})
        self.ctx.state.set("handled", self.ctx.state.get("handled", 0) + 1)

    async def on_timer(self, msg: Message) -> None:
        key = msg.body["payload"]["key"]
        self.ctx.emit("note.recorded", content={"timer": key, "message": str(msg.id)})
        self.ctx.state.set("timers", self.ctx.state.get("timers", 0) + 1)


async def main() -> None:
    settings = Settings.resolve(config_file=None, environ={}, path=PATH).model_copy(
        update={"commit_process": sys.argv[2]}
    )
    hab = await Habitat.open(PATH, settings=settings)
    try:
        while settings.commit_process == "always" and hab.ledger.writer_pid is None:
            await asyncio.sleep(0.01)  # this life is meant to crash with commits in the writer process
        await hab.start(app, options=RuntimeOptions(retry_base=0.01, timer_poll=0.05))
        print("running", flush=True)
        await asyncio.to_thread(sys.stdin.readline)  # the test says "stop" (or kills this process first)
    finally:
        await hab.close()
    print("closed", flush=True)


asyncio.run(main())
"""


@dataclass
class Workload:
    """What the test queued, and what handling all of it must produce."""

    messages: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (agent, body) sent by the test
    handled: dict[str, str] = field(default_factory=dict)  # key of every message and follow-up -> its agent
    follow_ups: dict[str, str] = field(default_factory=dict)  # follow-up key -> the agent that sends it
    timers: dict[str, str] = field(default_factory=dict)  # key of every message that sets a timer -> its agent


def _body(rng: random.Random, key: str, agent: str, work: Workload, *, may_forward: bool) -> dict[str, Any]:
    work.handled[key] = agent
    sleep = 0.0 if rng.random() < 0.7 else round(rng.uniform(0.02, 0.1), 3)
    timer: float | None = None
    if rng.random() < 0.25:
        # Most timers come due within the same life; some only after the process that set them died.
        timer = round(rng.uniform(0.05, 0.4) if rng.random() < 0.7 else rng.uniform(0.5, 3.0), 3)
        work.timers[key] = agent
    forward: dict[str, Any] | None = None
    if may_forward and rng.random() < 0.3:
        to = rng.choice([a for a in AGENTS if a != agent])
        follow_key = f"{key}.f"
        work.follow_ups[follow_key] = agent
        forward = {"to": to, "body": _body(rng, follow_key, to, work, may_forward=False)}
    return {"key": key, "sleep": sleep, "timer": timer, "forward": forward}


def _workload(rng: random.Random) -> Workload:
    work = Workload()
    for n in range(MESSAGES):
        agent = rng.choice(AGENTS)
        work.messages.append((agent, _body(rng, f"m{n}", agent, work, may_forward=True)))
    return work


class _Child:
    """A child process running the app; stdout lines are its signals."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, script: Path, habitat: Path, process: str, stderr: IO[str]) -> _Child:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            str(habitat),
            process,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            cwd=script.parent,
        )
        return cls(proc)

    async def line(self, timeout: float) -> str:
        """The next line it prints ('' if it exited or said nothing in time)."""
        assert self.proc.stdout is not None
        try:
            raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        except TimeoutError:
            return ""
        return raw.decode()

    async def stop(self) -> None:
        """Ask it to close the habitat and exit."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"stop\n")
        await self.proc.stdin.drain()

    async def finish(self, *, kill: bool, timeout: float = 30.0) -> None:
        """SIGKILL it (if asked, or if it does not exit in time), and reap it."""
        if kill and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
        try:
            await asyncio.wait_for(self.proc.communicate(), timeout)
        except TimeoutError:
            self.proc.kill()
            await self.proc.communicate()


async def _events(hab: Habitat, kind: str) -> list[Event]:
    """Every event of ``kind``, oldest first, one ``query`` page at a time."""
    events: list[Event] = []
    cursor: int | None = None
    while True:
        page = await hab.ledger.query(kind=kind, limit=5000, cursor=cursor)
        events.extend(page.events)
        if page.next_cursor is None:
            return events
        cursor = page.next_cursor


def _note_keys(notes: list[Event]) -> tuple[Counter[str], Counter[str]]:
    """How many notes name each handled key, and each timer key."""
    handled: Counter[str] = Counter()
    timers: Counter[str] = Counter()
    for note in notes:
        assert isinstance(note.content, dict), note
        if "handled" in note.content:
            handled[str(note.content["handled"])] += 1
        else:
            timers[str(note.content["timer"])] += 1
    return handled, timers


def _twice(counts: Counter[str]) -> list[str]:
    return sorted(k for k, n in counts.items() if n > 1)


@pytest.mark.slow
@pytest.mark.parametrize("process", ["auto", "always"])
async def test_sigkilled_runtime_handles_every_message_once_and_fires_every_timer(
    tmp_path: Path, settings: Settings, process: str
) -> None:
    """With ``always``, every life commits through a writer process, which dies with the runtime."""
    work = _workload(random.Random(SEED))
    kill_rng = random.Random(SEED + 1)  # the kill moments
    script = tmp_path / "runtime_child.py"
    script.write_text(CHILD_CODE, encoding="utf-8")
    where = settings.path

    sent: dict[str, uuid.UUID] = {}  # key of each message the test sent -> its id
    async with await Habitat.init(where, settings=settings) as hab:
        await hab.agents.spawn_many([SpawnSpec(a, behaviour="Worker", owner="human:ada") for a in AGENTS])
        for agent, body in work.messages:
            sent[body["key"]] = (await hab.messages.send(agent, body, sender="human:ada", type="work")).id
    total = len(work.handled) + len(work.timers)

    progress: list[int] = []  # notes in the ledger after each kill
    mid_work = 0
    for life in range(KILLS):
        delay = kill_rng.uniform(0.05, 0.5)
        ctx = f"seed {SEED}, kill #{life} ({delay:.3f}s after the app started)"
        stderr_path = tmp_path / f"child-{life}.stderr"
        with stderr_path.open("w", encoding="utf-8") as stderr:
            child = await _Child.start(script, where, process, stderr)
            try:
                running = await child.line(START_TIMEOUT) == "running\n"
                if running:
                    await asyncio.sleep(delay)  # not a synchronisation: this is the random moment of the crash
            finally:
                await child.finish(kill=True)
        errors = stderr_path.read_text(encoding="utf-8")
        assert running, f"{ctx}: the child never said the app was running:\n{errors}"
        assert child.proc.returncode == -signal.SIGKILL, f"{ctx}: the child died by itself:\n{errors}"

        # The lock died with the child; a reader sees what it committed, and no effect twice.
        async with await Habitat.open(where, read_only=True, settings=settings) as hab:
            notes = await _events(hab, "note.recorded")
            handled, timers = _note_keys(notes)
            assert not _twice(handled), f"{ctx}: messages handled twice: {_twice(handled)[:10]}"
            assert not _twice(timers), f"{ctx}: timers handled twice: {_twice(timers)[:10]}"
            assert not (await hab.ledger.query(kind="message.dead_lettered")).events, f"{ctx}: dead letters"
            report = await hab.ledger.verify()
            assert report.ok, f"{ctx}: verify() found {report.problems}"
        progress.append(len(notes))
        if len(notes) < total:
            mid_work += 1

    assert mid_work >= MIN_KILLS, (
        f"seed {SEED}: only {mid_work} of {KILLS} kills landed while work was pending (notes after each: "
        f"{progress} of {total}); the workload is too small for this machine"
    )
    assert progress[-1] > progress[0], f"seed {SEED}: the app made no progress across restarts: {progress}"

    # One last life, run to completion: watch the ledger from a reader until every expected note is there.
    stderr_path = tmp_path / "child-final.stderr"
    with stderr_path.open("w", encoding="utf-8") as stderr:
        child = await _Child.start(script, where, process, stderr)
        closed = False
        try:
            running = await child.line(START_TIMEOUT) == "running\n"
            if running:
                async with await Habitat.open(where, read_only=True, settings=settings) as reader:
                    deadline = asyncio.get_running_loop().time() + FINISH_TIMEOUT
                    while asyncio.get_running_loop().time() < deadline:
                        handled, timers = _note_keys(await _events(reader, "note.recorded"))
                        if handled.keys() >= work.handled.keys() and timers.keys() >= work.timers.keys():
                            break
                        await asyncio.sleep(0.1)
                await asyncio.sleep(0.3)  # room for a stray duplicate to show up before the app stops
                await child.stop()
                closed = await child.line(30.0) == "closed\n"
        finally:
            await child.finish(kill=False)
    errors = stderr_path.read_text(encoding="utf-8")
    assert running, f"seed {SEED}: the final run never said the app was running:\n{errors}"
    assert closed and child.proc.returncode == 0, f"seed {SEED}: the final run did not close cleanly:\n{errors}"

    async with await Habitat.open(where, read_only=True, settings=settings) as hab:
        # Every message and every follow-up was handled exactly once, by its agent, citing the message.
        messages = {e.id: e for e in await _events(hab, "message.sent")}
        notes = await _events(hab, "note.recorded")
        handled, timers = _note_keys(notes)
        missing = sorted(work.handled.keys() - handled.keys())
        assert not missing, f"seed {SEED}: {len(missing)} messages never handled, e.g. {missing[:10]}"
        assert not _twice(handled), f"seed {SEED}: messages handled twice: {_twice(handled)[:10]}"
        assert handled.keys() == work.handled.keys(), f"seed {SEED}: notes for messages nobody sent"
        fired = {e.id: e for e in await _events(hab, "timer.fired")}
        for note in notes:
            assert isinstance(note.content, dict)
            message_id = uuid.UUID(str(note.content["message"]))
            assert message_id in note.causes, f"seed {SEED}: note {note.content} does not cite its message"
            if "handled" in note.content:
                key = str(note.content["handled"])
                assert note.actor == f"agent:{work.handled[key]}", f"seed {SEED}: {key} handled by {note.actor}"
                asked = messages[message_id].content
                assert isinstance(asked, dict) and asked["key"] == key, (
                    f"seed {SEED}: note of {key} cites another message"
                )
                if key in sent:
                    assert message_id == sent[key], f"seed {SEED}: {key} was handled as another message"
            else:
                key = str(note.content["timer"])
                assert note.actor == f"agent:{work.timers[key]}", f"seed {SEED}: timer {key} handled by {note.actor}"
                assert message_id in fired, f"seed {SEED}: timer note {key} cites no timer.fired"

        # Follow-ups were sent exactly once each, by the agent that handled the message asking for them.
        follow_ups = Counter(
            str(e.content["key"]) for e in messages.values() if e.actor != "human:ada" and isinstance(e.content, dict)
        )
        assert not _twice(follow_ups), f"seed {SEED}: follow-ups sent twice: {_twice(follow_ups)[:10]}"
        assert follow_ups.keys() == work.follow_ups.keys(), f"seed {SEED}: follow-ups {follow_ups} were not sent once"

        # Every timer was set once, fired once (citing where it was set), and its firing was handled once.
        timer_sets = await _events(hab, "timer.set")
        set_names = Counter(str(e.meta["timer"]) for e in timer_sets)
        expected_names = {f"t-{k}" for k in work.timers}
        assert set_names.keys() == expected_names, f"seed {SEED}: timers set differ from the ones asked for"
        assert not _twice(set_names), f"seed {SEED}: timers set twice: {_twice(set_names)[:10]}"
        fired_names = Counter(str(e.meta["timer"]) for e in fired.values())
        assert fired_names.keys() == expected_names, (
            f"seed {SEED}: timers that never fired: {sorted(expected_names - fired_names.keys())[:10]}"
        )
        assert not _twice(fired_names), f"seed {SEED}: timers fired twice: {_twice(fired_names)[:10]}"
        set_ids = {e.id for e in timer_sets}
        assert all(len(e.causes) == 1 and e.causes[0] in set_ids for e in fired.values()), f"seed {SEED}"
        assert timers.keys() == work.timers.keys(), f"seed {SEED}: timer firings not handled"
        assert not _twice(timers), f"seed {SEED}: timer firings handled twice: {_twice(timers)[:10]}"

        # Durable state counted each delivery once; mailboxes are empty; nothing failed or was dead-lettered.
        for agent in AGENTS:
            expected_handled = sum(1 for a in work.handled.values() if a == agent)
            expected_timers = sum(1 for a in work.timers.values() if a == agent)
            state = await hab.agents.state(agent)
            assert state.get("handled", 0) == expected_handled, f"seed {SEED}: {agent} counted {state}"
            assert state.get("timers", 0) == expected_timers, f"seed {SEED}: {agent} counted {state}"
            assert hab.messages.depth(agent) == 0, f"seed {SEED}: {agent}'s mailbox still holds messages"
            assert (await hab.agents.get(agent)).status == "active"
        activated = Counter(str(e.meta["agent"]) for e in await _events(hab, "agent.activated"))
        assert activated == dict.fromkeys(AGENTS, 1), f"seed {SEED}: activations {activated}"
        assert not (await hab.ledger.query(kind="message.dead_lettered")).events, f"seed {SEED}: dead letters"
        assert not (await hab.ledger.query(kind="message.failed")).events, f"seed {SEED}: failed deliveries"
        report = await hab.ledger.verify()
        assert report.ok, f"seed {SEED}: verify() found {report.problems}"
