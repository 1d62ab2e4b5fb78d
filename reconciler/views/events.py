"""Events and status for people: one line per event, a table per status.

``--json`` output needs no view: events are printed as the JSON lines the
log holds, and status as the ``{success, message, data}`` envelope.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from reconciler.models import units

if TYPE_CHECKING:
    from reconciler.errors import ReconcilerError
    from reconciler.status import StatusReport

#: Routine events ``watch`` does not print in human form (the log has them).
QUIET = {("observe", "ok"), ("plan", "no_changes"), ("pass", "in_sync")}


def event_json(event: dict[str, Any]) -> str:
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"))


def error_event(error: ReconcilerError) -> str:
    """A failure before any event could be logged (bad config or manifest), as one JSON line."""
    event: dict[str, Any] = {"type": "error", "outcome": "failed", "error": error.user_message}
    if error.hint:
        event["hint"] = error.hint
    return event_json(event)


def event_line(event: dict[str, Any]) -> str:
    """``2026-01-02 10:00:00Z demo/agent-1: result start ok after 0.2s: <error> (<message>)``."""
    when = str(event.get("time", "")).replace("T", " ")
    if "." in when:
        when = when.split(".", 1)[0] + "Z"
    where = event.get("project") or "-"
    if event.get("sprite"):
        where += f"/{event['sprite']}"
    kind, action = event.get("type"), event.get("action")
    text = f"{when} {where}: {kind}"
    if action != kind:
        text += f" {action}"
    text += f" {event.get('outcome')}"
    if event.get("step") and event.get("step") != event.get("action"):
        text += f" ({event['step']})"
    duration = event.get("duration")
    if isinstance(duration, (int, float)) and duration >= 0.05:
        text += f" after {units.format_duration(duration)}"
    detail = event.get("detail")
    if isinstance(detail, dict) and "retry_in" in detail:
        text += f", retry in {units.format_duration(float(detail['retry_in']))}"
    if event.get("error"):
        text += f": {event['error']}"
    if event.get("message"):
        text += f" ({event['message']})"
    return text


def is_quiet(event: dict[str, Any]) -> bool:
    return (event.get("type"), event.get("outcome")) in QUIET


def status_message(report: StatusReport) -> str:
    total = len(report.sprites)
    if report.in_sync:
        return f"All {total} sprites of project '{report.project}' are in sync"
    return f"{report.synced} of {total} sprites of project '{report.project}' are in sync"


def status_document(report: StatusReport) -> dict[str, Any]:
    return {
        "success": True,
        "message": status_message(report),
        "data": {
            "project": report.project,
            "manifest": report.manifest,
            "runtime": report.runtime,
            "inSync": report.in_sync,
            "sprites": [sprite.to_json() for sprite in report.sprites],
        },
    }


def status_text(report: StatusReport) -> str:
    icon = "✅" if report.in_sync else "⚠️ "
    runtime = f" on runtime {report.runtime}" if report.runtime else ""
    lines = [f"{icon} {status_message(report)}{runtime}.", ""]
    if not report.sprites:
        lines.append("  The manifest declares no sprites.")
        return "\n".join(lines)
    header = ("SPRITE", "SYNC", "STATE", "UPTIME", "RESTARTS", "TTL LEFT", "NOTE")
    rows = [header]
    for sprite in report.sprites:
        rows.append(
            (
                sprite.name,
                "yes" if sprite.in_sync else "no",
                sprite.state,
                units.format_duration(sprite.uptime) if sprite.uptime is not None else "-",
                str(sprite.restarts),
                units.format_duration(sprite.expires_in) if sprite.expires_in is not None else "-",
                sprite.note,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    errors = {sprite.name: sprite.last_error for sprite in report.sprites if sprite.last_error}
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append(("  " + "  ".join(cells) + "  " + row[-1]).rstrip())
        if row[0] in errors and row is not header:
            lines.append(f"    last error: {errors[row[0]]}")
    return "\n".join(lines)
