"""exec and cp as users and agents run them: through the CLI, the engine and
the agent tools, on the built-in runtime (real sprites) and on the fake wisp
(whose ``exec`` runs commands on this host, so its "sprite paths" are host
paths in a private directory)."""

from __future__ import annotations

import json
import os
import pathlib
import stat
import time
from typing import Any

import pytest

from reconciler.errors import ReconcilerError, RuntimeCallError, RuntimeTimeoutError
from reconciler.tools import call_tool, engine_factory

from .conftest import Project

MiB = 1 << 20


def start(project: Project, name: str) -> None:
    code, out, err = project.cli("start", name, "--memory", "128MiB")
    assert code == 0, out + err


def inside(project: Project, name: str, *argv: str) -> str:
    """stdout of a command in the sprite (through the engine)."""
    engine = project.engine()
    try:
        result = engine.exec(name, list(argv))
    finally:
        engine.close()
    assert result.exit_code == 0, result.stderr
    return result.stdout.decode()


@pytest.fixture
def sprite(project: Project) -> str:
    name = "sx-" + os.urandom(3).hex()
    start(project, name)
    return name


@pytest.fixture
def base(project: Project, tmp_path: pathlib.Path) -> str:
    """A directory inside the sprite the test may fill."""
    return project.sprite_dir(tmp_path / "in-sprite")


# ---------------------------------------------------------------------- exec


