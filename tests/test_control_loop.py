"""Fixed-rate loop (no drift, overruns counted), chunk -> JointTrajectory dict, watchdog unit rules."""
import time

import numpy as np
import pytest

from vla_robot.control import RateLoop, Watchdog, WatchdogConfig, chunk_to_trajectory
from vla_robot.control.sim import SimClock


class OversleepingClock(SimClock):
    """Every sleep overshoots by a random 0-3 ms, as a loaded OS does."""

    def __init__(self, seed=0):
        super().__init__(100.0)
        self.rng = np.random.default_rng(seed)

    def sleep(self, dt):
        self.advance(max(0.0, dt) + self.rng.uniform(0, 0.003))


def test_rate_loop_does_not_drift_over_an_hour():
    clock = OversleepingClock()
    loop = RateLoop(30.0, clock=clock, sleep=clock.sleep)
    t0 = loop.start()
    n = 30 * 3600
    for _ in range(n):
        clock.advance(0.004)  # the tick's own work
        now = loop.sleep()
    # the n-th tick began within one sleep overshoot of its place on the schedule
    assert 0.0 <= now - (t0 + n / 30.0) <= 0.003 + 1e-9
    s = loop.stats.as_dict()
    assert s["ticks"] == n + 1 and s["overruns"] == 0 and s["missed"] == 0
    assert 0.0 < s["jitter_mean_ms"] <= 3.0 and s["jitter_max_ms"] <= 3.0 + 1e-6


def test_rate_loop_counts_overruns_and_skips_missed_deadlines():
    clock = SimClock()
    loop = RateLoop(10.0, clock=clock, sleep=clock.sleep)
    loop.start()
    ticks = []
    for k in range(20):
        clock.advance(0.35 if k == 5 else 0.01)  # one tick's work takes 3.5 periods
        ticks.append(loop.sleep())
    s = loop.stats.as_dict()
    assert s["overruns"] == 1 and s["missed"] == 2  # the 0.6 and 0.7 deadlines; 0.8 fires late
    # after the overrun, ticks are back on the original 0.1 s grid (no burst, no shift)
    grid = np.round(np.array(ticks[7:]) / 0.1, 6)
    assert np.allclose(grid, np.round(grid)) and np.all(np.diff(ticks[7:]) == pytest.approx(0.1))


def test_rate_loop_on_the_real_clock_ticks_in_order():
    loop = RateLoop(200.0)
    times = []
    for now in loop:
        times.append(now)
        if len(times) == 10:
            break
    assert all(b > a for a, b in zip(times, times[1:]))
    assert loop.stats.ticks == 10 and times[-1] - times[0] >= 9 / 200.0 - 1e-3
    assert time.monotonic() >= times[-1]


def test_rate_loop_rejects_bad_rates():
    for hz in (0, -5, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="hz must be"):
            RateLoop(hz)


def test_chunk_to_trajectory_fills_velocities_and_ends_at_rest():
    dt = 0.05
    t = np.arange(6)[:, None] * dt
    chunk = np.hstack([np.sin(t), 2 * t])  # joint 1 moves at 2 rad/s
    traj = chunk_to_trajectory(chunk, dt, ["a", "b"], start_q=[np.sin(-dt), -2 * dt])
    pts = traj["points"]
    assert traj["joint_names"] == ["a", "b"] and len(pts) == 6
    assert [p["time_from_start"] for p in pts] == pytest.approx([(i + 1) * dt for i in range(6)])
    np.testing.assert_allclose([p["positions"] for p in pts], chunk)
    for p in pts[:-1]:
        assert p["velocities"][1] == pytest.approx(2.0)  # central differences
    assert pts[-1]["velocities"] == [0.0, 0.0]
    # without start_q the first velocity is one-sided; a one-action chunk is at rest
    assert chunk_to_trajectory(chunk, dt, ["a", "b"])["points"][0]["velocities"][1] == pytest.approx(2.0)
    single = chunk_to_trajectory(chunk[:1], dt, ["a", "b"], time_offset=0.2)
    assert single["points"][0]["velocities"] == [0.0, 0.0] and single["points"][0]["time_from_start"] == pytest.approx(0.25)


def test_chunk_to_trajectory_names_bad_input():
    ok = np.zeros((3, 2))
    with pytest.raises(ValueError, match="joint_names has 3"):
        chunk_to_trajectory(ok, 0.1, ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"shape \[H, D\]"):
        chunk_to_trajectory(np.zeros(3), 0.1, ["a"])
    with pytest.raises(ValueError, match="NaN"):
        chunk_to_trajectory(np.full((3, 2), np.nan), 0.1, ["a", "b"])
    with pytest.raises(ValueError, match="dt must be"):
        chunk_to_trajectory(ok, 0.0, ["a", "b"])
    with pytest.raises(ValueError, match="start_q must have 2 entries"):
        chunk_to_trajectory(ok, 0.1, ["a", "b"], start_q=[0.0])


def test_watchdog_rules():
    wd = Watchdog(WatchdogConfig(max_observation_age_s=0.2, max_chunk_gap_s=0.5))
    assert wd.check(0.0) == (False, "watchdog not started (call start(now) when the policy takes over)")
    wd.start(1.0)
    assert wd.check(1.1)[0]  # grace period for the first observation
    assert "no observation" in wd.check(1.25)[1]
    wd.observe(1.2)
    wd.chunk_received(1.2)
    assert wd.check(1.3) == (True, "")
    wd.observe(1.1)  # an older stamp never makes the data look fresher or staler
    assert wd.check(1.35)[0]
    assert "observation is 0.250 s old" in wd.check(1.45)[1]
    wd.observe(2.0)
    assert wd.check(2.0)[0]  # no request outstanding: a long chunk never trips the timer
    wd.requested(2.0)
    wd.requested(2.3)  # the timer runs from the first unanswered request
    wd.observe(2.55)
    ok, why = wd.check(2.55)
    assert not ok and "no new chunk for 0.550 s since the request" in why and wd.last_kind == "no_chunk"
    wd.estop("bumper")
    wd.chunk_received(2.6)
    wd.observe(2.6)
    assert wd.check(2.6) == (False, "e-stop latched: bumper") and wd.estopped
    wd.estop("second reason")
    assert wd.estop_reason == "bumper"
    wd.reset_estop()
    assert wd.check(2.6) == (True, "")
    assert wd.holds["estop"] == 1 and wd.holds["no_chunk"] == 1
    with pytest.raises(ValueError, match="stamp must be a finite time"):
        wd.observe(float("nan"))
    with pytest.raises(ValueError, match="now must be a finite time"):
        wd.check("soon")


def test_control_imports_only_numpy():
    import subprocess
    import sys

    code = ("import sys, vla_robot.control, vla_robot.control.sim; "
            "print(sorted(m for m in ('torch', 'rclpy', 'zmq', 'mujoco', 'cv2', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
