"""Load the Wreckit config: ``.wreckit/config.json`` with ``config.local.json``
deep-merged over it, found in the working directory or its parents.

Validation is hand-written rather than pydantic so that fast commands such
as ``sprites list`` build no models. Every error names the file and, where
it can be found, the line and column of the offending value.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from reconciler.errors import AgentKindError, ConfigError, Position
from reconciler.models import units
from reconciler.record import record

CONFIG_DIR = ".wreckit"
CONFIG_FILE = "config.json"
LOCAL_FILE = "config.local.json"
RUNTIMES = ("auto", "wisp", "builtin", "microvm")
ACCELS = ("auto", "kvm", "tcg")
#: A config is a few hundred bytes; anything huge is a mistake.
MAX_CONFIG_BYTES = 1 << 20


@record(frozen=True, slots=True)
class AgentConfig:
    """The ``agent`` block, with the guide's defaults."""

    kind: str = "sprite"
    wisp_path: str = "wisp"
    max_vms: int = 5
    default_memory: int = 512 << 20
    default_cpus: int = 1
    timeout: float = 300.0
    runtime: str = "auto"
    enforce_limits: bool = True
    accel: str = "auto"


@record(frozen=True, slots=True)
class Config:
    agent: AgentConfig
    #: The files that were read, base first (empty when there is no config).
    sources: tuple[Path, ...] = ()
    #: The project root: the directory holding ``.wreckit`` (or the cwd).
    root: Path | None = None

    def require_sprite_kind(self) -> None:
        if self.agent.kind != "sprite":
            raise AgentKindError(self.agent.kind)


def find_config_dir(start: Path) -> Path | None:
    """The nearest ``.wreckit`` directory at or above ``start``, like git."""
    current = start.resolve()
    for directory in (current, *current.parents):
        candidate = directory / CONFIG_DIR
        if (candidate / CONFIG_FILE).is_file() or (candidate / LOCAL_FILE).is_file():
            return candidate
    return None


def load_config(explicit: Path | None = None, *, cwd: Path | None = None) -> Config:
    """Read the config. ``explicit`` names a config.json; its local overlay is
    the ``config.local.json`` beside it."""
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(Position(str(explicit)), "config file not found")
        base_file: Path | None = explicit
        local_file = explicit.with_name(LOCAL_FILE)
        root = explicit.resolve().parent.parent
    else:
        config_dir = find_config_dir(cwd or Path.cwd())
        if config_dir is None:
            return Config(agent=AgentConfig())
        base_file = config_dir / CONFIG_FILE
        local_file = config_dir / LOCAL_FILE
        root = config_dir.parent
    documents: list[tuple[Path, str, dict[str, Any]]] = []
    for path in (base_file, local_file):
        if path is not None and path.is_file():
            text, data = _read_json(path)
            documents.append((path, text, data))
    merged: dict[str, Any] = {}
    for _, _, data in documents:
        merged = deep_merge(merged, data)
    agent = _validate(merged, documents)
    return Config(agent=agent, sources=tuple(p for p, _, _ in documents), root=root)


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    result = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = deep_merge(result[key], value)
        else:
            result[key] = value
    return result


def _read_json(path: Path) -> tuple[str, dict[str, Any]]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(Position(str(path)), f"cannot read: {exc.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(Position(str(path)), "file is too large for a config (over 1MiB)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, col = _offset_to_line_col(raw, exc.start)
        raise ConfigError(Position(str(path), line, col), "not valid UTF-8 text") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            Position(str(path), exc.lineno, exc.colno), f"invalid JSON: {exc.msg}"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(Position(str(path), 1, 1), "expected a JSON object at the top level")
    return text, data


def _offset_to_line_col(raw: bytes, offset: int) -> tuple[int, int]:
    before = raw[:offset]
    line = before.count(b"\n") + 1
    return line, offset - (before.rfind(b"\n") + 1) + 1


_FIELDS = {
    "kind": "kind",
    "wispPath": "wisp_path",
    "maxVMs": "max_vms",
    "defaultMemory": "default_memory",
    "defaultCPUs": "default_cpus",
    "timeout": "timeout",
    "runtime": "runtime",
    "enforceLimits": "enforce_limits",
    "accel": "accel",
}


def _validate(
    merged: dict[str, Any], documents: list[tuple[Path, str, dict[str, Any]]]
) -> AgentConfig:
    agent = merged.get("agent")
    if agent is None:
        return AgentConfig()

    def fail(key: str | None, message: str) -> ConfigError:
        return ConfigError(
            _locate(documents, key), message, field=f"agent.{key}" if key else "agent"
        )

    if not isinstance(agent, dict):
        raise fail(None, "expected an object")
    unknown = sorted(set(agent) - set(_FIELDS))
    if unknown:
        raise fail(
            unknown[0],
            f"unknown field; expected one of {', '.join(sorted(_FIELDS))}",
        )
    if "kind" not in agent:
        raise fail(None, 'missing required field "kind" (set it to "sprite")')
    values: dict[str, Any] = {}
    kind = agent["kind"]
    if not isinstance(kind, str):
        raise fail("kind", "expected a string")
    values["kind"] = kind
    if "wispPath" in agent:
        wisp = agent["wispPath"]
        if not isinstance(wisp, str) or not wisp or "\x00" in wisp:
            raise fail("wispPath", "expected a non-empty path string")
        values["wisp_path"] = wisp
    if "maxVMs" in agent:
        max_vms = agent["maxVMs"]
        if isinstance(max_vms, bool) or not isinstance(max_vms, int) or max_vms < 1:
            raise fail("maxVMs", f"expected a positive integer, got {json.dumps(max_vms)}")
        values["max_vms"] = max_vms
    for key, parse in (("defaultMemory", units.parse_size), ("defaultCPUs", units.parse_cpus)):
        if key in agent:
            try:
                values[_FIELDS[key]] = parse(agent[key])
            except ValueError as exc:
                raise fail(key, str(exc)) from None
    if "timeout" in agent:
        timeout = agent["timeout"]
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise fail(
                "timeout", f"expected a positive number of seconds, got {json.dumps(timeout)}"
            )
        values["timeout"] = float(timeout)
    for key, choices in (("runtime", RUNTIMES), ("accel", ACCELS)):
        if key in agent:
            if agent[key] not in choices:
                raise fail(
                    key,
                    f"expected one of {', '.join(repr(c) for c in choices)}, "
                    f"got {json.dumps(agent[key])}",
                )
            values[key] = agent[key]
    if "enforceLimits" in agent:
        if not isinstance(agent["enforceLimits"], bool):
            raise fail("enforceLimits", "expected true or false")
        values["enforce_limits"] = agent["enforceLimits"]
    return AgentConfig(**values)


def _locate(documents: list[tuple[Path, str, dict[str, Any]]], key: str | None) -> Position:
    """Where ``agent.<key>`` was set: the last file that sets it wins, as in the merge."""
    for path, text, data in reversed(documents):
        agent = data.get("agent")
        if agent is None or (key is not None and (not isinstance(agent, dict) or key not in agent)):
            continue
        # The key inside the agent block, not a same-named key elsewhere in the file.
        match = re.search(r'"agent"\s*:\s*', text)
        if match is not None and key is not None:
            match = re.compile(rf'"{re.escape(key)}"\s*:\s*').search(text, match.end())
        if match is None:
            return Position(str(path))
        offset = match.end()
        line = text.count("\n", 0, offset) + 1
        column = offset - (text.rfind("\n", 0, offset) + 1) + 1
        return Position(str(path), line, column)
    return Position(str(documents[-1][0])) if documents else Position("<config>")


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return Path(base) / "sprites"
