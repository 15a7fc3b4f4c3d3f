"""The RL learner on the real tiny OpenVLA-OFT policy: updates, staleness, hybrid SFT, resume, hot-swap."""
import numpy as np
import pytest
import torch

from vla_robot.data import schema as S
from vla_robot.policy import load_policy
from vla_robot.rl.config import preset
from vla_robot.rl.episodes import Episode, Step
from vla_robot.rl.grpo import RolloutBatch, grpo_update
from vla_robot.rl.learner import Learner

torch.set_num_threads(1)


def observation(rng: np.random.Generator) -> dict:
    img = lambda: rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)  # noqa: E731
    return {"images": {"front": img(), "wrist": img()}, "state": rng.uniform(-0.5, 0.5, 6).astype(np.float32),
            "instruction": "reach the target"}


def make_group(runtime, start, labels, rng, version=0, steps=2, gen=None):
    """Episodes the policy really sampled (tokens, behaviour log-probs) on random observations."""
    h, d = runtime.cfg.chunk_size, runtime.cfg.action_dim
    out = []
    for label in labels:
        obs = [observation(rng) for _ in range(steps)]
        res = runtime.infer(obs, mode="sample", temperature=1.6, return_tokens=True, generator=gen)
        # as recorded: every chunk ran whole but the last, which ran 3 actions before the episode ended
        ran = [h] * (steps - 1) + [3]
        executed = S.executed_mask(np.repeat(np.arange(steps), ran), np.concatenate([np.arange(n) for n in ran]),
                                   np.full(sum(ran), S.CONTROL_POLICY), np.arange(steps), h, d)
        st = [Step(o, r["tokens"], r["logprobs"], m) for o, r, m in zip(obs, res, executed)]
        out.append(Episode("reach", start, st, label, version))
    return out


@pytest.fixture
def runtime():
    return load_policy(preset="tiny", seed=0)


def params(runtime):
    return {k: v.detach().clone() for k, v in runtime.model.state_dict().items()}


def test_update_changes_the_policy_only_for_groups_with_mixed_outcomes(runtime):
    rng = np.random.default_rng(0)
    cfg = preset("tiny", group_size=4, batch_groups=2, mini_batch_size=8, mode="rl", lr=1e-3)
    learner = Learner(runtime, cfg)
    before = params(runtime)
    for e in make_group(runtime, 0, [1, 1, 1, 1], rng) + make_group(runtime, 1, [0, 0, 0, 0], rng):
        assert learner.add(e)
    assert learner.ready()
    stats = learner.step()
    assert stats["groups_dropped"] == 2 and stats["opt_steps"] == 0 and learner.version == 0
    assert all(torch.equal(before[k], v) for k, v in params(runtime).items())
    for e in make_group(runtime, 2, [1, 0, 0, 1], rng) + make_group(runtime, 3, [0, 0, 1, 0], rng):
        learner.add(e)
    stats = learner.step()
    assert stats["groups_rl"] == 2 and stats["opt_steps"] == 1 and learner.version == 1 == runtime.version
    assert stats["tokens"] == 8 * (48 + 3 * 6)  # executed tokens only: a full chunk + 3 actions per episode
    assert any(not torch.equal(before[k], v) for k, v in params(runtime).items())


def test_hybrid_learns_from_demonstrations_where_the_group_never_succeeds(runtime):
    rng = np.random.default_rng(1)
    demos = make_group(runtime, "demo", [1, 1], rng)
    cfg = preset("tiny", group_size=4, batch_groups=1, mini_batch_size=8, mode="hybrid", lr=1e-3)
    learner = Learner(runtime, cfg, demos={"reach": demos})
    demo_logp = lambda: float(learner.trajectory_logprobs(demos, 1.0)[0].sum())  # noqa: E731
    with torch.no_grad():
        lp0 = demo_logp()
    for e in make_group(runtime, 0, [0, 0, 0, 0], rng):
        learner.add(e)
    stats = learner.step()
    assert stats["groups_sft"] == 1 and stats["sft_trajectories"] == 4 and stats["rl_trajectories"] == 0
    with torch.no_grad():
        assert demo_logp() > lp0  # the demonstrations became more likely


