"""Programs as tools: each call runs the program sandboxed, arguments on stdin, the value from stdout."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

from habitus.errors import HabitatError, InvalidRequestError
from habitus.tools._sandbox import SANDBOX_PATH, SandboxLimits, SandboxResult, run_sandboxed
from habitus.tools._schema import ArgumentsError, check_arguments, check_schema
from habitus.tools._tool import Tool, ToolFailed, ToolFailure

__all__ = ["program_tool"]

_STDERR_EXCERPT = 2000
_LIMIT_MESSAGES = {
    "cpu": "it used all of its {cpu} s of CPU time",
    "memory": "it ran out of its {memory} MiB of memory",
    "wall": "it ran past its {wall} s of wall-clock time and was killed",
    "file_size": "it tried to write a file larger than {file} MiB",
    "output": "it wrote more than {output} bytes of output",
}


def program_tool(
    tool_name: str,
    argv: Sequence[str],
    *,
    description: str,
    parameters: Mapping[str, Any] | None,
    limits: SandboxLimits | None,
    dangerous: bool,
) -> Tool:
    """The tool that runs ``argv`` sandboxed (see :meth:`habitus.tools.ToolRegistry.add_program`).

    Raises:
        InvalidRequestError: An empty ``argv``, a program that is not there, or a schema that is not an object's.
    """
    program = list(argv)
    if not program or not all(isinstance(a, str) and a for a in program):
        raise InvalidRequestError(f"argv must be a non-empty list of non-empty strings, not {argv!r}")
    if "/" in program[0]:
        if not os.path.isfile(program[0]):
            raise InvalidRequestError(f"program {program[0]!r} of tool {tool_name!r} does not exist")
    elif shutil.which(program[0], path=SANDBOX_PATH) is None:
        raise InvalidRequestError(
            f"program {program[0]!r} of tool {tool_name!r} is not on the sandbox's PATH ({SANDBOX_PATH}); "
            "give its absolute path"
        )
    schema = dict(parameters) if parameters is not None else {"type": "object", "properties": {}}
    check_schema(schema, what=f"parameters of tool {tool_name!r}")
    box = limits or SandboxLimits()

    async def invoke(arguments: dict[str, Any]) -> Any:
        try:
            check_arguments(schema, arguments)
        except ArgumentsError as exc:
            raise ToolFailed(ToolFailure(type="invalid_arguments", message=str(exc))) from None
        try:
            done = await run_sandboxed(program, stdin=json.dumps(arguments).encode(), limits=box)
        except HabitatError as exc:
            raise ToolFailed(ToolFailure(type="unavailable", message=str(exc))) from None
        return _program_value(tool_name, done, box)

    return Tool(
        name=tool_name,
        description=description,
        parameters=schema,
        source="program",
        dangerous=dangerous,
        limits=box,
        _invoke=invoke,
    )


def _program_value(name: str, done: SandboxResult, limits: SandboxLimits) -> Any:
    """A program's stdout as the value, or its failure (a limit, or a non-zero exit)."""
    stderr = done.stderr.decode(errors="replace")
    excerpt = stderr[-_STDERR_EXCERPT:]
    if done.limit is not None:
        message = _LIMIT_MESSAGES[done.limit].format(
            cpu=limits.cpu_seconds,
            memory=limits.memory_mb,
            wall=limits.wall_seconds,
            file=limits.file_mb,
            output=limits.max_output_bytes,
        )
        raise ToolFailed(
            ToolFailure(
                type="limit",
                limit=done.limit,
                message=f"tool {name!r} was stopped: {message}",
                exit_code=done.exit_code,
                stderr=excerpt,
            )
        )
    if done.exit_code != 0:
        last = next((line for line in reversed(stderr.splitlines()) if line.strip()), "")
        how = (
            f"was killed by signal {-done.exit_code}" if done.exit_code < 0 else f"exited with status {done.exit_code}"
        )
        raise ToolFailed(
            ToolFailure(
                type="exit_status",
                message=f"tool {name!r} {how}" + (f": {last.strip()}" if last else ""),
                exit_code=done.exit_code,
                stderr=excerpt,
            )
        )
    text = done.stdout.decode(errors="replace")
    try:
        return json.loads(text, parse_constant=_no_constant)
    except ValueError:
        return text.rstrip("\n")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON data")  # NaN and Infinity: the output is text, then
