"""GRPO (vla_robot.rl.grpo) against hand-computed values, and a bandit that must learn."""
import math

import pytest
import torch

from vla_robot.rl import config as rl_config
from vla_robot.rl.grpo import (
    RolloutBatch,
    acting_ratio,
    group_advantages,
    group_modes,
    grpo_loss,
    grpo_update,
    token_logprobs,
)

torch.set_num_threads(1)


def test_advantage_is_group_normalised_with_unbiased_std():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    g = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    a = group_advantages(r, g, eps=0.0)
    # group 0: mean 0.25, unbiased std sqrt((0.75^2 + 3*0.25^2)/3) = 0.5
    assert torch.allclose(a[:4], torch.tensor([1.5, -0.5, -0.5, -0.5]))
    # group 1: mean 0.75, std 0.5
    assert torch.allclose(a[4:], torch.tensor([0.5, 0.5, -1.5, 0.5]))


def test_all_equal_group_has_zero_advantage_and_is_dropped_or_switched():
    r = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    g = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    a = group_advantages(r, g)
    assert torch.equal(a[:6], torch.zeros(6))
    assert a[6] > 0 > a[7]
    cfg = rl_config.GRPOConfig(mode="rl")
    assert group_modes(r, g, cfg) == {0: "drop", 1: "drop", 2: "rl"}
    cfg.mode = "hybrid"  # the policy never succeeds on group 1: learn it from demonstrations instead
    assert group_modes(r, g, cfg) == {0: "drop", 1: "sft", 2: "rl"}
    cfg.mode = "sft"
    assert set(group_modes(r, g, cfg).values()) == {"sft"}


def test_dynamic_sampling_bounds_follow_simplevla():
    # n = 8, bounds [0.1, 0.9]: 1..7 successes kept, 0 and 8 dropped
    cfg = rl_config.GRPOConfig(mode="rl")
    for k in range(9):
        r = torch.tensor([1.0] * k + [0.0] * (8 - k))
        mode = group_modes(r, torch.zeros(8, dtype=torch.long), cfg)[0]
        assert mode == ("rl" if 1 <= k <= 7 else "drop"), k


def test_loss_matches_hand_computation_with_clipping_on_both_sides_and_mask():
    adv = torch.tensor([1.5, -0.5])
    old = torch.zeros(2, 2)
    ratio = torch.tensor([[1.5, 1.0], [0.5, 2.0]])
    logp = ratio.log()
    mask = torch.tensor([[True, True], [True, False]])
    loss, st = grpo_loss(logp, old, adv, mask, 0.2, 0.28)
    # traj 0 (A=+1.5): ratio 1.5 clipped to 1.28 -> -1.92; ratio 1.0 -> -1.5; token-mean -1.71
    # traj 1 (A=-0.5): ratio 0.5 clipped to 0.8 -> max(0.25, 0.4) = 0.4; second token not executed
    assert float(loss) == pytest.approx((-1.71 + 0.4) / 2, abs=1e-6)
    assert st["clip_frac"] == pytest.approx(2 / 3)
    assert st["tokens"] == 3


def test_gradient_is_zero_beyond_the_clip_in_the_advantage_direction_only():
    old = torch.zeros(4, 1)
    ratio = torch.tensor([[1.4], [0.7], [0.7], [1.4]])
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    logp = ratio.log().requires_grad_(True)
    loss, _ = grpo_loss(logp, old, adv, torch.ones(4, 1, dtype=torch.bool))
    loss.backward()
    g = logp.grad.flatten() * 4  # undo the mean over 4 trajectories
    # A>0, r>1.28: clipped (no push further up). A>0, r<0.8: not clipped, gradient -A*r.
    # A<0, r<0.8: clipped. A<0, r>1.28: not clipped, gradient -A*r (pulls back down).
    assert torch.allclose(g, torch.tensor([0.0, -0.7, 0.0, 1.4]), atol=1e-6)


def test_non_executed_tokens_get_no_gradient_and_do_not_change_the_loss():
    torch.manual_seed(0)
    logp = torch.randn(3, 5).clamp(max=0).requires_grad_(True)
    old = logp.detach() + 0.05 * torch.randn(3, 5)
    adv = torch.tensor([1.0, -1.0, 0.5])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    loss, _ = grpo_loss(logp, old, adv, mask)
    loss.backward()
    assert torch.all(logp.grad[~mask] == 0)
    assert torch.all(logp.grad[mask] != 0)
    with torch.no_grad():
        changed = logp.detach().clone()
        changed[~mask] -= 3.0
        loss2, _ = grpo_loss(changed, old, adv, mask)
    assert float(loss2) == pytest.approx(float(loss.detach()))


