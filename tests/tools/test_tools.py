"""Each agent tool on a real engine: the fake wisp and the built-in runtime.

The tools must answer with the guide's envelope, keep the CLI's budget,
state and ownership rules, and turn every failure into ``success: false``.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from reconciler.engine import Engine
from reconciler.tools import (
    apply_sprites,
    attach_sprite,
    call_tool,
    kill_sprite,
    list_sprites,
    plan_sprites,
    spawn_sprite,
)
from tests.helpers.fakewisp import FakeWisp
from tests.tools.conftest import MAX_VMS, Project

MANIFEST = """\
version: 1
project: demo
sprites:
  agent-1: {memory: 256MiB, cpus: 1}
  worker: {replicas: 2}
"""


def assert_envelope(document: dict[str, Any], success: bool, message: str) -> dict[str, Any]:
    assert set(document) == {"success", "message", "data"}
    assert document["success"] is success, document
    assert document["message"] == message
    data: dict[str, Any] = document["data"]
    return data


# -- SpawnSprite -----------------------------------------------------------------


def test_spawn_starts_a_sprite_and_answers_with_the_guide_fields(runtime: Project) -> None:
    document = spawn_sprite("agent-session-1", memory="256MiB", cpus="2", engine=runtime.engine)

    data = assert_envelope(document, True, "Started Sprite 'agent-session-1'")
    assert set(data) == {"name", "memory", "cpus", "stdout", "stderr"}
    assert data["name"] == "agent-session-1"
    assert data["memory"] == "256MiB"
    assert data["cpus"] == "2"
    assert data["stdout"].startswith("Started Sprite VM with ID: sprite-")
    assert runtime.names() == ["agent-session-1"]


def test_spawn_uses_the_config_defaults_and_accepts_numbers(runtime: Project) -> None:
    runtime.configure(defaultMemory="128MiB", defaultCPUs=1)

    default = spawn_sprite("one", engine=runtime.engine)
    numeric = call_tool(
        "SpawnSprite", {"name": "two", "memory": 268435456, "cpus": 2}, engine=runtime.engine
    )

    assert (default["data"]["memory"], default["data"]["cpus"]) == ("128MiB", "1")
    assert (numeric["data"]["memory"], numeric["data"]["cpus"]) == ("256MiB", "2")


def test_spawn_counts_against_max_vms_like_start(runtime: Project) -> None:
    for number in range(MAX_VMS):
        assert spawn_sprite(f"s{number}", memory="64MiB", engine=runtime.engine)["success"]

    document = spawn_sprite("one-too-many", memory="64MiB", engine=runtime.engine)

    data = assert_envelope(
        document,
        False,
        f"maxVMs exceeded: {MAX_VMS + 1} sprites desired, limit {MAX_VMS} "
        f"({MAX_VMS} already running)",
    )
    assert data == {"name": "one-too-many"}
    assert "one-too-many" not in runtime.names()


def test_concurrent_spawns_never_pass_max_vms(runtime: Project) -> None:
    names = [f"rush-{number}" for number in range(2 * MAX_VMS)]

    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        documents = list(
            pool.map(lambda name: spawn_sprite(name, memory="64MiB", engine=runtime.engine), names)
        )

    started = sorted(d["data"]["name"] for d in documents if d["success"])
    refused = [d for d in documents if not d["success"]]
    assert len(started) == MAX_VMS
    assert all(d["message"].startswith("maxVMs exceeded") for d in refused)
    assert runtime.names() == started
    if runtime.fake is not None:
        assert runtime.fake.peak()["running"] == MAX_VMS


def test_spawn_shares_the_budget_with_the_cli(runtime: Project) -> None:
    runtime.configure(maxVMs=1)
    code, _, _ = runtime.cli("start", "by-cli", "--memory", "64MiB")
    assert code == 0

    document = spawn_sprite("by-agent", memory="64MiB", engine=runtime.engine)

    assert document["success"] is False
    assert document["message"].startswith("maxVMs exceeded: 2 sprites desired, limit 1")
    assert runtime.names() == ["by-cli"]


def test_spawn_of_a_taken_name_fails_with_the_runtime_reason(runtime: Project) -> None:
    assert spawn_sprite("twin", memory="64MiB", engine=runtime.engine)["success"]

    document = spawn_sprite("twin", memory="64MiB", engine=runtime.engine)

    data = assert_envelope(document, False, "Failed to start Sprite: sprite 'twin' already exists")
    assert data["name"] == "twin"
    assert {"stdout", "stderr"} <= set(data)


def test_spawn_rejects_a_bad_name_before_the_runtime(wisp_runtime: Project, fake: FakeWisp) -> None:
    document = spawn_sprite("Bad_Name", engine=wisp_runtime.engine)

    assert_envelope(
        document,
        False,
        "Invalid name 'Bad_Name': use 1-63 lowercase letters, digits and '-', "
        "starting with a letter or digit",
    )
    assert not [argv for argv in fake.calls() if argv[:1] == ["start"]]


def test_spawn_rejects_a_bad_size_with_the_cli_words(runtime: Project) -> None:
    document = spawn_sprite("sized", memory="lots", engine=runtime.engine)

    assert document["success"] is False
    assert document["message"].startswith("Invalid size 'lots': expected a size such as 512MiB")
    assert runtime.names() == []


def test_spawn_reports_a_runtime_failure_with_its_output(
    wisp_runtime: Project, fake: FakeWisp
) -> None:
    fake.script(fail={"start": "insufficient memory"})

    document = spawn_sprite("big", engine=wisp_runtime.engine)

    data = assert_envelope(document, False, "Failed to start Sprite: insufficient memory")
    assert data["name"] == "big"
    assert "insufficient memory" in data["stderr"]


# -- ListSprites -----------------------------------------------------------------


def test_list_shows_each_sprite_with_id_name_state_and_raw_output(runtime: Project) -> None:
    assert_envelope(list_sprites(engine=runtime.engine), True, "No active Sprites")
    spawn_sprite("alpha", memory="64MiB", engine=runtime.engine)
    spawn_sprite("beta", memory="64MiB", engine=runtime.engine)

    data = assert_envelope(list_sprites(engine=runtime.engine), True, "Active Sprites: 2")

    assert sorted(entry["name"] for entry in data["sprites"]) == ["alpha", "beta"]
    for entry in data["sprites"]:
        assert {"id", "name", "state"} <= set(entry) <= {"id", "name", "state", "pid", "address"}
        assert entry["state"] == "running"
        assert entry["id"].startswith("sprite-")
        assert isinstance(entry.get("pid", 0), int)
    assert isinstance(data["rawOutput"], str)
    for entry in data["sprites"]:
        assert entry["id"] in data["rawOutput"]


def test_list_turns_unreadable_runtime_output_into_an_envelope(
    wisp_runtime: Project, fake: FakeWisp
) -> None:
    fake.script(list="garbage")

    document = list_sprites(engine=wisp_runtime.engine)

    assert document["success"] is False
    assert document["message"].startswith("Failed to list Sprite")


# -- AttachSprite / KillSprite ---------------------------------------------------


def test_attach_reads_the_console_once(runtime: Project) -> None:
    spawn_sprite("console", memory="64MiB", engine=runtime.engine)

    data = assert_envelope(
        attach_sprite("console", engine=runtime.engine), True, "Attached to Sprite 'console'"
    )

    assert set(data) == {"name", "stdout", "stderr"}
    assert data["stdout"].startswith("Connected to console. Console output:")


def test_attach_to_an_unknown_sprite_fails(runtime: Project) -> None:
    data = assert_envelope(
        attach_sprite("nobody", engine=runtime.engine),
        False,
        "Failed to attach to Sprite: sprite 'nobody' not found",
    )
    assert data["name"] == "nobody"


def test_kill_terminates_the_sprite(runtime: Project) -> None:
    spawn_sprite("doomed", memory="64MiB", engine=runtime.engine)
    spawn_sprite("spared", memory="64MiB", engine=runtime.engine)

    data = assert_envelope(
        kill_sprite("doomed", engine=runtime.engine), True, "Killed Sprite 'doomed'"
    )

    assert set(data) == {"name", "stdout", "stderr"}
    assert data["stdout"].startswith("Terminated VM doomed (PID: ")
    assert runtime.names() == ["spared"]


def test_kill_of_an_unknown_sprite_fails(runtime: Project) -> None:
    data = assert_envelope(
        kill_sprite("ghost", engine=runtime.engine),
        False,
        "Failed to kill Sprite: sprite 'ghost' not found",
    )
    assert data["name"] == "ghost"


# -- PlanSprites -----------------------------------------------------------------


def test_plan_from_text_changes_nothing(runtime: Project) -> None:
    document = plan_sprites(manifest=MANIFEST, engine=runtime.engine)

    data = assert_envelope(document, True, "Plan: 3 to start, 0 to replace, 0 to kill.")
    assert data["project"] == "demo"
    assert data["has_changes"] is True
    assert data["summary"] == {"start": 3, "replace": 0, "kill": 0}
    assert sorted(change["address"] for change in data["changes"]) == [
        "agent-1",
        "worker-1",
        "worker-2",
    ]
    assert {change["action"] for change in data["changes"]} == {"start"}
    assert runtime.names() == []


def test_plan_from_a_file_is_the_plan_json_document(runtime: Project) -> None:
    runtime.configure(maxVMs=4)
    path = runtime.write_manifest(MANIFEST)
    spawn_sprite("bystander", memory="64MiB", engine=runtime.engine)

    document = plan_sprites(path=str(path), engine=runtime.engine)
    code, out, _ = runtime.cli("plan", "-f", str(path), "--json")

    assert code == 0
    assert document["data"] == json.loads(out)
    assert [entry["name"] for entry in document["data"]["observed"]] == ["bystander"]


def test_plan_over_budget_fails_as_the_cli_does(runtime: Project) -> None:
    path = runtime.write_manifest(MANIFEST)
    spawn_sprite("bystander", memory="64MiB", engine=runtime.engine)

    document = plan_sprites(path=str(path), engine=runtime.engine)
    code, out, _ = runtime.cli("plan", "-f", str(path), "--json")

    assert code == 1
    assert document["success"] is False
    assert document["message"] == json.loads(out)["message"]
    assert document["message"].startswith("maxVMs exceeded: 4 sprites desired, limit 3")


def test_plan_defaults_to_sprites_yaml_in_the_working_directory(
    runtime: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime.write_manifest(MANIFEST)
    monkeypatch.chdir(runtime.root)

    document = plan_sprites(engine=runtime.engine)

    assert document["success"] is True
    assert document["data"]["summary"]["start"] == 3


def test_plan_wants_path_or_manifest_not_both(runtime: Project) -> None:
    data = assert_envelope(
        plan_sprites(path="sprites.yaml", manifest=MANIFEST, engine=runtime.engine),
        False,
        "Give either path or manifest, not both",
    )
    assert "hint" in data


def test_plan_points_at_the_line_of_a_bad_inline_manifest(runtime: Project) -> None:
    text = "version: 1\nproject: demo\nsprites:\n  agent-1: {memory: lots}\n"

    document = plan_sprites(manifest=text, engine=runtime.engine)

    assert document["success"] is False
    assert document["message"].startswith("<manifest>:4:")
    assert "memory" in document["message"]


def test_plan_of_a_missing_file_says_so(runtime: Project) -> None:
    missing = runtime.root / "absent.yaml"

    document = plan_sprites(path=str(missing), engine=runtime.engine)

    assert document["success"] is False
    assert document["message"] == f"{missing}: manifest not found"


# -- ApplySprites ----------------------------------------------------------------


def test_apply_refuses_without_approval_and_changes_nothing(runtime: Project) -> None:
    for approve in ({}, {"approve": False}):
        document = call_tool(
            "ApplySprites", {"manifest": MANIFEST, **approve}, engine=runtime.engine
        )

        data = assert_envelope(
            document,
            False,
            "Refusing to apply without approval: call ApplySprites with approve: true",
        )
        assert "PlanSprites" in data["hint"]
    assert runtime.names() == []


def test_apply_with_approval_converges_and_reports(runtime: Project) -> None:
    document = apply_sprites(manifest=MANIFEST, approve=True, engine=runtime.engine)

    data = assert_envelope(
        document, True, "Apply complete! Sprites: 3 started, 0 replaced, 0 killed."
    )
    assert data["plan"]["summary"] == {"start": 3, "replace": 0, "kill": 0}
    result = data["result"]
    assert result["ok"] is True
    assert result["changes"] == {"start": 3, "replace": 0, "kill": 0}
    assert result["failed"] == 0 and result["failures"] == []
    assert runtime.names() == ["agent-1", "worker-1", "worker-2"]

    again = apply_sprites(manifest=MANIFEST, approve=True, engine=runtime.engine)

    data = assert_envelope(again, True, "No changes. Sprites match the manifest.")
    assert data["result"] is None
    assert data["plan"]["has_changes"] is False


def test_apply_never_touches_sprites_the_project_does_not_own(runtime: Project) -> None:
    runtime.configure(maxVMs=4)
    spawn_sprite("mine-alone", memory="64MiB", engine=runtime.engine)
    assert apply_sprites(manifest=MANIFEST, approve=True, engine=runtime.engine)["success"]
    emptied = "version: 1\nproject: demo\nsprites: {}\n"

    document = apply_sprites(manifest=emptied, approve=True, engine=runtime.engine)

    assert document["success"] is True
    assert document["data"]["result"]["changes"] == {"start": 0, "replace": 0, "kill": 3}
    assert runtime.names() == ["mine-alone"]


def test_apply_shares_project_state_with_the_cli(runtime: Project) -> None:
    path = runtime.write_manifest(MANIFEST)
    code, _, _ = runtime.cli("apply", "-f", str(path), "--auto-approve")
    assert code == 0

    document = plan_sprites(path=str(path), engine=runtime.engine)

    assert document["message"] == "No changes. Sprites match the manifest."


def test_apply_reports_each_failed_change(wisp_runtime: Project, fake: FakeWisp) -> None:
    fake.script(fail={"start": {"worker-2": "insufficient memory"}})

    document = apply_sprites(manifest=MANIFEST, approve=True, engine=wisp_runtime.engine)

    data = assert_envelope(
        document, False, "Apply failed! Sprites: 2 started, 0 replaced, 0 killed; 1 failed."
    )
    assert data["result"]["ok"] is False
    assert data["result"]["failures"] == [
        {"sprite": "worker-2", "message": "Failed to start Sprite: insufficient memory"}
    ]
    assert wisp_runtime.names() == ["agent-1", "worker-1"]


# -- every failure is an envelope ------------------------------------------------


def test_config_errors_come_back_as_envelopes(wisp_runtime: Project) -> None:
    wisp_runtime.configure(kind="claude")

    for name, arguments in (("ListSprites", {}), ("SpawnSprite", {"name": "x"})):
        document = call_tool(name, arguments, engine=wisp_runtime.engine)

        assert document["success"] is False
        assert document["message"] == (
            "Agent kind must be 'sprite' to use Sprite commands. Current kind: 'claude'"
        )


def test_a_missing_wisp_is_reported_as_the_cli_reports_it(wisp_runtime: Project) -> None:
    wisp_runtime.configure(wispPath="/nonexistent/wisp")

    document = list_sprites(engine=wisp_runtime.engine)

    assert_envelope(
        document,
        False,
        "Wisp CLI not found at '/nonexistent/wisp'. Install Wisp to enable Sprite support",
    )


def test_unexpected_exceptions_become_envelopes() -> None:
    def broken() -> Engine:
        raise RuntimeError("disk on fire")

    for name, arguments in (
        ("SpawnSprite", {"name": "x"}),
        ("AttachSprite", {"name": "x"}),
        ("ListSprites", {}),
        ("KillSprite", {"name": "x"}),
        ("PlanSprites", {"manifest": MANIFEST}),
        ("ApplySprites", {"manifest": MANIFEST, "approve": True}),
    ):
        document = call_tool(name, arguments, engine=broken)

        assert document["success"] is False
        assert document["message"] == f"{name} failed unexpectedly: RuntimeError: disk on fire"
        assert "bug" in document["data"]["hint"]
