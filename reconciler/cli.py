"""The ``sprites`` command line (also ``wreckit sprite``).

Thin by design: each command parses its options, calls one engine
operation and hands the result to a view. Errors become ``❌ <message>``
(or ``success: false`` with ``--json``) and exit code 1 at one boundary,
:func:`main`; nothing else exits.
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from reconciler import __version__
from reconciler.errors import ApprovalError, ReconcilerError, UsageError

if TYPE_CHECKING:
    from reconciler.engine import Engine
    from reconciler.models.plan import Plan
    from reconciler.views.plan import HumanView, JsonView

F = TypeVar("F", bound=Callable[..., Any])

CONFIRM_PROMPT = "Do you want to perform these actions? Only 'yes' will be accepted: "
CONTEXT = {
    "help_option_names": ["-h", "--help"],
    "auto_envvar_prefix": "SPRITES",
    "max_content_width": 100,
}


class Failed(click.exceptions.Exit):
    """An error already reported to the user; exit 1."""

    def __init__(self) -> None:
        super().__init__(1)


class SpritesGroup(click.Group):
    """Runs commands with one error boundary: every error exits 1 (2 is kept
    for ``plan --detailed-exitcode``), user errors print no traceback."""

    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        code = 0
        try:
            result = super().main(args, prog_name, complete_var, False, **extra)
            code = result if isinstance(result, int) else 0
        except ReconcilerError as error:
            click.echo(error.render(), err=True)
            code = 1
        except click.ClickException as exc:
            exc.show()
            code = 1
        except click.exceptions.Abort:
            click.echo("Aborted.", err=True)
            code = 1
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            code = 130
        sys.exit(code)


class State:
    def __init__(self, config: Path | None, state_dir: Path | None, runtime: str | None) -> None:
        self.config = config
        self.state_dir = state_dir
        self.runtime = runtime
        self._engine: Engine | None = None

    def engine(self) -> Engine:
        if self._engine is None:
            from reconciler.engine import Engine

            self._engine = Engine(
                config_path=self.config, state_dir=self.state_dir, runtime=self.runtime
            )
        return self._engine


pass_state = click.make_pass_decorator(State)


def _fail(error: ReconcilerError, as_json: bool, **data: Any) -> NoReturn:
    from reconciler.views import envelope

    if as_json:
        click.echo(envelope.to_json(envelope.failed(error, **data)))
    else:
        click.echo(error.render(), err=True)
    raise Failed()


def json_option(func: F) -> F:
    return click.option(
        "--json", "as_json", is_flag=True, help="Print JSON instead of human-readable text."
    )(func)


def manifest_option(func: F) -> F:
    return click.option(
        "-f",
        "--file",
        "manifest",
        type=click.Path(path_type=Path, dir_okay=False),
        default=Path("sprites.yaml"),
        show_default=True,
        help="The manifest to reconcile.",
    )(func)


def apply_options(func: F) -> F:
    func = click.option(
        "--auto-approve",
        is_flag=True,
        help="Apply without asking (needed when stdin is not a terminal).",
    )(func)
    func = click.option(
        "--parallelism",
        type=click.IntRange(min=1, max=1000),
        default=10,
        show_default=True,
        help="Most runtime calls in flight at once.",
    )(func)
    func = click.option(
        "--lock-timeout",
        default="0",
        show_default=True,
        metavar="DURATION",
        help="How long to wait for another apply on this project (0, 10s, 2m).",
    )(func)
    return func


@click.group(cls=SpritesGroup, context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="sprites")
@click.option(
    "--config",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The config.json to use (default: .wreckit/config.json here or above).",
)
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Where state, locks and sockets live (default: $XDG_STATE_HOME/sprites).",
)
@click.option(
    "--runtime",
    type=click.Choice(["auto", "wisp", "builtin", "microvm"]),
    help="Override agent.runtime from the config.",
)
@click.option(
    "-v", "--verbose", is_flag=True, help="Log each runtime call and its duration to stderr."
)
@click.pass_context
def cli(
    ctx: click.Context,
    config: Path | None,
    state_dir: Path | None,
    runtime: str | None,
    verbose: bool,
) -> None:
    """Declare the sprites you want; sprites makes reality match.

    \b
    Declarative:  plan, apply, destroy   (a manifest, sprites.yaml)
    Imperative:   start, list, attach, kill, logs
    In a sprite:  exec, cp
    Agents:       mcp                  (the tools over the Model Context Protocol)

    Exit status: 0 success, 1 error (with --detailed-exitcode on plan: 2 means changes).
    """
    if verbose:
        import logging

        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[sprites] %(message)s"))
        logger = logging.getLogger("sprites")
        level = logger.level
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)

        def quiet() -> None:
            # Commands run in-process (tests, agent tools) must not keep
            # logging to a stream that belonged to an earlier call.
            logger.removeHandler(handler)
            logger.setLevel(level)

        ctx.call_on_close(quiet)
    if ctx.invoked_subcommand in RUNS_UNTIL_STOPPED:
        gc.enable()
    ctx.obj = State(config, state_dir, runtime)
    ctx.call_on_close(lambda: ctx.obj._engine.close() if ctx.obj._engine else None)


# -- imperative ------------------------------------------------------------


@cli.command()
@click.argument("name")
@click.option("--memory", metavar="SIZE", help="Memory, e.g. 1GiB (default: agent.defaultMemory).")
@click.option("--cpus", metavar="COUNT", help="CPUs (default: agent.defaultCPUs).")
@json_option
@pass_state
def start(state: State, name: str, memory: str | None, cpus: str | None, as_json: bool) -> None:
    """Start one sprite now. It belongs to no manifest: apply and destroy leave it alone."""
    from reconciler.views import envelope

    try:
        outcome = state.engine().start(name, memory=memory, cpus=cpus)
    except ReconcilerError as error:
        _fail(error, as_json, name=name)
    _print(envelope.started(outcome.name, outcome.memory, outcome.cpus, outcome.result), as_json)


@cli.command("list")
@json_option
@pass_state
def list_(state: State, as_json: bool) -> None:
    """List the sprites the runtime knows, with their state."""
    from reconciler.views import envelope

    try:
        inventory = state.engine().list()
    except ReconcilerError as error:
        _fail(error, as_json)
    _print(envelope.listed(inventory), as_json)


@cli.command()
@click.argument("name")
@json_option
@pass_state
def attach(state: State, name: str, as_json: bool) -> None:
    """Attach to a sprite's console (interactive on a terminal; Ctrl-] detaches).

    Without a terminal, or with --json, print the recent console output and exit.
    """
    from reconciler.views import envelope

    interactive = not as_json and sys.stdin.isatty() and sys.stdout.isatty()
    try:
        result = state.engine().attach(name, interactive=interactive)
    except ReconcilerError as error:
        _fail(error, as_json, name=name)
    if not interactive:
        _print(envelope.attached(name, result), as_json)


@cli.command()
@click.argument("name")
@json_option
@pass_state
def kill(state: State, name: str, as_json: bool) -> None:
    """Kill a sprite, whoever started it (an explicit request)."""
    from reconciler.views import envelope

    try:
        result = state.engine().kill(name)
    except ReconcilerError as error:
        _fail(error, as_json, name=name)
    _print(envelope.killed(name, result), as_json)


@cli.command()
@click.argument("name", required=False)
@json_option
@pass_state
def logs(state: State, name: str | None, as_json: bool) -> None:
    """Print the runtime's log lines, for one sprite or all."""
    from reconciler.views import envelope

    try:
        result = state.engine().logs(name)
    except ReconcilerError as error:
        _fail(error, as_json, name=name)
    if as_json:
        _print(envelope.logged(name, result), True)
    else:
        click.echo(result.stdout, nl=not result.stdout.endswith("\n"))


