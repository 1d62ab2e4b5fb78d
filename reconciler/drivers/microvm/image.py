"""The microVM guest image: a Debian cloud kernel and a busybox initramfs.

``build_image`` fetches ``linux-image-cloud-amd64`` and ``busybox-static``
with ``apt-get download`` into a temporary directory, unpacks them with
``dpkg-deb -x`` (the host's /boot and package database are untouched),
turns the compressed bzImage into the uncompressed ``vmlinux`` that QEMU's
``microvm`` machine boots through PVH, and writes an initramfs whose
``/init`` is :data:`INIT_SCRIPT`. The result is cached under
``<state_dir>/microvm/image/``.

The initramfs also carries the exec agent (:mod:`.agent`, started by
``/init`` on the virtio serial port ``sprites.agent``) with the virtio
modules it needs, and an ``/etc/passwd`` with the users ``exec --user``
knows (root, sprite, nobody).

Per sprite, :func:`sprite_initrd` appends a small uncompressed cpio archive
holding ``/sprite/run`` (the sprite's command and environment) to the base
initramfs; the kernel unpacks concatenated archives in order.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import os
import pathlib
import re
import shlex
import shutil
import stat
import struct
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from reconciler.drivers import process
from reconciler.drivers.microvm import agent
from reconciler.errors import ReconcilerError, RuntimeCallError
from reconciler.models import sandbox
from reconciler.record import record

KERNEL_PACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"
#: What a host needs for this runtime, as one apt line.
APT_PACKAGES = ("qemu-system-x86", "busybox-static", "lz4")
INSTALL_COMMAND = "apt-get install -y " + " ".join(APT_PACKAGES)
BUILD_COMMAND = "sprites image build"

IMAGE_DIR = "image"
KERNEL_FILE = "vmlinux"
INITRD_FILE = "initrd.cpio.gz"
INFO_FILE = "image.json"
#: 2: the exec agent and its virtio modules.
IMAGE_FORMAT = 2

#: Printed by the guest's init once it runs, before the sprite's command.
READY_MARKER = "sprites-init: ready"
#: Printed by the guest's init when the sprite's command has ended.
EXIT_MARKER = "sprites-init: exit"
#: Modules the initramfs carries, in load order: pvpanic reports a guest
#: kernel panic to QEMU, so a panicked sprite shows as ``guest-panicked``;
#: the virtio ones give the exec agent its serial port (virtio-mmio devices
#: are found through ACPI on QEMU's microvm machine).
MODULES = (
    "kernel/drivers/misc/pvpanic/pvpanic.ko",
    "kernel/drivers/misc/pvpanic/pvpanic-mmio.ko",
    "kernel/drivers/virtio/virtio_ring.ko",
    "kernel/drivers/virtio/virtio.ko",
    "kernel/drivers/virtio/virtio_mmio.ko",
    "kernel/drivers/char/virtio_console.ko",
)

INIT_SCRIPT = f"""#!/bin/busybox sh
# PID 1 of a sprites microVM.
/bin/busybox --install -s /bin
export PATH=/bin HOME=/root TERM=linux
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
for module in /lib/modules/*.ko; do insmod "$module" 2>/dev/null; done
chown 1000:1000 /home/sprite
set -f
name=sprite
probe=
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    sprites.hostname=*) name="${{arg#sprites.hostname=}}" ;;
    sprites.probe=1) probe=1 ;;
  esac
done
hostname "$name"
ip link set lo up 2>/dev/null
export PS1='\\h:\\w\\$ '
cd /root
echo "{READY_MARKER} $(hostname)"
if [ -n "$probe" ]; then poweroff -f; fi
if [ -x /{agent.GUEST_PATH} ]; then
  setsid sh -c 'until /{agent.GUEST_PATH}; do sleep 1; done' </dev/null >/dev/null 2>&1 &
fi
if [ -f /sprite/run ]; then
  setsid cttyhack sh /sprite/run
else
  setsid cttyhack sh
fi
status=$?
sync
echo "{EXIT_MARKER} $status"
poweroff -f
"""

_DIRS = (
    "bin",
    "dev",
    "etc",
    "home",
    "home/sprite",
    "lib",
    "lib/modules",
    "proc",
    "root",
    "run",
    "sys",
    "tmp",
    "sprite",
    "work",
)


def _etc_files() -> dict[str, bytes]:
    """/etc/passwd and /etc/group with the users a sprite knows."""
    shells = {"root": "/bin/sh", "sprite": "/bin/sh"}
    passwd = "".join(
        f"{name}:x:{uid}:{gid}:{name}:{home}:{shells.get(name, '/bin/false')}\n"
        for name, (uid, gid, home) in sandbox.USERS.items()
    )
    group = "".join(f"{name}:x:{gid}:\n" for name, gid in sandbox.GROUPS.items())
    return {"etc/passwd": passwd.encode(), "etc/group": group.encode()}


Progress = Callable[[str], None]


class ImageError(ReconcilerError):
    """The guest image cannot be built or is missing."""


@record(frozen=True)
class Image:
    """A guest image ready to boot."""

    kernel: pathlib.Path
    initrd: pathlib.Path
    info: Mapping[str, Any]

    @property
    def custom(self) -> bool:
        """Paths from the manifest rather than ``sprites image build``."""
        return bool(self.info.get("custom"))


def image_dir(root: pathlib.Path) -> pathlib.Path:
    return root / IMAGE_DIR


def find_image(root: pathlib.Path) -> Image | None:
    """The built image under the runtime's directory ``root``, or None."""
    directory = image_dir(root)
    kernel, initrd = directory / KERNEL_FILE, directory / INITRD_FILE
    try:
        info = json.loads((directory / INFO_FILE).read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("format") != IMAGE_FORMAT:
        return None
    if not kernel.is_file() or not initrd.is_file():
        return None
    return Image(kernel, initrd, info)


def build_image(
    root: pathlib.Path,
    *,
    progress: Progress = lambda line: None,
    timeout: float = 600.0,
) -> Image:
    """Build the image into ``root/image`` (replacing an older one) and return it."""
    for tool, package in (("apt-get", "apt"), ("dpkg-deb", "dpkg"), ("lz4", "lz4")):
        if shutil.which(tool) is None:
            raise ImageError(
                f"Cannot build the microVM image: {tool} not found",
                hint=f"Install it with: {INSTALL_COMMAND}" if package == "lz4" else None,
            )
    _private_dir(root)
    work = pathlib.Path(tempfile.mkdtemp(prefix=".build-", dir=root))
    try:
        return _build(root, work, progress, time.monotonic() + timeout)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _build(root: pathlib.Path, work: pathlib.Path, progress: Progress, deadline: float) -> Image:
    debs = work / "debs"
    debs.mkdir()
    progress(f"Downloading {KERNEL_PACKAGE} and {BUSYBOX_PACKAGE} with apt-get download")
    _download(debs, [KERNEL_PACKAGE, BUSYBOX_PACKAGE], deadline)
    meta = _one(debs, f"{KERNEL_PACKAGE}_*.deb")
    depends = _run(["dpkg-deb", "-f", str(meta), "Depends"], "read", deadline).stdout
    kernel_package = _kernel_dependency(depends)
    _download(debs, [kernel_package], deadline)

    kernel_root, busybox_root = work / "kernel", work / "busybox"
    progress(f"Unpacking {kernel_package.split('=')[0]} and {BUSYBOX_PACKAGE} with dpkg-deb -x")
    kernel_deb = _one(debs, f"{kernel_package.split('=')[0]}_*.deb")
    _run(["dpkg-deb", "-x", str(kernel_deb), str(kernel_root)], "unpack", deadline)
    _run(
        ["dpkg-deb", "-x", str(_one(debs, f"{BUSYBOX_PACKAGE}_*.deb")), str(busybox_root)],
        "unpack",
        deadline,
    )
    bzimage = _one(kernel_root / "boot", "vmlinuz-*")
    release = bzimage.name.removeprefix("vmlinuz-")

    staged = pathlib.Path(tempfile.mkdtemp(prefix=".image-", dir=root))
    try:
        progress(f"Extracting an uncompressed vmlinux from {bzimage.name}")
        extract_vmlinux(bzimage, staged / KERNEL_FILE, work, deadline)
        busybox = busybox_root / "bin" / "busybox"
        if not busybox.is_file():
            raise ImageError(
                f"Cannot build the microVM image: {BUSYBOX_PACKAGE} has no /bin/busybox"
            )
        modules = kernel_root / "lib" / "modules" / release
        files: dict[str, bytes] = {
            "init": INIT_SCRIPT.encode(),
            "bin/busybox": busybox.read_bytes(),
            agent.GUEST_PATH: agent.AGENT_SCRIPT.encode(),
            **_etc_files(),
        }
        for index, module in enumerate(MODULES, start=1):
            path = modules / module
            if path.is_file():
                files[f"lib/modules/{index}-{path.name}"] = path.read_bytes()
        progress("Writing the initramfs (busybox, /init, the exec agent)")
        archive = cpio_archive(
            _DIRS, files, executables={"init", "bin/busybox", agent.GUEST_PATH}, devices=True
        )
        with gzip.GzipFile(staged / INITRD_FILE, "wb", compresslevel=6, mtime=0) as handle:
            handle.write(archive)
        info = {
            "format": IMAGE_FORMAT,
            "kernel_package": kernel_package,
            "kernel_release": release,
            "busybox_package": _deb_version(_one(debs, f"{BUSYBOX_PACKAGE}_*.deb"), deadline),
            "built_at": time.time(),
            "id": _digest(staged / KERNEL_FILE, staged / INITRD_FILE),
        }
        (staged / INFO_FILE).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
        _install(staged, image_dir(root))
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    image = find_image(root)
    assert image is not None
    progress(f"Built the microVM image in {image_dir(root)} (kernel {release})")
    return image


def _deb_version(deb: pathlib.Path, deadline: float) -> str:
    fields = _run(["dpkg-deb", "-f", str(deb), "Package", "Version"], "read", deadline).stdout
    values = dict(line.split(": ", 1) for line in fields.splitlines() if ": " in line)
    return f"{values.get('Package', BUSYBOX_PACKAGE)}={values.get('Version', '?')}"


def _install(staged: pathlib.Path, final: pathlib.Path) -> None:
    """Swap the staged image into place; the old one is removed after."""
    old = final.with_name(f".old-{os.getpid()}-{time.monotonic_ns()}")
    if final.exists():
        os.rename(final, old)
    os.rename(staged, final)
    shutil.rmtree(old, ignore_errors=True)


def _digest(*paths: pathlib.Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def _private_dir(path: pathlib.Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


def _one(directory: pathlib.Path, pattern: str) -> pathlib.Path:
    found = sorted(directory.glob(pattern))
    if not found:
        raise ImageError(f"Cannot build the microVM image: no {pattern} in {directory}")
    return found[-1]


def _run(argv: Sequence[str], op: str, deadline: float) -> process.Completed:
    remaining = max(1.0, deadline - time.monotonic())
    try:
        completed = process.run(argv, timeout=remaining, op=op, stdin_open=False)
    except RuntimeCallError as exc:
        raise ImageError(f"Cannot build the microVM image: {exc.reason}") from None
    if completed.returncode != 0:
        last = next((ln for ln in reversed(completed.stderr.splitlines()) if ln.strip()), "")
        raise ImageError(
            f"Cannot build the microVM image: {argv[0]} failed: {last.strip() or completed.returncode}"
        )
    return completed


def _download(directory: pathlib.Path, packages: Iterable[str], deadline: float) -> None:
    argv = ["apt-get", "download", "-q"]
    if os.geteuid() == 0:
        # The download directory is private to root; apt's sandbox user cannot write it.
        argv += ["-o", "APT::Sandbox::User=root"]
    remaining = max(1.0, deadline - time.monotonic())
    try:
        completed = process.run(
            [*argv, *packages], timeout=remaining, op="download", stdin_open=False, cwd=directory
        )
    except RuntimeCallError as exc:
        raise ImageError(f"Cannot build the microVM image: {exc.reason}") from None
    if completed.returncode != 0:
        lines = [ln for ln in completed.stderr.splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("E:")] or lines or ["?"]
        text = errors[-1]
        raise DownloadError(
            f"Cannot build the microVM image: apt-get download failed: {text.removeprefix('E: ')}",
            hint="Refresh the package lists with `apt-get update` and try again.",
        )


class DownloadError(ImageError):
    """apt could not fetch the packages (no network, no package lists)."""


_DEPENDS_RE = re.compile(r"(linux-image-[0-9][^\s,(]*)\s*(?:\(\s*=\s*([^)\s]+)\s*\))?")


def _kernel_dependency(depends: str) -> str:
    """``linux-image-6.1.0-57-cloud-amd64=6.1.192-3`` from the meta package's Depends."""
    match = _DEPENDS_RE.search(depends)
    if match is None:
        raise ImageError(
            f"Cannot build the microVM image: {KERNEL_PACKAGE} depends on no kernel image "
            f"({depends.strip() or 'empty Depends'})"
        )
    package, version = match.group(1), match.group(2)
    return f"{package}={version}" if version else package


# ------------------------------------------------------------------ vmlinux

_LZ4_MAGIC = b"\x02\x21\x4c\x18"
_GZIP_MAGIC = b"\x1f\x8b"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
#: Xen ELF note type of the 32-bit PVH entry point QEMU boots through.
_PVH_NOTE = 18


def extract_vmlinux(
    bzimage: pathlib.Path, target: pathlib.Path, work: pathlib.Path, deadline: float
) -> None:
    """Write the uncompressed ELF kernel inside ``bzimage`` to ``target``.

    The payload's place comes from the boot protocol header (``setup_sects``,
    ``payload_offset``, ``payload_length``), as the kernel's own decompressor
    finds it; the last four bytes of the payload are the uncompressed size.
    """
    data = bzimage.read_bytes()
    if len(data) < 0x250 or data[0x202:0x206] != b"HdrS":
        raise ImageError(f"Cannot build the microVM image: {bzimage.name} is not a bzImage")
    setup_sects = data[0x1F1] or 4
    offset, length = struct.unpack_from("<II", data, 0x248)
    start = (setup_sects + 1) * 512 + offset
    payload = data[start : start + length]
    if len(payload) != length or length < 8:
        raise ImageError(f"Cannot build the microVM image: {bzimage.name} has a truncated payload")
    (size,) = struct.unpack("<I", payload[-4:])
    body = payload[:-4]
    if body.startswith(_LZ4_MAGIC):
        packed = work / "vmlinux.lz4"
        packed.write_bytes(body)
        _run(["lz4", "-d", "-f", "-q", str(packed), str(target)], "extract", deadline)
        packed.unlink()
    elif body.startswith(_GZIP_MAGIC):
        target.write_bytes(gzip.decompress(body))
    elif body.startswith(_XZ_MAGIC):
        target.write_bytes(lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(body))
    elif body.startswith(_ZSTD_MAGIC) and shutil.which("zstd"):
        packed = work / "vmlinux.zst"
        packed.write_bytes(body)
        _run(["zstd", "-d", "-f", "-q", str(packed), "-o", str(target)], "extract", deadline)
        packed.unlink()
    else:
        raise ImageError(
            f"Cannot build the microVM image: {bzimage.name} uses a compression this build "
            "cannot unpack (magic " + body[:4].hex() + ")"
        )
    actual = target.stat().st_size
    if actual != size:
        raise ImageError(
            f"Cannot build the microVM image: the kernel unpacked to {actual} bytes, expected {size}"
        )
    if not has_pvh_entry(target):
        raise ImageError(
            f"Cannot build the microVM image: {bzimage.name} has no PVH entry point (CONFIG_PVH)"
        )


def has_pvh_entry(path: pathlib.Path) -> bool:
    """Is ``path`` a 64-bit ELF kernel with the Xen PVH entry note?"""
    with open(path, "rb") as handle:
        header = handle.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2:
            return False
        (phoff,) = struct.unpack_from("<Q", header, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", header, 0x36)
        handle.seek(phoff)
        table = handle.read(phentsize * phnum)
        for index in range(phnum):
            p_type, _flags, p_offset, _va, _pa, p_filesz = struct.unpack_from(
                "<IIQQQQ", table, index * phentsize
            )
            if p_type != 4 or p_filesz > 1 << 20:  # PT_NOTE
                continue
            handle.seek(p_offset)
            if _note_has(handle.read(p_filesz), b"Xen", _PVH_NOTE):
                return True
    return False


def _note_has(notes: bytes, owner: bytes, kind: int) -> bool:
    pos = 0
    while pos + 12 <= len(notes):
        namesz, descsz, ntype = struct.unpack_from("<III", notes, pos)
        name = notes[pos + 12 : pos + 12 + namesz].rstrip(b"\0")
        if name == owner and ntype == kind:
            return True
        pos += 12 + ((namesz + 3) & ~3) + ((descsz + 3) & ~3)
    return False


def is_elf(path: pathlib.Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == b"\x7fELF"
    except OSError:
        return False


# -------------------------------------------------------------------- cpio


def cpio_archive(
    directories: Iterable[str],
    files: Mapping[str, bytes],
    *,
    executables: Iterable[str] = (),
    devices: bool = False,
) -> bytes:
    """A ``newc`` cpio archive (what the kernel unpacks as an initramfs),
    written without touching the filesystem, so no root is needed for
    device nodes. All entries belong to root."""
    out = bytearray()
    inode = 1
    executable = set(executables)

    def entry(name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        nonlocal inode
        encoded = name.encode() + b"\0"
        fields = (
            inode,
            mode,
            0,
            0,
            1,
            0,
            len(data),
            0,
            0,
            rdev[0],
            rdev[1],
            len(encoded),
            0,
        )
        out.extend(b"070701" + b"".join(b"%08X" % value for value in fields))
        out.extend(encoded)
        out.extend(b"\0" * (-len(out) % 4))
        out.extend(data)
        out.extend(b"\0" * (-len(out) % 4))
        inode += 1

    for directory in directories:
        entry(directory, stat.S_IFDIR | 0o755)
    if devices:
        entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
        entry("dev/null", stat.S_IFCHR | 0o666, rdev=(1, 3))
    for name, data in files.items():
        entry(name, stat.S_IFREG | (0o755 if name in executable else 0o644), data)
    entry("TRAILER!!!", 0)
    out.extend(b"\0" * (-len(out) % 512))
    return bytes(out)


def sprite_script(
    command: Sequence[str], env: Mapping[str, str], workdir: str | None = None
) -> str:
    """``/sprite/run``: the sprite's environment, working directory and
    command as a POSIX sh script."""
    lines = ["# The sprite's command, run on the console by /init."]
    for key, value in sorted(env.items()):
        lines.append(f"export {key}={shlex.quote(value)}")
    if workdir:
        lines.append(f"mkdir -p {shlex.quote(workdir)} && cd {shlex.quote(workdir)} || exit 126")
    lines.append("exec " + " ".join(shlex.quote(arg) for arg in command))
    return "\n".join(lines) + "\n"


def sprite_initrd(base: pathlib.Path, target: pathlib.Path, files: Mapping[str, bytes]) -> None:
    """Write ``base`` followed by a cpio archive of ``files`` to ``target`` (0600)."""
    extra = cpio_archive((), files)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as out, open(base, "rb") as source:
        shutil.copyfileobj(source, out, 1 << 20)
        out.write(b"\0" * (-out.tell() % 512))
        out.write(extra)


def image_json(image: Image) -> dict[str, Any]:
    return {"kernel": str(image.kernel), "initrd": str(image.initrd), **dict(image.info)}
