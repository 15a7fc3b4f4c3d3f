"""`vla-robot dataset relabel`: a saved episode's label changes through the append-only relabel log;
the recorded files stay byte for byte, stock LeRobot still reads the dataset, and every reader (the
journal, the learner's follower, the dataset tools, the evaluation report) sees the newer label."""
from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from vla_robot.cli import main
from vla_robot.data import Recorder, RecorderConfig, Schema, records
from vla_robot.data import schema as S
from vla_robot.data.reader import load_episode, read_journal
from vla_robot.data.relabel import LOG, read_log, relabel
from vla_robot.rl.dataset import follow_dataset

CHUNK, DIM = 8, 6  # the tiny policy's, so that the real learner can use the episodes
TASK = "touch the red cube"


def _record(root, labels):
    """Episodes of 10 frames under policy control, each with its on-policy record (two chunks) as the
    tiny policy would have served it."""
    from vla_robot.policy import load_policy

    served_by = load_policy(preset="tiny", seed=0).metadata
    rng = np.random.default_rng(0)
    names = [f"j{i}" for i in range(DIM)]
    rec = Recorder(root, Schema({"front": (16, 16)}, names, names), config=RecorderConfig(fps=10, fsync=False))
    for e, label in enumerate(labels):
        rec.start_episode(TASK, start_condition=7)
        chunks = []
        for c in range(2):
            obs = {"images": {cam: rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for cam in ("front", "wrist")},
                   "state": rng.normal(size=DIM).astype(np.float32), "instruction": TASK}
            reply = {"actions": rng.normal(size=(CHUNK, DIM)).astype(np.float32),
                     "tokens": rng.integers(31744, 32000, CHUNK * DIM), "version": 0,
                     "logprobs": -rng.uniform(0.1, 5, CHUNK * DIM).astype(np.float32)}
            chunks.append(records.make_chunk(reply, obs, {"mode": "sample", "temperature": 1.6, "return_tokens": True},
                                             10 * e + c, float(c), served_by))
        for f in range(10):
            c, step = divmod(f, CHUNK)
            rec.add_frame({"front": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)}, rng.normal(size=DIM),
                          rng.normal(size=DIM), policy_version=0, chunk_id=10 * e + c, chunk_step=step)
        rec.save_episode(label, records=chunks)
    rec.close()


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    root = tmp_path_factory.mktemp("relabel") / "ds"
    _record(root, ("success", "failure", "unlabelled"))
    return root


