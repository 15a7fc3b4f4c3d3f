"""Bringup graphs as data, and the launch files built from them.

launch / launch_ros are not installed here (they are not on PyPI), so the launch files are checked
two ways: parsed (AST), and imported with small stand-ins for the launch API that record what the
files ask for; what they ask for must equal vla_robot.bringup.graph(...) node for node.
"""
import ast
import importlib
import importlib.util
import sys
import types
from pathlib import Path

import pytest

from vla_robot import bringup
from vla_robot.config import ConfigError, load_node_config, node_config_class, read_parameter_file

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = ROOT / "launch"


def test_every_graph_has_a_launch_file_and_parameter_file():
    assert sorted(p.name for p in LAUNCH.glob("*.launch.py")) == sorted(f"{g}.launch.py" for g in bringup.GRAPHS)
    for g in bringup.GRAPHS:
        assert (ROOT / "config" / f"{g}.yaml").is_file()
    assert (ROOT / "config" / "sim.yaml").is_file()


@pytest.mark.parametrize("name", bringup.GRAPHS)
def test_graph_nodes_have_configs_in_their_files(name):
    """Every node of every graph variant has a section (or defaults) its config class accepts."""
    for sim in (False, True):
        specs = bringup.graph(name, use_sim=sim)
        assert len({s.name for s in specs}) == len(specs)
        for s in specs:
            cls = node_config_class(s.executable)
            sections = {}
            for f in s.parameters:
                sections.update(read_parameter_file(f))
            overrides = dict(s.overrides)
            for f in s.parameters:
                if s.name in read_parameter_file(f):
                    load_node_config(cls, f, s.name, overrides)
            if s.name not in sections:
                from vla_robot.config import from_dict

                from_dict(cls, overrides)


def test_sim_swaps_hardware_for_the_twin_and_keeps_the_rest():
    real = bringup.graph("rl_finetune")
    sim = bringup.graph("rl_finetune", use_sim=True)
    real_names = [s.name for s in real]
    sim_names = [s.name for s in sim]
    assert "camera_node" in real_names and "arm_node" in real_names and "twin_node" not in real_names
    assert "twin_node" in sim_names and "camera_node" not in sim_names and "arm_node" not in sim_names
    rest_real = [s for s in real if s.name not in ("camera_node", "arm_node")]
    rest_sim = [s for s in sim if s.name != "twin_node"]
    assert [(s.name, s.remappings, s.overrides) for s in rest_real] == [(s.name, s.remappings, s.overrides) for s in rest_sim]
    assert all(s.parameters[-1].endswith("sim.yaml") for s in sim)
    assert dict(next(s for s in sim if s.name == "twin_node").overrides)["mode"] == "sim"


def test_ros2_control_arm_gets_commands_on_the_controller_topic():
    g = bringup.graph("evaluate", arm_driver="ros2_control")
    assert "arm_node" not in [s.name for s in g]
    policy = next(s for s in g if s.name == "policy_node")
    assert ("arm/joint_trajectory", bringup.JTC_TOPIC) in policy.remappings  # its trajectories (docs/ros2_control.md)
    demos = bringup.graph("record_demos", arm_driver="ros2_control")
    teleop = next(s for s in demos if s.name == "teleop_node")
    assert ("teleop/command", bringup.JTC_TOPIC) in teleop.remappings
    demos_sim = bringup.graph("record_demos", use_sim=True)
    assert ("teleop/command", "arm/command") in next(s for s in demos_sim if s.name == "teleop_node").remappings


def test_launch_arguments_and_bad_values():
    specs = bringup.graph_from_launch_arguments("rl_finetune", {"use_sim": "True", "task": "reach",
                                                               "policy_server": "tcp://10.0.0.2:5555"})
    twin = next(s for s in specs if s.name == "twin_node")
    assert dict(twin.overrides)["task"] == "reach"
    assert dict(next(s for s in specs if s.name == "policy_node").overrides)["policy_server"] == "tcp://10.0.0.2:5555"
    # the language instruction reaches the episode manager, which hands it to the policy in `start`
    specs = bringup.graph_from_launch_arguments("rl_finetune", {"task": "cups", "instruction": "stack the cups"})
    em = dict(next(s for s in specs if s.name == "episode_manager_node").overrides)
    assert em == {"task": "cups", "instruction": "stack the cups"}
    with pytest.raises(ValueError, match="unknown graph 'demo'"):
        bringup.graph("demo")
    with pytest.raises(ValueError, match="arm_driver must be one of"):
        bringup.graph("evaluate", arm_driver="can")
    with pytest.raises(ValueError, match="expected true or false, got 'maybe'"):
        bringup.graph_from_launch_arguments("evaluate", {"use_sim": "maybe"})
    with pytest.raises(ValueError, match="unknown launch arguments"):
        bringup.graph_from_launch_arguments("evaluate", {"sim": "true"})


