"""The node graphs, as data: one source for the launch files and the in-process runner.

``graph(name, use_sim=..., robot=..., ...)`` returns the list of :class:`NodeSpec` of a graph.
``launch/<name>.launch.py`` turns them into ``launch_ros`` nodes; ``vla-robot launch NAME`` builds
the very same nodes in one process (vla_robot/nodes/runner.py). Nothing here imports ROS.

With ``use_sim`` the twin (``twin_node`` in sim mode) replaces the camera and arm nodes and
provides the success check; ``config/sim.yaml`` is layered over the graph's parameter file. All
other nodes are identical to the real robot graph.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vla_robot.twin.robots import DEFAULT_ROBOT, ROBOT_NAMES, check_robot

__all__ = ["NodeSpec", "GRAPHS", "ARM_DRIVERS", "graph", "parameter_files", "LAUNCH_ARGUMENTS"]

GRAPHS = ("rl_finetune", "record_demos", "evaluate", "twin")
ARM_DRIVERS = ("lerobot", "ros2_control")
# Topic a ros2_control joint trajectory controller listens on; arm/command is remapped to it.
JTC_TOPIC = "/joint_trajectory_controller/joint_trajectory"

#: launch arguments every launch file declares: name -> (default, description)
LAUNCH_ARGUMENTS: dict[str, tuple[str, str]] = {
    "use_sim": ("false", "true: the MuJoCo twin is the arm, the cameras and the success check"),
    "robot": (DEFAULT_ROBOT, f"robot model: {' or '.join(ROBOT_NAMES)}"),
    "arm_driver": ("lerobot", "lerobot (arm_node bridges a lerobot robot) or ros2_control (commands go to its JTC)"),
    "policy_server": ("tcp://127.0.0.1:5555", "ZMQ address of the policy server"),
    "task": ("", "a task NAME, not the words the policy reads (sim: the twin's scene, reach or pick_place; "
                 "robot: a short name of what the arm does, for the dataset and rl groups)"),
    "instruction": ("", "the WORDS the policy reads, e.g. 'touch the red cube' (robot: empty = the task's text; "
                        "sim: empty = the twin scene's own); rl and evaluate need one of task or instruction"),
    "config": ("", "parameter file to use instead of config/<graph>.yaml"),
}


@dataclass(frozen=True)
class NodeSpec:
    """One node of a graph, in launch_ros terms."""

    executable: str  # console script; the module is vla_robot.nodes.<executable>
    name: str
    parameters: tuple[str, ...] = ()  # parameter files (absolute paths), applied in order
    overrides: tuple[tuple[str, Any], ...] = ()  # parameters applied after the files
    remappings: tuple[tuple[str, str], ...] = ()
    namespace: str = ""
    package: str = "vla_robot"

    @property
    def module(self) -> str:
        return f"vla_robot.nodes.{self.executable}"

    def parameter_dict(self) -> dict[str, Any]:
        return dict(self.overrides)


def _config_dir() -> Path:
    from vla_robot.config import config_dir

    return config_dir()


def parameter_files(name: str, use_sim: bool = False, config: str | None = None) -> tuple[str, ...]:
    """The parameter files of graph ``name``: its own (or ``config``), then sim.yaml under --sim."""
    base = Path(config) if config else _config_dir() / f"{name}.yaml"
    files = [str(base)]
    if use_sim:
        files.append(str(_config_dir() / "sim.yaml"))
    return tuple(files)


def graph(
    name: str,
    use_sim: bool = False,
    robot: str = DEFAULT_ROBOT,
    arm_driver: str = "lerobot",
    policy_server: str = "",
    task: str = "",
    config: str | None = None,
    instruction: str = "",
) -> list[NodeSpec]:
    """The nodes of graph ``name`` (one of :data:`GRAPHS`)."""
    if name not in GRAPHS:
        raise ValueError(f"unknown graph '{name}'; graphs: {', '.join(GRAPHS)}")
    if arm_driver not in ARM_DRIVERS:
        raise ValueError(f"arm_driver must be one of {', '.join(ARM_DRIVERS)}, got '{arm_driver}'")
    check_robot(robot)
    if use_sim and task:
        from vla_robot.twin.config import check_twin_task

        check_twin_task(task)  # before any node starts: the twin would stop on it
    params = parameter_files(name, use_sim, config)
    robot_o = (("robot", robot),)

    def node(executable, remappings=(), overrides=(), node_name=None):
        return NodeSpec(
            executable=executable,
            name=node_name or executable,
            parameters=params,
            overrides=tuple(overrides),
            remappings=tuple(remappings),
        )

    # Where arm commands go: arm/command (arm_node or the twin), or a ros2_control JTC. policy_node sends a
    # ros2_control arm whole trajectories on arm/joint_trajectory (its arm/command, one target per tick in
    # the policy's names, stays for the recorder); teleop_node's single targets go to the JTC as they are.
    ros2_control = not use_sim and arm_driver == "ros2_control"
    to_arm = (("arm/command", JTC_TOPIC),) if ros2_control else ()
    policy_to_arm = (("arm/joint_trajectory", JTC_TOPIC),) if ros2_control else ()
    hardware: list[NodeSpec] = []
    if use_sim:
        twin_o = robot_o + ((("task", task),) if task else ()) + (("mode", "sim"),)
        hardware.append(node("twin_node", overrides=twin_o))
    else:
        hardware.append(node("camera_node"))
        if arm_driver == "lerobot":
            hardware.append(node("arm_node", overrides=robot_o))
    em_o = ((("task", task),) if task else ()) + ((("instruction", instruction),) if instruction else ())
    policy_o = robot_o + ((("policy_server", policy_server),) if policy_server else ())

    if name == "rl_finetune" or name == "evaluate":
        return hardware + [
            node("policy_node", remappings=policy_to_arm, overrides=policy_o),
            node("teleop_node", overrides=robot_o),
            node("episode_manager_node", overrides=em_o),
            node("recorder_node"),
        ]
    if name == "record_demos":
        teleop_to_arm = (("teleop/command", to_arm[0][1] if to_arm else "arm/command"),)
        return hardware + [
            node("teleop_node", remappings=teleop_to_arm, overrides=robot_o),
            node("episode_manager_node", overrides=em_o),
            node("recorder_node"),
        ]
    # twin: mirror a real arm, or drive the simulated one from the keyboard
    if use_sim:
        return hardware + [node("teleop_node", remappings=(("teleop/command", "arm/command"),), overrides=robot_o)]
    return [s for s in hardware if s.executable != "camera_node"] + [
        node("twin_node", overrides=robot_o + (("mode", "mirror"),))
    ]


def executables() -> list[str]:
    """Every node executable any graph uses."""
    out: list[str] = []
    for g in GRAPHS:
        for sim in (False, True):
            for drv in ARM_DRIVERS:
                for s in graph(g, use_sim=sim, arm_driver=drv):
                    if s.executable not in out:
                        out.append(s.executable)
    return out


def parse_bool(text: str) -> bool:
    """A launch argument's truth value ('true', 'false', '1', '0', ...)."""
    t = str(text).strip().lower()
    if t in ("true", "1", "yes", "on"):
        return True
    if t in ("false", "0", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got '{text}'")


def graph_from_launch_arguments(name: str, args: dict[str, str]) -> list[NodeSpec]:
    """graph() from launch argument strings (as a launch file receives them)."""
    unknown = set(args) - set(LAUNCH_ARGUMENTS)
    if unknown:
        raise ValueError(f"unknown launch arguments {sorted(unknown)}; known: {', '.join(LAUNCH_ARGUMENTS)}")
    a = {k: v for k, (v, _) in LAUNCH_ARGUMENTS.items()}
    a.update(args)
    return graph(
        name,
        use_sim=parse_bool(a["use_sim"]),
        robot=a["robot"],
        arm_driver=a["arm_driver"],
        policy_server=a["policy_server"],
        task=a["task"],
        config=a["config"] or None,
        instruction=a["instruction"],
    )

