"""``sprites cp``: files into and out of a sprite, as a tar stream over exec.

One mechanism for every runtime: ``tar`` runs inside the sprite through the
driver's ``exec`` (stdin or stdout a pipe), and this side packs or unpacks
with :mod:`tarfile`. The rules are ``docker cp``'s: a file copied onto a
directory goes inside it; a directory copied to a path that does not exist
becomes that path, to an existing directory it goes inside it (its contents
only when the source ends in ``/.``); the destination's parent must exist.
Modes are kept; files belong to whoever receives them (the sprite's user
inside, the caller on the host).

Paths inside a sprite are absolute, or relative to its root; one that climbs
above the root (``..``) is refused. What comes out of a sprite is not
trusted: an archive member that would land outside the destination (an
absolute or ``..`` name, a path through a symlink, a link pointing out of it)
or that is not a file, directory or link stops the copy.
"""

from __future__ import annotations

import os
import posixpath
import stat
import tarfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from reconciler.drivers.base import ExecResult
from reconciler.errors import RuntimeCallError, UsageError
from reconciler.models import units
from reconciler.record import record

#: Runs argv inside the sprite: (argv, stdin, stdout) -> ExecResult.
Exec = Callable[[Sequence[str], Any, Any], ExecResult]

#: Prints what the destination is inside the sprite: dir, file, link,
#: missing (its parent exists) or noparent. $1 is the path, never parsed.
PROBE = (
    'p=$1; if [ -d "$p" ]; then echo dir; elif [ -L "$p" ]; then echo link; '
    'elif [ -e "$p" ]; then echo file; elif [ -d "$(dirname -- "$p")" ]; then echo missing; '
    "else echo noparent; fi"
)


class CopyError(RuntimeCallError):
    """A copy that cannot or did not happen; ``Failed to copy files of Sprite: ...``."""

    def __init__(self, reason: str) -> None:
        super().__init__("cp", reason)


@record(frozen=True)
class Location:
    """One side of a copy: a host path, or a path in sprite ``sprite``."""

    path: str
    sprite: str | None = None

    def __str__(self) -> str:
        return f"{self.sprite}:{self.path}" if self.sprite else self.path


@record(frozen=True)
class Copied:
    """What a copy did: where the source landed, and how much was copied."""

    source: Location
    destination: Location
    #: The path the source's top now has (inside the sprite or on the host).
    target: str
    files: int
    bytes: int


def parse_location(text: str) -> Location:
    """``<sprite>:<path>`` names a path in a sprite; anything else is a host
    path (write ``./a:b`` for a host file whose name has a colon)."""
    if not text:
        raise UsageError("A copy needs a source and a destination path")
    head, colon, rest = text.partition(":")
    if colon and units.is_valid_name(head) and "/" not in head:
        if not rest:
            raise UsageError(f"No path after '{head}:'", hint="Write <sprite>:<path>.")
        return Location(rest, head)
    return Location(text)


def sprite_path(path: str) -> str:
    """The absolute, normalized form of a path inside a sprite (relative ones
    start at its root); UsageError when it climbs above the root. A trailing
    ``/`` or ``/.`` is kept, as it means something to the copy."""
    if "\0" in path:
        raise UsageError("A path may not contain NUL bytes")
    depth = 0
    for part in path.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                raise CopyError(f"{path} resolves outside the sprite's root")
        elif part not in ("", "."):
            depth += 1
    normal = posixpath.normpath("/" + path.lstrip("/"))
    if path.endswith("/.") and normal != "/":
        return normal + "/."
    if path.endswith("/") and normal != "/":
        return normal + "/"
    return normal


def _strip(path: str) -> tuple[str, bool, bool]:
    """(path without a trailing ``/.`` or ``/``, contents only, must be a directory)."""
    if path.endswith("/."):
        return path[:-2] or "/", True, True
    if path.endswith("/") and path != "/":
        return path.rstrip("/") or "/", False, True
    return path, False, False