def test_stale_and_unlabelled_episodes_are_not_used(runtime):
    rng = np.random.default_rng(2)
    cfg = preset("tiny", group_size=2, batch_groups=1, max_staleness=2)
    learner = Learner(runtime, cfg)
    learner.version = 5
    old, fresh = make_group(runtime, 0, [1, 0], rng, version=2), make_group(runtime, 0, [1, 0], rng, version=3)
    assert not learner.add(old[0])
    assert learner.add(fresh[0])
    assert not learner.add(fresh[0])  # the same episode twice counts once
    unlabelled = make_group(runtime, 0, [None], rng, version=5)[0]
    assert not learner.add(unlabelled)
    with pytest.raises(ValueError, match="label must be 1"):
        learner.add(Episode("reach", 0, [], 2, 5))


def test_a_stale_episode_serves_the_learners_version_again(runtime):
    """A server restarted from its first checkpoint acts with version 0 while the learner is at 5: every
    episode would be stale and no group would fill. The learner pushes its version again (not on every one)."""
    rng = np.random.default_rng(3)
    pushed = []
    learner = Learner(runtime, preset("tiny", group_size=2, batch_groups=1, max_staleness=2),
                      publish=lambda sd, v: pushed.append((v, len(sd))), note=lambda text: None)
    learner.version = 5
    first, second = make_group(runtime, 0, [1, 0], rng, version=0)
    assert not learner.add(first)
    assert [v for v, _ in pushed] == [5] and pushed[0][1] == len(runtime.model.state_dict())
    assert not learner.add(second)
    assert len(pushed) == 1  # at most every republish_s
    assert learner.skipped["stale"] == 2
    fresh = make_group(runtime, 1, [1], rng, version=4)[0]
    assert learner.add(fresh) and len(pushed) == 1  # a recent version pushes nothing


def test_resume_from_checkpoint_reaches_the_identical_state(runtime, tmp_path):
    rng = np.random.default_rng(3)
    gen = torch.Generator().manual_seed(0)
    cfg = preset("tiny", group_size=4, batch_groups=1, mini_batch_size=2, mode="rl", lr=1e-3)
    first = Learner(runtime, cfg, out_dir=tmp_path, seed=7)
    batch_a = make_group(runtime, 0, [1, 0, 0, 1], rng, gen=gen)
    for e in batch_a:
        first.add(e)
    first.step()
    assert (tmp_path / "checkpoint" / "learner_state.pt").is_file()
    assert list((tmp_path / "checkpoint").glob("action_head--*checkpoint.pt")) == []  # discrete head: no L1 head file
    assert (tmp_path / "checkpoint" / "config.json").is_file()

    resumed = Learner.resume(tmp_path / "checkpoint", cfg, seed=123)
    assert resumed.version == first.version == 1
    assert all(torch.equal(v, resumed.runtime.model.state_dict()[k]) for k, v in runtime.model.state_dict().items())
    assert not resumed.add(batch_a[0])  # already trained on: skipped after the restart
    batch_b = make_group(runtime, 1, [0, 1, 1, 0], rng, version=1, gen=gen)
    for learner in (first, resumed):
        for e in batch_b:
            learner.add(e)
        learner.step()
    a, b = runtime.model.state_dict(), resumed.runtime.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed learner diverged from the uninterrupted one"
    assert resumed.version == first.version == 2
    with pytest.raises(FileNotFoundError, match="not a learner checkpoint"):
        Learner.resume(tmp_path, cfg)


