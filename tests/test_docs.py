"""The docs are a tested contract: every kind, command, option and setting is documented,
and the README's Python example runs as written."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import click
import pytest

from habitus import Settings
from habitus._cli import cli
from habitus.ledger import all_kinds

DOCS = Path(__file__).resolve().parent.parent / "docs"
README = DOCS.parent / "README.md"


def test_every_registered_kind_is_documented_and_nothing_else() -> None:
    text = (DOCS / "kinds.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `([a-z_.]+)` \|", text, flags=re.MULTILINE))
    assert documented == {k.name for k in all_kinds()}
    for kind in all_kinds():
        assert kind.summary in text, f"kinds.md should describe {kind.name} as: {kind.summary}"


def test_every_command_and_option_is_documented() -> None:
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    assert isinstance(cli, click.Group)
    for name, command in cli.commands.items():
        assert f"## `habitus {name}" in text, f"docs/cli.md lacks a section for {name}"
        for param in command.params:
            if isinstance(param, click.Option):
                assert any(opt in text for opt in param.opts), f"docs/cli.md lacks {name} {param.opts}"
    for param in cli.params:
        if isinstance(param, click.Option):
            assert any(opt in text for opt in param.opts)


def test_every_setting_is_documented() -> None:
    text = (DOCS / "settings.md").read_text(encoding="utf-8")
    for name in Settings.model_fields:
        assert f"| `{name}` |" in text, f"docs/settings.md lacks {name}"


def test_readme_starts_with_exactly_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    first_block = re.search(r"```sh\n(.*?)```", text, flags=re.DOTALL)
    assert first_block is not None and text.index("```sh") < text.index("\n## ")
    commands = [line for line in first_block.group(1).splitlines() if line.strip()]
    assert [c.split("#")[0].strip() for c in commands] == ["./dev up", "./dev test"]
    assert (README.parent / ".ci" / "run").read_text().count("./dev test") == 1


def _run_readme_block(
    pick: Callable[[list[str]], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> list[str]:
    """Run the README's Python block that ``pick`` chooses, in an empty folder without HABITUS_*; its output lines."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)
    assert blocks
    monkeypatch.chdir(tmp_path)
    for env in [k for k in os.environ if k.startswith("HABITUS_")]:
        monkeypatch.delenv(env)
    exec(compile(pick(blocks), "README.md", "exec"), {"__name__": "readme"})
    return capsys.readouterr().out.splitlines()


def test_readme_python_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _run_readme_block(lambda blocks: blocks[0], tmp_path, monkeypatch, capsys)
    assert out == ["['message.sent']", "True"]


def test_readme_memory_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _run_readme_block(lambda blocks: next(b for b in blocks if "mem.recall" in b), tmp_path, monkeypatch, capsys)
    assert out == ["The north bridge is closed for repairs ['dense', 'time']", "['closed', 'open']"]


def test_readme_thinking_agent_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _run_readme_block(
        lambda blocks: next(b for b in blocks if "ThinkingAgent" in b), tmp_path, monkeypatch, capsys
    )
    assert out == ["Tomorrow: sunny, 21 °C.", "['model.called', 'tool.called', 'tool.returned']"]


def test_the_agent_examples_define_working_apps(tmp_path: Path) -> None:
    import asyncio

    from habitus import App, Habitat

    app: App | None = None
    for doc, expected in ((DOCS / "agents.md", ["Scout", "planner"]), (README, ["Greeter"])):
        blocks = re.findall(r"```python\n(.*?)```", doc.read_text(encoding="utf-8"), flags=re.DOTALL)
        namespace: dict[str, object] = {}
        exec(compile(blocks[0] if doc != README else blocks[1], str(doc), "exec"), namespace)
        found = namespace["app"]
        assert isinstance(found, App) and found.behaviours == expected
        app = found
    assert app is not None

    async def greet() -> str:
        settings = Settings.resolve(config_file=None, environ={}, path=tmp_path / "h")
        async with await Habitat.init(settings.path, settings=settings) as hab:
            await hab.start(app)
            reply = await hab.messages.request("greeter", "Ada", sender="human:ada", type="greet", timeout=5)
            return str(reply.body)

    assert asyncio.run(greet()) == "hello Ada, visitor number 1"


def test_readme_control_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    text = README.read_text(encoding="utf-8")
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL) if "acting_as" in b)
    monkeypatch.chdir(tmp_path)
    for env in [k for k in __import__("os").environ if k.startswith("HABITUS_")]:
        monkeypatch.delenv(env)
    exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "agent:helper may not memory:read scope:agent:scout: "
        "no capability lets agent:helper memory:read scope:agent:scout",
        "The spare key is under the blue pot",
    ]
