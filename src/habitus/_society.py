"""The demo society behind ``habitus up``: a greenhouse run by agents that think, remember and ask why.

Seven agents, all owned by ``human:operator``:

- ``sensor-north`` and ``sensor-south`` publish soil readings (``observations.<bed>``),
  one every couple of seconds, each six hours of simulated time after the last;
- the ``analyst`` remembers every reading with its world time, believes a fact about
  each bed's soil (``bed:north soil = dry``, superseded by ``moist`` once watered),
  alerts the coordinator when a bed runs dry, and answers briefs by recalling the
  readings of the last days and asking the model;
- the ``coordinator`` asks the analyst for a brief, decides with the model, offers
  the task to two irrigators, assigns it to the one that accepts (``decision.made``)
  and asks the auditor to check the decision;
- ``irrigator-1`` and ``irrigator-2`` answer offers; the one assigned asks the model,
  which opens the valve with the ``open_valve`` tool — and also tries
  ``override_flow_limit``, which no irrigator may call: a ``policy.denied`` event;
- the ``auditor`` asks ``why`` of the decision, walks its causes back to the
  sensor readings and records what it found (``note.recorded``, tagged ``audit``).

Offline it thinks with a scripted model (deterministic: its answers are built from
the context it is given, so what the agents recalled shows in what they say); with a
model configured (``HABITUS_MODEL_URL``...) the same agents ask that model instead.
Within a minute of starting, the ledger holds cross-agent causal trails, recalls that
informed decisions, a superseded fact and a policy denial.
"""

from __future__ import annotations

import math
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

from habitus._habitat import Habitat
from habitus.agents._behaviour import Agent, App, handles
from habitus.agents._models import Message
from habitus.models._scripted import ScriptedModel
from habitus.models._types import ChatRequest, Completion, ToolCall
from habitus.thinking import ThinkingAgent, Thought

__all__ = [
    "OPERATOR",
    "SOCIETY_AGENTS",
    "build_society",
    "greenhouse_model",
    "is_society",
    "setup_society",
    "start_sensors",
]

OPERATOR = "human:operator"
"""Who owns the society's agents (and may approve, suspend or erase for them)."""

SIM_STEP = timedelta(hours=6)
"""Simulated time between two readings of one sensor."""

TICK_SECONDS = 2.0
"""Real seconds between two readings of one sensor."""

DRY_BELOW = 0.25
"""Soil moisture under which a bed is dry."""

BEDS = ("north", "south")
_DRYING = {"north": 0.035, "south": 0.006}  # moisture lost per reading, before watering

SOCIETY_AGENTS = (
    "sensor-north",
    "sensor-south",
    "analyst",
    "coordinator",
    "irrigator-1",
    "irrigator-2",
    "auditor",
)
"""The agents ``setup_society`` spawns."""


def _sim_origin(now: datetime) -> datetime:
    """Simulated time starts ten days ago at midnight, so the readings span days of world time."""
    return (now - timedelta(days=10)).replace(hour=0, minute=0, second=0, microsecond=0)


def _day(at: datetime) -> str:
    return at.strftime("%a %d %b %H:%M")


# -- sensors ------------------------------------------------------------------------------


