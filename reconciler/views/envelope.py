"""The ``{success, message, data}`` envelope of the imperative operations
(and of the agent tools' plan and apply), and its human rendering.

One renderer for the CLI's ``--json`` and the agent tools: both call the
builders here, so the same operation gives the same document.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from reconciler.drivers.base import CallResult
from reconciler.errors import ReconcilerError, RuntimeCallError
from reconciler.models import units
from reconciler.models.observed import Inventory

if TYPE_CHECKING:
    from reconciler.engine import ApplyOutcome
    from reconciler.models.plan import Plan


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
