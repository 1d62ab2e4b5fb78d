"""The agent tools, one function each, on the engine.

Every function takes the tool's arguments (the fields of its argument model)
and an engine factory, and returns the guide's ``{success, message, data}``
envelope built by :mod:`reconciler.views.envelope`, the same builders the
CLI's ``--json`` uses. Nothing here raises: a :class:`ReconcilerError`
becomes ``success: false`` with the message the CLI prints, and any other
exception becomes ``success: false`` naming the tool and the exception.
Each call builds its own engine and closes it, as one CLI command does, so
budget, state and ownership are exactly the CLI's.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from reconciler.engine import Engine
from reconciler.errors import ApprovalError, ReconcilerError, UsageError
from reconciler.manifest import DEFAULT_MANIFEST, LoadedManifest, parse_manifest
from reconciler.models import units
from reconciler.views import envelope

log = logging.getLogger("sprites.tools")

#: Builds the engine for one tool call (config, state dir and runtime bound).
EngineFactory = Callable[[], Engine]

#: What ``shown`` is in errors about manifest text given inline.
INLINE_MANIFEST = "<manifest>"

NAME_HELP = (
    "The sprite's name: 1-63 lowercase letters, digits and '-', starting with a letter "
    "or digit (e.g. agent-session-1)."
)
MANIFEST_EXAMPLE = (
    "version: 1\n"
    "project: demo\n"
    "limits: {maxVMs: 5, memory: 4GiB, cpus: 8}\n"
    "sprites:\n"
    "  agent-1: {memory: 1GiB, cpus: 2}\n"
    "  worker: {replicas: 3}\n"
)


def engine_factory(
    *,
    config_path: Path | None = None,
    state_dir: Path | None = None,
    runtime: str | None = None,
) -> EngineFactory:
    """An engine per call with these global options (None: the CLI's defaults)."""
    return functools.partial(Engine, config_path=config_path, state_dir=state_dir, runtime=runtime)


# -- arguments ---------------------------------------------------------------


class _Arguments(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SpawnSpriteArguments(_Arguments):
    model_config = ConfigDict(title="SpawnSprite arguments")

    name: str = Field(description=NAME_HELP, examples=["agent-session-1"])
    memory: str | int | None = Field(
        None,
        description=(
            "Memory for the sprite, a size with a unit such as '512MiB' or '1GiB' "
            "(a bare number is bytes). Default: the config's agent.defaultMemory."
        ),
        examples=["1GiB"],
    )
    cpus: str | int | None = Field(
        None,
        description='Number of CPUs, e.g. 2 or "2". Default: the config\'s agent.defaultCPUs.',
        examples=["2"],
    )


class AttachSpriteArguments(_Arguments):
    model_config = ConfigDict(title="AttachSprite arguments")

    name: str = Field(description="The name of the sprite whose console to read.")


class ListSpritesArguments(_Arguments):
    model_config = ConfigDict(title="ListSprites arguments")


class KillSpriteArguments(_Arguments):
    model_config = ConfigDict(title="KillSprite arguments")

    name: str = Field(description="The name of the sprite to terminate.")


_PATH_HELP = (
    "Path to a manifest file (YAML), relative to the server's working directory. "
    "Give either path or manifest; with neither, sprites.yaml in the working directory is used."
)
_MANIFEST_HELP = (
    "The manifest's YAML text itself, instead of a path. It has version (always 1), "
    "project (a name that scopes ownership), optional defaults {memory, cpus}, optional "
    "limits {maxVMs, memory, cpus}, and sprites: a mapping of name to {memory, cpus, "
    "replicas, command, env}. Example:\n" + MANIFEST_EXAMPLE
)


class PlanSpritesArguments(_Arguments):
    model_config = ConfigDict(title="PlanSprites arguments")

    path: str | None = Field(None, description=_PATH_HELP, examples=["sprites.yaml"])
    manifest: str | None = Field(None, description=_MANIFEST_HELP, examples=[MANIFEST_EXAMPLE])


class ApplySpritesArguments(PlanSpritesArguments):
    model_config = ConfigDict(title="ApplySprites arguments")

    approve: bool = Field(
        False,
        description=(
            "Must be true to apply: confirms you reviewed the changes (see PlanSprites). "
            "Without it nothing is changed and the call fails."
        ),
    )


class ExecInSpriteArguments(_Arguments):
    model_config = ConfigDict(title="ExecInSprite arguments")

    name: str = Field(description="The sprite to run the command in.")
    command: list[str] = Field(
        min_length=1,
        description=(
            "The command as an argument list, run without a shell: the program, then its "
            'arguments. For shell syntax use ["sh", "-c", "..."].'
        ),
        examples=[["python3", "-m", "pytest", "-q"], ["sh", "-c", "ls -la /work"]],
    )
    env: dict[str, str] | None = Field(None, description="Variables to add to its environment.")
    workdir: str | None = Field(
        None, description="Absolute directory to run in. Default: the sprite's (/work)."
    )
    user: str | None = Field(
        None, description="root, sprite, nobody or uid[:gid]. Default: the sprite's (sprite)."
    )
    timeout: str | int | float | None = Field(
        None,
        description=(
            "Stop the command after this long: seconds, or a duration such as '30s' or '10m'. "
            "Default: the config's agent.timeout (300 s)."
        ),
        examples=["120s"],
    )
    stdin: str | None = Field(None, description="Text given to the command on its stdin.")


class CopyToSpriteArguments(_Arguments):
    model_config = ConfigDict(title="CopyToSprite arguments")

    name: str = Field(description="The sprite to copy into.")
    source: str = Field(
        description=(
            "A file or directory on this host (relative to the server's working directory). "
            "A directory is copied with everything in it; ending it with '/.' copies only its "
            "contents."
        ),
        examples=["./project"],
    )
    destination: str = Field(
        description=(
            "Where it goes in the sprite. An existing directory receives it inside; a path that "
            "does not exist (in an existing directory) becomes it."
        ),
        examples=["/work/project"],
    )


class CopyFromSpriteArguments(_Arguments):
    model_config = ConfigDict(title="CopyFromSprite arguments")

    name: str = Field(description="The sprite to copy from.")
    source: str = Field(
        description="A file or directory in the sprite (absolute).",
        examples=["/work/project/results.xml"],
    )
    destination: str = Field(
        description=(
            "Where it goes on this host (relative to the server's working directory). An "
            "existing directory receives it inside; a path that does not exist becomes it."
        ),
        examples=["./results.xml"],
    )


# -- tools -------------------------------------------------------------------


def spawn_sprite(
    name: str,
    memory: str | int | None = None,
    cpus: str | int | None = None,
    *,
    engine: EngineFactory = Engine,
) -> dict[str, Any]:
    """SpawnSprite: ``sprites start NAME [--memory] [--cpus] --json``."""

    def run(eng: Engine) -> dict[str, Any]:
        outcome = eng.start(name, memory=_text(memory), cpus=_text(cpus))
        return envelope.started(outcome.name, outcome.memory, outcome.cpus, outcome.result)

    return _run("SpawnSprite", engine, run, name=name)


def attach_sprite(name: str, *, engine: EngineFactory = Engine) -> dict[str, Any]:
    """AttachSprite: ``sprites attach NAME --json`` (the one-shot console read)."""

    def run(eng: Engine) -> dict[str, Any]:
        return envelope.attached(name, eng.attach(name, interactive=False))

    return _run("AttachSprite", engine, run, name=name)


def list_sprites(*, engine: EngineFactory = Engine) -> dict[str, Any]:
    """ListSprites: ``sprites list --json``."""

    def run(eng: Engine) -> dict[str, Any]:
        return envelope.listed(eng.list())

    return _run("ListSprites", engine, run)


def kill_sprite(name: str, *, engine: EngineFactory = Engine) -> dict[str, Any]:
    """KillSprite: ``sprites kill NAME --json``."""

    def run(eng: Engine) -> dict[str, Any]:
        return envelope.killed(name, eng.kill(name))

    return _run("KillSprite", engine, run, name=name)


def plan_sprites(
    path: str | None = None,
    manifest: str | None = None,
    *,
    engine: EngineFactory = Engine,
) -> dict[str, Any]:
    """PlanSprites: ``sprites plan -f PATH --json`` inside the envelope; changes nothing."""

    def run(eng: Engine) -> dict[str, Any]:
        manifest_path, loaded = _source(eng, path, manifest)
        return envelope.planned(eng.plan(manifest_path, loaded=loaded))

    return _run("PlanSprites", engine, run)


def apply_sprites(
    path: str | None = None,
    manifest: str | None = None,
    approve: bool = False,
    *,
    engine: EngineFactory = Engine,
) -> dict[str, Any]:
    """ApplySprites: ``sprites apply -f PATH --auto-approve``; refuses unless ``approve``."""

    def run(eng: Engine) -> dict[str, Any]:
        if approve is not True:
            raise ApprovalError(
                "Refusing to apply without approval: call ApplySprites with approve: true",
                hint="Review the changes with PlanSprites first; nothing was changed.",
            )
        manifest_path, loaded = _source(eng, path, manifest)
        outcome = eng.apply(manifest_path, loaded=loaded, approve=lambda plan: True, unattended=True)
        return envelope.applied(outcome)

    return _run("ApplySprites", engine, run)


def exec_in_sprite(
    name: str,
    command: list[str],
    env: dict[str, str] | None = None,
    workdir: str | None = None,
    user: str | None = None,
    timeout: str | int | float | None = None,
    stdin: str | None = None,
    *,
    engine: EngineFactory = Engine,
) -> dict[str, Any]:
    """ExecInSprite: ``sprites exec NAME --json -- COMMAND...``, output capped."""

    def run(eng: Engine) -> dict[str, Any]:
        limit = None
        if timeout is not None:
            try:
                limit = units.parse_duration(timeout)
            except ValueError as exc:
                raise UsageError(f"timeout: {exc}") from None
        out = envelope.capture(envelope.TOOL_OUTPUT_LIMIT)
        err = envelope.capture(envelope.TOOL_OUTPUT_LIMIT)
        result = eng.exec(
            name,
            command,
            env=env,
            workdir=workdir,
            user=user,
            timeout=limit,
            stdin=stdin.encode("utf-8") if stdin is not None else None,
            stdout=out,
            stderr=err,
        )
        return envelope.executed(name, command, result, out, err)

    return _run("ExecInSprite", engine, run, name=name, command=command)


def copy_to_sprite(
    name: str, source: str, destination: str, *, engine: EngineFactory = Engine
) -> dict[str, Any]:
    """CopyToSprite: ``sprites cp SOURCE NAME:DESTINATION --json``."""

    def run(eng: Engine) -> dict[str, Any]:
        return envelope.copied(eng.copy_to(name, source, destination))

    return _run("CopyToSprite", engine, run, name=name, source=source, destination=destination)


def copy_from_sprite(
    name: str, source: str, destination: str, *, engine: EngineFactory = Engine
) -> dict[str, Any]:
    """CopyFromSprite: ``sprites cp NAME:SOURCE DESTINATION --json``."""

    def run(eng: Engine) -> dict[str, Any]:
        return envelope.copied(eng.copy_from(name, source, destination))

    return _run("CopyFromSprite", engine, run, name=name, source=source, destination=destination)


# -- internals ---------------------------------------------------------------


def _text(value: str | int | None) -> str | None:
    return None if value is None else str(value)


def _source(
    eng: Engine, path: str | None, manifest: str | None
) -> tuple[Path | None, LoadedManifest | None]:
    """The manifest to plan: a file, inline YAML text, or sprites.yaml."""
    if path is not None and manifest is not None:
        raise UsageError(
            "Give either path or manifest, not both",
            hint="path names a manifest file; manifest holds the YAML text itself.",
        )
    if manifest is None:
        return Path(path if path is not None else DEFAULT_MANIFEST), None
    agent = eng.config.agent
    loaded = parse_manifest(
        manifest.encode("utf-8"),
        INLINE_MANIFEST,
        default_memory=agent.default_memory,
        default_cpus=agent.default_cpus,
    )
    return None, loaded


def _run(
    tool: str,
    factory: EngineFactory,
    operation: Callable[[Engine], dict[str, Any]],
    **data: Any,
) -> dict[str, Any]:
    """The tools' one error boundary: every outcome is an envelope."""
    try:
        eng = factory()
        try:
            return operation(eng)
        finally:
            eng.close()
    except ReconcilerError as error:
        return envelope.failed(error, **data)
    except Exception as exc:
        log.exception("%s failed unexpectedly", tool)
        return unexpected(tool, exc, **data)


def unexpected(tool: str, exc: BaseException, **data: Any) -> dict[str, Any]:
    """The envelope of an exception no operation anticipated (a bug, not a user error)."""
    error = ReconcilerError(
        f"{tool} failed unexpectedly: {type(exc).__name__}: {exc}",
        hint="This is a bug in sprites; the server's stderr has the traceback.",
    )
    return envelope.failed(error, **data)
