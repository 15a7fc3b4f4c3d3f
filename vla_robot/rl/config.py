"""Hyper-parameters of the RL fine-tuning (GRPO, SimpleVLA-RL), one preset per model size.

Standard library only, so the ROS nodes and the CLI can read it without torch. The algorithm of
both presets is SimpleVLA-RL's LIBERO launcher (reference/simplevla_openvla_oft.md §3.5: n = 8,
clip 0.8/1.28, lr 5e-6 for the 7B); what changes is the update rate, which a real robot sets:

``oft-7b``
    One update after **every complete group** (``batch_groups=1``): 8 episodes of one task and
    start condition, about 8-10 minutes of robot time at 30-s episodes plus resets and labels.
    SimpleVLA-RL's 64 prompts x 8 samples per update is 512 episodes, some 8 hours of one robot
    per update, during which the served policy would never change. One optimiser step per update
    (``mini_batch_size=8``, the group) at the launcher's lr 5e-6.

    **LoRA by default** (``lora_rank=32``, OFT's rank, alpha and target modules: ``rl/lora.py``):
    full AdamW on one GPU peaked at 70.1 GiB (benchmarks/rl_update.py, mini-batch 2 x 2 chunks),
    the edge of an 80 GB card, and every update hot-swapped the whole model, about 15 GB over ZMQ;
    a rank-32 adapter is 110 M values, with the fully trained proprio projector a 253 MB push in
    bfloat16 (arithmetic from the shapes, docs/lora.md), and OFT's published policies were
    fine-tuned this way. ``lora_rank=0``
    (``learn --lora-rank 0``) is SimpleVLA-RL's full fine-tuning, the recipe its lr 5e-6 was
    measured with. That lr is kept for LoRA and is NOT tuned for it: at one lr Adam moves a
    LoRA-merged weight by about alpha/r / sqrt(r) = 1/11 of what it moves a fully trained one
    (arithmetic, at A's initial scale), so LoRA GRPO likely wants a larger lr (OFT's LoRA SFT used
    5e-4 where OpenVLA's full fine-tuning used 2e-5). No 7B LoRA GRPO run has measured it yet. The learner micro-batches by
    chunks (``micro_batch_chunks=4``: a 30-s episode has 100-200 chunks; 4 chunks of the 7B in
    bf16 is what fitted beside AdamW on one 80 GB GPU, benchmarks/rl_update.py), so memory does not
    grow with the episode length. Run it with ``vla-robot learn --dtype bfloat16 --device cuda``,
    the dtype the server serves in.
``tiny``
    The 100k-parameter CPU policy of the demo and the rehearsal: the same rate (one update per
    complete group of 8, ``batch_groups=1``), a larger step size (3e-4) for a small model, 64 chunks
    per micro-batch (float32 on the CPU). Full fine-tuning (``lora_rank=0``): the demo's behaviour,
    measured that way.

The group size is shared with the graph: the episode manager's scheduler
(``episode_manager.group_size``, default 8) must run groups of exactly the learner's ``group_size``,
or groups never complete (too small) or mix start conditions (too large).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

Mode = Literal["rl", "sft", "hybrid"]


@dataclass
class GRPOConfig:
    """Everything that decides a GRPO update. Names follow SimpleVLA-RL / veRL."""

    # --- groups and rewards -----------------------------------------------------------------
    group_size: int = 8                 # n rollouts per (task, start condition)  (data.n_samples)
    accuracy_lower: float = 0.1         # dynamic sampling: keep groups whose success rate is in
    accuracy_upper: float = 0.9         #   [lower, upper]; with n = 8 that drops 0/8 and 8/8
    adv_eps: float = 1e-6               # A = (R - mean) / (std + eps), std unbiased
    # --- PPO clip ("clip-higher") -----------------------------------------------------------
    clip_ratio_low: float = 0.2         # ratio >= 1 - 0.2 = 0.8
    clip_ratio_high: float = 0.28       # ratio <= 1 + 0.28 = 1.28
    temperature: float = 1.6            # rollout temperature; log-probs are recomputed at the same T
    # --- optimiser (AdamW, constant lr, no KL, no entropy bonus) ------------------------------
    lr: float = 5e-6
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ppo_epochs: int = 1
    mini_batch_size: int = 128          # trajectories per optimiser step (ppo_mini_batch_size)
    # --- real-world adaptation --------------------------------------------------------------
    batch_groups: int = 64              # update once this many complete, kept groups are ready
    max_staleness: int = 4              # drop episodes acted by a version older than this many updates
    mode: Mode = "hybrid"               # rl only / sft only / hybrid (SFT on demos where a group never succeeds)
    sft_coef: float = 1.0               # weight of the SFT loss that replaces RL for an all-failure group
    # --- memory and the on-policy contract ----------------------------------------------------
    micro_batch_chunks: int = 4         # chunks per forward/backward; gradients accumulate over a mini-batch
    ratio_tolerance: float = 1e-2       # median |r - 1| of acting-version tokens above this is an error
    intervened: Literal["skip", "keep"] = "skip"  # episodes an operator took over: skip = no RL update
    # --- LoRA (rl/lora.py; OFT's vla-scripts/finetune.py: r 32, alpha min(r, 16), dropout 0) ---------
    lora_rank: int = 0                  # 0: full fine-tuning; > 0: a peft LoRA adapter of this rank
    lora_alpha: float = 0.0             # 0: OFT's min(lora_rank, 16). No dropout: rl/lora.py says why

    def validate(self) -> None:
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 (a group needs two outcomes to compare), got {self.group_size}")
        if not 0.0 <= self.accuracy_lower <= self.accuracy_upper <= 1.0:
            raise ValueError(
                f"accuracy bounds must satisfy 0 <= lower <= upper <= 1, got [{self.accuracy_lower}, {self.accuracy_upper}]"
            )
        if not (0.0 < self.clip_ratio_low < 1.0 and self.clip_ratio_high > 0.0):
            raise ValueError(
                f"clip ratios must be 0 < low < 1 and high > 0 (ratio in [1-low, 1+high]), "
                f"got low={self.clip_ratio_low}, high={self.clip_ratio_high}"
            )
        for name in ("temperature", "lr", "grad_clip", "adv_eps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("ppo_epochs", "mini_batch_size", "batch_groups", "micro_batch_chunks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0 (policy versions), got {self.max_staleness}")
        if self.mode not in ("rl", "sft", "hybrid"):
            raise ValueError(f"mode must be 'rl', 'sft' or 'hybrid', got {self.mode!r}")
        if self.intervened not in ("skip", "keep"):
            raise ValueError(f"intervened must be 'skip' or 'keep', got {self.intervened!r}")
        if self.lora_rank < 0 or self.lora_alpha < 0:
            raise ValueError(f"lora_rank must be >= 0 (0: full fine-tuning) and lora_alpha >= 0 (0: min(rank, 16)); "
                             f"got {self.lora_rank}, {self.lora_alpha}")
        if not self.ratio_tolerance > 0:
            raise ValueError(f"ratio_tolerance must be > 0 (median |r - 1|), got {self.ratio_tolerance}")


PRESETS: dict[str, GRPOConfig] = {
    # SimpleVLA-RL's algorithm at a robot's rate: an update per complete group (module docstring)
    # and LoRA at OFT's rank 32 (module docstring: why, and what is not tuned)
    "oft-7b": GRPOConfig(batch_groups=1, mini_batch_size=8, micro_batch_chunks=4, lora_rank=32),
    # The tiny CPU policy of the demo: same rate, bigger steps on a small model.
    "tiny": GRPOConfig(group_size=8, lr=3e-4, mini_batch_size=32, batch_groups=1, max_staleness=2,
                       micro_batch_chunks=64),
}


def preset(name: str, **overrides) -> GRPOConfig:
    """The hyper-parameters for a model size, with overrides; errors name the valid choices."""
    if name not in PRESETS:
        raise ValueError(f"unknown GRPO preset {name!r}; expected one of {sorted(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(GRPOConfig)}
    unknown = set(overrides) - fields
    if unknown:
        raise ValueError(f"unknown GRPO hyper-parameter(s) {sorted(unknown)}; expected some of {sorted(fields)}")
    cfg = dataclasses.replace(PRESETS[name], **overrides)
    cfg.validate()
    return cfg


@dataclass
class RLFinetuneConfig:
    """The `rl-finetune --sim` run on the twin (the demo): SFT warm-up, GRPO rounds, evaluation."""

    task: str = "reach"
    cubes: int = 1                      # cubes on the table (reach: 1..3); 3: tell the named one from two others
    preset: str = "tiny"                # GRPO hyper-parameters (PRESETS); the fields below override it
    image_size: int = 64
    action_space: Literal["absolute", "delta"] = "delta"   # the policy's actions (PolicyModelConfig.action_space)
    episode_s: float = 2.0              # twin episode length (the expert needs ~0.5 s)
    seed: int = 0
    demos: int = 150                    # scripted-expert episodes for the SFT warm-up
    sft_steps: int = 600                # short on purpose: the SFT policy should succeed only sometimes
    sft_batch: int = 32
    sft_lr: float = 2e-3
    group_size: int = 8
    groups_per_round: int = 12          # start states per round (x group_size rollouts): bigger batches, steadier steps
    rounds: int = 300                   # at most; the time budget ends RL first (about 65 rounds on 2 cores)
    temperature: float = 1.0            # rollout temperature (1.6 for the 7B, whose distributions are peaked)
    lr: float = 5e-4                    # with 48-trajectory mini-batches; 3e-3 collapsed the policy
    ppo_epochs: int = 2
    mini_batch_size: int = 48
    mode: Mode = "rl"
    eval_episodes: int = 100            # held-out start states, before and after
    eval_mode: Literal["greedy", "sample"] = "sample"   # sample: at the rollout temperature, what GRPO optimises
    extra_eval_mode: Literal["", "greedy", "sample"] = "greedy"  # also reported (same start states), "" for none
    eval_every: int = 3                 # rounds between the periodic evaluations (the curve by labelled episodes)
    periodic_eval: int = 50             # of the held-out starts, the first this many in each periodic evaluation
    max_labelled: int = 2500            # no new round once this many labelled rollouts were used
    time_budget_s: float = 870.0        # no new RL round once it would push the run (with the final eval) past this
    threads: int = 1
    graph_episodes: int = 12            # then this many episodes through the rl_finetune ROS graph; 0: none
    # the graph whose policy_node control (executor, safety filter, watchdog) every twin episode runs
    # through: the robot's own parameter file
    graph_config: str = ""              # "" : config/rl_finetune.yaml
    progress: bool = True

    def control_config(self):
        """policy_node's ControlConfig in the rl_finetune graph's parameter file: what the robot runs."""
        from vla_robot.bringup import parameter_files
        from vla_robot.config import load_node_config
        from vla_robot.nodes.config import PolicyNodeConfig

        path = parameter_files("rl_finetune", config=self.graph_config or None)[0]
        return load_node_config(PolicyNodeConfig, path, "policy_node").control

    def validate(self) -> None:
        if self.graph_episodes < 0:
            raise ValueError(f"graph_episodes must be >= 0 (0: no ROS graph episodes), got {self.graph_episodes}")
        if self.eval_episodes < 1 or self.demos < 1 or self.group_size < 2 or self.rounds < 0:
            raise ValueError("eval_episodes and demos must be >= 1, group_size >= 2, rounds >= 0; got "
                             f"{self.eval_episodes}, {self.demos}, {self.group_size}, {self.rounds}")
        from vla_robot.twin.config import TASK_CUBES  # standard library only, like this module

        if self.task not in TASK_CUBES:
            raise ValueError(f"task must be one of {', '.join(TASK_CUBES)}, got {self.task!r}")
        cubes = TASK_CUBES[self.task]
        if not 1 <= self.cubes <= len(cubes):
            raise ValueError(f"cubes must be 1..{len(cubes)} (the {self.task} task's {', '.join(cubes)}), got {self.cubes}")
        if self.action_space not in ("absolute", "delta"):
            raise ValueError(f"action_space must be 'absolute' or 'delta', got {self.action_space!r}")
        if self.image_size < 14:
            raise ValueError(f"image_size must be >= 14 pixels, got {self.image_size}")
        if self.eval_every < 1 or not 1 <= self.periodic_eval <= self.eval_episodes or self.max_labelled < 1:
            raise ValueError(f"eval_every must be >= 1, periodic_eval in 1..eval_episodes ({self.eval_episodes}) and "
                             f"max_labelled >= 1; got {self.eval_every}, {self.periodic_eval}, {self.max_labelled}")
        if not (self.temperature > 0 and self.lr > 0 and self.sft_lr > 0):
            raise ValueError("temperature, lr and sft_lr must be > 0")
        if self.eval_mode not in ("greedy", "sample") or self.extra_eval_mode not in ("", "greedy", "sample"):
            raise ValueError(f"eval_mode must be 'greedy' or 'sample' (extra_eval_mode also ''), got "
                             f"{self.eval_mode!r} / {self.extra_eval_mode!r}")
