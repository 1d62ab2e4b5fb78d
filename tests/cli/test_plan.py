"""``sprites plan``: symbols, summaries, exit codes, JSON, and saved plans."""

from __future__ import annotations

import json

from tests.cli.harness import Sprites, manifest


def applied(sprites: Sprites, text: str) -> None:
    sprites.write_manifest(text)
    result = sprites("apply", "--auto-approve")
    assert result.exit_code == 0, result.output


def test_a_first_plan_starts_everything(sprites: Sprites) -> None:
    sprites.use_example()
    result = sprites("plan")
    assert result.exit_code == 0
    assert result.stdout == (
        "Plan for project 'demo' on runtime wisp:\n"
        "\n"
        "  + start agent-1: memory 1GiB, cpus 2 (new in the manifest)\n"
        "  + start agent-2: memory 512MiB, cpus 1 (new in the manifest)\n"
        "  + start worker-1: memory 512MiB, cpus 1 (new in the manifest)\n"
        "  + start worker-2: memory 512MiB, cpus 1 (new in the manifest)\n"
        "  + start worker-3: memory 512MiB, cpus 1 (new in the manifest)\n"
        "\n"
        "Budget after apply: 5/5 sprites on this host; this project 5/5 sprites, "
        "3GiB/4GiB memory, 6/8 cpus.\n"
        "Plan: 5 to start, 0 to replace, 0 to kill.\n"
    )
    # A plan changes nothing.
    assert sprites.fake.names() == []
    assert [call[0] for call in sprites.fake.calls()] == ["list"]
    assert sprites.state() == {}


def test_every_action_has_its_symbol_and_restarts_count_as_replaces(sprites: Sprites) -> None:
    applied(sprites, manifest(a="{}", b="{}", c="{}", d="{}"))
    sprites.fake.set_state("c", "stopped")
    sprites.write_manifest(manifest(a="{memory: 1GiB}", c="{}", d="{}", e="{cpus: 2}"))
    result = sprites("plan")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[2:6] == [
        "-/+ replace a: memory: 512MiB -> 1GiB",
        "  ~ restart c: memory 512MiB, cpus 1 (stopped; will be started again)",
        "  + start e: memory 512MiB, cpus 2 (new in the manifest)",
        "  - kill b: memory 512MiB, cpus 1 (no longer in the manifest)",
    ]
    assert lines[-1] == "Plan: 1 to start, 2 to replace, 1 to kill."


def test_a_converged_project_has_no_changes(sprites: Sprites) -> None:
    sprites.use_example()
    assert sprites("apply", "--auto-approve").exit_code == 0
    result = sprites("plan")
    assert result.exit_code == 0
    assert result.stdout.splitlines()[-1] == "No changes. Sprites match the manifest."
    assert "+ start" not in result.stdout


def test_detailed_exitcode(sprites: Sprites) -> None:
    sprites.use_example()
    assert sprites("plan", "--detailed-exitcode").exit_code == 2
    assert sprites("apply", "--auto-approve").exit_code == 0
    assert sprites("plan", "--detailed-exitcode").exit_code == 0
    sprites.write_manifest("version: 1\nproject: demo\nsprites: {a: {memory: 1XB}}\n")
    result = sprites("plan", "--detailed-exitcode")
    assert result.exit_code == 1
    assert result.stderr.startswith("❌ sprites.yaml:3:23: sprites.a.memory: invalid size")


def test_plan_json_is_one_document_with_a_format_version(sprites: Sprites) -> None:
    sprites.use_example()
    result = sprites("plan", "--json")
    assert result.exit_code == 0
    document = json.loads(result.stdout)
    assert document["format_version"] == "1"
    assert document["project"] == "demo"
    assert document["has_changes"] is True
    assert document["summary"] == {"start": 5, "replace": 0, "kill": 0}
    change = document["changes"][0]
    assert change == {
        "address": "agent-1",
        "action": "start",
        "reason": "new",
        "before": None,
        "after": {"memory": 1 << 30, "cpus": 2},
        "fields": [],
        "observed_state": None,
    }
    assert [c["address"] for c in document["changes"]] == [
        "agent-1",
        "agent-2",
        "worker-1",
        "worker-2",
        "worker-3",
    ]