@pytest.mark.parametrize("path", sorted(LAUNCH.glob("*.launch.py")), ids=lambda p: p.name)
def test_launch_file_ast_names_its_graph(path):
    tree = ast.parse(path.read_text())
    funcs = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in funcs
    graph = [n.value.value for n in tree.body if isinstance(n, ast.Assign)
             and any(isinstance(t, ast.Name) and t.id == "GRAPH" for t in n.targets)]
    assert graph == [path.name[: -len(".launch.py")]]
    imports = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imports == {"vla_robot.nodes.launching"}, "launch files describe; the graph comes from vla_robot.bringup"


# --- stand-ins for the launch API (only what the launch files touch) ------------------------------
class _Recorder:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class _LaunchConfiguration:
    def __init__(self, name):
        self.name = name

    def perform(self, context):
        return context.launch_configurations[self.name]


@pytest.fixture
def launch_stubs(monkeypatch):
    mods = {
        "launch": types.ModuleType("launch"),
        "launch.actions": types.ModuleType("launch.actions"),
        "launch.substitutions": types.ModuleType("launch.substitutions"),
        "launch_ros": types.ModuleType("launch_ros"),
        "launch_ros.actions": types.ModuleType("launch_ros.actions"),
    }
    mods["launch"].LaunchDescription = type("LaunchDescription", (_Recorder,), {})
    mods["launch.actions"].DeclareLaunchArgument = type("DeclareLaunchArgument", (_Recorder,), {})
    mods["launch.actions"].OpaqueFunction = type("OpaqueFunction", (_Recorder,), {})
    mods["launch.substitutions"].LaunchConfiguration = _LaunchConfiguration
    mods["launch_ros.actions"].Node = type("Node", (_Recorder,), {})
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.delitem(sys.modules, "vla_robot.nodes.launching", raising=False)
    yield mods
    sys.modules.pop("vla_robot.nodes.launching", None)