def test_stale_episode_is_weighted_by_its_behaviour_logprobs():
    # The same token under the current policy; the stale episode's acting version gave it less mass.
    logp = torch.tensor([[math.log(0.30)], [math.log(0.30)]], requires_grad=True)
    behaviour = torch.tensor([[math.log(0.30)], [math.log(0.25)]])  # fresh, stale (ratio 1.2)
    loss, _ = grpo_loss(logp, behaviour, torch.tensor([1.0, 1.0]), torch.ones(2, 1, dtype=torch.bool))
    loss.backward()
    fresh, stale = (logp.grad.flatten() * 2).tolist()
    assert fresh == pytest.approx(-1.0)
    assert stale == pytest.approx(-1.2)  # importance weight pi_theta / pi_behaviour = 0.30 / 0.25
    # Far-off-policy stale episode (ratio 3 > 1.28): clipped, contributes no gradient.
    logp2 = torch.tensor([[math.log(0.30)]], requires_grad=True)
    loss2, st = grpo_loss(logp2, torch.tensor([[math.log(0.10)]]), torch.tensor([1.0]), torch.ones(1, 1, dtype=torch.bool))
    loss2.backward()
    assert float(logp2.grad) == 0.0 and st["clip_frac"] == 1.0


def test_token_logprobs_use_the_temperature_and_the_256_bin_slice():
    logits = torch.zeros(2, 256)
    logits[:, 10] = 1.6
    lp = token_logprobs(logits, torch.tensor([10, 11]), temperature=1.6)
    z = math.e + 255
    assert lp.tolist() == pytest.approx([1 - math.log(z), -math.log(z)], abs=1e-5)
    with pytest.raises(ValueError, match="256-bin"):
        token_logprobs(torch.zeros(2, 300), torch.tensor([0, 1]), 1.0)


