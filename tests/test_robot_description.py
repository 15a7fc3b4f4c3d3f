"""The robot description (vla_robot.robot.description): policy joints mapped to the hardware's names,
limits from a URDF, a ros2_control joint_limits block or YAML, and an error that names the key for
every bad description."""
import copy
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from vla_robot.config import config_dir
from vla_robot.robot import (
    DescriptionError,
    RobotDescription,
    load_description,
    reorder_joints,
    resolve_description,
)
from vla_robot.twin.robots import ROBOTS, robot_spec

ROBOTS_DIR = config_dir() / "robots"

# a two-joint arm with a Franka-hand-like prismatic finger; only the <limit> elements matter here
URDF = """<?xml version="1.0"?>
<robot name="arm2">
  <link name="base"/><link name="l1"/><link name="l2"/><link name="finger"/>
  <joint name="hw_shoulder" type="revolute">
    <parent link="base"/><child link="l1"/>
    <limit lower="-1.5" upper="1.5" velocity="2.0" effort="50"/>
  </joint>
  <joint name="hw_elbow" type="revolute">
    <parent link="l1"/><child link="l2"/>
    <limit lower="-2.0" upper="0.5" velocity="3.0" effort="20"/>
  </joint>
  <joint name="hw_finger" type="prismatic">
    <parent link="l2"/><child link="finger"/>
    <limit lower="0.0" upper="0.04" velocity="0.2" effort="100"/>
  </joint>
  <joint name="hw_fixed" type="fixed"><parent link="l2"/><child link="finger"/></joint>
</robot>
"""


def _arm2(urdf=URDF) -> dict:
    return {
        "name": "arm2",
        "urdf": urdf,
        "joints": [{"name": "shoulder", "hardware_name": "hw_shoulder", "acceleration": 5.0},
                   {"name": "elbow", "hardware_name": "hw_elbow", "acceleration": 6.0}],
        "gripper": {"interface": "position_controller", "hardware_name": "hw_finger", "topic": "/finger/commands",
                    "open": 0.04, "closed": 0.0, "acceleration": 1.0, "policy_open": 0.0, "policy_closed": 0.8},
        "home": [0.0, -1.0, 0.0],
    }


# --- the shipped examples ------------------------------------------------------------------------
def test_the_three_shipped_examples_load():
    fr3 = load_description(ROBOTS_DIR / "fr3.yaml")
    assert fr3.names() == list(ROBOTS["panda"].joint_names)  # the policy's (the Panda twin's) names
    assert fr3.hardware_names() == [f"fr3_joint{i}" for i in range(1, 8)] + ["fr3_finger_joint1"]
    assert fr3.arm_hardware_names() == [f"fr3_joint{i}" for i in range(1, 8)]
    assert fr3.gripper.interface == "position_controller" and fr3.twin == "panda"
    lim = fr3.limits()
    assert lim.n == 8 and lim.gripper_index == 7
    # Franka's rectangular FR3 limits (frankaemika/docs control-parameters-joint-fr3-rectangular.csv)
    assert lim.upper[3] == pytest.approx(-0.4461) and lim.max_velocity[1] == pytest.approx(1.0)
    assert np.all(lim.max_acceleration[:7] == 10.0)
    # the hand's 0..0.04 m finger is the Panda twin's gripper range 0 (open) .. 0.8 (closed)
    assert (lim.lower[7], lim.upper[7]) == pytest.approx((0.0, 0.8))
    assert fr3.gripper.from_hardware(0.04) == pytest.approx(0.0) and fr3.gripper.to_hardware(0.8) == pytest.approx(0.0)

    ur5e = load_description(ROBOTS_DIR / "ur5e.yaml")
    assert ur5e.twin is None and ur5e.n_joints == 7 and ur5e.hardware_names()[0] == "shoulder_pan_joint"
    assert ur5e.gripper.interface == "trajectory_controller"
    assert ur5e.limits().max_velocity[:6] == pytest.approx([math.pi] * 6, abs=1e-6)  # 180 deg/s (UR5e manual)

    so101 = load_description(ROBOTS_DIR / "so101.yaml")
    assert so101.gripper.interface == "with_arm"


@pytest.mark.parametrize("robot", sorted(ROBOTS))
def test_the_twin_is_one_source_and_gives_the_limits_nodes_used_before(robot):
    spec = robot_spec(robot)
    d = RobotDescription.from_twin(spec)
    assert d.names() == d.hardware_names() == list(spec.joint_names)
    got, want = d.limits(), spec.joint_limits()
    assert got.names == want.names and got.gripper_index == want.gripper_index
    for key in ("lower", "upper", "max_velocity", "max_acceleration", "home"):
        np.testing.assert_array_equal(getattr(got, key), getattr(want, key))
    resolved = resolve_description(robot)  # no robot_description configured: the twin's
    assert (resolved.joints, resolved.gripper, resolved.twin) == (d.joints, d.gripper, robot)


