"""The sprites manifest as pydantic models: the authority on what a valid
manifest is, and the source of every validation error's wording.

:meth:`Manifest.spec` turns a validated manifest into the plain
:class:`~reconciler.models.desired.ManifestSpec` the engine works with; the
common case skips these models altogether (see
:func:`reconciler.models.desired.quick_spec`). The JSON Schema users see
(``sprites schema``) is made from these models, so field descriptions here
are user documentation.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StrictBool,
    StrictInt,
    StrictStr,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from reconciler.models import sandbox, units
from reconciler.models.desired import (
    MAX_REPLICAS,
    MIN_MEMORY,
    LimitsSpec,
    ManifestSpec,
    MountSpec,
    TemplateSpec,
    absolute_path_problem,
    command_problem,
    env_problem,
    mount_targets_problem,
)


def _size(value: object) -> int:
    return units.parse_size(value)


def _sprite_memory(value: int) -> int:
    if value < MIN_MEMORY:
        raise ValueError(f"invalid size {units.format_size(value)!r}: a sprite needs at least 1MiB")
    return value


def _name(value: object) -> str:
    problem = units.name_problem(value)
    if problem:
        raise ValueError(problem)
    assert isinstance(value, str)
    return value


Size = Annotated[
    int,
    BeforeValidator(_size),
    PlainSerializer(units.format_size, return_type=str),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^\d+\s*(KiB|MiB|GiB|TiB|K|M|G|T|B)?$"},
                {"type": "integer", "minimum": 1},
            ],
            "description": "A size such as 512MiB or 2GiB (also K/M/G, or plain bytes).",
        }
    ),
]
SpriteMemory = Annotated[Size, AfterValidator(_sprite_memory)]
Cpus = Annotated[
    int,
    BeforeValidator(units.parse_cpus),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer", "minimum": 1}, {"type": "string", "pattern": r"^\d+$"}],
            "description": 'A positive number of CPUs, as an integer or a string ("2").',
        }
    ),
]
Name = Annotated[
    str,
    BeforeValidator(_name),
    WithJsonSchema({"type": "string", "pattern": f"^{units.NAME_PATTERN}$"}),
]
Duration = Annotated[
    float,
    BeforeValidator(units.parse_duration),
    WithJsonSchema(
        {
            "anyOf": [{"type": "string"}, {"type": "number", "minimum": 0}],
            "description": "A duration such as 30s, 10m or 1h.",
        }
    ),
]


def _positive_ttl(seconds: float) -> float:
    if seconds <= 0:
        raise ValueError("ttl must be longer than zero, e.g. 30m or 2h")
    return seconds


Ttl = Annotated[
    float,
    BeforeValidator(units.parse_duration),
    AfterValidator(_positive_ttl),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^(\d+(\.\d+)?(ms|s|m|h|d))+$"},
                {"type": "number", "exclusiveMinimum": 0},
            ],
            "description": "A duration such as 30s, 10m or 1h30m.",
        }
    ),
]


def _absolute_path(value: str) -> str:
    problem = absolute_path_problem(value)
    if problem:
        raise ValueError(problem)
    return value


GuestPath = Annotated[
    StrictStr,
    AfterValidator(_absolute_path),
    WithJsonSchema({"type": "string", "pattern": "^/"}),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _sprite_path(value: str) -> str:
    problem = sandbox.path_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _mount_target(value: str) -> str:
    problem = sandbox.target_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _sprite_user(value: object) -> str:
    sandbox.parse_user(value)
    return str(value)


SpritePath = Annotated[StrictStr, AfterValidator(_sprite_path)]
SpriteUser = Annotated[
    str,
    BeforeValidator(_sprite_user),
    WithJsonSchema(
        {
            "anyOf": [
                {
                    "type": "string",
                    "pattern": r"^(root|sprite|nobody|\d+)(:(root|tty|sprite|nogroup|nobody|\d+))?$",
                },
                {"type": "integer", "minimum": 0, "maximum": sandbox.ID_RANGE - 1},
            ],
            "description": f"A user inside the sprite: {sandbox.USER_HELP}.",
        }
    ),
]


class Mount(_Strict):
    """A host path bound into the sprite."""

    source: Annotated[StrictStr, AfterValidator(_absolute_path)] = Field(
        description=(
            "The host path (absolute). It must exist when the sprite starts; symlinks in it "
            "are resolved then, and the resolved path is what is mounted."
        )
    )
    target: Annotated[StrictStr, AfterValidator(_mount_target)] = Field(
        description=(
            "Where it appears in the sprite (absolute, normalized; not /, /etc, /home, /tmp, "
            "nor /usr, /proc, /dev, /bin, /sbin, /lib* or anything under them)."
        )
    )
    readOnly: StrictBool = Field(True, description="Mount read-only (the default).")


class Resources(_Strict):
    """Default resources for every sprite that does not set its own."""

    memory: SpriteMemory | None = Field(None, description="Memory per sprite, e.g. 512MiB.")
    cpus: Cpus | None = Field(None, description="CPUs per sprite.")


class Limits(_Strict):
    """This project's own budget: the sprites it runs may never exceed it."""

    maxVMs: StrictInt | None = Field(
        None, ge=1, description="Most sprites this project runs at once."
    )
    memory: Size | None = Field(None, description="Total memory of this project's sprites.")
    cpus: Cpus | None = Field(None, description="Total CPUs of this project's sprites.")


