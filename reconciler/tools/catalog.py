"""The tool registry: name -> description, argument model and function.

The MCP server and the tests read this one table, so a tool's name, its
JSON Schema (from its pydantic argument model) and its behaviour cannot
drift apart. :meth:`ToolSpec.call` validates raw arguments (as an MCP client
sends them) and answers bad ones with an envelope too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from reconciler.engine import Engine
from reconciler.errors import UsageError
from reconciler.record import record
from reconciler.tools import sprites
from reconciler.tools.sprites import EngineFactory
from reconciler.views import envelope


class Envelope(BaseModel):
    """What every tool returns."""

    success: bool = Field(description="True when the operation did what was asked.")
    message: str = Field(
        description="One line for people: what happened, or the error (as the CLI prints it)."
    )
    data: dict[str, Any] = Field(
        description="The operation's details; on failure the arguments given, any runtime "
        "stdout/stderr, and a hint when there is one."
    )


@record(frozen=True)
class ToolSpec:
    name: str
    title: str
    description: str
    arguments: type[BaseModel]
    function: Callable[..., dict[str, Any]]
    #: Changes nothing (list, attach, plan).
    read_only: bool
    #: May end sprites (kill, apply).
    destructive: bool
    #: Calling it again with the same arguments changes nothing more.
    idempotent: bool

    def input_schema(self) -> dict[str, Any]:
        return self.arguments.model_json_schema()

    def call(
        self, arguments: Mapping[str, Any] | None = None, *, engine: EngineFactory = Engine
    ) -> dict[str, Any]:
        """Validate ``arguments`` and run the tool; always an envelope."""
        try:
            if arguments is None:
                arguments = {}
            if not isinstance(arguments, Mapping):
                return envelope.failed(self._invalid(["expected an object of named arguments"]))
            try:
                parsed = self.arguments.model_validate(dict(arguments))
            except ValidationError as exc:
                return envelope.failed(self._invalid(_problems(exc)))
            return self.function(**dict(parsed), engine=engine)
        except Exception as exc:
            return sprites.unexpected(self.name, exc)

    def _invalid(self, problems: list[str]) -> UsageError:
        schema = self.input_schema()
        required = set(schema.get("required", ()))
        accepted = ", ".join(
            f"{key} (required)" if key in required else key for key in schema["properties"]
        )
        return UsageError(
            f"Invalid arguments for {self.name}: {'; '.join(problems)}",
            hint=f"{self.name} takes: {accepted}." if accepted else f"{self.name} takes none.",
        )


def _problems(exc: ValidationError) -> list[str]:
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"])
        problems.append(f"{where}: {error['msg']}" if where else error["msg"])
    return problems


_ENVELOPE = (
    "Returns JSON {success, message, data}; on failure success is false, message says why "
    "(the same words as the sprites CLI) and data.hint, when present, what to do."
)

TOOLS: dict[str, ToolSpec] = {
    spec.name: spec
    for spec in (
        ToolSpec(
            name="SpawnSprite",
            title="Start a sprite",
            description=(
                "Start a new sprite (a lightweight, isolated sandbox VM) now, with a name and "
                "optional memory and CPUs. Use it when a task needs a fresh isolated "
                "environment; the sprite keeps running until KillSprite. It counts against "
                "the host's sprite limit (agent.maxVMs) like `sprites start`, fails if the "
                "name is taken, and belongs to no manifest (ApplySprites never touches it). "
                "data: name, memory, cpus, and the runtime's stdout (the sprite's ID and "
                "connection address) and stderr. " + _ENVELOPE
            ),
            arguments=sprites.SpawnSpriteArguments,
            function=sprites.spawn_sprite,
            read_only=False,
            destructive=False,
            idempotent=False,
        ),
        ToolSpec(
            name="AttachSprite",
            title="Read a sprite's console",
            description=(
                "Read a sprite's recent console output, once (not an interactive session). "
                "Use it to see what a running sprite is doing or why it stopped. "
                "data: name, stdout (the console output) and stderr. " + _ENVELOPE
            ),
            arguments=sprites.AttachSpriteArguments,
            function=sprites.attach_sprite,
            read_only=True,
            destructive=False,
            idempotent=True,
        ),
        ToolSpec(
            name="ListSprites",
            title="List sprites",
            description=(
                "List every sprite the runtime knows, running or not. Use it to see what "
                "exists before spawning (names must be unique; the host has a sprite limit) "
                "and to check a sprite's state. data.sprites is a list of {id, name, state "
                "(running, stopped or error), pid and address when known}; data.rawOutput "
                "is the runtime's raw list output; message says how many are active. " + _ENVELOPE
            ),
            arguments=sprites.ListSpritesArguments,
            function=sprites.list_sprites,
            read_only=True,
            destructive=False,
            idempotent=True,
        ),
        ToolSpec(
            name="KillSprite",
            title="Terminate a sprite",
            description=(
                "Terminate a sprite and free its resources, whoever started it. Use it when "
                "a sprite is no longer needed; what ran inside it is lost. Fails if no sprite "
                "has that name. data: name, and the runtime's stdout and stderr. " + _ENVELOPE
            ),
            arguments=sprites.KillSpriteArguments,
            function=sprites.kill_sprite,
            read_only=False,
            destructive=True,
            idempotent=False,
        ),
        ToolSpec(
            name="PlanSprites",
            title="Plan a manifest",
            description=(
                "Show what ApplySprites would do to make the running sprites match a "
                "manifest (YAML declaring a project's sprites), without changing anything. "
                "Give path (a manifest file) or manifest (its YAML text). Use it before "
                "ApplySprites and show or check the changes. data is the plan (as `sprites "
                "plan --json`): project, changes [{address (sprite name), action (start, "
                "kill, replace or restart), reason, before, after}], has_changes, summary "
                "{start, replace, kill}, budget and warnings; message summarises it. " + _ENVELOPE
            ),
            arguments=sprites.PlanSpritesArguments,
            function=sprites.plan_sprites,
            read_only=True,
            destructive=False,
            idempotent=True,
        ),
        ToolSpec(
            name="ApplySprites",
            title="Apply a manifest",
            description=(
                "Make the running sprites match a manifest: start missing sprites, replace "
                "changed ones and kill those the project started that the manifest no longer "
                "lists. Sprites the project did not start are never touched. Same path or "
                "manifest as PlanSprites, plus approve, which must be true (review "
                "PlanSprites first); without it nothing changes. data.plan is the plan "
                "carried out; data.result is {ok, changes {start, replace, kill}, failed, "
                "failures [{sprite, message}], elapsed}, or null when nothing needed doing. "
                "success is false if any change failed. " + _ENVELOPE
            ),
            arguments=sprites.ApplySpritesArguments,
            function=sprites.apply_sprites,
            read_only=False,
            destructive=True,
            idempotent=True,
        ),
        ToolSpec(
            name="ExecInSprite",
            title="Run a command in a sprite",
            description=(
                "Run a command inside a running sprite and wait for it: its own filesystem "
                "(/work is the default directory), its user (sprite, uid 1000) and no access to "
                "this host. command is an argument list (no shell unless you run sh -c); env, "
                "workdir, user, timeout and stdin (text) are optional. Use it to build, test "
                "and inspect what you copied in with CopyToSprite. success is true when the "
                "command ran, whatever its exit code: check data.exitCode. data: name, "
                "command, exitCode, stdout, stderr, durationMs; long output keeps its start "
                "and end with a '[... truncated: N bytes ...]' marker between them, and "
                "data.truncated is true. " + _ENVELOPE
            ),
            arguments=sprites.ExecInSpriteArguments,
            function=sprites.exec_in_sprite,
            read_only=False,
            destructive=False,
            idempotent=False,
        ),
        ToolSpec(
            name="CopyToSprite",
            title="Copy files into a sprite",
            description=(
                "Copy a file or directory from this host into a running sprite, modes kept, "
                "owned by the sprite's user. Rules as docker cp: onto an existing directory "
                "it goes inside it; to a path that does not exist (whose parent exists) it "
                "becomes that path; a source ending in '/.' copies a directory's contents. "
                "data: name, source, destination, path (where it landed), files, bytes. "
                + _ENVELOPE
            ),
            arguments=sprites.CopyToSpriteArguments,
            function=sprites.copy_to_sprite,
            read_only=False,
            destructive=False,
            idempotent=True,
        ),
        ToolSpec(
            name="CopyFromSprite",
            title="Copy files out of a sprite",
            description=(
                "Copy a file or directory from a running sprite to this host (results, "
                "reports, build output), modes kept. Same rules as CopyToSprite. Anything in "
                "what comes out that would land outside the destination (absolute or '..' "
                "names, links leading out) stops the copy. data: name, source, destination, "
                "path, files, bytes. " + _ENVELOPE
            ),
            arguments=sprites.CopyFromSpriteArguments,
            function=sprites.copy_from_sprite,
            read_only=False,
            destructive=False,
            idempotent=True,
        ),
    )
}


def call_tool(
    name: str, arguments: Mapping[str, Any] | None = None, *, engine: EngineFactory = Engine
) -> dict[str, Any]:
    """Run the tool called ``name``; an unknown name is an envelope too."""
    spec = TOOLS.get(name)
    if spec is None:
        return envelope.failed(
            UsageError(
                f"Unknown tool '{name}'",
                hint=f"The tools are: {', '.join(TOOLS)}.",
            )
        )
    return spec.call(arguments, engine=engine)
