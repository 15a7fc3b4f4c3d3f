"""The episode manager with ``label_source: votes``: the votes label alone only when they agree; an
unsure vote asks a person and the episode waits as for any person's label (timeout: kept unlabelled,
votes recorded); a detector file that is missing or corrupt is an error and episodes wait for a person."""
import threading

import pytest

from vla_robot.config import ConfigError, from_dict
from vla_robot.data.schema import Label
from vla_robot.detector.votes import EpisodeVoter, VoteConfig, vote
from vla_robot.nodes.config import EpisodeManagerNodeConfig
from vla_robot.nodes.episodes import EpisodeManager

RULE = VoteConfig(threshold=0.9, quorum=2)
BASE = {"mode": "evaluate", "reset_source": "operator", "instruction": "pick up the cube", "label_source": "votes",
        "detectors": ["seed0.onnx", "seed1.onnx"], "label_timeout_s": 10.0, "prompt": False}


class Clock:
    t = 0.0

    def __call__(self):
        return self.t


def make(voter, **kw):
    cfg = from_dict(EpisodeManagerNodeConfig, {**BASE, **kw})
    events, results, clock = [], [], Clock()
    m = EpisodeManager(cfg, events.append, on_result=results.append, clock=clock, voter=voter)
    return m, events, results, clock


def run_episode(m):
    m.start()
    m.start()  # the operator confirms the reset
    assert m.state == "running"
    m.observe(1.0)
    m.stop()


def by_votes(*probs):
    return lambda episode, twin: vote({f"seed{i}": p for i, p in enumerate(probs)}, RULE)


def test_votes_that_agree_label_alone_and_the_save_records_source_confidence_and_votes():
    m, ev, res, _ = make(by_votes(0.97, 0.95))
    run_episode(m)
    assert m.wait_for_votes(5)
    assert [e["type"] for e in ev] == ["reset", "start", "end", "save"] and m.state == "idle"
    save = ev[-1]
    assert (save["label"], save["label_source"]) == ("success", "votes")
    assert save["label_confidence"] == pytest.approx(0.96) and save["votes"] == {"seed0": 0.97, "seed1": 0.95}
    assert (res[0].label, res[0].confidence) == (Label.SUCCESS, pytest.approx(0.96))


def test_unsure_votes_ask_a_person_whose_label_stands_with_the_votes_kept():
    m, ev, res, clock = make(by_votes(0.97, 0.7))
    run_episode(m)
    assert m.wait_for_votes(5)
    ask = ev[-1]
    assert ask["type"] == "ask" and ask["episode"] == 0 and "weak consensus" in ask["reason"]
    assert ask["votes"] == {"seed0": 0.97, "seed1": 0.7} and m.state == "labelling"
    clock.t += 5.0
    m.tick()
    assert m.state == "labelling"  # waits for the person
    assert m.label_episode(0, "failure")[0]
    save = ev[-1]
    assert (save["label"], save["label_source"], save["label_confidence"]) == ("failure", "human", 1.0)
    assert save["votes"] == {"seed0": 0.97, "seed1": 0.7}  # what the detectors said stays with the episode


def test_unanswered_question_keeps_the_episode_unlabelled_with_its_votes_after_the_label_timeout():
    m, ev, res, clock = make(by_votes(0.2, 0.97))
    run_episode(m)
    assert m.wait_for_votes(5) and ev[-1]["type"] == "ask" and "disagree" in ev[-1]["reason"]
    clock.t += 10.5
    m.tick()
    save = ev[-1]
    assert (save["type"], save["label"], save["label_source"]) == ("save", "unlabelled", "timeout")
    assert save["votes"] == {"seed0": 0.2, "seed1": 0.97} and save["label_confidence"] is None
    assert res[0].saved and m.state == "idle"  # kept on disk, never trained on; `dataset relabel` can label it