def test_plan_json_errors_are_json(sprites: Sprites) -> None:
    sprites.write_manifest(manifest(a="{}"))
    sprites.fake.add_sprite("a")
    result = sprites("plan", "--json")
    assert result.exit_code == 1
    document = json.loads(result.stdout)
    assert document["success"] is False
    assert document["message"] == (
        "sprite 'a' is already running but is not owned by project 'demo'"
    )


def test_a_missing_manifest(sprites: Sprites) -> None:
    result = sprites("plan")
    assert result.exit_code == 1
    assert result.stderr.startswith("❌ sprites.yaml: manifest not found\n")
    result = sprites("plan", "-f", "other.yaml")
    assert result.stderr.startswith("❌ other.yaml: manifest not found\n")


def test_a_budget_error_fails_the_plan_and_applies_nothing(sprites: Sprites) -> None:
    sprites.write_manifest(manifest(w="{replicas: 6}"))
    for command in (["plan"], ["apply", "--auto-approve"]):
        result = sprites(*command)
        assert result.exit_code == 1
        assert result.stderr == "❌ maxVMs exceeded: 6 sprites desired, limit 5\n"
    assert sprites.fake.names() == []
    assert sprites.state() == {}


def test_others_running_sprites_count_against_max_vms(sprites: Sprites) -> None:
    sprites.fake.add_sprite("theirs-1")
    sprites.fake.add_sprite("theirs-2")
    sprites.write_manifest(manifest(w="{replicas: 4}"))
    result = sprites("plan")
    assert result.exit_code == 1
    assert result.stderr == (
        "❌ maxVMs exceeded: 6 sprites desired, limit 5 "
        "(4 in this manifest, 2 more already running on this host)\n"
    )


def test_project_limits_are_enforced(sprites: Sprites) -> None:
    sprites.write_manifest(
        "version: 1\nproject: demo\nlimits: {memory: 1GiB, cpus: 2}\n"
        "sprites:\n  a: {memory: 1GiB}\n  b: {}\n"
    )
    result = sprites("plan")
    assert result.exit_code == 1
    assert result.stderr == (
        "❌ memory exceeded: 1536MiB desired, limit 1GiB (limits.memory in the manifest)\n"
    )


def test_an_unowned_sprite_with_a_desired_name_needs_adopt(sprites: Sprites) -> None:
    sprites.fake.add_sprite("agent-1")
    sprites.write_manifest(manifest(**{"agent-1": "{}", "agent-2": "{}"}))
    result = sprites("plan")
    assert result.exit_code == 1
    assert result.stderr.startswith(
        "❌ sprite 'agent-1' is already running but is not owned by project 'demo'\n"
    )
    assert "--adopt" in result.stderr
    result = sprites("plan", "--adopt")
    assert result.exit_code == 0
    assert "  = adopt agent-1: already running; this project will own it" in result.stdout
    assert "Plan: 1 to start, 0 to replace, 0 to kill." in result.stdout
    assert sprites("apply", "--adopt", "--auto-approve").exit_code == 0
    assert set(sprites.state()) == {"agent-1", "agent-2"}
    assert sprites.started_names() == ["agent-2"]
    assert sprites("plan").stdout.endswith("No changes. Sprites match the manifest.\n")


# -- saved plans -----------------------------------------------------------------------------


