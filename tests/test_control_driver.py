"""ChunkController end to end on simulated time: no starvation below the horizon, holding above it,
watchdog holds within two ticks of a stall, a latched e-stop, errors that hold instead of crash."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vla_robot.control import ChunkController, ControlConfig, ExecutorConfig, JointLimits, SafetyConfig, WatchdogConfig
from vla_robot.control.sim import Latency, PathPolicy, SimArm, SimClock, SimServer

HZ = 30.0
DT = 1.0 / HZ


def arm_limits():
    return JointLimits(
        names=["j0", "j1", "gripper"],
        lower=[-2.0, -2.0, 0.0],
        upper=[2.0, 2.0, 1.0],
        max_velocity=[3.0, 3.0, 5.0],
        max_acceleration=[40.0, 40.0, 80.0],
    )


def path(n=400):
    t = np.linspace(0, 1, n)[:, None]
    return np.hstack([0.8 * np.sin(2 * np.pi * t), 0.6 * t, 0.5 + 0.3 * np.sin(4 * np.pi * t)])


class Rig:
    """Controller + simulated server + arm + camera on one simulated clock."""

    def __init__(self, kind="async", horizon=12, latency=Latency(0.05), watchdog=None, noise=0.0, **exec_kw):
        self.clock = SimClock()
        self.policy = PathPolicy(path(), horizon, noise=noise)
        self.server = SimServer(self.clock, lambda obs: self.policy.chunk(obs["state"]), latency)
        cfg = ControlConfig(
            control_hz=HZ,
            executor=ExecutorConfig(kind=kind, **exec_kw),
            safety=SafetyConfig(ramp_velocity_scale=1.0),
            watchdog=watchdog or WatchdogConfig(max_observation_age_s=0.5, max_chunk_gap_s=10.0),
        )
        self.ctl = ChunkController(cfg, arm_limits(), self.server, clock=self.clock)
        self.arm = SimArm(path()[0], tau=0.03)
        self.ctl.reset(self.arm.q, 0.0)
        self.camera_frozen_at = None
        self.k = 0
        self.results = []

    def obs_stamp(self, now):
        return now if self.camera_frozen_at is None else self.camera_frozen_at

    def tick(self, teleop=None):
        now = self.k * DT
        self.clock.t = now
        r = self.ctl.tick(now, self.obs_stamp(now), lambda: {"state": self.arm.q.copy(), "t": self.obs_stamp(now)},
                          teleop=teleop)
        self.arm.step(r.command, DT)
        self.results.append(r)
        self.k += 1
        return r

    def run(self, n):
        return [self.tick() for _ in range(n)]


def arrivals(results):
    return [i for i, r in enumerate(results) if r.received is not None]


@settings(max_examples=25, deadline=None)
@given(horizon=st.integers(8, 24), frac=st.floats(0.0, 1.0), blend=st.integers(0, 4))
def test_async_never_starves_while_latency_is_below_the_horizon(horizon, frac, blend):
    latency = frac * (horizon - 4) * DT  # anywhere up to four ticks short of the horizon
    rig = Rig("async", horizon=horizon, latency=Latency(latency), blend_steps=blend, max_in_flight=horizon)
    res = rig.run(6 * horizon + 20)
    got = arrivals(res)
    assert len(got) >= 3
    after = res[got[0]:]
    assert all(r.source == "policy" for r in after), [(r.now, r.reason) for r in after if r.source != "policy"][:3]
    assert rig.ctl.stats.starved == 0 and rig.ctl.executor.stats.stale_chunks == 0
    # every reply is handed out once, with the stamp of its observation and that very observation
    # (the on-policy record stores what the server saw, not a later one)
    handed = [(a.reply["request_id"], a.obs_time) for r in res for a in r.arrivals]
    assert len(handed) == len({rid for rid, _ in handed}) == rig.ctl.stats.replies
    assert all(r.received is r.arrivals[-1].reply for r in res if r.arrivals)
    assert all(a.observation["t"] == a.obs_time for r in res for a in r.arrivals)


def test_one_request_in_flight_starves_only_above_half_the_horizon():
    ok = Rig("async", horizon=12, latency=Latency(6 * DT), max_in_flight=1)
    ok.run(150)
    short = Rig("async", horizon=12, latency=Latency(8 * DT), max_in_flight=1)
    short.run(150)
    assert ok.ctl.stats.starved == 0 and short.ctl.stats.starved > 10
    many = Rig("async", horizon=12, latency=Latency(8 * DT), max_in_flight=4)
    res = many.run(150)
    after_start_up = res[arrivals(res)[1]:]
    assert all(r.source == "policy" for r in after_start_up)


def test_async_with_latency_under_half_the_horizon_never_starves_from_the_first_chunk():
    rig = Rig("async", horizon=16, latency=Latency(7 * DT))
    res = rig.run(200)
    first = arrivals(res)[0]
    assert all(r.source == "policy" for r in res[first:]) and rig.ctl.stats.starved == 0
    assert all(r.source == "hold" and "waiting for the first chunk" in r.reason for r in res[:first])


def test_async_above_the_horizon_holds_instead_of_jumping():
    rig = Rig("async", horizon=8, latency=Latency(10 * DT))
    start = rig.arm.q.copy()
    res = rig.run(120)
    assert rig.ctl.executor.stats.stale_chunks >= 5 and rig.ctl.executor.stats.chunks == 0
    assert all(r.source == "hold" for r in res)
    assert np.abs(np.stack([r.command for r in res]) - start).max() < 1e-12


def test_async_with_latency_straddling_the_horizon_holds_then_resumes_smoothly():
    rig = Rig("async", horizon=10, latency=Latency(6 * DT, jitter=0.6), blend_steps=4)
    res = rig.run(400)
    lim = arm_limits()
    cmd = np.stack([r.command for r in res])
    assert np.all(np.abs(np.diff(cmd, axis=0)) <= lim.max_velocity * DT + 1e-9)
    assert rig.ctl.executor.stats.stale_chunks > 0 and rig.ctl.stats.starved > 0
    starved = [r for r in res if r.source == "hold"]
    assert all(r.reason for r in starved)  # every hold says why
    assert sum(r.source == "policy" for r in res) > 200  # and it keeps making progress


def test_open_loop_starves_while_waiting_and_async_does_not():
    ol = Rig("open_loop", horizon=12, latency=Latency(4 * DT))
    asy = Rig("async", horizon=12, latency=Latency(4 * DT))
    ol.run(240)
    asy.run(240)
    # open loop waits ~4 ticks for each of its ~14 chunks
    assert ol.ctl.stats.starved >= 30
    assert asy.ctl.stats.starved == 0
    assert asy.policy.progress > ol.policy.progress  # the same time gets further along the path


@settings(max_examples=25, deadline=None)
@given(stall_tick=st.integers(20, 80), max_age=st.floats(0.05, 0.6))
def test_watchdog_holds_within_two_ticks_of_a_camera_freeze(stall_tick, max_age):
    rig = Rig("async", horizon=16, latency=Latency(2 * DT), watchdog=WatchdogConfig(max_observation_age_s=max_age))
    rig.run(stall_tick)
    rig.camera_frozen_at = (stall_tick - 1) * DT  # the last frame
    res = rig.run(int(max_age / DT) + 10)
    deadline = rig.camera_frozen_at + max_age + 2 * DT
    late = [r for r in res if r.now >= deadline - 1e-9]
    assert late and all(r.source == "hold" and "observation is" in r.reason for r in late)
    first_hold = next(r.now for r in res if r.source == "hold")
    assert first_hold <= deadline + 1e-9
    rig.camera_frozen_at = None  # frames again: the policy resumes, ramping from where the arm stands
    res = rig.run(40)
    assert res[-1].source == "policy"


@settings(max_examples=20, deadline=None)
@given(stall_tick=st.integers(20, 80), gap=st.floats(0.1, 0.6), horizon=st.integers(10, 40))
def test_watchdog_holds_within_two_ticks_of_a_server_stall(stall_tick, gap, horizon):
    rig = Rig("async", horizon=horizon, latency=Latency(2 * DT), watchdog=WatchdogConfig(max_chunk_gap_s=gap))
    res = rig.run(stall_tick)
    rig.server.stalled = True
    res += rig.run(int(gap / DT) + horizon + 12)
    assert sum(r.source == "policy" for r in res[:stall_tick]) >= stall_tick - 8  # no false alarms before
    last_chunk = max(r.now for r in res if r.received is not None)
    waiting_since = min(r.now for r in res if r.requested and r.now >= last_chunk)
    deadline = waiting_since + gap + 2 * DT
    late = [r for r in res if r.now >= deadline - 1e-9]
    assert late and all(r.source == "hold" for r in late)
    assert any("no new chunk" in r.reason for r in late) and rig.ctl.stats.holds["no_chunk"] > 0
    # and not before the timer ran out, unless the chunk itself had run out
    early = [r for r in res if waiting_since <= r.now < waiting_since + gap - 1e-9]
    assert all(r.source == "policy" or "ran out" in r.reason for r in early)
    rig.server.stalled = False
    res = rig.run(60)
    assert res[-1].source == "policy"


events = st.lists(st.sampled_from(["tick", "tick", "tick", "teleop", "estop", "stall", "unstall", "freeze_cam", "cam"]), max_size=80)


@settings(max_examples=40, deadline=None)
@given(evts=events)
def test_estop_stays_latched_until_an_explicit_reset(evts):
    rig = Rig("async", horizon=12, latency=Latency(2 * DT))
    rig.run(15)
    latched, frozen = False, None
    for e in evts:
        if e == "estop":
            rig.ctl.estop("operator pressed stop")
            latched = True
        elif e == "stall":
            rig.server.stalled = True
        elif e == "unstall":
            rig.server.stalled = False
        elif e == "freeze_cam":
            rig.camera_frozen_at = rig.k * DT
        elif e == "cam":
            rig.camera_frozen_at = None
        else:
            r = rig.tick(teleop=[1.0, -1.0, 0.9] if e == "teleop" else None)
            if latched:
                assert r.source == "estop" and "operator pressed stop" in r.reason
                if frozen is None:
                    frozen = r.command
                np.testing.assert_array_equal(r.command, frozen)  # not a hair of motion
                assert not r.requested
    assert rig.ctl.watchdog.estopped == latched
    if latched:
        rig.ctl.reset_estop(rig.k * DT)
        rig.server.stalled = False
        rig.camera_frozen_at = None
        res = rig.run(30)
        assert res[-1].source == "policy" and not rig.ctl.watchdog.estopped


def test_teleop_goes_through_the_safety_filter_and_the_policy_resumes_after():
    rig = Rig("async", horizon=12, latency=Latency(2 * DT))
    rig.run(20)
    before = rig.results[-1].command
    r = rig.tick(teleop=[5.0, -5.0, 3.0])  # far outside the limits
    assert r.source == "teleop" and "position" in r.clamps and "velocity" in r.clamps
    assert np.all(np.abs(r.command - before) <= arm_limits().max_velocity * DT + 1e-9)
    r = rig.tick(teleop=[np.nan, 0.0, 0.5])
    assert "nonfinite" in r.clamps and np.all(np.isfinite(r.command))
    res = rig.run(30)
    assert res[0].source != "teleop" and res[-1].source == "policy"


class FlakyClient:
    """A non-blocking client whose replies go wrong in the ways a network and a server can."""

    def __init__(self, replies):
        self.replies = list(replies)
        self.ids = 0

    def infer(self, observations, **options):
        raise AssertionError("the controller must ask a policy with submit/poll without blocking")

    def submit(self, observation, **options):
        self.ids += 1
        return self.ids

    def poll(self, request_id):
        item = self.replies.pop(0) if self.replies else None
        if isinstance(item, Exception):
            raise item
        return item


def test_client_errors_and_bad_replies_hold_and_are_reported():
    good = {"actions": np.tile(np.array([0.1, 0.2, 0.5], np.float32), (10, 1))}
    client = FlakyClient([ConnectionError("server gone"), {"oops": 1}, {"actions": np.zeros((10, 2))}, good])
    cfg = ControlConfig(control_hz=HZ, watchdog=WatchdogConfig(max_chunk_gap_s=10.0))
    ctl = ChunkController(cfg, arm_limits(), client)
    ctl.reset([0.0, 0.0, 0.5], 0.0)
    res = [ctl.tick(k * DT, k * DT, lambda: {}) for k in range(12)]
    assert ctl.stats.errors == 3 and "bad chunk" in ctl.stats.last_error
    assert any(r.source == "policy" for r in res)
    assert all(r.source == "hold" for r in res[:3])
    report = ctl.report()
    assert report["controller"]["errors"] == 3 and report["safety"]["ticks"] == 12


def test_requests_time_out_and_are_asked_again():
    clock = SimClock()
    server = SimServer(clock, lambda obs: np.zeros((10, 3)), Latency(0.05))
    server.stalled = True
    cfg = ControlConfig(control_hz=HZ, request_timeout_s=0.2, executor=ExecutorConfig(max_in_flight=1))
    ctl = ChunkController(cfg, arm_limits(), server, clock=clock)
    ctl.reset([0.0, 0.0, 0.5], 0.0)
    for k in range(30):
        clock.t = k * DT
        ctl.tick(clock.t, clock.t, lambda: {})
    assert ctl.stats.timeouts >= 3 and ctl.stats.requests >= 4


def test_blocking_client_drives_open_loop_and_time_passes_while_it_thinks():
    clock = SimClock()
    policy = PathPolicy(path(), 8)
    server = SimServer(clock, lambda obs: policy.chunk(obs["state"]), Latency(0.1))

    class Blocking:  # only infer(): the controller must use it synchronously
        def infer(self, observations, **options):
            return server.infer(observations, **options)

    cfg = ControlConfig(control_hz=HZ, executor=ExecutorConfig(kind="open_loop"))
    ctl = ChunkController(cfg, arm_limits(), Blocking(), clock=clock)
    assert ctl.blocking
    arm = SimArm(path()[0])
    ctl.reset(arm.q, 0.0)
    r = ctl.tick(0.0, 0.0, lambda: {"state": arm.q})
    assert r.requested and r.received is not None and r.now == pytest.approx(0.1)
    assert r.source == "policy" and r.index == 0
    with pytest.raises(TypeError, match="not a Policy: it needs infer"):
        ChunkController(cfg, arm_limits(), object())


def test_trajectory_of_a_chunk_is_filtered_and_ends_at_rest():
    rig = Rig("async", horizon=12, latency=Latency(2 * DT))
    rig.run(10)
    chunk = np.vstack([np.full((3, 3), 5.0), np.full((3, 3), -5.0)])  # wild, outside the limits
    traj = rig.ctl.trajectory(chunk)
    pos = np.array([p["positions"] for p in traj["points"]])
    lim = arm_limits()
    assert traj["joint_names"] == list(lim.names) and len(traj["points"]) == 6
    assert np.all(pos >= lim.lower) and np.all(pos <= lim.upper)
    assert traj["points"][-1]["velocities"] == [0.0, 0.0, 0.0]
    assert rig.ctl.safety.stats.ticks == 10  # previewing changed nothing
    # with the observation's stamp, the actions already past are left out: the next point is the
    # action for the next tick
    ramp = np.linspace(rig.ctl.safety.last, rig.ctl.safety.last + 0.05, 12)
    late = rig.ctl.trajectory(ramp, obs_time=rig.k * DT - 4 * DT, now=rig.k * DT)
    assert len(late["points"]) == 7
    np.testing.assert_allclose(late["points"][0]["positions"], ramp[5], atol=1e-9)
    with pytest.raises(ValueError, match="in the past"):
        rig.ctl.trajectory(ramp, obs_time=0.0, now=100.0)


def test_bad_setup_is_rejected_with_a_clear_message():
    with pytest.raises(ValueError, match="safe_action must have 3 entries"):
        ChunkController(
            ControlConfig(watchdog=WatchdogConfig(hold="safe_action", safe_action=[0.0, 0.0])), arm_limits(), FlakyClient([])
        )
    with pytest.raises(ValueError, match="outside the joint limits"):
        ChunkController(
            ControlConfig(watchdog=WatchdogConfig(hold="safe_action", safe_action=[9.0, 0.0, 0.5])), arm_limits(), FlakyClient([])
        )
    ctl = ChunkController(ControlConfig(), arm_limits(), FlakyClient([]))
    with pytest.raises(RuntimeError, match="reset"):
        ctl.tick(0.0, 0.0, lambda: {})


def test_watchdog_hold_goes_to_the_configured_safe_action():
    safe = [0.0, 0.0, 0.2]
    rig = Rig("async", horizon=40, latency=Latency(2 * DT),
              watchdog=WatchdogConfig(max_chunk_gap_s=0.2, hold="safe_action", safe_action=safe))
    rig.run(20)
    rig.server.stalled = True
    res = rig.run(150)
    assert res[-1].source == "hold"
    np.testing.assert_allclose(res[-1].command, safe, atol=1e-6)


def test_abandoned_requests_are_cancelled_in_the_client():
    class Recording(FlakyClient):
        def __init__(self):
            super().__init__([])
            self.cancelled = []

        def cancel(self, request_id):
            self.cancelled.append(request_id)

    client = Recording()  # never answers
    cfg = ControlConfig(control_hz=HZ, request_timeout_s=0.1, executor=ExecutorConfig(max_in_flight=1))
    ctl = ChunkController(cfg, arm_limits(), client)
    ctl.reset([0.0, 0.0, 0.5], 0.0)
    for k in range(5):
        ctl.tick(k * DT, k * DT, lambda: {})
    assert client.cancelled == [1]  # timed out after 0.1 s, asked again
    ctl.tick(5 * DT, 5 * DT, lambda: {}, teleop=[0.0, 0.0, 0.5])  # the operator takes over
    assert client.cancelled == [1, 2]