def copy_to(
    exec_in: Exec,
    source: Location,
    destination: Location,
) -> Copied:
    """Copy host ``source`` to ``destination`` in a sprite."""
    assert destination.sprite is not None and source.sprite is None
    local, contents, want_dir = _strip(source.path)
    try:
        info = os.lstat(local)
    except FileNotFoundError:
        raise CopyError(f"no such file or directory: {source}") from None
    except OSError as exc:
        raise CopyError(f"cannot read {source}: {exc.strerror}") from None
    is_dir = stat.S_ISDIR(info.st_mode)
    if want_dir and not is_dir:
        raise CopyError(f"{source} is not a directory")
    dest, _, dest_wants_dir = _strip(sprite_path(destination.path))
    kind = _probe(exec_in, dest)
    if kind == "noparent":
        raise CopyError(f"the parent directory of {destination} does not exist")
    if kind == "missing" and dest_wants_dir and not is_dir:
        raise CopyError(f"destination directory {destination} does not exist")
    if is_dir and kind in ("file", "link"):
        raise CopyError(f"cannot copy a directory to a file ({destination})")
    if kind == "dir":
        into, top = dest, "" if contents else posixpath.basename(local.rstrip("/")) or "root"
    else:
        into, top = posixpath.dirname(dest), posixpath.basename(dest)
    target = posixpath.join(into, top) if top else into
    counter = _Counter()
    reader, writer = os.pipe()
    failure: list[BaseException] = []

    def pack() -> None:
        try:
            with os.fdopen(writer, "wb") as stream:
                with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                    for path, name in _members(local, top, contents and is_dir):
                        tar.add(path, arcname=name, recursive=False, filter=counter.count)
        except BrokenPipeError:
            pass  # tar inside stopped reading; its exit status says why
        except BaseException as exc:
            failure.append(exc)

    packer = threading.Thread(target=pack, name="sprites-cp-pack", daemon=True)
    packer.start()
    try:
        argv = ["tar", "-x", "-p", "--no-same-owner", "-f", "-", "-C", into]
        result = exec_in(argv, reader, None)
    finally:
        os.close(reader)
        packer.join()
    if failure:
        raise CopyError(f"cannot read {source}: {_reason(failure[0])}")
    _check_tar(result, "unpack")
    return Copied(source, destination, target, counter.files, counter.bytes)


def copy_from(exec_in: Exec, source: Location, destination: Location) -> Copied:
    """Copy ``source`` in a sprite to host ``destination``."""
    assert source.sprite is not None and destination.sprite is None
    path, contents, want_dir = _strip(sprite_path(source.path))
    kind = _probe(exec_in, path)
    if kind in ("missing", "noparent"):
        raise CopyError(f"no such file or directory: {source}")
    is_dir = kind == "dir"
    if want_dir and not is_dir:
        raise CopyError(f"{source} is not a directory")
    local, _, dest_wants_dir = _strip(destination.path)
    local_kind = _local_kind(local)
    if local_kind == "noparent":
        raise CopyError(f"the parent directory of {destination} does not exist")
    if local_kind == "missing" and dest_wants_dir and not is_dir:
        raise CopyError(f"destination directory {destination} does not exist")
    if is_dir and local_kind == "file":
        raise CopyError(f"cannot copy a directory to a file ({destination})")
    if local_kind == "dir":
        into = local
        top = "" if contents else posixpath.basename(path) or "root"
    else:
        into, top = os.path.dirname(os.path.abspath(local)), os.path.basename(local)
    if contents and is_dir:
        argv = ["tar", "-c", "-f", "-", "-C", path, "."]
    else:
        parent, name = posixpath.split(path)
        argv = ["tar", "-c", "-f", "-", "-C", parent or "/", name or "."]
    reader, writer = os.pipe()
    counter = _Counter()
    failure: list[BaseException] = []

    def unpack() -> None:
        with os.fdopen(reader, "rb") as stream:
            try:
                with tarfile.open(fileobj=stream, mode="r|") as tar:
                    _extract(tar, Path(into), top, counter)
            except BaseException as exc:
                failure.append(exc)
            # Read to the end whatever happened, so tar inside never blocks.
            while stream.read(65536):
                pass

    unpacker = threading.Thread(target=unpack, name="sprites-cp-unpack", daemon=True)
    unpacker.start()
    sink = os.fdopen(writer, "wb")
    try:
        result = exec_in(argv, None, sink)
    finally:
        sink.close()
        unpacker.join()
    _check_tar(result, "pack")
    if failure:
        error = failure[0]
        if isinstance(error, CopyError):
            raise error
        raise CopyError(f"cannot write {destination}: {_reason(error)}")
    target = os.path.join(into, top) if top else into
    return Copied(source, destination, target, counter.files, counter.bytes)


# -- internals ---------------------------------------------------------------


def _probe(exec_in: Exec, path: str) -> str:
    result = exec_in(["sh", "-c", PROBE, "probe", path], None, None)
    kind = result.stdout.decode("utf-8", "replace").strip()
    if result.exit_code != 0 or kind not in ("dir", "file", "link", "missing", "noparent"):
        detail = result.stderr.decode("utf-8", "replace").strip().splitlines()
        raise CopyError(f"cannot look at {path} in the sprite: {detail[-1] if detail else kind}")
    return kind