def test_the_so101_example_says_what_the_twin_says():
    example, twin = load_description(ROBOTS_DIR / "so101.yaml").limits(), robot_spec("so101").joint_limits()
    for key in ("lower", "upper", "max_velocity", "max_acceleration", "home"):
        np.testing.assert_allclose(getattr(example, key), getattr(twin, key), err_msg=key)


# --- limits from a URDF, a joint_limits block, YAML ----------------------------------------------------
def test_limits_come_from_the_urdf_and_yaml_overrides_per_key(tmp_path):
    d = load_description(_arm2())
    assert [(j.lower, j.upper, j.velocity, j.acceleration) for j in d.joints] == [(-1.5, 1.5, 2.0, 5.0),
                                                                                   (-2.0, 0.5, 3.0, 6.0)]
    assert (d.gripper.lower, d.gripper.upper, d.gripper.velocity) == (0.0, 0.04, 0.2)
    (tmp_path / "arm2.urdf").write_text(URDF)
    spec = _arm2(urdf="arm2.urdf")  # a file, relative to the description
    spec["joints"][1]["upper"] = 0.25  # YAML wins over the URDF for that key only
    (tmp_path / "arm2.yaml").write_text(yaml.safe_dump(spec))
    j = load_description(tmp_path / "arm2.yaml").joints[1]
    assert (j.lower, j.upper, j.velocity) == (-2.0, 0.25, 3.0)


def test_a_ros2_control_joint_limits_block_gives_acceleration(tmp_path):
    # the form of ros2_control's joint_limits.yaml (UR's, with its !degrees tag). As ros2_control's
    # get_joint_limits (joint_limits/include/joint_limits/joint_limits_rosparam.hpp) reads it, a value
    # counts only where its has_*_limits flag is true, position limits only with both ends.
    (tmp_path / "joint_limits.yaml").write_text(
        "joint_limits:\n"
        "  hw_shoulder: {has_acceleration_limits: true, max_acceleration: !degrees 180.0,\n"
        "                has_velocity_limits: true, max_velocity: 1.0,\n"
        "                has_position_limits: true, max_position: 1.0}\n"
        "  hw_elbow: {has_acceleration_limits: true, max_acceleration: 4.0,\n"
        "             has_velocity_limits: false, max_velocity: 0.0, max_position: 0.1}\n"
        "  hw_finger: {has_acceleration_limits: true, max_acceleration: 0.5,\n"
        "              has_position_limits: true, min_position: 0.0, max_position: 0.03}\n")
    spec = _arm2()
    spec["joint_limits"] = str(tmp_path / "joint_limits.yaml")
    for j in spec["joints"]:
        del j["acceleration"]
    del spec["gripper"]["acceleration"]
    spec["home"] = [0.0, -1.0, 0.4]  # the finger opens 0.03 m at most now: policy 0.2 .. 0.8
    d = load_description(spec)
    assert d.joints[0].acceleration == pytest.approx(math.pi) and d.joints[0].velocity == 1.0
    assert d.joints[0].upper == 1.5  # a max_position without min_position: the URDF's range stands
    assert d.joints[1].acceleration == 4.0 and d.joints[1].velocity == 3.0  # has_velocity_limits: false -> URDF's
    assert d.joints[1].upper == 0.5  # no has_position_limits: not a limit
    assert (d.gripper.acceleration, d.gripper.upper) == (0.5, 0.03)


# --- joint states in hardware names ---------------------------------------------------------------------
def test_fr3_joint_states_in_any_order_become_the_policy_vector():
    fr3 = load_description(ROBOTS_DIR / "fr3.yaml")
    q_policy = np.array([0.1, -0.7, 0.2, -2.0, 0.3, 1.6, 0.7, 0.4])  # gripper half closed, policy units
    hw = fr3.to_hardware(q_policy)
    assert hw[7] == pytest.approx(0.02)  # 0.04 m open .. 0 closed
    names = fr3.hardware_names() + ["fr3_finger_joint2"]  # the mimic finger comes along and is ignored
    values = np.append(hw, 0.02)
    velocities = np.arange(9, dtype=float)
    order = np.random.default_rng(0).permutation(9)
    q, dq = fr3.from_joint_state([names[i] for i in order], values[order], velocities[order])
    np.testing.assert_allclose(q, q_policy)
    np.testing.assert_allclose(dq[:7], np.arange(7))
    assert dq[7] == pytest.approx(7 * -20.0)  # a finger opening at 1 m/s closes the policy's gripper at 20/s
    q, dq = fr3.from_joint_state(names[:8], values[:8])
    assert dq is None


