"""What a manifest asks for, as plain frozen records (no pydantic).

:class:`ManifestSpec` is a validated manifest: defaults not yet applied,
replicas not yet expanded. :func:`desired_sprites` turns it into the
concrete :class:`DesiredSprite` set the planner compares with what runs.
:class:`Budget` gathers every limit a plan must respect.

Two validators produce a :class:`ManifestSpec`. :func:`quick_spec` handles
the common case of a manifest with nothing wrong in it using plain Python:
on anything it does not fully recognise it answers ``None``, and the
pydantic models of :mod:`reconciler.models.manifest` (the authority, which
also explains every error) decide. Commands that apply an ordinary manifest
therefore never import pydantic, which costs more than the rest of their
start-up together. Both validators give equal specs for every manifest the
quick one accepts; the tests check this field by field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from reconciler.models import sandbox, units
from reconciler.record import field, record

ENV_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_REPLICAS = 1000
MIN_MEMORY = 1 << 20


@record(frozen=True, slots=True)
class Budget:
    """Every limit the plan must respect. ``None`` means unlimited."""

    #: Host-wide: every running sprite counts, whoever started it.
    host_max_vms: int | None = None
    #: This project's own limits (the manifest's ``limits``).
    max_vms: int | None = None
    memory: int | None = None
    cpus: int | None = None


@record(frozen=True, slots=True)
class MountSpec:
    source: str
    target: str
    read_only: bool = True


@record(frozen=True, slots=True)
class TemplateSpec:
    """One validated entry under ``sprites:`` (unset fields are ``None``)."""

    memory: int | None = None
    cpus: int | None = None
    replicas: int = 1
    command: tuple[str, ...] | None = None
    env: tuple[tuple[str, str], ...] | None = None
    ttl: float | None = None
    runtime: str | None = None
    kernel: str | None = None
    initrd: str | None = None
    workdir: str | None = None
    user: str | None = None
    mounts: tuple[MountSpec, ...] | None = None
    network: str | None = None
    keep: bool | None = None
    pids: int | None = None

    def options(self) -> dict[str, Any]:
        """The settings beyond memory, cpus, command and env as they go into
        the canonical spec: defaults left out (``None``), so adding a setting
        to the manifest format never changes the specs of existing sprites."""
        mounts = [
            {"source": m.source, "target": m.target, "readOnly": m.read_only}
            for m in self.mounts or ()
        ]
        return {
            "runtime": self.runtime,
            "kernel": self.kernel,
            "initrd": self.initrd,
            "workdir": self.workdir,
            "user": self.user,
            "mounts": mounts or None,
            "network": self.network if self.network == "host" else None,
            "keep": True if self.keep else None,
            "pids": self.pids if self.pids != sandbox.DEFAULT_PIDS else None,
        }


@record(frozen=True, slots=True)
class LimitsSpec:
    max_vms: int | None = None
    memory: int | None = None
    cpus: int | None = None


@record(frozen=True, slots=True)
class ManifestSpec:
    """A validated manifest."""

    project: str
    default_memory: int | None = None
    default_cpus: int | None = None
    limits: LimitsSpec | None = None
    sprites: Mapping[str, TemplateSpec] = field(default_factory=dict)


@record(frozen=True, slots=True)
class DesiredSprite:
    """One concrete sprite the manifest asks for, defaults applied."""

    name: str
    memory: int
    cpus: int
    command: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    #: The manifest key it came from (differs from ``name`` for replicas).
    template: str = ""
    spec: dict[str, Any] = field(default_factory=dict, compare=False)
    #: Seconds the sprite may run before it expires; metadata, kept out of ``spec``.
    ttl: float | None = None

    @staticmethod
    def make(
        name: str,
        memory: int,
        cpus: int,
        command: tuple[str, ...] = (),
        env: tuple[tuple[str, str], ...] = (),
        template: str = "",
        *,
        ttl: float | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> DesiredSprite:
        return DesiredSprite(
            name,
            memory,
            cpus,
            command,
            env,
            template or name,
            canonical_spec(memory, cpus, command, env, options),
            ttl,
        )


def canonical_spec(
    memory: int,
    cpus: int,
    command: tuple[str, ...] | list[str] = (),
    env: Any = (),
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The spec as recorded in state and compared by the planner: plain JSON
    values, optional keys only when set, so new optional fields never make
    old records look changed."""
    spec: dict[str, Any] = {"memory": memory, "cpus": cpus}
    if command:
        spec["command"] = list(command)
    if env:
        spec["env"] = dict(env)
    for key, value in (options or {}).items():
        if value is not None:
            spec[key] = value
    return spec


