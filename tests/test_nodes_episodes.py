"""The episode state machine (ROS-free core of episode_manager_node): reset -> run -> label -> save."""
import dataclasses

import pytest

from vla_robot.config import ConfigError, from_dict
from vla_robot.data.schema import Label
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
    # the one conversion toward the recorder: the save event is the result's, with the label's name
    assert ev[-1] == r.save_event() and type(ev[-1]["label"]) is str and r.label is Label.SUCCESS and r.success
    assert r.to_dict()["label"] == "success" and type(r.to_dict()["label"]) is str


def test_a_discarded_episode_has_no_save_event_and_gives_its_start_back():
    m, ev, res, clock = make(mode="rl", reset_source="twin", label_source="human", episodes=2,
                             start_conditions=[3], group_size=2)
    m.start()
    m.reset_done({"episode": 0, "instruction": "reach"})
    m.stop()
    assert m.label_episode(0, "discard")[0] and types(ev)[-1] == "discard"
    assert (res[0].label, res[0].saved) == (Label.UNLABELLED, False)
    with pytest.raises(ValueError, match="discarded: it has no save event"):
        res[0].save_event()
    (task,) = m.scheduler.tasks
    assert m.scheduler.position(task, 3) == (1, 0)  # not counted toward its group: handed out again


def test_timeout_on_robot_time_ends_as_failure_and_episode_budget_is_kept():
    m, ev, res, clock = make(mode="rl", reset_source="twin", label_source="auto", episodes=1, max_duration_s=1.0)
    m.start()
    m.reset_done({"episode": 0, "instruction": "touch the red cube"})
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
    m, ev, res, clock = make(mode="evaluate", reset_source="operator", instruction="pick up the cube")
    m.start()
    assert m.state == "resetting"
    ok, msg = m.start()  # the operator confirms the scene is reset
    assert ok and m.state == "running"
    assert m.stop()[0] and m.label(True)[0] is True
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
    m, ev, res, clock = make(mode="evaluate", reset_source="none", label_timeout_s=5.0, task="pick up the cube")
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


@pytest.mark.parametrize("mode", ["rl", "evaluate"])
def test_a_fault_waits_for_its_label_then_is_kept_unlabelled_not_failed(mode):
    """Defect 4: a fault (camera gap, server stall, e-stop) is not a failure of the policy. The episode
    waits for a person's label like any other; unlabelled it is saved 'unlabelled' by 'fault' (kept,
    never trained on) and its start condition is handed out again."""
    m, ev, res, clock = make(mode=mode, reset_source="twin", label_source="auto_or_human", label_timeout_s=10.0)
    m.start()
    m.reset_done({"episode": 0, "instruction": "touch the red cube"})
    m.observe(1.0)
    m.fault("watchdog: no chunk for 1.50 s")
    assert m.state == "labelling" and not res and ev[-1]["type"] == "end" and ev[-1]["reason"] == "fault"
    clock.t = 11.0
    m.tick()
    assert (res[0].end_reason, res[0].label, res[0].label_source, res[0].saved) == ("fault", "unlabelled", "fault", True)
    assert res[0].fault.startswith("watchdog")
    assert ev[-1]["type"] == "save" and (ev[-1]["label"], ev[-1]["label_source"]) == ("unlabelled", "fault")
    assert m.state == "idle"
    # the next episode's fault: a person who saw it labels it anyway, and that label stands
    m.start()
    m.reset_done({"episode": 1, "instruction": "touch the red cube", "run": m.run_id})
    m.fault("e-stop")
    assert m.label_episode(1, "failure")[0]
    assert (res[1].label, res[1].label_source) == ("failure", "human")
    # and a third: starting the next episode saves the faulted one as unlabelled (fault)
    m.start()
    m.reset_done({"episode": 2, "instruction": "touch the red cube"})
    m.fault("camera gap")
    ok, msg = m.start()
    assert ok and m.state == "resetting" and m.index == 3, msg
    assert (res[2].label, res[2].label_source) == ("unlabelled", "fault")


