"""The console log's tail, trimming and text, and the interactive relay
between a terminal and the console socket (a pty stands in for the user's
terminal, a socket server for QEMU)."""

from __future__ import annotations

import os
import pathlib
import pty
import socket
import threading
import time

from reconciler.drivers.microvm import console


def test_tail_starts_at_a_line_and_trim_keeps_the_end(tmp_path: pathlib.Path) -> None:
    log = tmp_path / "console.log"
    log.write_bytes(b"".join(b"line %06d\r\n" % i for i in range(100_000)))
    shown = console.tail(str(log), 4096)
    assert shown.startswith(b"line ") and shown.endswith(b"line 099999\r\n")
    console.trim(str(log), limit=1 << 20, keep=64 << 10)
    data = log.read_bytes()
    assert len(data) == 64 << 10 and data.endswith(b"line 099999\r\n")
    console.trim(str(log), limit=1 << 20, keep=1024)  # under the limit: untouched
    assert log.read_bytes() == data
    assert console.tail(str(tmp_path / "missing")) == b""


def test_text_drops_terminal_controls() -> None:
    raw = b"vm:/root# \x1b[6necho hi\r\nhi\r\n\x1b[1;32mgreen\x1b[0m\r\n"
    assert console.text(raw) == "vm:/root# echo hi\nhi\ngreen\n"


def test_interactive_relays_keys_until_ctrl_close_bracket(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "console.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    received = bytearray()

    def guest() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(b"vm:/root# ")
            conn.settimeout(10)
            while b"\r" not in received:
                chunk = conn.recv(1024)
                if not chunk:
                    return
                received.extend(chunk)
            conn.sendall(b"typed back\r\n")
            time.sleep(0.5)

    thread = threading.Thread(target=guest, daemon=True)
    thread.start()
    master, slave = pty.openpty()
    result: list[str] = []
    relay = threading.Thread(
        target=lambda: result.append(
            console.interactive(path, "vm", b"recent output\r\n", stdin_fd=slave, stdout_fd=slave)
        ),
        daemon=True,
    )
    relay.start()
    seen = b""
    deadline = time.monotonic() + 10
    while b"vm:/root# " not in seen and time.monotonic() < deadline:
        seen += os.read(master, 4096)
    os.write(master, b"hostname\r")
    while b"typed back" not in seen and time.monotonic() < deadline:
        seen += os.read(master, 4096)
    os.write(master, b"\x1d")
    relay.join(10)
    assert result == ["Detached from vm."]
    while b"Detached" not in seen and time.monotonic() < deadline:
        seen += os.read(master, 4096)
    os.close(master)
    os.close(slave)
    server.close()
    assert seen.startswith(b"Connected to vm. Console output (Ctrl-] to detach):\r\nrecent output")
    assert bytes(received) == b"hostname\r"  # raw: the key as typed, nothing added
