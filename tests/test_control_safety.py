"""Safety filter and joint limits: no output ever leaves the limits, whatever goes in."""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vla_robot.config import ConfigError, from_dict
from vla_robot.control import CLAMP_KINDS, ControlConfig, JointLimits, SafetyConfig, SafetyFilter
from vla_robot.control.safety import braking_speed

DT = 1.0 / 30


def limits():
    return JointLimits(
        names=["shoulder_pan", "shoulder_lift", "elbow", "gripper"],
        lower=[-1.5, -1.0, -2.0, 0.0],
        upper=[1.5, 1.2, 0.5, 1.0],
        max_velocity=[1.5, 1.0, 2.0, 3.0],
        max_acceleration=[8.0, 5.0, 10.0, 30.0],
        gripper_index=-1,
    )


def planar_fk(q):
    """Two-link planar arm (0.3 m links) on joints 1 and 2, base yaw on joint 0: an xyz point."""
    r = 0.3 * math.cos(q[1]) + 0.3 * math.cos(q[1] + q[2])
    z = 0.1 + 0.3 * math.sin(q[1]) + 0.3 * math.sin(q[1] + q[2])
    return np.array([r * math.cos(q[0]), r * math.sin(q[0]), z])


# Commands: finite values far beyond the limits, NaN and inf, mixed per joint.
joint_value = st.one_of(
    st.floats(-10, 10, allow_nan=False),
    st.just(float("nan")),
    st.just(float("inf")),
    st.just(float("-inf")),
    st.floats(-1e6, 1e6, allow_nan=False),
)
command = st.lists(joint_value, min_size=4, max_size=4)
# ...held for a while, so the filter gets to full speed and must brake before the limits
held_commands = st.lists(st.tuples(command, st.integers(1, 40)), min_size=1, max_size=8).map(
    lambda runs: [c for c, n in runs for _ in range(n)]
)


def start_pose():
    lim = limits()
    return st.tuples(*[st.floats(float(lo), float(hi)) for lo, hi in zip(lim.lower, lim.upper)])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(start=start_pose(), commands=held_commands, ramp=st.sampled_from([0.25, 1.0]))
def test_no_output_ever_violates_position_velocity_or_acceleration_limits(start, commands, ramp):
    lim = limits()
    f = SafetyFilter(lim, SafetyConfig(velocity_scale=0.8, acceleration_scale=0.9, ramp_velocity_scale=ramp))
    f.reset(start)
    q_prev, v_prev = np.array(start), np.zeros(4)
    vmax, amax = lim.max_velocity * 0.8, lim.max_acceleration * 0.9
    for c in commands:
        q = f.filter(c, DT)
        assert np.all(np.isfinite(q))
        assert np.all(q >= lim.lower - 1e-9) and np.all(q <= lim.upper + 1e-9), (q, c)
        v = (q - q_prev) / DT
        assert np.all(np.abs(v) <= vmax + 1e-6), (v, vmax)
        assert np.all(np.abs(v - v_prev) / DT <= amax + 1e-6), ((v - v_prev) / DT, amax)
        q_prev, v_prev = q, v
    counts = f.stats.as_dict()
    assert counts["ticks"] == len(commands)
    bad = sum(1 for c in commands if not all(math.isfinite(x) for x in c))
    assert counts["nonfinite"] == bad


@settings(max_examples=40, deadline=None)
@given(commands=st.lists(command, min_size=1, max_size=40))
def test_workspace_box_holds_for_any_commands(commands):
    lim = limits()
    cfg = SafetyConfig(workspace_min=[-0.6, -0.6, 0.05], workspace_max=[0.6, 0.6, 0.45])
    f = SafetyFilter(lim, cfg, fk=planar_fk)
    start = np.array([0.0, 0.3, -0.6, 0.5])
    assert np.all((planar_fk(start) >= cfg.workspace_min) & (planar_fk(start) <= cfg.workspace_max))
    f.reset(start)
    q_prev = start
    for c in commands:
        q = f.filter(c, DT)
        x = planar_fk(q)
        assert np.all(x >= np.array(cfg.workspace_min) - 1e-9) and np.all(x <= np.array(cfg.workspace_max) + 1e-9)
        assert np.all(q >= lim.lower - 1e-9) and np.all(q <= lim.upper + 1e-9)
        assert np.all(np.abs(q - q_prev) <= lim.max_velocity * DT + 1e-9)  # the wall may brake, never speed up
        q_prev = q


def test_workspace_clamp_is_counted_and_stops_at_the_wall():
    lim = limits()
    cfg = SafetyConfig(workspace_min=[-0.6, -0.6, 0.05], workspace_max=[0.6, 0.6, 0.3])
    f = SafetyFilter(lim, cfg, fk=planar_fk)
    f.reset([0.0, 0.3, -0.6, 0.5])
    for _ in range(120):  # lift the arm straight up, into the ceiling of the box
        q = f.filter([0.0, 1.2, 0.0, 0.5], DT)
    assert f.stats.counts["workspace"] > 0 and "workspace" in CLAMP_KINDS
    assert planar_fk(q)[2] <= 0.3 + 1e-9
    assert planar_fk(q)[2] > 0.28  # it got close to the wall rather than stopping far away


