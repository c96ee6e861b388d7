"""Running one process to its end: feed its stdin, cap its output, kill its process group at a deadline.

Blocking code, run in a worker thread by :func:`habitus.tools.run_sandboxed`:
a selector loop over plain pipes keeps this independent of how an event
loop's subprocess support waits (asyncio's waits for every pipe to close,
which a killed program's escaped descendants could hold open forever).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = ["Finished", "kill_group", "supervise"]

_GRACE = 1.0  # seconds to collect what is left after the deadline killed the program
_CHUNK = 65_536


@dataclass(frozen=True, slots=True)
class Finished:
    """How the process ended: its return code (minus a signal), its output, and whether we stopped it."""

    returncode: int
    stdout: bytes
    stderr: bytes
    stopped: Literal["wall", "output"] | None


def kill_group(pid: int) -> None:
    """SIGKILL the process group ``pid`` leads (the process was started in a session of its own)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def supervise(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str,
    stdin: bytes,
    wall_seconds: float,
    max_output: int,
    pass_fds: Sequence[int] = (),
    started: threading.Event | None = None,
    pid_box: list[int] | None = None,
) -> Finished:
    """Run ``argv`` to its end, or kill its process group at ``wall_seconds`` or past ``max_output`` bytes.

    ``pid_box`` receives the pid as soon as the process exists (so another
    thread can kill it), and ``started`` is set then.
    """
    process = subprocess.Popen(
        list(argv),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(env),
        cwd=cwd,
        start_new_session=True,
        pass_fds=tuple(pass_fds),
    )
    if pid_box is not None:
        pid_box.append(process.pid)
    if started is not None:
        started.set()
    deadline = time.monotonic() + wall_seconds
    output = {"stdout": bytearray(), "stderr": bytearray()}
    stopped: Literal["wall", "output"] | None = None
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    with selectors.DefaultSelector() as selector:
        for name, stream in (("stdout", process.stdout), ("stderr", process.stderr)):
            os.set_blocking(stream.fileno(), False)
            selector.register(stream, selectors.EVENT_READ, name)
        pending = memoryview(stdin)
        if pending:
            os.set_blocking(process.stdin.fileno(), False)
            selector.register(process.stdin, selectors.EVENT_WRITE, "stdin")
        else:
            process.stdin.close()
        cutoff: float | None = None  # once killed: collect what is left until then, no longer
        while selector.get_map():
            now = time.monotonic()
            if cutoff is not None and now >= cutoff:
                break  # descendants that left the group still hold the pipes: leave them
            if cutoff is None and now >= deadline:
                stopped = stopped or "wall"
                kill_group(process.pid)
                cutoff = now + _GRACE
            until = cutoff if cutoff is not None else deadline
            for key, _ in selector.select(timeout=max(0.0, min(until - now, 1.0))):
                if key.data == "stdin":
                    try:
                        pending = pending[os.write(key.fd, pending[:_CHUNK]) :]
                    except BlockingIOError:
                        continue
                    except (BrokenPipeError, ConnectionResetError):
                        pending = pending[:0]  # it does not read its input: fine
                    if not pending:
                        selector.unregister(key.fileobj)
                        process.stdin.close()
                    continue
                try:
                    chunk = os.read(key.fd, _CHUNK)
                except BlockingIOError:
                    continue
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                buffer = output[key.data]
                room = max_output - len(buffer)
                buffer += chunk[:room]
                if len(chunk) > room and cutoff is None:
                    stopped = stopped or "output"
                    kill_group(process.pid)
                    cutoff = time.monotonic() + _GRACE
        for stream in (process.stdin, process.stdout, process.stderr):
            with contextlib.suppress(OSError):
                stream.close()
    try:
        returncode = process.wait(timeout=max(0.0, deadline - time.monotonic(), _GRACE if stopped else 0.0))
    except subprocess.TimeoutExpired:
        # It closed its output but runs on: the deadline stops it as it would have.
        stopped = stopped or "wall"
        kill_group(process.pid)
        returncode = process.wait()
    return Finished(returncode, bytes(output["stdout"]), bytes(output["stderr"]), stopped)