def test_a_person_quicker_than_the_votes_wins_and_the_late_verdict_is_dropped():
    gate = threading.Event()

    def slow(episode, twin):
        gate.wait(5)
        return vote({"seed0": 0.99, "seed1": 0.99}, RULE)

    m, ev, res, _ = make(slow)
    run_episode(m)
    assert m.label_episode(0, "failure")[0]
    gate.set()
    assert m.wait_for_votes(5)
    assert [e["type"] for e in ev] == ["reset", "start", "end", "save"]
    assert (res[0].label, res[0].label_source) == ("failure", "human") and len(res) == 1


def test_a_faulted_episode_is_not_voted_on_and_a_broken_voter_asks_a_person():
    calls = []
    m, ev, res, _ = make(lambda episode, twin: calls.append(episode) or vote({"a": 1.0, "b": 1.0}, RULE),
                         mode="rl", reset_source="twin")
    m.start()
    m.reset_done({"episode": 0, "instruction": "reach"})
    m.fault("watchdog")
    assert m.wait_for_votes(5) and not calls and m.state == "labelling" and ev[-1]["type"] == "end"

    def broken(episode, twin):
        raise RuntimeError("CUDA out of memory")

    m, ev, res, _ = make(broken)
    run_episode(m)
    assert m.wait_for_votes(5)
    assert ev[-1]["type"] == "ask" and "the votes failed (RuntimeError: CUDA out of memory)" in ev[-1]["reason"]


def test_a_missing_or_corrupt_detector_file_makes_every_episode_wait_for_a_person(tmp_path):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x00garbage")
    cfg = from_dict(EpisodeManagerNodeConfig, {**BASE, "detectors": [str(tmp_path / "nope.onnx"), str(corrupt)]})
    voter = EpisodeVoter(cfg)
    assert set(voter.errors) == {str(tmp_path / "nope.onnx"), str(corrupt)}
    m, ev, res, _ = make(voter, detectors=cfg.detectors)
    for n in range(2):
        run_episode(m)
        assert m.wait_for_votes(5)
        assert ev[-1]["type"] == "ask" and "nope.onnx could not be loaded" in ev[-1]["reason"]
        assert m.label_episode(n, "success")[0]
        assert (res[n].label, res[n].label_source, res[n].saved) == (Label.SUCCESS, "human", True)


@pytest.mark.parametrize("kw, match", [
    ({"detectors": []}, "label_source 'votes' needs detector files"),
    ({"detectors": ["a.onnx"]}, "vote_quorum 2 is more than the 1 voter"),
    ({"vote_threshold": 0.5}, "vote threshold must be in"),
])
def test_votes_config_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(EpisodeManagerNodeConfig, {**BASE, **kw})
    # the twin counts as a voter where it mirrors the arm; votes need no twin reset
    from_dict(EpisodeManagerNodeConfig, {**BASE, "detectors": ["a.onnx"], "vote_twin": True})


# ---- over real rclpy: the episode manager node with label_source votes -------------------------
SCENE = 90  # every camera shows one constant grey scene: whichever frames the detector reads, P is the same


@pytest.fixture(scope="module")
def detector_dirs(tmp_path_factory):
    """Two real detector files (one small detector trained on a few twin episodes, and a copy of it as
    the second voter): what the node loads and runs is the real onnxruntime detector."""
    import shutil

    from vla_robot.detector import record_twin_dataset, train_detector
    from vla_robot.detector.train import TrainConfig

    tmp = tmp_path_factory.mktemp("votes_detector")
    record_twin_dataset(tmp / "ds", episodes=4, seed=1, image_size=(32, 32))
    train_detector([tmp / "ds"], tmp / "a", seed=0, progress=False, log=lambda text: None,
                   config=TrainConfig(steps=2, batch_size=4, width=4, hidden=8, image_size=(32, 32), val_share=0.5))
    shutil.copytree(tmp / "a", tmp / "b")
    return [str(tmp / "a"), str(tmp / "b")]