def test_hot_swapped_versions_appear_in_the_servers_replies(runtime):
    from vla_robot.serving import PolicyClient, PolicyServer, WeightPublisher

    rng = np.random.default_rng(4)
    served = load_policy(preset="tiny", seed=0)
    server = PolicyServer(served, bind="tcp://127.0.0.1:*", weights_bind="tcp://127.0.0.1:*").start()
    try:
        publisher = WeightPublisher(server.weights_address, timeout_s=30)
        client = PolicyClient(server.address, timeout_s=30)
        cfg = preset("tiny", group_size=4, batch_groups=1, mini_batch_size=8, mode="rl", lr=1e-2)
        learner = Learner(runtime, cfg, publish=lambda sd, v: publisher.push(sd, v))
        probe = observation(rng)
        assert client.infer([probe])[0]["version"] == 0
        for e in make_group(runtime, 0, [1, 0, 0, 0], rng):
            learner.add(e)
        learner.step()
        reply = client.infer([probe], mode="greedy", return_tokens=True)[0]
        assert reply["version"] == 1
        local = runtime.infer([probe], mode="greedy", return_tokens=True)[0]
        np.testing.assert_array_equal(reply["tokens"], local["tokens"])  # the learner's new weights serve
        publisher.close()
        client.close()
    finally:
        server.stop()


def test_gradients_left_on_the_model_do_not_leak_into_an_update():
    """Whoever trained the model before (the demo's SFT warm-up) may leave .grad on it; the
    learner's update must be the same as on a clean model, and it leaves no gradients behind."""
    results = []
    for leftover in (False, True):
        rt = load_policy(preset="tiny", seed=0)
        rng = np.random.default_rng(0)
        gen = torch.Generator().manual_seed(0)
        learner = Learner(rt, preset("tiny", group_size=4, batch_groups=1, mini_batch_size=2, mode="rl", lr=1e-3))
        for e in make_group(rt, 0, [1, 0, 0, 1], rng, gen=gen):
            learner.add(e)
        if leftover:
            for p in learner.params:
                p.grad = torch.full_like(p, 100.0)
        assert learner.step()["opt_steps"] == 2
        assert all(p.grad is None for p in learner.params)
        results.append(params(rt))
    clean, dirty = results
    assert all(torch.equal(clean[k], dirty[k]) for k in clean)


def _graph_spans(runtime):
    """Chunks forwarded into each autograd graph the learner differentiates (issue 14, defect 6)."""
    spans, pending = [], [0]
    inner = runtime.model.token_logprobs

    def counted(batch, tokens, temperature=1.6):
        out = inner(batch, tokens, temperature)
        if out.requires_grad:
            pending[0] += len(tokens)

            def hook(grad):
                if pending[0]:
                    spans.append(pending[0])
                    pending[0] = 0
            out.register_hook(hook)
        return out
    runtime.model.token_logprobs = counted
    return spans


def rollout_batch(runtime, rollouts, demos=(), demo_group=0, version=0):
    """The episodes as grpo.RolloutBatch rows, built here from the episodes' own fields (not by the
    learner), and the model's log-probs of those rows. Rollouts are in groups of consecutive starts."""
    trajs = [*rollouts, *demos]
    starts = list(dict.fromkeys(e.start for e in rollouts))
    rows = [(i, s) for i, e in enumerate(trajs) for s in e.steps]
    tokens = torch.tensor(np.stack([s.tokens for _, s in rows]), dtype=torch.long)
    batch = RolloutBatch(
        tokens, torch.tensor(np.stack([s.logprobs for _, s in rows])), torch.tensor(np.stack([s.executed for _, s in rows])),
        rewards=torch.tensor([float(e.label) for e in trajs]),
        group_ids=torch.tensor([starts.index(e.start) for e in rollouts] + [demo_group] * len(demos)),
        trajectory=torch.tensor([i for i, _ in rows]), demo=torch.tensor([i >= len(rollouts) for i in range(len(trajs))]),
        acting=torch.tensor([i < len(rollouts) and trajs[i].version == version for i, _ in rows]))
    obs = [s.observation for _, s in rows]

    def logprob_fn(idx, temperature):
        return runtime.model.token_logprobs(runtime.batch([obs[i] for i in idx.tolist()]), tokens[idx], temperature)
    return batch, logprob_fn


