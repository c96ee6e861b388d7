"""The server's commands: tokens, and `habitus up` as a real process a person starts and stops."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.test_cli import run


def _run(path: Path, *args: str) -> tuple[int, str]:
    result = run("-H", str(path), *args)
    return result.exit_code, result.output


def test_tokens_are_created_listed_and_revoked(tmp_path: Path) -> None:
    path = tmp_path / "hab"
    assert _run(path, "init")[0] == 0
    code, out = _run(path, "token", "create", "--principal", "human:ada", "--name", "laptop")
    assert code == 0
    secret = out.splitlines()[0]
    assert re.fullmatch(r"hab_[0-9a-f]{12}_[A-Za-z0-9_-]+", secret)
    token_id = secret.split("_")[1]
    code, listed = _run(path, "token", "list")
    assert code == 0 and token_id in listed and "human:ada" in listed and "laptop" in listed
    assert secret not in listed and secret not in (path / "ledger.db").read_bytes().decode("latin-1")
    assert _run(path, "token", "revoke", token_id)[0] == 0
    assert token_id not in _run(path, "token", "list")[1]
    code, out = _run(path, "token", "create", "--principal", "bob")
    assert code == 2 and "'bob'" in out


def test_a_development_principal_is_refused_off_loopback(tmp_path: Path) -> None:
    path = tmp_path / "hab"
    _run(path, "init")
    code, out = _run(path, "serve", "--host", "0.0.0.0", "--port", "0", "--dev-principal", "human:ada")
    assert code == 2 and "loopback" in out


def test_up_serves_the_habitat_prints_the_address_and_stops_cleanly(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HABITUS_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "habitus._cli", "-H", str(tmp_path / "hab"), "up", "--port", "0", "--as", "human:ada"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 60
        url = None
        while url is None and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            found = re.search(r"(http://127\.0\.0\.1:\d+)/\?token=(\S+)", line)
            if found:
                url = found.groups()
        assert url is not None, "".join(lines)
        base, secret = url
        headers = {"Authorization": f"Bearer {secret}"}
        assert httpx.get(f"{base}/v1/whoami", headers=headers, timeout=10).json() == {"principal": "human:ada"}
        assert httpx.get(f"{base}/v1/whoami", timeout=10).status_code == 401
        assert "greenhouse" in "".join(lines)  # a new habitat gets the demo's trail to look at
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=30)
        assert process.returncode == 0 and "stopped; the habitat is closed" in rest
    finally:
        if process.poll() is None:
            process.kill()
    code, listed = _run(tmp_path / "hab", "token", "list")
    assert code == 0 and "dashboard (habitus up)" not in listed  # its token died with it
