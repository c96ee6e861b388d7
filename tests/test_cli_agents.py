"""The agent commands: spawn, agents, send, suspend/resume/retire in-process, and run as a real process."""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from habitus import Event, Settings, SyncHabitat
from habitus._cli import main

HABITUS = Path(sys.executable).parent / "habitus"

APP_SOURCE = textwrap.dedent(
    """
    from habitus import Agent, App, Message

    app = App("notes")


    @app.behaviour
    class Recorder(Agent):
        async def on_message(self, msg: Message) -> None:
            self.ctx.emit("note.recorded", content=f"got {msg.body}")


    @app.behaviour
    class Broken(Agent):
        async def on_message(self, msg: Message) -> None:
            raise RuntimeError("this handler always fails")


    app.agent("broken", "Broken", owner="human:ada")
    """
)


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    """Run the CLI the way the console script does (errors mapped to exit codes)."""
    runner = CliRunner()

    def entry() -> None:
        sys.argv = ["habitus", *args]
        main()

    from click import command

    wrapper = command(context_settings={"ignore_unknown_options": True})(entry)
    return runner.invoke(wrapper, [], env=env, catch_exceptions=False)


@pytest.fixture
def hab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    """``hab(*args)`` runs ``habitus -H <a new habitat> *args``."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "hab"
    assert run("init", str(path), "--name", "test").exit_code == 0

    def invoke(*args: str) -> Result:
        return run("-H", str(path), *args)

    return invoke


def events(path: Path, kind: str) -> list[Event]:
    """The events of one kind, read the way another process would (read-only)."""
    settings = Settings.resolve(config_file=None, environ={}, path=path)
    with SyncHabitat.open(path, read_only=True, settings=settings) as opened:
        return opened.ledger.query(kind=kind, limit=1000).events


def field_of(output: str, name: str) -> str:
    """The value of ``name:`` in the output of ``habitus agents ID``."""
    for line in output.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == name:
            return value.strip()
    raise AssertionError(f"no {name!r} line in:\n{output}")


# -- spawn, agents, send ---------------------------------------------------------------------


def test_spawned_agents_are_listed_and_shown(hab: Callable[..., Result]) -> None:
    made = hab(
        "spawn", "scout", "--behaviour", "Scout", "--owner", "human:ada", "--name", "Scout One",
        "--label", "room=north", "--label", "team=a", "--topic", "sensors.*.temp",
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    assert "spawned agent 'scout'" in made.output
    assert hab("spawn", "planner", "--behaviour", "Planner").exit_code == 0

    listed = hab("agents")
    assert listed.exit_code == 0
    header, *rows = listed.output.splitlines()
    assert header.split() == ["ID", "STATUS", "BEHAVIOUR", "OWNER", "MAILBOX", "LABELS"]
    assert [r.split()[:4] for r in rows] == [
        ["planner", "spawned", "Planner", f"human:{getpass.getuser()}"],  # the owner defaults to the user
        ["scout", "spawned", "Scout", "human:ada"],
    ]

    shown = hab("agents", "scout")
    assert shown.exit_code == 0
    assert field_of(shown.output, "status") == "spawned"
    assert field_of(shown.output, "owner") == "human:ada"
    assert field_of(shown.output, "name") == "Scout One"
    assert field_of(shown.output, "behaviour") == "Scout"
    assert field_of(shown.output, "labels") == "room=north, team=a"
    assert field_of(shown.output, "topics") == "sensors.*.temp"
    assert field_of(shown.output, "mailbox") == "0 messages waiting"
    assert field_of(shown.output, "dead letters") == "none"

    as_json = [json.loads(line) for line in hab("agents", "--json").output.splitlines()]
    assert [(a["id"], a["status"], a["mailbox"]) for a in as_json] == [
        ("planner", "spawned", 0),
        ("scout", "spawned", 0),
    ]
    assert as_json[1]["labels"] == {"room": "north", "team": "a"}


def test_spawn_refuses_a_taken_id_and_malformed_labels(hab: Callable[..., Result]) -> None:
    assert hab("spawn", "scout", "--behaviour", "Scout").exit_code == 0
    again = hab("spawn", "scout", "--behaviour", "Scout")
    assert again.exit_code == 4 and "already exists" in again.output
    bad_label = hab("spawn", "other", "--behaviour", "Scout", "--label", "no-equals-sign")
    assert bad_label.exit_code == 2 and "KEY=VALUE" in bad_label.output
    bad_id = hab("spawn", "not ok!", "--behaviour", "Scout")
    assert bad_id.exit_code == 2 and "agent id" in bad_id.output
    assert [line.split()[0] for line in hab("agents").output.splitlines()[1:]] == ["scout"]


def test_the_list_pages_with_limit_and_after(hab: Callable[..., Result]) -> None:
    assert hab("agents").output.strip() == "no agents"
    for name in ("a", "b", "c"):
        assert hab("spawn", name, "--behaviour", "X").exit_code == 0
    first = hab("agents", "-n", "2")
    assert [line.split()[0] for line in first.output.splitlines()[1:3]] == ["a", "b"]
    assert "more: habitus agents --after b" in first.output
    rest = hab("agents", "--after", "b")
    assert [line.split()[0] for line in rest.output.splitlines()[1:]] == ["c"]
    assert "more:" not in rest.output


def test_send_queues_text_and_json_messages(hab: Callable[..., Result], tmp_path: Path) -> None:
    assert hab("spawn", "scout", "--behaviour", "Scout", "--owner", "human:ada").exit_code == 0
    refused = hab("send", "scout", "hello there")  # the sender defaults to the user, who does not own scout
    assert refused.exit_code == 8 and "may not message:send agent:scout" in refused.output
    sent = hab("send", "scout", "hello there", "--from", "human:ada")
    assert sent.exit_code == 0, sent.output
    assert "1 waiting in its mailbox" in sent.output
    assert field_of(hab("agents", "scout").output, "mailbox") == "1 message waiting"

    reading = ('{"temp": 31.4, "ok": false}', "--json", "--type", "reading", "--thread", "greenhouse")
    stranger = hab("send", "agent:scout", *reading, "--from", "source:sensor-7")  # a sensor is nobody's agent
    assert stranger.exit_code == 8 and "may not message:send agent:scout" in stranger.output
    assert hab("grant", "source:sensor-7", "message:send", "agent:scout").exit_code == 0
    structured = hab("send", "agent:scout", *reading, "--from", "source:sensor-7")
    assert structured.exit_code == 0, structured.output
    number = hab("send", "scout", "42", "--json", "--from", "human:ada")
    assert number.exit_code == 0
    assert field_of(hab("agents", "scout").output, "mailbox") == "3 messages waiting"
    assert hab("agents").output.splitlines()[1].split()[:5] == ["scout", "spawned", "Scout", "human:ada", "3"]

    first, second, third = events(tmp_path / "hab", "message.sent")
    assert (first.actor, first.content) == ("human:ada", "hello there")
    assert first.meta == {"to": "agent:scout"}  # a person is trusted: no label
    assert second.content == {"temp": 31.4, "ok": False}
    assert (second.actor, second.thread, second.meta["type"]) == ("source:sensor-7", "greenhouse", "reading")
    assert second.meta["trust"] == "untrusted"  # what a sensor says is marked, for the agent to weigh
    assert third.content == 42 and "trust" not in third.meta


def test_send_with_a_body_that_is_not_json_is_refused(hab: Callable[..., Result], tmp_path: Path) -> None:
    assert hab("spawn", "scout", "--behaviour", "Scout").exit_code == 0
    result = hab("send", "scout", "{not json", "--json")
    assert result.exit_code == 2
    assert result.output.startswith("error: MESSAGE is not valid JSON")
    assert len(result.output.strip().splitlines()) == 1
    assert events(tmp_path / "hab", "message.sent") == []


# -- lifecycle -------------------------------------------------------------------------------


def test_suspend_resume_and_retire_change_the_status(hab: Callable[..., Result], tmp_path: Path) -> None:
    assert hab("spawn", "scout", "--behaviour", "Scout").exit_code == 0
    assert hab("send", "scout", "first").exit_code == 0
    assert hab("send", "scout", "second", "--type", "later").exit_code == 0

    suspended = hab("suspend", "scout", "--by", "human:ada", "--reason", "maintenance")
    assert suspended.exit_code == 0, suspended.output
    assert field_of(hab("agents", "scout").output, "status") == "suspended"
    (event,) = events(tmp_path / "hab", "agent.suspended")
    assert (event.actor, event.meta) == ("human:ada", {"agent": "scout", "reason": "maintenance"})
    assert hab("suspend", "scout").exit_code == 2  # already suspended

    resumed = hab("resume", "scout")
    assert resumed.exit_code == 0
    assert "2 waiting in its mailbox" in resumed.output
    assert field_of(hab("agents", "scout").output, "status") == "active"
    assert events(tmp_path / "hab", "agent.resumed")[0].actor == f"human:{getpass.getuser()}"

    retired = hab("retire", "scout", "--reason", "done")
    assert retired.exit_code == 0
    assert "2 queued messages became dead letters" in retired.output
    shown = hab("agents", "scout").output
    assert field_of(shown, "status") == "retired"
    assert field_of(shown, "mailbox") == "0 messages waiting"
    assert field_of(shown, "dead letters") == "2"
    assert "never delivered: agent retired" in shown
    assert "→ agent:scout: first" in shown and "type later" in shown

    refused = hab("send", "scout", "are you there?")
    assert refused.exit_code == 4
    assert refused.output.strip() == "error: agent 'scout' is retired and takes no more messages"
    cannot = hab("resume", "scout")
    assert cannot.exit_code == 2 and "retired" in cannot.output


@pytest.mark.parametrize(
    "args",
    [
        ("agents", "nobody"),
        ("send", "nobody", "hello"),
        ("suspend", "nobody"),
        ("resume", "nobody"),
        ("retire", "nobody", "--reason", "gone"),
    ],
)
def test_unknown_agents_are_one_clean_line_with_exit_code_3(hab: Callable[..., Result], args: tuple[str, ...]) -> None:
    result = hab(*args)
    assert result.exit_code == 3, result.output
    assert result.output.strip() == "error: no agent 'nobody' in this habitat; spawn it first"
    assert "Traceback" not in result.output


# -- run -------------------------------------------------------------------------------------


@pytest.fixture
def clean_imports(tmp_path: Path) -> Iterator[None]:
    """Forget the app modules and import paths that loading apps in this process adds."""
    path = list(sys.path)
    try:
        yield
    finally:
        sys.path[:] = path
        for name, module in list(sys.modules.items()):
            if Path(getattr(module, "__file__", None) or "/").resolve().is_relative_to(tmp_path.resolve()):
                del sys.modules[name]


@pytest.mark.usefixtures("clean_imports")
@pytest.mark.parametrize(
    ("source", "ref", "fragment"),
    [
        (None, "missing.py", "there is no Python file"),
        ("x = 1\n", "plain.py", "defines no habitus.App"),
        ("from habitus import App\none = App('a')\ntwo = App('b')\n", "pair.py", "several apps (one, two)"),
        ("from habitus import App\napp = App('a')\n", "attr.py:nothing", "has no attribute 'nothing'"),
        ("from habitus import App\napp = App('a')\nother = 3\n", "other.py:other", "is a int, not a habitus.App"),
        ("x = 1 / 0\n", "crash.py", "ZeroDivisionError: division by zero (at "),
        ("def broken(:\n", "syntax.py", "SyntaxError"),
        (None, "no_such_module_here", "no module 'no_such_module_here'"),
    ],
)
def test_run_says_in_one_line_why_an_app_cannot_be_loaded(
    hab: Callable[..., Result], tmp_path: Path, source: str | None, ref: str, fragment: str
) -> None:
    if source is not None:
        (tmp_path / ref.split(":")[0]).write_text(source)
    result = hab("run", ref)
    assert result.exit_code == 2, result.output
    assert fragment in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


@dataclass
class AppProcess:
    """``habitus run`` as a real process, its stdout read line by line in the background."""

    process: subprocess.Popen[str]
    lines: queue.Queue[str] = field(default_factory=queue.Queue)
    seen: list[str] = field(default_factory=list)

    def read_until(self, fragment: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line with {fragment!r} in time; saw {self.seen}") from None
            self.seen.append(line)
            if fragment in line:
                return line

    def interrupt(self, sig: signal.Signals = signal.SIGINT) -> int:
        self.process.send_signal(sig)
        return self.process.wait(timeout=30)


@contextlib.contextmanager
def app_running(habitat: Path, app_file: Path, extra_env: dict[str, str] | None = None) -> Iterator[AppProcess]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HABITUS_")}
    env.update(extra_env or {})
    with open(app_file.parent / "stderr.txt", "w") as stderr:
        process = subprocess.Popen(
            [str(HABITUS), "-H", str(habitat), "run", str(app_file)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=app_file.parent,
            env=env,
        )
    running = AppProcess(process)

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            running.lines.put(line.rstrip("\n"))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        reader.join(timeout=5)
        if process.stdout is not None:
            process.stdout.close()


def eventually(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen in time")
        time.sleep(0.1)


def test_run_handles_waiting_mail_stops_on_ctrl_c_and_resumes(hab: Callable[..., Result], tmp_path: Path) -> None:
    path = tmp_path / "hab"
    app_file = tmp_path / "notes.py"
    app_file.write_text(APP_SOURCE)
    assert hab("spawn", "recorder", "--behaviour", "Recorder").exit_code == 0
    assert hab("send", "recorder", "before the first run").exit_code == 0

    with app_running(path, app_file) as first:
        started = first.read_until("running app")
        assert "'notes'" in started and "notes.py" in started and "Ctrl-C stops" in started
        eventually(lambda: len(events(path, "note.recorded")) == 1, "handling the waiting message")
        busy = hab("send", "recorder", "while it runs")  # the running app holds the writer lock
        assert busy.exit_code == 4 and "open for writing by another process" in busy.output
        assert first.interrupt(signal.SIGINT) == 0
        assert "stopped app 'notes'" in first.read_until("stopped")
    assert [e.content for e in events(path, "note.recorded")] == ["got before the first run"]
    spawned = [e.meta["agent"] for e in events(path, "agent.spawned")]
    assert spawned == ["recorder", "broken"]  # the app's declared agent was spawned by the first run
    assert field_of(hab("agents", "recorder").output, "status") == "active"

    assert hab("send", "recorder", "between the runs").exit_code == 0
    with app_running(path, app_file) as second:
        second.read_until("running app")
        eventually(lambda: len(events(path, "note.recorded")) == 2, "handling the message sent between runs")
        assert second.interrupt(signal.SIGTERM) == 0
    notes = events(path, "note.recorded")
    assert [e.content for e in notes] == ["got before the first run", "got between the runs"]
    assert [e.meta["agent"] for e in events(path, "agent.spawned")] == spawned  # nothing spawned again
    shown = hab("agents", "recorder").output
    assert field_of(shown, "mailbox") == "0 messages waiting"
    assert "note.recorded" in shown.split("recent events by agent:recorder:")[1]
    assert hab("verify").exit_code == 0


def test_a_message_whose_handler_keeps_failing_is_shown_as_a_dead_letter(
    hab: Callable[..., Result], tmp_path: Path
) -> None:
    path = tmp_path / "hab"
    app_file = tmp_path / "notes.py"
    app_file.write_text(APP_SOURCE)
    assert hab("spawn", "broken", "--behaviour", "Broken", "--owner", "human:ada").exit_code == 0
    assert hab("send", "broken", "please work", "--type", "job", "--from", "human:ada").exit_code == 0

    with app_running(path, app_file, {"HABITUS_MAX_ATTEMPTS": "1"}) as process:
        process.read_until("running app")
        eventually(lambda: bool(events(path, "message.dead_lettered")), "dead-lettering the message")
        assert process.interrupt() == 0

    shown = hab("agents", "broken")
    assert shown.exit_code == 0
    assert field_of(shown.output, "mailbox") == "0 messages waiting"
    assert field_of(shown.output, "dead letters") == "1"
    assert "type job, 1 attempt: RuntimeError: this handler always fails" in shown.output
    assert "→ agent:broken: please work" in shown.output
    document = json.loads(hab("agents", "broken", "--json").output)
    (letter,) = document["dead_letters"]
    assert letter["error"] == "RuntimeError: this handler always fails"
    assert (letter["attempts"], letter["type"], document["dead_letter_count"]) == (1, "job", 1)