class Sensor(Agent):
    """Publishes a soil reading of its bed every ``TICK_SECONDS``; watering raises the moisture."""

    topics = ("actuators.#",)
    tick: ClassVar[float] = TICK_SECONDS

    def _bed(self) -> str:
        return self.ctx.agent.id.removeprefix("sensor-")

    @handles("start")
    async def start(self, msg: Message) -> None:
        """Begin reading (once: a restarted habitat goes on from its durable timer)."""
        if self.ctx.state.get("origin") is None:
            self.ctx.state.set("origin", _sim_origin(datetime.now(UTC)).isoformat())
            self.ctx.state.set("n", 0)
            self.ctx.state.set("moisture", 0.44 if self._bed() == "north" else 0.41)
        self.ctx.set_timer("tick", after=self.tick)

    @handles(topic="actuators.#")
    async def watered(self, msg: Message) -> None:
        """A valve of this bed was opened: the soil takes the water."""
        body = msg.body if isinstance(msg.body, dict) else {}
        if body.get("bed") == self._bed():
            minutes = float(body.get("minutes", 20))
            self.ctx.state.set("moisture", min(0.46, float(self.ctx.state.get("moisture", 0.3)) + minutes / 80))

    async def on_timer(self, msg: Message) -> None:
        """Take a reading, publish it, and set the next tick."""
        bed = self._bed()
        n = int(self.ctx.state.get("n", 0)) + 1
        origin = datetime.fromisoformat(str(self.ctx.state.get("origin")))
        at = origin + SIM_STEP * n
        moisture = max(0.05, float(self.ctx.state.get("moisture", 0.4)) - _DRYING[bed])
        temp = round(19 + 6 * math.sin((at.hour - 9) / 24 * 2 * math.pi) + (n % 3) * 0.4, 1)
        self.ctx.state.set("n", n)
        self.ctx.state.set("moisture", moisture)
        reading = {"bed": bed, "moisture": round(moisture, 3), "temp_c": temp, "at": at.isoformat()}
        await self.ctx.publish(f"observations.{bed}", reading, type="reading")
        self.ctx.set_timer("tick", after=self.tick)


# -- the analyst --------------------------------------------------------------------------


def _reading_text(reading: dict[str, Any]) -> str:
    at = datetime.fromisoformat(reading["at"])
    pct = round(float(reading["moisture"]) * 100)
    return f"{reading['bed'].capitalize()} bed on {_day(at)}: soil moisture {pct}%, {reading['temp_c']} °C."


class Analyst(ThinkingAgent):
    """Remembers readings, keeps a belief about each bed's soil, and answers briefs from its memory."""

    topics = ("observations.#",)
    system_prompt = (
        "[role: analyst] You are the analyst of a greenhouse. You read soil sensors' reports from memory "
        "and brief the coordinator: say how each bed's soil moisture changed over the period asked, "
        f"citing readings with their dates. Soil under {round(DRY_BELOW * 100)}% moisture is dry."
    )
    recall_k = 12
    context_tokens = 1500
    remember_messages = False  # it remembers readings itself, as text with their world time

    @handles(topic="observations.#")
    async def reading(self, msg: Message) -> None:
        """Remember a reading (world time: when it was taken) and update the belief about its bed."""
        reading = msg.body if isinstance(msg.body, dict) else None
        if reading is None or reading.get("bed") not in BEDS:
            return
        at = datetime.fromisoformat(reading["at"])
        self.ctx.state.set("sim_now", reading["at"])
        memory = self.ctx.memory
        await memory.remember(
            _reading_text(reading),
            at=at,
            kind="observation",
            tags=[f"bed:{reading['bed']}"],
            meta={"speaker": msg.sender, "bed": reading["bed"]},
            source=[msg.id],
        )
        soil = "dry" if float(reading["moisture"]) < DRY_BELOW else "moist"
        key = f"soil:{reading['bed']}"
        if self.ctx.state.get(key) != soil:
            self.ctx.state.set(key, soil)
            await memory.assert_fact(f"bed:{reading['bed']}", "soil", soil, valid_from=at, source=[msg.id])
            if soil == "dry":
                await self.ctx.send(
                    "coordinator",
                    {"bed": reading["bed"], "moisture": reading["moisture"], "at": reading["at"]},
                    type="alert",
                )

    def task_for(self, msg: Message) -> str:
        """The brief asked for, in words recall understands ("the last 3 days")."""
        body = msg.body if isinstance(msg.body, dict) else {}
        bed = body.get("bed", "north")
        return f"How did the {bed} bed's soil moisture change over the last 3 days?"

    def recall_now(self, msg: Message) -> datetime | None:
        """Time expressions in a brief are read in simulated time (the latest reading's)."""
        sim = self.ctx.state.get("sim_now")
        return datetime.fromisoformat(sim) if isinstance(sim, str) else None

    @handles("brief")
    async def brief(self, msg: Message) -> None:
        """Recall the last days' readings, ask the model for a brief, and reply with it."""
        await self.think(msg)


# -- the coordinator ----------------------------------------------------------------------