def test_bandit_grpo_raises_success_probability():
    """One state, a 2-token action; success when both sampled bins land in the upper half."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.nn.Parameter(torch.zeros(2, 256))
    cfg = rl_config.preset("tiny", lr=0.1, mini_batch_size=16, mode="rl")
    opt = torch.optim.AdamW([logits], lr=cfg.lr, betas=cfg.betas, weight_decay=0.0)

    def p_success(temperature: float) -> float:
        p = torch.softmax(logits.detach() / temperature, -1)[:, 128:].sum(-1)
        return float(p.prod())

    before = p_success(cfg.temperature)
    for _ in range(50):
        groups = 4
        with torch.no_grad():
            probs = torch.softmax(logits / cfg.temperature, -1)
            tokens = torch.stack([torch.multinomial(probs[d], groups * 8, True, generator=gen) for d in range(2)], 1)
            old = token_logprobs(logits.expand(len(tokens), 2, 256), tokens, cfg.temperature)
        rewards = (tokens >= 128).all(1).float()
        batch = RolloutBatch(tokens, old, torch.ones_like(tokens, dtype=torch.bool), rewards,
                             torch.arange(groups).repeat_interleave(8))
        grpo_update(lambda idx, t: token_logprobs(logits.expand(len(idx), 2, 256), tokens[idx], t),
                    batch, opt, [logits], cfg, generator=gen)
    after = p_success(cfg.temperature)
    assert before == pytest.approx(1 / 4, rel=1e-6)
    assert after > before + 0.3


def test_rollout_batch_rejects_mismatched_shapes():
    t = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="old_logp must be"):
        RolloutBatch(t, torch.zeros(2, 4), torch.ones(2, 3, dtype=torch.bool), torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError, match=r"rewards must be \[2\]"):
        RolloutBatch(t, torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool), torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="each of the 3 trajectories .* at least one row"):
        RolloutBatch(t, torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool), torch.zeros(3), torch.zeros(3),
                     trajectory=torch.tensor([0, 2]))


def test_presets_and_bad_hyper_parameters():
    assert rl_config.preset("oft-7b").lr == 5e-6
    assert (rl_config.preset("oft-7b").clip_ratio_low, rl_config.preset("oft-7b").clip_ratio_high) == (0.2, 0.28)
    with pytest.raises(ValueError, match="unknown GRPO preset 'huge'"):
        rl_config.preset("huge")
    with pytest.raises(ValueError, match="unknown GRPO hyper-parameter"):
        rl_config.preset("tiny", learning_rate=1.0)
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        rl_config.preset("tiny", group_size=1)
    with pytest.raises(ValueError, match="clip ratios"):
        rl_config.preset("tiny", clip_ratio_low=1.5)


def test_update_is_the_docstring_equation_with_hybrid_sft_weighting():
    """grpo_update's gradient is that of L in its docstring, written out here by hand: an "rl" group's
    rollouts with clipped token ratios, an all-failure group replaced by sft_coef x the demonstrations'
    token-mean -log pi at T = 1, each trajectory weighted 1/B, only executed tokens; a demonstration
    for a group that is not "sft" and the all-failure group's own rollouts train nothing."""
    torch.manual_seed(0)
    logits = torch.nn.Parameter(torch.randn(6, 3, 256))  # one "state" per row: [C, K tokens, 256 bins]
    cfg = rl_config.GRPOConfig(mode="hybrid", mini_batch_size=16, micro_batch_chunks=2, grad_clip=1e9, sft_coef=0.5)
    # trajectories (rows): 0 (rows 0, 1) and 1 (row 2) rollouts of group 0, one of two succeeds; 2 (row 3)
    # group 1's failed rollout; 3 (row 4) a demonstration for group 1 (sft), 4 (row 5) one for group 0 (rl)
    trajectory = torch.tensor([0, 0, 1, 2, 3, 4])
    tokens = torch.randint(0, 256, (6, 3))
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1], [1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    with torch.no_grad():
        old = token_logprobs(logits, tokens, cfg.temperature) + 0.3 * torch.randn(6, 3)  # ratios beyond the clip too
    batch = RolloutBatch(tokens, old, mask, torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0]), torch.tensor([0, 0, 1, 1, 0]),
                         trajectory=trajectory, demo=torch.tensor([False, False, False, True, True]),
                         acting=torch.tensor([True, False, True, True, True, True]))
    grads = []
    opt = torch.optim.SGD([logits], lr=0.0)  # a real step that leaves the weights, to compare the gradient
    opt.register_step_pre_hook(lambda *_: grads.append(logits.grad.clone()))
    lp = lambda rows, t: token_logprobs(logits[rows], tokens[rows], t)  # noqa: E731
    stats = grpo_update(lp, batch, opt, [logits], cfg)
    assert (stats["rl_trajectories"], stats["sft_trajectories"], stats["groups_rl"], stats["groups_sft"]) == (2, 1, 1, 1)
    assert stats["micro_batches"] == 2 + 1  # 3 rl rows in graphs of 2, then the demonstration's row
    assert stats["tokens"] == 4 + 2 + 2  # executed tokens of the trajectories that train

    a = 1 / (2 ** 0.5 + cfg.adv_eps)  # group 0: rewards 1, 0: mean 0.5, unbiased std 0.5 ** 0.5
    r = torch.exp(token_logprobs(logits, tokens, cfg.temperature) - old)
    pg = lambda i, adv: torch.maximum(-adv * r[i], -adv * r[i].clamp(0.8, 1.28))  # noqa: E731
    traj0 = (pg([0, 1], a)[mask[[0, 1]]]).mean()
    traj1 = (pg([2], -a)[mask[[2]]]).mean()
    demo = -cfg.sft_coef * token_logprobs(logits[4], tokens[4], 1.0)[mask[4]].mean()
    want_loss = (traj0 + traj1 + demo) / 3  # B = 3 trajectories train
    (want,) = torch.autograd.grad(want_loss, logits)
    torch.testing.assert_close(grads[0], want)
    assert stats["loss"] == pytest.approx(float(want_loss.detach()), rel=1e-5)
    assert torch.all(want[[3, 5]] == 0) and torch.all(grads[0][[3, 5]] == 0)  # the group-1 rollout, the rl-group demo
    # the on-policy check: |r - 1| of the executed tokens of acting rows that trained, before the step
    want_r = torch.cat([r[0][mask[0]], r[2][mask[2]]]).detach() - 1
    assert stats["ratio_acting"]["n"] == 5
    assert stats["ratio_acting"]["max_abs"] == pytest.approx(float(want_r.abs().max()), rel=1e-5)
    assert acting_ratio(lp, batch, [0, 1], cfg) == stats["ratio_acting"]
