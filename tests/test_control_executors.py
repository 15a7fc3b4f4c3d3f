"""Chunk executors: what each executes when, latency compensation, and continuity at chunk seams."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vla_robot.control import (
    AsyncExecutor,
    ControlConfig,
    ExecutorConfig,
    OpenLoopExecutor,
    TemporalEnsembleExecutor,
    make_executor,
)

HZ = 30.0
DT = 1.0 / HZ


def executor(**kw):
    return make_executor(ControlConfig(control_hz=HZ, executor=ExecutorConfig(**kw)))


def ramp_chunk(start, h, d=2, step=0.01):
    return start + step * np.arange(h)[:, None] * np.ones((1, d))


def test_make_executor_picks_by_kind_and_rejects_bad_config():
    assert isinstance(executor(kind="open_loop"), OpenLoopExecutor)
    assert isinstance(executor(kind="temporal_ensemble"), TemporalEnsembleExecutor)
    assert isinstance(executor(kind="async"), AsyncExecutor)
    with pytest.raises(TypeError, match="ControlConfig"):
        make_executor(ExecutorConfig())
    with pytest.raises(ValueError, match="blend_steps must be >= 0"):
        executor(blend_steps=-1)


def test_chunks_are_checked():
    ex = executor(kind="async")
    with pytest.raises(ValueError, match=r"shape \[H, D\]"):
        ex.add_chunk(np.zeros(5), 0.0, 0.0)
    with pytest.raises(ValueError, match=r"shape \[H, D\]"):
        ex.add_chunk(np.zeros((0, 3)), 0.0, 0.0)
    ex.add_chunk(np.zeros((4, 3)), 0.0, 0.0)
    with pytest.raises(ValueError, match="has 2 action dims, expected 3"):
        ex.add_chunk(np.zeros((4, 2)), 0.1, 0.1)
    with pytest.raises(ValueError, match="obs_time must be a finite time"):
        ex.add_chunk(np.zeros((4, 3)), float("nan"), 0.1)


def test_open_loop_executes_first_k_from_arrival_then_asks_and_holds():
    ex = executor(kind="open_loop", open_loop_steps=3)
    assert ex.needs_chunk(0.0) and ex.action(0.0) is None
    chunk = ramp_chunk(0.0, 8)
    t_arrive = 0.2  # the observation was taken at 0.0; open loop ignores its age
    ex.add_chunk(chunk, 0.0, t_arrive)
    got = [ex.action(t_arrive + k * DT) for k in range(3)]
    for k in range(3):
        np.testing.assert_allclose(got[k], chunk[k])
        assert not ex.needs_chunk(t_arrive + k * DT) or k == 3
    assert ex.needs_chunk(t_arrive + 3 * DT)
    assert ex.action(t_arrive + 3 * DT) is None  # waits for the server
    np.testing.assert_allclose(ex.action(t_arrive + DT), chunk[1])  # a pure function of time


def test_temporal_ensemble_is_acts_weighted_average():
    m = 0.3
    ex = executor(kind="temporal_ensemble", ensemble_decay=m)
    rng = np.random.default_rng(0)
    chunks = [rng.normal(size=(6, 2)) for _ in range(4)]
    for j, c in enumerate(chunks):  # one chunk per tick, observation at tick j
        assert ex.needs_chunk(j * DT)
        ex.add_chunk(c, j * DT, j * DT)
        assert not ex.needs_chunk(j * DT)
    now = 3 * DT
    # ACT: the chunks covering tick 3, oldest first, weights exp(-m*i)
    rows = [chunks[j][3 - j] for j in range(4)]
    w = np.exp(-m * np.arange(4))
    expected = (np.asarray(rows) * w[:, None]).sum(0) / w.sum()
    step = ex.step(now)
    np.testing.assert_allclose(step.action, expected)
    assert step.blended and step.chunk_seq == 4 and step.index == 0
    # past every horizon: nothing to execute
    assert ex.action(20 * DT) is None


def test_async_drops_actions_whose_time_has_passed():
    ex = executor(kind="async", blend_steps=0)
    chunk = ramp_chunk(0.0, 10)
    ex.add_chunk(chunk, obs_time=1.0, now=1.0 + 3 * DT)  # 3 ticks of latency
    np.testing.assert_allclose(ex.action(1.0 + 3 * DT), chunk[3])
    assert ex.stats.dropped_actions == 3
    # a chunk that arrives after its whole horizon is discarded: the executor keeps its plan
    ex.add_chunk(ramp_chunk(5.0, 10), obs_time=1.1, now=1.1 + 11 * DT)
    assert ex.stats.stale_chunks == 1
    np.testing.assert_allclose(ex.action(1.0 + 5 * DT), chunk[5])
    # an older observation than the running chunk's is stale too
    ex.add_chunk(ramp_chunk(5.0, 10), obs_time=0.9, now=1.0 + 6 * DT)
    assert ex.stats.stale_chunks == 2
    # and once the plan runs out, the executor holds (None) rather than inventing motion
    assert ex.action(1.0 + 10 * DT) is None


def test_async_requests_early_with_a_latency_adaptive_threshold():
    ex = executor(kind="async", request_threshold=2, adaptive_threshold=True, latency_margin=1.4)
    ex.add_chunk(ramp_chunk(0.0, 16), obs_time=0.0, now=0.0)
    assert not ex.needs_chunk(0.0) and ex.threshold() == 2
    assert ex.needs_chunk(13 * DT)  # 2 actions left
    ex.add_chunk(ramp_chunk(0.0, 16), obs_time=1.0, now=1.0 + 5 * DT)  # 5 ticks of latency seen
    assert ex.threshold() == 8  # ceil(1.4 * 5) + 1
    assert ex.needs_chunk(1.0 + 7 * DT) and not ex.needs_chunk(1.0 + 6 * DT)
    # a request just sent: the plan counts as covered to the end of its chunk, and requests are spread
    assert not ex.needs_chunk(1.0 + 7 * DT, pending=[1.0 + 7 * DT])
    with pytest.raises(ValueError, match="latency_margin must be a number >= 1"):
        executor(latency_margin=0.5)


def _run_async(chunks, blend, h):
    """chunks: list of (obs_tick, arrive_tick, offset). Returns per-tick outputs and the arrival ticks."""
    ex = executor(kind="async", blend_steps=blend)
    base = lambda t: np.array([np.sin(1.3 * t), 0.5 * np.cos(0.7 * t)])  # noqa: E731 smooth reference
    outs, arrivals = {}, set()
    by_tick = {}
    for obs, arrive, off in chunks:
        by_tick.setdefault(arrive, []).append((obs, off))
    last_tick = max(a for _, a, _ in chunks) + h
    for k in range(last_tick):
        now = k * DT
        for obs, off in by_tick.get(k, []):
            chunk = np.stack([base((obs + i) * DT) for i in range(h)]) + off
            ex.add_chunk(chunk, obs * DT, now)
            arrivals.add(k)
        a = ex.action(now)
        if a is not None:
            outs[k] = a
    return outs, arrivals, base


@st.composite
def schedules(draw):
    """Chunks of horizon h, each off the reference by at most g, arriving in order with 0..h/2 ticks
    of latency, any number of ticks apart as long as the running chunk has not run out."""
    h = draw(st.integers(6, 16))
    g = draw(st.floats(0.0, 0.3))
    chunks, obs, arrive = [], 0, 0
    for _ in range(draw(st.integers(2, 7))):
        chunks.append((obs, arrive, draw(st.floats(-g, g))))
        # the next observation is taken after this arrival; it must arrive by the end of this chunk
        nxt_obs = arrive + draw(st.integers(0, h // 2))
        lat = draw(st.integers(0, h // 2))
        if nxt_obs + lat > obs + h or nxt_obs + lat <= arrive:
            break
        obs, arrive = nxt_obs, nxt_obs + lat
    return h, g, chunks


@settings(max_examples=80, deadline=None)
@given(schedule=schedules(), blend=st.integers(0, 6))
def test_async_blending_bounds_the_jump_at_chunk_seams(schedule, blend):
    h, g, chunks = schedule
    outs, arrivals, base = _run_async(chunks, blend, h)
    assert set(range(max(outs) + 1)) == set(outs)  # it never starved
    step = max(np.abs(base((k + 1) * DT) - base(k * DT)).max() for k in range(max(outs) + 1))
    # Switching outright may jump by the whole seam (up to 2g + step). Blending moves 1/(blend+1) of
    # a seam per tick; with back-to-back arrivals two seams can be fading at once.
    bound = step + 2 * (2 * g + step) / (blend + 1) + 1e-9
    for k in range(1, max(outs) + 1):
        jump = np.abs(outs[k] - outs[k - 1]).max()
        assert jump <= bound, (k, k in arrivals, jump, bound)


def test_async_blend_is_a_linear_crossfade():
    ex = executor(kind="async", blend_steps=3, adaptive_threshold=False)
    old = np.zeros((20, 1))
    new = np.ones((20, 1))
    ex.add_chunk(old, 0.0, 0.0)
    ex.add_chunk(new, 5 * DT, 5 * DT)
    got = [float(ex.action(k * DT)[0]) for k in range(5, 10)]
    assert got == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])
    assert ex.step(6 * DT).blended and not ex.step(9 * DT).blended


def test_async_blends_from_the_held_pose_after_running_out():
    ex = executor(kind="async", blend_steps=2)
    ex.add_chunk(np.full((3, 1), 0.5), 0.0, 0.0)
    last = [ex.action(k * DT) for k in range(3)][-1]
    assert ex.action(3 * DT) is None  # ran out: the caller holds
    ex.add_chunk(np.full((10, 1), 2.0), 4 * DT, 4 * DT)
    first = float(ex.action(4 * DT)[0])
    assert first == pytest.approx(float(last[0]) + (2.0 - float(last[0])) / 3)
    assert math.isclose(float(ex.action(6 * DT)[0]), 2.0)