def _scene(detector_dir):
    """(joint names, P(success) the detector gives the constant scene, its vote_threshold for agreement)."""
    import numpy as np

    from vla_robot.detector import SuccessDetector

    det = SuccessDetector.load(detector_dir)
    names = list(det.spec.state_names)
    p = det.predict_episode({c: np.full((5, 48, 48, 3), SCENE, np.uint8) for c in ("front", "wrist")},
                            np.tile(np.linspace(0, 0.5, len(names), dtype=np.float32), (5, 1)))
    assert abs(p - 0.5) > 1e-3, p
    return names, p, max(0.5005, max(p, 1 - p) - 1e-3)


def _graph(ros_context, probe, cfg):
    pytest.importorskip("rclpy")
    from rclpy.executors import MultiThreadedExecutor

    from vla_robot.nodes.episode_manager_node import EpisodeManagerNode

    manager = EpisodeManagerNode(config=cfg, use_terminal=False, context=ros_context)
    ex = MultiThreadedExecutor(num_threads=3, context=ros_context)
    ex.add_node(manager)
    ex.add_node(probe.node)
    ex.spinner = threading.Thread(target=ex.spin, daemon=True)
    ex.spinner.start()
    return manager, ex


def _stop(ex, *nodes):
    ex.shutdown(timeout_sec=5)
    ex.spinner.join(timeout=5)
    for node in nodes:
        if hasattr(node, "core"):
            node.core.wait_for_votes(5)
        node.destroy_node()


def _show_scene(probe, manager, joint_names, frames=10):
    """What the cameras and the arm show the manager while its episode runs."""
    import numpy as np
    from sensor_msgs.msg import Image, JointState

    from vla_robot.nodes import common, convert

    cams = {c: probe.node.create_publisher(Image, common.image_topic(c), common.IMAGE_QOS) for c in ("front", "wrist")}
    js = probe.node.create_publisher(JointState, common.JOINT_STATES, common.STATE_QOS)
    assert probe.wait_for(lambda: all(p.get_subscription_count() for p in cams.values()) and js.get_subscription_count())
    assert probe.wait_for(lambda: manager.core.running)
    image = np.full((48, 48, 3), SCENE, np.uint8)
    for k in range(frames):
        js.publish(convert.joint_state_to_msg(joint_names, np.linspace(0, 0.5, len(joint_names)), stamp=100 + k / 30))
        for pub in cams.values():
            pub.publish(convert.image_to_msg(image, 100 + k / 30))
        probe.wait_for(lambda: False, timeout=0.03)
    assert probe.wait_for(lambda: len(manager.voter.frames) >= 3)


def _the(probe, kind):
    """The one episode event of ``kind``, once it came."""
    assert probe.wait_for(lambda: probe.events(lambda e: e["type"] == kind)), probe.events()
    (ev,) = probe.events(lambda e: e["type"] == kind)
    return ev


@pytest.mark.ros
def test_node_with_votes_labels_alone_from_its_cameras_when_the_detectors_agree(ros_context, probe, detector_dirs):
    names, p, threshold = _scene(detector_dirs[0])
    cfg = from_dict(EpisodeManagerNodeConfig, {**BASE, "detectors": detector_dirs, "vote_threshold": threshold})
    manager, ex = _graph(ros_context, probe, cfg)
    try:
        assert not manager.voter.errors and manager.voter.frames.cameras == ["front", "wrist"]
        manager.core.start()
        manager.core.start()
        _show_scene(probe, manager, names)
        manager.core.stop()
        save = _the(probe, "save")
        assert save["label_source"] == "votes" and save["label"] == ("success" if p > 0.5 else "failure")
        assert set(save["votes"]) == set(detector_dirs)
        assert all(v == pytest.approx(p, abs=1e-3) for v in save["votes"].values())
        assert save["label_confidence"] == pytest.approx(max(p, 1 - p), abs=1e-3)
    finally:
        _stop(ex, manager)


