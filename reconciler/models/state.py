"""What a project owns: the records kept in its state file.

A record is written *before* each runtime call (status ``starting`` or
``killing``) and settled after it, so a crash at any moment leaves enough to
converge: a ``starting`` record whose sprite is listed is owned; one whose
sprite is absent is forgotten and started again.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any

from reconciler.record import field, fields, record, replace

STATE_FORMAT_VERSION = 1
STATUSES = ("starting", "running", "killing")


@record(frozen=True, slots=True)
class OwnedRecord:
    name: str
    status: str
    spec: dict[str, Any] = field(default_factory=dict)
    id: str | None = None
    runtime: str = ""
    started_at: float | None = None
    restarts: int = 0
    last_error: str | None = None

    def with_(self, **changes: Any) -> OwnedRecord:
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """Every field but the name (the key it is saved under). The spec is
        shared, not copied: a project's records are all written out before
        and after each runtime call of an apply."""
        return dict(zip(_RECORD_FIELDS, _record_values(self), strict=True))

    @staticmethod
    def from_json(name: str, data: dict[str, Any]) -> OwnedRecord:
        status = data.get("status")
        spec = data.get("spec")
        if status not in STATUSES or not isinstance(spec, dict):
            raise ValueError(f"record {name!r} is malformed")
        started = data.get("started_at")
        return OwnedRecord(
            name=name,
            status=status,
            spec=spec,
            id=data.get("id") if isinstance(data.get("id"), str) else None,
            runtime=str(data.get("runtime") or ""),
            started_at=float(started) if isinstance(started, (int, float)) else None,
            restarts=int(data.get("restarts") or 0),
            last_error=data.get("last_error") if isinstance(data.get("last_error"), str) else None,
        )


_RECORD_FIELDS = tuple(name for name in fields(OwnedRecord) if name != "name")
_record_values = attrgetter(*_RECORD_FIELDS)


@record(frozen=True, slots=True)
class Expiry:
    """A sprite whose ttl ran out under one version of the manifest: it stays
    down until the manifest (its digest) changes."""

    manifest_digest: str
    at: float

    def to_json(self) -> dict[str, Any]:
        return {"manifest_digest": self.manifest_digest, "at": self.at}

    @staticmethod
    def from_json(data: Any) -> Expiry | None:
        if not isinstance(data, dict) or not isinstance(data.get("manifest_digest"), str):
            return None
        at = data.get("at")
        return Expiry(data["manifest_digest"], float(at) if isinstance(at, (int, float)) else 0.0)


@record(slots=True)
class ProjectState:
    """The whole state file of one project."""

    project: str
    records: dict[str, OwnedRecord] = field(default_factory=dict)
    serial: int = 0
    #: Sprites held down because their ttl expired (see :class:`Expiry`).
    expired: dict[str, Expiry] = field(default_factory=dict)

    def to_json(self, *, records: bool = True) -> dict[str, Any]:
        """The state file's content; without the sprites' records if told."""
        data: dict[str, Any] = {
            "format_version": STATE_FORMAT_VERSION,
            "project": self.project,
            "serial": self.serial,
        }
        if records:
            data["sprites"] = {name: rec.to_json() for name, rec in sorted(self.records.items())}
        if self.expired:
            data["expired"] = {name: e.to_json() for name, e in sorted(self.expired.items())}
        return data

    @staticmethod
    def from_json(data: Any) -> ProjectState:
        if not isinstance(data, dict) or data.get("format_version") != STATE_FORMAT_VERSION:
            raise ValueError("not a sprites state file of format version 1")
        project = data.get("project")
        sprites = data.get("sprites")
        if not isinstance(project, str) or not isinstance(sprites, dict):
            raise ValueError("state file lacks project or sprites")
        records = {name: OwnedRecord.from_json(name, rec) for name, rec in sprites.items()}
        raw_expired = data.get("expired")
        expired = {
            name: entry
            for name, entry in (
                (name, Expiry.from_json(value))
                for name, value in (raw_expired.items() if isinstance(raw_expired, dict) else ())
            )
            if entry is not None
        }
        return ProjectState(
            project=project,
            records=records,
            serial=int(data.get("serial") or 0),
            expired=expired,
        )