@pytest.mark.parametrize("mode", ["rl", "hybrid"])
def test_the_learners_step_is_grpo_update_on_the_same_batch(mode):
    """The learner runs grpo.grpo_update, nothing of its own: its step moves the weights exactly as
    grpo_update called directly on the same episodes (two groups, a mini-batch smaller than the
    batch, two epochs, micro-batches; hybrid: the all-failure group learns from a demonstration)."""
    rng = np.random.default_rng(12)
    cfg = preset("tiny", group_size=4, batch_groups=2, mini_batch_size=3, ppo_epochs=2, mode=mode, lr=1e-3,
                 micro_batch_chunks=3)
    rt, direct = load_policy(preset="tiny", seed=0), load_policy(preset="tiny", seed=0)
    rollouts = make_group(rt, 0, [1, 0, 0, 1], rng, steps=3) + make_group(rt, 1, [0, 0, 0, 0], rng, steps=2)
    demo = make_group(rt, "demo", [1], rng, steps=4)
    learner = Learner(rt, cfg, demos={"reach": demo}, seed=7)
    for e in rollouts:
        learner.add(e)
    stats = learner.step()

    gen = torch.Generator().manual_seed(7)
    demos = []
    if mode == "hybrid":  # the learner draws group_size demonstrations of the task first: here all the one there is
        torch.randint(1, (4,), generator=gen)
        demos = demo * 4
    batch, logprob_fn = rollout_batch(direct, rollouts, demos, demo_group=1)
    params_direct = [p for p in direct.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params_direct, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    direct.model.train()
    want = grpo_update(logprob_fn, batch, opt, params_direct, cfg, generator=gen)
    direct.model.eval()

    assert stats["opt_steps"] == want["opt_steps"] == (4 if mode == "rl" else 6)  # 2 epochs x ceil(4 or 8 / 3)
    assert stats["sft_trajectories"] == want["sft_trajectories"] == len(demos)
    a, b = rt.model.state_dict(), direct.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), "the learner's step is not grpo_update's"
    for k in ("loss", "grad_norm", "clip_frac", "approx_kl", "tokens", "micro_batches", "ratio_acting", "groups_rl",
              "groups_sft", "groups_dropped", "adv_abs_mean"):
        assert stats[k] == want[k], k


def test_micro_batched_update_has_the_full_batch_gradient_and_small_graphs():
    """A 30-s episode has 100-200 chunks: no autograd graph may span a mini-batch's chunks, and
    accumulating the micro-batches' gradients must give the gradient of the full-batch loss, written
    here as one graph: the rollouts' GRPO loss (grpo_loss on padded trajectories) and the
    demonstrations' cross-entropy (the model's sft_loss), each trajectory weighted 1/B."""
    from vla_robot.rl.grpo import group_advantages, grpo_loss

    rt = load_policy(preset="tiny", seed=0)
    rng = np.random.default_rng(5)
    group = make_group(rt, 0, [1, 0, 0, 1], rng, steps=5)
    failed = make_group(rt, 1, [0, 0], rng, steps=1)  # all fail: its demonstrations train instead
    demos = make_group(rt, "demo", [1, 1], rng, steps=2) + make_group(rt, "demo", [1], rng, steps=3)
    cfg = preset("tiny", group_size=4, mini_batch_size=8, mode="hybrid", micro_batch_chunks=3, grad_clip=1e9,
                 sft_coef=0.7)
    rt.model.train()

    logp, old, mask = Learner(rt, cfg).trajectory_logprobs(group, cfg.temperature)
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.zeros(4, dtype=torch.long))
    loss_rl, _ = grpo_loss(logp, old, adv, mask, cfg.clip_ratio_low, cfg.clip_ratio_high)
    loss_sft = 0.0
    for e in demos:  # token-mean over the executed tokens of each demonstration, at temperature 1
        ce = rt.model.sft_loss(rt.batch([s.observation for s in e.steps]),
                               torch.from_numpy(np.stack([s.tokens for s in e.steps])), reduction="none", vocab="bins")
        executed = torch.from_numpy(np.concatenate([s.executed for s in e.steps]))
        loss_sft = loss_sft + ce[executed].mean()
    full = (loss_rl * len(group) + cfg.sft_coef * loss_sft) / (len(group) + len(demos))
    full.backward()
    want = {n: p.grad.clone() for n, p in rt.model.named_parameters() if p.grad is not None}
    rt.model.zero_grad(set_to_none=True)

    batch, logprob_fn = rollout_batch(rt, group + failed, demos, demo_group=1)
    params = [p for p in rt.model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.0)  # a real step that leaves the weights: the gradient is what we compare
    got = {}
    opt.register_step_pre_hook(lambda *_: got.update({n: p.grad.clone() for n, p in rt.model.named_parameters()
                                                      if p.grad is not None}))
    spans = _graph_spans(rt)
    stats = grpo_update(logprob_fn, batch, opt, params, cfg)
    assert stats["opt_steps"] == 1 and stats["sft_trajectories"] == 3
    assert max(spans) <= 3 and sum(spans) == 4 * 5 + 2 * 2 + 3  # rollouts' and demonstrations' chunks, in graphs of <= 3
    assert stats["loss"] == pytest.approx(float(full.detach()), rel=1e-5)
    assert got.keys() == want.keys()
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-4, atol=1e-7, msg=lambda m: f"{n}: {m}")


