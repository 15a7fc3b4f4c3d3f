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

Memory does not grow with the episode length: the loss of a mini-batch is a sum over its tokens
(``grpo.grpo_token_loss``), so the learner runs it in micro-batches of ``micro_batch_chunks``
chunks, one autograd graph each, and accumulates the gradients before the optimiser step (the same
gradient as one graph over the mini-batch, within float rounding).

The on-policy contract is checked on every update. Before its first optimiser step the weights are
the learner's ``version``; the tokens that version sampled must get back their behaviour log-probs,
so the first mini-batch's ratios r = exp(logp_now - logp_behaviour) of those tokens are reported as
``ratio_acting`` ({n, mean_abs, median_abs, max_abs} of |r - 1|) and a median above
``ratio_tolerance`` is an error that names the likely causes. Episodes that cannot be on-policy by
construction are refused by name instead (counted in ``skipped``, never trained on): a sampling
temperature other than the learner's, or a serving model, dtype or preprocessing (``served_by``)
other than the learner's ``runtime.metadata``. So are episodes an operator took over
(``intervened="skip"``, the default: the outcome is the person's, not the policy's) and chunks whose
tokens never arrived (skipped with a logged reason; an episode left without any is refused).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path

import numpy as np
import torch

from vla_robot.rl.config import GRPOConfig
from vla_robot.rl.episodes import Episode
from vla_robot.rl.grpo import group_advantages, group_modes, grpo_token_loss

STATE_FILE = "learner_state.pt"  # written last: a checkpoint folder holding it is complete
UPDATES_LOG = "updates.jsonl"    # one line per update, for people and the rehearsal
Publish = Callable[[dict, int], None]
# metadata that may differ between the server that acted and the learner without changing a log-prob
_NOT_IDENTITY = {"version", "protocol_version", "max_message_bytes", "max_batch"}
_log = logging.getLogger(__name__)


