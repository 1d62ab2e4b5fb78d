"""Human and JSON views of plans and applies.

A view is chosen once from ``--json``; commands never test the format
again. Both views render the same :class:`~reconciler.models.plan.Plan`.
The human apply view prints progress lines; the JSON view streams one
event per line (``type`` from :class:`EventType`), version first.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from enum import Enum
from typing import Any, TextIO

from reconciler import __version__
from reconciler.errors import ReconcilerError
from reconciler.executor import ApplyHooks, ApplyResult
from reconciler.models import units
from reconciler.models.plan import Action, Change, Plan

NO_CHANGES = "No changes. Sprites match the manifest."


class EventType(str, Enum):
    VERSION = "version"
    PLANNED_CHANGE = "planned_change"
    CHANGE_SUMMARY = "change_summary"
    APPLY_START = "apply_start"
    APPLY_COMPLETE = "apply_complete"
    APPLY_ERRORED = "apply_errored"
    APPLY_SUMMARY = "apply_summary"
    DIAGNOSTIC = "diagnostic"


def _value(path: str, value: Any) -> str:
    if value is None:
        return "(none)"
    if path == "memory" and isinstance(value, int):
        return units.format_size(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def describe(change: Change) -> str:
    """What the change does, in one line after the sprite's name."""
    if change.action is Action.REPLACE and change.fields:
        parts = [
            f"{f.path}: {_value(f.path, f.before)} -> {_value(f.path, f.after)}"
            for f in change.fields
        ]
        return "; ".join(parts)
    spec = change.after if change.after is not None else change.before
    resources = ""
    if spec:
        resources = f"memory {_value('memory', spec.get('memory'))}, cpus {spec.get('cpus')}"
        if spec.get("command"):
            resources += f", command {_value('command', spec['command'])}"
        if spec.get("runtime"):
            resources += f", runtime {spec['runtime']}"
        if spec.get("network") == "host":
            resources += ", network host (not isolated from the host's network)"
    why = change.reason.text
    if change.action is Action.RESTART and change.observed_state:
        why = f"{change.observed_state}; will be started again"
    return f"{resources} ({why})" if why and resources else (resources or why)


def plan_lines(plan: Plan) -> list[str]:
    lines: list[str] = [f"⚠️  {warning}" for warning in plan.warnings]
    verb = "Destroy plan" if plan.operation == "destroy" else "Plan"
    runtime = f" on runtime {plan.runtime}" if plan.runtime else ""
    lines.append(f"{verb} for project '{plan.project}'{runtime}:")
    lines.append("")
    for change in plan.changes:
        lines.append(
            f"{change.action.symbol:>3} {change.action.value} {change.address}: {describe(change)}"
        )
    for name in plan.adopt:
        lines.append(f"  = adopt {name}: already running; this project will own it")
    killing = {change.address for change in plan.changes}
    held = [name for name in plan.expired if name not in killing]
    for name in held:
        lines.append(
            f"  ! expired {name}: ttl ran out; not started again until the manifest changes"
        )
    if plan.changes or plan.adopt or held:
        lines.append("")
    if plan.budget is not None and plan.operation != "destroy":
        lines.append(budget_line(plan))
    lines.append(plan_summary(plan))
    return lines


def plan_summary(plan: Plan) -> str:
    """The plan's last line: what it will do, or that nothing needs doing."""
    if not plan.has_changes:
        return NO_CHANGES
    counts = plan.counts()
    return (
        f"Plan: {counts['start']} to start, {counts['replace']} to replace, "
        f"{counts['kill']} to kill."
    )


def apply_message(result: ApplyResult, operation: str) -> str:
    """``Apply complete! Sprites: ...`` (or ``failed``): the human view's and the tools' words."""
    c = result.counts
    summary = f"Sprites: {c['start']} started, {c['replace']} replaced, {c['kill']} killed"
    word = "Destroy" if operation == "destroy" else "Apply"
    if result.ok:
        return f"{word} complete! {summary}."
    return f"{word} failed! {summary}; {len(result.failures)} failed."


def apply_summary(result: ApplyResult, operation: str) -> dict[str, Any]:
    """The outcome in numbers: the ``apply_summary`` event's payload."""
    return {
        "operation": operation,
        "ok": result.ok,
        "changes": result.counts,
        "failed": len(result.failures),
        "elapsed": round(result.elapsed, 3),
    }


def budget_line(plan: Plan) -> str:
    b = plan.budget
    assert b is not None

    def of(used: str, limit: str | None) -> str:
        return f"{used}/{limit}" if limit is not None else used

    host = of(str(b.host_sprites), str(b.host_max_vms) if b.host_max_vms is not None else None)
    mine = of(str(b.sprites), str(b.max_vms) if b.max_vms is not None else None)
    memory = of(
        units.format_size(b.memory) if b.memory else "0",
        units.format_size(b.memory_limit) if b.memory_limit is not None else None,
    )
    cpus = of(str(b.cpus), str(b.cpus_limit) if b.cpus_limit is not None else None)
    return (
        f"Budget after apply: {host} sprites on this host; this project {mine} sprites, "
        f"{memory} memory, {cpus} cpus."
    )


