"""``sprites-wisp``: the built-in runtime behind the wisp command-line contract
(``--version``, ``start``, ``list --json``, ``attach``, ``kill``, ``logs``,
``exec``), so either can stand in for the other.

It stays light (argparse, no pydantic, yaml or click) and never reads stdin
except for an interactive attach, when stdin is a terminal, and
``exec --stdin``, whose command gets it. Success exits 0; a failure exits
non-zero with a one-line reason on stderr (``exec`` exits with its command's
status, 125 when the command could not be run).

Environment: ``SPRITES_STATE_DIR`` (default
``${XDG_STATE_HOME:-~/.local/state}/sprites``), ``SPRITES_TIMEOUT`` (seconds,
default 300), ``SPRITES_GRACE`` (seconds between SIGTERM and SIGKILL on kill,
default 5) and ``SPRITES_ENFORCE_LIMITS`` (``0`` runs sprites without limits
where cgroups cannot be written).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from reconciler import __version__, errors
from reconciler.drivers import base
from reconciler.drivers.builtin import driver as builtin_driver
from reconciler.models import units

COMMANDS = ("start", "list", "attach", "kill", "logs", "exec")


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(message)


def _float_env(name: str, default: float) -> float:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return units.parse_duration(value)
    except ValueError as exc:
        raise _UsageError(f"{name}: {exc}") from None


def _make_driver() -> builtin_driver.BuiltinDriver:
    enforce = os.environ.get("SPRITES_ENFORCE_LIMITS", "1").strip().lower()
    return builtin_driver.BuiltinDriver(
        builtin_driver.default_state_dir(),
        timeout=_float_env("SPRITES_TIMEOUT", 300.0),
        grace=_float_env("SPRITES_GRACE", 5.0),
        enforce_limits=enforce not in ("0", "false", "no", "off"),
    )


def _parser() -> _Parser:
    parser = _Parser(prog="sprites-wisp", description="The built-in sprite runtime, wisp style.")
    parser.add_argument("--version", action="store_true", help="print the version")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    start = sub.add_parser("start", help="start a sprite")
    start.add_argument("name")
    start.add_argument("--memory", default="512MiB", help="memory limit, e.g. 512MiB")
    start.add_argument("--cpus", default="1", help="CPU limit, e.g. 1")
    start.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="set a variable"
    )
    start.add_argument("--workdir", help="directory the command starts in")

    listing = sub.add_parser("list", help="list sprites")
    listing.add_argument("--json", action="store_true", help="print a JSON array")

    attach = sub.add_parser("attach", help="show or join a sprite's console")
    attach.add_argument("name")

    kill = sub.add_parser("kill", help="terminate a sprite")
    kill.add_argument("name")

    logs = sub.add_parser("logs", help="show the runtime's log lines")
    logs.add_argument("name", nargs="?")

    run = sub.add_parser("exec", help="run a command inside a sprite: exec NAME -- COMMAND...")
    run.add_argument("name")
    run.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="set a variable"
    )
    run.add_argument("--workdir", help="directory the command runs in")
    run.add_argument("--user", help="user inside the sprite: root, sprite, nobody or uid[:gid]")
    run.add_argument(
        "--stdin",
        action="store_true",
        help="pass this stdin to the command (else it reads nothing)",
    )
    return parser


def _check_name(name: str) -> None:
    problem = units.name_problem(name)
    if problem:
        raise _UsageError(problem)


def _start(args: argparse.Namespace, command: tuple[str, ...]) -> int:
    _check_name(args.name)
    try:
        memory = units.parse_size(args.memory)
        cpus = units.parse_cpus(args.cpus)
    except ValueError as exc:
        raise _UsageError(str(exc)) from None
    env = _env(args.env)
    options: dict[str, object] = {}
    if args.workdir:
        options["workdir"] = args.workdir
    request = base.StartRequest(
        name=args.name,
        memory=memory,
        cpus=cpus,
        command=command,
        env=env,
        options=options,
    )
    result = _make_driver().start(request)
    sys.stdout.write(result.stdout)
    return 0


def _list(args: argparse.Namespace) -> int:
    inventory = _make_driver().list()
    for warning in inventory.warnings:
        print(warning, file=sys.stderr)
    if args.json:
        print(json.dumps([sprite.to_json() for sprite in inventory.sprites]))
        return 0
    for sprite in inventory.sprites:
        pid = sprite.pid if sprite.pid is not None else "-"
        line = f"{sprite.name}\t{sprite.id}\t{sprite.state}\t{pid}"
        if sprite.reason:
            line += f"\t{sprite.reason}"
        print(line)
    return 0


def _exec(args: argparse.Namespace, argv: tuple[str, ...]) -> int:
    _check_name(args.name)
    if not argv:
        raise _UsageError("exec needs a command: exec <name> -- COMMAND...")
    helper_argv = _make_driver().exec_argv(
        args.name, argv, env=_env(args.env), workdir=args.workdir, user=args.user
    )
    sys.stdout.flush()
    sys.stderr.flush()
    # The helper takes this process's place: the command's output and exit
    # status pass straight through, and signals reach it directly.
    if not args.stdin:
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
    os.chdir("/")
    os.execv(helper_argv[0], helper_argv)
    return 127  # not reached


def _env(items: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise _UsageError(f"invalid --env {item!r}: expected KEY=VALUE")
        env[key] = value
    return env


def _run(argv: Sequence[str]) -> int:
    if argv and argv[0] not in COMMANDS and not argv[0].startswith("-"):
        raise _UsageError(f"unknown command '{argv[0]}'")
    # A sprite's command follows "--" and is never parsed as options.
    own: list[str] = list(argv)
    command: tuple[str, ...] = ()
    if "--" in own and own[0] in ("start", "exec"):
        cut = own.index("--")
        own, command = own[:cut], tuple(own[cut + 1 :])
    args = _parser().parse_args(own)
    if args.version:
        print(f"wisp {__version__}")
        return 0
    if args.command is None:
        raise _UsageError("a command is needed: " + ", ".join(COMMANDS))
    if args.command == "start":
        return _start(args, command)
    if args.command == "list":
        return _list(args)
    if args.command == "exec":
        return _exec(args, command)
    driver = _make_driver()
    if args.command == "attach":
        _check_name(args.name)
        result = driver.attach(args.name, interactive=sys.stdin.isatty())
    elif args.command == "kill":
        _check_name(args.name)
        result = driver.kill(args.name)
    else:
        if args.name is not None:
            _check_name(args.name)
        result = driver.logs(args.name)
    sys.stdout.write(result.stdout)
    if result.stdout and not result.stdout.endswith("\n"):
        sys.stdout.write("\n")
    return 0


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "failed"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``sprites-wisp``; returns the exit status."""
    try:
        return _run(sys.argv[1:] if argv is None else argv)
    except errors.RuntimeCallError as exc:
        print(_one_line(exc.reason), file=sys.stderr)
        return 1
    except errors.ReconcilerError as exc:
        print(_one_line(exc.user_message), file=sys.stderr)
        return 1
    except _UsageError as exc:
        print(_one_line(str(exc)), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1
    except Exception as exc:  # the contract wants one line, never a traceback
        print(_one_line(f"internal error: {type(exc).__name__}: {exc}"), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