def _print(document: dict[str, Any], as_json: bool) -> None:
    from reconciler.views import envelope

    click.echo(envelope.to_json(document) if as_json else envelope.human(document))


# -- declarative -----------------------------------------------------------


def _view(as_json: bool, *, stream: bool) -> HumanView | JsonView:
    from reconciler.views.plan import HumanView, JsonView

    return JsonView(stream=stream) if as_json else HumanView()


@cli.command()
@manifest_option
@click.option(
    "-out",
    "--out",
    "out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Save the plan to FILE for `sprites apply FILE`.",
)
@click.option(
    "--detailed-exitcode",
    is_flag=True,
    help="Exit 0 when there are no changes, 1 on error, 2 when there are changes.",
)
@click.option(
    "--adopt", is_flag=True, help="Take over running sprites whose names the manifest wants."
)
@click.option("--destroy", is_flag=True, help="Plan to kill every sprite the project owns.")
@json_option
@pass_state
@click.pass_context
def plan(
    ctx: click.Context,
    state: State,
    manifest: Path,
    out: Path | None,
    detailed_exitcode: bool,
    adopt: bool,
    destroy: bool,
    as_json: bool,
) -> None:
    """Show what apply would change. Changes nothing."""
    from reconciler.engine import write_saved_plan

    view = _view(as_json, stream=False)
    try:
        result = state.engine().plan(manifest, adopt=adopt, destroy=destroy)
        view.plan(result)
        if out is not None:
            write_saved_plan(result, out)
            if not as_json:
                click.echo(f"\nSaved the plan to {out}. Apply exactly it with: sprites apply {out}")
    except ReconcilerError as error:
        view.error(error)
        raise Failed() from None
    if detailed_exitcode and result.has_changes:
        ctx.exit(2)


