"""The GitOps/CI surface: the manifest's JSON Schema (command, shipped file,
editor hint in the example) and the GitHub Actions example workflow."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner

from reconciler.cli import cli
from reconciler.schema import manifest_schema, schema_text
from tests.helpers.fakewisp import FakeWisp

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILE = ROOT / "schema" / "sprites.schema.json"
EXAMPLE = ROOT / "examples" / "sprites.yaml"
WORKFLOW = ROOT / "examples" / "github-actions.yml"


# -- schema ---------------------------------------------------------------------


def test_sprites_schema_prints_the_shipped_schema_file() -> None:
    result = CliRunner().invoke(cli, ["schema"], catch_exceptions=False)
    assert result.exit_code == 0
    assert result.output == SCHEMA_FILE.read_text(), (
        "schema/sprites.schema.json is out of date with the manifest models; "
        "regenerate it with: sprites schema > schema/sprites.schema.json"
    )


def test_the_schema_names_itself() -> None:
    schema = json.loads(schema_text())
    assert list(schema)[:3] == ["$schema", "$id", "title"]
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["required"] == ["version", "project"]
    template = schema["$defs"]["SpriteTemplate"]["properties"]
    assert {"memory", "cpus", "replicas", "command", "env", "ttl"} <= set(template)


def test_the_example_starts_with_the_editor_schema_hint() -> None:
    first = EXAMPLE.read_text().splitlines()[0]
    assert first == "# yaml-language-server: $schema=../schema/sprites.schema.json"
    assert (EXAMPLE.parent / first.split("=", 1)[1]).resolve() == SCHEMA_FILE


def test_the_schema_accepts_the_example_and_rejects_what_the_loader_rejects() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(manifest_schema())
    jsonschema.Draft202012Validator.check_schema(manifest_schema())
    example = yaml.safe_load(EXAMPLE.read_text())
    assert list(validator.iter_errors(example)) == []
    good = {"version": 1, "project": "p", "sprites": {"a": {"ttl": "30m", "cpus": "2"}}}
    assert list(validator.iter_errors(good)) == []
    for bad in (
        {"version": 2, "project": "p"},
        {"version": 1, "project": "Bad Name"},
        {"version": 1, "project": "p", "sprites": {"a": {"memroy": "1GiB"}}},
        {"version": 1, "project": "p", "sprites": {"Not_A_Name": {}}},
        {"version": 1, "project": "p", "sprites": {"a": {"memory": "lots"}}},
        {"version": 1, "project": "p", "sprites": {"a": {"replicas": 0}}},
        {"version": 1, "project": "p", "sprites": {"a": {"ttl": "soon"}}},
    ):
        assert list(validator.iter_errors(bad)), bad


# -- the GitHub Actions example ----------------------------------------------------


def workflow() -> dict[Any, Any]:
    data: dict[Any, Any] = yaml.safe_load(WORKFLOW.read_text())
    return data


def steps() -> list[dict[str, Any]]:
    [job] = workflow()["jobs"].values()
    result: list[dict[str, Any]] = job["steps"]
    return result


def sprites_commands() -> list[list[str]]:
    """Every `sprites ...` / `wreckit sprite ...` command line the workflow runs."""
    found = []
    for step in steps():
        for line in str(step.get("run", "")).splitlines():
            if line.split()[:1] not in (["sprites"], ["wreckit"]):
                continue
            words = shlex.split(line, comments=True)
            for index, word in enumerate(words):  # up to a redirection or another command
                if re.match(r"^(\d?>|\||&&|;)", word):
                    words = words[:index]
                    break
            if words[:2] == ["wreckit", "sprite"]:
                found.append(words[2:])
            elif words[:1] == ["sprites"]:
                found.append(words[1:])
    return found


def test_the_workflow_triggers_on_pull_requests_and_main() -> None:
    data = workflow()
    triggers = data.get("on", data.get(True))  # YAML 1.1 reads a bare `on` as true
    assert "pull_request" in triggers
    assert triggers["push"]["branches"] == ["main"]


def test_every_command_the_workflow_runs_exists_with_its_options() -> None:
    commands = sprites_commands()
    assert {words[0] for words in commands} >= {"plan", "apply", "start", "list", "kill"}
    for words in commands:
        command = cli.commands.get(words[0])
        assert isinstance(command, click.Command), f"no `sprites {words[0]}`"
        options = {opt for param in command.params for opt in param.opts}
        for word in words[1:]:
            if word.startswith("-"):
                assert word in options, f"`sprites {words[0]}` has no {word}"
        # click accepts the whole line (names, values, flags).
        command.make_context(words[0], [w.replace("$MANIFEST", "m.yaml") for w in words[1:]])


def test_the_workflow_plans_on_pull_requests_and_applies_on_main() -> None:
    by_name = {step.get("name"): step for step in steps()}
    plan, apply = by_name["Plan"], by_name["Apply"]
    assert "pull_request" in plan["if"]
    assert "--detailed-exitcode" in plan["run"] and "$GITHUB_STEP_SUMMARY" in plan["run"]
    assert "refs/heads/main" in apply["if"]
    assert "sprites apply" in apply["run"] and "--auto-approve" in apply["run"]


def test_the_guides_steps_clean_up_always() -> None:
    by_name = {step.get("name"): step for step in steps()}
    assert by_name["Run Agent in Sprite"]["run"] == "wreckit sprite start ci-agent --memory 1GiB"
    assert by_name["Check Sprite Status"]["run"] == "wreckit sprite list --json"
    cleanup = by_name["Cleanup"]
    assert cleanup["if"] == "always()" and cleanup["run"] == "wreckit sprite kill ci-agent"


@pytest.mark.parametrize("changes", [False, True])
def test_the_plan_step_posts_the_summary_and_treats_exit_2_as_success(
    tmp_path: Path, changes: bool
) -> None:
    """Run the Plan step's script as Actions would (bash -eo pipefail) against
    the fake wisp: exit 2 ("changes") must not fail the step."""
    fake = FakeWisp(tmp_path / "fakewisp")
    work = tmp_path / "checkout"
    (work / ".wreckit").mkdir(parents=True)
    (work / ".wreckit" / "config.json").write_text(
        json.dumps({"agent": {"kind": "sprite", "wispPath": fake.path, "runtime": "wisp"}})
    )
    manifest = work / "sprites.yaml"
    manifest.write_text("version: 1\nproject: ci\nsprites:\n  a: {}\n")
    if not changes:
        fake.add_sprite("a")
        state = tmp_path / "state" / "projects"
        state.mkdir(parents=True)
        record = {"status": "running", "spec": {"memory": 512 << 20, "cpus": 1}}
        (state / "ci.json").write_text(
            json.dumps(
                {"format_version": 1, "project": "ci", "serial": 1, "sprites": {"a": record}}
            )
        )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "sprites"
    shim.write_text(
        f"#!/bin/sh\nexec {sys.executable} -c 'from reconciler.cli import main; main()' \"$@\"\n"
    )
    shim.chmod(0o755)
    summary = tmp_path / "summary.md"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "MANIFEST": "sprites.yaml",
        "RUNNER_TEMP": str(tmp_path),
        "GITHUB_STEP_SUMMARY": str(summary),
        "SPRITES_STATE_DIR": str(tmp_path / "state"),
    }
    script = {step.get("name"): step for step in steps()}["Plan"]["run"]
    try:
        done = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        fake.kill_leftovers()
    assert done.returncode == 0, done.stdout + done.stderr
    text = summary.read_text()
    assert text.startswith("## sprites plan for `sprites.yaml`")
    if changes:
        assert "Merging this changes the running sprites:" in text
        assert re.search(r"\+ start a: memory 512MiB, cpus 1", text)
    else:
        assert "No changes." in text and "Sprites match the manifest" in text
