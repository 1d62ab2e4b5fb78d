"""The one entry point every front-end calls (CLI, agent tools, watch loop).

The engine owns the config, the state directory and the runtime driver, and
offers the operations: observe (``list``), imperative ``start``/``kill``/
``attach``/``logs``, and declarative ``plan``/``apply``/``destroy``. Heavy
modules (pydantic models, the planner, deepdiff) are imported only by the
operations that need them, so ``sprites list`` starts fast.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler import config as config_mod
from reconciler.drivers.base import (
    CallResult,
    Driver,
    ExecInput,
    ExecResult,
    OutputSink,
    StartRequest,
)
from reconciler.errors import (
    ApprovalError,
    BudgetExceededError,
    InvalidNameError,
    ReconcilerError,
    RuntimeCallError,
    RuntimeTimeoutError,
    RuntimeUnavailableError,
    StalePlanError,
    UsageError,
    WispNotFoundError,
)
from reconciler.events import EVENTS_FILE, EventLog, EventLogHook, EventType
from reconciler.models import units
from reconciler.models.observed import Inventory
from reconciler.record import field, record

if TYPE_CHECKING:
    from reconciler.drivers.microvm import Image
    from reconciler.executor import ApplyHooks, ApplyResult
    from reconciler.manifest import LoadedManifest
    from reconciler.models.desired import Budget
    from reconciler.models.plan import Plan
    from reconciler.state import StateStore
    from reconciler.status import StatusReport
    from reconciler.transfer import Copied


def check_name(name: str) -> str:
    problem = units.name_problem(name)
    if problem:
        raise InvalidNameError(problem[0].upper() + problem[1:])
    return name


@record
class StartOutcome:
    name: str
    memory: int
    cpus: int
    result: CallResult


@record
class ApplyOutcome:
    plan: Plan
    result: ApplyResult | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.result is None or self.result.ok


class Engine:
    def __init__(
        self,
        *,
        config_path: Path | None = None,
        state_dir: Path | None = None,
        runtime: str | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.config = config_mod.load_config(config_path, cwd=cwd)
        self.config.require_sprite_kind()
        env_dir = os.environ.get("SPRITES_STATE_DIR")
        self.state_dir = state_dir or (Path(env_dir) if env_dir else config_mod.default_state_dir())
        self._store: StateStore | None = None
        if runtime is not None and runtime not in config_mod.RUNTIMES:
            raise UsageError(
                f"unknown runtime '{runtime}'; expected one of {', '.join(config_mod.RUNTIMES)}"
            )
        self.runtime = runtime or self.config.agent.runtime
        self._driver: Driver | None = None
        #: Runtimes the loaded manifests name per sprite (``runtime:``).
        self._runtimes: set[str] = set()
        #: Wall clock for ttl expiry, record start times and events (tests set it).
        self.clock: Callable[[], float] = time.time
        self.events = EventLog(self.state_dir / EVENTS_FILE, clock=lambda: self.clock())

    @property
    def store(self) -> StateStore:
        """The state directory's projects and locks; imported on first use,
        so commands that keep no state (``list``) start without it."""
        if self._store is None:
            from reconciler.state import StateStore

            self._store = StateStore(self.state_dir)
        return self._store

    # -- runtime ---------------------------------------------------------

    @property
    def driver(self) -> Driver:
        if self._driver is None:
            self._driver = self._make_driver()
        return self._driver

    def _make_driver(self) -> Driver:
        """The configured runtime's driver; a composite one when the manifest
        or the sprites already on this host need other runtimes too."""
        from reconciler.drivers.multi import MultiDriver, runtimes_in_use

        default = self._default_driver()
        others: list[Driver] = []
        wanted = self._runtimes | set(runtimes_in_use(self.state_dir))
        for runtime in sorted(wanted - {default.name}):
            try:
                others.append(self._runtime_driver(runtime))
            except RuntimeUnavailableError:
                if runtime in self._runtimes:
                    raise
        return MultiDriver(default, others) if others else default

    def _runtime_driver(self, runtime: str) -> Driver:
        if runtime == "microvm":
            return self._microvm_driver()
        if runtime == "builtin":
            return self._builtin_driver(fallback=False)
        raise UsageError(f"unknown runtime '{runtime}'")

    def _use_runtimes(self, runtimes: Iterable[object]) -> None:
        """Cover the runtimes a manifest names; a driver made before is remade."""
        wanted = {str(runtime) for runtime in runtimes if runtime} - self._runtimes
        if not wanted:
            return
        self._runtimes |= wanted
        if self._driver is not None:
            covered = set(getattr(self._driver, "runtimes", (self._driver.name,)))
            if not wanted <= covered:
                self._driver.close()
                self._driver = None

    def _default_driver(self) -> Driver:
        agent = self.config.agent
        if self.runtime in ("wisp", "auto"):
            from reconciler.drivers import wisp

            path = wisp.resolve_wisp(agent.wisp_path)
            if path is not None:
                return wisp.WispDriver(path, timeout=agent.timeout)
            if self.runtime == "wisp":
                raise WispNotFoundError(agent.wisp_path)
        if self.runtime == "microvm":
            return self._microvm_driver()
        return self._builtin_driver(fallback=self.runtime == "auto")

    def _builtin_driver(self, *, fallback: bool) -> Driver:
        agent = self.config.agent
        try:
            from reconciler.drivers import builtin

            unavailable_reason = builtin.unavailable_reason
        except (ImportError, AttributeError):
            # An empty or partial package (a checkout without the built-in runtime).
            reason: str | None = "the built-in runtime is not installed"
        else:
            reason = unavailable_reason()
            if reason is None:
                driver: Driver = builtin.make_driver(
                    self.state_dir, timeout=agent.timeout, enforce_limits=agent.enforce_limits
                )
                return driver
        if fallback:
            raise RuntimeUnavailableError(
                f"No sprite runtime available: wisp was not found at '{agent.wisp_path}' "
                f"and the built-in runtime cannot run here: {reason}",
                hint="Install wisp and set agent.wispPath, or fix the built-in runtime's requirement.",
            )
        raise RuntimeUnavailableError(f"The built-in runtime cannot run here: {reason}")

    def _microvm_driver(self) -> Driver:
        try:
            from reconciler.drivers import microvm
        except ImportError:
            raise RuntimeUnavailableError(
                "The microvm runtime is not available in this build"
            ) from None
        driver: Driver = microvm.make_driver(self.state_dir, config=self.config.agent)
        return driver

    def close(self) -> None:
        if self._driver is not None:
            self._driver.close()

    # -- imperative ------------------------------------------------------

    def list(self) -> Inventory:
        return self.driver.list()

    def start(
        self, name: str, *, memory: str | None = None, cpus: str | None = None
    ) -> StartOutcome:
        check_name(name)
        agent = self.config.agent
        try:
            size = units.parse_size(memory) if memory is not None else agent.default_memory
            count = units.parse_cpus(cpus) if cpus is not None else agent.default_cpus
        except ValueError as exc:
            raise UsageError(str(exc)[0].upper() + str(exc)[1:]) from None
        with self.store.host_lock(timeout=max(30.0, agent.timeout)):
            running = len(self.driver.list().running())
            if running + 1 > agent.max_vms:
                raise BudgetExceededError(
                    "maxVMs",
                    f"{running + 1} sprites",
                    str(agent.max_vms),
                    detail=f"{running} already running",
                )
            request = StartRequest(name=name, memory=size, cpus=count)
            result = self._logged("start", name, lambda: self.driver.start(request))
        return StartOutcome(name, size, count, result)

    def kill(self, name: str) -> CallResult:
        check_name(name)
        return self._logged("kill", name, lambda: self.driver.kill(name))

    def _logged(self, action: str, name: str, call: Callable[[], CallResult]) -> CallResult:
        """One imperative runtime call, in the event log (it belongs to no project)."""
        fields: dict[str, Any] = {"project": None, "sprite": name, "action": action}
        self.events.emit(EventType.ACTION, outcome="started", operation=action, **fields)
        began = time.monotonic()
        try:
            result = call()
        except ReconcilerError as error:
            took = time.monotonic() - began
            self.events.emit(
                EventType.RESULT,
                outcome="failed",
                duration=took,
                operation=action,
                error=error.user_message,
                **fields,
            )
            raise
        took = time.monotonic() - began
        self.events.emit(EventType.RESULT, outcome="ok", duration=took, operation=action, **fields)
        return result

    def attach(self, name: str, *, interactive: bool) -> CallResult:
        return self.driver.attach(check_name(name), interactive=interactive)

    def logs(self, name: str | None) -> CallResult:
        return self.driver.logs(check_name(name) if name is not None else None)

    # -- inside a sprite -------------------------------------------------

    def exec(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        user: str | None = None,
        timeout: float | None = None,
        stdin: ExecInput = None,
        stdout: OutputSink | None = None,
        stderr: OutputSink | None = None,
    ) -> ExecResult:
        """Run ``argv`` inside sprite ``name`` and wait for it (see
        :meth:`Driver.exec`); ``timeout`` None is agent.timeout, 0 none. A
        command that ran returns, whatever its exit code."""
        check_name(name)
        if not argv or not argv[0]:
            raise UsageError(
                "exec needs a command", hint="Run: sprites exec NAME -- COMMAND [ARGS...]"
            )
        driver = self.driver
        run = getattr(driver, "exec", None)
        if run is None:
            raise RuntimeCallError(
                "exec", f"exec is not supported by the {driver.name} runtime yet"
            )
        limit = self.config.agent.timeout if timeout is None else timeout
        result: ExecResult = run(
            name,
            list(argv),
            env=env,
            workdir=workdir,
            user=user,
            timeout=limit,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
        )
        return result

    def exec_replace(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        user: str | None = None,
        timeout: float | None = None,
        stdin: bool = True,
    ) -> None:
        """Hand this process over to the runtime's own exec, when the runtime
        offers that (the built-in one does): nothing is copied on the way,
        the exit status is the command's, and a failure or timeout prints
        what :meth:`exec` would have raised (rendered) and exits 1. Returns
        only when it cannot; the caller then uses :meth:`exec`."""
        check_name(name)
        if not argv or not argv[0]:
            raise UsageError(
                "exec needs a command", hint="Run: sprites exec NAME -- COMMAND [ARGS...]"
            )
        replace = getattr(self.driver, "exec_replace", None)
        if replace is None:
            return
        limit = self.config.agent.timeout if timeout is None else timeout
        replace(
            name,
            list(argv),
            env=env,
            workdir=workdir,
            user=user,
            timeout=limit,
            stdin=stdin,
            error_prefix=RuntimeCallError("exec", "").render(),
            error_status=1,
            timeout_message=RuntimeTimeoutError("exec", limit).render() if limit > 0 else "",
        )

    def copy(
        self,
        source: str,
        destination: str,
        *,
        user: str | None = None,
        timeout: float | None = None,
    ) -> Copied:
        """``sprites cp SRC DST``: one side ``<sprite>:<path>``, the other a
        host path; tar over exec, with docker cp's rules (see
        :mod:`reconciler.transfer`)."""
        from reconciler import transfer

        src, dst = transfer.parse_location(source), transfer.parse_location(destination)
        if (src.sprite is None) == (dst.sprite is None):
            raise UsageError(
                "One side of a copy must be <sprite>:<path> and the other a local path",
                hint="e.g. sprites cp ./project agent-1:/work/project",
            )
        if dst.sprite is not None:
            return self.copy_to(dst.sprite, src.path, dst.path, user=user, timeout=timeout)
        assert src.sprite is not None
        return self.copy_from(src.sprite, src.path, dst.path, user=user, timeout=timeout)

    def copy_to(
        self,
        name: str,
        source: str,
        destination: str,
        *,
        user: str | None = None,
        timeout: float | None = None,
    ) -> Copied:
        """Copy host path ``source`` to ``destination`` in sprite ``name``."""
        from reconciler import transfer

        run = self._exec_for_copy(check_name(name), user, timeout)
        return transfer.copy_to(
            run, transfer.Location(source), transfer.Location(destination, name)
        )

    def copy_from(
        self,
        name: str,
        source: str,
        destination: str,
        *,
        user: str | None = None,
        timeout: float | None = None,
    ) -> Copied:
        """Copy ``source`` in sprite ``name`` to host path ``destination``."""
        from reconciler import transfer

        run = self._exec_for_copy(check_name(name), user, timeout)
        return transfer.copy_from(
            run, transfer.Location(source, name), transfer.Location(destination)
        )

    def _exec_for_copy(
        self, name: str, user: str | None, timeout: float | None
    ) -> Callable[[Sequence[str], ExecInput, OutputSink | None], ExecResult]:
        def run(argv: Sequence[str], stdin: ExecInput, stdout: OutputSink | None) -> ExecResult:
            return self.exec(name, argv, user=user, timeout=timeout, stdin=stdin, stdout=stdout)

        return run

    # -- declarative -----------------------------------------------------

    def load_manifest(self, path: Path) -> LoadedManifest:
        from reconciler.manifest import load_manifest

        agent = self.config.agent
        loaded = load_manifest(
            path, default_memory=agent.default_memory, default_cpus=agent.default_cpus
        )
        self._use_runtimes(sprite.spec.get("runtime") for sprite in loaded.desired.values())
        return loaded

    def budget(self, loaded: LoadedManifest | None) -> Budget:
        from reconciler.models.desired import Budget

        limits = loaded.manifest.limits if loaded is not None else None
        return Budget(
            host_max_vms=self.config.agent.max_vms,
            max_vms=limits.max_vms if limits else None,
            memory=limits.memory if limits else None,
            cpus=limits.cpus if limits else None,
        )

    def plan(
        self,
        manifest_path: Path | None = None,
        *,
        project: str | None = None,
        adopt: bool = False,
        destroy: bool = False,
        loaded: LoadedManifest | None = None,
        inventory: Inventory | None = None,
    ) -> Plan:
        """Observe and plan; changes nothing."""
        if loaded is None and manifest_path is not None:
            loaded = self.load_manifest(manifest_path)
        return self._plan(loaded, project, adopt=adopt, destroy=destroy, inventory=inventory)

    def _plan(
        self,
        loaded: LoadedManifest | None,
        project: str | None,
        *,
        adopt: bool,
        destroy: bool,
        inventory: Inventory | None = None,
        report_conflicts: bool = False,
    ) -> Plan:
        from reconciler import planner
        from reconciler.bulk import collector_paused

        name = loaded.project if loaded is not None else check_name(project or "")
        with collector_paused():
            state = self.store.load(name)
            inventory = inventory if inventory is not None else self.driver.list()
            desired = {} if destroy or loaded is None else loaded.desired
            return planner.plan(
                desired,
                inventory,
                state.records,
                self.budget(None if destroy else loaded),
                project=name,
                adopt=adopt,
                operation="destroy" if destroy else "apply",
                runtime=self.driver.name,
                manifest_path=str(loaded.path) if loaded is not None else None,
                manifest_digest=loaded.digest if loaded is not None else None,
                now=self.clock(),
                expired=state.expired,
                report_conflicts=report_conflicts,
            )

    def apply(
        self,
        manifest_path: Path | None = None,
        *,
        project: str | None = None,
        saved: Plan | None = None,
        loaded: LoadedManifest | None = None,
        adopt: bool = False,
        destroy: bool = False,
        parallelism: int = 10,
        lock_timeout: float = 0.0,
        approve: Callable[[Plan], bool] = lambda plan: False,
        on_plan: Callable[[Plan], None] = lambda plan: None,
        on_note: Callable[[str], None] = lambda note: None,
        hooks: Sequence[ApplyHooks] = (),
        report_conflicts: bool = False,
        select: Callable[[Plan], Plan] | None = None,
        caller: str | None = None,
        unattended: bool = False,
    ) -> ApplyOutcome:
        """Plan under the project's lock, ask ``approve``, and execute.

        Everything it observes, plans and does goes to the event log.
        ``report_conflicts`` lists unowned sprites holding desired names in
        ``Plan.conflicts`` instead of failing; ``select`` may drop changes
        from the plan before it runs (the watch loop's backoff); ``caller``
        names the operation in the lock record and the events.
        ``unattended`` says that ``approve`` answers at once (auto-approve, a
        saved plan, the watch loop, an agent): the host's admission lock is
        then taken before observing, and one listing serves the plan and the
        admission of its starts.
        """
        from reconciler.executor import Executor

        if parallelism < 1:
            raise UsageError("--parallelism must be at least 1")
        if saved is not None:
            destroy = saved.operation == "destroy"
            # A plan made with --adopt is re-made with it, or what it adopts
            # would look like a conflict with someone else's sprites.
            adopt = (
                adopt
                or bool(saved.adopt)
                or any(c.reason.value == "adopted" for c in saved.changes)
            )
            if saved.manifest_path is not None:
                manifest_path = Path(saved.manifest_path)
            else:
                project = saved.project
        if loaded is None and manifest_path is not None:
            loaded = self.load_manifest(manifest_path)
        name = loaded.project if loaded is not None else check_name(project or "")
        operation = caller or ("destroy" if destroy else "apply")
        early = (unattended or saved is not None) and not destroy
        with (
            self.store.lock(name, operation, timeout=lock_timeout) as notes,
            ExitStack() as admission,
        ):
            for note in notes:
                on_note(note)
            if early:
                admission.enter_context(self._host_admission(lock_timeout))
            inventory = self._observe(name, operation)
            began = time.monotonic()
            try:
                plan = self._plan(
                    loaded,
                    name,
                    adopt=adopt,
                    destroy=destroy,
                    inventory=inventory,
                    report_conflicts=report_conflicts,
                )
                if saved is not None:
                    _check_saved(saved, plan)
                    plan = saved
                if select is not None:
                    plan = select(plan)
            except ReconcilerError as error:
                self.events.emit(
                    EventType.PLAN,
                    project=name,
                    action=operation,
                    outcome="failed",
                    duration=time.monotonic() - began,
                    error=error.user_message,
                )
                raise
            self.events.emit(
                EventType.PLAN,
                project=name,
                action=operation,
                outcome="changes" if plan.has_changes else "no_changes",
                duration=time.monotonic() - began,
                detail=plan.counts(),
            )
            on_plan(plan)
            if not plan.needs_apply:
                return ApplyOutcome(plan, None, notes)
            if (plan.has_changes or plan.adopt) and saved is None and not approve(plan):
                raise ApprovalError("Apply cancelled.")
            starts = any("start" in change.action.steps for change in plan.changes)
            if not starts:
                admission.close()
            elif not early:
                admission.enter_context(self._host_admission(lock_timeout))
                inventory = self._recheck_host(
                    plan,
                    loaded,
                    name,
                    inventory,
                    adopt=adopt,
                    destroy=destroy,
                    report_conflicts=report_conflicts,
                    select=select,
                )
            state = self.store.load(name)
            logger = EventLogHook(self.events, name, operation)
            executor = Executor(
                self.driver,
                state,
                self.store.save,
                self.budget(None if destroy else loaded),
                parallelism=parallelism,
                hooks=[*hooks, logger],
                clock=self.clock,
            )
            result = executor.run(plan, inventory)
            admission.close()
            for sprite, failure in result.failures:
                if sprite not in logger.failed:
                    self.events.emit(
                        EventType.ERROR,
                        project=name,
                        sprite=None if sprite == "*" else sprite,
                        action=operation,
                        outcome="failed",
                        error=failure.user_message,
                    )
        return ApplyOutcome(plan, result, notes)

    def _host_admission(self, lock_timeout: float) -> AbstractContextManager[None]:
        """maxVMs is host-wide: while an apply starts sprites it holds the host's
        admission lock, so two projects (or an apply and ``sprites start``)
        cannot both fill the last place. Kill-only applies need no lock."""
        return self.store.host_lock(timeout=max(lock_timeout, self.config.agent.timeout))

    def _recheck_host(
        self,
        plan: Plan,
        loaded: LoadedManifest | None,
        name: str,
        inventory: Inventory,
        *,
        adopt: bool,
        destroy: bool,
        report_conflicts: bool,
        select: Callable[[Plan], Plan] | None,
    ) -> Inventory:
        """Observe again under the host lock; if other sprites started or
        stopped meanwhile, the plan must still hold (budget included)."""
        from reconciler.planner import inventory_digest

        fresh = self.driver.list()
        if inventory_digest(fresh.sprites) == inventory_digest(inventory.sprites):
            return fresh
        current = self._plan(
            loaded,
            name,
            adopt=adopt,
            destroy=destroy,
            inventory=fresh,
            report_conflicts=report_conflicts,
        )
        if select is not None:
            current = select(current)
        if current.changes != plan.changes:
            raise StalePlanError(
                "The running sprites changed while this apply waited for the host's "
                "admission lock; nothing was applied",
                hint="Run the command again to plan against what runs now.",
            )
        return fresh

    def _observe(self, project: str, operation: str) -> Inventory:
        """List the runtime, and log it."""
        began = time.monotonic()
        try:
            inventory = self.driver.list()
        except ReconcilerError as error:
            self.events.emit(
                EventType.OBSERVE,
                project=project,
                action="list",
                outcome="failed",
                duration=time.monotonic() - began,
                operation=operation,
                error=error.user_message,
            )
            raise
        self.events.emit(
            EventType.OBSERVE,
            project=project,
            action="list",
            outcome="ok",
            duration=time.monotonic() - began,
            operation=operation,
            detail={"sprites": len(inventory.sprites), "running": len(inventory.running())},
        )
        return inventory

    def status(self, manifest_path: Path) -> StatusReport:
        """Desired against actual, per sprite; changes nothing."""
        from reconciler.status import compare

        loaded = self.load_manifest(manifest_path)
        state = self.store.load(loaded.project)
        inventory = self.driver.list()
        return compare(
            loaded,
            inventory,
            state,
            now=self.clock(),
            runtime=self.driver.name,
            last_errors=self.events.last_errors(loaded.project),
        )

    def force_unlock(self, project: str) -> str:
        return self.store.force_unlock(check_name(project))

    def build_image(self, progress: Callable[[str], None] = lambda line: None) -> Image:
        """Build the microVM runtime's guest image under the state directory."""
        from reconciler.drivers import microvm

        timeout = max(600.0, self.config.agent.timeout)
        return microvm.build_image(self.state_dir, progress=progress, timeout=timeout)


def _check_saved(saved: Plan, current: Plan) -> None:
    if saved.manifest_digest != current.manifest_digest:
        raise StalePlanError(
            "Saved plan is stale: the manifest changed since the plan was made",
            hint="Run `sprites plan` again.",
        )
    if saved.inventory_digest != current.inventory_digest or saved.changes != current.changes:
        raise StalePlanError(
            "Saved plan is stale: the running sprites changed since the plan was made",
            hint="Run `sprites plan` again.",
        )


def read_saved_plan(path: Path) -> Plan:
    from pydantic import ValidationError

    from reconciler.models.plan import read_saved_plan_json

    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read saved plan {path}: {exc.strerror}") from None
    try:
        data: Any = json.loads(raw)
        return read_saved_plan_json(data)
    except (ValueError, ValidationError):
        raise UsageError(
            f"{path} is not a saved plan",
            hint="Save one with `sprites plan -f sprites.yaml -out FILE`, or give a manifest with -f.",
        ) from None


def write_saved_plan(plan: Plan, path: Path) -> None:
    from reconciler.models.plan import saved_plan_json

    data = json.dumps(saved_plan_json(plan), indent=1).encode() + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


__all__ = [
    "ApplyOutcome",
    "Engine",
    "ReconcilerError",
    "StartOutcome",
    "check_name",
    "read_saved_plan",
    "write_saved_plan",
]
