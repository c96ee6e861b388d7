"""Programs as tools: arguments on stdin, the value from stdout, failures and limits as failed calls."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from habitus import Habitat
from habitus.errors import InvalidRequestError
from habitus.tools import SandboxLimits

WORDCOUNT = """\
import json, sys
args = json.load(sys.stdin)
if args.get("fail"):
    sys.stderr.write("cannot count that\\n")
    sys.exit(2)
if args.get("hog"):
    hoard = bytearray(1024 * 1024 * 1024)
if args.get("plain"):
    print("just text")
else:
    print(json.dumps({"words": len(args["text"].split())}))
"""

SCHEMA = {
    "type": "object",
    "properties": {
        "text": {"type": "string"},
        "fail": {"type": "boolean"},
        "hog": {"type": "boolean"},
        "plain": {"type": "boolean"},
    },
    "required": ["text"],
    "additionalProperties": False,
}


@pytest.fixture
def script(tmp_path: Path) -> str:
    path = tmp_path / "wordcount.py"
    path.write_text(WORDCOUNT)
    return str(path)


async def test_a_program_tool_takes_json_on_stdin_and_returns_its_stdout(hab: Habitat, script: str) -> None:
    tool = hab.tools.add_program(
        "wordcount", [sys.executable, script], description="Count the words of a text.", parameters=SCHEMA,
        limits=SandboxLimits(memory_mb=128),
    )  # fmt: skip
    assert tool.source == "program" and tool.limits is not None and tool.limits.memory_mb == 128
    assert hab.tools.specs(["wordcount"])[0].parameters == SCHEMA
    await hab.control.grant("agent:scout", "tool:call", "wordcount")
    result = await hab.tools.call("agent:scout", "wordcount", {"text": "the north bridge is closed"})
    assert result.ok and result.value == {"words": 5}
    called = await hab.ledger.get(result.called)
    assert called.meta == {"tool": "wordcount", "source": "program", "sandboxed": True}

    text = await hab.tools.call("agent:scout", "wordcount", {"text": "x", "plain": True})
    assert text.value == "just text"  # not JSON: the text


async def test_a_failing_program_or_one_stopped_by_a_limit_is_a_failed_call(hab: Habitat, script: str) -> None:
    hab.tools.add_program(
        "wordcount", [sys.executable, script], description="Count words.", parameters=SCHEMA,
        limits=SandboxLimits(memory_mb=128),
    )  # fmt: skip
    failed = await hab.tools.call("system", "wordcount", {"text": "x", "fail": True})
    assert failed.error is not None and failed.error.type == "exit_status" and failed.error.exit_code == 2
    assert failed.error.message == "tool 'wordcount' exited with status 2: cannot count that"
    assert failed.error.stderr == "cannot count that\n"
    event = await hab.ledger.get(failed.result)
    assert event.meta["error"] == "exit_status" and event.meta["exit_code"] == 2
    assert event.content == {"message": failed.error.message, "stderr": "cannot count that\n"}

    hog = await hab.tools.call("system", "wordcount", {"text": "x", "hog": True})
    assert hog.error is not None and (hog.error.type, hog.error.limit) == ("limit", "memory")
    assert "it ran out of its 128 MiB of memory" in hog.error.message
    assert (await hab.ledger.get(hog.result)).meta["limit"] == "memory"

    bad = await hab.tools.call("system", "wordcount", {"txt": "x"})
    assert bad.error is not None and bad.error.type == "invalid_arguments"


async def test_program_tools_are_checked_when_added(hab: Habitat, script: str) -> None:
    with pytest.raises(
        InvalidRequestError, match="program 'no-such-tool-xyz' of tool 'x' is not on the sandbox's PATH"
    ):
        hab.tools.add_program("x", ["no-such-tool-xyz"], description="")
    with pytest.raises(InvalidRequestError, match="does not exist"):
        hab.tools.add_program("x", ["/nowhere/tool"], description="")
    with pytest.raises(InvalidRequestError, match="must be a JSON schema of an object"):
        hab.tools.add_program("x", [sys.executable, script], description="", parameters={"type": "string"})
    with pytest.raises(InvalidRequestError, match="is not a valid JSON schema"):
        hab.tools.add_program(
            "x", [sys.executable, script], description="", parameters={"type": "object", "required": 3}
        )
    echo = hab.tools.add_program("echo", ["cat"], description="Echo the arguments back.")
    assert echo.parameters == {"type": "object", "properties": {}}
    result = await hab.tools.call("system", "echo", {"anything": [1, 2]})
    assert result.value == {"anything": [1, 2]}