def test_exit_codes_and_output_pass_through(project: Project, sprite: str) -> None:
    code, out, err = project.cli("exec", sprite, "--", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert (code, out, err) == (7, "out\n", "err\n")
    assert project.cli("exec", sprite, "--", "true")[0] == 0
    code, out, _ = project.cli("exec", sprite, "--json", "--", "sh", "-c", "echo hi; exit 3")
    document = json.loads(out)
    assert code == 3
    assert document["success"] is True
    data = document["data"]
    assert (data["exitCode"], data["stdout"], data["stderr"]) == (3, "hi\n", "")
    assert isinstance(data["durationMs"], int) and data["durationMs"] >= 0


def test_env_workdir_and_stdin(project: Project, sprite: str, base: str) -> None:
    code, out, _ = project.cli(
        "exec", sprite, "--env", "GREETING=hello there", "-e", "N=2", "--", "sh", "-c",
        'echo "$GREETING/$N"',
    )  # fmt: skip
    assert (code, out) == (0, "hello there/2\n")
    assert project.cli("exec", sprite, "--workdir", base, "--", "pwd")[1] == f"{base}\n"
    code, out, _ = project.cli("exec", sprite, "--", "tr", "a-z", "A-Z", stdin=b"shout\n")
    assert (code, out) == (0, "SHOUT\n")
    # Without stdin given the command reads nothing (and does not hang).
    engine = project.engine()
    try:
        result = engine.exec(sprite, ["sh", "-c", "cat; echo after"], timeout=30)
        assert result.stdout == b"after\n"
        result = engine.exec(sprite, ["wc", "-c"], stdin=b"x" * 100_000, timeout=30)
        assert result.stdout.split() == [b"100000"]
    finally:
        engine.close()


def test_output_streams_while_the_command_runs(
    project: Project, sprite: str, tmp_path: pathlib.Path
) -> None:
    """The command waits for a file the test writes only once the first line
    has arrived: without streaming it would never end."""
    if project.runtime == "builtin":
        go_host = project.state_dir / "builtin" / "files" / sprite / "tmp" / "go"
        go_inside = "/tmp/go"
    else:
        go_host = tmp_path / "go"
        go_inside = str(go_host)

    class Sink:
        def __init__(self) -> None:
            self.data = b""

        def write(self, chunk: bytes) -> None:
            self.data += chunk
            if b"first" in self.data and not go_host.exists():
                go_host.write_text("go")

    sink = Sink()
    script = f"echo first; while [ ! -e {go_inside} ]; do sleep 0.05; done; echo second"
    engine = project.engine()
    try:
        result = engine.exec(sprite, ["sh", "-c", script], stdout=sink, timeout=60)
    finally:
        engine.close()
    assert result.exit_code == 0
    assert sink.data == b"first\nsecond\n"
    assert result.stdout == b""


def test_a_command_past_its_timeout_is_stopped(project: Project, sprite: str) -> None:
    began = time.monotonic()
    code, _, err = project.cli("exec", sprite, "--timeout", "1s", "--", "sleep", "60")
    assert code == 1
    assert "Command timed out after 1 seconds" in err
    assert time.monotonic() - began < 45
    engine = project.engine()
    try:
        with pytest.raises(RuntimeTimeoutError):
            engine.exec(sprite, ["sleep", "60"], timeout=0.5)
    finally:
        engine.close()
    if project.runtime == "builtin":
        assert "sleep 60" not in inside(project, sprite, "ps", "-e", "-o", "args=")


def test_failures_are_reported_not_run(project: Project, sprite: str) -> None:
    code, _, err = project.cli("exec", "sx-nobody-here", "--", "true")
    assert code == 1 and "not found" in err
    code, out, _ = project.cli("exec", "sx-nobody-here", "--json", "--", "true")
    document = json.loads(out)
    assert code == 1 and document["success"] is False
    assert document["message"].startswith("Failed to exec in Sprite:")
    code, _, err = project.cli("exec", sprite, "--", "/no/such/program")
    if project.runtime == "builtin":
        assert code == 1 and "cannot run /no/such/program" in err
    else:
        assert code != 0
    code, _, err = project.cli("exec", sprite, "--env", "oops", "--", "true")
    assert code == 1 and "expected KEY=VALUE" in err


def test_users(project: Project, sprite: str) -> None:
    if project.runtime != "builtin":
        pytest.skip("the fake wisp records --user but runs as its caller")
    assert inside(project, sprite, "id", "-un") == "sprite\n"
    assert project.cli("exec", sprite, "-u", "root", "--", "id", "-u")[1] == "0\n"
    assert project.cli("exec", sprite, "--user", "4242:sprite", "--", "id")[1].startswith(
        "uid=4242 gid=1000(sprite)"
    )
    code, _, err = project.cli("exec", sprite, "-u", "alice", "--", "true")
    assert code == 1 and "unknown user 'alice'" in err
    code, out, _ = project.cli("exec", sprite, "-u", "root", "--", "sh", "-c", "echo $HOME $USER")
    assert out == "/root root\n"


def test_a_wisp_without_exec_says_so(project: Project, sprite: str) -> None:
    if project.fake is None:
        pytest.skip("a fake wisp behaviour")
    project.fake.script(exec="unsupported")
    code, _, err = project.cli("exec", sprite, "--", "true")
    assert code == 1
    assert "has no exec command (it answered: unknown command 'exec')" in err


# ------------------------------------------------------------------------ cp


def make_tree(root: pathlib.Path) -> pathlib.Path:
    """project/{app.py 0644, run.sh 0755, data/ 0750, data/secret 0600, link -> app.py}"""
    tree = root / "project"
    (tree / "data").mkdir(parents=True)
    (tree / "app.py").write_text("print('app')\n")
    (tree / "run.sh").write_text("#!/bin/sh\necho run\n")
    (tree / "data" / "secret").write_text("s3cret\n")
    os.chmod(tree / "run.sh", 0o755)
    os.chmod(tree / "app.py", 0o644)
    os.chmod(tree / "data" / "secret", 0o600)
    os.chmod(tree / "data", 0o750)
    (tree / "link").symlink_to("app.py")
    return tree


def modes_inside(project: Project, sprite: str, root: str) -> dict[str, str]:
    out = inside(
        project, sprite, "sh", "-c", f'cd "{root}" && find . -exec stat -c "%n %a %F" {{}} +'
    )
    return {line.split()[0]: " ".join(line.split()[1:]) for line in out.splitlines()}


EXPECTED = {
    ".": "755 directory",
    "./app.py": "644 regular file",
    "./run.sh": "755 regular file",
    "./data": "750 directory",
    "./data/secret": "600 regular file",
    "./link": "777 symbolic link",
}


def test_a_directory_goes_in_and_comes_back_with_its_modes(
    project: Project, sprite: str, base: str, tmp_path: pathlib.Path
) -> None:
    tree = make_tree(tmp_path / "host")
    os.chmod(tree, 0o755)
    code, out, err = project.cli("cp", str(tree), f"{sprite}:{base}/app")
    assert code == 0, err
    assert out.startswith("✅ Copied 6 files") and f"to Sprite '{sprite}': {base}/app" in out
    assert modes_inside(project, sprite, f"{base}/app") == EXPECTED
    assert inside(project, sprite, "cat", f"{base}/app/data/secret") == "s3cret\n"
    assert inside(project, sprite, "readlink", f"{base}/app/link") == "app.py\n"
    if project.runtime == "builtin":
        owners = inside(project, sprite, "stat", "-c", "%U", f"{base}/app/run.sh")
        assert owners == "sprite\n"
    back = tmp_path / "back"
    code, out, err = project.cli("cp", f"{sprite}:{base}/app", str(back), "--json")
    assert code == 0, err
    document = json.loads(out)
    assert document["success"] is True
    assert document["data"]["files"] == 6 and document["data"]["path"] == str(back)
    for rel, expected in EXPECTED.items():
        path = back / rel
        info = path.lstat()
        assert f"{stat.S_IMODE(info.st_mode):o}" == expected.split()[0] or path.is_symlink(), rel
    assert (back / "data" / "secret").read_text() == "s3cret\n"
    assert os.readlink(back / "link") == "app.py"
    assert (back / "run.sh").stat().st_uid == os.getuid()


def test_docker_cp_rules_into_a_sprite(
    project: Project, sprite: str, base: str, tmp_path: pathlib.Path
) -> None:
    tree = make_tree(tmp_path / "host")
    inside(project, sprite, "mkdir", "-p", f"{base}/existing", f"{base}/contents")
    inside(project, sprite, "sh", "-c", f"echo old > {base}/file")

    def cp(src: str, dst: str) -> tuple[int, str]:
        code, out, err = project.cli("cp", src, f"{sprite}:{dst}")
        return code, out + err

    # A file: to a new path it becomes it, onto a directory it goes inside,
    # onto a file it replaces it.
    assert cp(str(tree / "app.py"), f"{base}/renamed.py")[0] == 0
    assert inside(project, sprite, "cat", f"{base}/renamed.py") == "print('app')\n"
    assert cp(str(tree / "app.py"), f"{base}/existing")[0] == 0
    assert inside(project, sprite, "cat", f"{base}/existing/app.py") == "print('app')\n"
    assert cp(str(tree / "app.py"), f"{base}/file")[0] == 0
    assert inside(project, sprite, "cat", f"{base}/file") == "print('app')\n"
    # A directory: to a new path it becomes it; onto a directory it goes
    # inside; with /. only its contents do.
    assert cp(str(tree), f"{base}/fresh")[0] == 0
    assert inside(project, sprite, "ls", f"{base}/fresh").split() == ["app.py", "data", "link",
                                                                      "run.sh"]  # fmt: skip
    assert cp(str(tree), f"{base}/existing")[0] == 0
    assert "run.sh" in inside(project, sprite, "ls", f"{base}/existing/project")
    assert cp(f"{tree}/.", f"{base}/contents")[0] == 0
    assert "run.sh" in inside(project, sprite, "ls", f"{base}/contents")
    # What cannot be done.
    code, text = cp(str(tree), f"{base}/file")
    assert code == 1 and "cannot copy a directory to a file" in text
    code, text = cp(str(tree / "app.py"), f"{base}/no/such/place")
    assert code == 1 and "parent directory" in text and "does not exist" in text
    code, text = cp(str(tree / "app.py"), f"{base}/newdir/")
    assert code == 1 and "destination directory" in text
    code, text = cp(str(tmp_path / "missing"), f"{base}/x")
    assert code == 1 and "no such file or directory" in text


def test_docker_cp_rules_out_of_a_sprite(
    project: Project, sprite: str, base: str, tmp_path: pathlib.Path
) -> None:
    inside(project, sprite, "sh", "-c", f"mkdir -p {base}/out/sub && echo r > {base}/out/sub/r")
    inside(project, sprite, "sh", "-c", f"echo report > {base}/report.txt")
    host = tmp_path / "host"
    host.mkdir()

    def cp(src: str, dst: pathlib.Path | str) -> tuple[int, str]:
        code, out, err = project.cli("cp", f"{sprite}:{src}", str(dst))
        return code, out + err

    assert cp(f"{base}/report.txt", host)[0] == 0
    assert (host / "report.txt").read_text() == "report\n"
    assert cp(f"{base}/report.txt", host / "renamed.txt")[0] == 0
    assert (host / "renamed.txt").read_text() == "report\n"
    assert cp(f"{base}/out", host / "fresh")[0] == 0
    assert (host / "fresh" / "sub" / "r").read_text() == "r\n"
    assert cp(f"{base}/out", host)[0] == 0
    assert (host / "out" / "sub" / "r").read_text() == "r\n"
    (host / "contents").mkdir()
    assert cp(f"{base}/out/.", host / "contents")[0] == 0
    assert (host / "contents" / "sub" / "r").read_text() == "r\n"
    code, text = cp(f"{base}/out", host / "report.txt")
    assert code == 1 and "cannot copy a directory to a file" in text
    code, text = cp(f"{base}/nothing", host)
    assert code == 1 and "no such file or directory" in text
    code, text = cp(f"{base}/report.txt", host / "nope" / "x")
    assert code == 1 and "parent directory" in text


def test_paths_out_of_the_sprites_root_are_refused(
    project: Project, sprite: str, base: str, tmp_path: pathlib.Path
) -> None:
    file = tmp_path / "f"
    file.write_text("x")
    for path in ("/../etc/x", "../../x", f"{base}/../../../../../../x"):
        code, _, err = project.cli("cp", str(file), f"{sprite}:{path}")
        assert code == 1 and "resolves outside the sprite's root" in err, path
        code, _, err = project.cli("cp", f"{sprite}:{path}", str(tmp_path / "y"))
        assert code == 1 and "resolves outside the sprite's root" in err, path
    code, _, err = project.cli("cp", str(file), str(tmp_path / "z"))
    assert code == 1 and "One side of a copy must be <sprite>:<path>" in err


def test_a_symlink_in_the_sprite_does_not_reach_the_host(
    project: Project, sprite: str, tmp_path: pathlib.Path
) -> None:
    """Inside a built-in sprite every path resolves within its own root: a
    link to /etc/shadow copies the sprite's (absent) file, never the host's."""
    if project.runtime != "builtin":
        pytest.skip("the fake wisp's sprites share this host's filesystem")
    inside(project, sprite, "ln", "-s", "/root/.bash_history", "/work/leak")
    inside(project, sprite, "ln", "-s", "../../../../etc", "/work/up")
    code, _, err = project.cli("cp", f"{sprite}:/work/up/shadow", str(tmp_path / "shadow"))
    assert code == 1  # the sprite has no /etc/shadow, whatever the host has
    code, _, _ = project.cli("cp", f"{sprite}:/work/leak", str(tmp_path / "leak"))
    assert os.readlink(tmp_path / "leak") == "/root/.bash_history"  # the link, not the file


# ------------------------------------------------------------ the agent flow


PROJECT_FILES = {
    "calc.py": "def add(a, b):\n    return a + b\n",
    "test_calc.py": (
        "import unittest\n"
        "from calc import add\n\n"
        "class CalcTest(unittest.TestCase):\n"
        "    def test_add(self):\n"
        "        self.assertEqual(add(2, 3), 5)\n\n"
        "    def test_add_strings(self):\n"
        "        self.assertEqual(add('a', 'b'), 'ab')\n"
    ),
}


def test_an_agent_copies_a_project_in_runs_its_tests_and_reads_the_results(
    project: Project, base: str, tmp_path: pathlib.Path
) -> None:
    tools = engine_factory(config_path=project.config_path, state_dir=project.state_dir)

    def tool(tool_name: str, /, **arguments: Any) -> dict[str, Any]:
        document = call_tool(tool_name, arguments, engine=tools)
        assert document["success"] is True, document
        return document

    local = tmp_path / "agent" / "calc"
    local.mkdir(parents=True)
    for name, text in PROJECT_FILES.items():
        (local / name).write_text(text)
    sprite = "sx-agent-" + os.urandom(2).hex()
    tool("SpawnSprite", name=sprite, memory="256MiB")
    copied = tool("CopyToSprite", name=sprite, source=str(local), destination=f"{base}/calc")
    assert copied["data"]["files"] == 3 and copied["data"]["path"] == f"{base}/calc"
    python = "/usr/bin/python3" if project.runtime == "builtin" else "python3"
    ran = tool(
        "ExecInSprite",
        name=sprite,
        command=["sh", "-c", f"{python} -m unittest -v 2> results.txt; echo exit=$?"],
        workdir=f"{base}/calc",
        timeout="120s",
    )
    assert ran["data"]["exitCode"] == 0
    assert ran["data"]["stdout"] == "exit=0\n"
    back = tmp_path / "results"
    tool("CopyFromSprite", name=sprite, source=f"{base}/calc/results.txt", destination=str(back))
    results = back.read_text()
    assert "test_add (test_calc.CalcTest" in results and "OK" in results
    failing = tool("ExecInSprite", name=sprite, command=["sh", "-c", "echo nope >&2; exit 4"])
    assert failing["data"]["exitCode"] == 4 and failing["data"]["stderr"] == "nope\n"
    tool("KillSprite", name=sprite)


def test_tool_output_is_capped_with_a_marker(project: Project, sprite: str) -> None:
    tools = engine_factory(config_path=project.config_path, state_dir=project.state_dir)
    script = "i=0; while [ $i -lt 20000 ]; do echo line-$i; i=$((i+1)); done"
    document = call_tool(
        "ExecInSprite", {"name": sprite, "command": ["sh", "-c", script]}, engine=tools
    )
    data = document["data"]
    assert document["success"] is True and data["truncated"] is True
    assert len(data["stdout"].encode()) < 40 << 10
    assert data["stdout"].startswith("line-0\nline-1\n")
    assert data["stdout"].endswith("line-19999\n")
    assert (
        "[... truncated: " in data["stdout"] and " bytes of output left out ...]" in data["stdout"]
    )
    small = call_tool("ExecInSprite", {"name": sprite, "command": ["echo", "hi"]}, engine=tools)
    assert small["data"]["stdout"] == "hi\n" and "truncated" not in small["data"]


def test_tool_failures_are_envelopes(project: Project, sprite: str) -> None:
    tools = engine_factory(config_path=project.config_path, state_dir=project.state_dir)
    missing = call_tool("ExecInSprite", {"name": "sx-missing", "command": ["true"]}, engine=tools)
    assert missing["success"] is False and "not found" in missing["message"]
    bad = call_tool("ExecInSprite", {"name": sprite, "command": []}, engine=tools)
    assert bad["success"] is False and "Invalid arguments for ExecInSprite" in bad["message"]
    nowhere = call_tool(
        "CopyFromSprite",
        {"name": sprite, "source": "/no/such/file", "destination": "/tmp"},
        engine=tools,
    )
    assert nowhere["success"] is False
    assert nowhere["message"].startswith("Failed to copy files of Sprite: no such file")


def test_exec_through_the_engine_names_errors(project: Project, sprite: str) -> None:
    engine = project.engine()
    try:
        with pytest.raises(ReconcilerError):
            engine.exec(sprite, [])
        with pytest.raises(RuntimeCallError):
            engine.exec("sx-none-" + os.urandom(2).hex(), ["true"])
    finally:
        engine.close()


# ------------------------------------------------- the installed command


def sprites_command() -> list[str]:
    import shutil
    import sys

    found = shutil.which("sprites", path=os.path.dirname(sys.executable))
    if found:
        return [found]
    return [sys.executable, "-c", "from reconciler.cli import main; main()"]


def test_the_command_hands_its_stdio_to_the_sprite(project: Project, sprite: str) -> None:
    """As a real process the CLI gives way to the runtime's own exec where it
    can: same output, stdin, exit status, errors and timeout as in-process."""
    import subprocess

    base_args = [
        *sprites_command(),
        "--config",
        str(project.config_path),
        "--state-dir",
        str(project.state_dir),
    ]

    def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [*base_args, *args],
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=120,
            check=False,
        )

    done = run("exec", sprite, "--", "sh", "-c", "echo out; echo err >&2; exit 5")
    assert (done.returncode, done.stdout, done.stderr) == (5, b"out\n", b"err\n")
    done = run("exec", sprite, "-e", "X=1", "--", "sh", "-c", "cat; echo x=$X", stdin=b"in\n")
    assert (done.returncode, done.stdout) == (0, b"in\nx=1\n")
    done = run("exec", sprite, "--timeout", "1s", "--", "sleep", "60")
    assert done.returncode == 1
    assert done.stderr.decode().strip() == (
        "❌ Failed to exec in Sprite: Command timed out after 1 seconds"
    )
    done = run("exec", sprite, "--", "/no/such/program")
    assert done.returncode == 1
    assert done.stderr.decode().startswith("❌ Failed to exec in Sprite: ")
    done = run("exec", "sx-absent", "--", "true")
    assert done.returncode == 1
    assert (
        done.stderr.decode().strip() == "❌ Failed to exec in Sprite: sprite 'sx-absent' not found"
    )
    done = run("exec", sprite, "--json", "--", "sh", "-c", "echo j; exit 2")
    assert done.returncode == 2
    assert json.loads(done.stdout)["data"]["stdout"] == "j\n"
