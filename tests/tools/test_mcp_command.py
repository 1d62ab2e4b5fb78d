"""``sprites mcp`` is optional: only it imports the SDK, and without the extra
it says how to install it."""

from __future__ import annotations

import subprocess
import sys

from tests.tools.conftest import Project

#: Makes ``mcp`` (and everything under it) unimportable, as when the extra is absent.
WITHOUT_MCP = """
import sys

class NoMcp:
    def find_spec(self, name, path=None, target=None):
        if name == "mcp" or name.startswith("mcp.") or name == "mcp_types":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoMcp())
for loaded in [m for m in sys.modules if m == "mcp" or m.startswith("mcp.")]:
    del sys.modules[loaded]
"""

REPORT_IMPORTS = """
import sys
from reconciler.cli import cli
try:
    cli.main(sys.argv[1:], prog_name="sprites", standalone_mode=False)
finally:
    loaded = sorted(m for m in sys.modules if m == "mcp" or m.startswith(("mcp.", "mcp_types")))
    print("MCP-MODULES:", loaded, file=sys.stderr)
"""


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603  (argv list, no shell)
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_help_and_list_do_not_import_the_sdk(wisp_runtime: Project) -> None:
    base = ["--config", str(wisp_runtime.config_path), "--state-dir", str(wisp_runtime.state_dir)]
    for args in (["--help"], [*base, "list", "--json"], ["mcp", "--help"]):
        done = run_python(REPORT_IMPORTS, *args)

        assert done.returncode == 0, done.stderr
        assert "MCP-MODULES: []" in done.stderr, args


def test_help_lists_the_mcp_command() -> None:
    done = run_python(REPORT_IMPORTS, "--help")

    assert "mcp " in done.stdout
    assert "Model Context Protocol" in done.stdout


def test_without_the_extra_mcp_says_how_to_install_it() -> None:
    code = (
        WITHOUT_MCP + "\nfrom reconciler.cli import main\nsys.argv = ['sprites', 'mcp']\nmain()\n"
    )

    done = run_python(code)

    assert done.returncode == 1
    assert done.stdout == ""
    first, hint = done.stderr.strip().splitlines()
    assert first.startswith("❌ sprites mcp needs the mcp extra, which is not installed")
    assert "pip install 'sprites[mcp]'" in hint
    assert "pip install -e '.[mcp]'" in hint
