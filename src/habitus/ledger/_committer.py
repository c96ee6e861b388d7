"""The habitat's end of a writer process (``habitus.storage._sqlite_child``).

Under sustained load the writer thread and the event loop take turns for the
GIL: every SQLite statement the thread finishes has to wait for the loop to let
go. A child process has its own interpreter, so its commits run beside the loop
on another core. This class starts it, sends it framed commits over a socket
pair and hands each reply to the :class:`~habitus.ledger._writer.Writer` from
the event loop, which watches the socket. It never blocks the loop on a reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from habitus.storage._abstract import ProcessWritable
from habitus.storage._wire import Reply, read_reply

__all__ = ["ChildCommitter"]

# Runs habitus.storage._sqlite_child.main without executing habitus/__init__.py, which imports the
# whole library (0.5 s); the storage layer alone starts in under 0.1 s.
_BOOT = (
    "import sys, types; package = types.ModuleType('habitus'); package.__path__ = [sys.argv.pop(1)]; "
    "sys.modules['habitus'] = package; "
    "from habitus.storage._sqlite_child import main; sys.exit(main(sys.argv[1:]))"
)
_SEND_TIMEOUT = 120.0  # a child that takes no commit for this long is treated as lost
_SOCKET_BUFFER = 4 << 20  # a few groups in flight without the loop blocking in send


class ChildCommitter:
    """A writer process for ``store``, driven from ``loop``.

    ``on_reply`` gets every reply in order (the first is ``READY``);
    ``on_lost`` is called once if the process ends or the socket fails.
    """

    def __init__(
        self,
        store: ProcessWritable,
        loop: asyncio.AbstractEventLoop,
        *,
        on_reply: Callable[[Reply], None],
        on_lost: Callable[[str], None],
    ) -> None:
        self._store = store
        self._loop = loop
        self._on_reply = on_reply
        self._on_lost = on_lost
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._buf = bytearray()
        self._lost = False

    @property
    def pid(self) -> int | None:
        """The process's pid once started."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Start the process (it answers ``READY`` once it has opened the file). Raises OSError."""
        ours, theirs = socket.socketpair()
        try:
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)
            theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER)
            package = str(Path(__file__).resolve().parents[1])  # this habitus package, wherever it is
            argv = [sys.executable, "-c", _BOOT, package, str(theirs.fileno())]
            argv += [*self._store.child_writer_args(), str(os.getpid())]
            self._proc = subprocess.Popen(
                argv, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
            )  # stderr stays: a failure there is worth seeing
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.settimeout(_SEND_TIMEOUT)
        self._sock = ours
        self._loop.add_reader(ours.fileno(), self._readable)

    def send(self, data: bytes) -> None:
        """Send one framed commit; a failure is reported through ``on_lost`` before this returns."""
        if self._sock is None or self._lost:
            self._lose("the writer process is gone")
            return
        try:
            self._sock.sendall(data)
        except OSError as exc:
            self._lose(f"sending a commit to the writer process failed: {exc!r}")

    def _readable(self) -> None:
        assert self._sock is not None
        try:
            data = self._sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError as exc:
            self._lose(f"reading from the writer process failed: {exc!r}")
            return
        if not data:
            self._lose("the writer process ended")
            return
        buf = self._buf
        buf += data
        while len(buf) >= 4 and not self._lost:
            n = int.from_bytes(buf[:4], "little")
            if len(buf) - 4 < n:
                break
            payload = bytes(buf[4 : 4 + n])
            del buf[: 4 + n]  # consumed before it is handled, so a reply is never handled twice
            self._on_reply(read_reply(payload))

    def _lose(self, reason: str) -> None:
        if self._lost:
            return
        self._lost = True
        self._detach()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()  # whatever it was doing, no commit of it may land after this
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(5)
        self._on_lost(reason)

    def _detach(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(sock.fileno())
            sock.close()

    async def close(self) -> None:
        """Close the socket (the process ends once it has applied what it received) and wait for it."""
        self._lost = True
        self._detach()
        proc = self._proc
        if proc is None:
            return
        try:
            await asyncio.to_thread(proc.wait, 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)