def test_first_command_ramps_from_the_measured_pose():
    lim = limits()
    cfg = SafetyConfig(ramp_velocity_scale=0.25, ramp_max_s=100.0)  # ends only by reaching the target
    f = SafetyFilter(lim, cfg)
    start = np.array([0.0, 0.0, 0.0, 0.5])
    f.reset(start)
    far = np.array([1.4, 1.1, -1.9, 0.9])
    q = f.filter(far, DT)
    assert np.all(np.abs(q - start) <= lim.max_velocity * 0.25 * DT + 1e-12)  # a small first step
    assert np.all(np.abs(q - start) <= lim.max_acceleration * DT * DT + 1e-12)  # from rest
    steps = [q]
    while f.ramping and len(steps) < 1000:
        steps.append(f.filter(far, DT))
    assert not f.ramping and np.allclose(steps[-1], far, atol=cfg.ramp_tolerance)
    assert f.stats.counts["ramp"] + f.stats.counts["acceleration"] > 0
    # after the ramp the full speed is available
    q0 = f.filter(far - 1.0 * np.array([1, 0, 0, 0]), DT)
    for _ in range(30):
        q1 = f.filter(np.array([-1.4, 1.1, -1.9, 0.9]), DT)
    assert abs(q1[0] - q0[0]) / (30 * DT) > 0.25 * lim.max_velocity[0]


def test_the_ramp_ends_after_ramp_max_s_even_when_the_target_keeps_moving():
    # a policy's (or the twin expert's) target leads the arm on every tick: the command never
    # "reaches" it, and without the time bound the arm would crawl at the ramp speed all episode
    lim = limits()
    cfg = SafetyConfig(ramp_velocity_scale=0.25, ramp_max_s=0.5)
    f = SafetyFilter(lim, cfg)
    f.reset(np.zeros(4))
    q, ticks = np.zeros(4), 0
    while f.ramping:
        target = q + lim.max_velocity * DT * np.array([1.0, 0, 0, 0])  # always a full-speed step ahead
        q = f.filter(target, DT)
        ticks += 1
        assert ticks * DT <= 0.5 + 1e-9, "still ramping after ramp_max_s"
    assert ticks == round(0.5 / DT)
    f.reset(np.zeros(4))  # (away from the position limits)
    for _ in range(round(0.5 / DT)):
        f.filter(np.array([0.5, 0, 0, 0]), DT)
    assert not f.ramping
    speeds = []
    for _ in range(15):  # then the arm may move at the full velocity towards a target far enough ahead
        q_before = f.last
        speeds.append((f.filter(np.array([-1.5, 0, 0, 0]), DT) - q_before)[0] / DT)
    assert max(abs(v) for v in speeds) > 0.9 * lim.max_velocity[0]
    with pytest.raises(ValueError, match="ramp_max_s"):
        SafetyConfig(ramp_max_s=0.0).validate()


def test_nan_command_holds_and_is_counted():
    f = SafetyFilter(limits())
    f.reset([0.1, 0.2, -0.3, 0.4])
    q = f.filter([np.nan, 0.0, 0.0, 0.0], DT)
    assert np.allclose(q, [0.1, 0.2, -0.3, 0.4])
    assert f.last_clamps == ("nonfinite",) and f.stats.counts["nonfinite"] == 1


def test_gripper_range_is_its_own_clamp():
    lim = limits()
    f = SafetyFilter(lim, SafetyConfig(gripper_min=0.2, gripper_max=0.8))
    f.reset([0.0, 0.0, 0.0, 0.5])
    for _ in range(60):
        q = f.filter([0.0, 0.0, 0.0, 5.0], DT)
        assert "position" not in f.last_clamps and "gripper" in f.last_clamps
    assert q[3] == pytest.approx(0.8)
    for _ in range(60):
        q = f.filter([0.0, 0.0, 0.0, -5.0], DT)
    assert q[3] == pytest.approx(0.2)


def test_freeze_stops_dead_and_preview_leaves_state_alone():
    f = SafetyFilter(limits())
    f.reset([0.0, 0.0, 0.0, 0.5])
    for _ in range(20):
        f.filter([1.0, 1.0, -1.0, 0.5], DT)
    before_q, before_v, before_n = f.last, f.velocity, f.stats.ticks
    chunk = np.linspace(before_q, [1.4, 1.1, -1.9, 0.9], 8)
    safe = f.preview(chunk, DT)
    assert safe.shape == chunk.shape
    assert np.allclose(f.last, before_q) and np.allclose(f.velocity, before_v) and f.stats.ticks == before_n
    q = f.freeze()
    assert np.allclose(q, before_q) and np.allclose(f.velocity, 0) and f.stats.counts["freeze"] == 1


