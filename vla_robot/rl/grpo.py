"""GRPO as SimpleVLA-RL implements it, plus hybrid SFT (reference/simplevla_openvla_oft.md §3.3-3.4).

:func:`grpo_update` is the update the learner runs; its docstring is the objective, beside the code
that computes it. The pieces: group-normalised advantages (:func:`group_advantages`), dynamic
sampling and the hybrid switch (:func:`group_modes`), the clipped token loss (:func:`grpo_token_loss`).

``π_old`` is the policy version that acted: on the real robot episodes arrive while the learner
updates, so the stored rollout log-probs (not a recompute) are the denominator and a stale episode is
weighted by how much the policy has moved since (and clipped like any other).

Memory does not grow with the episode length: L is a weighted sum over tokens, so the update runs it
in micro-batches of ``micro_batch_chunks`` chunks, one autograd graph each, and accumulates the
gradients before the optimiser step (the gradient of one graph over the mini-batch, within rounding).
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
# logprob_fn(rows, temperature): log π_θ [len(rows), K] of the tokens of those batch rows (differentiable)
LogprobFn = Callable[[torch.Tensor, float], torch.Tensor]


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
    """What each group trains: "rl", "sft" (learn from demonstrations) or "drop" (module docstring)."""
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
    """L of rollouts in one graph: logp/old_logp/mask [B, T] (T tokens, padded), advantages [B].

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
    """The rollouts' share of L in some tokens: sum_t w_t max(-A r_t, -A clip(r_t, 1 - low, 1 + high)).

    logp/old_logp/weight [C, K] (C rows of K tokens: trajectories or chunks), advantages [C].
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
    """Trajectories for one update, one row per chunk (a policy call's K = H x D action tokens).

    Row c belongs to trajectory ``trajectory[c]`` (default: row c is trajectory c, one chunk each).
    ``demo[i]`` marks a demonstration standing in for group ``group_ids[i]`` when that group is "sft"
    (its reward and log-probs are not used). ``acting[c]``: row c was sampled by the weights as they
    are before the update, so its first mini-batch reports r - 1 of them (the on-policy check).
    """

    tokens: torch.Tensor        # [C, K] int64 bin indices 0..255 of the sampled (or demonstrated) actions
    old_logp: torch.Tensor      # [C, K] behaviour log-probs (the version that acted, rollout temperature)
    mask: torch.Tensor          # [C, K] bool, True for tokens of executed actions
    rewards: torch.Tensor       # [B] success labels 1/0
    group_ids: torch.Tensor     # [B] int group of (task, start condition)
    trajectory: torch.Tensor | None = None  # [C] int trajectory of each row
    demo: torch.Tensor | None = None        # [B] bool
    acting: torch.Tensor | None = None      # [C] bool

    def __post_init__(self) -> None:
        c, k = self.tokens.shape
        if self.trajectory is None:
            self.trajectory = torch.arange(c)
        b = int(self.trajectory.max()) + 1 if len(self.trajectory) else 0  # trajectories 0..B-1
        self.demo = torch.zeros(b, dtype=torch.bool) if self.demo is None else self.demo.bool()
        self.acting = torch.zeros(c, dtype=torch.bool) if self.acting is None else self.acting.bool()
        want = {"old_logp": (c, k), "mask": (c, k), "trajectory": (c,), "acting": (c,), "rewards": (b,),
                "group_ids": (b,), "demo": (b,)}
        for name, shape in want.items():
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(f"RolloutBatch.{name} must be {list(shape)} ([C, K] = tokens' shape, B = the "
                                 f"trajectories the rows belong to), got {list(getattr(self, name).shape)}")
        if b and (int(self.trajectory.min()) < 0 or len(torch.unique(self.trajectory)) != b):
            raise ValueError(f"RolloutBatch.trajectory must give each of the {b} trajectories (0..{b - 1}) at least "
                             f"one row, got {sorted(set(self.trajectory.tolist()))}")

    def rows_of(self) -> list[torch.Tensor]:
        """The rows of each trajectory, in row order."""
        order = torch.argsort(self.trajectory, stable=True)
        return list(order.split(torch.bincount(self.trajectory, minlength=len(self.rewards)).tolist()))


def grpo_update(logprob_fn: LogprobFn, batch: RolloutBatch, optimizer: torch.optim.Optimizer,
                params: list[torch.nn.Parameter], cfg: GRPOConfig, generator: torch.Generator | None = None) -> dict:
    """``ppo_epochs`` passes over random mini-batches M of the kept trajectories; one AdamW step
    (gradient norm clipped to ``grad_clip``) per mini-batch of B trajectories, on

        L(θ) = 1/B Σ_{i∈M} 1/|T_i| Σ_{t∈T_i} ℓ_it      T_i: tokens of actions the arm executed (mask)

        rollout i of an "rl" group g:       ℓ_it = max(-A_i r_t, -A_i clip(r_t, 1 - 0.2, 1 + 0.28))
                                            r_t  = π_θ(a_t|s_t) / π_old(a_t|s_t)   at the rollout temperature
                                            A_i  = (R_i - mean_g R) / (std_g R + eps)   R: success 1/0
        demonstration i of an "sft" group:  ℓ_it = -sft_coef log π_θ(a_t|s_t)    at temperature 1

        group g, success rate s_g of its rollouts, is
            "rl"    if accuracy_lower <= s_g <= accuracy_upper and 0 < s_g < 1   (dynamic sampling)
            "sft"   if mode is hybrid and s_g < accuracy_lower: the policy never succeeds there, RL has
                    nothing to compare, so demonstrations of its task stand in; every group in mode sft
            "drop"  otherwise (all outcomes equal: no signal)

    No KL term, no entropy bonus, no critic. Clip-higher: the asymmetric range [0.8, 1.28] lets unlikely
    tokens of successful rollouts grow. Tokens are the 256-bin action tokens, each action dimension its
    own ratio; per-trajectory token-mean, then mean over trajectories, as SimpleVLA-RL aggregates.

    ``logprob_fn(rows, T)`` gives log π_θ of the tokens of those batch rows. Returns statistics,
    ``ratio_acting`` among them: |r - 1| of ``batch.acting`` rows in the first mini-batch, before any step.
    """
    adv, kind, modes = trajectory_roles(batch, cfg)
    rows_of = batch.rows_of()
    out = _update_stats(adv[~batch.demo], kind, modes)
    optimizer.zero_grad(set_to_none=True)  # nothing left over from whoever trained the model before
    kept = torch.tensor([i for i, k in enumerate(kind) if k != "drop"], dtype=torch.long)
    for epoch in range(cfg.ppo_epochs):
        for first, mb in enumerate(_pieces(kept[torch.randperm(len(kept), generator=generator)], cfg.mini_batch_size)):
            acting = [] if epoch == 0 and first == 0 else None  # the weights that acted, until this step
            rl = [i for i in mb.tolist() if kind[i] == "rl"]
            sft = [i for i in mb.tolist() if kind[i] == "sft"]
            rl_sums = _rl_gradient(logprob_fn, batch, [rows_of[i] for i in rl], adv[rl], len(mb), cfg, acting)
            sft_sums = _sft_gradient(logprob_fn, batch, [rows_of[i] for i in sft], len(mb), cfg)
            gn = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            # free the gradients now, not before the next backward: the next forward then runs
            # without them (a 7B model's bf16 gradients are 15 GB)
            optimizer.zero_grad(set_to_none=True)
            _add_step(out, rl_sums, sft_sums, float(gn), acting)
    for name in ("loss", "grad_norm", "clip_frac", "approx_kl"):
        out[name] /= max(out["opt_steps"], 1)
    return out


def trajectory_roles(batch: RolloutBatch, cfg: GRPOConfig) -> tuple[torch.Tensor, list[str], dict[int, str]]:
    """A_i of every trajectory (0 for demonstrations), what each trains ("rl", "sft", "drop") and the groups' modes.

    Advantages and modes come from the rollouts alone; a demonstration trains only where its group is "sft"."""
    rollouts = ~batch.demo
    adv = torch.zeros(len(batch.rewards))
    adv[rollouts] = group_advantages(batch.rewards[rollouts], batch.group_ids[rollouts], cfg.adv_eps)
    modes = group_modes(batch.rewards[rollouts], batch.group_ids[rollouts], cfg)
    kind = []
    for is_demo, g in zip(batch.demo.tolist(), batch.group_ids.tolist()):
        mode = modes.get(int(g), "drop")
        kind.append(mode if mode == ("sft" if is_demo else "rl") else "drop")
    return adv, kind, modes


def _update_stats(rollout_adv: torch.Tensor, kind: list[str], modes: dict[int, str]) -> dict:
    """The statistics of an update before its first step."""
    return {"loss": 0.0, "clip_frac": 0.0, "approx_kl": 0.0, "grad_norm": 0.0, "opt_steps": 0, "tokens": 0.0,
            "micro_batches": 0, "rl_trajectories": kind.count("rl"), "sft_trajectories": kind.count("sft"),
            "ratio_acting": ratio_summary([]), "groups_rl": sum(m == "rl" for m in modes.values()),
            "groups_sft": sum(m == "sft" for m in modes.values()),
            "groups_dropped": sum(m == "drop" for m in modes.values()),
            "adv_abs_mean": float(rollout_adv.abs().mean()) if len(rollout_adv) else 0.0}


def _add_step(out: dict, rl: dict, sft: dict, grad_norm: float, acting: list[torch.Tensor] | None) -> None:
    """Add one optimiser step's sums to the update's statistics (per-step means are divided at the end)."""
    n = max(rl["tokens"], 1.0)
    out["loss"] += rl["loss"] + sft["loss"]
    out["grad_norm"] += grad_norm
    out["clip_frac"] += rl["clipped"] / n
    out["approx_kl"] += rl["kl_sum"] / n
    out["tokens"] += rl["tokens"] + sft["tokens"]
    out["micro_batches"] += rl["micro_batches"] + sft["micro_batches"]
    out["opt_steps"] += 1
    if acting is not None:
        out["ratio_acting"] = ratio_summary(acting)


def _weighted_rows(trajectories: list[torch.Tensor], mask: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows of ``trajectories`` and their token weights w = mask / (executed tokens of the trajectory x b)."""
    if not trajectories:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, mask.shape[1])
    rows = torch.cat(trajectories)
    n_exec = torch.cat([torch.full((len(r),), max(int(mask[r].sum()), 1)) for r in trajectories])
    return rows, mask[rows].float() / (n_exec[:, None] * b)