class Learner:
    def __init__(self, runtime, cfg: GRPOConfig, *, out_dir: str | Path | None = None,
                 publish: Publish | None = None, demos: dict[str, Sequence[Episode]] | None = None,
                 seed: int = 0, log: Callable[[dict], None] | None = None,
                 note: Callable[[str], None] | None = None) -> None:
        """``log(stats)`` gets each update's statistics; ``note(text)`` each refused episode or skipped
        chunk and the on-policy check's errors (default: this module's logger)."""
        cfg.validate()
        self.runtime = runtime
        self.cfg = cfg
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.publish = publish
        self.demos = {k: list(v) for k, v in (demos or {}).items()}
        self.log = log
        self.note = note or _log.warning
        self.params = [p for p in runtime.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, betas=tuple(cfg.betas),
                                           weight_decay=cfg.weight_decay)
        self.generator = torch.Generator().manual_seed(seed)
        self.version = int(getattr(runtime, "version", 0))
        self.consumed: set[str] = set()
        self.groups: dict[tuple[str, Hashable], list[Episode]] = defaultdict(list)
        self.history: list[dict] = []
        self.skipped: Counter[str] = Counter()  # refused episodes / skipped chunks, by reason
        # refused members of each group: the scheduler counted them, so the group completes without them
        self.refused: dict[tuple[str, Hashable], list[str]] = defaultdict(list)
        self.republish_s = 30.0  # at most this often, serve our version again when a stale episode arrives
        self._republished_at = -float("inf")

    # ---- episodes in ------------------------------------------------------------------------
    def add(self, episode: Episode) -> bool:
        """Buffer a labelled episode; unlabelled, already used, refused or too stale ones are not."""
        if episode.label is None or episode.episode_id in self.consumed:
            return False
        self._drop_tokenless_chunks(episode)
        episode.validate()
        refusal = self.refusal(episode)
        if refusal is not None:
            reason, text = refusal
            key = (episode.task, episode.start)
            if episode.episode_id not in self.refused[key]:
                self.refused[key].append(episode.episode_id)
                self.skipped[reason] += 1
                self.note(f"episode {episode.episode_id} not used: {text}")
            return False
        if episode.version < self.version - self.cfg.max_staleness:
            self.consumed.add(episode.episode_id)
            self.skipped["stale"] += 1
            self._serve_again(episode.version)
            return False
        key = (episode.task, episode.start)
        if any(e.episode_id == episode.episode_id for e in self.groups[key]):
            return False
        self.groups[key].append(episode)
        return True

    def _serve_again(self, acted: int) -> None:
        """A stale episode means the server acts with weights far behind ours: it restarted (from its first
        checkpoint) or missed a push. Without this, every later episode would be stale too and no group
        would ever fill. Push our version again, at most every ``republish_s``."""
        now = time.monotonic()
        if self.publish is None or self.version == 0 or now - self._republished_at < self.republish_s:
            return
        self._republished_at = now
        self.note(f"an episode acted by version {acted}, {self.version - acted} behind this learner: "
                  f"serving version {self.version} again (a restarted server?)")
        self._publish_weights()

    def _publish_weights(self) -> None:
        # a copy on the CPU: what the publisher sends from, and no second model on the GPU
        self.publish({k: v.detach().to("cpu", copy=True) for k, v in self.runtime.model.state_dict().items()},
                     self.version)

    def refusal(self, episode: Episode) -> tuple[str, str] | None:
        """Why ``episode`` must not train this learner, as (reason key, message), or None."""
        if getattr(episode, "intervened", False) and self.cfg.intervened == "skip":
            return "intervened", ("an operator took over (Episode.intervened); its label is not the policy's outcome "
                                  "(learn --intervened keep trains on its policy-executed chunks)")
        if not episode.steps:
            return "no_tokens", "no chunk with tokens (nothing the policy sampled to learn from)"
        for i, s in enumerate(episode.steps):
            t = getattr(s, "temperature", None)
            if t is not None and abs(float(t) - self.cfg.temperature) > 1e-6:
                return "temperature", (f"Step.temperature is {float(t):g} (chunk {i}) but the learner's temperature is "
                                       f"{self.cfg.temperature:g}: its behaviour log-probs are at another temperature "
                                       f"(serve at {self.cfg.temperature:g}, or learn --set temperature={float(t):g})")
        served, own = getattr(episode, "served_by", None) or {}, self.runtime.metadata
        for key in sorted(set(served) & set(own) - _NOT_IDENTITY):
            if _canonical(served[key]) != _canonical(own[key]):
                return f"served_by.{key}", (f"served_by['{key}'] is {served[key]!r} (the server that acted) but the "
                                            f"learner's runtime has {own[key]!r}: log-probs recomputed here would not "
                                            "be the behaviour policy's (learn --dtype / --checkpoint to match the server)")
        return None

    def _drop_tokenless_chunks(self, episode: Episode) -> None:
        """A chunk whose tokens never reached the recorder (a late or dropped first frame) has nothing
        to learn from: skip it with a reason, keep the rest of the episode."""
        keep = []
        for i, s in enumerate(episode.steps):
            missing = [n for n in ("tokens", "logprobs", "executed") if getattr(s, n, None) is None
                       or np.size(getattr(s, n)) == 0]
            if missing:
                self.skipped["chunk_without_tokens"] += 1
                self.note(f"episode {episode.episode_id} chunk {i} skipped: no {', '.join(missing)} recorded")
            else:
                keep.append(s)
        episode.steps = keep

    def complete_groups(self) -> list[tuple[str, Hashable]]:
        n = self.cfg.group_size
        keys = dict.fromkeys([*self.groups, *self.refused])
        return [k for k in keys if len(self.groups.get(k, ())) + len(self.refused.get(k, ())) >= n]

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
            # the group's refused members stand in for episodes; decided, so never looked at again
            refused = self.refused.pop(key, [])
            if refused[n:]:
                self.refused[key] = refused[n:]
            self.consumed.update(refused[:n])
            take = n - len(refused[:n])
            eps = self.groups[key][:take]
            self.groups[key] = self.groups[key][take:]
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
        if not stats["opt_steps"] and episodes:
            # no step (every group dropped): the check still runs, on what the first mini-batch would be
            stats["ratio_acting"] = self.acting_ratio(episodes[: self.cfg.mini_batch_size])
            self._check_on_policy(stats["ratio_acting"])
        for e in episodes:
            self.consumed.add(e.episode_id)
        if stats["opt_steps"]:  # a new policy version
            self.version += 1
            self.runtime.version = self.version
        elapsed = time.perf_counter() - t0
        stats.update(
            update=len(self.history) + 1, version=self.version, groups=len(keys),
            groups_rl=sum(m == "rl" for m in modes.values()),
            groups_sft=sum(m == "sft" for m in modes.values()), groups_dropped=sum(m == "drop" for m in modes.values()),
            episodes=len(episodes), success=float(rewards.mean()) if len(rewards) else float("nan"),
            adv_abs_mean=float(adv.abs().mean()) if len(adv) else 0.0, seconds=elapsed,
            tokens_per_s=stats["tokens"] / elapsed if elapsed > 0 else 0.0,
            per_task={t: float(np.mean([e.label for e in episodes if e.task == t])) for t in {e.task for e in episodes}},
            skipped=dict(self.skipped),
        )
        self.history.append(stats)
        if self.log is not None:
            self.log(stats)
        if self.out_dir is not None:
            # checkpoint before serving: a kill between the two leaves a saved version the server
            # never got (the next update serves a newer one), never a served one the learner lost
            self.save(self.out_dir)
            self._append_updates_log([stats])
        if stats["opt_steps"] and self.publish is not None:
            self._publish_weights()
        return stats

    def _optimise(self, rl_items: list[tuple[Episode, float]], sft_items: list[Episode]) -> dict:
        cfg = self.cfg
        items = [("rl", e, a) for e, a in rl_items] + [("sft", e, 0.0) for e in sft_items]
        out = {"loss": 0.0, "clip_frac": 0.0, "approx_kl": 0.0, "grad_norm": 0.0, "opt_steps": 0, "tokens": 0.0,
               "micro_batches": 0, "rl_trajectories": len(rl_items), "sft_trajectories": len(sft_items),
               "ratio_acting": ratio_summary([])}
        if not items:
            return out
        self.runtime.model.train()
        self.optimizer.zero_grad(set_to_none=True)  # nothing left over from whoever trained the model before
        for epoch in range(cfg.ppo_epochs):
            perm = torch.randperm(len(items), generator=self.generator).tolist()
            for s in range(0, len(perm), cfg.mini_batch_size):
                mb = [items[j] for j in perm[s: s + cfg.mini_batch_size]]
                # the weights are still the acting version's until the first optimiser step
                acting = [] if epoch == 0 and s == 0 else None
                loss, st = self._accumulate(mb, acting)
                if acting is not None:
                    out["ratio_acting"] = ratio_summary(acting)
                gn = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
                self.optimizer.step()
                # free the gradients now, not before the next backward: the next forward then runs
                # without them (a 7B model's bf16 gradients are 15 GB)
                self.optimizer.zero_grad(set_to_none=True)
                n = max(st["tokens"], 1.0)
                out["loss"] += loss
                out["grad_norm"] += float(gn)
                out["clip_frac"] += st["clipped"] / n
                out["approx_kl"] += st["kl_sum"] / n
                out["tokens"] += st["tokens"] + st["sft_tokens"]
                out["micro_batches"] += st["micro_batches"]
                out["opt_steps"] += 1
        self.runtime.model.eval()
        k = max(out["opt_steps"], 1)
        for name in ("loss", "grad_norm", "clip_frac", "approx_kl"):
            out[name] /= k
        self._check_on_policy(out["ratio_acting"])
        return out

    def _accumulate(self, mb: list[tuple[str, Episode, float]], acting: list[torch.Tensor] | None) -> tuple[float, dict]:
        """Gradients of one mini-batch's loss, accumulated over micro-batches of chunks.

        The mini-batch loss is (the RL trajectories' token-mean GRPO terms + sft_coef x the SFT
        trajectories x the demonstrations' mean cross-entropy) / trajectories: sums over chunks, so
        each micro-batch adds its share with the right weight and no graph spans more than
        ``micro_batch_chunks`` chunks. ``acting`` collects r - 1 of the executed tokens the learner's
        own version sampled. Returns the loss and token sums."""
        b = len(mb)
        sums = {"tokens": 0.0, "clipped": 0.0, "kl_sum": 0.0, "sft_tokens": 0.0, "micro_batches": 0}
        loss = self._accumulate_rl([(e, a) for k, e, a in mb if k == "rl"], b, sums, acting)
        loss += self._accumulate_sft([e for k, e, _ in mb if k == "sft"], b, sums)
        return loss, sums

    def _accumulate_rl(self, rl: list[tuple[Episode, float]], b: int, sums: dict, acting: list | None) -> float:
        """The GRPO terms: every chunk with its trajectory's advantage and weight 1 / (executed tokens x b)."""
        cfg, model, batch, dev = self.cfg, self.runtime.model, self.runtime.batch, self.runtime.device
        chunks, total = [], 0.0
        for e, a in rl:
            n_exec = max(sum(int(s.executed.sum()) for s in e.steps), 1)
            chunks += [(s, a, 1.0 / (n_exec * b), _step_version(e, s) == self.version) for s in e.steps]
        for i in range(0, len(chunks), cfg.micro_batch_chunks):
            part = chunks[i: i + cfg.micro_batch_chunks]
            logp = model.token_logprobs(batch([s.observation for s, *_ in part]),
                                        torch.from_numpy(np.stack([s.tokens for s, *_ in part])), cfg.temperature)
            old = torch.from_numpy(np.stack([s.logprobs for s, *_ in part])).to(dev)
            executed = torch.from_numpy(np.stack([s.executed for s, *_ in part]))
            weight = executed.float() * torch.tensor([w for *_, w, _ in part])[:, None]
            loss, st = grpo_token_loss(logp, old, torch.tensor([a for _, a, *_ in part]), weight,
                                       cfg.clip_ratio_low, cfg.clip_ratio_high)
            loss.backward()
            total += float(loss.detach())
            for k in ("tokens", "clipped", "kl_sum"):
                sums[k] += st[k]
            sums["micro_batches"] += 1
            if acting is not None:
                mine = executed & torch.tensor([own for *_, own in part])[:, None]
                acting.append((torch.exp(logp.detach() - old)[mine.to(dev)] - 1.0).float().cpu())
        return total

    def _accumulate_sft(self, demos: list[Episode], b: int, sums: dict) -> float:
        """Hybrid: sft_coef x len(demos) / b x the mean cross-entropy over all the demonstrations' tokens."""
        cfg, model, batch = self.cfg, self.runtime.model, self.runtime.batch
        steps = [s for e in demos for s in e.steps]
        n_tok = sum(int(np.size(s.tokens)) for s in steps)
        total = 0.0
        for i in range(0, len(steps), cfg.micro_batch_chunks):
            part = steps[i: i + cfg.micro_batch_chunks]
            ce = model.sft_loss(batch([s.observation for s in part]), torch.from_numpy(np.stack([s.tokens for s in part])),
                                reduction="sum", vocab="bins")
            loss = ce * (cfg.sft_coef * len(demos) / b / n_tok)
            loss.backward()
            total += float(loss.detach())
            sums["micro_batches"] += 1
        sums["sft_tokens"] += float(n_tok)
        return total

    def acting_ratio(self, episodes: Sequence[Episode]) -> dict:
        """``ratio_acting`` of the executed tokens of ``episodes`` that this version sampled, at the
        current weights, without training."""
        model, batch, dev, m = self.runtime.model, self.runtime.batch, self.runtime.device, self.cfg.micro_batch_chunks
        steps = [s for e in episodes for s in e.steps if _step_version(e, s) == self.version]
        out = []
        with torch.no_grad():
            for i in range(0, len(steps), m):
                part = steps[i: i + m]
                logp = model.token_logprobs(batch([s.observation for s in part]),
                                            torch.from_numpy(np.stack([s.tokens for s in part])), self.cfg.temperature)
                old = torch.from_numpy(np.stack([s.logprobs for s in part])).to(dev)
                executed = torch.from_numpy(np.stack([s.executed for s in part])).to(dev)
                out.append((torch.exp(logp - old)[executed] - 1.0).float().cpu())
        return ratio_summary(out)

    def _check_on_policy(self, ratio: dict) -> None:
        """The learner at the acting version must reproduce the behaviour log-probs; say why if not."""
        if ratio["n"] and ratio["median_abs"] > self.cfg.ratio_tolerance:
            self.note(
                f"ON-POLICY CHECK FAILED at version {self.version}: median |r - 1| = "
                f"{ratio['median_abs']:.3g} over {ratio['n']} tokens the acting version sampled (tolerance "
                f"{self.cfg.ratio_tolerance:g}). The learner does not reproduce the behaviour log-probs; likely causes: "
                "the recorded observation is not what the server saw (a later frame, lossy video images, another "
                "state), a different instruction or temperature, a different dtype (server bf16, learner fp32), "
                "other preprocessing (image size, normalisation statistics), or other weights under the same version "
                "(a server not fed by this learner).")

    def trajectory_logprobs(self, episodes: Sequence[Episode], temperature: float):
        """Current log-probs, behaviour log-probs and executed mask, each [B, T] (T padded).

        With gradients on, one graph spans every chunk of ``episodes``: for evaluations under
        ``torch.no_grad()`` (updates go through :meth:`_accumulate`)."""
        obs = [s.observation for e in episodes for s in e.steps]
        toks = np.stack([s.tokens for e in episodes for s in e.steps])
        model, batch = self.runtime.model, self.runtime.batch  # on the model's device and dtype
        m = self.cfg.micro_batch_chunks
        parts = [model.token_logprobs(batch(obs[i: i + m]), torch.from_numpy(toks[i: i + m]), temperature)
                 for i in range(0, len(obs), m)]
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
        """Weights in the OFT layout (``save_checkpoint``) + the learner's own state, swapped in by renames.

        ``learner_state.pt`` is written last, so a folder that holds it is complete; a kill at any
        moment leaves either ``checkpoint`` or a complete folder :func:`find_checkpoint` restores."""
        from vla_robot.policy import save_checkpoint

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        final, old = out_dir / "checkpoint", out_dir / ".checkpoint-old"
        if not (final / STATE_FILE).is_file():
            find_checkpoint(out_dir)  # a save that was killed half-way: put its complete folder back first
        for stale in [*out_dir.glob(".checkpoint-*.tmp"), old]:  # leftovers of a killed save
            shutil.rmtree(stale, ignore_errors=True)
        tmp = out_dir / f".checkpoint-{self.version}.tmp"
        tmp.mkdir(parents=True)
        save_checkpoint(self.runtime, tmp, step=self.version)
        (tmp / "learner_history.json").write_text(json.dumps(self.history, default=float))
        torch.save({
            "version": self.version,
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "consumed": sorted(self.consumed),
            "cfg": {k: getattr(self.cfg, k) for k in self.cfg.__dataclass_fields__},
        }, tmp / (STATE_FILE + ".part"))
        os.replace(tmp / (STATE_FILE + ".part"), tmp / STATE_FILE)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
        return final

    @classmethod
    def resume(cls, checkpoint_dir: str | Path, cfg: GRPOConfig, *, device: str = "cpu", dtype: str = "float32",
               **kwargs) -> Learner:
        """A learner in exactly the state saved in ``checkpoint_dir`` (weights, optimiser, version, RNG),
        on ``device`` in ``dtype`` (the optimiser state follows the weights there)."""
        from vla_robot.policy import load_policy

        checkpoint_dir = Path(checkpoint_dir)
        if not (checkpoint_dir / STATE_FILE).is_file():
            raise FileNotFoundError(f"{checkpoint_dir} has no {STATE_FILE}: not a learner checkpoint "
                                    "(expected the 'checkpoint' folder a Learner saved)")
        runtime = load_policy(checkpoint=str(checkpoint_dir), device=device, dtype=dtype)
        state = torch.load(checkpoint_dir / STATE_FILE, weights_only=True, map_location="cpu")
        learner = cls(runtime, cfg, **kwargs)
        learner.optimizer.load_state_dict(state["optimizer"])  # cast to each parameter's device and dtype
        learner.generator.set_state(state["generator"])
        learner.version = int(state["version"])
        runtime.version = learner.version
        learner.consumed = set(state["consumed"])
        hist = checkpoint_dir / "learner_history.json"
        if hist.is_file():
            learner.history = json.loads(hist.read_text())
        if learner.out_dir is not None:
            learner._append_updates_log(learner.history)  # lines a kill took between checkpoint and log
        return learner

    def _append_updates_log(self, entries: list[dict]) -> None:
        """Append to ``<out>/updates.jsonl`` the updates it does not hold yet (by ``update`` number;
        an update whose groups were all dropped makes no version but is a line too)."""
        path = self.out_dir / UPDATES_LOG
        have = set()
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    have.add(json.loads(line).get("update"))
                except json.JSONDecodeError:
                    pass  # a line a kill cut short; the next one starts on a fresh line
        new = [e for e in entries if e.get("update") not in have]
        if new:
            with path.open("a") as f:
                if path.stat().st_size and not path.read_text().endswith("\n"):
                    f.write("\n")
                for e in new:
                    f.write(json.dumps(e, default=float) + "\n")


