"""GRPO as SimpleVLA-RL implements it, in one screen (reference/simplevla_openvla_oft.md §3).

    reward      R_i = label of episode i (success 1, failure 0)   unlabelled episodes never get here
    advantage   A_i = (R_i - mean_g R) / (std_g R + eps)           within its group g, on every token
    ratio       r_t = exp(log pi_theta(a_t|s_t) - log pi_behaviour(a_t|s_t))
    loss        L   = mean_i [ mean_{t executed} max(-A_i r_t, -A_i clip(r_t, 1 - 0.2, 1 + 0.28)) ]

Tokens are the 256-bin action tokens; log-probs are over that slice at the rollout temperature.
Each action-dimension token has its own ratio. Only tokens of actions the arm executed count (mask).
No KL term, no entropy bonus. Groups whose outcomes are all equal carry no signal and are dropped
(dynamic sampling) or, in hybrid mode, replaced by the policy's SFT loss on demonstrations when they
all fail (see learner.py).

``pi_behaviour`` is the policy version that acted: on the real robot episodes arrive while the learner
updates, so the stored rollout log-probs (not a recompute) are the denominator and a stale episode is
weighted by how much the policy has moved since (and clipped like any other).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from vla_robot.policy.modeling import bin_logprobs
from vla_robot.rl.config import GRPOConfig



# log softmax(logits / T) at the chosen bins: logits [..., 256], tokens [...] bin indices 0..255
# (the policy model's own function, so the loss and teacher forcing cannot drift apart)
token_logprobs = bin_logprobs


def group_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """A_i = (R_i - mean_g) / (std_g + eps), std unbiased (torch.std); a group of one gets 0."""
    rewards = rewards.float()
    adv = torch.zeros_like(rewards)
    for g in torch.unique(group_ids):
        r = rewards[group_ids == g]
        std = r.std() if r.numel() > 1 else r.new_zeros(())
        adv[group_ids == g] = (r - r.mean()) / (std + eps)
    return adv


def group_success(rewards: torch.Tensor, group_ids: torch.Tensor) -> dict[int, float]:
    """Success rate of each group."""
    return {int(g): float(rewards[group_ids == g].float().mean()) for g in torch.unique(group_ids)}


def group_modes(rewards: torch.Tensor, group_ids: torch.Tensor, cfg: GRPOConfig) -> dict[int, str]:
    """What each group trains: "rl", "sft" (hybrid/sft: learn from demonstrations) or "drop".

    Dynamic sampling keeps groups whose success rate is in [accuracy_lower, accuracy_upper].
    Hybrid (HPT): a group below the lower bound (the policy never succeeds) switches to SFT.
    """
    modes = {}
    for g, acc in group_success(rewards, group_ids).items():
        if cfg.mode == "sft":
            modes[g] = "sft"
        elif cfg.accuracy_lower <= acc <= cfg.accuracy_upper and 0.0 < acc < 1.0:
            modes[g] = "rl"
        elif cfg.mode == "hybrid" and acc < cfg.accuracy_lower:
            modes[g] = "sft"
        else:
            modes[g] = "drop"
    return modes


def grpo_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
    clip_low: float = 0.2, clip_high: float = 0.28,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO-clip with clip-higher. logp/old_logp/mask [B, T] (T tokens), advantages [B].

    Per-trajectory token-mean over executed tokens, then mean over the B trajectories.
    """
    mask = mask.to(logp.dtype)
    weight = mask / mask.sum(-1, keepdim=True).clamp_min(1.0) / len(mask)
    loss, sums = grpo_token_loss(logp, old_logp, advantages, weight, clip_low, clip_high)
    n = max(sums["tokens"], 1.0)
    with torch.no_grad():
        ratio_mean = float((torch.exp(logp - old_logp) * mask).sum() / n)
    return loss, {"clip_frac": sums["clipped"] / n, "ratio_mean": ratio_mean, "approx_kl": sums["kl_sum"] / n,
                  "tokens": sums["tokens"]}


