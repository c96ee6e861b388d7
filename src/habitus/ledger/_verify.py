"""The verifier: recompute everything from the stored events, trust no stored hash.

For each event in seq order it checks that seqs have no gap and commit times
never go backwards, recomputes the content digest (where content remains),
recomputes the leaf from the fields, and rebuilds the Merkle tree from the
recomputed leaves. Stored leaves and nodes are compared against the
recomputation, each signed checkpoint's signature is checked with the
habitat's public key, and its root is compared with the recomputed root at
its tree size. A problem is reported at the first seq it affects.
"""

from __future__ import annotations

import json
import time
from typing import Any

from habitus.ledger._codec import content_digest, from_micros, leaf_hash
from habitus.ledger._merkle import Frontier
from habitus.ledger._models import Checkpoint, Problem, VerifyReport
from habitus.ledger._signing import check_checkpoint
from habitus.storage._abstract import LedgerStore

__all__ = ["verify_store"]

_MAX_PROBLEMS = 20


_TYPES: tuple[tuple[str, tuple[type, ...], bool], ...] = (
    ("seq", (int,), False),
    ("id", (bytes,), False),
    ("ts", (int,), False),
    ("at", (int,), True),
    ("actor", (str,), False),
    ("kind", (str,), False),
    ("thread", (str,), True),
    ("meta", (str,), False),
    ("causes", (bytes,), True),
    ("ctype", (int,), True),
    ("digest", (bytes,), True),
    ("leaf", (bytes,), False),
    ("salt", (bytes,), True),
    ("body", (bytes,), True),
)


def _wrong_types(row: list[Any]) -> str | None:
    """Name of the first column whose stored value has a type no append could have written."""
    for (name, types, nullable), value in zip(_TYPES, row, strict=True):
        if value is None and nullable:
            continue
        if not isinstance(value, types) or isinstance(value, bool):
            return name
    return None


def verify_store(store: LedgerStore, public_key: str) -> VerifyReport:
    """Verify ``store`` against signatures made with ``public_key`` (hex Ed25519)."""
    started = time.perf_counter()
    problems: list[Problem] = []

    def problem(seq: int, where: str, reason: str) -> None:
        problems.append(Problem.model_validate({"seq": seq, "where": where, "reason": reason}))

    checkpoints: dict[int, tuple[bytes, int]] = {}
    previous_size = 0
    for size, root, ts, signature in store.checkpoints():
        first_affected = previous_size + 1
        previous_size = size
        try:
            model = Checkpoint(
                tree_size=size, root=root.hex(), ts=from_micros(ts), signature=signature.hex(), public_key=public_key
            )
            signed = check_checkpoint(model)
        except (ValueError, OverflowError):
            signed = False
        if not signed:
            problem(
                max(size, 1),
                "checkpoint",
                f"the checkpoint at tree size {size} is not validly signed by the habitat key "
                f"(it covers seqs {first_affected}..{size})",
            )
            continue
        checkpoints[size] = (root, first_affected)

    stored_nodes = {(level, idx): node for level, idx, node in store.iter_nodes()}
    frontier = Frontier()
    completed: list[tuple[int, int, bytes]] = []
    expected = 1
    last_ts: int | None = None
    erased: list[int] = []
    erasure_claims: set[int] = set()
    for stored in store.iter_rows():
        if len(problems) >= _MAX_PROBLEMS:
            break
        row: list[Any] = list(stored)  # stored values are checked, not trusted: no narrower type
        seq, id_, ts, at, actor, kind, thread, meta, causes, ctype, digest, leaf, salt, body = row
        wrong = _wrong_types(row)
        if wrong:
            if not isinstance(seq, int):
                problem(expected, "sequence", f"the event after seq {expected - 1} has a non-integer seq")
                break
            problem(seq, "event", f"stored field {wrong} has the wrong type")
            expected = seq + 1
            frontier.append(b"", completed)
            completed.clear()
            continue
        if seq != expected:
            problem(expected, "sequence", f"seq {expected} is missing (the next stored event has seq {seq})")
            expected = seq
        expected += 1
        if not isinstance(id_, bytes) or len(id_) != 16:
            problem(seq, "event", "the event id is not 16 bytes")
        if last_ts is not None and ts < last_ts:
            problem(seq, "event", f"its commit time {ts} is earlier than the previous event's {last_ts}")
        last_ts = ts
        if ctype not in (None, 1, 2, 3):
            problem(seq, "content", f"unknown content type {ctype!r}")
            ctype = 0  # still hashed into the leaf below, which then fails to match
        elif (salt is None) != (body is None):
            problem(seq, "content", "content and salt must be both present or both erased")
        elif (
            ctype is not None and salt is not None and body is not None and digest != content_digest(salt, ctype, body)
        ):
            problem(seq, "content", "the content does not match the digest its leaf commits to")
        if ctype is not None and salt is None:
            erased.append(seq)
        if causes is not None and len(causes) % 16:
            problem(seq, "cause", "the causes column is not a whole number of 16-byte ids")
        if kind == "content.erased":
            try:
                erasure_claims.add(int(json.loads(meta)["target_seq"]))
            except (ValueError, KeyError, TypeError):
                problem(seq, "erasure", "content.erased meta does not name its target")
        try:
            recomputed = leaf_hash(id_, ts, at, actor, kind, thread, meta, causes, ctype, digest)
        except (TypeError, ValueError, OverflowError) as exc:
            problem(seq, "event", f"the stored fields cannot be encoded: {exc}")
            recomputed = b""
        if recomputed != leaf:
            problem(seq, "leaf", "the event's fields do not match its stored leaf hash")
        frontier.append(recomputed, completed)
        for level, idx, node in completed:
            if stored_nodes.pop((level, idx), None) != node:
                first = (idx << level) + 1
                if any(first <= p.seq for p in problems):
                    continue  # explained by a problem found among the leaves it covers
                problem(first, "node", f"stored Merkle node (level {level}, index {idx}) does not match the events")
        completed.clear()
        claim = checkpoints.get(frontier.size)
        # A root mismatch already explained by a finer problem in its range adds nothing.
        if (
            claim is not None
            and frontier.root() != claim[0]
            and not any(claim[1] <= p.seq <= frontier.size for p in problems)
        ):
            problem(
                claim[1],
                "checkpoint",
                f"the root recomputed at tree size {frontier.size} differs from the signed checkpoint: "
                f"an event in seqs {claim[1]}..{frontier.size} was altered",
            )
    size = frontier.size
    for level, idx in sorted(stored_nodes):
        if (idx + 1) << level <= size:
            continue  # compared above (a mismatch was reported when recomputed)
        problem((idx << level) + 1, "node", f"stored Merkle node (level {level}, index {idx}) is beyond the tree")
    for checkpoint_size, (_, first) in sorted(checkpoints.items()):
        if checkpoint_size > size:
            problem(
                min(first, size + 1),
                "checkpoint",
                f"a signed checkpoint covers {checkpoint_size} events but only {size} are stored: events were removed",
            )
    for seq in erased:
        if seq not in erasure_claims:
            problem(seq, "erasure", "its content is gone but no content.erased event records the erasure")
    problems.sort(key=lambda p: p.seq)
    return VerifyReport(
        ok=not problems,
        events=size,
        checkpoints=len(checkpoints),
        root=frontier.root().hex(),
        problems=problems,
        seconds=time.perf_counter() - started,
    )