def test_braking_speed_stops_within_the_distance():
    a, dt = np.array([7.0]), 0.02
    for d in [0.0, 1e-5, 0.0014, 0.01, 0.2, 3.0]:
        v = float(braking_speed(np.array([d]), a, dt)[0])
        travel, s = 0.0, v
        while s > 1e-15:
            travel += s * dt
            s -= a[0] * dt
        assert travel <= d + 1e-12
        faster, s = 0.0, v * 1.01 + 1e-9
        while s > 1e-15:
            faster += s * dt
            s -= a[0] * dt
        assert faster > d  # it is the largest such speed


def test_bad_inputs_are_named():
    f = SafetyFilter(limits())
    with pytest.raises(RuntimeError, match="reset"):
        f.filter([0, 0, 0, 0], DT)
    with pytest.raises(ValueError, match="measured_q must have 4 entries"):
        f.reset([0, 0])
    with pytest.raises(ValueError, match="measured_q must be finite"):
        f.reset([0, np.nan, 0, 0])
    f.reset([0, 0, 0, 0.5])
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        f.filter([0, 0, 0], DT)
    with pytest.raises(ValueError, match="dt must be"):
        f.filter([0, 0, 0, 0], 0.0)
    with pytest.raises(ValueError, match="fk\\(q\\) must return an xyz"):
        g = SafetyFilter(limits(), SafetyConfig(workspace_min=[0, 0, 0], workspace_max=[1, 1, 1]), fk=lambda q: q)
        g.reset([0, 0, 0, 0.5])
        g.filter([0, 0, 0, 0.5], DT)


def test_joint_limits_validation():
    lim = limits()
    assert lim.n == 4 and lim.gripper_index == 3 and lim.contains(lim.home)
    with pytest.raises(ValueError, match="'b': lower"):
        JointLimits(["a", "b"], [0, 1], [1, 1], 1.0, 1.0)
    with pytest.raises(ValueError, match="max_velocity must be > 0"):
        JointLimits(["a"], [0], [1], [0.0], [1.0])
    with pytest.raises(ValueError, match="upper must have 2 entries"):
        JointLimits(["a", "b"], [0, 0], [1], 1.0, 1.0)
    with pytest.raises(ValueError, match="unique"):
        JointLimits(["a", "a"], [0, 0], [1, 1], 1.0, 1.0)
    with pytest.raises(ValueError, match="gripper_index 5"):
        JointLimits(["a"], [0], [1], 1.0, 1.0, gripper_index=5)
    with pytest.raises(ValueError, match="home"):
        JointLimits(["a"], [0], [1], 1.0, 1.0, home=[2.0])
    with pytest.raises(ValueError, match="finite"):
        JointLimits(["a"], [0], [np.inf], 1.0, 1.0)
    with pytest.raises(ValueError, match="no room left"):
        SafetyFilter(lim, SafetyConfig(position_margin=0.6))


def test_config_loads_from_ros_parameters_and_names_bad_keys():
    cfg = from_dict(
        ControlConfig,
        {"control_hz": 20, "executor": {"kind": "open_loop", "open_loop_steps": 8},
         "safety": {"velocity_scale": 0.5, "workspace_min": [0, -0.3, 0], "workspace_max": [0.4, 0.3, 0.4]}},
        source="policy.yaml",
    )
    assert cfg.dt == pytest.approx(0.05) and cfg.executor.kind == "open_loop" and cfg.safety.velocity_scale == 0.5
    with pytest.raises(ConfigError, match="executor.kind"):
        from_dict(ControlConfig, {"executor": {"kind": "fastest"}})
    with pytest.raises(ConfigError, match="velocity_scale .* <= 1"):
        from_dict(ControlConfig, {"safety": {"velocity_scale": 2.0}})
    with pytest.raises(ConfigError, match="workspace_min and workspace_max"):
        from_dict(ControlConfig, {"safety": {"workspace_min": [0, 0, 0]}})
    with pytest.raises(ConfigError, match="safe_action is not set"):
        from_dict(ControlConfig, {"watchdog": {"hold": "safe_action"}})
    with pytest.raises(ConfigError, match="unknown key 'watchdog.timeout'"):
        from_dict(ControlConfig, {"watchdog": {"timeout": 1.0}})
    with pytest.raises(ConfigError, match="control_hz must be"):
        from_dict(ControlConfig, {"control_hz": 0})


def test_a_workspace_box_without_kinematics_is_an_error_that_says_so():
    cfg = SafetyConfig(workspace_min=[0, 0, 0], workspace_max=[1, 1, 1])
    with pytest.raises(ValueError, match="no forward kinematics"):
        SafetyFilter(limits(), cfg)
