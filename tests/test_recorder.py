"""The durable recorder on the real lerobot 0.4.4: schema, labels, stamps, RL fields, discard,
dropped-frame accounting, on-policy records, SIGKILL durability in a real subprocess, resume, and the reader."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from vla_robot.data import records, store
from vla_robot.data.config import RecorderConfig
from vla_robot.data.reader import iter_episodes, load_episode, read_journal
from vla_robot.data.recorder import Recorder
from vla_robot.data.schema import CONTROL_POLICY, CONTROL_TELEOP, Schema, count_interventions, executed_mask
from vla_robot.rl.dataset import follow_dataset

H, W = 32, 48
JOINTS = ("j0", "j1", "gripper")
SCHEMA = Schema({"front": (H, W), "wrist": (H, W)}, JOINTS, JOINTS)


def chunk_record(cid: int, tag: float) -> dict:
    """The on-policy record of chunk ``cid`` (2 actions x 3 dims); its state says which episode it is of."""
    obs = {"images": {"front": image(cid), "wrist": image(7 * cid)}, "state": np.array([tag, cid, 0], np.float32),
           "instruction": "pick up the cube"}
    reply = {"actions": np.full((2, 3), cid, np.float32), "tokens": np.arange(6) + 10 * cid,
             "logprobs": np.full(6, -0.5 - cid, np.float32), "version": 3}
    return records.make_chunk(reply, obs, {"mode": "sample", "temperature": 1.6}, cid, 1000.0 + cid,
                              {"model": "tiny", "dtype": "float32", "version": 3})


def image(value: int) -> np.ndarray:
    return np.full((H, W, 3), value % 256, np.uint8)


def record(rec: Recorder, n: int, label="success", ep_tag: float = 0.0, task="pick up the cube", teleop_from=None):
    """An episode whose state encodes (episode tag, frame index) so it can be checked after reload."""
    rec.start_episode(task, start_condition=f"start-{int(ep_tag)}")
    for i in range(n):
        control = CONTROL_TELEOP if teleop_from is not None and i >= teleop_from else CONTROL_POLICY
        kw = {}
        if i % 2 == 0 and control == CONTROL_POLICY:
            kw = dict(latency=0.02 + 0.001 * i)
        ok = rec.add_frame(
            {"front": image(10 * i), "wrist": image(255 - 10 * i)},
            [ep_tag, i, 0.5], [ep_tag, i, 1.0], action_policy=[0, 0, i],
            stamp=1000.0 + ep_tag * 100 + i / 30, action_stamp=1000.0 + ep_tag * 100 + i / 30 + 0.004,
            control=control, policy_version=3 if control == CONTROL_POLICY else -1,
            chunk_id=i // 2 if control == CONTROL_POLICY else -1, chunk_step=i % 2 if control == CONTROL_POLICY else -1,
            **kw,
        )
        assert ok
    n_chunks = (teleop_from if teleop_from is not None else n) // 2 + 1
    return rec.save_episode(label, records=[chunk_record(c, ep_tag) for c in range(n_chunks)])


def listing(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and store.STATE_DIR not in p.parts}


def stock(root: Path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset("local/vla_robot", root=root, video_backend="pyav")


def test_saved_episodes_reload_with_stock_lerobot(tmp_path):
    root = tmp_path / "ds"
    with Recorder(root, SCHEMA, config=RecorderConfig(fps=30)) as rec:
        r0 = record(rec, 6, "success", ep_tag=0)
        r1 = record(rec, 4, "failure", ep_tag=1, teleop_from=2)
        r2 = record(rec, 5, None, ep_tag=2, task="open the drawer")
        assert rec.num_episodes == 3
    assert (r0.episode_index, r1.episode_index, r2.episode_index) == (0, 1, 2)
    assert (r1.interventions, r1.intervention_frames) == (1, 2)
    assert r0.policy_versions == [3] and r0.latency_s == pytest.approx([0.02, 0.022, 0.024])

    ds = stock(root)
    assert ds.num_episodes == 3 and ds.num_frames == 15
    assert set(SCHEMA.features()) <= set(ds.features)
    lengths = [ds.meta.episodes[i]["length"] for i in range(3)]
    assert lengths == [6, 4, 5]
    start = 0
    for ep, (n, label, tag) in enumerate([(6, 1, 0), (4, 0, 1), (5, -1, 2)]):
        for i in (0, n - 1):
            item = ds[start + i]
            assert int(item["episode_index"]) == ep and int(item["frame_index"]) == i
            assert item["observation.state"].tolist() == pytest.approx([tag, i, 0.5])
            assert int(item["episode.label"]) == label
            assert int(item["observation.stamp_ns"]) == round((1000.0 + tag * 100 + i / 30) * 1e9)
            assert int(item["action.stamp_ns"]) - int(item["observation.stamp_ns"]) == pytest.approx(4e6, abs=2)
            assert bool(item["next.done"]) == (i == n - 1)
            assert float(item["next.reward"]) == (1.0 if (label == 1 and i == n - 1) else 0.0)
            front = item["observation.images.front"]  # float CHW in [0, 1]
            assert front.shape == (3, H, W) and abs(float(front.mean()) * 255 - 10 * i) < 6
        start += n
    assert ds[6 + 3]["task"] == "pick up the cube" and ds[10]["task"] == "open the drawer"


def test_on_policy_records_are_saved_losslessly_with_their_episode(tmp_path):
    root = tmp_path / "ds"
    with Recorder(root, SCHEMA) as rec:
        r = record(rec, 5, "failure", ep_tag=0, teleop_from=3)
        rec.start_episode("pick")
        rec.add_frame({"front": image(1), "wrist": image(1)}, [0, 0, 0], [0, 0, 0])
        rec.save_episode("success")  # no records (evaluate / record graphs): no file
        with pytest.raises(ValueError, match="'tokens' must be a non-empty 1-D int64"):
            rec.start_episode("pick")
            rec.add_frame({"front": image(1), "wrist": image(1)}, [0, 0, 0], [0, 0, 0])
            rec.save_episode("success", records=[{**chunk_record(0, 0), "tokens": np.zeros(0, np.int64)}])
        rec.discard_episode()
    assert r.meta["onpolicy_chunks"] == 2 and r.meta["chunks_without_record"] == 0
    assert sorted(p.name for p in (root / "rl").iterdir()) == ["episode_000000.msgpack"]
    file = records.read_episode(records.episode_path(root, 0))
    assert file["episode_index"] == 0 and file["length"] == 5 and [c["chunk_id"] for c in file["chunks"]] == [0, 1]
    want = chunk_record(1, 0)
    got = file["chunks"][1]
    for cam in ("front", "wrist"):
        assert np.array_equal(got["observation"]["images"][cam], want["observation"]["images"][cam])
    assert got["observation"]["state"].dtype == np.float32 and got["observation"]["state"].tolist() == [0, 1, 0]
    assert got["tokens"].tolist() == list(range(10, 16)) and got["logprobs"].tolist() == [-1.5] * 6
    assert got["options"] == {"mode": "sample", "temperature": 1.6, "seed": None}
    assert got["served_by"] == {"model": "tiny", "dtype": "float32"} and got["version"] == 3
    ep = load_episode(root, 0)
    f = ep.frames
    assert f["control"].tolist() == [0, 0, 0, 1, 1]
    assert "action.tokens" not in f  # one record of what was sampled, not two
    imgs = ep.images([0, 4], cameras=["wrist"])
    assert imgs["wrist"].shape == (2, H, W, 3)
    assert abs(float(imgs["wrist"][1].mean()) - (255 - 40)) < 6


def test_executed_mask_and_interventions_pure():
    # chunk 0: both steps by the policy; chunk 1: step 0, then teleop; chunk 5: never executed
    m = executed_mask(chunk_id=[0, 0, 1, -1, 1], chunk_step=[0, 1, 0, -1, 1], control=[0, 0, 0, 1, 1],
                      chunk_ids=[0, 1, 5], chunk_size=2, action_dim=2)
    assert m.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]]
    assert count_interventions([0, 1, 1, 0, 1, 0]) == (2, 3)
    assert count_interventions([1, 1, 0]) == (0, 2)  # teleop from the start is not a takeover
    with pytest.raises(ValueError, match="one entry per frame"):
        executed_mask([0], [0, 1], [0], chunk_ids=[0], chunk_size=2, action_dim=2)


def test_discard_and_rerecord_leave_no_trace(tmp_path):
    root = tmp_path / "ds"
    with Recorder(root, SCHEMA) as rec:
        record(rec, 3, "success", ep_tag=0)
        before = listing(root)
        rec.start_episode("pick up the cube")
        for i in range(4):
            rec.add_frame({"front": image(99), "wrist": image(99)}, [7, 7, 7], [7, 7, 7])
        rec.flush()
        rec.discard_episode()
        assert listing(root) == before
        stage = store.stage_dir(root)
        assert not list(stage.glob("tmp*")) and not (stage / "images").exists()  # no encoder leftovers either
        rec.start_episode("pick up the cube")
        rec.discard_episode()  # discarding an empty episode is fine too
        assert listing(root) == before
        record(rec, 2, "failure", ep_tag=1)  # the re-recorded episode takes index 1
    ds = stock(root)
    assert ds.num_episodes == 2 and ds.num_frames == 5
    states = np.stack([ds[i]["observation.state"].numpy() for i in range(5)])
    assert not np.any(states == 7)
    assert [r.label for r in read_journal(root)] == ["success", "failure"]


def test_dropped_frames_are_counted_never_silent(tmp_path):
    root = tmp_path / "ds"
    big = Schema({"front": (240, 320)}, JOINTS, JOINTS)
    cfg = RecorderConfig(fps=2, max_pending_s=1.0)  # room for 2 frames: a burst must overflow
    with Recorder(root, big, config=cfg) as rec:
        rec.start_episode("push")
        img = np.random.default_rng(0).integers(0, 255, (240, 320, 3), np.uint8)
        results = [rec.add_frame({"front": img}, [0, i, 0], [0, i, 0], stamp=float(i)) for i in range(40)]
        accepted = sum(results)
        assert rec.stats.frames_dropped == rec.stats.episode_dropped == 40 - accepted
        assert 40 - accepted > 0, "a 40-frame burst into a 2-frame queue must drop"
        r = rec.save_episode("success")
    assert r.length == accepted and r.dropped_frames == 40 - accepted
    ep = load_episode(root, 0)
    kept = [i for i, ok in enumerate(results) if ok]
    assert ep.frames["observation.stamp_ns"].tolist() == [i * 10**9 for i in kept]  # the stamps show the gaps


def test_bad_input_is_rejected_clearly(tmp_path):
    root = tmp_path / "ds"
    with Recorder(root, SCHEMA) as rec:
        good = {"front": image(0), "wrist": image(0)}
        with pytest.raises(RuntimeError, match="start_episode"):
            rec.add_frame(good, [0, 0, 0], [0, 0, 0])
        with pytest.raises(ValueError, match="task"):
            rec.start_episode("  ")
        rec.start_episode("pick")
        with pytest.raises(ValueError, match=r"image 'front' must be uint8 of shape \(32, 48, 3\)"):
            rec.add_frame({"front": np.zeros((48, 32, 3), np.uint8), "wrist": image(0)}, [0, 0, 0], [0, 0, 0])
        with pytest.raises(ValueError, match="exactly the cameras"):
            rec.add_frame({"front": image(0)}, [0, 0, 0], [0, 0, 0])
        with pytest.raises(ValueError, match=r"state must have shape \(3,\)"):
            rec.add_frame(good, [0, 0], [0, 0, 0])
        with pytest.raises(ValueError, match="action must be finite"):
            rec.add_frame(good, [0, 0, 0], [0, np.nan, 0])
        with pytest.raises(ValueError, match="control must be 0"):
            rec.add_frame(good, [0, 0, 0], [0, 0, 0], control=2)
        with pytest.raises(ValueError, match="empty episode"):
            rec.save_episode("success")
        rec.add_frame(good, [0, 0, 0], [0, 0, 0])
        with pytest.raises(ValueError, match="label must be one of success, failure, unlabelled"):
            rec.save_episode("great")
        with pytest.raises(RuntimeError, match="already open"):
            rec.start_episode("pick")
        rec.save_episode(True)
    with pytest.raises(ValueError, match="different schema"):
        Recorder(root, Schema({"front": (H, W)}, JOINTS, JOINTS))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a LeRobot dataset"):
        Recorder(tmp_path / "other", SCHEMA)
    with pytest.raises(ValueError, match="vcodec"):
        Recorder(tmp_path / "x", SCHEMA, config=RecorderConfig(vcodec="mjpeg"))


def test_reader_follows_episodes_as_they_are_saved(tmp_path):
    root = tmp_path / "ds"
    rec = Recorder(root, SCHEMA)
    seen: list[tuple[int, str]] = []

    def learner():
        for ep in iter_episodes(root, since=0, labelled_only=True, follow=True, poll_s=0.05, timeout=20):
            seen.append((ep.index, ep.record.label))
            assert len(ep.frames["frame_index"]) == ep.record.length
            if ep.index >= 2:
                return

    t = threading.Thread(target=learner)
    t.start()
    try:
        record(rec, 3, "success", ep_tag=0)
        record(rec, 2, None, ep_tag=1)  # unlabelled: skipped by labelled_only
        record(rec, 2, "failure", ep_tag=2)
        t.join(30)
    finally:
        rec.close()
    assert not t.is_alive()
    assert seen == [(0, "success"), (2, "failure")]
    assert [e.index for e in iter_episodes(root, since=1, with_frames=False)] == [1, 2]


def _child(root: str, kill_at: str, conn) -> None:
    """Runs in a forked process (lerobot already imported): save one episode, then get killed at
    ``kill_at`` in the next one."""
    from vla_robot.data import store as st

    rec = Recorder(root, SCHEMA)
    start = rec.num_episodes

    def die(*a, **k):
        os.kill(os.getpid(), signal.SIGKILL)

    def episode(n, tag):
        rec.start_episode("pick up the cube")
        for i in range(n):
            rec.add_frame({"front": image(i), "wrist": image(0)}, [tag, i, 0], [tag, i, 0], stamp=float(i),
                          chunk_id=i // 2, chunk_step=i % 2)

    episode(4, start)
    rec.save_episode("success", records=[chunk_record(0, start), chunk_record(1, start)])
    rec.flush()  # the writer has reopened LeRobot for the next episode
    conn.send("saved")
    if kill_at == "mid_episode":
        conn.send("recording")
        episode(1_000_000, 99)  # the parent kills us while this episode is open
    if kill_at == "in_lerobot_save":  # LeRobot has rewritten info/stats in its stage, no more
        orig = rec._ds.meta.save_episode

        def half(*a, **kw):
            orig(*a, **kw)
            from lerobot.datasets.utils import write_info

            write_info(rec._ds.meta.info, rec._ds.meta.root)
            die()

        rec._ds.meta.save_episode = half
    if kill_at == "mid_publish":  # every new file published except info.json
        orig_copy = st._copy_atomic
        st._copy_atomic = lambda src, dst, fsync: die() if dst.name == "info.json" else orig_copy(src, dst, fsync)
    if kill_at == "before_commit":  # published, commit snapshot not written
        st.commit = die
    episode(4, start + 1)
    rec.save_episode("success", records=[chunk_record(0, start + 1), chunk_record(1, start + 1)])
    conn.send("not reached")


@pytest.mark.slow
def test_sigkill_keeps_every_saved_episode_and_recording_resumes(tmp_path):
    import multiprocessing as mp

    import lerobot.datasets.lerobot_dataset  # noqa: F401 - imported once here, inherited by each fork

    ctx = mp.get_context("fork")  # a real separate process, without paying lerobot's import again
    root = tmp_path / "ds"
    saved = 0
    # each run saves one episode, then is killed at a different moment of the next one; after the kill
    # the published folder must read with stock LeRobot as-is (no recovery step run on it)
    for kill_at, survives in (("mid_episode", 0), ("in_lerobot_save", 0), ("mid_publish", 0), ("before_commit", 1)):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_child, args=(str(root), kill_at, child), daemon=True)
        proc.start()
        try:
            assert parent.poll(120) and parent.recv() == "saved"
            if kill_at == "mid_episode":
                assert parent.poll(30) and parent.recv() == "recording"
                time.sleep(0.5)  # frames of the open episode are being encoded
                os.kill(proc.pid, signal.SIGKILL)
            proc.join(120)
        finally:
            if proc.is_alive():
                proc.kill()
        assert proc.exitcode == -signal.SIGKILL, (kill_at, proc.exitcode)
        assert not parent.poll(0.1), kill_at  # "not reached" was never sent
        saved += 1 + survives
        ds = stock(root)
        assert ds.num_episodes == saved, kill_at
        assert ds.num_frames == 4 * saved
        assert [int(ds[4 * e]["observation.state"][0]) for e in range(saved)] == list(range(saved))
        assert [int(ds[4 * e + 3]["frame_index"]) for e in range(saved)] == [3] * saved
        # every committed episode has its own complete record; a torn episode's record (published before
        # the kill, mid_publish) is never read as an episode's (before_commit: seen once rolled forward)
        eps = list(follow_dataset(root, 3, follow=False))
        assert [e.steps[0].observation["state"][0] for e in eps] == list(range(saved - survives)), kill_at
        assert all(len(e.steps) == 2 and e.steps[1].executed.all() for e in eps)
    # recording resumes into the same dataset (the open rolls the folder back/forward first)
    with Recorder(root, SCHEMA) as rec:
        assert rec.num_episodes == saved
        assert rec.recovery is not None and rec.recovery.rolled_forward
        r = record(rec, 3, "failure", ep_tag=7)
    assert r.episode_index == saved
    ds = stock(root)
    assert ds.num_episodes == saved + 1 and ds.num_frames == 4 * saved + 3
    assert float(ds[4 * saved]["observation.state"][0]) == 7.0
    assert records.read_episode(records.episode_path(root, saved))["chunks"][0]["observation"]["state"][0] == 7.0
    assert [e.label for e in read_journal(root)] == ["success"] * saved + ["failure"]
    assert store.recover(root, dry_run=True).changed is False
    assert not (root / "images").exists() and not list(root.glob("tmp*"))


def _first_episode_child(root: str) -> None:
    from vla_robot.data import store as st

    rec = Recorder(root, SCHEMA)
    st.commit = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)  # published, never committed
    rec.start_episode("pick up the cube")
    for i in range(3):
        rec.add_frame({"front": image(i), "wrist": image(0)}, [0, i, 0], [0, i, 0])
    rec.save_episode("success")


def test_sigkill_before_the_first_commit_keeps_the_published_episode(tmp_path):
    import multiprocessing as mp

    import lerobot.datasets.lerobot_dataset  # noqa: F401 - inherited by the fork

    root = tmp_path / "ds"
    proc = mp.get_context("fork").Process(target=_first_episode_child, args=(str(root),), daemon=True)
    proc.start()
    proc.join(120)
    assert proc.exitcode == -signal.SIGKILL
    assert store.latest_commit(root) is None and stock(root).num_episodes == 1
    with Recorder(root, SCHEMA) as rec:
        assert rec.recovery.rolled_forward and rec.num_episodes == 1
        record(rec, 2, "failure", ep_tag=1)
    assert stock(root).num_episodes == 2 and [r.label for r in read_journal(root)] == ["success", "failure"]