def desired_sprites(
    manifest: ManifestSpec, *, default_memory: int, default_cpus: int
) -> dict[str, DesiredSprite]:
    """Expand replicas and apply defaults. Raises ValueError with a ``path: why``
    message when expanded names collide or grow too long."""
    memory_default = manifest.default_memory or default_memory
    cpus_default = manifest.default_cpus or default_cpus
    result: dict[str, DesiredSprite] = {}
    for key, template in manifest.sprites.items():
        names = (
            [key]
            if template.replicas == 1
            else [f"{key}-{i}" for i in range(1, template.replicas + 1)]
        )
        command = template.command or ()
        env = template.env or ()
        memory = template.memory or memory_default
        cpus = template.cpus or cpus_default
        options = template.options()
        for name in names:
            if not units.is_valid_name(name):
                raise ValueError(
                    f"sprites.{key}.replicas: the replica name {name!r} is longer than 63 characters"
                )
            if name in result:
                raise ValueError(
                    f"sprites.{key}: the sprite name {name!r} is already used by "
                    f"sprites.{result[name].template}"
                )
            result[name] = DesiredSprite.make(
                name, memory, cpus, command, env, key, ttl=template.ttl, options=options
            )
    return result


# -- rules both validators apply ------------------------------------------------
# Each takes a value of the right type and says what is wrong with it, or None.


def absolute_path_problem(path: str) -> str | None:
    if not path.startswith("/"):
        return f"expected an absolute path, got {path!r}"
    if "\x00" in path:
        return "a path may not contain NUL bytes"
    return None


def command_problem(command: Sequence[str]) -> str | None:
    if any("\x00" in arg for arg in command):
        return "command arguments may not contain NUL bytes"
    if command and not command[0]:
        return "the command's program (first item) may not be empty"
    return None


def env_problem(env: Mapping[str, str]) -> str | None:
    for key, value in env.items():
        if not ENV_KEY_RE.fullmatch(key):
            return f"invalid environment variable name {key!r}"
        if "\x00" in value:
            return f"environment variable {key} contains a NUL byte"
    return None


def mount_targets_problem(targets: Sequence[str]) -> str | None:
    for target in targets:
        if targets.count(target) > 1:
            return f"mount target {target} is given more than once"
    return None


# -- the quick validator ---------------------------------------------------------


class _Unsure(Exception):
    """Something the quick validator leaves to the models to decide."""


_TOP = frozenset({"version", "project", "defaults", "limits", "sprites"})
_RESOURCES = frozenset({"memory", "cpus"})
_LIMITS = frozenset({"maxVMs", "memory", "cpus"})
_MOUNT = frozenset({"source", "target", "readOnly"})
_TEMPLATE = frozenset(
    {
        "memory",
        "cpus",
        "replicas",
        "command",
        "env",
        "ttl",
        "runtime",
        "kernel",
        "initrd",
        "workdir",
        "user",
        "mounts",
        "network",
        "keep",
        "pids",
    }
)
_RUNTIMES = ("builtin", "microvm")
_NETWORKS = ("none", "host")


def quick_spec(data: object) -> ManifestSpec | None:
    """``data`` (a manifest as plain YAML data) validated without pydantic,
    or ``None`` when anything about it is unusual or wrong: then
    ``Manifest.model_validate(data).spec()`` decides, and explains."""
    try:
        return _manifest(data)
    except _Unsure:
        return None
    except (TypeError, ValueError, OverflowError):
        return None


def _mapping(value: object, allowed: frozenset[str]) -> dict[str, Any]:
    if type(value) is not dict or not allowed.issuperset(value):
        raise _Unsure
    return value


def _exact(value: object, kind: type) -> Any:
    if type(value) is not kind:
        raise _Unsure
    return value


def _name(value: object) -> str:
    if type(value) is not str or units.name_problem(value) is not None:
        raise _Unsure
    return value


def _parsed(value: object, parse: Callable[[object], int]) -> int | None:
    """``None``, or a string or integer that ``parse`` reads as an integer."""
    if value is None:
        return None
    if type(value) not in (str, int):
        raise _Unsure
    number = parse(value)
    if type(number) is not int:
        raise _Unsure
    return number


def _size(value: object) -> int | None:
    return _parsed(value, units.parse_size)


def _memory(value: object) -> int | None:
    size = _size(value)
    if size is not None and size < MIN_MEMORY:
        raise _Unsure
    return size


def _cpus(value: object) -> int | None:
    return _parsed(value, units.parse_cpus)


