"""The config loader accepts the shipped parameter files and names the key on every bad input."""
from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from vla_robot.config import (
    ConfigError,
    config_dir,
    from_dict,
    from_ros_parameters,
    load_graph_config,
    load_node_config,
    parse_override,
    read_parameter_file,
    to_ros_parameters,
)


@dataclass
class Limits:
    max_velocity: list[float] = field(default_factory=lambda: [1.0, 2.0])
    mode: Literal["clamp", "reject"] = "clamp"


@dataclass
class NodeCfg:
    rate_hz: float = 30.0
    name: str = "arm"
    count: int = 3
    enabled: bool = True
    backend: Optional[str] = None
    limits: Limits = field(default_factory=Limits)

    def validate(self):
        if self.rate_hz <= 0:
            raise ValueError(f"rate_hz must be > 0, got {self.rate_hz}")


def write(tmp_path, text, name="p.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_shipped_files_load():
    files = sorted(config_dir().glob("*.yaml"))
    assert files, "config/ ships parameter files"
    for f in files:
        configs = load_graph_config(f)
        assert configs, f"{f} has node sections"
        for node, cfg in configs.items():
            # the loaded object round-trips through ROS parameter names
            assert from_ros_parameters(type(cfg), to_ros_parameters(cfg)) == cfg


def test_good_file_with_nesting_and_override(tmp_path):
    p = write(tmp_path, "arm:\n  ros__parameters:\n    rate_hz: 50\n    limits:\n      max_velocity: [0.5, 0.5]\n")
    cfg = load_node_config(NodeCfg, p, "arm", overrides=dict([parse_override("limits.mode=reject")]))
    assert cfg.rate_hz == 50.0 and isinstance(cfg.rate_hz, float)
    assert cfg.limits.max_velocity == [0.5, 0.5] and cfg.limits.mode == "reject"
    assert cfg.count == 3  # default kept


def test_wildcard_section_applies_to_every_node(tmp_path):
    p = write(tmp_path, "/**:\n  ros__parameters:\n    count: 7\narm:\n  ros__parameters:\n    name: x\n")
    cfg = load_node_config(NodeCfg, p, "arm")
    assert (cfg.count, cfg.name) == (7, "x")


@pytest.mark.parametrize(
    "body, needle",
    [
        ("    colour: red\n", "unknown key 'colour'"),
        ("    limits:\n      max_speed: 1\n", "unknown key 'limits.max_speed'"),
        ("    rate_hz: fast\n", "'rate_hz' is 'fast' (str); expected a number"),
        ("    count: 2.5\n", "'count' is 2.5 (float); expected an integer"),
        ("    enabled: 1\n", "'enabled' is 1 (int); expected true or false"),
        ("    limits:\n      mode: bounce\n", "expected one of 'clamp', 'reject'"),
        ("    limits:\n      max_velocity: [1, x]\n", "'limits.max_velocity[1]'"),
        ("    limits: 3\n", "'limits' is 3 (int); expected a mapping (Limits)"),
        ("    rate_hz: -1\n", "rate_hz must be > 0, got -1.0"),
    ],
)
def test_bad_values_name_key_file_and_expectation(tmp_path, body, needle):
    p = write(tmp_path, "arm:\n  ros__parameters:\n" + body)
    with pytest.raises(ConfigError) as e:
        load_node_config(NodeCfg, p, "arm")
    assert needle in str(e.value)
    assert str(p) in str(e.value) and "[arm]" in str(e.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        read_parameter_file(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_parameter_file(write(tmp_path, "arm: [unclosed\n"))
    with pytest.raises(ConfigError, match="exactly one key 'ros__parameters'"):
        read_parameter_file(write(tmp_path, "arm:\n  rate_hz: 3\n"))
    with pytest.raises(ConfigError, match="no section for node 'arm'"):
        load_node_config(NodeCfg, write(tmp_path, "other:\n  ros__parameters: {}\n"), "arm")
    with pytest.raises(ConfigError, match="no config is known for node 'ghost_node'"):
        load_graph_config(write(tmp_path, "ghost_node:\n  ros__parameters: {}\n"))


def test_required_key_and_override_syntax():
    @dataclass
    class Req:
        address: str

    with pytest.raises(ConfigError, match="required key 'address' is missing"):
        from_dict(Req, {})
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("no-equals-sign")
