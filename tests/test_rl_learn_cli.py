"""`vla-robot learn` on a real recorded dataset (real Recorder, real on-policy records, the real tiny
policy): it waits for the recorder's folder, serves over Curve, resumes by itself and survives kill -9."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from vla_robot.cli import main
from vla_robot.data import Recorder, RecorderConfig, Schema, records
from vla_robot.data.schema import CONTROL_POLICY
from vla_robot.policy import load_policy

torch.set_num_threads(1)
CAMS = ("front", "wrist")


def record_groups(root: Path, groups: int, group_size: int = 2, chunks: int = 2, seed: int = 0,
                  labels=(1, 0)) -> list[str]:
    """Labelled RL episodes, as the graph records them: the tiny policy (version 0) sampled every chunk
    on the observation it was sent; each chunk executes fully. Returns the episode ids the learner uses."""
    rt = load_policy(preset="tiny", seed=0)
    h, d = rt.cfg.chunk_size, rt.cfg.action_dim
    rng = np.random.default_rng(seed)
    schema = Schema({c: (32, 32) for c in CAMS}, [f"j{i}" for i in range(d)], [f"j{i}" for i in range(d)])
    ids = []
    with Recorder(root, schema, config=RecorderConfig(fps=10, fsync=False, put_timeout_s=30.0)) as rec:
        for g in range(groups):
            for k in range(group_size):
                rec.start_episode("reach the target", start_condition=g)
                obs = [{"images": {c: rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for c in CAMS},
                        "state": rng.uniform(-0.5, 0.5, d).astype(np.float32), "instruction": "reach the target"}
                       for _ in range(chunks)]
                replies = rt.infer(obs, mode="sample", temperature=1.6, return_tokens=True)
                recs = []
                for cid, (o, r) in enumerate(zip(obs, replies)):
                    recs.append(records.make_chunk({**r, "version": 0}, o, {"mode": "sample", "temperature": 1.6}, cid,
                                                   100.0 + cid, rt.metadata))
                    for step in range(h):
                        rec.add_frame(o["images"], o["state"], r["actions"][step], control=CONTROL_POLICY,
                                      policy_version=0, chunk_id=cid, chunk_step=step)
                saved = rec.save_episode("success" if labels[k % len(labels)] else "failure", records=recs)
                ids.append(f"{root.resolve()}#{saved.episode_index}")
    return ids


@pytest.mark.slow
def test_learn_waits_for_the_recorders_folder_and_serves_over_curve(tmp_path, capsys):
    """Started before the recorder, with Curve keys from `vla-robot keygen`: the learner waits, then
    its update reaches a server that admits only listed clients."""
    from vla_robot.serving import PolicyClient, PolicyServer

    keys = tmp_path / "keys"
    assert main(["keygen", str(keys), "--name", "server"]) == 0
    assert main(["keygen", str(keys / "clients"), "--name", "learner"]) == 0
    server = PolicyServer(load_policy(preset="tiny", seed=0), bind="tcp://127.0.0.1:*", weights_bind="tcp://127.0.0.1:*",
                          curve_secret_key=keys / "server.key_secret", curve_authorized_keys=keys / "clients").start()
    try:
        ds = tmp_path / "ds"
        threading.Timer(2.0, record_groups, (ds, 1)).start()  # the recorder starts after the learner
        out = tmp_path / "learner"
        assert main(["learn", "--dataset", str(ds), "--out", str(out), "--set", "group_size=2", "--mode", "rl",
                     "--idle-timeout", "8", "--weights", server.weights_address,
                     "--curve-server-key", str(keys / "server.key"),
                     "--curve-client-key", str(keys / "clients" / "learner.key_secret")]) == 0
        text = capsys.readouterr().out
        assert text.count("waiting for the dataset folder") == 1
        assert "group_size=2" in text and "scheduler must use group_size 2" in text
        assert "version 1 serving" in text
        with PolicyClient(server.address, timeout_s=10, curve_server_key=keys / "server.key",
                          curve_client_key=keys / "clients" / "learner.key_secret") as client:
            assert client.metadata()["version"] == 1
        # a learner whose key the server does not list is refused, and told which keys to check
        assert main(["keygen", str(keys / "other"), "--name", "stranger"]) == 0
        from vla_robot.serving import WeightPublisher
        from vla_robot.serving.client import PolicyTimeout

        with WeightPublisher(server.weights_address, timeout_s=1.0, curve_server_key=keys / "server.key",
                             curve_client_key=keys / "other" / "stranger.key_secret") as stranger:
            with pytest.raises(PolicyTimeout, match="authorized keys"):
                stranger.push({"x": torch.zeros(1)}, 5)
    finally:
        server.stop()
    lines = [json.loads(x) for x in (out / "updates.jsonl").read_text().splitlines()]
    assert [x["version"] for x in lines] == [1]
    r = lines[0]["ratio_acting"]
    assert r["n"] > 0 and r["median_abs"] < 1e-3  # recomputed on what the server saw, at the version that acted


def _learn(ds: Path, out: Path, *extra: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", "vla_robot.cli", "learn", "--dataset", str(ds), "--out", str(out),
            "--set", "group_size=2", "--set", "max_staleness=100", "--mode", "rl", *extra]  # all acted at version 0
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_kill_9_mid_run_loses_and_repeats_no_episode(tmp_path):
    """SIGKILL the learner once it has made an update; the restart (same command) carries on from
    OUT/checkpoint: every labelled episode is used exactly once and the versions continue."""
    ds, out = tmp_path / "ds", tmp_path / "learner"
    groups = 6
    ids = record_groups(ds, groups, chunks=3)
    proc = _learn(ds, out)  # follows the dataset until killed
    log = out / "updates.jsonl"
    deadline = time.monotonic() + 120
    while not (log.is_file() and log.read_text().count("\n") >= 1):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() else "no update"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # mid-way: during the next update, its checkpoint or its log line
    proc.wait()
    done_before = log.read_text().count("\n")
    assert done_before < groups, "the learner finished before the kill; make the dataset bigger"

    again = _learn(ds, out, "--idle-timeout", "3")
    text, _ = again.communicate(timeout=180)
    assert again.returncode == 0, text
    assert "resuming from" in text and "bad episode" not in text, text
    state = torch.load(out / "checkpoint" / "learner_state.pt", weights_only=True)
    assert sorted(state["consumed"]) == sorted(ids)  # none lost
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [x["version"] for x in lines] == list(range(1, groups + 1)), text  # versions carry on, none twice
    assert sum(x["episodes"] for x in lines) == len(ids)  # each episode in exactly one update
    assert state["version"] == groups