@cli.command()
@click.argument("plan_file", required=False, type=click.Path(path_type=Path, dir_okay=False))
@manifest_option
@apply_options
@click.option(
    "--adopt", is_flag=True, help="Take over running sprites whose names the manifest wants."
)
@json_option
@pass_state
def apply(
    state: State,
    plan_file: Path | None,
    manifest: Path,
    auto_approve: bool,
    parallelism: int,
    lock_timeout: str,
    adopt: bool,
    as_json: bool,
) -> None:
    """Make the running sprites match the manifest (or apply a saved PLAN_FILE).

    Shows the plan and asks for confirmation on a terminal; without one it
    refuses unless --auto-approve. A saved plan was the review: applying it
    does not ask again, and fails if anything changed since it was made.
    """
    from reconciler.engine import read_saved_plan

    try:
        saved = read_saved_plan(plan_file) if plan_file is not None else None
    except ReconcilerError as error:
        _fail(error, as_json)
    _run_apply(
        state,
        manifest=None if saved else manifest,
        project=None,
        saved=saved,
        adopt=adopt,
        destroy=False,
        auto_approve=auto_approve,
        parallelism=parallelism,
        lock_timeout=lock_timeout,
        as_json=as_json,
    )


@cli.command()
@click.option(
    "-f",
    "--file",
    "manifest",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The manifest naming the project (default: sprites.yaml).",
)
@click.option("-p", "--project", help="Destroy this project's sprites without a manifest.")
@apply_options
@json_option
@pass_state
def destroy(
    state: State,
    manifest: Path | None,
    project: str | None,
    auto_approve: bool,
    parallelism: int,
    lock_timeout: str,
    as_json: bool,
) -> None:
    """Kill every sprite the project owns. Sprites it does not own are never touched."""
    if manifest is not None and project is not None:
        _fail(UsageError("Give either -f FILE or -p PROJECT, not both."), False)
    if manifest is None and project is None:
        manifest = Path("sprites.yaml")
    _run_apply(
        state,
        manifest=manifest,
        project=project,
        saved=None,
        adopt=False,
        destroy=True,
        auto_approve=auto_approve,
        parallelism=parallelism,
        lock_timeout=lock_timeout,
        as_json=as_json,
    )


def _run_apply(
    state: State,
    *,
    manifest: Path | None,
    project: str | None,
    saved: Plan | None,
    adopt: bool,
    destroy: bool,
    auto_approve: bool,
    parallelism: int,
    lock_timeout: str,
    as_json: bool,
) -> None:
    from reconciler.models import units

    view = _view(as_json, stream=True)
    try:
        try:
            timeout = units.parse_duration(lock_timeout)
        except ValueError as exc:
            raise UsageError(f"--lock-timeout: {exc}") from None
        outcome = state.engine().apply(
            manifest,
            project=project,
            saved=saved,
            adopt=adopt,
            destroy=destroy,
            parallelism=parallelism,
            lock_timeout=timeout,
            approve=lambda plan: _confirm(auto_approve, as_json),
            unattended=auto_approve,
            on_plan=view.plan,
            on_note=view.note,
            hooks=view.hooks(),
        )
    except ReconcilerError as error:
        view.error(error)
        raise Failed() from None
    # A saved plan says itself whether it destroys.
    view.applied(outcome.result, outcome.plan.operation)
    if not outcome.ok:
        raise Failed()


def _confirm(auto_approve: bool, as_json: bool) -> bool:
    if auto_approve:
        return True
    if as_json or not sys.stdin.isatty():
        raise ApprovalError(
            "Refusing to apply without confirmation: stdin is not a terminal",
            hint="Pass --auto-approve to apply non-interactively.",
        )
    click.echo("")
    answer = click.prompt(
        CONFIRM_PROMPT.rstrip(), default="", show_default=False, prompt_suffix=" "
    )
    if answer.strip() != "yes":
        raise ApprovalError("Apply cancelled.")
    click.echo("")
    return True