@pytest.fixture
def ds(recorded, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(recorded, root)
    return root


def _digests(root):
    """Every file of the dataset (commits and stage included) but the relabel log -> sha256."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != LOG}


def test_relabel_changes_the_label_every_reader_sees_and_loses_nothing(ds, capsys):
    before = _digests(ds)
    assert [r.label for r in read_journal(ds)] == ["success", "failure", "unlabelled"]

    assert main(["dataset", "relabel", "--root", str(ds), "--episode", "1", "--label", "success",
                 "--reason", "the cube was in the box"]) == 0
    assert "episode 1: failure -> success (source person, reason: the cube was in the box)" in capsys.readouterr().out

    journal = read_journal(ds)
    assert [r.label for r in journal] == ["success", "success", "unlabelled"]
    assert journal[1].meta["label_source"] == "person"
    (change,) = journal[1].meta["relabels"]
    assert (change["old_label"], change["new_label"]) == ("failure", "success")
    assert change["reason"] == "the cube was in the box"
    assert change["time"] > 0
    # nothing recorded was rewritten: the frames keep the label as recorded, the journal its line
    assert _digests(ds) == before
    assert set(load_episode(ds, 1).frames[S.LABEL].tolist()) == {S.Label.FAILURE.stored}
    assert json.loads((ds / "meta" / "vla_episodes.jsonl").read_text().splitlines()[1])["label"] == "failure"
    # stock LeRobot still loads it and the folder still matches its newest commit
    assert main(["dataset", "verify", "--root", str(ds)]) == 0
    assert "OK" in capsys.readouterr().out

    # the learner's follower trains with the newer label; the unlabelled episode joins once labelled
    assert [e.label for e in follow_dataset(ds, DIM, follow=False)] == [1, 1]
    relabel(ds, 2, "failure", source="detector", reason="score 0.1")
    eps = list(follow_dataset(ds, DIM, follow=False))
    assert [(e.episode_id.rsplit("#", 1)[1], e.label) for e in eps] == [("0", 1), ("1", 1), ("2", 0)]

    # the dataset tools and the evaluation report count the newer labels
    from vla_robot.data import tools
    from vla_robot.data.report import evaluation_report

    assert tools.info(ds)["labels"] == {"success": 2, "failure": 1}
    overall = evaluation_report(read_journal(ds), fps=10)["overall"]
    assert (overall["successes"], overall["labelled"]) == (2, 3)

    # the newest change wins; each one is a line of the log
    relabel(ds, 1, "failure", reason="looked again")
    assert read_journal(ds)[1].label == "failure" and len(read_journal(ds)[1].meta["relabels"]) == 2
    assert [(c.episode_index, c.new_label) for c in read_log(ds)] == [(1, "success"), (2, "failure"), (1, "failure")]

    # the same label again is a no-op that says so
    assert main(["dataset", "relabel", "--root", str(ds), "--episode", "0", "--label", "success"]) == 0
    assert "episode 0 is already labelled success: nothing changed" in capsys.readouterr().out
    assert len(read_log(ds)) == 3


def test_a_following_learner_gets_an_episode_relabelled_after_it_passed_it(ds):
    follower = iter(follow_dataset(ds, DIM, follow=True, poll_s=0.05, timeout=1.0))
    assert [next(follower).label, next(follower).label] == [1, 0]  # episode 2 is unlabelled: not yielded
    relabel(ds, 1, "success")
    relabel(ds, 2, "success")
    again = [next(follower), next(follower)]
    assert [(e.episode_id.rsplit("#", 1)[1], e.label) for e in again] == [("1", 1), ("2", 1)]
    assert list(follower) == []  # nothing more within the timeout


def test_a_cut_short_log_line_is_skipped_and_the_next_change_starts_a_fresh_line(ds):
    relabel(ds, 1, "success")
    with (ds / "meta" / LOG).open("a") as f:
        f.write('{"episode_index": 2, "old_lab')  # a crash in the middle of an append
    assert [r.label for r in read_journal(ds)] == ["success", "success", "unlabelled"]
    relabel(ds, 2, "failure")
    assert [r.label for r in read_journal(ds)] == ["success", "success", "failure"]
    assert len((ds / "meta" / LOG).read_text().splitlines()) == 3


def test_bad_input_gets_a_clear_error(ds, tmp_path, capsys):
    def err(*argv):
        assert main(["dataset", "relabel", *argv]) == 2
        return capsys.readouterr().err

    assert "episode 7 is not saved in" in err("--root", str(ds), "--episode", "7", "--label", "success")
    assert "saved episodes are 0..2" in err("--root", str(ds), "--episode", "-1", "--label", "success")
    assert "--label must be success or failure, got 'maybe'" in err("--root", str(ds), "--episode", "0",
                                                                     "--label", "maybe")
    assert "--label must be success or failure" in err("--root", str(ds), "--episode", "0", "--label", "unlabelled")
    assert "relabel needs --episode N and --label success|failure" in err("--root", str(ds), "--label", "failure")
    assert "--source must be a non-empty" in err("--root", str(ds), "--episode", "0", "--label", "failure",
                                                 "--source", " ")
    (tmp_path / "empty").mkdir()
    assert "is not a LeRobot dataset (no meta/info.json)" in err("--root", str(tmp_path / "empty"), "--episode", "0",
                                                                 "--label", "success")
    assert "is not a LeRobot dataset" in err("--root", str(tmp_path / "missing"), "--episode", "0",
                                             "--label", "success")
    assert "is not a folder (expected the learner's --out)" in err("--root", str(ds), "--episode", "0",
                                                                   "--label", "failure",
                                                                   "--learner", str(tmp_path / "nolearner"))
    assert read_log(ds) == []  # none of them changed anything


def test_relabelling_an_episode_the_learner_used_says_so(ds, tmp_path, capsys):
    """The real learner (`vla-robot learn`) uses episodes 0 and 1 in one update; relabelling 1 then
    says the change applies to later uses only, relabelling 2 (never used) says nothing of the kind."""
    import torch

    torch.set_num_threads(1)
    out = tmp_path / "learner"
    assert main(["learn", "--dataset", str(ds), "--out", str(out), "--set", "group_size=2", "--set", "batch_groups=1",
                 "--mode", "rl", "--idle-timeout", "0.5"]) == 0
    capsys.readouterr()
    assert main(["dataset", "relabel", "--root", str(ds), "--episode", "1", "--label", "success",
                 "--learner", str(out)]) == 0
    said = capsys.readouterr().out
    assert ("episode 1 was already used by the learner at version 1 (its newest checkpoint); the new label applies "
            "to later uses only") in said
    assert main(["dataset", "relabel", "--root", str(ds), "--episode", "2", "--label", "success",
                 "--learner", str(out)]) == 0
    assert "already used" not in capsys.readouterr().out