def grpo_token_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, weight: torch.Tensor,
    clip_low: float = 0.2, clip_high: float = 0.28,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss's share of some tokens: sum_t w_t max(-A r_t, -A clip(r_t, 1 - low, 1 + high)).

    logp/old_logp/weight [C, K] (C rows of K tokens: trajectories or chunks), advantages [C].
    With w_t = mask_t / (n_i B) for a token of trajectory i (n_i its executed tokens, B the
    trajectories of the mini-batch) the sum over any split of the mini-batch's tokens is
    :func:`grpo_loss`: the learner sums it over micro-batches of chunks, one autograd graph each.
    Returns the loss and sums over tokens with w > 0 (count, clipped count, sum of old - new).
    """
    ratio = torch.exp(logp - old_logp)
    A = advantages.to(logp.device, logp.dtype)[:, None]
    pg_unclipped = -A * ratio
    pg_clipped = -A * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    pg = torch.maximum(pg_unclipped, pg_clipped)
    weight = weight.to(logp.device, logp.dtype)
    loss = (pg * weight).sum()
    with torch.no_grad():
        used = (weight > 0).to(logp.dtype)
        sums = {"tokens": float(used.sum()), "clipped": float(((pg_clipped > pg_unclipped).to(logp.dtype) * used).sum()),
                "kl_sum": float(((old_logp - logp) * used).sum())}
    return loss, sums


@dataclass
class RolloutBatch:
    """Trajectories ready for one update. Index i is trajectory i; T is tokens per trajectory (padded)."""

    tokens: torch.Tensor        # [B, T] int64 bin indices 0..255 of the sampled actions
    old_logp: torch.Tensor      # [B, T] behaviour log-probs (the version that acted, rollout temperature)
    mask: torch.Tensor          # [B, T] bool, True for tokens of executed actions
    rewards: torch.Tensor       # [B] success labels 1/0
    group_ids: torch.Tensor     # [B] int group of (task, start condition)

    def __post_init__(self) -> None:
        b, t = self.tokens.shape
        for name in ("old_logp", "mask"):
            if tuple(getattr(self, name).shape) != (b, t):
                raise ValueError(f"RolloutBatch.{name} must be [{b}, {t}] like tokens, got {tuple(getattr(self, name).shape)}")
        for name in ("rewards", "group_ids"):
            if tuple(getattr(self, name).shape) != (b,):
                raise ValueError(f"RolloutBatch.{name} must be [{b}], got {tuple(getattr(self, name).shape)}")


def grpo_update(
    logprob_fn: Callable[[torch.Tensor], torch.Tensor], batch: RolloutBatch,
    optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], cfg: GRPOConfig,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """ppo_epochs x mini-batches of the GRPO loss on the trajectories of kept groups.

    ``logprob_fn(idx)`` returns the current policy's log-probs [len(idx), T] of ``batch.tokens[idx]``
    at ``cfg.temperature`` (differentiable). Returns averaged statistics.
    """
    adv = group_advantages(batch.rewards, batch.group_ids, cfg.adv_eps)
    modes = group_modes(batch.rewards, batch.group_ids, cfg)
    keep = torch.tensor([modes[int(g)] == "rl" for g in batch.group_ids], dtype=torch.bool)
    idx_all = torch.nonzero(keep).flatten()
    totals: dict[str, float] = {"loss": 0.0, "clip_frac": 0.0, "approx_kl": 0.0, "grad_norm": 0.0, "steps": 0.0}
    tokens = 0.0
    for _ in range(cfg.ppo_epochs):
        perm = idx_all[torch.randperm(len(idx_all), generator=generator)]
        for mb in perm.split(cfg.mini_batch_size):
            logp = logprob_fn(mb)
            loss, st = grpo_loss(logp, batch.old_logp[mb], adv[mb], batch.mask[mb],
                                 cfg.clip_ratio_low, cfg.clip_ratio_high)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            gn = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            totals["loss"] += float(loss.detach())
            totals["clip_frac"] += st["clip_frac"]
            totals["approx_kl"] += st["approx_kl"]
            totals["grad_norm"] += float(gn)
            totals["steps"] += 1
            tokens += st["tokens"]
    steps = max(totals["steps"], 1.0)
    out = {k: (v / steps if k != "steps" else v) for k, v in totals.items()}
    kept_adv = adv[keep]
    out.update(tokens=tokens, trajectories=float(len(idx_all)), groups_kept=float(sum(m == "rl" for m in modes.values())),
               groups_total=float(len(modes)),
               adv_mean=float(kept_adv.mean()) if len(kept_adv) else 0.0,
               adv_std=float(kept_adv.std()) if len(kept_adv) > 1 else 0.0)
    return out