@pytest.mark.ros
def test_node_with_a_missing_detector_file_logs_it_asks_and_the_persons_label_is_saved(ros_context, probe,
                                                                                        detector_dirs, tmp_path, capfd):
    import json

    from std_msgs.msg import String

    from vla_robot.nodes import common

    missing = str(tmp_path / "gone" / "detector.onnx")
    cfg = from_dict(EpisodeManagerNodeConfig, {**BASE, "detectors": [detector_dirs[0], missing]})
    manager, ex = _graph(ros_context, probe, cfg)
    try:
        logged = capfd.readouterr().err  # what the node logged at start, as the operator reads it
        assert "[ERROR]" in logged and "gone/detector.onnx could not be loaded" in logged and "missing" in logged
        assert "every episode waits for a person's label" in logged
        manager.core.start()
        manager.core.start()
        _show_scene(probe, manager, _scene(detector_dirs[0])[0])
        manager.core.stop()
        ask = _the(probe, "ask")
        assert "could not vote" in ask["reason"] and "gone/detector.onnx" in ask["reason"]
        assert list(ask["votes"]) == [detector_dirs[0]]  # the detector that loaded still says what it thinks
        assert manager.core.state == "labelling"
        labels = probe.node.create_publisher(String, common.EPISODE_LABEL, common.EVENT_QOS)
        assert probe.wait_for(lambda: labels.get_subscription_count())
        labels.publish(String(data=json.dumps({"episode": 0, "label": "success"})))
        save = _the(probe, "save")
        assert (save["label"], save["label_source"], save["label_confidence"]) == ("success", "human", 1.0)
    finally:
        _stop(ex, manager)


@pytest.mark.ros
@pytest.mark.parametrize("agree", [True, False])
def test_the_standin_person_answers_only_when_the_votes_ask(ros_context, probe, detector_dirs, tmp_path, agree):
    """rehearse --label-source votes: the stand-in person (answer: asked) labels an episode only after
    an ``ask`` event, and counts the questions; when the votes label it, it only starts the next one."""
    import json

    from std_msgs.msg import Bool, String

    from vla_robot.nodes import common
    from vla_robot.nodes.standin_person import StandinPerson, StandinPersonConfig

    names, p, threshold = _scene(detector_dirs[0])
    detectors = detector_dirs if agree else [detector_dirs[0], str(tmp_path / "missing")]
    cfg = from_dict(EpisodeManagerNodeConfig, {**BASE, "detectors": detectors, "episodes": 1,
                                              "vote_threshold": threshold})
    manager, ex = _graph(ros_context, probe, cfg)
    person = StandinPerson(config=StandinPersonConfig(answer="asked", min_delay_s=0.0, max_delay_s=0.05,
                                                      log=str(tmp_path / "person.jsonl")), context=ros_context)
    ex.add_node(person)
    try:
        ready = probe.node.create_publisher(String, common.SCENE_READY, common.LATCHED_QOS)
        ready.publish(String(data=json.dumps({"episode": 0})))  # the scene of episode 0 is set up
        _show_scene(probe, manager, names)  # once the person pressed start, and start again to confirm
        success = probe.node.create_publisher(Bool, common.SCENE_SUCCESS, common.STATE_QOS)
        success.publish(Bool(data=True))  # the person sees the task done and presses stop
        save = _the(probe, "save")
        asks = probe.events(lambda e: e["type"] == "ask")
        if agree:
            assert save["label_source"] == "votes" and not asks and person.questions == 0 and person.labelled == 0
        else:
            assert len(asks) == 1 and person.questions == 1 and person.labelled == 1
            assert (save["label"], save["label_source"]) == ("success", "human")  # what the person saw
        log = [json.loads(line) for line in (tmp_path / "person.jsonl").read_text().splitlines()]
        assert [(r["episode"], r["succeeded"]) for r in log if r.get("action") == "saw"] == [(0, True)]
    finally:
        person.close()
        _stop(ex, person, manager)
