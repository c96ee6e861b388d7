"""The example in docs/thinking.md runs as written, offline (the gateway's default scripted model answers)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

from habitus import App, Habitat

DOC = Path(__file__).resolve().parents[2] / "docs" / "thinking.md"


async def test_the_thinking_agent_example_answers_a_request(hab: Habitat) -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.DOTALL)
    defining = next(b for b in blocks if "app = App(" in b)
    running = next(b for b in blocks if "await hab.start(app)" in b)
    namespace: dict[str, Any] = {}
    exec(compile(defining, str(DOC), "exec"), namespace)
    app = namespace["app"]
    assert isinstance(app, App) and app.behaviours == ["Analyst"]

    # the second block uses top-level await: run it as the body of a coroutine
    body = "async def example(hab):\n" + textwrap.indent(running, "    ") + "\n    return reply\n"
    exec(compile(body, str(DOC), "exec"), namespace)
    reply = await namespace["example"](hab)
    assert str(reply.body).startswith('You said: "human:ada says:')  # the scripted model quotes the task
    (called,) = (await hab.ledger.query(kind="model.called")).events
    assert called.meta["provider"] == "scripted" and called.actor == "agent:analyst"