def test_a_fault_with_automatic_labels_is_kept_unlabelled_at_once():
    m, ev, res, clock = make(mode="rl", reset_source="twin", label_source="auto")
    m.start()
    m.reset_done({"episode": 0, "instruction": "touch the red cube"})
    m.fault("watchdog")
    assert (res[0].label, res[0].label_source) == ("unlabelled", "fault") and m.state == "idle"


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
            m.reset_done({"episode": m.index, "start_condition": m._start_condition, "instruction": "push"})
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
        m.reset_done({"episode": m.index, "instruction": "touch the red cube"})
        m.policy_version(3)
        m.fault("x") if not success else m.success_check(True)
    # a fault is not an outcome: it goes back as None (the scheduler hands that start out again)
    assert g.recorded == [("reach", ("s", 1), 1), ("reach", ("s", 1), None)]
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
    m, ev, res, clock = make(mode="evaluate", reset_source="none", autostart=True, instruction="pick it up")
    m.tick()
    assert m.state == "running"
    m.estop(True)
    assert m.state == "labelling" and ev[-1]["reason"] == "fault"
    assert m.label(False)[0]  # the person saw it fail before the e-stop
    assert res[0].end_reason == "fault" and res[0].fault == "e-stop" and res[0].label == "failure"
    m.tick()  # autostart waits
    assert m.state == "idle"
    ok, msg = m.start()
    assert not ok and "e-stop is latched" in msg
    m.estop(False)
    m.tick()
    assert m.state == "running" and m.index == 1


# --- issue 14 ---------------------------------------------------------------------------------------
def run_to_end(m, instruction="touch the red cube"):
    """Reset (operator confirms), run, stop: the episode then waits for its label."""
    m.start()
    if m.state == "resetting":
        m.start()
    assert m.state == "running", m.state
    m.stop()
    assert m.state == "labelling"


def test_rl_mode_groups_episodes_by_start_condition_and_tells_the_operator():
    """Defect 1: with no scheduler of its own the rl manager fills GRPO groups of group_size episodes per
    start condition; the reset event and the operator's line say which start condition to set up, and a
    discarded or fault-unlabelled episode does not count toward its group (it is handed out again)."""
    from vla_robot.nodes.episodes import describe_reset

    m, ev, res, clock = make(mode="rl", reset_source="operator", task="pick the cube",
                             start_conditions=["left", "center", "right"], group_size=3)
    starts = []
    for label in ("success", "discard", "failure", "fault", "success", "failure"):
        m.start()
        reset = ev[-1]
        assert reset["type"] == "reset"
        starts.append(reset["start"])
        if len(starts) == 1:
            assert reset["group"] == {"number": 1, "slot": 1, "size": 3}
            assert describe_reset(reset, "operator") == (
                "set up start condition 'left' for episode 0 (group 1: 1/3); then press Enter or call ~/start")
        m.start()
        if label == "fault":
            m.fault("camera gap")
            clock.t += 1000
            m.tick()
        else:
            m.stop()
            assert m.label_episode(m.index, label)[0]
    # 'left' needed 3 counted outcomes: the discard and the fault did not count, so it ran 5 times
    assert starts == ["left"] * 5 + ["center"]
    assert [e["instruction"] for e in ev if e["type"] == "start"] == ["pick the cube"] * 6  # a robot: the task's text
    assert m.scheduler.completed == [("pick the cube", "left", [1, 0, 1])]


def test_default_scheduler_only_in_rl_mode():
    assert make(mode="rl")[0].scheduler.group_size == 8
    assert make(mode="evaluate")[0].scheduler is None


