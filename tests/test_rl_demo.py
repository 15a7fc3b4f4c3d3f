"""`vla-robot rl-finetune --sim` end to end at toy sizes (real twin, real tiny policy, real server), and the CLI."""
import json

import numpy as np
import pytest
import torch

from vla_robot.cli import main
from vla_robot.policy import load_policy
from vla_robot.rl import demo
from vla_robot.rl.config import RLFinetuneConfig

torch.set_num_threads(1)


@pytest.mark.slow
def test_demo_pipeline_writes_a_report_counted_from_its_episodes(tmp_path):
    cfg = RLFinetuneConfig(demos=2, sft_steps=3, sft_batch=4, group_size=2, groups_per_round=1, rounds=1, cubes=1,
                           eval_episodes=2, episode_s=0.6, threads=1, progress=False, served=True, graph_episodes=3,
                           safety=True, velocity_scale=0.8, acceleration_scale=0.6)
    lines = []
    report = demo.run(cfg, tmp_path, log=lines.append)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["success_before"] == report["success_before"]
    assert saved["eval_episodes"] == 2 and len(saved["rounds"]) == 1
    r = saved["rounds"][0]
    assert r["episodes"] == 2 and 0 <= r["successes"] <= 2 and r["ci95"][0] <= r["success"] <= r["ci95"][1]
    for key in ("success_before", "success_after"):
        assert saved[key] in (0.0, 0.5, 1.0)  # fractions of 2 episodes
    other = saved["other_eval"]
    assert other["mode"] == "greedy" and other["before"]["episodes"] == other["after"]["episodes"] == 2
    assert (tmp_path / "rl_finetune.png").stat().st_size > 1000
    assert saved["served"] and any("policy served at tcp://127.0.0.1:" in x for x in lines)
    # the fine-tuned policy ran through the ROS graph; the recorder's dataset holds those episodes with
    # their tokens, and the learner reads every one of them back
    graph = saved["graph"]
    assert graph["episodes"] == graph["saved"] == graph["learner_episodes"] == 3
    assert graph["policy_versions"] == [saved["policy_version"]] and graph["learner_tokens"] > 0
    assert 0 <= graph["successes"] <= 3 and any("ROS graph:" in x for x in lines)
    assert graph["control_ticks"] > 0 and all(v > 0 for v in graph["safety_clamps"].values())
    # the graph executed as the twin rollouts did: whole chunks, within the same safety limits
    assert graph["control"] == {"executor": "open_loop", "velocity_scale": 0.8, "acceleration_scale": 0.6}
    assert all(0 <= r["clamped"] <= 1 for r in saved["rounds"]) and saved["rounds"][0]["clamped"] > 0
    from vla_robot.data import reader

    assert len(reader.read_journal(tmp_path / "dataset")) == 3
    # the learner's final checkpoint loads back as a policy with its version
    ckpt = load_policy(checkpoint=str(tmp_path / "checkpoint"))
    assert ckpt.metadata["action_dim"] == 6
    # a second run into the same folder: the recorder keeps the first run's episodes and appends; the
    # report counts this run's alone
    cfg.graph_episodes, cfg.extra_eval_mode = 2, ""
    again = demo.run(cfg, tmp_path, log=lines.append)["graph"]
    assert again["dataset_earlier_episodes"] == 3 and again["episodes"] == again["learner_episodes"] == 2
    assert len(reader.read_journal(tmp_path / "dataset")) == 5


def test_learner_updates_while_the_next_round_rolls_out(tmp_path):
    """Served, round r+1 rolls out (with the version before) while the learner trains on round r."""
    cfg = RLFinetuneConfig(demos=2, sft_steps=3, sft_batch=4, group_size=2, groups_per_round=1, rounds=3, cubes=1,
                           eval_episodes=2, episode_s=0.6, threads=1, progress=False, served=True, graph_episodes=0,
                           extra_eval_mode="", mode="hybrid")  # hybrid: every group trains, so every round updates
    report = demo.run(cfg, tmp_path, log=lambda _: None)
    rounds = report["rounds"]
    assert [r["version"] for r in rounds] == [1, 2, 3]
    # round r rolls out while update r-1 runs: its episodes were acted by version r-2 (or r-1, once
    # that update has been hot-swapped in mid-round), never by anything older or newer
    assert rounds[0]["acted_by"] == [0]
    for r in rounds[1:]:
        assert set(r["acted_by"]) <= {r["round"] - 2, r["round"] - 1}, r
    assert report["policy_version"] == 3 and report["versions_in_eval_after"] == [3]


