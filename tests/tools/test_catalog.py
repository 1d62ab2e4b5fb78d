"""The tool registry: names, JSON Schemas from the argument models, and
argument validation that answers with envelopes."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from pydantic import BaseModel

from reconciler.engine import Engine
from reconciler.tools import TOOLS, Envelope, call_tool
from tests.tools.conftest import Project

GUIDE_TOOLS = ["SpawnSprite", "AttachSprite", "ListSprites", "KillSprite"]


def never() -> Engine:
    raise AssertionError("the engine must not be built for invalid arguments")


def test_the_tools_are_registered_in_order() -> None:
    assert list(TOOLS) == [
        *GUIDE_TOOLS,
        "PlanSprites",
        "ApplySprites",
        "ExecInSprite",
        "CopyToSprite",
        "CopyFromSprite",
    ]
    for name, spec in TOOLS.items():
        assert spec.name == name


@pytest.mark.parametrize(
    ("name", "properties", "required"),
    [
        ("SpawnSprite", ["name", "memory", "cpus"], ["name"]),
        ("AttachSprite", ["name"], ["name"]),
        ("ListSprites", [], []),
        ("KillSprite", ["name"], ["name"]),
        ("PlanSprites", ["path", "manifest"], []),
        ("ApplySprites", ["path", "manifest", "approve"], []),
        (
            "ExecInSprite",
            ["name", "command", "env", "workdir", "user", "timeout", "stdin"],
            ["name", "command"],
        ),
        ("CopyToSprite", ["name", "source", "destination"], ["name", "source", "destination"]),
        ("CopyFromSprite", ["name", "source", "destination"], ["name", "source", "destination"]),
    ],
)
def test_each_schema_comes_from_the_argument_model(
    name: str, properties: list[str], required: list[str]
) -> None:
    spec = TOOLS[name]
    schema = spec.input_schema()

    assert schema == spec.arguments.model_json_schema()
    assert schema["type"] == "object"
    assert list(schema["properties"]) == properties
    assert schema.get("required", []) == required
    assert schema["additionalProperties"] is False
    for field in schema["properties"].values():
        assert len(field["description"]) > 20


def test_schema_types_follow_the_guide() -> None:
    spawn = TOOLS["SpawnSprite"].input_schema()["properties"]
    assert spawn["name"]["type"] == "string"
    for key in ("memory", "cpus"):
        assert {"type": "string"} in spawn[key]["anyOf"]
        assert {"type": "integer"} in spawn[key]["anyOf"]
    apply = TOOLS["ApplySprites"].input_schema()["properties"]
    assert apply["approve"]["type"] == "boolean"
    assert apply["approve"]["default"] is False


def test_the_guide_example_arguments_validate() -> None:
    examples: dict[str, dict[str, Any]] = {
        "SpawnSprite": {"name": "agent-session-1", "memory": "1GiB", "cpus": "2"},
        "ListSprites": {},
        "KillSprite": {"name": "agent-session-1"},
        "AttachSprite": {"name": "agent-session-1"},
    }
    for name, arguments in examples.items():
        model = TOOLS[name].arguments.model_validate(arguments)
        assert model.model_dump(exclude_none=True) == arguments


def test_functions_take_exactly_the_model_fields() -> None:
    for spec in TOOLS.values():
        parameters = inspect.signature(spec.function).parameters
        assert [p for p in parameters if p != "engine"] == list(spec.arguments.model_fields)
        assert parameters["engine"].kind is inspect.Parameter.KEYWORD_ONLY


def test_descriptions_say_what_when_and_what_comes_back() -> None:
    for spec in TOOLS.values():
        text = spec.description
        assert len(text) > 200, spec.name
        assert "data" in text and "success" in text, spec.name
        assert spec.title
    assert "approve" in TOOLS["ApplySprites"].description
    assert "PlanSprites" in TOOLS["ApplySprites"].description
    assert "maxVMs" in TOOLS["SpawnSprite"].description


def test_annotations_mark_what_changes_nothing() -> None:
    read_only = {name for name, spec in TOOLS.items() if spec.read_only}
    destructive = {name for name, spec in TOOLS.items() if spec.destructive}
    assert read_only == {"AttachSprite", "ListSprites", "PlanSprites"}
    assert destructive == {"KillSprite", "ApplySprites"}


def test_missing_arguments_come_back_as_an_envelope() -> None:
    document = call_tool("SpawnSprite", {}, engine=never)

    assert document == {
        "success": False,
        "message": "Invalid arguments for SpawnSprite: name: Field required",
        "data": {"hint": "SpawnSprite takes: name (required), memory, cpus."},
    }


def test_unknown_and_mistyped_arguments_are_named() -> None:
    document = call_tool("KillSprite", {"name": 7, "force": True}, engine=never)

    assert document["success"] is False
    assert document["message"] == (
        "Invalid arguments for KillSprite: name: Input should be a valid string; "
        "force: Extra inputs are not permitted"
    )


def test_arguments_that_are_not_an_object_are_refused() -> None:
    document = TOOLS["ListSprites"].call(["a"], engine=never)  # type: ignore[arg-type]

    assert document == {
        "success": False,
        "message": "Invalid arguments for ListSprites: expected an object of named arguments",
        "data": {"hint": "ListSprites takes none."},
    }


def test_no_arguments_at_all_is_an_empty_object(runtime: Project) -> None:
    assert TOOLS["ListSprites"].call(None, engine=runtime.engine)["success"] is True


def test_an_unknown_tool_is_an_envelope() -> None:
    document = call_tool("FlySprite", {})

    assert document["success"] is False
    assert document["message"] == "Unknown tool 'FlySprite'"
    assert "SpawnSprite" in document["data"]["hint"]


def test_every_envelope_fits_the_published_output_schema(runtime: Project) -> None:
    documents = [
        call_tool("SpawnSprite", {"name": "fits", "memory": "64MiB"}, engine=runtime.engine),
        call_tool("ListSprites", {}, engine=runtime.engine),
        call_tool("AttachSprite", {"name": "fits"}, engine=runtime.engine),
        call_tool("PlanSprites", {"manifest": "version: 1\nproject: p\n"}, engine=runtime.engine),
        call_tool("ApplySprites", {"manifest": "version: 1\nproject: p\n"}, engine=runtime.engine),
        call_tool("KillSprite", {"name": "fits"}, engine=runtime.engine),
        call_tool("KillSprite", {"name": "fits"}, engine=runtime.engine),
    ]

    for document in documents:
        parsed: BaseModel = Envelope.model_validate(document)
        assert parsed.model_dump() == document