class SpriteTemplate(_Strict):
    """One entry under ``sprites:``; with ``replicas`` it stands for several sprites."""

    memory: SpriteMemory | None = Field(
        None, description="Memory, e.g. 1GiB. Default: defaults.memory, then the config."
    )
    cpus: Cpus | None = Field(None, description="CPUs. Default: defaults.cpus, then the config.")
    replicas: StrictInt = Field(
        1, ge=1, le=MAX_REPLICAS, description="Run this many sprites named <name>-1 .. <name>-N."
    )
    command: list[StrictStr] | None = Field(
        None,
        min_length=1,
        description="The sprite's command (argv). Default: a shell on its console.",
    )
    env: dict[StrictStr, StrictStr] | None = Field(None, description="Environment of the command.")
    ttl: Ttl | None = Field(
        None,
        description=(
            "Time to live, e.g. 30m: once a sprite has run this long it is killed and not "
            "started again until the manifest changes. Changing it never replaces a sprite."
        ),
    )
    runtime: Literal["builtin", "microvm"] | None = Field(
        None,
        description=(
            "The runtime of this sprite: builtin (namespaces and cgroups) or microvm (a QEMU "
            "microVM with its own kernel). Default: the config's agent.runtime."
        ),
    )
    kernel: GuestPath | None = Field(
        None,
        description=(
            "microvm: the guest kernel to boot (absolute path to a vmlinux or bzImage). "
            "Default: the kernel of `sprites image build`."
        ),
    )
    initrd: GuestPath | None = Field(
        None,
        description=(
            "microvm: the initramfs to boot (absolute path). Default: the initramfs of "
            "`sprites image build`."
        ),
    )

    workdir: SpritePath | None = Field(
        None, description="Directory the command starts in, and exec runs in. Default: /work."
    )
    user: SpriteUser | None = Field(
        None,
        description=(
            "The user the command and exec run as: root, sprite (uid 1000, owner of /work and "
            "/home/sprite), nobody or uid[:gid]. Even root has no capabilities. Default: sprite."
        ),
    )
    mounts: list[Mount] | None = Field(
        None,
        max_length=sandbox.MAX_MOUNTS,
        description="Host paths to bind into the sprite: [{source, target, readOnly}].",
    )
    network: Literal["none", "host"] | None = Field(
        None,
        description=(
            "none (the default): loopback only. host: the host's network, loopback included "
            "(the plan shows it)."
        ),
    )
    keep: StrictBool | None = Field(
        None,
        description=(
            "Keep the sprite's /tmp, /work and /home/sprite when it is killed (a sprite of the "
            "same name started later finds them). Default: false, they are removed."
        ),
    )
    pids: StrictInt | None = Field(
        None,
        ge=1,
        le=sandbox.MAX_PIDS,
        description=f"Most processes the sprite may run at once. Default: {sandbox.DEFAULT_PIDS}.",
    )

    @field_validator("mounts")
    @classmethod
    def _distinct_targets(cls, mounts: list[Mount] | None) -> list[Mount] | None:
        problem = mount_targets_problem([mount.target for mount in mounts or ()])
        if problem:
            raise ValueError(problem)
        return mounts

    def spec(self) -> TemplateSpec:
        return TemplateSpec(
            memory=self.memory,
            cpus=self.cpus,
            replicas=self.replicas,
            command=None if self.command is None else tuple(self.command),
            env=None if self.env is None else tuple(sorted(self.env.items())),
            ttl=self.ttl,
            runtime=self.runtime,
            kernel=self.kernel,
            initrd=self.initrd,
            workdir=self.workdir,
            user=self.user,
            mounts=None
            if self.mounts is None
            else tuple(MountSpec(m.source, m.target, m.readOnly) for m in self.mounts),
            network=self.network,
            keep=self.keep,
            pids=self.pids,
        )

    @model_validator(mode="after")
    def _guest_only_for_microvm(self) -> SpriteTemplate:
        if self.runtime == "builtin" and (self.kernel or self.initrd):
            raise ValueError("kernel and initrd apply only to sprites with runtime: microvm")
        return self

    @field_validator("env")
    @classmethod
    def _env_keys(cls, env: dict[str, str] | None) -> dict[str, str] | None:
        problem = env_problem(env or {})
        if problem:
            raise ValueError(problem)
        return env

    @field_validator("command")
    @classmethod
    def _command(cls, command: list[str] | None) -> list[str] | None:
        problem = command_problem(command or ())
        if problem:
            raise ValueError(problem)
        return command


def _version(value: object) -> object:
    if type(value) is not int:
        raise ValueError(f"expected 1, got {value!r}")
    return value


class Manifest(_Strict):
    """A sprites manifest: the sprites one project wants running."""

    version: Annotated[Literal[1], BeforeValidator(_version)] = Field(
        description="Manifest format version; always 1."
    )
    project: Name = Field(
        description="Ownership scope: apply and destroy touch only sprites this project started."
    )
    defaults: Resources = Field(default_factory=Resources)
    limits: Limits | None = None
    sprites: dict[Name, SpriteTemplate] = Field(default_factory=dict)

    def spec(self) -> ManifestSpec:
        limits = self.limits
        return ManifestSpec(
            project=self.project,
            default_memory=self.defaults.memory,
            default_cpus=self.defaults.cpus,
            limits=None
            if limits is None
            else LimitsSpec(max_vms=limits.maxVMs, memory=limits.memory, cpus=limits.cpus),
            sprites={key: template.spec() for key, template in self.sprites.items()},
        )
