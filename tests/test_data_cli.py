"""`vla-robot record --sim` / `evaluate --sim` end to end on the real graph (twin, policy server,
episode manager, recorder node over rclpy), then the dataset read back with stock LeRobot, and
`vla-robot dataset ...`."""
from __future__ import annotations

import json

import numpy as np
import pytest

from vla_robot.cli import build_parser, main
from vla_robot.data.reader import iter_episodes, read_journal

pytest.importorskip("rclpy")


def run(argv):
    args = build_parser(argv[0]).parse_args(argv)
    from vla_robot.cli import _resolve

    return _resolve(argv[0])[1](args)


@pytest.mark.slow
@pytest.mark.ros
def test_record_sim_with_the_scripted_expert(tmp_path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = tmp_path / "demos" / "dataset"
    rc = run(["record", "--sim", "--episodes", "2", "--root", str(root), "--max-duration", "3", "--timeout", "240"])
    assert rc == 0
    journal = read_journal(root)
    assert len(journal) == 2
    ds = LeRobotDataset("local/demos", root=root, video_backend="pyav")
    assert ds.num_episodes == 2 and ds.num_frames == sum(r.length for r in journal)
    assert ds.features["observation.images.front"]["shape"] == (64, 64, 3)
    for ep in iter_episodes(root):
        f = ep.frames
        assert len(f["frame_index"]) == ep.record.length == ds.meta.episodes[ep.index]["length"]
        assert np.all(f["control"] == 1)  # the expert is the operator: every frame is teleop
        assert np.all(np.diff(f["observation.stamp_ns"]) > 0)  # ROS (sim) stamps, strictly increasing
        label = {"success": 1, "failure": 0}[ep.record.label]
        assert np.all(f["episode.label"] == label)
        assert ep.record.meta["task"] == "reach" and ep.record.start_condition is not None
        assert ep.record.label == ("failure" if ep.record.timeout else "success")
    first = ds[0]
    assert first["observation.images.wrist"].shape == (3, 64, 64)
    # resuming: one more episode lands in the same dataset
    assert run(["record", "--sim", "--episodes", "1", "--root", str(root), "--max-duration", "3"]) == 0
    assert [r.episode_index for r in read_journal(root)] == [0, 1, 2]


@pytest.mark.slow
@pytest.mark.ros
def test_evaluate_sim_writes_a_report_that_matches_the_episodes(tmp_path, capsys):
    root, out = tmp_path / "eval" / "dataset", tmp_path / "report"
    rc = run(["evaluate", "--sim", "--task", "reach,pick_place", "--episodes", "1", "--root", str(root), "--out", str(out),
              "--max-duration", "1.0", "--timeout", "300"])
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    eps = list(iter_episodes(root))
    assert len(eps) == 2
    labels = [e.record.label for e in eps]
    o = rep["overall"]
    assert o["episodes"] == 2 and o["successes"] == labels.count("success") and o["failures"] == labels.count("failure")
    assert o["timeouts"] == sum(e.record.timeout for e in eps)
    assert [e["length"] for e in rep["episodes"]] == [len(e.frames["frame_index"]) for e in eps]
    chunks = sum(int(np.sum(e.frames["policy.latency"] >= 0)) for e in eps)
    assert chunks > 0 and o["latency_ms"]["n"] == chunks
    assert o["latency_ms"]["p50"] < 60_000
    assert sorted(rep["tasks"]) == ["pick_place", "reach"]  # one episode per task, a rate per task
    assert all(t["episodes"] == 1 for t in rep["tasks"].values())
    for e in eps:
        f = e.frames
        assert np.all(f["control"] == 0)  # the policy drove
        executed = f["action.chunk_id"] >= 0  # frames that executed a policy chunk (the first may be a hold)
        assert executed.mean() > 0.5 and np.all(f["policy_version"][executed] >= 0)
        assert np.all(f["action.chunk_id"][f["policy.latency"] >= 0] >= 1)
    assert (out / "report.png").stat().st_size > 5000 and "Success rate" in (out / "report.md").read_text()
    assert "report:" in capsys.readouterr().out

    # dataset tools on what evaluate wrote
    assert main(["dataset", "verify", "--root", str(root), "--json"]) == 0
    verified = json.loads(capsys.readouterr().out)
    assert verified["ok"] and verified["episodes"] == 2
    assert main(["dataset", "info", "--root", str(root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["labels"] == {k: labels.count(k) for k in set(labels)}
    assert main(["dataset", "repair", "--root", str(root)]) == 0
    assert "clean" in capsys.readouterr().out


def test_cli_bad_input(tmp_path, capsys):
    assert run(["record", "--sim", "--episodes", "0", "--root", str(tmp_path / "x")]) == 2
    assert "--episodes must be >= 1" in capsys.readouterr().err
    assert run(["evaluate", "--episodes", "1", "--repo-id", "nouser", "--root", str(tmp_path / "y")]) == 2
    assert "--repo-id must look like user/name" in capsys.readouterr().err
    assert main(["dataset", "info", "--root", str(tmp_path / "missing")]) == 2
    assert "is not a LeRobot dataset" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["dataset", "fix", "--root", str(tmp_path)])
