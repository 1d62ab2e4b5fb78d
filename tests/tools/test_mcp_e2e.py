"""End to end: ``sprites mcp`` as a subprocess, driven by the MCP SDK's own
stdio client, on the fake wisp and on the built-in runtime."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from typing import Any

import pytest

pytest.importorskip(
    "mcp.server.mcpserver",
    reason="the mcp extra is not installed (pip install -e '.[mcp]')",
)

import anyio  # noqa: E402
from mcp import Client  # noqa: E402
from mcp.client.stdio import StdioServerParameters, stdio_client  # noqa: E402

from reconciler.tools import TOOLS, Envelope  # noqa: E402
from tests.tools.conftest import Project  # noqa: E402

#: No single step of a healthy run comes near this; it only stops a hang.
DEADLINE = 120

MANIFEST = "version: 1\nproject: agents\nsprites:\n  planned: {memory: 64MiB}\n"


def sprites_command() -> list[str]:
    """The ``sprites`` console script installed beside this interpreter, else
    the same entry point through this interpreter: either way the code and
    the SDK under test, not some other ``sprites`` on the PATH."""
    found = shutil.which("sprites", path=os.path.dirname(sys.executable))
    if found:
        return [found]
    return [sys.executable, "-c", "from reconciler.cli import main; main()"]


def server_parameters(project: Project) -> StdioServerParameters:
    command = sprites_command()
    args = [
        *command[1:],
        "--config",
        str(project.config_path),
        "--state-dir",
        str(project.state_dir),
        "mcp",
    ]
    # The client hands the server only a few safe variables; keep an
    # uninstalled checkout importable.
    env = {"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else None
    return StdioServerParameters(command=command[0], args=args, env=env, cwd=str(project.root))


def envelope_of(result: Any) -> dict[str, Any]:
    """The envelope, checked to be the same as structured content and as text."""
    structured: dict[str, Any] = result.structured_content
    assert structured is not None
    assert [block.type for block in result.content] == ["text"]
    assert json.loads(result.content[0].text) == structured
    assert result.is_error is (not structured["success"])
    return structured


def test_an_mcp_client_lists_and_calls_the_six_tools(runtime: Project) -> None:
    steps: dict[str, Any] = {}

    async def session() -> None:
        with anyio.fail_after(DEADLINE):
            async with Client(stdio_client(server_parameters(runtime))) as client:
                steps["server"] = client.server_info
                steps["instructions"] = client.instructions
                steps["tools"] = (await client.list_tools()).tools

                async def call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
                    return envelope_of(await client.call_tool(name, arguments))

                steps["spawn"] = await call("SpawnSprite", {"name": "mcp-1", "memory": "64MiB"})
                steps["list"] = await call("ListSprites", {})
                steps["attach"] = await call("AttachSprite", {"name": "mcp-1"})
                steps["plan"] = await call("PlanSprites", {"manifest": MANIFEST})
                steps["after_plan"] = await call("ListSprites", {})
                steps["unapproved"] = await call("ApplySprites", {"manifest": MANIFEST})
                steps["apply"] = await call("ApplySprites", {"manifest": MANIFEST, "approve": True})
                steps["kill"] = await call("KillSprite", {"name": "mcp-1"})
                steps["final"] = await call("ListSprites", {})
                steps["bad"] = await call("SpawnSprite", {"memory": "1GiB"})

    anyio.run(session)

    assert steps["server"].name == "sprites"
    assert "ApplySprites" in steps["instructions"]

    tools = {tool.name: tool for tool in steps["tools"]}
    assert list(tools) == list(TOOLS)
    for name, tool in tools.items():
        spec = TOOLS[name]
        assert tool.input_schema == spec.input_schema()
        assert tool.description == spec.description
        assert tool.output_schema == Envelope.model_json_schema()
        assert tool.annotations is not None
        assert tool.annotations.read_only_hint is spec.read_only
        assert tool.annotations.destructive_hint is spec.destructive

    spawn = steps["spawn"]
    assert spawn["success"] is True
    assert spawn["message"] == "Started Sprite 'mcp-1'"
    assert set(spawn["data"]) == {"name", "memory", "cpus", "stdout", "stderr"}
    assert spawn["data"]["memory"] == "64MiB"

    listed = steps["list"]
    assert listed["message"] == "Active Sprites: 1"
    assert [(s["name"], s["state"]) for s in listed["data"]["sprites"]] == [("mcp-1", "running")]
    assert isinstance(listed["data"]["rawOutput"], str)

    attach = steps["attach"]
    assert attach["success"] is True
    assert attach["data"]["stdout"].startswith("Connected to mcp-1.")

    plan = steps["plan"]
    assert plan["message"] == "Plan: 1 to start, 0 to replace, 0 to kill."
    assert [c["address"] for c in plan["data"]["changes"]] == ["planned"]
    assert steps["after_plan"]["message"] == "Active Sprites: 1"

    unapproved = steps["unapproved"]
    assert unapproved["success"] is False
    assert unapproved["message"].startswith("Refusing to apply without approval")

    apply = steps["apply"]
    assert apply["success"] is True
    assert apply["data"]["result"]["changes"] == {"start": 1, "replace": 0, "kill": 0}

    kill = steps["kill"]
    assert kill["message"] == "Killed Sprite 'mcp-1'"
    assert set(kill["data"]) == {"name", "stdout", "stderr"}

    final = steps["final"]
    assert [s["name"] for s in final["data"]["sprites"]] == ["planned"]

    bad = steps["bad"]
    assert bad["success"] is False
    assert bad["message"] == "Invalid arguments for SpawnSprite: name: Field required"
    assert runtime.names() == ["planned"]


def test_a_broken_config_is_reported_by_every_call_not_by_a_dead_server(
    wisp_runtime: Project,
) -> None:
    wisp_runtime.configure(kind="claude")
    answers: list[dict[str, Any]] = []

    async def session() -> None:
        with anyio.fail_after(DEADLINE):
            async with Client(stdio_client(server_parameters(wisp_runtime))) as client:
                answers.append(envelope_of(await client.call_tool("ListSprites", {})))

    anyio.run(session)

    assert answers[0]["success"] is False
    assert answers[0]["message"].startswith("Agent kind must be 'sprite'")


def test_the_server_speaks_only_protocol_on_stdout(wisp_runtime: Project) -> None:
    """A raw exchange: every line the server writes is a JSON-RPC message, in order."""
    command = sprites_command()
    args = [
        *command,
        "--config",
        str(wisp_runtime.config_path),
        "--state-dir",
        str(wisp_runtime.state_dir),
        "mcp",
    ]
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"},
        },
    }
    initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    spawn = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": "SpawnSprite", "arguments": {"name": "raw-1"}},
    }
    server = subprocess.Popen(  # noqa: S603  (argv list, no shell)
        args,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=wisp_runtime.root,
    )
    watchdog = threading.Timer(DEADLINE, server.kill)
    watchdog.start()
    try:
        assert server.stdin is not None and server.stdout is not None
        lines = []
        for message, answers in ((initialize, True), (initialized, False), (spawn, True)):
            server.stdin.write(json.dumps(message) + "\n")
            server.stdin.flush()
            if answers:
                lines.append(server.stdout.readline())
        server.stdin.close()
        rest = server.stdout.read()
        server.wait()
    finally:
        watchdog.cancel()
        if server.poll() is None:
            server.kill()
            server.wait()

    messages = [json.loads(line) for line in lines]
    assert [message.get("id") for message in messages] == [1, 2]
    assert rest == ""
    result = messages[1]["result"]
    assert result["structuredContent"]["message"] == "Started Sprite 'raw-1'"
    assert result["isError"] is False
    assert server.returncode == 0
