"""The episode state machine (ROS-free core of episode_manager_node): reset -> run -> label -> save."""
import dataclasses

import pytest

from vla_robot.config import ConfigError, from_dict
from vla_robot.nodes.config import EpisodeManagerNodeConfig
from vla_robot.nodes.episodes import EpisodeManager, EpisodeRequest


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def make(**kw):
    cfg = from_dict(EpisodeManagerNodeConfig, kw)
    events, results, clock = [], [], Clock()
    m = EpisodeManager(cfg, events.append, on_result=results.append, clock=clock)
    return m, events, results, clock


def types(events):
    return [e["type"] for e in events]


def test_sim_episode_runs_to_success_and_is_auto_labelled():
    m, ev, res, clock = make(mode="rl", reset_source="twin", label_source="auto", episodes=2, seed=10)
    ok, _ = m.start()
    assert ok and m.state == "resetting"
    assert ev[-1]["type"] == "reset" and ev[-1]["seed"] == 10
    m.reset_done({"episode": 0, "instruction": "reach the red cube", "start_condition": 7, "stamp": 12.5})
    assert m.state == "running" and ev[-1] == {
        "type": "start", "episode": 0, "mode": "rl", "task": "", "instruction": "reach the red cube",
        "start_condition": 7, "stamp": 12.5,
    }
    for k in range(5):
        m.observe(100.0 + k / 30)
        m.success_check(k == 4)
    assert m.state == "idle"
    assert types(ev) == ["reset", "start", "end", "save"]
    assert ev[-1]["label"] == "success"
    r = res[0]
    assert (r.label, r.end_reason, r.steps, r.start_condition, r.label_source) == ("success", "success_check", 5, 7, "auto")
    assert r.duration_s == pytest.approx(4 / 30)


def test_timeout_on_robot_time_ends_as_failure_and_episode_budget_is_kept():
    m, ev, res, clock = make(mode="rl", reset_source="twin", label_source="auto", episodes=1, max_duration_s=1.0)
    m.start()
    m.reset_done({"episode": 0})
    t = 50.0
    while m.state == "running":
        m.observe(t)
        m.success_check(False)
        t += 0.1
    assert res[0].end_reason == "timeout" and res[0].label == "failure"
    assert res[0].duration_s == pytest.approx(1.0)
    ok, msg = m.start()
    assert not ok and m.state == "done" and ev[-1]["type"] == "done"


def test_human_label_via_service_and_stop():
    m, ev, res, clock = make(mode="evaluate", reset_source="operator")
    m.start()
    assert m.state == "resetting"
    ok, msg = m.start()  # the operator confirms the scene is reset
    assert ok and m.state == "running"
    assert m.label(True)[0] is True  # labelling a running episode ends it first
    assert types(ev) == ["reset", "start", "end", "save"] and ev[-1]["label"] == "success"
    assert res[0].end_reason == "stopped" and res[0].label_source == "human"
    # second episode: stop, then label failure
    m.start()
    m.start()
    assert m.stop()[0]
    assert m.state == "labelling"
    assert not m.start()[0]  # cannot start while waiting for a label
    m.label(False)
    assert res[1].label == "failure"


def test_label_timeout_saves_unlabelled_and_discard_drops():
    m, ev, res, clock = make(mode="evaluate", reset_source="none", label_timeout_s=5.0)
    m.start()
    assert m.state == "running"  # no reset needed
    m.stop()
    clock.t = 4.0
    m.tick()
    assert m.state == "labelling"
    clock.t = 5.5
    m.tick()
    assert res[0].label == "unlabelled" and res[0].saved and res[0].label_source == "timeout"
    m.start()
    m.discard()
    assert res[1].saved is False and ev[-1]["type"] == "discard"
    assert m.discard() == (False, "nothing to discard (state idle)")


def test_fault_ends_episode_as_failure_not_crash():
    m, ev, res, clock = make(mode="rl", reset_source="twin", label_source="auto_or_human")
    m.start()
    m.reset_done({"episode": 0})
    m.observe(1.0)
    m.fault("watchdog: no chunk for 1.50 s")
    assert res[0].end_reason == "fault" and res[0].label == "failure" and res[0].label_source == "fault"
    assert res[0].fault.startswith("watchdog")
    assert m.state == "idle"


def test_reset_timeout_and_stale_reset_reports():
    m, ev, res, clock = make(mode="rl", reset_source="twin", label_source="auto", reset_timeout_s=2.0)
    m.start()
    m.reset_done({"episode": 5})  # a late report of another episode is ignored
    assert m.state == "resetting"
    clock.t = 3.0
    m.tick()
    assert res[0].end_reason == "reset_failed" and not res[0].saved
    assert m.state == "idle"


def test_autostart_and_callable_scheduler():
    seen = []

    def scheduler(i, history):
        seen.append((i, len(history)))
        return EpisodeRequest(task="pick_place", start=i % 2, seed=100 + i) if i < 3 else None

    m, ev, res, clock = make(mode="rl", reset_source="twin", label_source="auto", autostart=True)
    m.scheduler = scheduler
    for _ in range(5):
        m.tick()
        if m.state == "resetting":
            m.reset_done({"episode": m.index, "start_condition": m._start_condition})
            m.observe(0.0)
            m.success_check(True)
    assert seen == [(0, 0), (1, 1), (2, 2), (3, 3)]
    assert [r.start_condition for r in res] == [0, 1, 0]
    assert [e["seed"] for e in ev if e["type"] == "reset"] == [100, 101, 102]
    assert m.state == "done"


def test_group_scheduler_protocol_gets_outcomes():
    class Groups:
        def __init__(self):
            self.recorded = []

        def next(self, version):
            return "reach", ("s", 1)

        def record(self, task, start, label):
            self.recorded.append((task, start, label))

    g = Groups()
    m, ev, res, clock = make(mode="rl", reset_source="twin", label_source="auto", episodes=2)
    m.scheduler = g
    for success in (True, False):
        m.start()
        assert ev[-1]["start"] == ("s", 1)
        m.reset_done({"episode": m.index})
        m.policy_version(3)
        m.fault("x") if not success else m.success_check(True)
    assert g.recorded == [("reach", ("s", 1), 1), ("reach", ("s", 1), 0)]
    assert res[0].policy_versions == [3]


def test_bad_config_names_the_key():
    with pytest.raises(ConfigError, match="'mode'"):
        from_dict(EpisodeManagerNodeConfig, {"mode": "train"})
    with pytest.raises(ConfigError, match="reset_source must be 'twin'"):
        from_dict(EpisodeManagerNodeConfig, {"label_source": "auto", "reset_source": "operator"})
    with pytest.raises(ConfigError, match="max_duration_s"):
        from_dict(EpisodeManagerNodeConfig, {"max_duration_s": -1})
    assert dataclasses.is_dataclass(EpisodeManagerNodeConfig)


def test_estop_ends_the_episode_and_blocks_new_ones_until_cleared():
    m, ev, res, clock = make(mode="evaluate", reset_source="none", autostart=True)
    m.tick()
    assert m.state == "running"
    m.estop(True)
    assert res[0].end_reason == "fault" and res[0].fault == "e-stop" and res[0].label == "failure"
    m.tick()  # autostart waits
    assert m.state == "idle"
    ok, msg = m.start()
    assert not ok and "e-stop is latched" in msg
    m.estop(False)
    m.tick()
    assert m.state == "running" and m.index == 1