def _load_launch_file(path):
    spec = importlib.util.spec_from_file_location(path.name.replace(".", "_"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", sorted(LAUNCH.glob("*.launch.py")), ids=lambda p: p.name)
@pytest.mark.parametrize("args", [{}, {"use_sim": "true", "task": "reach"}, {"arm_driver": "ros2_control", "robot": "panda"}])
def test_launch_file_nodes_equal_bringup(path, args, launch_stubs):
    module = _load_launch_file(path)
    ld = module.generate_launch_description()
    entities = ld.args[0]
    declared = {e.args[0]: e.kwargs["default_value"] for e in entities if type(e).__name__ == "DeclareLaunchArgument"}
    assert declared == {k: v for k, (v, _) in bringup.LAUNCH_ARGUMENTS.items()}
    (opaque,) = [e for e in entities if type(e).__name__ == "OpaqueFunction"]
    context = types.SimpleNamespace(launch_configurations={**declared, **args})
    nodes = opaque.kwargs["function"](context)
    expected = bringup.graph_from_launch_arguments(module.GRAPH, args)
    assert len(nodes) == len(expected)
    for node, spec in zip(nodes, expected):
        kw = node.kwargs
        assert (kw["package"], kw["executable"], kw["name"]) == ("vla_robot", spec.executable, spec.name)
        assert kw["remappings"] == list(spec.remappings)
        files = [p for p in kw["parameters"] if isinstance(p, str)]
        dicts = [p for p in kw["parameters"] if isinstance(p, dict)]
        assert files == list(spec.parameters) and all(Path(f).is_file() for f in files)
        assert (dicts[0] if dicts else {}) == spec.parameter_dict()
        # every executable the launch file starts is a console script with a module behind it
        assert importlib.util.find_spec(spec.module) is not None or spec.executable == "recorder_node"


def test_console_scripts_cover_every_executable():
    text = (ROOT / "setup.py").read_text()
    for exe in bringup.executables():
        assert f'"{exe}"' in text, f"setup.py declares no console script for {exe}"


def test_launch_cli_parses_sets_and_rejects_bad_ones():
    from vla_robot.nodes.cli import parse_sets

    assert parse_sets(["policy_node.control.safety.velocity_scale=0.3", "twin_node.cameras=[front]"]) == {
        "policy_node": {"control.safety.velocity_scale": 0.3},
        "twin_node": {"cameras": ["front"]},
    }
    with pytest.raises(ConfigError, match="NODE.KEY=VALUE"):
        parse_sets(["max_duration_s=3"])
    with pytest.raises(ConfigError, match="key=value"):
        parse_sets(["policy_node.sampling"])


@pytest.mark.parametrize("name", bringup.GRAPHS)
def test_shipped_device_options_fit_their_backends(name):
    """camera devices, arm options and the leader arm in config/*.yaml are valid for their driver's config."""
    from vla_robot.config import from_dict
    from vla_robot.drivers import backend_class

    sections = read_parameter_file(ROOT / "config" / f"{name}.yaml")
    for cam, dev in sections.get("camera_node", {}).get("devices", {}).items():
        cls = backend_class("camera", dev["backend"]).config_class
        from_dict(cls, {k: v for k, v in dev.items() if k != "backend"}, source=f"{name}.yaml devices.{cam}")
    arm = sections.get("arm_node")
    if arm:
        from_dict(backend_class("arm", arm["backend"]).config_class, arm.get("options", {}), source=f"{name}.yaml arm")
    leader = sections.get("teleop_node", {}).get("leader")
    if leader:
        from_dict(backend_class("arm", "lerobot").config_class, leader, source=f"{name}.yaml leader")


def test_task_and_instruction_have_one_meaning_each():
    """A task names the twin's scene, an instruction is the words the policy reads; the README's mix-up
    (task:="touch the red cube" with use_sim:=true) is caught before any node starts, saying which was meant."""
    import argparse

    from vla_robot.config import from_dict
    from vla_robot.data.cli import _common_args
    from vla_robot.nodes.cli import launch_args
    from vla_robot.nodes.config import TwinNodeConfig

    with pytest.raises(ValueError, match=r"task 'touch the red cube' looks like an instruction .*"
                                         r"use instruction:='touch the red cube'.*twin scene: reach, pick_place"):
        bringup.graph_from_launch_arguments("record_demos", {"use_sim": "true", "task": "touch the red cube"})
    with pytest.raises(ValueError, match="task is 'stack'; on the twin a task names its scene, one of reach, pick_place"):
        bringup.graph("rl_finetune", use_sim=True, task="stack")
    with pytest.raises(ConfigError, match="looks like an instruction"):  # a parameter file or --set says the same
        from_dict(TwinNodeConfig, {"task": "touch the red cube"})
    # the README's command as fixed
    specs = bringup.graph_from_launch_arguments("record_demos", {"use_sim": "true", "instruction": "touch the red cube"})
    em = dict(next(s for s in specs if s.name == "episode_manager_node").overrides)
    assert em == {"instruction": "touch the red cube"}
    # every launch argument and CLI flag says which one it takes
    assert "NAME" in bringup.LAUNCH_ARGUMENTS["task"][1] and "WORDS" in bringup.LAUNCH_ARGUMENTS["instruction"][1]
    for add in (launch_args, lambda p: _common_args(p, "runs/x")):
        p = argparse.ArgumentParser()
        add(p)
        helps = {a.dest: a.help for a in p._actions}
        assert "NAME" in helps["task"] and "WORDS" in helps["instruction"], helps
    readme = (ROOT / "README.md").read_text()
    assert 'task:="touch the red cube"' not in readme


def test_record_demos_on_the_twin_gives_teleop_a_device_that_works_there(ros_context):
    """record_demos.yaml's leader arm needs scservo_sdk and a serial port; on the twin sim.yaml swaps it."""
    pytest.importorskip("rclpy")
    from vla_robot.nodes.runner import node_kwargs
    from vla_robot.nodes.teleop_node import TeleopNode

    spec = next(s for s in bringup.graph("record_demos", use_sim=True) if s.name == "teleop_node")
    node = TeleopNode("teleop_node", context=ros_context, use_terminal=False, **node_kwargs(spec))
    try:
        assert node.config.device == "keyboard" and node.leader is None
    finally:
        node.close()
        node.destroy_node()
