#!/usr/bin/env python3
"""fakewisp: a scripted stand-in for the ``wisp`` CLI (see wisp-cli.md).

Standard library only; it starts fast and keeps no process around (sprites
are records in a JSON file, nothing runs). Every call takes an exclusive
``flock`` on ``<state>.lock`` around its read-modify-write, so concurrent
calls are safe.

Calls: ``--version``, ``start <name> --memory <size> --cpus <n>``,
``list --json``, ``attach <name>``, ``kill <name>``, ``logs [<name>]``,
``exec <name> [--env K=V]... [--workdir D] [--user U] [--stdin] -- <argv...>``
(prints ``exec in <name>: <argv>`` and runs nothing, unless the script says
``"exec": "run"``). Anything else: ``unknown command '<x>'``, exit 1. Bad
usage: exit 2.

Environment
-----------
``FAKEWISP_STATE``   the inventory file (JSON), created if absent. Required.
``FAKEWISP_SCRIPT``  a fault script (JSON, below), re-read on every call.
The inventory file also keeps the history, one entry per successful state
change, saved in the same atomic write as the change itself (so a call
killed at any instant leaves history and inventory in agreement)::

    {"t": <unix time>, "op": "start"|"kill", "name": ..., "memory": <bytes>,
     "cpus": <n>, "running": <running sprites after>,
     "memory_total": <bytes of running sprites after>,
     "cpus_total": <cpus of running sprites after>, "sprites": <all after>}

  A phantom start is recorded with ``"phantom": true`` and unchanged totals.
``FAKEWISP_CALLS``   JSON lines, one per invocation: ``{"t", "argv", "pid",
  "pgid"}``; processes a call forks add ``{"t", "child", "of", "pgid"}``.

Script (every key optional; ``<op>`` is one of version, start, list, kill,
attach, logs, exec; ``"*"`` matches any op or name)
--------------------------------------------------------------------------
``"version": "0.9.0-fake"``
    What ``--version`` prints after ``wisp ``.
``"delay": {"<op>": <seconds> | {"<name>": <seconds>}}``
    Sleep before doing anything (outside the lock).
``"fail": {"<op>": <failure> | {"<name>": <failure>}}``
    Fail instead of acting. ``<failure>`` is a reason string (``{name}`` is
    replaced by the sprite name), e.g. ``"/dev/kvm not found or no access"``,
    ``"permission denied"``, ``"insufficient memory"``,
    ``"sprite '{name}' already exists"``, ``"sprite '{name}' not found"``;
    or ``{"reason": "...", "times": <n>}`` to fail only the first n matching
    calls (counted in the state file).
``"exit_code": 1``
    Exit status of every failure.
``"stderr_noise": false``
    Print two log lines on stderr before anything else, on every call.
``"hang": [<op>, ...] | {"<op>": [<name>, ...] | "*"}``
    Sleep forever before acting (a hung start leaves no sprite).
``"hang_after": ...`` (same form)
    Act (start really records the sprite), then sleep forever before
    answering.
``"hang_child": false``
    A hanging call first forks a child in its process group that sleeps
    forever too.
``"ignore_sigterm": false``
    Ignore SIGTERM for the whole call (so only SIGKILL ends a hang).
``"list": "ok" | "noise" | "garbage" | "truncated" | "empty"``
    ``noise``: log lines around a pretty-printed array; ``garbage``: 300+
    bytes of non-JSON; ``truncated``: the array cut in half; ``empty``:
    nothing on stdout.
``"list_output": "<text>"``
    Print exactly this for ``list`` (overrides ``list``).
``"phantom": [<name>, ...]``
    ``start`` prints success but records nothing: the next list lacks it.
``"vanish_on_kill": [<name>, ...]``
    ``kill`` finds the sprite already gone: the record is dropped and the
    call fails with ``sprite '<name>' not found``.
``"capacity": {"memory": <size>, "cpus": <n>, "sprites": <n>}``
    Host limits over running sprites; a start past them fails with
    ``insufficient memory`` / ``insufficient cpus`` / ``too many sprites``.
``"start_state": "running"``
    The state new sprites get (``stopped`` or ``error`` to simulate a boot
    that fails after wisp returned).
``"quiet": [<op>, ...]``
    Succeed with nothing on stdout.
``"linger": <seconds>``
    A successful start leaves a child holding stdout/stderr open this long.
``"exec": "echo" | "run" | "unsupported"`` and ``"exec_exit_code": 0``
    ``unsupported`` answers ``unknown command 'exec'`` like an old wisp;
    ``run`` really runs the argv on this host (the fake's sprites share its
    filesystem) with ``--env`` added, in ``--workdir``, stdin passed only
    with ``--stdin``; ``--user`` is recorded, not honoured.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

VERSION = "0.9.0-fake"
OPS = ("version", "start", "list", "kill", "attach", "logs", "exec")
NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
SIZE_RE = re.compile(r"(\d+)(KiB|MiB|GiB|TiB|K|M|G|T|B)?")
UNITS = {
    None: 1,
    "B": 1,
    "K": 1 << 10,
    "KiB": 1 << 10,
    "M": 1 << 20,
    "MiB": 1 << 20,
    "G": 1 << 30,
    "GiB": 1 << 30,
    "T": 1 << 40,
    "TiB": 1 << 40,
}
DEFAULT_MEMORY = 512 << 20
DEFAULT_CPUS = 1


class Failure(Exception):
    def __init__(self, reason: str, code: int = 1) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


# -- state -------------------------------------------------------------------


def empty_state() -> dict[str, Any]:
    return {"next": 1, "sprites": {}, "counters": {}, "history": []}


@contextmanager
def locked_state(path: str) -> Iterator[dict[str, Any]]:
    """The state under an exclusive lock; changes are saved on exit."""
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            state = read_state(path)
            before = json.dumps(state, sort_keys=True)
            try:
                yield state
            finally:
                # Saved even when the call then fails (a sprite that vanished).
                if json.dumps(state, sort_keys=True) != before:
                    write_state(path, state)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_state(path: str) -> dict[str, Any]:
    try:
        with open(path) as handle:
            text = handle.read()
    except FileNotFoundError:
        return empty_state()
    if not text.strip():
        return empty_state()
    state: dict[str, Any] = json.loads(text)
    for key, value in empty_state().items():
        state.setdefault(key, value)
    return state


def write_state(path: str, state: dict[str, Any]) -> None:
    temp = f"{path}.{os.getpid()}.tmp"
    with open(temp, "w") as handle:
        json.dump(state, handle, indent=1)
    os.replace(temp, path)


def totals(state: dict[str, Any]) -> dict[str, int]:
    running = [s for s in state["sprites"].values() if s["state"] == "running"]
    return {
        "running": len(running),
        "memory_total": sum(s["memory"] for s in running),
        "cpus_total": sum(s["cpus"] for s in running),
        "sprites": len(state["sprites"]),
    }


def append_line(env_var: str, record: dict[str, Any]) -> None:
    path = os.environ.get(env_var)
    if not path:
        return
    line = json.dumps(record) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def record(state: dict[str, Any], op: str, sprite: dict[str, Any], **extra: Any) -> None:
    state["history"].append(
        {
            "t": time.time(),
            "op": op,
            "name": sprite["name"],
            "memory": sprite["memory"],
            "cpus": sprite["cpus"],
            **totals(state),
            **extra,
        },
    )


# -- script --------------------------------------------------------------------


def load_script() -> dict[str, Any]:
    path = os.environ.get("FAKEWISP_SCRIPT")
    if not path:
        return {}
    try:
        with open(path) as handle:
            text = handle.read()
    except FileNotFoundError:
        return {}
    script: dict[str, Any] = json.loads(text) if text.strip() else {}
    return script


def lookup(table: Any, op: str, name: str | None) -> Any:
    """The entry of a ``{op: value | {name: value}}`` table for this call."""
    if not isinstance(table, dict):
        return None
    entry = table.get(op, table.get("*"))
    if isinstance(entry, dict) and "reason" not in entry:
        return entry.get(name or "", entry.get("*"))
    return entry


def selected(spec: Any, op: str, name: str | None) -> bool:
    """Whether a ``[op, ...]`` or ``{op: [name, ...] | "*"}`` selector picks this call."""
    if isinstance(spec, list):
        return op in spec or "*" in spec
    if isinstance(spec, dict):
        entry = spec.get(op, spec.get("*"))
        if entry is True or entry == "*":
            return True
        if isinstance(entry, list):
            return name in entry or "*" in entry
    return False


def hang(script: dict[str, Any]) -> None:
    if script.get("hang_child"):
        child = os.fork()
        if child == 0:
            while True:
                time.sleep(3600)
        append_line(
            "FAKEWISP_CALLS",
            {"t": time.time(), "child": child, "of": os.getpid(), "pgid": os.getpgid(0)},
        )
    while True:
        time.sleep(3600)


def scripted_failure(script: dict[str, Any], state_path: str, op: str, name: str | None) -> None:
    failure = lookup(script.get("fail"), op, name)
    if failure is None:
        return
    times: int | None = None
    reason = failure
    if isinstance(failure, dict):
        reason = failure.get("reason", "")
        times = failure.get("times")
    if times is not None:
        key = f"{op}:{name or ''}"
        with locked_state(state_path) as state:
            used = state["counters"].get(key, 0)
            if used >= times:
                return
            state["counters"][key] = used + 1
    raise Failure(str(reason).replace("{name}", name or ""))


# -- commands ------------------------------------------------------------------


def parse_size(text: str) -> int:
    match = SIZE_RE.fullmatch(text)
    if match is None or int(match.group(1)) <= 0:
        raise Failure(f"invalid memory size '{text}'", 2)
    return int(match.group(1)) * UNITS[match.group(2)]


def format_size(size: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size % factor == 0 and size >= factor:
            return f"{size // factor}{unit}"
    return f"{size}B"


def check_name(name: str) -> str:
    if NAME_RE.fullmatch(name) is None:
        raise Failure(f"invalid sprite name '{name}'", 2)
    return name


def parse_start(args: list[str]) -> tuple[str, int, int]:
    name: str | None = None
    memory, cpus = DEFAULT_MEMORY, DEFAULT_CPUS
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        key, eq, inline = arg.partition("=")
        if key in ("--memory", "--cpus"):
            if not eq:
                if not rest:
                    raise Failure(f"flag needs an argument: {key}", 2)
                inline = rest.pop(0)
            if key == "--memory":
                memory = parse_size(inline)
            elif inline.isdigit() and int(inline) > 0:
                cpus = int(inline)
            else:
                raise Failure(f"invalid cpus '{inline}'", 2)
        elif arg.startswith("-"):
            raise Failure(f"unknown flag: {arg}", 2)
        elif name is None:
            name = arg
        else:
            raise Failure(f"unexpected argument '{arg}'", 2)
    if name is None:
        raise Failure("start needs a sprite name", 2)
    return check_name(name), memory, cpus


def one_name(op: str, args: list[str]) -> str:
    if len(args) != 1:
        raise Failure(f"{op} needs exactly one sprite name", 2)
    return check_name(args[0])


def do_start(script: dict[str, Any], state_path: str, name: str, memory: int, cpus: int) -> str:
    directory = os.path.dirname(os.path.abspath(state_path))
    with locked_state(state_path) as state:
        sprites = state["sprites"]
        if name in sprites:
            raise Failure(f"sprite '{name}' already exists")
        capacity = script.get("capacity") or {}
        now = totals(state)
        if "memory" in capacity:
            limit = capacity["memory"]
            limit = parse_size(limit) if isinstance(limit, str) else int(limit)
            if now["memory_total"] + memory > limit:
                raise Failure("insufficient memory")
        if "cpus" in capacity and now["cpus_total"] + cpus > int(capacity["cpus"]):
            raise Failure("insufficient cpus")
        if "sprites" in capacity and now["running"] + 1 > int(capacity["sprites"]):
            raise Failure("too many sprites")
        number = state["next"]
        state["next"] = number + 1
        ident = f"sprite-{number:06x}"
        sprite = {
            "id": ident,
            "name": name,
            "state": script.get("start_state", "running"),
            "pid": 40000 + number,
            "address": f"unix://{directory}/{ident}.sock",
            "memory": memory,
            "cpus": cpus,
            "started_at": time.time(),
        }
        if name in (script.get("phantom") or []):
            record(state, "start", sprite, phantom=True)
        else:
            sprites[name] = sprite
            record(state, "start", sprite)
    if selected(script.get("hang_after"), "start", name):
        hang(script)
    return f"Started Sprite VM with ID: {ident}\nConnection: {sprite['address']}\n"


def do_kill(script: dict[str, Any], state_path: str, name: str) -> str:
    with locked_state(state_path) as state:
        sprite = state["sprites"].pop(name, None)
        if sprite is None or name in (script.get("vanish_on_kill") or []):
            raise Failure(f"sprite '{name}' not found")
        record(state, "kill", sprite)
    if selected(script.get("hang_after"), "kill", name):
        hang(script)
    return f"Terminated VM {name} (PID: {sprite['pid']})\n"


def public(sprite: dict[str, Any]) -> dict[str, Any]:
    return {
        key: sprite[key]
        for key in ("id", "name", "state", "pid", "address")
        if sprite.get(key) is not None
    }


def do_list(script: dict[str, Any], state_path: str) -> str:
    with locked_state(state_path) as state:
        entries = [public(s) for s in state["sprites"].values()]
    if "list_output" in script:
        return str(script["list_output"])
    mode = script.get("list", "ok")
    text = json.dumps(entries)
    if mode == "noise":
        return (
            'time=2024-01-01T00:00:00Z level=info msg="scanning /run/wisp"\n'
            "[wisp] 1 socket directory checked\n"
            + json.dumps(entries, indent=2)
            + '\nlevel=info msg="listed sprites" took=3ms\n'
        )
    if mode == "garbage":
        return (
            "<html><head><title>502 Bad Gateway</title></head><body>"
            + "the wisp daemon did not answer; " * 10
            + "</body></html>\n"
        )
    if mode == "truncated":
        return text[: max(1, len(text) // 2)]
    if mode == "empty":
        return ""
    return text + "\n"


def known_sprite(state_path: str, name: str) -> dict[str, Any]:
    with locked_state(state_path) as state:
        sprite = state["sprites"].get(name)
    if sprite is None:
        raise Failure(f"sprite '{name}' not found")
    return dict(sprite)


def do_attach(state_path: str, name: str) -> str:
    sprite = known_sprite(state_path, name)
    return f"Connected to {name}. Console output:\n$ [Agent is running...] ({sprite['state']})\n"


def do_logs(state_path: str, args: list[str]) -> str:
    if len(args) > 1:
        raise Failure("logs takes at most one sprite name", 2)
    if args:
        sprites = [known_sprite(state_path, check_name(args[0]))]
    else:
        with locked_state(state_path) as state:
            sprites = list(state["sprites"].values())
    return "".join(
        f"{s['name']}: started {s['id']} memory={format_size(s['memory'])} "
        f"cpus={s['cpus']} state={s['state']}\n"
        for s in sprites
    )


def do_exec(script: dict[str, Any], state_path: str, args: list[str]) -> tuple[str, int]:
    if script.get("exec") == "unsupported":
        raise Failure("unknown command 'exec'")
    usage = "usage: wisp exec <name> [--env K=V]... [--workdir D] [--user U] [--stdin] -- <argv...>"
    if "--" not in args or not args[0:1] or args.index("--") == len(args) - 1:
        raise Failure(usage, 2)
    cut = args.index("--")
    options, argv = args[1:cut], args[cut + 1 :]
    name = check_name(args[0])
    env: dict[str, str] = {}
    workdir: str | None = None
    stdin = False
    while options:
        option = options.pop(0)
        if option == "--stdin":
            stdin = True
        elif option in ("--env", "--workdir", "--user") and options:
            value = options.pop(0)
            if option == "--env":
                key, sep, text = value.partition("=")
                if not sep or not key:
                    raise Failure(usage, 2)
                env[key] = text
            elif option == "--workdir":
                workdir = value
        else:
            raise Failure(usage, 2)
    sprite = known_sprite(state_path, name)
    if sprite["state"] != "running":
        raise Failure(f"sprite '{name}' is not running")
    if script.get("exec") == "run":
        sys.stdout.flush()
        if not stdin:
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
        try:
            if workdir:
                os.chdir(workdir)
            os.execvpe(argv[0], argv, {**os.environ, **env})
        except OSError as exc:
            raise Failure(f"cannot run {argv[0]}: {exc.strerror}", 125) from None
    return f"exec in {name}: {shlex.join(argv)}\n", int(script.get("exec_exit_code", 0))


def main(argv: list[str]) -> int:
    append_line(
        "FAKEWISP_CALLS",
        {"t": time.time(), "argv": argv, "pid": os.getpid(), "pgid": os.getpgid(0)},
    )
    script = load_script()
    if script.get("ignore_sigterm"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if script.get("stderr_noise"):
        sys.stderr.write('level=debug msg="config loaded"\nlevel=warn msg="cache is stale"\n')
        sys.stderr.flush()
    code = 0
    try:
        if not argv:
            raise Failure("usage: wisp <command> [args]", 2)
        command, args = argv[0], argv[1:]
        op = "version" if command in ("--version", "version") else command
        if op not in OPS:
            raise Failure(f"unknown command '{command}'")
        name: str | None = None
        if op == "start":
            name, memory, cpus = parse_start(args)
        elif op in ("kill", "attach"):
            name = one_name(op, args)
        elif op in ("logs", "exec") and args:
            name = check_name(args[0])
        elif op == "list" and args != ["--json"]:
            raise Failure("list needs --json", 2)
        state_path = os.environ.get("FAKEWISP_STATE")
        if not state_path:
            raise Failure("FAKEWISP_STATE is not set", 2)
        delay = lookup(script.get("delay"), op, name)
        if delay:
            time.sleep(float(delay))
        if selected(script.get("hang"), op, name):
            hang(script)
        scripted_failure(script, state_path, op, name)
        if op == "version":
            out = f"wisp {script.get('version', VERSION)}\n"
        elif op == "start":
            assert name is not None
            out = do_start(script, state_path, name, memory, cpus)
        elif op == "list":
            out = do_list(script, state_path)
        elif op == "kill":
            assert name is not None
            out = do_kill(script, state_path, name)
        elif op == "attach":
            assert name is not None
            out = do_attach(state_path, name)
        elif op == "logs":
            out = do_logs(state_path, args)
        else:
            out, code = do_exec(script, state_path, args)
        if op in (script.get("quiet") or []):
            out = ""
        sys.stdout.write(out)
        sys.stdout.flush()
        if op == "start" and script.get("linger"):
            linger(float(script["linger"]))
        return code
    except Failure as failure:
        sys.stderr.write(failure.reason + "\n")
        sys.stderr.flush()
        if failure.code in (2, 125):
            return failure.code
        return int(script.get("exit_code", failure.code))


def linger(seconds: float) -> None:
    child = os.fork()
    if child == 0:
        time.sleep(seconds)
        os._exit(0)
    append_line(
        "FAKEWISP_CALLS",
        {"t": time.time(), "child": child, "of": os.getpid(), "pgid": os.getpgid(0)},
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