def test_update_is_the_same_whatever_the_micro_batch():
    results = []
    for chunks in (2, 1000):
        rt = load_policy(preset="tiny", seed=0)
        rng = np.random.default_rng(6)
        gen = torch.Generator().manual_seed(0)
        learner = Learner(rt, preset("tiny", group_size=4, batch_groups=1, mini_batch_size=4, mode="rl", lr=1e-3,
                                     micro_batch_chunks=chunks))
        spans = _graph_spans(rt)
        for e in make_group(rt, 0, [1, 0, 0, 1], rng, steps=4, gen=gen):
            learner.add(e)
        stats = learner.step()
        assert stats["opt_steps"] == 1 and max(spans) == min(chunks, 16)
        results.append((params(rt), stats))
    (a, sa), (b, sb) = results
    # AdamW's first step is lr * g / (|g| + eps): where a gradient is ~eps, float noise in it moves the weight
    # by up to lr. Such weights are a handful; a micro-batching error would move thousands.
    diff = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
    assert diff.max() <= 2e-3 and int((diff > 1e-5).sum()) <= 1e-5 * diff.numel(), (
        f"{int((diff > 1e-5).sum())} of {diff.numel()} weights differ by more than 1e-5 (max {diff.max():.2e})")
    assert sa["tokens"] == sb["tokens"] and sa["loss"] == pytest.approx(sb["loss"], abs=1e-6)


def test_every_update_reports_the_acting_versions_ratio_and_flags_a_mismatch(runtime, tmp_path):
    """The learner at the version that acted reproduces the behaviour log-probs (|r - 1| ~ 0); a
    recorded log-prob that is not the policy's is an error that names the likely causes."""
    rng = np.random.default_rng(7)
    notes = []
    cfg = preset("tiny", group_size=4, batch_groups=1, mini_batch_size=2, mode="rl", lr=1e-3)
    learner = Learner(runtime, cfg, out_dir=tmp_path, note=notes.append)
    group = make_group(runtime, 0, [1, 0, 0, 1], rng, steps=2)
    for e in group:
        for s in e.steps:
            s.version, s.temperature = 0, 1.6
        learner.add(e)
    stats = learner.step()
    r = stats["ratio_acting"]
    assert r["n"] == 2 * (48 + 18) and r["median_abs"] < 1e-4 and r["max_abs"] < 1e-3  # first mini-batch: 2 episodes
    assert not any("ON-POLICY" in n for n in notes)
    import json
    lines = [json.loads(x) for x in (tmp_path / "updates.jsonl").read_text().splitlines()]
    assert [x["version"] for x in lines] == [1] and lines[0]["ratio_acting"] == r

    # tokens of another version do not count; behaviour log-probs that are not the policy's are flagged
    def shifted(group, version):
        for e in group:
            e.version = version
            for s in e.steps:
                s.version = version
                s.logprobs = s.logprobs + 0.3  # e.g. a lossy frame, not what the server saw
        return group

    for e in shifted(make_group(runtime, 1, [0, 1, 1, 0], rng), 0):  # sampled by version 1, recorded as 0
        learner.add(e)
    assert learner.step()["ratio_acting"]["n"] == 0 and not notes and learner.version == 2
    for e in shifted(make_group(runtime, 2, [0, 1, 1, 0], rng), 2):
        learner.add(e)
    r = learner.step()["ratio_acting"]
    assert r["n"] > 0 and r["median_abs"] == pytest.approx(1 - np.exp(-0.3), rel=1e-2)
    assert len(notes) == 1 and "ON-POLICY CHECK FAILED at version 2" in notes[0] and "dtype" in notes[0]


