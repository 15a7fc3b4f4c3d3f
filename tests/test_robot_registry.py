"""One robot registry: vla_robot.twin.robots.ROBOTS is the list of robots, and every consumer agrees with it."""
import argparse
import dataclasses

import pytest

from vla_robot import bringup
from vla_robot.cli import COMMANDS, build_parser
from vla_robot.config import ConfigError, from_dict
from vla_robot.twin.robots import DEFAULT_ROBOT, ROBOT_NAMES, ROBOTS, check_robot, robot_spec

KNOWN = "known robots: panda, so101"


def _robot_options(parser: argparse.ArgumentParser, where: str):
    """(where, argparse action) of every --robot option in ``parser`` and its subcommands."""
    for action in parser._actions:
        if "--robot" in action.option_strings:
            yield where, action
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _robot_options(sub, f"{where} {name}")


def _cli_robot_options():
    found = []
    for command in COMMANDS:
        try:
            parser = build_parser(command)
        except ModuleNotFoundError:  # a command whose optional dependencies are not installed here
            continue
        found += list(_robot_options(parser, "vla-robot"))
    return found


def test_registry_names_and_default():
    assert ROBOT_NAMES == tuple(ROBOTS) and len(ROBOT_NAMES) >= 2
    assert DEFAULT_ROBOT in ROBOT_NAMES
    for name, spec in ROBOTS.items():
        assert spec.name == name


def test_every_cli_robot_option_offers_the_registry():
    options = _cli_robot_options()
    where = {w for w, _ in options}
    # the twin's actions take --robot; a CLI that lists robots by hand would show up here
    assert {"vla-robot twin bench", "vla-robot twin view", "vla-robot twin excite"} <= where
    for w, action in options:
        assert list(action.choices) == list(ROBOT_NAMES), f"{w} --robot offers {action.choices}, not {ROBOT_NAMES}"
        default = action.default if isinstance(action.default, list) else [action.default]
        assert set(default) <= set(ROBOT_NAMES), f"{w} --robot defaults to {action.default}"


def test_launch_argument_help_graph_and_node_configs_agree_with_the_registry():
    default, text = bringup.LAUNCH_ARGUMENTS["robot"]
    assert default == DEFAULT_ROBOT and all(n in text for n in ROBOT_NAMES)
    for name in ROBOT_NAMES:  # every registered robot makes a graph
        assert bringup.graph("twin", use_sim=True, robot=name)
    from vla_robot.nodes import config as node_config

    from vla_robot.config import ConfigError, from_dict

    for name in ROBOT_NAMES:  # the node configs take every registered robot, and refuse others by the registry
        assert from_dict(node_config.ArmNodeConfig, {"robot": name}).robot == name
    with pytest.raises((ConfigError, ValueError), match="unknown robot 'ur5'; known robots: panda, so101"):
        from_dict(node_config.ArmNodeConfig, {"robot": "ur5"})


def test_per_robot_tables_of_tasks_scene_and_models_cover_the_registry():
    pytest.importorskip("mujoco")
    from vla_robot.twin.models import ADAPTERS
    from vla_robot.twin.scene import SCENE_LAYOUT
    from vla_robot.twin.tasks import GEOMETRY

    for table, what in ((SCENE_LAYOUT, "scene.SCENE_LAYOUT"), (GEOMETRY, "tasks.GEOMETRY"), (ADAPTERS, "models.ADAPTERS")):
        assert set(table) == set(ROBOT_NAMES), f"twin/{what} has {sorted(table)}; the registry has {ROBOT_NAMES}"


def test_an_unknown_robot_is_refused_everywhere_with_the_known_ones_listed(capsys):
    with pytest.raises(ValueError, match=f"unknown robot 'ur5'; {KNOWN}"):
        robot_spec("ur5")
    with pytest.raises(ValueError, match=f"unknown robot 'ur5'; {KNOWN}"):
        check_robot("ur5")
    with pytest.raises(ValueError, match=f"unknown robot 'ur5'; {KNOWN}"):
        bringup.graph("evaluate", robot="ur5")
    from vla_robot.twin.config import TwinConfig

    with pytest.raises(ConfigError, match=f"unknown robot 'ur5'; {KNOWN}"):
        from_dict(TwinConfig, {"robot": "ur5"}, source="test")
    from vla_robot.drivers.lerobot_arm import LeRobotArmConfig
    from vla_robot.drivers.ros2_control import Ros2ControlArmConfig

    for cls in (LeRobotArmConfig, Ros2ControlArmConfig):
        with pytest.raises(ConfigError, match=f"unknown robot 'ur5'; {KNOWN}"):
            from_dict(cls, {"robot": "ur5"}, source="test")
    from vla_robot.cli import main

    with pytest.raises(SystemExit) as e:
        main(["twin", "view", "--robot", "ur5"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'ur5'" in err and all(f"'{n}'" in err for n in ROBOT_NAMES)


def test_a_registered_robot_without_task_geometry_names_what_is_missing(monkeypatch):
    """Adding a robot to the registry but not to the tasks' table stops with the table's name."""
    pytest.importorskip("mujoco")
    from vla_robot.twin.env import make_env

    monkeypatch.setitem(ROBOTS, "so101_copy", dataclasses.replace(ROBOTS["so101"], name="so101_copy"))
    with pytest.raises(ValueError, match=r"robot 'so101_copy' is registered but has no entry in twin/tasks.py "
                                         r"GEOMETRY .*\(which has so101, panda\): add one"):
        make_env(robot="so101_copy", image_size=(16, 16), cameras=("front",))


def test_robot_model_facts_are_checked_against_the_joints():
    spec = ROBOTS["panda"]
    bad_model = dataclasses.replace(spec.model, joints={"finger": "right_driver_joint"})
    with pytest.raises(ValueError, match="model.joints names 'finger', not one of its joints"):
        dataclasses.replace(spec, model=bad_model)