class Coordinator(ThinkingAgent):
    """Turns alerts into tasks: asks for a brief, decides, negotiates with irrigators, asks for an audit."""

    system_prompt = (
        "[role: coordinator] You coordinate a greenhouse's agents. Given the analyst's brief, decide what to "
        "do about the bed: answer with one line starting 'Decision:' (for example 'Decision: irrigate the "
        "north bed for 20 minutes'), then one line of rationale citing the brief."
    )

    @handles("alert")
    async def alert(self, msg: Message) -> None:
        """A bed ran dry: unless a task for it is open, ask the analyst for a brief."""
        body = msg.body if isinstance(msg.body, dict) else {}
        bed = str(body.get("bed", ""))
        if bed not in BEDS or self.ctx.state.get(f"open:{bed}"):
            return
        self.ctx.state.set(f"open:{bed}", True)
        await self.ctx.send("analyst", {"bed": bed}, type="brief")

    def task_for(self, msg: Message) -> str:
        """Decide from the analyst's brief."""
        return f"The analyst's brief: {msg.body}\nWhat should we do?"

    async def on_message(self, msg: Message) -> None:
        """The analyst's brief (a reply): decide, then offer the task to the irrigators."""
        if msg.in_reply_to is None or msg.sender != "agent:analyst":
            return
        bed = next((b for b in BEDS if b in str(msg.body).lower()), "north")
        thought = await self.think(msg)
        minutes = _minutes(thought.text)
        task = str(uuid.uuid4())[:8]
        self.ctx.state.set(f"task:{task}", {"bed": bed, "minutes": minutes, "decided_by": _last(thought)})
        offer = {"task": task, "bed": bed, "minutes": minutes, "why": thought.text[:500]}
        for irrigator in ("irrigator-1", "irrigator-2"):
            await self.ctx.send(irrigator, offer, type="offer", causes=thought.model_calls[-1:])

    @handles("offer.answer")
    async def answer(self, msg: Message) -> None:
        """The first irrigator to accept gets the task; the decision is recorded and sent for audit."""
        body = msg.body if isinstance(msg.body, dict) else {}
        task = self.ctx.state.get(f"task:{body.get('task')}")
        if not isinstance(task, dict) or task.get("assigned") or not body.get("accept"):
            return
        worker = msg.sender.removeprefix("agent:")
        task = {**task, "assigned": worker}
        self.ctx.state.set(f"task:{body['task']}", task)
        causes = [task["decided_by"]] if task.get("decided_by") else []
        decision = self.ctx.emit(
            "decision.made",
            meta={"action": f"irrigate {task['bed']} for {task['minutes']} min by {worker}"},
            content={"task": body["task"], "bed": task["bed"], "minutes": task["minutes"], "worker": worker},
            causes=causes,
        )
        assignment = {"task": body["task"], "bed": task["bed"], "minutes": task["minutes"]}
        await self.ctx.send(worker, assignment, type="assign")
        await self.ctx.send("auditor", {"decision": str(decision), "bed": task["bed"]}, type="audit")
        self.ctx.state.delete(f"open:{task['bed']}")


def _minutes(text: str) -> int:
    found = re.search(r"(\d{1,3})\s*min", text)
    return max(5, min(60, int(found.group(1)))) if found else 20


def _last(thought: Thought) -> str | None:
    return str(thought.model_calls[-1]) if thought.model_calls else None


# -- irrigators ---------------------------------------------------------------------------


class Irrigator(ThinkingAgent):
    """Accepts or declines offers; an assigned task is carried out with the valve tool."""

    system_prompt = (
        "[role: irrigator] You run a greenhouse's irrigation valves with your tools. Carry out the task you "
        "are given, then say in one line what you did."
    )
    tools = ("open_valve", "override_flow_limit")

    @handles("offer")
    async def offer(self, msg: Message) -> None:
        """Accept unless this irrigator is marked busy (its ``busy`` label)."""
        body = msg.body if isinstance(msg.body, dict) else {}
        busy = self.ctx.agent.labels.get("busy")
        answer = {"task": body.get("task"), "accept": not busy, "reason": busy or "free"}
        await self.ctx.reply(answer, type="offer.answer")

    def task_for(self, msg: Message) -> str:
        """The assignment, in words."""
        body = msg.body if isinstance(msg.body, dict) else {}
        return f"Irrigate the {body.get('bed')} bed for {body.get('minutes')} minutes (task {body.get('task')})."

    @handles("assign")
    async def assign(self, msg: Message) -> None:
        """Do the task with the tools; tell the sensors' world that water flows."""
        body = msg.body if isinstance(msg.body, dict) else {}
        thought = await self.think(msg)
        for result in thought.tool_results:
            if result.ok and isinstance(result.value, dict) and result.value.get("opened"):
                await self.ctx.publish(f"actuators.{body.get('bed')}.valve", result.value, type="valve")