class HumanView:
    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr

    def plan(self, plan: Plan) -> None:
        self.out.write("\n".join(plan_lines(plan)) + "\n")
        self.out.flush()

    def note(self, text: str) -> None:
        self.err.write(f"⚠️  {text}\n")

    def hooks(self) -> list[ApplyHooks]:
        return [HumanProgress(self.out)]

    def applied(self, result: ApplyResult | None, operation: str) -> None:
        if result is None:
            return
        self.out.write(f"\n{apply_message(result, operation)}\n")
        if not result.ok:
            for name, error in result.failures:
                self.err.write(f"❌ {name}: {error.user_message}\n")
        self.out.flush()

    def error(self, error: ReconcilerError) -> None:
        self.err.write(error.render() + "\n")


_VERBS = {
    "start": ("Starting...", "Started after", "Failed to start after"),
    "kill": ("Killing...", "Killed after", "Failed to kill after"),
}


class HumanProgress(ApplyHooks):
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.lock = threading.Lock()

    def pre_step(self, change: Change, step: str) -> None:
        with self.lock:
            self.out.write(f"{change.address}: {_VERBS[step][0]}\n")
            self.out.flush()

    def post_step(
        self, change: Change, step: str, error: ReconcilerError | None, elapsed: float
    ) -> None:
        took = units.format_duration(elapsed)
        with self.lock:
            if error is None:
                self.out.write(f"{change.address}: {_VERBS[step][1]} {took}\n")
            else:
                self.out.write(
                    f"{change.address}: {_VERBS[step][2]} {took}: {error.user_message}\n"
                )
            self.out.flush()


class JsonView:
    """``plan --json`` prints one document; ``apply --json`` streams events."""

    def __init__(
        self,
        out: TextIO | None = None,
        *,
        stream: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.out = out or sys.stdout
        self.stream = stream
        self.clock = clock
        self.lock = threading.Lock()
        if stream:
            self.emit(EventType.VERSION, {"sprites": __version__, "format_version": "1"})

    def emit(self, kind: EventType, payload: dict[str, Any]) -> None:
        event = {"type": kind.value, "timestamp": _timestamp(self.clock()), **payload}
        with self.lock:
            self.out.write(json.dumps(event, ensure_ascii=False) + "\n")
            self.out.flush()

    def plan(self, plan: Plan) -> None:
        if not self.stream:
            self.out.write(json.dumps(plan_document(plan), indent=2, ensure_ascii=False) + "\n")
            return
        for change in plan.changes:
            self.emit(EventType.PLANNED_CHANGE, {"change": change.model_dump(mode="json")})
        self.emit(EventType.CHANGE_SUMMARY, {"operation": plan.operation, "changes": plan.counts()})

    def note(self, text: str) -> None:
        self.emit(EventType.DIAGNOSTIC, {"severity": "warning", "summary": text})

    def hooks(self) -> list[ApplyHooks]:
        return [JsonProgress(self)]

    def applied(self, result: ApplyResult | None, operation: str) -> None:
        if result is None:
            return
        for name, error in result.failures:
            self.emit(
                EventType.DIAGNOSTIC,
                {"severity": "error", "sprite": name, "summary": error.user_message},
            )
        self.emit(EventType.APPLY_SUMMARY, apply_summary(result, operation))

    def error(self, error: ReconcilerError) -> None:
        if self.stream:
            self.emit(
                EventType.DIAGNOSTIC,
                {"severity": "error", "summary": error.user_message, "detail": error.hint},
            )
        else:
            document = {"success": False, "message": error.user_message}
            if error.hint:
                document["hint"] = error.hint
            self.out.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")


class JsonProgress(ApplyHooks):
    def __init__(self, view: JsonView) -> None:
        self.view = view

    def pre_step(self, change: Change, step: str) -> None:
        self.view.emit(
            EventType.APPLY_START,
            {"sprite": change.address, "action": change.action.value, "step": step},
        )

    def post_step(
        self, change: Change, step: str, error: ReconcilerError | None, elapsed: float
    ) -> None:
        payload = {
            "sprite": change.address,
            "action": change.action.value,
            "step": step,
            "elapsed": round(elapsed, 3),
        }
        if error is None:
            self.view.emit(EventType.APPLY_COMPLETE, payload)
        else:
            self.view.emit(EventType.APPLY_ERRORED, payload)


def plan_document(plan: Plan) -> dict[str, Any]:
    document = plan.model_dump(mode="json")
    document["has_changes"] = plan.has_changes
    document["summary"] = plan.counts()
    return document


def _timestamp(now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
