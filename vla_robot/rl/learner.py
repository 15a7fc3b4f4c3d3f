"""The RL learner: labelled episodes in, policy versions out.

Episodes arrive one by one (from the recorder's dataset on a robot, from the twin in the demo) and
while the learner works. The learner buffers them by group (task, start condition); when
``batch_groups`` complete groups are ready it makes one GRPO update (hybrid: an SFT loss on the
task's demonstrations replaces RL for a group that never succeeds), bumps the policy version,
hands the new weights to ``publish(state_dict, version)`` (the server's hot-swap) and checkpoints
in the OFT layout plus ``learner_state.pt`` (optimiser, version, RNG, consumed episodes), so that a
restarted learner carries on exactly where it was and skips what it already used.

Behaviour log-probs come from the rollout (the version that acted) and episodes acted by a version
older than ``max_staleness`` updates are dropped, so a slow robot never trains on far-off-policy data.
"""
from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path

import numpy as np
import torch

from vla_robot.rl.config import GRPOConfig
from vla_robot.rl.episodes import Episode
from vla_robot.rl.grpo import group_advantages, group_modes, grpo_loss

STATE_FILE = "learner_state.pt"
Publish = Callable[[dict, int], None]


class Learner:
    def __init__(self, runtime, cfg: GRPOConfig, *, out_dir: str | Path | None = None,
                 publish: Publish | None = None, demos: dict[str, Sequence[Episode]] | None = None,
                 seed: int = 0, forward_batch: int = 64, log: Callable[[dict], None] | None = None) -> None:
        cfg.validate()
        self.runtime = runtime
        self.cfg = cfg
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.publish = publish
        self.demos = {k: list(v) for k, v in (demos or {}).items()}
        self.forward_batch = forward_batch
        self.log = log
        self.params = [p for p in runtime.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, betas=tuple(cfg.betas),
                                           weight_decay=cfg.weight_decay)
        self.generator = torch.Generator().manual_seed(seed)
        self.version = int(getattr(runtime, "version", 0))
        self.consumed: set[str] = set()
        self.groups: dict[tuple[str, Hashable], list[Episode]] = defaultdict(list)
        self.history: list[dict] = []

    # ---- episodes in ------------------------------------------------------------------------
    def add(self, episode: Episode) -> bool:
        """Buffer a labelled episode; unlabelled, already used or too stale ones are ignored."""
        episode.validate()
        if episode.label is None or episode.episode_id in self.consumed:
            return False
        if episode.version < self.version - self.cfg.max_staleness:
            self.consumed.add(episode.episode_id)
            return False
        key = (episode.task, episode.start)
        if any(e.episode_id == episode.episode_id for e in self.groups[key]):
            return False
        self.groups[key].append(episode)
        return True

    def complete_groups(self) -> list[tuple[str, Hashable]]:
        n = self.cfg.group_size
        return [k for k, eps in self.groups.items() if len(eps) >= n]

    def ready(self) -> bool:
        return len(self.complete_groups()) >= self.cfg.batch_groups

    # ---- the update -------------------------------------------------------------------------
    def step(self, force: bool = False) -> dict | None:
        """One update if a batch of complete groups is ready (or ``force`` and any is); else None."""
        keys = self.complete_groups()
        if not keys or (len(keys) < self.cfg.batch_groups and not force):
            return None
        keys = keys[: self.cfg.batch_groups]
        t0 = time.perf_counter()
        n = self.cfg.group_size
        episodes, gids = [], []
        for gi, key in enumerate(keys):
            eps = self.groups[key][:n]
            self.groups[key] = self.groups[key][n:]
            if not self.groups[key]:
                del self.groups[key]
            # drop members that went stale while the group filled up
            eps = [e for e in eps if e.version >= self.version - self.cfg.max_staleness]
            episodes += eps
            gids += [gi] * len(eps)
        rewards = torch.tensor([float(e.label) for e in episodes])
        group_ids = torch.tensor(gids, dtype=torch.long)
        modes = group_modes(rewards, group_ids, self.cfg) if episodes else {}
        adv = group_advantages(rewards, group_ids, self.cfg.adv_eps) if episodes else rewards
        rl_items = [(e, float(adv[i])) for i, e in enumerate(episodes) if modes[gids[i]] == "rl"]
        sft_items: list[Episode] = []
        for gi, mode in modes.items():
            if mode == "sft":
                task = keys[gi][0]
                pool = self.demos.get(task, [])
                if pool:
                    pick = torch.randint(len(pool), (n,), generator=self.generator).tolist()
                    sft_items += [pool[j] for j in pick]
        stats = self._optimise(rl_items, sft_items)
        for e in episodes:
            self.consumed.add(e.episode_id)
        if stats["opt_steps"]:  # a new policy version: serve it
            self.version += 1
            self.runtime.version = self.version
            if self.publish is not None:
                # a copy on the CPU: what the publisher sends from, and no second model on the GPU
                self.publish({k: v.detach().to("cpu", copy=True) for k, v in self.runtime.model.state_dict().items()},
                             self.version)
        elapsed = time.perf_counter() - t0
        stats.update(
            version=self.version, groups=len(keys), groups_rl=sum(m == "rl" for m in modes.values()),
            groups_sft=sum(m == "sft" for m in modes.values()), groups_dropped=sum(m == "drop" for m in modes.values()),
            episodes=len(episodes), success=float(rewards.mean()) if len(rewards) else float("nan"),
            adv_abs_mean=float(adv.abs().mean()) if len(adv) else 0.0, seconds=elapsed,
            tokens_per_s=stats["tokens"] / elapsed if elapsed > 0 else 0.0,
            per_task={t: float(np.mean([e.label for e in episodes if e.task == t])) for t in {e.task for e in episodes}},
        )
        self.history.append(stats)
        if self.log is not None:
            self.log(stats)
        if self.out_dir is not None:
            self.save(self.out_dir)
        return stats

    def _optimise(self, rl_items: list[tuple[Episode, float]], sft_items: list[Episode]) -> dict:
        cfg = self.cfg
        items = [("rl", e, a) for e, a in rl_items] + [("sft", e, 0.0) for e in sft_items]
        out = {"loss": 0.0, "clip_frac": 0.0, "approx_kl": 0.0, "grad_norm": 0.0, "opt_steps": 0, "tokens": 0.0,
               "rl_trajectories": len(rl_items), "sft_trajectories": len(sft_items)}
        if not items:
            return out
        self.runtime.model.train()
        self.optimizer.zero_grad(set_to_none=True)  # nothing left over from whoever trained the model before
        for _ in range(cfg.ppo_epochs):
            perm = torch.randperm(len(items), generator=self.generator).tolist()
            for s in range(0, len(perm), cfg.mini_batch_size):
                mb = [items[j] for j in perm[s: s + cfg.mini_batch_size]]
                rl = [(e, a) for k, e, a in mb if k == "rl"]
                sf = [e for k, e, _ in mb if k == "sft"]
                total = torch.zeros((), device=self.runtime.device)
                if rl:
                    logp, old, mask = self.trajectory_logprobs([e for e, _ in rl], cfg.temperature)
                    loss_rl, st = grpo_loss(logp, old, torch.tensor([a for _, a in rl]), mask,
                                            cfg.clip_ratio_low, cfg.clip_ratio_high)
                    total = total + loss_rl * len(rl)
                    out["clip_frac"] += st["clip_frac"]
                    out["approx_kl"] += st["approx_kl"]
                    out["tokens"] += st["tokens"]
                if sf:  # the policy's SFT loss on the demonstrations (cross-entropy over the 256 action bins)
                    obs = [s.observation for e in sf for s in e.steps]
                    toks = torch.from_numpy(np.stack([s.tokens for e in sf for s in e.steps]))
                    loss_sft = self.runtime.model.sft_loss(self.runtime.batch(obs), toks, vocab="bins")
                    total = total + cfg.sft_coef * loss_sft * len(sf)
                    out["tokens"] += float(toks.numel())
                loss = total / len(mb)
                loss.backward()
                gn = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
                self.optimizer.step()
                # free the gradients now, not before the next backward: the next forward then runs
                # without them (a 7B model's bf16 gradients are 15 GB)
                self.optimizer.zero_grad(set_to_none=True)
                out["loss"] += float(loss.detach())
                out["grad_norm"] += float(gn)
                out["opt_steps"] += 1
        self.runtime.model.eval()
        k = max(out["opt_steps"], 1)
        for name in ("loss", "grad_norm", "clip_frac", "approx_kl"):
            out[name] /= k
        return out

    def trajectory_logprobs(self, episodes: Sequence[Episode], temperature: float):
        """Current log-probs, behaviour log-probs and executed mask, each [B, T] (T padded)."""
        obs = [s.observation for e in episodes for s in e.steps]
        toks = np.stack([s.tokens for e in episodes for s in e.steps])
        model, batch = self.runtime.model, self.runtime.batch  # on the model's device and dtype
        parts = [model.token_logprobs(batch(obs[i: i + self.forward_batch]),
                                      torch.from_numpy(toks[i: i + self.forward_batch]), temperature)
                 for i in range(0, len(obs), self.forward_batch)]
        flat = torch.cat(parts)  # [sum K_i, H*D]
        lengths = [len(e.steps) * toks.shape[1] for e in episodes]
        t_max = max(lengths)
        logp = flat.new_zeros(len(episodes), t_max)
        # the stored behaviour log-probs and masks are assembled on the CPU and moved once
        old = torch.zeros(len(episodes), t_max)
        mask = torch.zeros(len(episodes), t_max, dtype=torch.bool)
        row = 0
        for b, e in enumerate(episodes):
            k = len(e.steps)
            logp[b, : lengths[b]] = flat[row: row + k].reshape(-1)
            old[b, : lengths[b]] = torch.from_numpy(np.concatenate([s.logprobs for s in e.steps]))
            mask[b, : lengths[b]] = torch.from_numpy(np.concatenate([s.executed for s in e.steps]))
            row += k
        return logp, old.to(flat.device), mask.to(flat.device)

    # ---- checkpoints ------------------------------------------------------------------------
    def save(self, out_dir: str | Path) -> Path:
        """Weights in the OFT layout (``save_checkpoint``) + the learner's own state; atomic rename."""
        from vla_robot.policy import save_checkpoint

        out_dir = Path(out_dir)
        tmp = out_dir / f".checkpoint-{self.version}.tmp"
        final = out_dir / "checkpoint"
        tmp.mkdir(parents=True, exist_ok=True)
        save_checkpoint(self.runtime, tmp, step=self.version)
        torch.save({
            "version": self.version,
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "consumed": sorted(self.consumed),
            "cfg": {k: getattr(self.cfg, k) for k in self.cfg.__dataclass_fields__},
        }, tmp / STATE_FILE)
        (tmp / "learner_history.json").write_text(json.dumps(self.history, default=float))
        old = out_dir / ".checkpoint-old"
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        if old.exists():
            import shutil
            shutil.rmtree(old)
        return final

    @classmethod
    def resume(cls, checkpoint_dir: str | Path, cfg: GRPOConfig, **kwargs) -> Learner:
        """A learner in exactly the state saved in ``checkpoint_dir`` (weights, optimiser, version, RNG)."""
        from vla_robot.policy import load_policy

        checkpoint_dir = Path(checkpoint_dir)
        if not (checkpoint_dir / STATE_FILE).is_file():
            raise FileNotFoundError(f"{checkpoint_dir} has no {STATE_FILE}: not a learner checkpoint "
                                    "(expected the 'checkpoint' folder a Learner saved)")
        runtime = load_policy(checkpoint=str(checkpoint_dir))
        state = torch.load(checkpoint_dir / STATE_FILE, weights_only=True)
        learner = cls(runtime, cfg, **kwargs)
        learner.optimizer.load_state_dict(state["optimizer"])
        learner.generator.set_state(state["generator"])
        learner.version = int(state["version"])
        runtime.version = learner.version
        learner.consumed = set(state["consumed"])
        hist = checkpoint_dir / "learner_history.json"
        if hist.is_file():
            learner.history = json.loads(hist.read_text())
        return learner