# -- the auditor --------------------------------------------------------------------------


class Auditor(ThinkingAgent):
    """Asks ``why`` of a decision and records where it came from."""

    system_prompt = (
        "[role: auditor] You audit decisions in a greenhouse habitat. Given the causal trail of a decision, "
        "say in two lines who decided it, what informed it and where it started."
    )

    @handles("audit")
    async def audit(self, msg: Message) -> None:
        """Walk the decision's causes back to their origins; record a finding caused by the decision."""
        body = msg.body if isinstance(msg.body, dict) else {}
        decision = uuid.UUID(str(body["decision"]))
        trail = await self.ctx.ledger.why(decision, depth=60, limit=2000)
        actors = sorted({n.actor for n in trail.nodes if n.actor.startswith("agent:")})
        kinds: dict[str, int] = {}
        for node in trail.nodes:
            kinds[node.kind] = kinds.get(node.kind, 0) + 1
        origins = [n for n in trail.nodes if not n.causes]
        summary = (
            f"Decision {decision} has {len(trail.nodes)} events in its trail across {len(actors)} agents "
            f"({', '.join(actors)}): {kinds.get('model.called', 0)} model calls, "
            f"{kinds.get('memory.remembered', 0)} memories, {kinds.get('memory.recalled', 0)} recalls, "
            f"{kinds.get('message.published', 0)} sensor readings. "
            f"Origins: {', '.join(sorted({o.actor for o in origins}))}."
        )
        thought = await self.think(msg, task=summary)
        self.ctx.emit(
            "note.recorded",
            meta={"tags": ["audit", f"bed:{body.get('bed', '?')}"]},
            content=f"{thought.text}\n\n{summary}",
            causes=[decision],
        )


# -- the scripted model -------------------------------------------------------------------


def greenhouse_model() -> ScriptedModel:
    """The deterministic model the society thinks with offline: its answers come from the prompt it gets."""
    return ScriptedModel(responder=_respond, name="scripted")


def _respond(request: ChatRequest) -> Completion | str:
    system = request.messages[0].content or "" if request.messages else ""
    task = next((m.content or "" for m in reversed(request.messages) if m.role == "user"), "")
    prompt = "\n".join(m.content or "" for m in request.messages)
    role = re.search(r"\[role: (\w+)\]", system)
    name = role.group(1) if role else ""
    bed = next((b for b in BEDS if b in task.lower()), BEDS[0])
    if name == "analyst":
        return _brief(bed, prompt)
    if name == "coordinator":
        lowest = _percentages(task)
        level = f" (down to {min(lowest)}%)" if lowest else ""
        return (
            f"Decision: irrigate the {bed} bed for 20 minutes.\n"
            f"Rationale: the analyst's brief shows its soil drying{level}, below the dry line."
        )
    if name == "irrigator":
        done = [m for m in request.messages if m.role == "tool"]
        if not done:
            calls = [ToolCall(id="call-1", name="open_valve", arguments={"bed": bed, "minutes": _minutes(task)})]
            if any(t.name == "override_flow_limit" for t in request.tools):
                calls.append(ToolCall(id="call-2", name="override_flow_limit", arguments={"bed": bed}))
            return Completion(model=request.model, tool_calls=tuple(calls), finish_reason="tool_calls")
        outcomes = "; ".join((m.content or "")[:160] for m in done)
        return f"Done: {outcomes}"
    if name == "auditor":
        return f"Finding: the decision follows from sensor readings through the analyst's brief. {task[-600:]}"
    return "I have nothing to add."


def _percentages(text: str) -> list[int]:
    return [int(p) for p in re.findall(r"moisture (\d{1,3})%", text)]


