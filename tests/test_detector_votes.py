"""Votes (vla_robot/detector/votes.py): an episode is labelled without a person only when the voters
agree with a margin; weak consensus, disagreement and a voter that cannot vote go to a person."""
import numpy as np
import pytest

from vla_robot.data.schema import Label
from vla_robot.detector.votes import DetectorPanel, EpisodeFrames, VoteConfig, vote

RULE = VoteConfig(threshold=0.9, quorum=2)


def test_voters_that_agree_with_the_margin_label_alone_with_source_and_confidence():
    v = vote({"seed0": 0.97, "seed1": 0.93, "wrist": 0.99}, RULE)
    assert v.label is Label.SUCCESS and not v.asks_person and v.source == "votes"
    assert v.confidence == pytest.approx((0.97 + 0.93 + 0.99) / 3)
    assert v.record() == {"label_confidence": pytest.approx(0.9633, abs=1e-4),
                          "votes": {"seed0": 0.97, "seed1": 0.93, "wrist": 0.99}}
    f = vote({"seed0": 0.02, "seed1": 0.08}, RULE)
    assert f.label is Label.FAILURE and f.confidence == pytest.approx(0.95)
    # the twin's check is one voter among the others
    assert vote({"seed0": 0.95, "twin": 1.0}, RULE).label is Label.SUCCESS


def test_weak_consensus_goes_to_a_person():
    """SCRL: a consensus of unsure voters amplifies its own errors: it must not label."""
    v = vote({"seed0": 0.8, "seed1": 0.85, "wrist": 0.7}, RULE)  # all lean success, none sure
    assert v.asks_person and v.label is None and v.source == ""
    assert "weak consensus: 0 of 3" in v.reason and "quorum 2" in v.reason
    # one sure voter is not a quorum of two
    assert vote({"seed0": 0.99, "seed1": 0.6}, RULE).asks_person
    # a quorum of one with a single sure voter labels (the config says so)
    assert vote({"seed0": 0.99, "seed1": 0.6}, VoteConfig(0.9, 1)).label is Label.SUCCESS


def test_disagreement_goes_to_a_person_even_when_a_quorum_is_sure():
    v = vote({"seed0": 0.99, "seed1": 0.98, "wrist": 0.3}, RULE)
    assert v.asks_person and v.reason.startswith("voters disagree")
    assert v.votes == {"seed0": 0.99, "seed1": 0.98, "wrist": 0.3}  # the question shows what each said
    assert vote({"seed0": 0.99, "seed1": 0.5}, RULE).asks_person  # undecided is not agreement


def test_a_voter_that_cannot_vote_sends_the_episode_to_a_person():
    v = vote({"seed0": 0.99, "seed1": 0.99}, RULE, errors={"seed2": "detector file seed2.onnx could not be loaded"})
    assert v.asks_person and "1 voter(s) could not vote" in v.reason and "seed2.onnx" in v.reason
    bad = vote({"seed0": 0.99, "seed1": float("nan")}, RULE)
    assert bad.asks_person and "seed1: P(success) must be a number in [0, 1]" in bad.reason
    assert vote({}, RULE).asks_person


@pytest.mark.parametrize("threshold, quorum", [(0.5, 2), (1.2, 2), (0.9, 0), (0.9, True)])
def test_vote_config_errors_say_what_is_expected(threshold, quorum):
    with pytest.raises(ValueError, match="threshold must be in|quorum must be an integer"):
        VoteConfig(threshold, quorum).validate()


def test_missing_and_corrupt_detector_files_are_errors_that_name_the_file(tmp_path):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not a detector")
    panel = DetectorPanel([str(tmp_path / "missing.onnx"), str(corrupt)])
    assert not panel.detectors and set(panel.errors) == {str(tmp_path / "missing.onnx"), str(corrupt)}
    assert "missing.onnx could not be loaded" in panel.errors[str(tmp_path / "missing.onnx")]
    assert "corrupt.onnx could not be loaded" in panel.errors[str(corrupt)]
    probs, errors = panel.probabilities({}, np.zeros((1, 6)))
    verdict = vote(probs, RULE, errors)
    assert verdict.asks_person and "2 voter(s) could not vote" in verdict.reason


def test_episode_frames_keep_the_whole_episode_evenly_in_bounded_memory():
    frames = EpisodeFrames(["front", "wrist"], image_size=(16, 16), max_bytes=200 * 2 * 16 * 16 * 3)
    img = np.zeros((48, 64, 3), np.uint8)
    frames.add_image("front", img)  # no joint state yet: no frame
    assert len(frames) == 0
    for t in range(1000):
        frames.add_state([t, 0.0])
        frames.add_image("wrist", img)
        frames.add_image("front", np.full((48, 64, 3), t % 256, np.uint8))
    images, states = frames.snapshot()
    assert images["front"].shape[1:] == (16, 16, 3) and images["wrist"].shape == images["front"].shape
    assert len(states) <= 200 and frames.stride == 8  # thinned three times
    steps = np.diff(states[:, 0])
    assert set(steps.tolist()) == {8.0} and states[0, 0] == 0 and states[-1, 0] >= 1000 - 8  # even, whole episode
    frames.reset()
    with pytest.raises(ValueError, match="no frame of this episode"):
        frames.snapshot()


def test_the_learner_trains_only_on_the_label_sources_it_trusts(tmp_path):
    """``vla-robot learn --trust-labels``: the follower leaves out episodes labelled by another source;
    by default it trusts every source (nothing changes for existing users)."""
    from test_data_relabel import DIM, _record

    from vla_robot.data.relabel import relabel
    from vla_robot.rl.dataset import follow_dataset

    root = tmp_path / "ds"
    _record(root, ("success", "failure", "success"))
    relabel(root, 0, "failure", source="votes")
    relabel(root, 1, "success", source="human")

    def used(**kw):
        follower = follow_dataset(root, DIM, follow=False, **kw)
        return [(e.episode_id.rsplit("#", 1)[1], e.label) for e in follower], follower

    assert used()[0] == [("0", 0), ("1", 1), ("2", 1)]
    eps, follower = used(trust=["human"])
    assert eps == [("1", 1)] and follower.untrusted == 2  # votes, and a label of unknown source
    assert used(trust=["human", "votes"])[0] == [("0", 0), ("1", 1)]


def test_a_person_correcting_the_votes_replaces_the_label_source_and_confidence_and_keeps_the_votes():
    """dataset relabel on an episode the votes labelled: the newer label is the person's, with no
    confidence of the votes' label left on it; what the detectors said stays."""
    from vla_robot.data.relabel import Relabel, apply
    from vla_robot.data.schema import EpisodeRecord

    voted = EpisodeRecord(3, "touch the red cube", "success", 90, meta={
        "label_source": "votes", "label_confidence": 0.95, "votes": {"a": 0.97, "b": 0.93}})
    (fixed,) = apply([voted], [Relabel(3, Label.SUCCESS, Label.FAILURE, "person", "the arm hovered above it")])
    assert fixed.label is Label.FAILURE and fixed.meta["label_source"] == "person"
    assert "label_confidence" not in fixed.meta and fixed.meta["votes"] == {"a": 0.97, "b": 0.93}
    assert voted.meta["label_confidence"] == 0.95  # the journal's own record is not touched
