"""The demo scenario behind ``habitus demo``: three principals, one causal trail.

A person asks an agent to keep a greenhouse in range; a sensor reports heat;
the scout agent notices and warns the planner agent; the planner recalls what
it knows, decides, and reports back. The phone number the person shared is
erased on request, the temperature recovers, and the planner closes the loop.
The trail of that last message reaches back to the person's request, through
the erased note, and the ledger still verifies. Every cause below is wired
by the causal context (:func:`habitus.caused_by`), the way agents will be.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from habitus._habitat import Habitat
from habitus.errors import HabitatExistsError
from habitus.ledger._context import caused_by
from habitus.ledger._models import Erasure, VerifyReport

__all__ = ["DemoResult", "run_demo"]

_MARKER = ".habitus-demo"


@dataclass(frozen=True)
class DemoResult:
    """What the demo left behind, for the CLI to show."""

    path: Path
    last_event: uuid.UUID
    erasure: Erasure
    report: VerifyReport
    events: int


async def run_demo(path: Path) -> DemoResult:
    """Play the scenario in a fresh habitat at ``path`` (replacing an earlier demo's)."""
    if path.exists():
        if not (path / _MARKER).exists():
            raise HabitatExistsError(f"{str(path)!r} exists and was not made by 'habitus demo'; choose another --path")
        shutil.rmtree(path)
    hab = await Habitat.init(path, name="greenhouse demo")
    (path / _MARKER).write_text("made by 'habitus demo'; safe to delete\n", encoding="utf-8")
    try:
        ledger = hab.ledger
        morning = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
        with caused_by(thread="greenhouse"):
            ask = await ledger.append(
                "message.sent",
                actor="human:ada",
                meta={"to": "agent:scout"},
                content="Please keep the greenhouse between 18 and 26 °C. If anything goes wrong, call me.",
                at=morning,
            )
            contact = await ledger.append(
                "note.recorded",
                actor="human:ada",
                meta={"tags": ["contact"]},
                content="Ada's phone: +44 7700 900123",
                at=morning,
            )
            reading = await ledger.append(
                "observation.recorded",
                actor="source:sensor-north",
                meta={"source": "sensor-north", "tags": ["temperature"]},
                content={"temp_c": 31.4, "humidity": 0.62},
                at=morning + timedelta(hours=2),
            )
            with caused_by(ask, reading):
                alarm = await ledger.append(
                    "observation.recorded",
                    actor="agent:scout",
                    meta={"tags": ["alert"]},
                    content="North side is at 31.4 °C, above Ada's limit of 26 °C.",
                )
            with caused_by(alarm):
                warn = await ledger.append(
                    "message.sent",
                    actor="agent:scout",
                    meta={"to": "agent:planner"},
                    content="Greenhouse north side too hot (31.4 °C). Can you act?",
                )
            with caused_by(warn):
                know = await ledger.append(
                    "note.recorded",
                    actor="agent:planner",
                    meta={"tags": ["knowledge"]},
                    content="Opening the roof vents to half cools the greenhouse about 4 °C an hour.",
                )
            with caused_by(warn, know):
                decision = await ledger.append(
                    "decision.made",
                    actor="agent:planner",
                    meta={"action": "open-roof-vents"},
                    content="Open the roof vents to 50% and check again in one hour.",
                )
            with caused_by(decision, contact):
                report = await ledger.append(
                    "message.sent",
                    actor="agent:planner",
                    meta={"to": "human:ada"},
                    content="The north side reached 31.4 °C; I opened the roof vents to 50%.",
                )
            erasure = await ledger.erase(contact, reason="Ada asked to remove her phone number", by="human:ada")
            with caused_by(decision):
                later = await ledger.append(
                    "observation.recorded",
                    actor="source:sensor-north",
                    meta={"source": "sensor-north", "tags": ["temperature"]},
                    content={"temp_c": 25.1, "humidity": 0.58},
                )
            with caused_by(report, later):
                done = await ledger.append(
                    "message.sent",
                    actor="agent:planner",
                    meta={"to": "human:ada"},
                    content="Back in range: the north side is at 25.1 °C. Vents stay at 50% until evening.",
                )
        await ledger.checkpoint()
        verdict = await ledger.verify()
        events = await ledger.count()
    finally:
        await hab.close()
    return DemoResult(path=path, last_event=done.id, erasure=erasure, report=verdict, events=events)