def _rl_gradient(logprob_fn: LogprobFn, batch: RolloutBatch, trajectories: list[torch.Tensor], adv: torch.Tensor,
                 b: int, cfg: GRPOConfig, acting: list[torch.Tensor] | None) -> dict:
    """Accumulate the gradient of the rollouts' share of L, ``micro_batch_chunks`` rows per graph; ``acting``
    collects r - 1 of the executed tokens of ``batch.acting`` rows."""
    rows, weight = _weighted_rows(trajectories, batch.mask, b)
    row_adv = torch.cat([adv[j].expand(len(r)) for j, r in enumerate(trajectories)]) if trajectories else adv
    sums = {"loss": 0.0, "tokens": 0.0, "clipped": 0.0, "kl_sum": 0.0, "micro_batches": 0}
    for part in _pieces(torch.arange(len(rows)), cfg.micro_batch_chunks):
        logp = logprob_fn(rows[part], cfg.temperature)
        old = batch.old_logp[rows[part]].to(logp.device)
        loss, st = grpo_token_loss(logp, old, row_adv[part], weight[part], cfg.clip_ratio_low, cfg.clip_ratio_high)
        loss.backward()
        sums["loss"] += float(loss.detach())
        for k in ("tokens", "clipped", "kl_sum"):
            sums[k] += st[k]
        sums["micro_batches"] += 1
        if acting is not None:
            mine = (batch.mask[rows[part]] & batch.acting[rows[part], None]).to(logp.device)
            acting.append((torch.exp(logp.detach() - old)[mine] - 1.0).float().cpu())
    return sums


