"""The ``habitus`` command, run in-process with click's runner and once as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from habitus import Settings, SyncHabitat
from habitus._cli import cli, main


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
def habitat_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "hab"
    result = run("init", str(path), "--name", "test")
    assert result.exit_code == 0, result.output
    return path


def _fill(path: Path) -> list[uuid.UUID]:
    settings = Settings.resolve(config_file=None, environ={}, path=path)
    with SyncHabitat.open(path, settings=settings) as hab:
        a = hab.ledger.append("message.sent", actor="human:ada", content="check it", meta={"to": "agent:scout"})
        b = hab.ledger.append("observation.recorded", actor="agent:scout", content="it is hot", causes=[a])
        c = hab.ledger.append("decision.made", actor="agent:planner", meta={"action": "vent"}, causes=[b])
        return [a.id, b.id, c.id]


def test_init_creates_a_habitat_and_refuses_to_overwrite(habitat_path: Path) -> None:
    assert (habitat_path / "habitat.json").exists()
    again = run("init", str(habitat_path))
    assert again.exit_code == 4
    assert "already holds a habitat" in again.output
    assert "Traceback" not in again.output


def test_log_prints_a_table_and_json_lines_with_filters(habitat_path: Path) -> None:
    ids = _fill(habitat_path)
    table = run("-H", str(habitat_path), "log")
    assert table.exit_code == 0
    assert "SEQ" in table.output and "agent:scout" in table.output and "→ agent:scout: check it" in table.output
    lines = run("-H", str(habitat_path), "log", "--json", "--actor", "agent:scout").output.splitlines()
    assert [json.loads(line)["id"] for line in lines] == [str(ids[1])]
    family = run("-H", str(habitat_path), "log", "--json", "--kind", "message.*").output.splitlines()
    assert [json.loads(line)["kind"] for line in family] == ["message.sent"]
    page = run("-H", str(habitat_path), "log", "-n", "2")
    assert "--cursor 2" in page.output


def test_why_and_effects_draw_trees(habitat_path: Path) -> None:
    a, b, c = _fill(habitat_path)
    why = run("-H", str(habitat_path), "why", str(c))
    assert why.exit_code == 0
    lines = why.output.splitlines()
    assert lines[0].startswith("#4 decision.made")
    assert lines[1].startswith("└── #3 observation.recorded")
    assert lines[2].startswith("    └── #2 message.sent")
    effects = run("-H", str(habitat_path), "effects", str(a), "--json")
    assert {n["id"] for n in json.loads(effects.output)["nodes"]} == {str(a), str(b), str(c)}


def test_verify_reports_ok_then_the_first_bad_seq(habitat_path: Path) -> None:
    import sqlite3

    _fill(habitat_path)
    ok = run("-H", str(habitat_path), "verify")
    assert ok.exit_code == 0 and ok.output.startswith("OK: 4 events")
    conn = sqlite3.connect(habitat_path / "ledger.db", isolation_level=None)
    conn.execute("UPDATE events SET actor = 'agent:mallory' WHERE seq = 3")
    conn.close()
    bad = run("-H", str(habitat_path), "verify")
    assert bad.exit_code == 6
    assert "first bad seq is 3" in bad.output


def test_checkpoint_signs_exports_and_lists(habitat_path: Path, tmp_path: Path) -> None:
    _fill(habitat_path)
    out = tmp_path / "cp.json"
    result = run("-H", str(habitat_path), "checkpoint", "--export", str(out))
    assert result.exit_code == 0 and "checkpoint: 4 events" in result.output
    exported = json.loads(out.read_text())
    assert exported["tree_size"] == 4 and len(exported["signature"]) == 128
    listed = run("-H", str(habitat_path), "checkpoint", "--list")
    assert listed.output.split()[0] == "1" and "4" in listed.output.split()


def test_erase_removes_content_and_keeps_verification(habitat_path: Path) -> None:
    a, _, _ = _fill(habitat_path)
    result = run("-H", str(habitat_path), "erase", str(a), "--reason", "privacy", "--by", "human:ada")
    assert result.exit_code == 0, result.output
    assert "content.erased" in result.output
    shown = run("-H", str(habitat_path), "show", str(a), "--json")
    assert json.loads(shown.output)["erased"] is True
    assert run("-H", str(habitat_path), "verify").exit_code == 0
    missing_reason = run("-H", str(habitat_path), "erase", str(a))
    assert missing_reason.exit_code == 2 and "--reason" in missing_reason.output


def test_proof_prints_a_verifiable_audit_path(habitat_path: Path) -> None:
    from habitus import verify_inclusion

    _, b, _ = _fill(habitat_path)
    proof = json.loads(run("-H", str(habitat_path), "proof", str(b)).output)
    assert verify_inclusion(
        bytes.fromhex(proof["leaf"]),
        proof["seq"] - 1,
        proof["tree_size"],
        [bytes.fromhex(p) for p in proof["path"]],
        bytes.fromhex(proof["root"]),
    )


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (("log",), 3, "is not a habitat"),
        (("why", "not-an-id"), 2, "'not-an-id' is not an event id"),
        (("why", str(uuid.UUID(int=5))), 3, "no event with id"),
        (("log", "--since", "yesterday"), 2, "ISO 8601"),
        (("log", "--kind", "no.such"), 2, "not registered"),
    ],
)
def test_errors_are_one_clean_line_with_a_nonzero_code(
    habitat_path: Path, args: tuple[str, ...], code: int, fragment: str
) -> None:
    target = habitat_path if args != ("log",) else habitat_path.parent / "elsewhere"
    result = run("-H", str(target), *args)
    assert result.exit_code == code, result.output
    assert fragment in result.output
    assert "Traceback" not in result.output


def test_settings_come_from_habitus_toml_and_environment(habitat_path: Path, tmp_path: Path) -> None:
    (tmp_path / "habitus.toml").write_text(f'path = "{habitat_path}"\n')
    assert run("log").exit_code == 0
    env_result = run("log", env={"HABITUS_PATH": str(tmp_path / "nowhere")})
    assert env_result.exit_code == 3 and "nowhere" in env_result.output
    (tmp_path / "habitus.toml").write_text("colour = 'blue'\n")
    bad = run("log")
    assert bad.exit_code == 2 and "unknown setting 'colour'" in bad.output


def test_writing_while_another_process_writes_is_a_clear_error(habitat_path: Path) -> None:
    settings = Settings.resolve(config_file=None, environ={}, path=habitat_path)
    with SyncHabitat.open(habitat_path, settings=settings):
        result = run("-H", str(habitat_path), "checkpoint")
        assert result.exit_code == 4
        assert "open for writing by another process" in result.output
        assert run("-H", str(habitat_path), "log").exit_code == 0  # reading still works


def test_demo_runs_end_to_end_as_a_real_command(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "habitus"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HABITUS_")}
    done = subprocess.run(
        [str(exe), "demo", "--path", str(tmp_path / "demo")], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "Why did the last event happen?" in done.stdout
    assert "[content erased]" in done.stdout
    assert "Verification: OK" in done.stdout
    assert "message.sent  human:ada" in done.stdout  # the trail reaches the person's request
    again = subprocess.run(
        [str(exe), "demo", "--path", str(tmp_path / "demo")], capture_output=True, text=True, env=env, timeout=120
    )
    assert again.returncode == 0, "the demo replaces its own earlier habitat"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("keep me")
    refused = subprocess.run(
        [str(exe), "demo", "--path", str(tmp_path / "mine")], capture_output=True, text=True, env=env, timeout=120
    )
    assert refused.returncode == 4 and "not made by 'habitus demo'" in refused.stderr
    assert (tmp_path / "mine" / "precious.txt").read_text() == "keep me"


def test_help_lists_every_command() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    for name in ("init", "log", "show", "why", "effects", "verify", "checkpoint", "erase", "proof", "demo"):
        assert name in result.output