def test_a_joint_state_missing_a_joint_says_which_and_the_key_to_fix():
    fr3 = load_description(ROBOTS_DIR / "fr3.yaml")
    names = [n for n in fr3.hardware_names() if n != "fr3_joint3"]
    with pytest.raises(ValueError, match=r"lacks joints \['fr3_joint3'\].*joint3 \(hardware_name 'fr3_joint3'\)"):
        fr3.from_joint_state(names, np.zeros(7))
    twin_names = list(ROBOTS["panda"].joint_names)  # the twin's names are not the FR3's
    with pytest.raises(ValueError, match="set hardware_name to the name the controller publishes"):
        fr3.from_joint_state(twin_names, np.zeros(8))


def test_reorder_joints_checks_lengths():
    with pytest.raises(ValueError, match="2 names but 3 positions"):
        reorder_joints(["a", "b"], ["a"], [1.0, 2.0, 3.0])
    pos, vel = reorder_joints(["b", "a"], ["a", "b"], [2.0, 1.0], [20.0, 10.0])
    assert pos.tolist() == [1.0, 2.0] and vel.tolist() == [10.0, 20.0]


# --- bad descriptions: an error that names the key and the fix -----------------------------------------
def _edit(fn):
    spec = _arm2()
    fn(spec)
    return spec


