"""What a model sees of a Python function, and the check its arguments pass before it runs.

:func:`function_schema` turns a function's signature into a JSON schema of
its arguments (through a Pydantic model built from its type hints, so enums,
lists, optional values, nested models and defaults come out as a model
expects them) and its Google-style docstring into descriptions: the text
before the first section describes the tool, and each entry of ``Args:``
describes its parameter. :meth:`FunctionSchema.validate` checks arguments
against the same model and says, in one line an agent can act on, what was
wrong. :func:`check_arguments` does the same for tools described by a JSON
schema only (programs, MCP servers' tools).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic.errors import PydanticSchemaGenerationError, PydanticUserError
from pydantic.json_schema import PydanticJsonSchemaWarning

from habitus.errors import InvalidRequestError

__all__ = ["ArgumentsError", "FunctionSchema", "check_arguments", "check_schema", "function_schema", "parse_docstring"]

_ARGS_SECTIONS = {"args", "arguments", "parameters", "params", "keyword args", "keyword arguments"}
_SECTIONS = _ARGS_SECTIONS | {
    "returns",
    "return",
    "yields",
    "raises",
    "examples",
    "example",
    "note",
    "notes",
    "attributes",
    "see also",
    "warning",
    "warnings",
    "todo",
    "references",
}
_SECTION = re.compile(r"^([A-Za-z][A-Za-z ]*):\s*$")
_ENTRY = re.compile(r"^\*{0,2}(\w+)\s*(?:\(([^)]*)\))?\s*:\s*(.*)$")


class ArgumentsError(ValueError):
    """Arguments that do not fit a tool's schema; the message says which and why, for the agent to fix."""


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """Split a Google-style docstring into the description and the ``Args:`` entries.

    Returns:
        The text before the first section (soft-wrapped lines joined, paragraphs
        kept), and each documented parameter's description.
    """
    lines = inspect.cleandoc(doc or "").splitlines()
    intro: list[str] = []
    params: dict[str, str] = {}
    section: str | None = None
    entry_indent: int | None = None
    current: str | None = None
    for line in lines:
        header = _SECTION.match(line)
        if header and header.group(1).strip().lower() in _SECTIONS:
            section = header.group(1).strip().lower()
            entry_indent, current = None, None
            continue
        if section is None:
            intro.append(line)
            continue
        if section not in _ARGS_SECTIONS or not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if entry_indent is None:
            entry_indent = indent
        entry = _ENTRY.match(line.strip()) if indent <= entry_indent else None
        if entry:
            current = entry.group(1)
            params[current] = entry.group(3).strip()
        elif current is not None:
            params[current] = f"{params[current]} {line.strip()}".strip()
    paragraphs = [" ".join(p.split()) for p in "\n".join(intro).split("\n\n")]
    return "\n\n".join(p for p in paragraphs if p), params


def _strip_titles(node: Any, *, names: bool = False) -> Any:
    """The schema without Pydantic's generated ``title`` keys (noise to a model); property names stay."""
    if isinstance(node, dict):
        return {
            key: _strip_titles(value, names=key in ("properties", "$defs") and not names)
            for key, value in node.items()
            if names or not (key == "title" and isinstance(value, str))
        }
    if isinstance(node, list):
        return [_strip_titles(item) for item in node]
    return node


@dataclass(frozen=True)
class FunctionSchema:
    """A function's arguments as a JSON schema, with the model that validates them.

    Attributes:
        description: From the docstring (the text before its first section).
        parameters: JSON schema of the arguments (an object; unknown arguments refused).
        model: The Pydantic model that validates arguments.
        names: The parameters, in order.
        positional_only: Those that must be passed by position.
    """

    description: str
    parameters: dict[str, Any]
    model: type[BaseModel]
    names: tuple[str, ...]
    positional_only: frozenset[str]

    def validate(self, arguments: Any) -> tuple[list[Any], dict[str, Any]]:
        """Check and convert ``arguments`` (a JSON object); return the call's positional and keyword arguments.

        Raises:
            ArgumentsError: What was wrong, naming each argument.
        """
        if not isinstance(arguments, Mapping):
            raise ArgumentsError(f"arguments must be a JSON object, not {type(arguments).__name__}")
        try:
            validated = self.model.model_validate(dict(arguments))
        except ValidationError as exc:
            raise ArgumentsError(describe_errors(exc, self.names)) from None
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for i, name in enumerate(self.names):
            value = getattr(validated, f"p{i}")
            if name in self.positional_only:
                args.append(value)
            else:
                kwargs[name] = value
        return args, kwargs


def describe_errors(exc: ValidationError, expected: tuple[str, ...] = ()) -> str:
    """One line per problem: ``argument 'limit': Input should be a valid integer (got 'ten')``."""
    problems = []
    for err in exc.errors(include_url=False):
        loc = err["loc"]
        where = ".".join(str(p) for p in loc) if loc else ""
        if err["type"] == "missing":
            problems.append(f"argument {where!r} is required")
        elif err["type"] == "extra_forbidden":
            known = f" (expected: {', '.join(expected)})" if expected else ""
            problems.append(f"unexpected argument {where!r}{known}")
        else:
            got = err.get("input")
            shown = repr(got) if len(repr(got)) <= 80 else repr(got)[:77] + "..."
            prefix = f"argument {where!r}: " if where else ""
            problems.append(f"{prefix}{err['msg']} (got {shown})")
    return "; ".join(problems)