def test_seeded_evaluation_replays_the_same_episodes_and_groups_still_differ():
    from vla_robot.rl.rollout import rollout
    from vla_robot.twin import make_env

    runtime = load_policy(preset="tiny", seed=0)
    policy = demo.local_policy(runtime)
    envs = [make_env("reach", cubes=1, seed=i, image_size=(32, 32), episode_s=0.6) for i in range(2)]
    try:
        def run(**kw):
            eps = rollout(envs, policy, [7, 7], mode="sample", temperature=1.0, **kw)
            return [np.concatenate([s.tokens for s in e.steps]) for e in eps], [(e.label, e.length) for e in eps]

        (a, la), (b, lb), (c, _) = run(sample_seed=3), run(sample_seed=3), run(sample_seed=4)
        assert len(a[0]) == 3 * 48  # 0.6 s at 30 Hz: three chunks of 8 x 6 tokens
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
        assert la == lb and not np.array_equal(a[0], c[0])
        np.testing.assert_array_equal(a[0], a[1])  # same start, same seeds: the same episode in both envs
        free, _ = run()  # a GRPO group: no seed, its members explore differently
        assert not np.array_equal(free[0], free[1])
    finally:
        for e in envs:
            e.close()


def test_rollouts_through_the_safety_filter_execute_only_what_the_arm_may():
    """A policy whose targets jump far further per tick than the arm's velocity limit allows: with the
    control core's SafetyFilter in the rollout the twin only ever gets commands within the limits (as
    the robot behind policy_node does) and the episode counts the clamped steps; without it the twin
    gets the raw targets."""
    from vla_robot.control import SafetyConfig
    from vla_robot.rl.rollout import rollout
    from vla_robot.twin import make_env

    env = make_env("reach", cubes=1, seed=0, image_size=(32, 32), episode_s=0.6)
    robot = env.robot
    far = [robot.lower + 0.1 * (robot.upper - robot.lower), robot.upper - 0.1 * (robot.upper - robot.lower)]

    def jumpy(observations, mode, temperature, seeds=None):  # alternates between two far-apart poses
        return [{"actions": np.stack([far[i % 2] for i in range(8)]).astype(np.float32), "version": 0}
                for _ in observations]

    sent = []
    advance = env.advance
    env.advance = lambda q: (sent.append(np.asarray(q, float)), advance(q))[-1]
    try:
        for scale in (1.0, 0.5):
            sent.clear()
            (ep,) = rollout([env], jumpy, [3], safety=SafetyConfig(velocity_scale=scale), keep_steps=False)
            steps = np.abs(np.diff(np.stack(sent), axis=0))
            assert ep.length == len(sent) == 18 and 0 < ep.clamped <= ep.length
            assert (steps <= scale * robot.max_velocity * env.control_dt + 1e-9).all()
        sent.clear()
        (raw,) = rollout([env], jumpy, [3], keep_steps=False)
        assert raw.clamped == 0
        np.testing.assert_allclose(sent[1], far[1])  # the raw target, a jump no arm makes in one tick
    finally:
        env.close()


def test_cli_rejects_bad_input(tmp_path, capsys):
    assert main(["rl-finetune", "--out", str(tmp_path)]) == 2
    assert "add --sim" in capsys.readouterr().err
    assert main(["rl-finetune", "--sim", "--eval-episodes", "0", "--out", str(tmp_path)]) == 2
    assert "eval_episodes" in capsys.readouterr().err
    assert main(["rl-finetune", "--sim", "--cubes", "4", "--out", str(tmp_path)]) == 2
    assert "cubes must be 1..3" in capsys.readouterr().err
    assert main(["rl-finetune", "--sim", "--velocity-scale", "1.5", "--out", str(tmp_path)]) == 2
    assert "velocity_scale is a fraction of the robot's limit and must be <= 1, got 1.5" in capsys.readouterr().err
    with pytest.raises(ValueError, match="task must be one of reach, pick_place, got 'dance'"):
        RLFinetuneConfig(task="dance").validate()
    with pytest.raises(ValueError, match=r"cubes must be 1..2 \(the pick_place task's red, blue\), got 3"):
        RLFinetuneConfig(task="pick_place", cubes=3).validate()
    # started before the recorder: waits for its folder (here until the idle timeout), never "does not exist"
    assert main(["learn", "--dataset", str(tmp_path / "missing"), "--out", str(tmp_path / "l"), "--idle-timeout", "0.5"]) == 0
    assert "waiting for the dataset folder" in capsys.readouterr().out
    assert main(["learn", "--dataset", str(tmp_path), "--set", "group_size=1"]) == 2
    assert "group_size must be >= 2" in capsys.readouterr().err
    assert main(["learn", "--dataset", str(tmp_path), "--set", "nonsense"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