BAD = {
    "no joints": (lambda s: s.update(joints=[]), r"'joints' must list the arm's joints"),
    "missing joint velocity": (lambda s: s.update(urdf=None) or s["joints"][0].update(lower=-1, upper=1),
                               r"'joints\[0\].velocity' \(shoulder\) is not given"),
    "missing acceleration": (lambda s: s["joints"][1].pop("acceleration"),
                             r"'joints\[1\].acceleration' \(elbow\) is not given and the URDF has no acceleration"),
    "zero velocity": (lambda s: s["joints"][1].update(velocity=0.0),
                      r"'joints\[1\].velocity' \(elbow\) is 0.0: a limit must be > 0"),
    "lower >= upper": (lambda s: s["joints"][0].update(lower=1.0, upper=1.0),
                       r"'joints\[0\]' \(shoulder\) has lower 1.0 >= upper 1.0"),
    "two joints, one hardware name": (lambda s: s["joints"][1].update(hardware_name="hw_shoulder"),
                                      r"'joints\[1\].hardware_name' 'hw_shoulder' is also 'joints\[0\].hardware_name'"),
    "gripper shares a hardware name": (lambda s: s["gripper"].update(hardware_name="hw_elbow"),
                                       r"'gripper.hardware_name' 'hw_elbow' is also 'joints\[1\]"),
    "urdf lacks the joint": (lambda s: s["joints"][0].update(hardware_name="hw_wrist"),
                             r"'joints\[0\].hardware_name' 'hw_wrist' is not a joint of the URDF.*hw_elbow"),
    "home outside limits": (lambda s: s.update(home=[0.0, 1.0, 0.0]),
                            r"'home\[1\]' \(elbow\) = 1.0 lies outside its limits \[-2.0, 0.5\]"),
    "home of the wrong length": (lambda s: s.update(home=[0.0, 0.0]), r"'home' must be 3 finite numbers"),
    "unknown key": (lambda s: s.update(joint_names=["a"]), r"unknown key\(s\) \['joint_names'\]"),
    "unknown gripper interface": (lambda s: s["gripper"].update(interface="action"),
                                  r"'gripper.interface' must be one of"),
    "controller gripper without topic": (lambda s: s["gripper"].update(topic=""), r"'gripper.topic' is empty"),
    "gripper open == closed": (lambda s: s["gripper"].update(closed=0.04), r"'gripper.open/closed' are 0.04 and 0.04"),
    "unknown twin": (lambda s: s.update(twin="ur5"), r"'twin': unknown robot 'ur5'"),
    "names not the twin's": (lambda s: s.update(twin="so101"), r"are not twin so101's"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_description_is_an_error_naming_the_key(case):
    edit, match = BAD[case]
    with pytest.raises(DescriptionError, match=match):
        load_description(_edit(edit))


def test_a_urdf_that_does_not_parse_names_the_line():
    broken = URDF.replace('<joint name="hw_elbow" type="revolute">', '<joint name="hw_elbow" type="revolute"')
    with pytest.raises(DescriptionError, match=r"'urdf': the robot_description XML does not parse: not well-formed"
                       r".*line 9, column 4 \(the line: '<parent link=\"l1\"/>"):
        load_description(_arm2(urdf=broken))
    xacro = URDF.replace('velocity="3.0"', 'velocity="${max_vel}"')
    with pytest.raises(DescriptionError, match=r"joint 'hw_elbow' <limit velocity=\"\$\{max_vel\}\"> is not a number"):
        load_description(_arm2(urdf=xacro))


def test_missing_files_are_named_and_a_urdf_is_not_a_description(tmp_path):
    with pytest.raises(DescriptionError, match="does not exist: give the path of a description YAML"):
        load_description(tmp_path / "nope.yaml")
    (tmp_path / "arm2.urdf").write_text(URDF)  # ROS's robot_description is URDF; ours names one in urdf:
    with pytest.raises(DescriptionError, match="is a URDF, not a description: write a description YAML"):
        load_description(tmp_path / "arm2.urdf")
    with pytest.raises(DescriptionError, match="not URDF XML: write a description whose urdf: key holds the URDF"):
        load_description(URDF * 50)
    nameless = _arm2()
    del nameless["name"]
    with pytest.raises(DescriptionError, match="'name' is missing"):
        load_description(nameless)
    with pytest.raises(DescriptionError, match=r"'urdf' file .*nope.urdf does not exist"):
        load_description(_arm2(urdf="nope.urdf"))


def test_a_description_for_another_twin_than_the_nodes_robot_is_refused():
    with pytest.raises(DescriptionError, match="its twin is 'panda' but the node's robot is 'so101': set robot: panda"):
        resolve_description("so101", str(ROBOTS_DIR / "fr3.yaml"))
    assert resolve_description("panda", str(ROBOTS_DIR / "fr3.yaml")).name == "fr3"
    assert resolve_description("panda", "robots/fr3.yaml").name == "fr3"  # inside the config folder


def test_the_description_is_frozen_and_its_home_read_only():
    d = load_description(copy.deepcopy(_arm2()))
    with pytest.raises(ValueError):
        d.home[0] = 1.0
    with pytest.raises(Exception):
        d.name = "other"


def test_convert_reads_fr3_joint_states_through_the_description():
    """nodes/convert.py, the one message <-> array conversion: a joint_state_broadcaster's message in
    the FR3's names (shuffled, the mimic finger included) -> the policy's vector."""
    pytest.importorskip("sensor_msgs")
    from vla_robot.nodes import convert

    fr3 = load_description(ROBOTS_DIR / "fr3.yaml")
    q_policy = np.array([0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785, 0.8])  # gripper closed
    names = fr3.hardware_names() + ["fr3_finger_joint2"]
    values = np.append(fr3.to_hardware(q_policy), 0.0)
    order = [8, 3, 0, 7, 5, 1, 6, 2, 4]
    msg = convert.joint_state_to_msg([names[i] for i in order], values[order], 12.5, velocity=np.zeros(9))
    q, dq, stamp = convert.msg_to_joint_state(msg, description=fr3)
    np.testing.assert_allclose(q, q_policy)
    assert dq.shape == (8,) and stamp == 12.5
    with pytest.raises(ValueError, match=r"lacks joints \['fr3_joint1'"):  # the twin's names, not the FR3's
        convert.msg_to_joint_state(convert.joint_state_to_msg(fr3.names(), q_policy, 1.0), description=fr3)
    # a node without a description reads the twin's names as before
    panda = resolve_description("panda")
    q, _, _ = convert.msg_to_joint_state(convert.joint_state_to_msg(panda.names(), q_policy, 1.0), description=panda)
    np.testing.assert_array_equal(q, q_policy)


def test_node_configs_take_a_robot_description_and_refuse_a_bad_one_by_key(tmp_path):
    from vla_robot.config import ConfigError, from_dict
    from vla_robot.nodes.config import PolicyNodeConfig, TwinNodeConfig

    fr3 = str(ROBOTS_DIR / "fr3.yaml")
    assert from_dict(PolicyNodeConfig, {"robot": "panda", "robot_description": fr3}).robot_description == fr3
    assert from_dict(PolicyNodeConfig, {}).robot_description == ""  # existing configs: the twin's names
    bad = yaml.safe_load((ROBOTS_DIR / "fr3.yaml").read_text())
    bad["joints"][2]["velocity"] = 0
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises((ConfigError, ValueError), match=r"'joints\[2\].velocity' \(joint3\) is 0"):
        from_dict(PolicyNodeConfig, {"robot": "panda", "robot_description": str(tmp_path / "bad.yaml")})
    with pytest.raises((ConfigError, ValueError), match="set robot: panda"):
        from_dict(PolicyNodeConfig, {"robot_description": fr3})  # the default robot is the SO-101
    assert from_dict(TwinNodeConfig, {"mode": "mirror", "robot": "panda", "robot_description": fr3})
    with pytest.raises((ConfigError, ValueError), match="read in mode 'mirror' only"):
        from_dict(TwinNodeConfig, {"mode": "sim", "robot": "panda", "robot_description": fr3})
    with pytest.raises((ConfigError, ValueError), match="names no twin"):
        from_dict(TwinNodeConfig, {"mode": "mirror", "robot": "panda",
                                   "robot_description": str(ROBOTS_DIR / "ur5e.yaml")})


def test_an_arm_without_gripper():
    spec = _arm2()
    spec["gripper"] = {"interface": "none"}
    spec["home"] = [0.0, -1.0]
    d = load_description(spec)
    assert d.n_joints == 2 and d.gripper_index is None and not d.gripper.present
    assert d.hardware_names() == d.arm_hardware_names() == ["hw_shoulder", "hw_elbow"]
    lim = d.limits()
    assert lim.gripper_index is None and lim.names == ("shoulder", "elbow")
    q, _ = d.from_joint_state(["hw_elbow", "hw_finger", "hw_shoulder"], [-0.5, 0.01, 0.25])
    assert q.tolist() == [0.25, -0.5]
    spec.pop("gripper")  # no gripper key: no gripper
    assert load_description(spec).gripper_index is None


def test_a_with_arm_gripper_is_one_more_joint_of_the_arm_command():
    spec = _arm2()
    spec["gripper"] = {"interface": "with_arm", "hardware_name": "hw_finger", "open": 0.04, "closed": 0.0,
                       "acceleration": 1.0}
    spec["home"] = [0.0, -1.0, 0.04]
    d = load_description(spec)
    assert d.arm_hardware_names() == ["hw_shoulder", "hw_elbow", "hw_finger"]  # one command for all three
    assert d.gripper.identity and d.limits().upper[2] == 0.04  # no policy units given: the hardware's


def test_urdf_specifics_continuous_joints_and_a_wrong_root():
    continuous = URDF.replace('name="hw_shoulder" type="revolute"', 'name="hw_shoulder" type="continuous"')
    # a continuous joint has no position limits (ros2_control's getJointLimits,
    # joint_limits/include/joint_limits/joint_limits_urdf.hpp, takes lower/upper of revolute and
    # prismatic joints only): they must come from YAML
    with pytest.raises(DescriptionError, match=r"'joints\[0\].lower' \(shoulder\) is not given"):
        load_description(_arm2(urdf=continuous))
    spec = _arm2(urdf=continuous)
    spec["joints"][0].update(lower=-3.0, upper=3.0)
    assert load_description(spec).joints[0].velocity == 2.0  # the URDF's velocity still counts
    with pytest.raises(DescriptionError, match=r"has root <sdf>, expected <robot>"):
        load_description(_arm2(urdf="<sdf version='1.6'/>"))


def test_gripper_velocity_maps_with_the_unit_scale_and_home_is_checked_in_policy_units():
    d = load_description(_arm2())  # finger 0.04 m open .. 0 closed = policy 0 .. 0.8: 20 policy units per metre
    g = d.policy_joints()[-1]
    assert (g.lower, g.upper, g.velocity, g.acceleration) == pytest.approx((0.0, 0.8, 4.0, 20.0))
    spec = _arm2()
    spec["home"] = [0.0, -1.0, 0.04]  # 0.04 is the open finger in metres, but home is in policy units: fine (inside)
    assert load_description(spec).home[2] == 0.04
    spec["home"] = [0.0, -1.0, 0.9]
    with pytest.raises(DescriptionError, match=r"'home\[2\]' \(gripper\) = 0.9 lies outside its limits \[0.0, 0.8\]"):
        load_description(spec)


def test_the_description_imports_no_ros_torch_or_mujoco():
    """The robot PC's tools and the core read it without ROS (the brief's rule for core packages)."""
    import subprocess
    import sys

    code = ("import sys; from vla_robot.robot import load_description, resolve_description; "
            f"load_description({str(ROBOTS_DIR / 'fr3.yaml')!r}).limits(); resolve_description('so101').limits(); "
            "print(sorted(m for m in ('rclpy', 'torch', 'mujoco', 'sensor_msgs') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