def _local_kind(path: str) -> str:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        parent = os.path.dirname(os.path.abspath(path))
        return "missing" if os.path.isdir(parent) else "noparent"
    except OSError as exc:
        raise CopyError(f"cannot use {path}: {exc.strerror}") from None
    return "dir" if stat.S_ISDIR(info.st_mode) else "file"


def _members(local: str, top: str, contents: bool) -> Iterator[tuple[str, str]]:
    """(host path, archive name) of everything to send, parents first."""
    if not contents:
        yield local, top
        if not os.path.isdir(local) or os.path.islink(local):
            return
    for root, dirs, files in os.walk(local):
        dirs.sort()
        rel = os.path.relpath(root, local)
        for entry in sorted(dirs) + sorted(files):
            name = entry if rel == "." else posixpath.join(rel, entry)
            yield os.path.join(root, entry), posixpath.join(top, name) if top else name


def _check_tar(result: ExecResult, what: str) -> None:
    if result.exit_code == 0:
        return
    lines = [
        line.strip()
        for line in result.stderr.decode("utf-8", "replace").splitlines()
        if line.strip()
    ]
    reason = lines[-1] if lines else f"exit status {result.exit_code}"
    if result.exit_code == 127 and not lines:
        reason = "tar is not installed in the sprite"
    raise CopyError(f"tar could not {what} the files in the sprite: {reason}")


def _reason(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror} ({error.filename})" if error.filename else error.strerror
    return str(error) or type(error).__name__


class _Counter:
    """Counts the members and bytes of an archive."""

    def __init__(self) -> None:
        self.files = 0
        self.bytes = 0

    def count(self, member: tarfile.TarInfo) -> tarfile.TarInfo:
        self.files += 1
        self.bytes += member.size if member.isfile() else 0
        return member


def _extract(tar: tarfile.TarFile, into: Path, top: str, counter: _Counter) -> None:
    """Unpack a stream from a sprite under ``into`` (its first component
    renamed ``top``), refusing anything that would land outside it."""
    root = os.path.realpath(into)
    contents = not top
    directories: list[tuple[str, tarfile.TarInfo]] = []
    for member in tar:
        parts = [part for part in member.name.split("/") if part not in ("", ".")]
        if member.name.startswith("/") or ".." in parts:
            raise CopyError(f"refusing {member.name!r} from the sprite: it leaves the destination")
        if contents:
            relative = posixpath.join(*parts) if parts else ""
        else:
            relative = posixpath.join(top, *parts[1:]) if parts else top
        if not relative:
            continue  # the "." of a contents copy: the destination itself
        target = os.path.join(root, relative)
        parent = os.path.realpath(os.path.dirname(target))
        if parent != root and not parent.startswith(root + os.sep):
            raise CopyError(f"refusing {member.name!r} from the sprite: it leaves the destination")
        if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
            raise CopyError(
                f"refusing {member.name!r} from the sprite: not a file, directory or link"
            )
        if member.islnk():
            link_parts = [p for p in member.linkname.split("/") if p not in ("", ".")]
            if member.linkname.startswith("/") or ".." in link_parts or not link_parts:
                raise CopyError(f"refusing {member.name!r} from the sprite: a link out of it")
            if contents:
                member.linkname = posixpath.join(*link_parts)
            else:
                member.linkname = posixpath.join(top, *link_parts[1:])
            link_target = os.path.realpath(os.path.join(root, member.linkname))
            if not link_target.startswith(root + os.sep):
                raise CopyError(f"refusing {member.name!r} from the sprite: a link out of it")
        if os.path.islink(target) and not member.isdir():
            os.unlink(target)  # never write through a link already there
        member.name = relative
        member.mode &= 0o777
        member.uid, member.gid = os.getuid(), os.getgid()
        member.uname = member.gname = ""
        counter.count(member)
        if member.isdir():
            if os.path.islink(target):
                raise CopyError(f"refusing {relative!r}: a link is in the way of a directory")
            os.makedirs(target, exist_ok=True)
            os.chmod(target, 0o700)
            directories.append((target, member))
            continue
        tar.extract(member, str(root), set_attrs=True, numeric_owner=True, **_TRUSTED)
    for target, member in reversed(directories):
        os.chmod(target, member.mode)
        try:
            os.utime(target, (member.mtime, member.mtime))
        except OSError:
            pass


#: The checks above are the filter: tell tarfile not to apply its own.
_TRUSTED: Mapping[str, Any] = (
    {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
)
