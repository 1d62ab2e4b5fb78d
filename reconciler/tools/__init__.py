"""Agent tools on the engine: the guide's SpawnSprite, AttachSprite,
ListSprites and KillSprite, and PlanSprites and ApplySprites for working
from a manifest.

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
    EngineFactory,
    KillSpriteArguments,
    ListSpritesArguments,
    PlanSpritesArguments,
    SpawnSpriteArguments,
    apply_sprites,
    attach_sprite,
    engine_factory,
    kill_sprite,
    list_sprites,
    plan_sprites,
    spawn_sprite,
)

__all__ = [
    "TOOLS",
    "ApplySpritesArguments",
    "AttachSpriteArguments",
    "EngineFactory",
    "Envelope",
    "KillSpriteArguments",
    "ListSpritesArguments",
    "PlanSpritesArguments",
    "SpawnSpriteArguments",
    "ToolSpec",
    "apply_sprites",
    "attach_sprite",
    "call_tool",
    "engine_factory",
    "kill_sprite",
    "list_sprites",
    "plan_sprites",
    "spawn_sprite",
]