def test_episodes_that_cannot_be_on_policy_are_refused_by_name(runtime):
    rng = np.random.default_rng(8)
    notes = []
    learner = Learner(runtime, preset("tiny", group_size=2, batch_groups=1), note=notes.append)
    hot, meta, took_over, keep, tokenless = (make_group(runtime, 0, [1], rng)[0] for _ in range(5))
    hot.steps[1].temperature = 1.0
    assert not learner.add(hot)
    assert "Step.temperature is 1 (chunk 1) but the learner's temperature is 1.6" in notes[-1]
    meta.served_by = {"model": runtime.metadata["model"], "dtype": "bfloat16", "version": 9, "cameras": ["front", "wrist"]}
    assert not learner.add(meta)
    assert "served_by['dtype'] is 'bfloat16'" in notes[-1] and "'float32'" in notes[-1]
    meta.served_by = {**meta.served_by, "dtype": "float32"}  # the version and lists-vs-tuples are no mismatch
    assert learner.add(meta)
    took_over.intervened = True
    assert not learner.add(took_over) and "operator took over" in notes[-1]
    tokenless.steps[0].tokens = np.zeros(0, np.int64)  # the chunk's first frame never reached the recorder
    assert learner.add(tokenless) and len(tokenless.steps) == 1 and "chunk 0 skipped: no tokens" in notes[-1]
    assert dict(learner.skipped) == {"temperature": 1, "served_by.dtype": 1, "intervened": 1,
                                     "chunk_without_tokens": 1}
    keeper = Learner(runtime, preset("tiny", group_size=2, intervened="keep"), note=notes.append)
    keep.intervened = True
    assert keeper.add(keep)
    for s in tokenless.steps:
        s.tokens = None
    assert not learner.add(tokenless) and learner.skipped["no_tokens"] == 1


@pytest.mark.parametrize("killed_at", ["between the renames", "while writing"])
def test_a_save_killed_half_way_leaves_a_checkpoint_to_resume(runtime, tmp_path, monkeypatch, killed_at):
    from pathlib import Path

    from vla_robot.rl.learner import STATE_FILE, find_checkpoint

    cfg = preset("tiny", group_size=2)
    learner = Learner(runtime, cfg, out_dir=tmp_path)
    learner.save(tmp_path)  # version 0
    learner.version = 1
    real = Path.rename

    def kill(self, target):  # kill -9 at that moment of the next save
        if self.name.endswith(".tmp"):
            if killed_at == "while writing":
                (self / STATE_FILE).unlink()  # its state file (written last) never made it
            raise KeyboardInterrupt
        return real(self, target)

    monkeypatch.setattr(Path, "rename", kill)
    with pytest.raises(KeyboardInterrupt):
        learner.save(tmp_path)
    monkeypatch.undo()
    assert not (tmp_path / "checkpoint").exists()
    assert find_checkpoint(tmp_path) == tmp_path / "checkpoint"
    want = 1 if killed_at == "between the renames" else 0  # the complete new one, else the previous one
    assert Learner.resume(tmp_path / "checkpoint", cfg).version == want
    learner.save(tmp_path)  # and saving again tidies up what the kill left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_resume_honours_the_requested_dtype_and_device(runtime, tmp_path):
    """The 7B learner runs in bf16: a resumed learner must come back in the dtype (and on the device)
    it is asked for, optimiser state included, not in the checkpoint loader's float32 on the CPU."""
    rng = np.random.default_rng(9)
    cfg = preset("tiny", group_size=2, batch_groups=1, mode="rl", lr=1e-3)
    first = Learner(runtime, cfg, out_dir=tmp_path)
    for e in make_group(runtime, 0, [1, 0], rng):
        first.add(e)
    assert first.step()["opt_steps"] == 1
    resumed = Learner.resume(tmp_path / "checkpoint", cfg, device="cpu", dtype="bfloat16")
    assert resumed.runtime.dtype == "bfloat16" and resumed.runtime.metadata["dtype"] == "bfloat16"
    assert {p.dtype for p in resumed.params} == {torch.bfloat16}
    assert all(v.dtype == torch.bfloat16 for st in resumed.optimizer.state.values() for k, v in st.items() if k != "step")
    for e in make_group(resumed.runtime, 1, [0, 1], rng, version=1):
        for s in e.steps:
            s.version = 1
        resumed.add(e)
    stats = resumed.step()
    assert stats["opt_steps"] == 1 and resumed.version == 2
    assert stats["ratio_acting"]["median_abs"] < 1e-2  # bf16 sampled, bf16 recomputed