def function_schema(fn: Callable[..., Any], *, description: str | None = None) -> FunctionSchema:
    """The schema and validator of ``fn``'s arguments, from its type hints and docstring.

    Parameters without a type hint accept any JSON value; parameters with a
    default are optional. ``*args`` and ``**kwargs`` cannot be described to a
    model and are refused.

    Raises:
        InvalidRequestError: A hint that cannot be resolved or turned into a schema, or ``*args``/``**kwargs``.
    """
    label = getattr(fn, "__qualname__", repr(fn))
    try:
        signature = inspect.signature(fn, eval_str=True)
    except (NameError, TypeError, SyntaxError) as exc:
        raise InvalidRequestError(
            f"cannot read the type hints of {label}: {exc}; define the types it uses at module level"
        ) from None
    except ValueError as exc:
        raise InvalidRequestError(f"cannot read the signature of {label}: {exc}") from None
    summary, docs = parse_docstring(inspect.getdoc(fn))
    fields: dict[str, Any] = {}
    names: list[str] = []
    positional_only: set[str] = set()
    for i, (name, param) in enumerate(signature.parameters.items()):
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise InvalidRequestError(
                f"tool {label} takes *{name}; a tool's parameters must be named (a model cannot fill *args or **kwargs)"
            )
        annotation = Any if param.annotation is inspect.Parameter.empty else param.annotation
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[f"p{i}"] = (annotation, Field(default, alias=name, description=docs.get(name)))
        names.append(name)
        if param.kind is param.POSITIONAL_ONLY:
            positional_only.add(name)
    try:
        model = create_model(
            f"{getattr(fn, '__name__', 'tool')}_arguments",
            __config__=ConfigDict(extra="forbid", populate_by_name=False, arbitrary_types_allowed=False),
            **fields,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PydanticJsonSchemaWarning)  # defaults that are not JSON are left out
            schema = model.model_json_schema(by_alias=True)
    except (PydanticSchemaGenerationError, PydanticUserError, TypeError) as exc:
        raise InvalidRequestError(f"cannot describe the arguments of {label} as JSON: {exc}") from None
    parameters = _strip_titles(schema)
    parameters.pop("description", None)
    parameters.setdefault("properties", {})
    return FunctionSchema(
        description=description if description is not None else summary,
        parameters=parameters,
        model=model,
        names=tuple(names),
        positional_only=frozenset(positional_only),
    )


def _jsonschema() -> Any:
    """The ``jsonschema`` package if installed (it comes with the MCP SDK), else None."""
    with contextlib.suppress(ImportError):
        return importlib.import_module("jsonschema")
    return None


def check_schema(schema: Any, *, what: str) -> None:
    """Refuse a schema that is not a JSON object schema (checked fully where ``jsonschema`` is installed).

    Raises:
        InvalidRequestError: Naming ``what`` and the problem.
    """
    if not isinstance(schema, Mapping) or schema.get("type") != "object":
        raise InvalidRequestError(
            f"{what} must be a JSON schema of an object ({{'type': 'object', ...}}), not {schema!r}"
        )
    jsonschema = _jsonschema()
    if jsonschema is not None:
        try:
            jsonschema.validators.validator_for(schema).check_schema(dict(schema))
        except jsonschema.exceptions.SchemaError as exc:
            raise InvalidRequestError(f"{what} is not a valid JSON schema: {exc.message}") from None


def check_arguments(schema: Mapping[str, Any], arguments: Any) -> None:
    """Check ``arguments`` against a JSON schema (fully with the ``jsonschema`` package, else its basics).

    Without ``jsonschema`` installed, checks that the arguments are an object,
    that required properties are present and that no unknown ones are given
    when the schema forbids them.

    Raises:
        ArgumentsError: What was wrong.
    """
    if not isinstance(arguments, Mapping):
        raise ArgumentsError(f"arguments must be a JSON object, not {type(arguments).__name__}")
    jsonschema = _jsonschema()
    if jsonschema is not None:
        try:
            validator_class = jsonschema.validators.validator_for(schema)
            validator = validator_class(dict(schema))
            errors = sorted(validator.iter_errors(dict(arguments)), key=lambda e: list(e.absolute_path))
        except jsonschema.exceptions.SchemaError as exc:
            raise ArgumentsError(f"the tool's own schema is invalid: {exc.message}") from None
        if errors:
            problems = []
            for err in errors[:10]:
                where = ".".join(str(p) for p in err.absolute_path)
                problems.append(f"argument {where!r}: {err.message}" if where else err.message)
            raise ArgumentsError("; ".join(problems))
        return
    properties = schema.get("properties") or {}
    missing = [name for name in schema.get("required") or () if name not in arguments]
    problems = [f"argument {name!r} is required" for name in missing]
    if schema.get("additionalProperties") is False:
        known = ", ".join(properties)
        problems += [f"unexpected argument {k!r} (expected: {known})" for k in arguments if k not in properties]
    if problems:
        raise ArgumentsError("; ".join(problems))
