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
    cfg = RLFinetuneConfig(demos=2, sft_steps=3, sft_batch=4, group_size=2, groups_per_round=1, rounds=2, cubes=1,
                           eval_episodes=2, periodic_eval=2, eval_every=1, episode_s=1.5, threads=1, progress=False,
                           graph_episodes=3, mode="hybrid")  # hybrid: every group trains, so every round updates
    lines = []
    report = demo.run(cfg, tmp_path, log=lines.append)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["success_before"] == report["success_before"]
    assert saved["eval_episodes"] == 2 and len(saved["rounds"]) == 2
    r = saved["rounds"][0]
    assert r["episodes"] == 2 and 0 <= r["successes"] <= 2 and r["ci95"][0] <= r["success"] <= r["ci95"][1]
    for key in ("success_before", "success_after"):
        assert saved[key] in (0.0, 0.5, 1.0)  # fractions of 2 episodes
    other = saved["other_eval"]
    assert other["mode"] == "greedy" and other["before"]["episodes"] == other["after"]["episodes"] == 2
    assert (tmp_path / "rl_finetune.png").stat().st_size > 1000
    assert any("policy served at tcp://127.0.0.1:" in x for x in lines)
    # each round's rollouts were acted by the version its update then replaced, served over ZMQ
    assert [r["version"] for r in saved["rounds"]] == [1, 2] and [r["acted_by"] for r in saved["rounds"]] == [[0], [1]]
    # the curve by labelled episodes: an evaluation before RL and after every round
    assert [c["labelled_episodes"] for c in saved["periodic_eval"]] == [0, 2, 4] == [0] + [r["labelled_episodes"]
                                                                                         for r in saved["rounds"]]
    assert [c["version"] for c in saved["periodic_eval"]] == [0, 1, 2] and saved["labelled_episodes"] == 4
    assert set(saved["labelled_episodes_to"]) == {"+10", "+20"}
    # every episode ran through the robot's controller with config/rl_finetune.yaml's control
    assert saved["control"]["executor"]["kind"] == "async" and saved["control"]["safety"]["velocity_scale"] == 0.5
    assert saved["control_report"].get("hold: waiting for the first chunk", 0) >= 4  # one per rollout at least
    assert 0 < saved["clamped_before"] <= 1
    # the fine-tuned policy ran through the ROS graph with the same control; the recorder's dataset
    # holds those episodes with their tokens, and the learner reads every one of them back
    graph = saved["graph"]
    assert graph["episodes"] == graph["saved"] == graph["learner_episodes"] == 3
    assert graph["policy_versions"] == [saved["policy_version"]] and graph["learner_tokens"] > 0
    assert graph["control"] == {"executor": "async", "velocity_scale": 0.5, "acceleration_scale": 0.5}
    assert isinstance(saved["graph_agrees_with_eval"], bool)
    from vla_robot.data import reader

    assert len(reader.read_journal(tmp_path / "dataset")) == 3
    ckpt = load_policy(checkpoint=str(tmp_path / "checkpoint"))  # the learner's final checkpoint loads back
    assert ckpt.metadata["action_dim"] == 6


def control(kind="async", scale=0.5):
    from vla_robot.control import ControlConfig
    from vla_robot.control.config import ExecutorConfig, SafetyConfig

    return ControlConfig(executor=ExecutorConfig(kind=kind, request_threshold=4, blend_steps=0),
                         safety=SafetyConfig(velocity_scale=scale, acceleration_scale=scale))


def test_seeded_evaluation_replays_the_same_episodes_and_groups_still_differ():
    from vla_robot.rl.rollout import rollout
    from vla_robot.twin import make_env

    runtime = load_policy(preset="tiny", seed=0)
    envs = [make_env("reach", cubes=1, seed=i, image_size=(32, 32), episode_s=0.6) for i in range(2)]
    try:
        def run(**kw):
            eps = rollout(envs, runtime, [7, 7], control(), mode="sample", temperature=1.0, **kw)
            return [np.concatenate([s.tokens for s in e.steps]) for e in eps], [(e.label, e.length) for e in eps]

        (a, la), (b, lb), (c, _) = run(sample_seed=3), run(sample_seed=3), run(sample_seed=4)
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
        assert la == lb and not np.array_equal(a[0], c[0])
        np.testing.assert_array_equal(a[0], a[1])  # same start, same seeds: the same episode in both envs
        free, _ = run()  # a GRPO group: no seed, its members explore differently
        assert not np.array_equal(free[0], free[1])
    finally:
        for e in envs:
            e.close()


