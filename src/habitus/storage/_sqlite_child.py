"""A habitat's SQLite writer in its own process: ``python -m habitus.storage._sqlite_child FD PATH DURABILITY PARENT``.

(The ledger runs :func:`main` through a few lines that skip ``habitus/__init__.py``, so it starts in 0.1 s.)

The ledger starts it (see ``habitus.ledger._committer``) so that commits run
beside the event loop on another core instead of taking turns with it for the
GIL. It reads framed commits from the socket ``FD`` (see :mod:`._wire`), applies
each with :meth:`SQLiteStore.write` in the order received, and answers each with
one reply. After a failed commit it refuses, unwritten, every commit prepared in
that writer generation or an earlier one, so the ledger never gets a gap.

It ends when the socket closes, and is killed with its parent (Linux's
``PR_SET_PDEATHSIG``), so a commit can never land after the habitat that sent it
is gone and another has opened the file.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import signal
import socket
import sys
from pathlib import Path

from habitus.errors import StorageError
from habitus.storage._sqlite import SQLiteStore
from habitus.storage._wire import FAILED, OK, READY, STALE, STALE_MESSAGE, decode, reply

_PR_SET_PDEATHSIG = 1


def _die_with(parent: int) -> bool:
    """Ask to be killed when the parent exits; False if it is gone already."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    return os.getppid() == parent


def _read_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            return None
        got += k
    return bytes(buf)


def serve(sock: socket.socket, store: SQLiteStore) -> None:
    """Apply framed commits from ``sock`` until it closes."""
    failed_generation = -1
    while True:
        head = _read_exact(sock, 4)
        if head is None:
            return
        payload = _read_exact(sock, int.from_bytes(head, "little"))
        if payload is None:
            return
        generation, scrub, dirty, batch = decode(payload)
        if generation <= failed_generation:
            sock.sendall(reply(STALE, STALE_MESSAGE))
            continue
        try:
            store.write(batch)
        except Exception as exc:  # noqa: BLE001 - reported to the habitat, like the writer thread does
            failed_generation = generation
            error = str(exc) if isinstance(exc, StorageError) else f"writing the ledger failed: {exc!r}"
            sock.sendall(reply(FAILED, error))
            continue
        scrubbed = False
        if scrub:
            store.adopt_writes(fulltext_dirty=dirty)  # deletes the habitat made before this process took over
            with contextlib.suppress(StorageError):
                scrubbed = store.scrub()
        sock.sendall(reply(OK, scrubbed=scrubbed, fulltext_dirty=store.fulltext_dirty))


def main(argv: list[str]) -> int:
    fd, path, durability, parent = int(argv[0]), argv[1], argv[2], int(argv[3])
    if not _die_with(parent):
        return 1
    gc.set_threshold(10_000, 10, 10)  # like the runtime's (RuntimeOptions.gc_threshold): few objects live long here
    sock = socket.socket(fileno=fd)
    try:
        store = SQLiteStore(Path(path), durability="full" if durability == "full" else "normal")
    except StorageError as exc:
        sock.sendall(reply(FAILED, str(exc)))
        return 1
    # A broken socket means the habitat went away: what it did not hear of, it did not wait for.
    try:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(reply(READY))
            serve(sock, store)
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