def _bounded(value: object, low: int, high: int | None = None) -> int | None:
    if value is None:
        return None
    number: int = _exact(value, int)
    if number < low or (high is not None and number > high):
        raise _Unsure
    return number


def _choice(value: object, choices: tuple[str, ...]) -> str | None:
    if value is None:
        return None
    if type(value) is not str or value not in choices:
        raise _Unsure
    return value


def _absolute(value: object) -> str | None:
    if value is None:
        return None
    path: str = _exact(value, str)
    if absolute_path_problem(path) is not None:
        raise _Unsure
    return path


def _manifest(data: object) -> ManifestSpec:
    top = _mapping(data, _TOP)
    version = top.get("version")
    if type(version) is not int or version != 1:
        raise _Unsure
    project = _name(top.get("project"))
    defaults = _mapping(top.get("defaults", {}), _RESOURCES)
    limits = top.get("limits")
    sprites = top.get("sprites", {})
    if type(sprites) is not dict:
        raise _Unsure
    return ManifestSpec(
        project=project,
        default_memory=_memory(defaults.get("memory")),
        default_cpus=_cpus(defaults.get("cpus")),
        limits=None if limits is None else _limits(limits),
        sprites={_name(key): _template(value) for key, value in sprites.items()},
    )


def _limits(value: object) -> LimitsSpec:
    limits = _mapping(value, _LIMITS)
    return LimitsSpec(
        max_vms=_bounded(limits.get("maxVMs"), 1),
        memory=_size(limits.get("memory")),
        cpus=_cpus(limits.get("cpus")),
    )


def _template(value: object) -> TemplateSpec:
    entry = _mapping(value, _TEMPLATE)
    get = entry.get
    replicas: int = _exact(get("replicas", 1), int)
    if not 1 <= replicas <= MAX_REPLICAS:
        raise _Unsure
    runtime = _choice(get("runtime"), _RUNTIMES)
    kernel, initrd = _absolute(get("kernel")), _absolute(get("initrd"))
    if runtime == "builtin" and (kernel or initrd):
        raise _Unsure
    keep = get("keep")
    if keep is not None:
        _exact(keep, bool)
    return TemplateSpec(
        memory=_memory(get("memory")),
        cpus=_cpus(get("cpus")),
        replicas=replicas,
        command=_command(get("command")),
        env=_env(get("env")),
        ttl=_ttl(get("ttl")),
        runtime=runtime,
        kernel=kernel,
        initrd=initrd,
        workdir=_workdir(get("workdir")),
        user=_user(get("user")),
        mounts=_mounts(get("mounts")),
        network=_choice(get("network"), _NETWORKS),
        keep=keep,
        pids=_bounded(get("pids"), 1, sandbox.MAX_PIDS),
    )


def _command(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    items: list[Any] = _exact(value, list)
    if not items or any(type(arg) is not str for arg in items) or command_problem(items):
        raise _Unsure
    return tuple(items)


def _env(value: object) -> tuple[tuple[str, str], ...] | None:
    if value is None:
        return None
    env: dict[Any, Any] = _exact(value, dict)
    if any(type(key) is not str or type(item) is not str for key, item in env.items()):
        raise _Unsure
    if env_problem(env) is not None:
        raise _Unsure
    return tuple(sorted(env.items()))


def _ttl(value: object) -> float | None:
    if value is None:
        return None
    if type(value) not in (str, int, float):
        raise _Unsure
    seconds = float(units.parse_duration(value))
    if not math.isfinite(seconds) or seconds <= 0:
        raise _Unsure
    return seconds


def _workdir(value: object) -> str | None:
    if value is None:
        return None
    path: str = _exact(value, str)
    if sandbox.path_problem(path) is not None:
        raise _Unsure
    return path


def _user(value: object) -> str | None:
    if value is None:
        return None
    if type(value) not in (str, int):
        raise _Unsure
    sandbox.parse_user(value)
    return str(value)


def _mounts(value: object) -> tuple[MountSpec, ...] | None:
    if value is None:
        return None
    items: list[Any] = _exact(value, list)
    if len(items) > sandbox.MAX_MOUNTS:
        raise _Unsure
    mounts = []
    for item in items:
        mount = _mapping(item, _MOUNT)
        source = _absolute(mount.get("source"))
        target: str = _exact(mount.get("target"), str)
        if source is None or sandbox.target_problem(target) is not None:
            raise _Unsure
        mounts.append(MountSpec(source, target, _exact(mount.get("readOnly", True), bool)))
    if mount_targets_problem([mount.target for mount in mounts]) is not None:
        raise _Unsure
    return tuple(mounts)
