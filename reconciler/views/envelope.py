"""The ``{success, message, data}`` envelope of the imperative operations
(and of the agent tools' plan and apply), and its human rendering.

One renderer for the CLI's ``--json`` and the agent tools: both call the
builders here, so the same operation gives the same document.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from reconciler.drivers.base import CallResult, ExecResult
from reconciler.errors import ReconcilerError, RuntimeCallError
from reconciler.models import units
from reconciler.models.observed import Inventory

if TYPE_CHECKING:
    from reconciler.drivers.execio import Capture
    from reconciler.engine import ApplyOutcome
    from reconciler.models.plan import Plan
    from reconciler.transfer import Copied


def envelope(success: bool, message: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"success": success, "message": message, "data": data}


def started(name: str, memory: int, cpus: int, result: CallResult) -> dict[str, Any]:
    return envelope(
        True,
        f"Started Sprite '{name}'",
        {
            "name": name,
            "memory": units.format_size(memory),
            "cpus": str(cpus),
            "stdout": result.stdout,
            "stderr": result.stderr,
        },
    )


def listed(inventory: Inventory) -> dict[str, Any]:
    sprites = [sprite.to_json() for sprite in inventory.sprites]
    message = f"Active Sprites: {len(sprites)}" if sprites else "No active Sprites"
    data: dict[str, Any] = {"sprites": sprites, "rawOutput": inventory.raw}
    if inventory.warnings:
        data["warnings"] = list(inventory.warnings)
    return envelope(True, message, data)


def attached(name: str, result: CallResult) -> dict[str, Any]:
    return envelope(
        True,
        f"Attached to Sprite '{name}'",
        {"name": name, "stdout": result.stdout, "stderr": result.stderr},
    )


def killed(name: str, result: CallResult) -> dict[str, Any]:
    return envelope(
        True,
        f"Killed Sprite '{name}'",
        {"name": name, "stdout": result.stdout, "stderr": result.stderr},
    )


def logged(name: str | None, result: CallResult) -> dict[str, Any]:
    target = f"Sprite '{name}'" if name else "all Sprites"
    return envelope(
        True,
        f"Logs of {target}",
        {"name": name, "stdout": result.stdout, "stderr": result.stderr},
    )


#: Most bytes of each output stream an exec envelope carries: for the CLI's
#: --json, and for the agent tools (what an agent reads has to stay small).
EXEC_OUTPUT_LIMIT = 1 << 20
TOOL_OUTPUT_LIMIT = 32 << 10


def capture(limit: int) -> Capture:
    """A sink for exec output keeping its first quarter and last three quarters."""
    from reconciler.drivers.execio import Capture  # exec only: list starts without it

    return Capture(limit)


def captured_text(kept: Capture | bytes) -> tuple[str, bool]:
    """The text of captured output, with a marker where bytes were dropped;
    and whether any were."""
    if isinstance(kept, bytes):
        return kept.decode("utf-8", "replace"), False
    if not kept.dropped:
        return kept.getvalue().decode("utf-8", "replace"), False
    head = bytes(kept.head).decode("utf-8", "replace")
    tail = bytes(kept.tail).decode("utf-8", "replace")
    return f"{head}\n[... truncated: {kept.dropped} bytes of output left out ...]\n{tail}", True


def executed(
    name: str,
    command: Sequence[str],
    result: ExecResult,
    stdout: Capture | bytes,
    stderr: Capture | bytes,
) -> dict[str, Any]:
    """A command run in a sprite: success means it ran, whatever its exit code."""
    out, out_cut = captured_text(stdout)
    err, err_cut = captured_text(stderr)
    data: dict[str, Any] = {
        "name": name,
        "command": list(command),
        "exitCode": result.exit_code,
        "stdout": out,
        "stderr": err,
        "durationMs": round(result.duration * 1000),
    }
    if out_cut or err_cut:
        data["truncated"] = True
    return envelope(
        True,
        f"Ran {shlex.join(command)} in Sprite '{name}': exit code {result.exit_code}",
        data,
    )


def copied(result: Copied) -> dict[str, Any]:
    name = result.source.sprite or result.destination.sprite
    into = result.destination.sprite is not None
    files = f"{result.files} file{'s' if result.files != 1 else ''}"
    where = f"to Sprite '{name}'" if into else f"from Sprite '{name}'"
    return envelope(
        True,
        f"Copied {files} ({units.format_size(result.bytes)}) {where}: {result.target}",
        {
            "name": name,
            "source": str(result.source),
            "destination": str(result.destination),
            "path": result.target,
            "files": result.files,
            "bytes": result.bytes,
        },
    )


def planned(plan: Plan) -> dict[str, Any]:
    """A plan in the envelope: ``data`` is the document ``sprites plan --json`` prints."""
    from reconciler.views.plan import plan_document, plan_summary

    return envelope(True, plan_summary(plan), plan_document(plan))


def applied(outcome: ApplyOutcome) -> dict[str, Any]:
    """An apply: the plan it carried out, and what came of it (``result`` is
    None when nothing needed doing)."""
    from reconciler.views.plan import apply_message, apply_summary, plan_document, plan_summary

    result = outcome.result
    operation = outcome.plan.operation
    data: dict[str, Any] = {"plan": plan_document(outcome.plan), "result": None}
    if result is not None:
        failures = [
            {"sprite": name, "message": error.user_message} for name, error in result.failures
        ]
        data["result"] = {**apply_summary(result, operation), "failures": failures}
    if outcome.notes:
        data["notes"] = list(outcome.notes)
    message = plan_summary(outcome.plan) if result is None else apply_message(result, operation)
    return envelope(outcome.ok, message, data)


def failed(error: ReconcilerError, **data: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {key: value for key, value in data.items() if value is not None}
    if isinstance(error, RuntimeCallError):
        payload.setdefault("stdout", error.stdout)
        payload.setdefault("stderr", error.stderr)
    if error.hint:
        payload["hint"] = error.hint
    return envelope(False, error.user_message, payload)


def to_json(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False)


def human(document: dict[str, Any]) -> str:
    """The guide's human form: ✅ message, blank line, ``Output:``, the runtime's stdout."""
    if not document["success"]:
        text = f"❌ {document['message']}"
        hint = document["data"].get("hint")
        return f"{text}\n{hint}" if hint else text
    data = document["data"]
    if "sprites" in data:
        return human_list(data["sprites"], data.get("warnings", ()))
    text = f"✅ {document['message']}\n\nOutput:\n{data.get('stdout', '')}"
    return text.rstrip("\n")


def human_list(sprites: list[dict[str, Any]], warnings: Any = ()) -> str:
    lines = [f"⚠️  {warning}" for warning in warnings]
    if not sprites:
        lines.append("📋 No active Sprites")
        return "\n".join(lines)
    lines.append(f"📋 Active Sprites: {len(sprites)}")
    lines.append("")
    for index, sprite in enumerate(sprites, start=1):
        lines.append(f"  {index}. {sprite['name']} ({sprite['state']})")
    return "\n".join(lines)