class Jumpy:
    """A Policy whose targets alternate between two far-apart poses, far beyond the velocity limit."""

    def __init__(self, far, h=8):
        self.far, self.h, self.calls = far, h, []

    def infer(self, observations, **options):
        self.calls.append(len(observations))
        d = len(self.far[0])
        return [{"actions": np.stack([self.far[i % 2] for i in range(self.h)]).astype(np.float32), "version": 3,
                 "tokens": np.arange(self.h * d), "logprobs": np.full(self.h * d, -1.0, np.float32)}
                for _ in observations]


def test_twin_rollouts_run_the_robots_controller_and_record_what_it_executed():
    """Through the ChunkController of policy_node: the twin only ever gets commands within the safety
    limits, policy calls are batched across the twins, the first tick waits for the first chunk (it
    arrives one tick after it was asked for, as a fast server's does), and the learner steps mark as
    executed exactly the actions the controller sent."""
    from vla_robot.rl.rollout import rollout
    from vla_robot.twin import make_env

    envs = [make_env("reach", cubes=1, seed=i, image_size=(32, 32), episode_s=0.6) for i in range(3)]
    robot = envs[0].robot
    far = [robot.lower + 0.1 * (robot.upper - robot.lower), robot.upper - 0.1 * (robot.upper - robot.lower)]
    sent = []
    advance = envs[0].advance
    envs[0].advance = lambda q: (sent.append(np.asarray(q, float)), advance(q))[-1]
    try:
        for scale in (1.0, 0.5):
            sent.clear()
            policy = Jumpy(far)
            eps = rollout(envs, policy, [3, 4, 5], control("async", scale))
            steps = np.abs(np.diff(np.stack(sent), axis=0))
            assert all(e.length == 18 for e in eps) and len(sent) == 18
            assert (steps <= scale * robot.max_velocity * envs[0].control_dt + 1e-9).all()
            assert all(0 < e.clamped <= e.length for e in eps)
            assert set(policy.calls) == {3}  # one batched call for the three twins whenever they ask
            ep = eps[0]
            executed = sum(int(s.executed.sum()) for s in ep.steps) // len(far[0])
            assert executed == ep.length - 1  # every tick but the first (waiting for the first chunk)
            assert all(not s.executed[: len(far[0])].any() for s in ep.steps)  # action 0 is past on arrival
            assert ep.version == 3 and all(s.version == 3 and s.temperature == 1.0 for s in ep.steps)
    finally:
        for e in envs:
            e.close()


def test_rollout_rejects_a_control_rate_the_twin_does_not_run_at():
    from vla_robot.rl.rollout import rollout
    from vla_robot.twin import make_env

    env = make_env("reach", cubes=1, seed=0, image_size=(32, 32), episode_s=0.6)
    bad = control()
    bad.control_hz = 50.0
    try:
        with pytest.raises(ValueError, match="twin runs at 30 Hz but control_hz is 50"):
            rollout([env], Jumpy([env.robot.home, env.robot.home]), [1], bad)
        with pytest.raises(ValueError, match="one start state per env"):
            rollout([env], Jumpy([env.robot.home, env.robot.home]), [1, 2], control())
    finally:
        env.close()


def test_cli_rejects_bad_input(tmp_path, capsys):
    assert main(["rl-finetune", "--out", str(tmp_path)]) == 2
    assert "add --sim" in capsys.readouterr().err
    assert main(["rl-finetune", "--sim", "--eval-episodes", "0", "--out", str(tmp_path)]) == 2
    assert "eval_episodes" in capsys.readouterr().err
    assert main(["rl-finetune", "--sim", "--cubes", "4", "--out", str(tmp_path)]) == 2
    assert "cubes must be 1..3" in capsys.readouterr().err
    assert main(["rl-finetune", "--sim", "--eval-every", "0", "--out", str(tmp_path)]) == 2
    assert "eval_every must be >= 1" in capsys.readouterr().err
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


def test_episodes_to_a_gain_are_read_from_the_periodic_evaluation():
    curve = [{"labelled_episodes": n, "success": s} for n, s in ((0, 0.18), (288, 0.30), (576, 0.27), (864, 0.38))]
    assert demo.first_reaching(curve, 0.18, 10) == 288
    assert demo.first_reaching(curve, 0.18, 20) == 864  # 0.38 - 0.18 is +20 exactly, whatever the float error
    assert demo.first_reaching(curve, 0.18, 30) is None  # never reached: None, not the last point
