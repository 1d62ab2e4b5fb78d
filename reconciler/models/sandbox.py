"""What a sprite's sandbox may be asked for: its users, mount targets,
network modes and process limit. Plain functions (no pydantic), shared by the
manifest model and the runtimes, so both accept and refuse the same things."""

from __future__ import annotations

import posixpath

#: The users every sprite's /etc/passwd knows: name -> (uid, gid, home).
USERS: dict[str, tuple[int, int, str]] = {
    "root": (0, 0, "/root"),
    "sprite": (1000, 1000, "/home/sprite"),
    "nobody": (65534, 65534, "/nonexistent"),
}
#: The groups every sprite's /etc/group knows.
GROUPS: dict[str, int] = {"root": 0, "tty": 5, "sprite": 1000, "nogroup": 65534, "nobody": 65534}
DEFAULT_USER = "sprite"
#: Ids inside a sprite go from 0 to ID_RANGE - 1.
ID_RANGE = 65536
DEFAULT_WORKDIR = "/work"
NETWORKS = ("none", "host")
DEFAULT_PIDS = 512
MAX_PIDS = 1 << 22
MAX_MOUNTS = 32

#: Paths a mount may not cover, and trees it may not enter: the sprite's own
#: root, system directories and kernel interfaces.
RESERVED_TARGETS = frozenset(
    {"/", "/etc", "/home", "/tmp", "/usr", "/proc", "/dev", "/bin", "/sbin"}
    | {"/lib", "/lib32", "/lib64", "/libx32"}
)
RESERVED_TREES = ("/proc", "/dev", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")

USER_HELP = "root, sprite, nobody or uid[:gid] (ids below 65536)"


def parse_user(spec: object) -> tuple[int, int, str]:
    """(uid, gid, home) inside a sprite for a user setting: a name its
    /etc/passwd knows, or ``uid[:gid]`` (a group may be named too). Raises
    ValueError saying why."""
    if isinstance(spec, int) and not isinstance(spec, bool):
        spec = str(spec)
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"invalid user {spec!r}: expected {USER_HELP}")
    user_part, colon, group_part = spec.partition(":")
    if user_part in USERS:
        uid, gid, home = USERS[user_part]
    elif user_part.isascii() and user_part.isdigit():
        uid = int(user_part)
        known = [entry for entry in USERS.values() if entry[0] == uid]
        gid, home = (known[0][1], known[0][2]) if known else (uid, "/")
    else:
        raise ValueError(f"unknown user {spec!r}: expected {USER_HELP}")
    if colon:
        if group_part in GROUPS:
            gid = GROUPS[group_part]
        elif group_part.isascii() and group_part.isdigit():
            gid = int(group_part)
        else:
            raise ValueError(f"unknown group in user {spec!r}: expected {USER_HELP}")
    if uid >= ID_RANGE or gid >= ID_RANGE:
        raise ValueError(f"invalid user {spec!r}: ids go up to {ID_RANGE - 1}")
    return uid, gid, home


def login_name(uid: int) -> str:
    """The name of ``uid`` in a sprite's /etc/passwd, else the number."""
    return next((name for name, entry in USERS.items() if entry[0] == uid), str(uid))


def path_problem(path: object) -> str | None:
    """Why ``path`` is not an absolute, normalized path inside a sprite, or None."""
    if not isinstance(path, str) or not path.startswith("/"):
        return "expected an absolute path"
    if "\x00" in path:
        return "a path may not contain NUL bytes"
    if path.startswith("//") or posixpath.normpath(path) != path:
        return f"expected a normalized path ({posixpath.normpath(path)!r})"
    return None


def target_problem(target: object) -> str | None:
    """Why ``target`` cannot be a mount point in a sprite, or None."""
    problem = path_problem(target)
    if problem:
        return problem
    assert isinstance(target, str)
    if target in RESERVED_TARGETS or any(target.startswith(t + "/") for t in RESERVED_TREES):
        return f"{target} is one of the sprite's own mounts"
    return None