def test_a_saved_plan_applies_without_asking(sprites: Sprites) -> None:
    sprites.use_example()
    result = sprites("plan", "-out", "demo.plan")
    assert result.exit_code == 0
    assert result.stdout.endswith(
        "\nSaved the plan to demo.plan. Apply exactly it with: sprites apply demo.plan\n"
    )
    assert (sprites.root / "demo.plan").stat().st_mode & 0o777 == 0o600
    assert sprites.fake.names() == []
    result = sprites("apply", "demo.plan")  # no TTY, no --auto-approve: the plan was the review
    assert result.exit_code == 0, result.output
    assert sorted(sprites.running()) == ["agent-1", "agent-2", "worker-1", "worker-2", "worker-3"]
    assert "Apply complete! Sprites: 5 started, 0 replaced, 0 killed." in result.stdout


def test_a_saved_plan_is_stale_after_the_manifest_changes(sprites: Sprites) -> None:
    sprites.use_example()
    assert sprites("plan", "-out", "demo.plan").exit_code == 0
    path = sprites.root / "sprites.yaml"
    path.write_text(path.read_text().replace("agent-2: {}", "agent-2: {cpus: 2}"))
    result = sprites("apply", "demo.plan")
    assert result.exit_code == 1
    assert result.stderr.startswith("❌ Saved plan is stale")
    assert sprites.fake.names() == []
    assert [call[0] for call in sprites.fake.calls() if call[0] != "list"] == []


def test_a_saved_plan_is_stale_after_the_inventory_changes(sprites: Sprites) -> None:
    sprites.use_example()
    assert sprites("plan", "-out", "demo.plan").exit_code == 0
    sprites.fake.add_sprite("theirs", state="stopped")
    result = sprites("apply", "demo.plan")
    assert result.exit_code == 1
    assert result.stderr.startswith("❌ Saved plan is stale")
    assert sprites.fake.names() == ["theirs"]


def test_a_saved_plan_is_stale_once_applied(sprites: Sprites) -> None:
    sprites.use_example()
    assert sprites("plan", "-out", "demo.plan").exit_code == 0
    assert sprites("apply", "demo.plan").exit_code == 0
    started = len(sprites.started_names())
    result = sprites("apply", "demo.plan")
    assert result.exit_code == 1
    assert result.stderr.startswith("❌ Saved plan is stale")
    assert len(sprites.started_names()) == started


def test_a_file_that_is_not_a_saved_plan(sprites: Sprites) -> None:
    sprites.use_example()
    (sprites.root / "junk.plan").write_text("{}")
    result = sprites("apply", "junk.plan")
    assert result.exit_code == 1
    assert result.stderr.startswith("❌ junk.plan is not a saved plan")
    result = sprites("apply", "missing.plan")
    assert result.exit_code == 1
    assert result.stderr.startswith("❌ cannot read saved plan missing.plan")


def test_a_saved_plan_made_with_adopt_applies_its_adoptions(sprites: Sprites) -> None:
    sprites.fake.add_sprite("agent-1")
    sprites.fake.add_sprite("agent-2", state="stopped")
    sprites.use_example()
    result = sprites("plan", "--adopt", "-out", "adopt.plan")
    assert result.exit_code == 0, result.output
    assert "  = adopt agent-1: already running; this project will own it" in result.stdout
    assert "  ~ restart agent-2: " in result.stdout
    result = sprites("apply", "adopt.plan")
    assert result.exit_code == 0, result.output
    assert set(sprites.state()) == {"agent-1", "agent-2", "worker-1", "worker-2", "worker-3"}
    assert "agent-1" not in sprites.started_names()
    assert sprites("plan", "--detailed-exitcode").exit_code == 0


def test_a_saved_destroy_plan(sprites: Sprites) -> None:
    sprites.use_example()
    assert sprites("apply", "--auto-approve").exit_code == 0
    sprites.fake.add_sprite("theirs")
    result = sprites("plan", "--destroy", "-out", "destroy.plan")
    assert result.exit_code == 0
    assert result.stdout.startswith("Destroy plan for project 'demo'")
    assert "Plan: 0 to start, 0 to replace, 5 to kill." in result.stdout
    assert len(sprites.running()) == 6  # planning destroyed nothing
    result = sprites("apply", "destroy.plan")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1].startswith("Destroy complete!")
    assert sprites.fake.names() == ["theirs"]
