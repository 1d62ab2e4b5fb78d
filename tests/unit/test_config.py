"""The Wreckit config: defaults, discovery, the local overlay, and errors that
name the file (with line:column) and the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler.config import AgentConfig, default_state_dir, find_config_dir, load_config
from reconciler.engine import Engine
from reconciler.errors import AgentKindError, ConfigError, WispNotFoundError

MiB, GiB = 1 << 20, 1 << 30

GUIDE_CONFIG = {
    "schema_version": 1,
    "base_branch": "main",
    "branch_prefix": "wreckit/",
    "merge_mode": "pr",
    "agent": {
        "kind": "sprite",
        "wispPath": "/opt/wisp/bin/wisp",
        "maxVMs": 10,
        "defaultMemory": "1GiB",
        "defaultCPUs": "2",
        "timeout": 600,
    },
    "max_iterations": 100,
    "timeout_seconds": 3600,
}


def write(root: Path, text: str | dict[str, object], name: str = "config.json") -> Path:
    path = root / ".wreckit" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text if isinstance(text, str) else json.dumps(text, indent=2))
    return path


def test_no_config_file_gives_the_guides_defaults(tmp_path: Path) -> None:
    config = load_config(cwd=tmp_path)
    assert config.agent == AgentConfig()
    assert config.agent.kind == "sprite"
    assert config.agent.wisp_path == "wisp"
    assert config.agent.max_vms == 5
    assert config.agent.default_memory == 512 * MiB
    assert config.agent.default_cpus == 1
    assert config.agent.timeout == 300
    assert config.agent.runtime == "auto"
    assert config.sources == ()
    config.require_sprite_kind()


def test_the_guides_config_loads_and_its_other_fields_are_ignored(tmp_path: Path) -> None:
    path = write(tmp_path, GUIDE_CONFIG)
    config = load_config(cwd=tmp_path)
    assert config.agent == AgentConfig(
        kind="sprite",
        wisp_path="/opt/wisp/bin/wisp",
        max_vms=10,
        default_memory=GiB,
        default_cpus=2,
        timeout=600.0,
    )
    assert config.sources == (path,)
    assert config.root == tmp_path


def test_a_config_without_an_agent_block_is_all_defaults(tmp_path: Path) -> None:
    write(tmp_path, {"base_branch": "main", "merge_mode": "direct", "anything": [1, {"x": None}]})
    assert load_config(cwd=tmp_path).agent == AgentConfig()


def test_the_config_is_found_in_a_parent_directory(tmp_path: Path) -> None:
    write(tmp_path, {"agent": {"kind": "sprite", "maxVMs": 7}})
    deep = tmp_path / "src" / "pkg" / "deeper"
    deep.mkdir(parents=True)
    assert find_config_dir(deep) == tmp_path / ".wreckit"
    config = load_config(cwd=deep)
    assert config.agent.max_vms == 7
    assert config.root == tmp_path


def test_the_nearest_config_wins(tmp_path: Path) -> None:
    write(tmp_path, {"agent": {"kind": "sprite", "maxVMs": 7}})
    inner = tmp_path / "inner"
    write(inner, {"agent": {"kind": "sprite", "maxVMs": 2}})
    (inner / "x").mkdir()
    assert load_config(cwd=inner / "x").agent.max_vms == 2
    assert load_config(cwd=tmp_path).agent.max_vms == 7


def test_the_local_overlay_is_deep_merged(tmp_path: Path) -> None:
    write(tmp_path, GUIDE_CONFIG)
    write(tmp_path, {"agent": {"maxVMs": 3, "runtime": "wisp"}}, "config.local.json")
    config = load_config(cwd=tmp_path)
    # Overridden fields change, the rest of the agent block stays.
    assert config.agent.max_vms == 3
    assert config.agent.runtime == "wisp"
    assert config.agent.default_memory == GiB
    assert config.agent.wisp_path == "/opt/wisp/bin/wisp"
    assert [p.name for p in config.sources] == ["config.json", "config.local.json"]


def test_a_local_overlay_alone_is_a_config(tmp_path: Path) -> None:
    write(tmp_path, {"agent": {"kind": "sprite", "maxVMs": 4}}, "config.local.json")
    assert load_config(cwd=tmp_path).agent.max_vms == 4


def test_an_explicit_config_path_and_its_overlay(tmp_path: Path) -> None:
    path = write(tmp_path / "elsewhere", {"agent": {"kind": "sprite", "maxVMs": 9}})
    write(tmp_path / "elsewhere", {"agent": {"timeout": 5}}, "config.local.json")
    write(tmp_path, {"agent": {"kind": "sprite", "maxVMs": 1}})
    config = load_config(path, cwd=tmp_path)
    assert (config.agent.max_vms, config.agent.timeout) == (9, 5.0)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.json")


def error_of(tmp_path: Path, base: str, local: str | None = None) -> ConfigError:
    write(tmp_path, base)
    if local is not None:
        write(tmp_path, local, "config.local.json")
    with pytest.raises(ConfigError) as caught:
        load_config(cwd=tmp_path)
    return caught.value


def test_unknown_agent_fields_are_rejected_with_file_line_column(tmp_path: Path) -> None:
    error = error_of(
        tmp_path, '{\n  "agent": {\n    "kind": "sprite",\n    "wispPth": "x"\n  }\n}\n'
    )
    path = tmp_path / ".wreckit" / "config.json"
    assert error.user_message.startswith(
        f"{path}:4:16: agent.wispPth: unknown field; expected one of"
    )
    assert "wispPath" in error.user_message
    assert error.field == "agent.wispPth"


def test_invalid_json_names_the_file_line_and_column(tmp_path: Path) -> None:
    error = error_of(tmp_path, '{"agent": {"kind": "sprite",}}')
    path = tmp_path / ".wreckit" / "config.json"
    assert error.user_message == (
        f"{path}:1:29: invalid JSON: Expecting property name enclosed in double quotes"
    )


def test_invalid_json_in_the_local_overlay_names_that_file(tmp_path: Path) -> None:
    error = error_of(
        tmp_path, '{"agent": {"kind": "sprite"}}', '{\n  "agent": {\n    "maxVMs": 3\n  \n'
    )
    path = tmp_path / ".wreckit" / "config.local.json"
    assert error.user_message == f"{path}:5:1: invalid JSON: Expecting ',' delimiter"
    assert error.render() == f"❌ {path}:5:1: invalid JSON: Expecting ',' delimiter"


@pytest.mark.parametrize(
    ("agent", "field", "words"),
    [
        ('{"kind": "sprite", "maxVMs": 0}', "agent.maxVMs", "expected a positive integer, got 0"),
        ('{"kind": "sprite", "maxVMs": "5"}', "agent.maxVMs", "expected a positive integer"),
        ('{"kind": "sprite", "maxVMs": true}', "agent.maxVMs", "expected a positive integer"),
        ('{"kind": "sprite", "defaultMemory": "512XB"}', "agent.defaultMemory", "invalid size"),
        ('{"kind": "sprite", "defaultCPUs": "0"}', "agent.defaultCPUs", "at least 1"),
        ('{"kind": "sprite", "timeout": -1}', "agent.timeout", "positive number of seconds"),
        ('{"kind": "sprite", "wispPath": ""}', "agent.wispPath", "non-empty path"),
        ('{"kind": "sprite", "runtime": "docker"}', "agent.runtime", "expected one of 'auto'"),
        ('{"kind": 3}', "agent.kind", "expected a string"),
        ('{"maxVMs": 3}', "agent", 'missing required field "kind"'),
        ('"sprite"', "agent", "expected an object"),
    ],
)
def test_wrong_agent_values_name_file_line_column_and_field(
    tmp_path: Path, agent: str, field: str, words: str
) -> None:
    error = error_of(tmp_path, '{\n  "timeout": 5,\n  "agent": ' + agent + "\n}\n")
    path = tmp_path / ".wreckit" / "config.json"
    assert error.user_message.startswith(f"{path}:3:"), error.user_message
    assert f": {field}: " in error.user_message
    assert words in error.user_message
    assert error.field == field


def test_an_error_from_the_overlay_points_into_the_overlay(tmp_path: Path) -> None:
    error = error_of(
        tmp_path,
        '{"agent": {"kind": "sprite", "defaultMemory": "512MiB"}}',
        '{"agent": {"defaultMemory": "1XB"}}',
    )
    path = tmp_path / ".wreckit" / "config.local.json"
    assert error.user_message.startswith(f"{path}:1:29: agent.defaultMemory: invalid size '1XB'")


@pytest.mark.parametrize(
    ("text", "words"),
    [("", "invalid JSON"), ("[1]", "expected a JSON object"), ('{"a": 1}\x00', "invalid JSON")],
)
def test_files_that_are_not_a_json_object(tmp_path: Path, text: str, words: str) -> None:
    error = error_of(tmp_path, text)
    assert error.user_message.startswith(f"{tmp_path / '.wreckit' / 'config.json'}:1:")
    assert words in error.user_message


def test_invalid_utf8_is_located(tmp_path: Path) -> None:
    path = tmp_path / ".wreckit" / "config.json"
    path.parent.mkdir()
    path.write_bytes(b'{\n "agent": {"kind": "spr\xffite"}}')
    with pytest.raises(ConfigError) as caught:
        load_config(cwd=tmp_path)
    assert caught.value.user_message == f"{path}:2:24: not valid UTF-8 text"


def test_another_agent_kind_is_refused_with_the_guides_words(tmp_path: Path) -> None:
    write(tmp_path, {"agent": {"kind": "claude_sdk"}})
    with pytest.raises(AgentKindError) as caught:
        Engine(cwd=tmp_path, state_dir=tmp_path / "state")
    assert caught.value.render() == (
        "Agent kind must be 'sprite' to use Sprite commands. Current kind: 'claude_sdk'"
    )


def test_runtime_wisp_with_a_missing_wisp_gives_the_guides_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "no" / "wisp")
    write(tmp_path, {"agent": {"kind": "sprite", "runtime": "wisp", "wispPath": missing}})
    engine = Engine(cwd=tmp_path, state_dir=tmp_path / "state")
    with pytest.raises(WispNotFoundError) as caught:
        engine.list()
    assert caught.value.render() == (
        f"❌ Wisp CLI not found at '{missing}'. Install Wisp to enable Sprite support"
    )


def test_runtime_wisp_with_a_bare_name_not_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    write(tmp_path, {"agent": {"kind": "sprite", "runtime": "wisp"}})
    with pytest.raises(WispNotFoundError) as caught:
        Engine(cwd=tmp_path, state_dir=tmp_path / "state").list()
    assert caught.value.render() == (
        "❌ Wisp CLI not found at 'wisp'. Install Wisp to enable Sprite support"
    )


def test_the_state_dir_comes_from_the_environment_or_xdg(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SPRITES_STATE_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_state_dir() == tmp_path / "xdg" / "sprites"
    assert Engine(cwd=tmp_path).state_dir == tmp_path / "xdg" / "sprites"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_state_dir() == tmp_path / "home" / ".local" / "state" / "sprites"
    monkeypatch.setenv("SPRITES_STATE_DIR", str(tmp_path / "env-state"))
    assert Engine(cwd=tmp_path).state_dir == tmp_path / "env-state"
    assert Engine(cwd=tmp_path, state_dir=tmp_path / "flag").state_dir == tmp_path / "flag"