def find_checkpoint(out_dir: str | Path) -> Path | None:
    """``out_dir/checkpoint`` if there is one, else what a save killed between its renames left
    complete (restored to ``checkpoint``); None when the learner never saved there."""
    out_dir = Path(out_dir)
    final = out_dir / "checkpoint"
    if (final / STATE_FILE).is_file():
        return final
    done = sorted((p for p in out_dir.glob(".checkpoint-*.tmp") if (p / STATE_FILE).is_file()),
                  key=lambda p: int(p.name.split("-")[1].split(".")[0]))
    if not done and (out_dir / ".checkpoint-old" / STATE_FILE).is_file():
        done = [out_dir / ".checkpoint-old"]
    if not done:
        return None
    shutil.rmtree(final, ignore_errors=True)
    done[-1].rename(final)
    return final


def ratio_summary(r_minus_1: list[torch.Tensor]) -> dict:
    """{n, mean_abs, median_abs, max_abs} of |r - 1| (None for the figures when n is 0)."""
    x = torch.cat(r_minus_1).abs() if r_minus_1 else torch.zeros(0)
    if not len(x):
        return {"n": 0, "mean_abs": None, "median_abs": None, "max_abs": None}
    return {"n": int(len(x)), "mean_abs": float(x.mean()), "median_abs": float(x.median()), "max_abs": float(x.max())}


def _step_version(episode: Episode, step) -> int:
    """The policy version that sampled ``step``: Step.version, or the episode's where it is unknown (-1)."""
    v = int(getattr(step, "version", -1))
    return v if v >= 0 else int(episode.version)


def _canonical(value):
    """Metadata values as JSON would carry them (tuples and lists alike, 64 == 64.0)."""
    return json.loads(json.dumps(value, default=str))