def _sft_gradient(logprob_fn: LogprobFn, batch: RolloutBatch, trajectories: list[torch.Tensor], b: int,
                  cfg: GRPOConfig) -> dict:
    """Accumulate the gradient of the demonstrations' share of L: sum_t w_t sft_coef (-log π_θ(a_t|s_t)), T = 1."""
    rows, weight = _weighted_rows(trajectories, batch.mask, b)
    sums = {"loss": 0.0, "tokens": float((weight > 0).sum()), "micro_batches": 0}
    for part in _pieces(torch.arange(len(rows)), cfg.micro_batch_chunks):
        logp = logprob_fn(rows[part], 1.0)
        loss = -(logp * weight[part].to(logp.device, logp.dtype)).sum() * cfg.sft_coef
        loss.backward()
        sums["loss"] += float(loss.detach())
        sums["micro_batches"] += 1
    return sums


def acting_ratio(logprob_fn: LogprobFn, batch: RolloutBatch, trajectories: list[int], cfg: GRPOConfig) -> dict:
    """``ratio_summary`` of the executed tokens of ``batch.acting`` rows of ``trajectories``, without training."""
    rows_of = batch.rows_of()
    rows = torch.cat([rows_of[i] for i in trajectories]) if trajectories else torch.zeros(0, dtype=torch.long)
    rows = rows[batch.acting[rows]]
    out = []
    with torch.no_grad():
        for part in _pieces(rows, cfg.micro_batch_chunks):
            logp = logprob_fn(part, cfg.temperature)
            old, mine = batch.old_logp[part].to(logp.device), batch.mask[part].to(logp.device)
            out.append((torch.exp(logp - old)[mine] - 1.0).float().cpu())
    return ratio_summary(out)


def _pieces(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    """``x`` in consecutive pieces of ``size`` (none for an empty ``x``, unlike ``Tensor.split``)."""
    return [x[i: i + size] for i in range(0, len(x), size)]


def ratio_summary(r_minus_1: list[torch.Tensor]) -> dict:
    """{n, mean_abs, median_abs, max_abs} of |r - 1| (None for the figures when n is 0)."""
    x = torch.cat(r_minus_1).abs() if r_minus_1 else torch.zeros(0)
    if not len(x):
        return {"n": 0, "mean_abs": None, "median_abs": None, "max_abs": None}
    return {"n": int(len(x)), "mean_abs": float(x.mean()), "median_abs": float(x.median()), "max_abs": float(x.max())}