@cli.command("force-unlock")
@click.argument("project")
@pass_state
def force_unlock(state: State, project: str) -> None:
    """Clear a project's lock left behind by a holder that is gone."""
    try:
        click.echo(state.engine().force_unlock(project))
    except ReconcilerError as error:
        _fail(error, False)


# -- agents ------------------------------------------------------------------

MCP_INSTALL = (
    "Install it with: pip install 'sprites[mcp]'  (in a checkout: pip install -e '.[mcp]')"
)


@cli.command()
@pass_state
def mcp(state: State) -> None:
    """Serve the agent tools to an MCP client on stdin/stdout.

    \b
    Tools: SpawnSprite, AttachSprite, ListSprites, KillSprite, PlanSprites, ApplySprites,
    ExecInSprite, CopyToSprite, CopyFromSprite.
    Register it with an agent as the command `sprites mcp`. Needs the mcp extra.
    """
    try:
        from reconciler.tools import server
    except ImportError as exc:
        if (exc.name or "").partition(".")[0] not in ("mcp", "mcp_types"):
            raise
        raise ReconcilerError(
            f"sprites mcp needs the mcp extra, which is not installed ({exc})", hint=MCP_INSTALL
        ) from None
    server.serve(config_path=state.config, state_dir=state.state_dir, runtime=state.runtime)


# -- continuous reconcile ---------------------------------------------------


@cli.command()
@manifest_option
@click.option(
    "--interval",
    default="30s",
    show_default=True,
    metavar="DURATION",
    help="Time between passes; a pass also runs soon after the manifest file changes.",
)
@click.option("--once", is_flag=True, help="Run one pass and exit (1 if it failed): cron and CI.")
@click.option(
    "--adopt", is_flag=True, help="Take over running sprites whose names the manifest wants."
)
@click.option(
    "--parallelism",
    type=click.IntRange(min=1, max=1000),
    default=10,
    show_default=True,
    help="Most runtime calls in flight at once.",
)
@json_option
@pass_state
@click.pass_context
def watch(
    ctx: click.Context,
    state: State,
    manifest: Path,
    interval: str,
    once: bool,
    adopt: bool,
    parallelism: int,
    as_json: bool,
) -> None:
    """Keep the running sprites matching the manifest until stopped.

    Each pass re-reads the manifest, observes, plans and applies without
    asking (running watch is the approval): sprites that died are started
    again, edits are applied, an invalid edit is reported and the last good
    manifest kept. Failing sprites back off. Every event goes to the event
    log (`sprites events`); --json prints them as they happen.
    Ctrl-C or SIGTERM stops after the current pass; sprites keep running.
    """
    from reconciler.loop import Watcher, stop_on_signals
    from reconciler.models import units

    try:
        try:
            seconds = units.parse_duration(interval)
        except ValueError as exc:
            raise UsageError(f"--interval: {exc}") from None
        if seconds <= 0:
            raise UsageError("--interval must be longer than zero")
        engine = state.engine()
        watcher = Watcher(engine, manifest, interval=seconds, adopt=adopt, parallelism=parallelism)
        engine.events.listeners.append(_event_printer(as_json, quiet=True))
        with stop_on_signals(watcher.stop):
            code = watcher.run(once=once)
    except ReconcilerError as error:
        if as_json:
            from reconciler.views.events import error_event

            click.echo(error_event(error))
            raise Failed() from None
        _fail(error, False)
    ctx.exit(code)


def _event_printer(as_json: bool, *, quiet: bool) -> Callable[[dict[str, Any]], None]:
    from reconciler.views.events import event_json, event_line, is_quiet

    def show(event: dict[str, Any]) -> None:
        if as_json:
            click.echo(event_json(event))
        elif not (quiet and is_quiet(event)):
            click.echo(event_line(event))

    return show


@cli.command()
@manifest_option
@json_option
@pass_state
def status(state: State, manifest: Path, as_json: bool) -> None:
    """Each sprite of the manifest against what runs: in sync or not, state,
    uptime, restarts, time left to live and the last error."""
    from reconciler.views import events as views

    try:
        report = state.engine().status(manifest)
    except ReconcilerError as error:
        _fail(error, as_json)
    if as_json:
        click.echo(json.dumps(views.status_document(report), indent=2, ensure_ascii=False))
    else:
        click.echo(views.status_text(report))