@pytest.mark.parametrize("params, match", [
    ({"group_size": 1}, "group_size must be an integer >= 2"),
    ({"max_open_groups": 0}, "max_open_groups must be"),
    ({"start_conditions": []}, "start_conditions must name at least one"),
    ({"start_conditions": [0, "left"]}, "all integers or all names"),
    ({"start_conditions": ["left", "left"]}, "must not repeat"),
    ({"start_conditions": [-2]}, "start-state ids >= 0"),
])
def test_group_parameters_are_checked_with_clear_errors(params, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(EpisodeManagerNodeConfig, params)


def test_shipped_rl_graph_groups_episodes_like_the_learner_preset():
    from vla_robot.config import config_dir, read_parameter_file
    from vla_robot.rl.config import PRESETS

    merged = {}
    for f in ("rl_finetune.yaml", "sim.yaml"):
        section = read_parameter_file(config_dir() / f).get("episode_manager_node", {})
        merged.update(section)
        cfg = from_dict(EpisodeManagerNodeConfig, merged)
        assert cfg.mode == "rl" and len(cfg.start_conditions) >= 2 and "start_conditions" in section
    assert all(isinstance(s, int) for s in cfg.start_conditions)  # on the twin: its start-state ids
    assert cfg.group_size == PRESETS["tiny"].group_size == PRESETS["oft-7b"].group_size


def test_the_policy_never_gets_an_empty_instruction():
    """Defect 2: on a robot an empty instruction falls back to the task's text; with neither, no episode
    starts and the error names the parameter to set; on the twin the twin's instruction is used."""
    m, ev, res, clock = make(mode="rl", reset_source="operator", autostart=True)
    m.tick()
    assert m.state == "idle" and not ev
    assert "set the episode manager's 'instruction' parameter" in m.refused
    ok, msg = m.start()
    assert not ok and "instruction:=" in msg
    assert m.scheduler.next() == ("", 0)  # the refused attempts did not use up the group's slots

    m, ev, res, clock = make(mode="evaluate", reset_source="operator", task="stack the cups",
                             instruction="put the red cup on the blue cup")
    m.start()
    m.start()
    assert ev[-1]["type"] == "start" and ev[-1]["instruction"] == "put the red cup on the blue cup"
    assert ev[-1]["task"] == "stack the cups"

    m, ev, res, clock = make(mode="rl", reset_source="twin", task="reach")
    m.start()
    assert ev[-1]["instruction"] == ""  # the twin names the instruction of the scene it builds
    m.reset_done({"episode": 0, "instruction": "touch the blue cube", "run": m.run_id})
    assert ev[-1]["type"] == "start" and ev[-1]["instruction"] == "touch the blue cube"
    m.stop()
    m.label(True)
    m.start()
    m.reset_done({"episode": 1, "instruction": ""})  # a twin that gives none: the episode does not run
    assert m.state == "idle" and res[-1].end_reason == "reset_failed" and "'instruction'" in res[-1].fault


def test_labels_name_their_episode_and_never_end_a_running_one():
    """A label pressed just after an auto-saved episode ended must not stop and label the next one."""
    m, ev, res, clock = make(mode="evaluate", reset_source="none", instruction="pick it up")
    m.start()
    assert m.state == "running"
    ok, msg = m.label(True)  # ~/label while episode 0 runs
    assert not ok and m.state == "running" and "still running" in msg
    assert ev[-1] == {"type": "label_rejected", "episode": 0, "label": "success", "reason": msg[len("label rejected: "):]}
    assert not m.label_episode(0, "success")[0] and m.state == "running"
    m.stop()
    # a label for another episode (a late one for the previous, or a mistyped index) is rejected
    ok, msg = m.label_episode(7, "success")
    assert not ok and "episode 7 is not waiting for its label" in msg and ev[-1]["type"] == "label_rejected"
    assert not m.label_episode(0, "great")[0] and "label must be one of success, failure, discard" in ev[-1]["reason"]
    assert not m.label_episode("0", "success")[0] and "by index" in ev[-1]["reason"]
    assert m.state == "labelling"
    assert m.label_episode(0, "failure")[0] and res[0].label == "failure"
    # the next episode runs; the same label, repeated, cannot reach it
    m.start()
    assert not m.label_episode(0, "failure")[0] and m.state == "running" and len(res) == 1
    m.stop()
    assert m.label_episode(1, "discard")[0] and res[1].saved is False and ev[-1]["type"] == "discard"


def test_an_operator_takeover_is_recorded_with_the_episode():
    m, ev, res, clock = make(mode="evaluate", reset_source="none", instruction="pick it up")
    m.intervention(True)  # between episodes: not this episode's business ...
    m.intervention(False)
    run_to_end(m)
    m.label(True)
    assert res[0].intervened is False and ev[-1]["intervened"] is False
    m.start()
    m.intervention(True)
    m.intervention(False)  # handed back: still an episode the operator took over
    m.stop()
    m.label(True)
    assert res[1].intervened is True and ev[-1]["type"] == "save" and ev[-1]["intervened"] is True
    m.intervention(True)  # held when the next one starts
    m.start()
    m.stop()
    m.label(False)
    assert res[2].intervened is True


def test_a_reset_report_of_another_run_does_not_start_an_episode():
    m, ev, res, clock = make(mode="rl", reset_source="twin", task="reach")
    m.start()
    m.reset_done({"episode": 0, "instruction": "touch the red cube", "run": "an-earlier-manager"})
    assert m.state == "resetting"
    assert ev[0]["run"] == m.run_id
    m.reset_done({"episode": 0, "instruction": "touch the red cube", "run": m.run_id})
    assert m.state == "running"


def test_latest_reset_acts_only_on_the_newest_reset_of_an_episode_not_over():
    """A late joiner of episode/event gets the history in one burst: resets of episodes long over must not
    be acted on, and the current one only once the burst is over."""
    from vla_robot.nodes.episodes import LatestReset

    clock = Clock()
    r = LatestReset(settle_s=0.1, clock=clock)
    history = [
        {"type": "reset", "episode": 0}, {"type": "end", "episode": 0, "reason": "reset_failed"},
        {"type": "discard", "episode": 0},
        {"type": "reset", "episode": 1}, {"type": "start", "episode": 1}, {"type": "end", "episode": 1},
        {"type": "save", "episode": 1},
        {"type": "reset", "episode": 2},
    ]
    for ev in history:
        r.offer(ev)
        assert r.take() is None  # never in the middle of a burst
    clock.t = 0.2
    assert r.take() == {"type": "reset", "episode": 2}
    assert r.take() is None  # once
    for ev in history[:7]:  # history of episodes that are all over: nothing to do
        r.offer(ev)
    clock.t = 1.0
    assert r.take() is None
    r.offer({"type": "reset", "episode": 3})
    r.offer({"type": "done"})
    clock.t = 2.0
    assert r.take() is None


def test_events_leave_in_the_order_they_were_queued_when_two_threads_flush():
    """The executor's tick and a service call flush at once: the first one's events (a save) must go out
    before the second one's (the next episode's reset), however slow the first emit is."""
    import threading
    import time

    cfg = from_dict(EpisodeManagerNodeConfig, {})
    out, first_out = [], threading.Event()

    def emit(ev):
        if ev["type"] == "save":
            first_out.set()
            time.sleep(0.3)  # a slow publish: the other thread flushes meanwhile
        out.append(ev["type"])

    m = EpisodeManager(cfg, emit)
    with m._lock:
        m._pending.append({"type": "save", "episode": 0})
    a = threading.Thread(target=m._flush)
    a.start()
    assert first_out.wait(5)
    with m._lock:
        m._pending.append({"type": "reset", "episode": 1})
    b = threading.Thread(target=m._flush)
    b.start()
    a.join(5)
    b.join(5)
    assert out == ["save", "reset"]
