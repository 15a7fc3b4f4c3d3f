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

The update itself is :func:`vla_robot.rl.grpo.grpo_update` (its docstring is the objective): the
learner turns the groups' episodes, and the demonstrations drawn for hybrid groups, into a
``grpo.RolloutBatch`` of one row per chunk, with the policy's log-probs of those rows. The update
runs them in micro-batches of ``micro_batch_chunks`` chunks, so memory does not grow with the
episode length.

With ``cfg.lora_rank > 0`` the learner trains a peft LoRA adapter (:mod:`vla_robot.rl.lora`, OFT's
rank and target modules) instead of every weight: the hot-swap sends the adapter's factors, which the
server merges from the base it holds (``runtime.load_weights(..., lora_base=...)``), and the
checkpoint holds the adapter (``lora_adapter/``, peft's files), the base weights once
(``lora_base.safetensors``, a hard link in each checkpoint) and the merged policy in the OFT layout,
which ``load_policy(checkpoint=...)`` serves as it is.

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

import contextlib
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

from vla_robot.rl import distributed
from vla_robot.rl.config import GRPOConfig
from vla_robot.rl.episodes import Episode
from vla_robot.rl.grpo import RolloutBatch, acting_ratio, group_modes, grpo_update
from vla_robot.rl.lora import ADAPTER_DIR, BASE_FILE, LoraAdapter, read_base

STATE_FILE = "learner_state.pt"  # written last: a checkpoint folder holding it is complete
UPDATES_LOG = "updates.jsonl"    # one line per update, for people and the rehearsal
Publish = Callable[..., None]  # publish(state, version) or, LoRA, publish(adapter, version, lora_base=, base=)
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
        if cfg.lora_rank and int(os.environ.get("WORLD_SIZE", "1")) > 1:  # FSDP shards a plain model only
            raise ValueError(f"lora_rank={cfg.lora_rank} under torchrun: FSDP (rl/distributed.py) is for full "
                             "fine-tuning; give --lora-rank 0 for FSDP, or run LoRA in one process (it fits one GPU)")
        # LoRA: peft's adapter injected into the runtime's model, everything else frozen (rl/lora.py)
        self.adapter = LoraAdapter(runtime.model, cfg.lora_rank, cfg.lora_alpha, seed=seed) if cfg.lora_rank else None
        self.dist = distributed.from_env(runtime)  # under torchrun: FSDP across the processes, else None
        if self.dist is not None and not self.dist.is_main:  # one process writes and publishes; none republishes
            self.out_dir, self.publish = None, None
        self.republish_s = float("inf") if self.dist is not None else 30.0
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
        # at most this often, serve our version again when a stale episode arrives (FSDP: never, set above)
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
        held = [i for i, e in enumerate(self.groups[key]) if e.episode_id == episode.episode_id]
        if held:  # the same episode again, not yet trained on: a relabel (vla-robot dataset relabel) wins
            self.groups[key][held[0]] = episode
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
        self.publish_weights()

    def publish_weights(self) -> None:
        """Hand this version to ``publish``: all weights, or with LoRA the adapter (and, should the server
        not hold it, the base) that the server merges."""
        if self.adapter is not None:
            self.publish(self.adapter.update(), self.version, lora_base=self.adapter.base_id, base=self.adapter.base)
            return
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
        episodes, gids = self._take_groups(keys)
        demos, demo_gids = self._draw_demos(keys, episodes, gids)
        stats = self._optimise(episodes, gids, demos, demo_gids)
        self.consumed.update(e.episode_id for e in episodes)
        if stats["opt_steps"]:  # a new policy version
            self.version += 1
            self.runtime.version = self.version
        elapsed = time.perf_counter() - t0
        stats.update(
            update=len(self.history) + 1, version=self.version, groups=len(keys), episodes=len(episodes),
            success=float(np.mean([e.label for e in episodes])) if episodes else float("nan"), seconds=elapsed,
            tokens_per_s=stats["tokens"] / elapsed if elapsed > 0 else 0.0,
            per_task={t: float(np.mean([e.label for e in episodes if e.task == t])) for t in {e.task for e in episodes}},
            skipped=dict(self.skipped),
        )
        with self.dist.full_weights(self.runtime) if self.dist else contextlib.nullcontext():
            self._record(stats)  # checkpoint and publish read the whole model, also under FSDP
        return stats

    def _take_groups(self, keys: list[tuple[str, Hashable]]) -> tuple[list[Episode], list[int]]:
        """The episodes of the groups ``keys`` (taken out of the buffer) and the index of each one's group."""
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
        return episodes, gids

    def _draw_demos(self, keys: list[tuple[str, Hashable]], episodes: list[Episode],
                    gids: list[int]) -> tuple[list[Episode], list[int]]:
        """Hybrid: ``group_size`` demonstrations of its task (drawn with replacement) for each "sft" group."""
        if not episodes:
            return [], []
        modes = group_modes(torch.tensor([float(e.label) for e in episodes]), torch.tensor(gids), self.cfg)
        demos, demo_gids = [], []
        for gi, mode in modes.items():
            pool = self.demos.get(keys[gi][0], []) if mode == "sft" else []
            if pool:
                pick = torch.randint(len(pool), (self.cfg.group_size,), generator=self.generator).tolist()
                demos += [pool[j] for j in pick]
                demo_gids += [gi] * len(pick)
        return demos, demo_gids

    def _optimise(self, episodes: list[Episode], gids: list[int], demos: list[Episode], demo_gids: list[int]) -> dict:
        """``grpo.grpo_update`` on the rollouts and demonstrations, then the on-policy check."""
        batch, logprob_fn = self._rollout_batch(episodes + demos, gids + demo_gids, len(episodes))
        self.runtime.model.train()
        try:
            stats = grpo_update(logprob_fn, batch, self.optimizer, self.params, self.cfg, self.generator)
        finally:
            self.runtime.model.eval()
        if not stats["opt_steps"] and episodes:
            # no step (every group dropped): the check still runs, on what the first mini-batch would be
            first = list(range(min(len(episodes), self.cfg.mini_batch_size)))
            stats["ratio_acting"] = acting_ratio(logprob_fn, batch, first, self.cfg)
        self._check_on_policy(stats["ratio_acting"])
        return stats

    def _rollout_batch(self, trajectories: list[Episode], gids: list[int], n_rollouts: int) -> tuple[RolloutBatch, Callable]:
        """``trajectories`` (the first ``n_rollouts`` rollouts, then demonstrations) as a ``grpo.RolloutBatch``
        of one row per chunk, and the current policy's log-probs of the tokens of its rows."""
        rows = [(i, e, s) for i, e in enumerate(trajectories) for s in e.steps]
        k = np.size(rows[0][2].tokens) if rows else 0

        def stack(name: str, dtype) -> torch.Tensor:
            return torch.from_numpy(np.stack([np.asarray(getattr(s, name), dtype) for *_, s in rows]) if rows
                                    else np.zeros((0, k), dtype))

        batch = RolloutBatch(
            stack("tokens", np.int64), stack("logprobs", np.float32), stack("executed", bool),
            rewards=torch.tensor([float(e.label) for e in trajectories[:n_rollouts]] + [1.0] * (len(trajectories) - n_rollouts)),
            group_ids=torch.tensor(gids, dtype=torch.long), trajectory=torch.tensor([i for i, *_ in rows], dtype=torch.long),
            demo=torch.arange(len(trajectories)) >= n_rollouts,
            acting=torch.tensor([i < n_rollouts and _step_version(e, s) == self.version for i, e, s in rows], dtype=torch.bool))
        observations = [s.observation for *_, s in rows]
        model, to_batch = self.runtime.model, self.runtime.batch  # on the model's device and dtype

        def logprob_fn(idx: torch.Tensor, temperature: float) -> torch.Tensor:
            return model.token_logprobs(to_batch([observations[i] for i in idx.tolist()]), batch.tokens[idx], temperature)
        return batch, logprob_fn if self.dist is None else self.dist.split(logprob_fn)  # FSDP: each process its rows

    def _record(self, stats: dict) -> None:
        """History, the log, the checkpoint and updates.jsonl; then the new version to the server."""
        self.history.append(stats)
        if self.log is not None:
            self.log(stats)
        if self.out_dir is not None:
            # checkpoint before serving: a kill between the two leaves a saved version the server
            # never got (the next update serves a newer one), never a served one the learner lost
            self.save(self.out_dir)
            self._append_updates_log([stats])
        if stats["opt_steps"] and self.publish is not None:
            self.publish_weights()

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
        if self.adapter is None:
            save_checkpoint(self.runtime, tmp, step=self.version)
        else:
            self._save_lora(out_dir, tmp)
        (tmp / "learner_history.json").write_text(json.dumps(self.history, default=float))
        torch.save({
            "version": self.version,
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "consumed": sorted(self.consumed),
            "cfg": {k: getattr(self.cfg, k) for k in self.cfg.__dataclass_fields__},
            "lora_base": self.adapter.base_id if self.adapter is not None else None,
        }, tmp / (STATE_FILE + ".part"))
        os.replace(tmp / (STATE_FILE + ".part"), tmp / STATE_FILE)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
        return final

    def _save_lora(self, out_dir: Path, tmp: Path) -> None:
        """The merged policy in the OFT layout, peft's adapter files and the base: written once per base in
        ``out_dir``, hard-linked into the checkpoint (a 7B base is 13 GB; each checkpoint stays whole)."""
        from vla_robot.policy import save_checkpoint

        with self.adapter.merged():
            save_checkpoint(self.runtime, tmp, step=self.version)
        self.adapter.save(tmp / ADAPTER_DIR)
        base = out_dir / BASE_FILE
        if not base.is_file() or read_base(base)[0] != self.adapter.base_id:
            self.adapter.save_base(out_dir / (BASE_FILE + ".part"))
            os.replace(out_dir / (BASE_FILE + ".part"), base)
        try:
            os.link(base, tmp / BASE_FILE)
        except OSError:  # a file system without hard links
            shutil.copyfile(base, tmp / BASE_FILE)

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
        learner = _resumed(cls, runtime, cfg, checkpoint_dir, state, kwargs)
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


def _resumed(cls, runtime, cfg: GRPOConfig, checkpoint_dir: Path, state: dict, kwargs: dict) -> Learner:
    """A learner on ``runtime`` (the checkpoint's merged weights); for a LoRA checkpoint the adapted weights go
    back to the base W0 and the adapter is loaded, so training carries on from the same factors."""
    saved_rank = int((state.get("cfg") or {}).get("lora_rank", 0))
    if bool(saved_rank) != bool(cfg.lora_rank) or (saved_rank and saved_rank != cfg.lora_rank):
        raise ValueError(f"{checkpoint_dir} was trained with lora_rank={saved_rank} (0: full fine-tuning); resume it "
                         f"with the same (learn --lora-rank {saved_rank}), not {cfg.lora_rank}")
    if not saved_rank:
        return cls(runtime, cfg, **kwargs)
    base_id, base = read_base(checkpoint_dir / BASE_FILE)
    own = runtime.model.state_dict()
    with torch.no_grad():
        for name, w0 in base.items():
            if name not in own or own[name].shape != w0.shape:
                raise ValueError(f"{checkpoint_dir / BASE_FILE}: '{name}' is not a weight of this model's shape")
            own[name].copy_(w0)
    learner = cls(runtime, cfg, **kwargs)
    learner.adapter.base_id = base_id or state["lora_base"]
    learner.adapter.load(checkpoint_dir / ADAPTER_DIR)
    return learner


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


def _step_version(episode: Episode, step) -> int:
    """The policy version that sampled ``step``: Step.version, or the episode's where it is unknown (-1)."""
    v = int(getattr(step, "version", -1))
    return v if v >= 0 else int(episode.version)


def _canonical(value):
    """Metadata values as JSON would carry them (tuples and lists alike, 64 == 64.0)."""
    return json.loads(json.dumps(value, default=str))