@cli.command()
@click.option("-p", "--project", help="Only this project's events.")
@click.option("--follow", is_flag=True, help="Keep printing events as they come (Ctrl-C stops).")
@click.option(
    "-n", "--lines", type=click.IntRange(min=0), help="Only the last N events (then follow)."
)
@json_option
@pass_state
def events(
    state: State, project: str | None, follow: bool, lines: int | None, as_json: bool
) -> None:
    """Print the event log: what every apply, destroy, watch pass and
    imperative start/kill observed, planned and did (all projects of the
    state directory unless -p)."""
    import threading
    from collections import deque

    from reconciler.loop import stop_on_signals

    try:
        log = state.engine().events
    except ReconcilerError as error:
        _fail(error, as_json)
    show = _event_printer(as_json, quiet=False)
    if not follow:
        for event in deque(log.read(project), maxlen=lines):
            show(event)
        return
    stop = threading.Event()
    with stop_on_signals(stop.set):
        for event in log.follow(project, stop=stop.is_set, wait=stop.wait, backlog=lines):
            show(event)


@cli.command()
def schema() -> None:
    """Print the JSON Schema of the manifest, for editors and CI checks.

    \b
    Editors (yaml-language-server) pick it up from a first line such as:
    # yaml-language-server: $schema=./sprites.schema.json
    """
    from reconciler.schema import schema_text

    click.echo(schema_text(), nl=False)


# -- microVM guest image -----------------------------------------------------


@cli.group()
def image() -> None:
    """The microVM runtime's guest image (a kernel and an initramfs)."""


@image.command("build")
@json_option
@pass_state
def image_build(state: State, as_json: bool) -> None:
    """Build the guest image from Debian packages (apt-get download; /boot is untouched).

    The image is cached under the state directory; run it again to update it.
    """
    from reconciler.views import envelope

    try:
        built = state.engine().build_image(lambda line: None if as_json else click.echo(line))
    except ReconcilerError as error:
        _fail(error, as_json)
    data = {"kernel": str(built.kernel), "initrd": str(built.initrd), **built.info}
    document = envelope.envelope(True, "Built the microVM guest image", data)
    if as_json:
        click.echo(envelope.to_json(document))
    else:
        click.echo(f"✅ Built the microVM guest image\n\nkernel: {built.kernel}\ninitrd: {built.initrd}")


# -- inside a sprite ---------------------------------------------------------


@cli.command("exec")
@click.argument("name")
@click.argument("command", nargs=-1, required=True)
@click.option(
    "-e", "--env", "env", multiple=True, metavar="KEY=VALUE", help="Set a variable (repeatable)."
)
@click.option("-w", "--workdir", metavar="DIR", help="Run in DIR (default: the sprite's).")
@click.option(
    "--timeout",
    metavar="DURATION",
    help="Stop the command after this long, e.g. 30s (default: agent.timeout; 0: never).",
)
@click.option(
    "-u",
    "--user",
    metavar="USER",
    help="root, sprite, nobody or uid[:gid] (default: the sprite's).",
)
@json_option
@pass_state
@click.pass_context
def exec_(
    ctx: click.Context,
    state: State,
    name: str,
    command: tuple[str, ...],
    env: tuple[str, ...],
    workdir: str | None,
    timeout: str | None,
    user: str | None,
    as_json: bool,
) -> None:
    """Run a command inside a sprite: sprites exec NAME [OPTIONS] -- COMMAND [ARGS...]

    Its stdout and stderr stream here, stdin is passed on when it is not a
    terminal, and sprites exits with the command's exit code. With --json,
    prints {success, message, data: {exitCode, stdout, stderr, durationMs}}
    once it ends (success: the command ran).
    """
    from reconciler.models import units

    terminal = sys.stdin is None or sys.stdin.isatty()
    try:
        variables: dict[str, str] = {}
        for item in env:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise UsageError(f"--env {item!r}: expected KEY=VALUE")
            variables[key] = value
        try:
            limit = units.parse_duration(timeout) if timeout is not None else None
        except ValueError as exc:
            raise UsageError(f"--timeout: {exc}") from None
        engine = state.engine()
        options: dict[str, Any] = {
            "env": variables,
            "workdir": workdir,
            "user": user,
            "timeout": limit,
        }
        if not as_json and _plain_stdio():
            # Where the runtime can, it takes this process's place: nothing
            # is copied on the way. It returns only where it cannot.
            engine.exec_replace(name, command, stdin=not terminal, **options)
        from reconciler.views import envelope

        out = envelope.capture(envelope.EXEC_OUTPUT_LIMIT)
        err = envelope.capture(envelope.EXEC_OUTPUT_LIMIT)
        streams = (click.get_binary_stream("stdout"), click.get_binary_stream("stderr"))
        sinks = (out, err) if as_json else streams
        result = engine.exec(
            name,
            command,
            stdin=None if terminal else click.get_binary_stream("stdin"),
            stdout=sinks[0],
            stderr=sinks[1],
            **options,
        )
    except ReconcilerError as error:
        _fail(error, as_json, name=name, command=list(command))
    if as_json:
        click.echo(envelope.to_json(envelope.executed(name, command, result, out, err)))
    ctx.exit(result.exit_code)


