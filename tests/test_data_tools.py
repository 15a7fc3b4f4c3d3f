"""dataset info / verify / repair on real datasets: ours, damaged ones, and a stock LeRobot one."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from vla_robot.data import store, tools
from vla_robot.data.recorder import Recorder
from vla_robot.data.schema import Schema

JOINTS = ("a", "b")
SCHEMA = Schema({"front": (24, 32)}, JOINTS, JOINTS)


def make(root, labels=("success", "failure")):
    with Recorder(root, SCHEMA) as rec:
        for k, label in enumerate(labels):
            rec.start_episode("reach the ball")
            for i in range(3 + k):
                rec.add_frame({"front": np.full((24, 32, 3), 40 * i, np.uint8)}, [k, i], [k, i])
            rec.save_episode(label)


def test_info_verify_and_repair_of_a_clean_dataset(tmp_path):
    root = tmp_path / "ds"
    make(root)
    inf = tools.info(root)
    assert (inf["episodes"], inf["frames"], inf["fps"]) == (2, 7, 30)
    assert inf["labels"] == {"success": 1, "failure": 1} and inf["tasks"] == {"reach the ball": 2}
    assert inf["cameras"] == {"front": [24, 32]} and inf["state"] == "clean" and inf["committed_episodes"] == 2
    rep = tools.verify(root)
    assert rep.ok, rep.problems
    assert (rep.episodes, rep.frames) == (2, 7)
    assert tools.repair(root)["action"] == "clean"


def test_verify_finds_and_repair_fixes_a_half_published_episode(tmp_path):
    root = tmp_path / "ds"
    make(root)
    # what a kill in the middle of publishing leaves: a new data file, journal line, info not flipped
    (root / "data/chunk-000/file-009.parquet").write_bytes((root / "data/chunk-000/file-000.parquet").read_bytes())
    journal = root / "meta" / store.JOURNAL
    journal.write_text(journal.read_text() + journal.read_text().splitlines()[0] + "\n")
    rep = tools.verify(root)
    assert not rep.ok and any("differs from its newest commit" in p for p in rep.problems)
    dry = tools.repair(root, dry_run=True)
    assert dry["action"] == "recovered" and "data/chunk-000/file-009.parquet" in dry["removed"]
    assert (root / "data/chunk-000/file-009.parquet").exists()
    done = tools.repair(root)
    assert done["action"] == "recovered" and "meta/vla_episodes.jsonl" in done["restored"]
    assert tools.verify(root).ok


def test_a_lost_committed_file_is_reported_not_hidden(tmp_path):
    root = tmp_path / "ds"
    make(root)
    (root / "data/chunk-000/file-001.parquet").unlink()
    with pytest.raises(store.DatasetCorruptError, match=r"file-001.parquet \(missing\).*backup"):
        tools.repair(root)
    with pytest.raises(store.DatasetCorruptError):
        Recorder(root, SCHEMA)
    rep = tools.verify(root)
    assert not rep.ok


def test_verify_catches_a_journal_that_disagrees(tmp_path):
    root = tmp_path / "ds"
    make(root)
    c = store.latest_commit(root)
    lines = (c.path / store.JOURNAL).read_text().splitlines()
    first = json.loads(lines[0])
    first["length"] = 99
    (c.path / store.JOURNAL).write_text("\n".join([json.dumps(first)] + lines[1:]) + "\n")
    shutil.copy(c.path / store.JOURNAL, root / "meta" / store.JOURNAL)
    rep = tools.verify(root, decode=False)
    assert rep.problems == ["episode 0: journal says 99 frames, episode table 3"]


def test_verify_reads_each_on_policy_record(tmp_path):
    from vla_robot.data import records

    root = tmp_path / "ds"
    obs = {"images": {"front": np.zeros((8, 8, 3), np.uint8)}, "state": np.zeros(2, np.float32), "instruction": "reach"}
    reply = {"actions": np.zeros((2, 2), np.float32), "tokens": np.arange(4), "logprobs": np.full(4, -1.0, np.float32)}
    with Recorder(root, SCHEMA) as rec:
        for k in range(2):
            rec.start_episode("reach the ball")
            for i in range(2):
                rec.add_frame({"front": np.zeros((24, 32, 3), np.uint8)}, [k, i], [k, i], chunk_id=0, chunk_step=i)
            rec.save_episode("success", records=[records.make_chunk(reply, obs, {"mode": "sample"}, 0, 0.0, {})])
    assert tools.verify(root, decode=False).ok
    path = records.episode_path(root, 1)
    data = bytearray(path.read_bytes())
    data[:8] = b"\xff" * 8  # damaged in place: the size still matches the commit
    path.write_bytes(bytes(data))
    rep = tools.verify(root, decode=False)
    assert len(rep.problems) == 1 and rep.problems[0].startswith("episode 1: ") and "not a readable" in rep.problems[0]


def test_adopt_a_stock_lerobot_dataset_and_refuse_broken_ones(tmp_path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = tmp_path / "stock"
    ds = LeRobotDataset.create("local/stock", fps=10, root=root, features={
        "observation.state": {"dtype": "float32", "shape": (2,), "names": None}})
    for _ in range(2):
        for i in range(3):
            ds.add_frame({"observation.state": np.array([i, i], np.float32), "task": "t"})
        ds.save_episode()
    ds.finalize()
    with pytest.raises(ValueError, match="not written by this recorder.*dataset repair"):
        Recorder(root, SCHEMA)
    assert tools.repair(root)["action"] == "adopted"
    assert store.latest_commit(root).episodes == 2
    assert tools.info(root)["state"] == "clean"
    with pytest.raises(ValueError, match="different schema"):
        Recorder(root, SCHEMA)  # adopted, but its features are not ours: record elsewhere

    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    shutil.rmtree(broken / store.STATE_DIR)
    shutil.rmtree(broken / "meta" / "episodes")
    with pytest.raises(ValueError, match="cannot be adopted"):
        tools.repair(broken)
    with pytest.raises(FileNotFoundError, match="not a LeRobot dataset"):
        tools.info(tmp_path / "nowhere")
