"""``sprites mcp``: the agent tools served over the Model Context Protocol on stdio.

The only module that imports the ``mcp`` SDK (an optional extra, slow to
import), and only ``sprites mcp`` imports it. Each tool is registered with
the JSON Schema of its argument model and the envelope's output schema, and
answers with the envelope both as structured content and as JSON text;
``isError`` is set when the envelope says ``success: false``. Arguments are
validated by the tool itself, so even bad arguments get an envelope back.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import anyio.to_thread
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.tools import Tool
from mcp.server.mcpserver.utilities.func_metadata import ArgModelBase, FuncMetadata
from mcp_types import CallToolResult, TextContent, ToolAnnotations

from reconciler import __version__
from reconciler.tools.catalog import TOOLS, Envelope, ToolSpec
from reconciler.tools.sprites import EngineFactory, engine_factory
from reconciler.views import envelope

INSTRUCTIONS = """\
sprites manages sprites: lightweight, isolated sandbox VMs on this host.

Imperative: SpawnSprite starts one now (it counts against the host's sprite limit and \
stays until KillSprite), ListSprites shows what exists, AttachSprite reads a sprite's \
console output, KillSprite terminates one.
Declarative: write a manifest (YAML: version 1, project, sprites), review PlanSprites, \
then ApplySprites with approve: true; apply only starts, replaces and kills sprites its \
project owns.
Inside a sprite: CopyToSprite puts files in (e.g. a project into /work), ExecInSprite runs \
commands there (tests, builds; check data.exitCode), CopyFromSprite brings results back. \
A sprite sees none of this host's files and, by default, no network beyond its own loopback.

Every tool returns {success, message, data}. When success is false, message says why and \
data.hint, when present, what to do next; nothing is thrown."""


class EnvelopeTool(Tool):
    """A tool whose function takes the raw arguments and returns an envelope.

    The SDK's own argument handling is bypassed: the tool validates against
    its argument model and reports problems as an envelope, not an error."""

    async def run(
        self, arguments: dict[str, Any], context: Any, convert_result: bool = False
    ) -> Any:
        document: dict[str, Any] = await anyio.to_thread.run_sync(self.fn, arguments)
        return to_result(document)


def to_result(document: dict[str, Any]) -> CallToolResult:
    return CallToolResult(
        content=[TextContent(type="text", text=envelope.to_json(document))],
        structured_content=document,
        is_error=not document["success"],
    )


def mcp_tool(spec: ToolSpec, engine: EngineFactory) -> Tool:
    return EnvelopeTool(
        fn=functools.partial(spec.call, engine=engine),
        name=spec.name,
        title=spec.title,
        description=spec.description,
        parameters=spec.input_schema(),
        fn_metadata=FuncMetadata(
            arg_model=ArgModelBase, output_schema=Envelope.model_json_schema()
        ),
        is_async=True,
        annotations=ToolAnnotations(
            title=spec.title,
            read_only_hint=spec.read_only,
            destructive_hint=spec.destructive,
            idempotent_hint=spec.idempotent,
            open_world_hint=False,
        ),
    )


def build_server(engine: EngineFactory) -> MCPServer[Any]:
    return MCPServer(
        name="sprites",
        title="sprites",
        version=__version__,
        instructions=INSTRUCTIONS,
        tools=[mcp_tool(spec, engine) for spec in TOOLS.values()],
        log_level="WARNING",
    )


def serve(
    *,
    config_path: Path | None = None,
    state_dir: Path | None = None,
    runtime: str | None = None,
) -> None:
    """Serve on stdin/stdout until the client closes stdin."""
    engine = engine_factory(config_path=config_path, state_dir=state_dir, runtime=runtime)
    build_server(engine).run("stdio")