def _plain_stdio() -> bool:
    """stdin, stdout and stderr are this process's own descriptors 0, 1, 2
    (not captured, as a test runner or an embedding program does)."""
    try:
        streams = (sys.stdin, sys.stdout, sys.stderr)
        return all(s is not None and s.fileno() == fd for fd, s in enumerate(streams))
    except (AttributeError, OSError, ValueError):
        return False


@cli.command()
@click.argument("source")
@click.argument("destination")
@click.option(
    "-u",
    "--user",
    metavar="USER",
    help="Who copies inside the sprite, and owns what is copied in (default: the sprite's user).",
)
@json_option
@pass_state
def cp(state: State, source: str, destination: str, user: str | None, as_json: bool) -> None:
    """Copy files between this host and a sprite: one of SOURCE and
    DESTINATION is <sprite>:<path>.

    \b
    As docker cp: a file copied onto a directory goes inside it; a directory
    copied to a path that does not exist becomes that path, and onto an
    existing directory goes inside it (only its contents when SOURCE ends
    with /.). Modes are kept; paths in a sprite start at its root.
    Examples:
      sprites cp ./project agent-1:/work/project
      sprites cp agent-1:/work/project/results.xml .
    """
    from reconciler.views import envelope

    try:
        result = state.engine().copy(source, destination, user=user)
    except ReconcilerError as error:
        _fail(error, as_json, source=source, destination=destination)
    document = envelope.copied(result)
    click.echo(envelope.to_json(document) if as_json else f"✅ {document['message']}")


# -- entry points ------------------------------------------------------------


@click.group(cls=SpritesGroup, context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="wreckit")
def wreckit() -> None:
    """Wreckit: `wreckit sprite <command>` manages sprites."""


wreckit.add_command(cli, "sprite")


#: Commands that run until stopped, and so keep the cyclic garbage collector.
RUNS_UNTIL_STOPPED = frozenset({"watch", "mcp", "events"})


def _short_lived() -> None:
    """The installed scripts run one command and exit. What a command
    allocates lives until then, and the cyclic garbage collector would only
    scan it again and again: the objects of a 10,000-sprite plan, scanned
    each time the heap grew, cost a third of its time. So the collector is
    off, and the commands in :data:`RUNS_UNTIL_STOPPED` turn it back on."""
    gc.disable()


def main() -> None:
    _short_lived()
    _run(cli, "sprites")


def wreckit_main() -> None:
    _short_lived()
    _run(wreckit, "wreckit")


def _run(group: click.Group, name: str) -> None:
    try:
        group.main(prog_name=name)
    except SystemExit as done:
        _exit_now(done.code)
        raise


def _exit_now(code: object) -> None:
    """End a short-lived command at once, without the interpreter's
    teardown (several milliseconds of freeing what the process holds, more
    the more modules a command imported).

    Only when nothing else is left for that teardown to do: the collector is
    off (no command that runs until stopped) and no other thread runs. The
    atexit handlers (other packages register them, certifi for one) run
    here, as they would at exit, and the standard streams are flushed after
    them. Every file the commands write is closed and, for state, fsynced
    before this point. Otherwise it returns, and the caller exits the usual
    way."""
    if gc.isenabled() or not (code is None or isinstance(code, int)):
        return
    threading = sys.modules.get("threading")
    if threading is not None and threading.active_count() != 1:
        return
    run_handlers = getattr(atexit, "_run_exitfuncs", None)
    if run_handlers is None:
        return
    run_handlers()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return
    os._exit(code or 0)
