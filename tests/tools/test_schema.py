"""A function's type hints and docstring become the JSON schema a model sees; arguments are checked against it."""

from __future__ import annotations

import enum
from typing import Any, Literal

import pytest
from pydantic import BaseModel

from habitus.errors import InvalidRequestError
from habitus.tools._schema import ArgumentsError, check_arguments, function_schema, parse_docstring


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Opaque:
    """Not something Pydantic can describe."""


class Point(BaseModel):
    x: int
    y: int = 0


def search(
    query: str,
    limit: int = 5,
    tags: list[str] | None = None,
    colour: Colour = Colour.RED,
    mode: Literal["fast", "thorough"] = "fast",
    near: Point | None = None,
    title: str = "untitled",
) -> list[str]:
    """Search the notes for a query.

    Matches words, not meanings; see also
    the memory's recall.

    Args:
        query: What to look for, in
            plain words.
        limit (int): How many notes at most.
        tags: Only notes with all of these tags.

    Returns:
        The matching notes.
    """
    return [query] * limit


def test_the_schema_comes_from_the_type_hints_and_the_docstring() -> None:
    schema = function_schema(search)
    assert (
        schema.description
        == "Search the notes for a query.\n\nMatches words, not meanings; see also the memory's recall."
    )
    params = schema.parameters
    assert params["type"] == "object" and params["additionalProperties"] is False
    assert params["required"] == ["query"]
    props = params["properties"]
    assert list(props) == ["query", "limit", "tags", "colour", "mode", "near", "title"]
    assert props["query"] == {"type": "string", "description": "What to look for, in plain words."}
    assert props["limit"] == {"type": "integer", "default": 5, "description": "How many notes at most."}
    assert props["tags"]["anyOf"] == [{"type": "array", "items": {"type": "string"}}, {"type": "null"}]
    assert props["tags"]["description"] == "Only notes with all of these tags."
    assert props["mode"] == {"type": "string", "enum": ["fast", "thorough"], "default": "fast"}
    assert props["colour"] == {"$ref": "#/$defs/Colour", "default": "red"}
    assert params["$defs"]["Colour"] == {"type": "string", "enum": ["red", "blue"]}
    assert params["$defs"]["Point"]["required"] == ["x"]
    assert props["title"] == {"type": "string", "default": "untitled"}  # a parameter named title is kept
    assert "title" not in params and "title" not in props["query"]  # Pydantic's generated titles are not


def test_arguments_are_validated_and_converted() -> None:
    schema = function_schema(search)
    args, kwargs = schema.validate({"query": "bridge", "limit": "3", "colour": "blue", "near": {"x": 1}})
    assert args == []
    assert kwargs["limit"] == 3 and kwargs["colour"] is Colour.BLUE and kwargs["near"] == Point(x=1, y=0)
    assert kwargs["tags"] is None and kwargs["mode"] == "fast"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({}, "argument 'query' is required"),
        ({"query": "x", "limit": "ten"}, "argument 'limit': Input should be a valid integer"),
        ({"query": "x", "mode": "slow"}, "argument 'mode': Input should be 'fast' or 'thorough' (got 'slow')"),
        ({"query": "x", "colour": "green"}, "argument 'colour'"),
        ({"query": "x", "limits": 3}, "unexpected argument 'limits' (expected: query, limit, tags"),
        ({"query": "x", "tags": "a"}, "argument 'tags': Input should be a valid list"),
        (["x"], "arguments must be a JSON object, not list"),
    ],
)
def test_bad_arguments_say_what_was_wrong(arguments: Any, message: str) -> None:
    with pytest.raises(ArgumentsError) as caught:
        function_schema(search).validate(arguments)
    assert message in str(caught.value)


def test_functions_without_hints_positional_only_and_unusable_signatures() -> None:
    def untyped(a, b=2, /, c=None):  # type: ignore[no-untyped-def]
        return (a, b, c)

    schema = function_schema(untyped, description="Given.")
    assert schema.description == "Given."
    assert schema.parameters["properties"]["a"] == {}  # any JSON value
    assert schema.validate({"a": [1], "c": "z"}) == ([[1], 2], {"c": "z"})

    def variadic(*items: int) -> int:
        return sum(items)

    with pytest.raises(InvalidRequestError, match=r"takes \*items; a tool's parameters must be named"):
        function_schema(variadic)

    def takes_opaque(thing: Opaque) -> None:
        return None

    with pytest.raises(InvalidRequestError, match=r"cannot describe the arguments of .*takes_opaque as JSON"):
        function_schema(takes_opaque)

    class Local:
        pass

    def takes_local(thing: Local) -> None:
        return None

    with pytest.raises(InvalidRequestError, match="name 'Local' is not defined; define the types it uses at module"):
        function_schema(takes_local)


def test_the_docstring_parser_reads_google_style() -> None:
    description, params = parse_docstring(
        """Fetch a page.

        Args:
            url (str): Where.
            *args: Ignored.
            timeout: Seconds to wait,
                at most.

        Raises:
            ValueError: Never, really.
        """
    )
    assert description == "Fetch a page."
    assert params == {"url": "Where.", "args": "Ignored.", "timeout": "Seconds to wait, at most."}
    assert parse_docstring(None) == ("", {})


def test_json_schema_tools_are_checked_too() -> None:
    schema = {
        "type": "object",
        "properties": {"path": {"type": "string"}, "depth": {"type": "integer", "minimum": 0}},
        "required": ["path"],
        "additionalProperties": False,
    }
    check_arguments(schema, {"path": "/tmp", "depth": 2})
    with pytest.raises(ArgumentsError, match=r"'path' is a required property"):
        check_arguments(schema, {"depth": 1})
    with pytest.raises(ArgumentsError, match=r"argument 'depth': -1 is less than the minimum of 0"):
        check_arguments(schema, {"path": "/", "depth": -1})
    with pytest.raises(ArgumentsError, match="arguments must be a JSON object"):
        check_arguments(schema, "path")