def test_a_group_completes_without_its_refused_members(runtime):
    """The scheduler counts a labelled takeover in its group; the learner refuses it, and must still
    update once the rest of the group is in (else that group never completes on a robot)."""
    rng = np.random.default_rng(10)
    learner = Learner(runtime, preset("tiny", group_size=4, mode="rl"), note=lambda text: None)
    group = make_group(runtime, 0, [1, 0, 1, 0], rng)
    group[1].intervened = True
    for e in group[:3]:
        learner.add(e)
    assert learner.step() is None  # 2 usable + 1 refused of 4
    learner.add(group[3])
    stats = learner.step()
    assert stats["episodes"] == 3 and learner.version == 1 and learner.skipped["intervened"] == 1
    assert group[1].episode_id in learner.consumed  # decided: a restart does not count it into a later group
    assert not learner.refused and not learner.groups


def test_an_update_without_a_step_still_reports_the_on_policy_check(runtime):
    """A group that never succeeds (no demonstrations to learn from) makes no optimiser step; the
    person running the robot must still see that the learner reproduces the acting log-probs."""
    rng = np.random.default_rng(11)
    learner = Learner(runtime, preset("tiny", group_size=4, mode="hybrid"))
    for e in make_group(runtime, 0, [0, 0, 0, 0], rng):
        learner.add(e)
    stats = learner.step()
    assert stats["opt_steps"] == 0 and learner.version == 0
    assert stats["ratio_acting"]["n"] == 4 * (48 + 18) and stats["ratio_acting"]["median_abs"] < 1e-4


def test_a_group_gone_stale_while_filling_is_used_up_without_an_update(runtime):
    """Members acted by a version that fell more than max_staleness behind while their group filled
    are dropped at the update; a group left empty makes an update line but no version."""
    rng = np.random.default_rng(13)
    learner = Learner(runtime, preset("tiny", group_size=2, batch_groups=1, max_staleness=1, mode="rl"))
    group = make_group(runtime, 0, [1, 0], rng)
    for e in group:
        assert learner.add(e)
    learner.version = 3  # updates on other groups happened meanwhile
    stats = learner.step()
    assert stats["episodes"] == 0 and stats["opt_steps"] == 0 and learner.version == 3
    assert stats["ratio_acting"]["n"] == 0 and stats["groups_rl"] == 0
    assert not learner.groups and not learner.ready()


def test_a_relabelled_episode_replaces_the_copy_the_learner_holds(runtime):
    """`vla-robot dataset relabel` before the learner trained on an episode: the follower yields it again
    with the new label, and the group then holds the new one, not both and not the old."""
    import dataclasses

    rng = np.random.default_rng(3)
    learner = Learner(runtime, preset("tiny", group_size=4, batch_groups=1, mode="rl"))
    group = make_group(runtime, 0, [1, 0, 0], rng)
    for e in group:
        assert learner.add(e)
    corrected = dataclasses.replace(group[1], label=1)  # a person corrects episode 1: it succeeded
    assert not learner.add(corrected)  # not a new member of the group
    held = learner.groups[("reach", 0)]
    assert len(held) == 3 and [e.label for e in held] == [1, 1, 0]
