"""Programs run sandboxed: each limit stops them and is reported, and they cannot reach the habitat.

Every test runs under each mechanism this machine supports (bubblewrap, Landlock, and
plain limits); the isolation tests skip the mechanisms that do not isolate. Set
``CI_REQUIRE_BWRAP=1`` to make a missing or unusable bubblewrap fail instead of skip.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from habitus.errors import InvalidRequestError
from habitus.tools import SandboxLimits, _sandbox, run_sandboxed
from habitus.tools._confine import landlock_abi

PY = sys.executable


def _bwrap_works() -> bool:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return False
    trial = [bwrap, "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "--", "true"]
    return subprocess.run(trial, capture_output=True, check=False, timeout=30).returncode == 0


@pytest.fixture(params=["bwrap", "landlock", "none"])
def mechanism(request: pytest.FixtureRequest) -> Iterator[str]:
    """Force each sandbox mechanism in turn (skipping those this machine lacks)."""
    name = request.param
    if name == "bwrap" and not _bwrap_works():
        if os.environ.get("CI_REQUIRE_BWRAP"):
            pytest.fail(
                "bubblewrap is required here (CI_REQUIRE_BWRAP) but missing or unusable: apt-get install bubblewrap"
            )
        pytest.skip("bubblewrap is not installed or cannot create namespaces here")
    if name == "landlock" and landlock_abi() < 1:
        pytest.skip("the kernel offers no Landlock")
    _sandbox._force(name)
    try:
        yield name
    finally:
        _sandbox._reset_detection()


def isolating(mechanism: str) -> None:
    if mechanism == "none":
        pytest.skip("plain limits isolate nothing more (the documented gap)")


async def python(code: str, *args: str, limits: SandboxLimits | None = None, **kw: object) -> _sandbox.SandboxResult:
    return await run_sandboxed([PY, "-c", code, *args], limits=limits, **kw)  # type: ignore[arg-type]


async def test_a_program_runs_in_a_fresh_empty_folder_with_a_clean_environment(
    mechanism: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HABITUS_TEST_SECRET", "s3cret-value")
    code = (
        "import os, sys, json\n"
        "print(json.dumps({'cwd': os.getcwd(), 'home': os.environ['HOME'], 'files': sorted(os.listdir('.')),\n"
        "  'env': sorted(os.environ), 'in': sys.stdin.read(), 'extra': os.environ.get('GREETING'),\n"
        "  'data': open('data/input.txt').read()}))\n"
    )
    result = await python(code, stdin=b"hello", env={"GREETING": "hi"}, files={"data/input.txt": "42"})
    assert result.ok, result.stderr
    assert result.mechanism == mechanism
    import json

    seen = json.loads(result.stdout)
    assert seen["home"] == seen["cwd"] and seen["files"] == ["data"]
    assert set(seen["env"]) <= {"PATH", "HOME", "TMPDIR", "LANG", "GREETING", "PWD", "LC_CTYPE"}
    assert (seen["in"], seen["extra"], seen["data"]) == ("hello", "hi", "42")
    assert b"s3cret-value" not in result.stdout
    assert not Path(seen["cwd"]).exists()  # the folder is deleted afterwards
    assert {"rlimits", "clean_env"} <= set(result.isolation)


async def test_too_much_memory_is_stopped_and_reported(mechanism: str) -> None:
    result = await python("x = bytearray(1024 * 1024 * 1024)\nprint('allocated')", limits=SandboxLimits(memory_mb=128))
    assert result.limit == "memory" and result.exit_code != 0
    assert b"allocated" not in result.stdout


async def test_too_much_cpu_is_stopped_and_reported(mechanism: str) -> None:
    result = await python("while True:\n    pass", limits=SandboxLimits(cpu_seconds=1, wall_seconds=30))
    assert result.limit == "cpu" and result.exit_code < 0


async def test_too_much_wall_clock_time_kills_the_process_group(mechanism: str) -> None:
    code = "import subprocess, time\nsubprocess.Popen(['sleep', '300'])\ntime.sleep(300)"
    result = await python(code, limits=SandboxLimits(wall_seconds=0.5))
    assert result.limit == "wall" and result.exit_code < 0


async def test_too_large_a_file_is_stopped_and_reported(mechanism: str) -> None:
    code = "open('big.bin', 'wb').write(b'x' * (4 * 1024 * 1024))\nprint('written')"
    result = await python(code, limits=SandboxLimits(file_mb=1))
    assert result.limit == "file_size" and result.exit_code != 0
    assert b"written" not in result.stdout


async def test_too_much_output_is_cut_off_and_reported(mechanism: str) -> None:
    code = "import sys\nwhile True:\n    sys.stdout.write('y' * 4096)"
    result = await python(code, limits=SandboxLimits(max_output_bytes=10_000))
    assert result.limit == "output" and len(result.stdout) == 10_000


async def test_a_failing_program_is_a_result_and_a_missing_one_an_error(mechanism: str) -> None:
    result = await python("import sys\nsys.stderr.write('bad input\\n')\nsys.exit(3)")
    assert (result.exit_code, result.limit, result.stderr) == (3, None, b"bad input\n") and not result.ok
    with pytest.raises(InvalidRequestError, match="program 'no-such-program-xyz' was not found"):
        await run_sandboxed(["no-such-program-xyz"])
    with pytest.raises(InvalidRequestError, match="relative paths inside the folder"):
        await run_sandboxed(["true"], files={"../escape": "x"})


async def test_it_cannot_write_outside_its_folder(mechanism: str, tmp_path: Path) -> None:
    isolating(mechanism)
    home = Path.home() / f".habitus-sandbox-probe-{os.getpid()}"
    targets = [tmp_path / "owned-by-the-test.txt", home, Path("/tmp") / f"habitus-probe-{os.getpid()}"]
    code = (
        "import sys\n"
        "for target in sys.argv[1:]:\n"
        "    try:\n"
        "        open(target, 'w').write('pwned')\n"
        "        print('wrote', target)\n"
        "    except OSError as exc:\n"
        "        print('refused', target, type(exc).__name__)\n"
    )
    result = await python(code, *map(str, targets))
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert lines[0].startswith(f"refused {targets[0]}") and lines[1].startswith(f"refused {home}")
    assert not any(t.exists() for t in targets)  # /tmp may be the sandbox's own, but never the habitat's
    assert "filesystem" in result.isolation


async def test_it_cannot_read_the_habitats_environment(mechanism: str, monkeypatch: pytest.MonkeyPatch) -> None:
    isolating(mechanism)
    monkeypatch.setenv("HABITUS_TEST_SECRET", "s3cret-value")
    code = (
        "import os, sys\n"
        "print(os.environ.get('HABITUS_TEST_SECRET'))\n"
        "for pid in (os.getppid(), int(sys.argv[1]), 1):\n"
        "    try:\n"
        "        print(open(f'/proc/{pid}/environ', 'rb').read())\n"
        "    except OSError as exc:\n"
        "        print('refused', pid, type(exc).__name__)\n"
    )
    result = await python(code, str(os.getpid()))
    assert result.exit_code == 0, result.stderr
    assert b"s3cret" not in result.stdout
    assert result.stdout.startswith(b"None\n")
    assert b"refused" in result.stdout  # the habitat's own process is out of reach


async def test_it_has_no_network(mechanism: str) -> None:
    isolating(mechanism)
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        code = (
            "import socket, sys\n"
            "try:\n"
            "    socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=3)\n"
            "    print('connected')\n"
            "except OSError as exc:\n"
            "    print('refused', type(exc).__name__)\n"
        )
        result = await python(code, str(port))
        allowed = await python(code, str(port), limits=SandboxLimits(network=True))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(b"refused")
    assert {"network", "network_tcp"} & set(result.isolation)
    assert allowed.stdout == b"connected\n", allowed.stderr  # unless a tool's limits allow it
    assert not {"network", "network_tcp"} & set(allowed.isolation)


async def test_the_process_limit_applies_where_it_is_enforced(mechanism: str) -> None:
    code = (
        "import os, time\n"
        "started = 0\n"
        "try:\n"
        "    for _ in range(64):\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(2)\n"
        "            os._exit(0)\n"
        "        started += 1\n"
        "except OSError:\n"
        "    pass\n"
        "print(started)\n"
    )
    result = await python(code, limits=SandboxLimits(processes=8, wall_seconds=10))
    if "nproc" not in result.isolation:
        pytest.skip("the kernel does not apply RLIMIT_NPROC to root outside a sandbox that changes user")
    assert int(result.stdout.split()[0]) < 8


async def test_partial_isolation_is_reported_and_warned_about_once(caplog: pytest.LogCaptureFixture) -> None:
    _sandbox._force("none")
    try:
        with caplog.at_level(logging.WARNING, logger="habitus.tools"):
            first = await python("print(1)")
            await python("print(2)")
    finally:
        _sandbox._reset_detection()
    assert "filesystem" not in first.isolation and first.mechanism == "none"
    warnings = [r.getMessage() for r in caplog.records if "sandboxed programs run without" in r.getMessage()]
    assert len(warnings) == 1 and "filesystem" in warnings[0]


async def test_this_machine_isolates(tmp_path: Path) -> None:
    """What the lead's CI relies on: on Linux with Landlock or bubblewrap, programs are isolated."""
    if landlock_abi() < 1 and not _bwrap_works():
        pytest.skip("neither bubblewrap nor Landlock here")
    _sandbox._reset_detection()
    result = await python("print('ok')")
    assert result.ok and result.mechanism in ("bwrap", "landlock")
    assert "filesystem" in result.isolation


async def test_cancelling_the_caller_kills_the_program(mechanism: str) -> None:
    code = "import sys, time\nprint('started', flush=True)\ntime.sleep(600)"
    run = asyncio.create_task(python(code, limits=SandboxLimits(wall_seconds=600)))
    await asyncio.sleep(0.5)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(run, 120)  # not the program's 600 s: it was killed