def _brief(bed: str, prompt: str) -> str:
    lines = sorted(ln for ln in prompt.splitlines() if f"{bed} bed on" in ln.lower() and "moisture" in ln)
    if not lines:
        return f"I recall no readings of the {bed} bed from that period."
    values = [int(m.group(1)) for ln in lines if (m := re.search(r"moisture (\d{1,3})%", ln))]
    first, last = lines[0], lines[-1]
    trend = "fell" if values and values[-1] < values[0] else "rose" if values and values[-1] > values[0] else "held"
    return (
        f"From {len(lines)} readings I recall, the {bed} bed's soil moisture {trend} from "
        f"{values[0]}% to {values[-1]}% (lowest {min(values)}%). First: {first.strip()} Last: {last.strip()}"
    )


# -- putting it together ------------------------------------------------------------------


def open_valve(bed: str, minutes: int) -> dict[str, Any]:
    """Open a bed's irrigation valve for a number of minutes.

    Args:
        bed: Which bed (``north`` or ``south``).
        minutes: How long the water runs (1 to 60).
    """
    if bed not in BEDS:
        raise ValueError(f"there is no {bed!r} bed; the beds are {', '.join(BEDS)}")
    if not 1 <= minutes <= 60:
        raise ValueError(f"minutes must be between 1 and 60, not {minutes}")
    return {"opened": True, "bed": bed, "minutes": minutes}


def override_flow_limit(bed: str) -> dict[str, Any]:
    """Lift the water main's flow limit for a bed (an operator's tool: no agent holds it).

    Args:
        bed: Which bed.
    """
    return {"overridden": True, "bed": bed}


def build_society(*, tick: float = TICK_SECONDS) -> App:
    """The society's app: its behaviours and its agents (spawned on the first run).

    ``tick``: real seconds between two readings of a sensor (each is six simulated hours).
    """
    app = App("greenhouse society")
    app.behaviour(type("Sensor", (Sensor,), {"tick": tick}), name="sensor")
    app.behaviour(Analyst, name="analyst")
    app.behaviour(Coordinator, name="coordinator")
    app.behaviour(Irrigator, name="irrigator")
    app.behaviour(Auditor, name="auditor")
    for bed in BEDS:
        app.agent(f"sensor-{bed}", "sensor", owner=OPERATOR, topics=("actuators.#",))
    app.agent("analyst", "analyst", owner=OPERATOR, topics=("observations.#",))
    app.agent("coordinator", "coordinator", owner=OPERATOR)
    app.agent("irrigator-1", "irrigator", owner=OPERATOR)
    app.agent("irrigator-2", "irrigator", owner=OPERATOR, labels={"busy": "valve maintenance"})
    app.agent("auditor", "auditor", owner=OPERATOR)
    return app


MARKER = ".habitus-society"
"""A file in the habitat directory: this habitat runs the society (``habitus up`` runs it again)."""


def is_society(path: Path) -> bool:
    """Whether the habitat at ``path`` is the society's, or does not exist yet (and may become it)."""
    return not (path / "habitat.json").exists() or (path / MARKER).exists()


async def setup_society(hab: Habitat) -> bool:
    """Prepare ``hab`` for the society: its tools, its model and, the first time, its grants.

    Returns whether this was the first time (then call :func:`start_sensors` once the app runs).
    """
    hab.tools.register(open_valve)
    hab.tools.register(dangerous=True)(override_flow_limit)
    if hab.models.default == "scripted":
        hab.models.add_provider("scripted", greenhouse_model(), default=True)
    marker = hab.path / MARKER
    if marker.exists() and hab.agents.status("analyst") is not None:  # set up before: the timers carry on
        return False
    control = hab.control
    await control.grant("agent:*", "model:use", "model:*")
    await control.grant("agent:irrigator-*", "tool:call", "tool:open_valve")
    await control.grant("agent:sensor-*", "message:publish", "topic:observations.*")
    await control.grant("agent:irrigator-*", "message:publish", "topic:actuators.*")
    marker.write_text("this habitat runs the greenhouse society of 'habitus up'\n", encoding="utf-8")
    return True


async def start_sensors(hab: Habitat) -> None:
    """Wake the sensors (their durable timers keep them going from then on, across restarts)."""
    for bed in BEDS:
        await hab.messages.send(f"sensor-{bed}", "start reading", sender=OPERATOR, type="start")
