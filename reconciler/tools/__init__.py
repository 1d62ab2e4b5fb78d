"""Agent tools on the engine: the guide's SpawnSprite, AttachSprite,
ListSprites and KillSprite, PlanSprites and ApplySprites for working from a
manifest, and ExecInSprite, CopyToSprite and CopyFromSprite for working
inside a sprite.

Each tool returns the guide's ``{success, message, data}`` envelope, the
document the CLI's ``--json`` prints for the same operation, and never
raises. :data:`TOOLS` is the registry the MCP server (``sprites mcp``,
:mod:`reconciler.tools.server`, the only module importing the ``mcp`` SDK)
serves.
"""

from reconciler.tools.catalog import TOOLS, Envelope, ToolSpec, call_tool
from reconciler.tools.sprites import (
    ApplySpritesArguments,
    AttachSpriteArguments,
    CopyFromSpriteArguments,
    CopyToSpriteArguments,
    EngineFactory,
    ExecInSpriteArguments,
    KillSpriteArguments,
    ListSpritesArguments,
    PlanSpritesArguments,
    SpawnSpriteArguments,
    apply_sprites,
    attach_sprite,
    copy_from_sprite,
    copy_to_sprite,
    engine_factory,
    exec_in_sprite,
    kill_sprite,
    list_sprites,
    plan_sprites,
    spawn_sprite,
)

__all__ = [
    "TOOLS",
    "ApplySpritesArguments",
    "AttachSpriteArguments",
    "CopyFromSpriteArguments",
    "CopyToSpriteArguments",
    "EngineFactory",
    "Envelope",
    "ExecInSpriteArguments",
    "KillSpriteArguments",
    "ListSpritesArguments",
    "PlanSpritesArguments",
    "SpawnSpriteArguments",
    "ToolSpec",
    "apply_sprites",
    "attach_sprite",
    "call_tool",
    "copy_from_sprite",
    "copy_to_sprite",
    "engine_factory",
    "exec_in_sprite",
    "kill_sprite",
    "list_sprites",
    "plan_sprites",
    "spawn_sprite",
]
