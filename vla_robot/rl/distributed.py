"""Full fine-tuning on several GPUs (or CPU processes): FSDP2 under ``torchrun``.

Launched by ``torchrun --nproc-per-node N vla-robot learn ...`` (``WORLD_SIZE`` > 1), every process
holds the same episodes and runs the same update loop (same seed, so the same mini-batches); the
policy's parameters, gradients and AdamW state are sharded across the processes with
``torch.distributed.fsdp.fully_shard`` (FSDP2: one unit per Llama decoder layer, one for the vision
backbone, the rest at the root). The work is split inside the log-prob function the update calls: of each
micro-batch's rows, process r computes rows r, r + N, r + 2N, … with gradients and receives the
others' values (detached) so that the loss, its statistics and the on-policy check are the whole
micro-batch's on every process. The gradients are then summed across processes (not averaged: each
holds the gradient of its own rows of one sum), which is the one-process gradient of the full
batch, within float rounding.

CUDA: NCCL, one GPU per process (``LOCAL_RANK``). CPU: gloo, what the tests run (2 processes).
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist

__all__ = ["Distributed", "from_env", "process_device", "FORWARD_METHODS"]

_log = logging.getLogger(__name__)
# OFTModel methods the learner calls instead of forward(): FSDP must gather the root's weights around them
FORWARD_METHODS = ("token_logprobs", "action_logits", "sft_loss", "l1_loss", "l1_actions", "token_entropy")


def process_device(device: str) -> str:
    """The device this process's learner loads on: under torchrun each process has its own GPU, so a
    plain ``cuda`` becomes ``cuda:LOCAL_RANK`` (and every process does not load onto GPU 0)."""
    if device == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def from_env(runtime) -> Distributed | None:
    """When this process was started by ``torchrun`` with ``WORLD_SIZE`` > 1: join the process group
    (NCCL on CUDA, gloo on the CPU), shard ``runtime.model`` and return the :class:`Distributed`;
    otherwise None (one process: nothing changes)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE is {world} but {', '.join(missing)} is not set: start several learner "
                           "processes with torchrun (torchrun --nproc-per-node N vla-robot learn ...)")
    if not dist.is_initialized():
        backend = "nccl" if runtime.device.type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(runtime.device)  # process_device(): this process's own GPU
        dist.init_process_group(backend)
    d = Distributed()
    d.shard(runtime.model)
    _log.info("FSDP: process %d of %d, policy sharded (%s)", d.rank, d.world_size, dist.get_backend())
    return d


class Distributed:
    """This process's place in the group, and what FSDP changes for the learner."""

    def __init__(self) -> None:
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints and publishes weights."""
        return self.rank == 0

    def shard(self, model: torch.nn.Module) -> torch.nn.Module:
        """FSDP2 in place: one unit per decoder layer, one for the vision backbone, the rest at the root.
        Gradients are summed across processes (see :meth:`split`). Call before building the optimiser:
        the parameters become sharded DTensors."""
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

        # the backbone as one unit: the towers are called through forward_intermediates, not forward
        units = [*model.language_model.model.layers, model.vision_backbone]
        for unit in units:
            fully_shard(unit)
        fully_shard(model)
        for name in FORWARD_METHODS:
            if hasattr(model, name):
                register_fsdp_forward_method(model, name)
        for unit in [*units, model]:
            unit.set_gradient_divide_factor(1.0)  # a sum: each process holds the gradient of its own rows
            unit.set_force_sum_reduction_for_comms(True)  # plain SUM (gloo has no pre-multiplied sum)
        return model

    def split(self, logprob_fn: Callable[[torch.Tensor, float], torch.Tensor]) -> Callable[[torch.Tensor, float], torch.Tensor]:
        """``logprob_fn(rows, T)`` computed across the processes: this one runs its share of ``rows``
        (every ``world_size``-th, from its rank) with gradients; the result holds every row, the
        other processes' detached. A process without rows runs the first one at weight zero, so every
        process takes part in each forward and backward (FSDP's gathers and reductions)."""

        def sharded(rows: torch.Tensor, temperature: float) -> torch.Tensor:
            share = torch.arange(self.rank, len(rows), self.world_size)
            if len(share):
                own = logprob_fn(rows[share], temperature)
                idle = None
            else:
                idle = logprob_fn(rows[:1], temperature)
                own = idle[:0]
            every = self._gather_rows(own.detach(), len(rows))
            every = every.index_put((share.to(every.device),), own)
            return every if idle is None else every + 0.0 * idle.sum()

        return sharded

    def _gather_rows(self, own: torch.Tensor, n: int) -> torch.Tensor:
        """``[n, ...]``: row i from the process that computed it (rank i mod world_size)."""
        per = -(-n // self.world_size)
        padded = own.new_zeros((per, *own.shape[1:]))
        padded[: len(own)] = own
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        # parts[r][j] is row r + j·world_size: interleave, then drop the padding
        return torch.stack(parts, dim=1).reshape(per * self.world_size, *own.shape[1:])[:n]

    @contextlib.contextmanager
    def full_weights(self, runtime) -> Iterator[None]:
        """Inside, ``runtime.model`` on the main process is a plain model holding the whole, current weights
        (on the CPU), so checkpointing and publishing read it as in one process; the sharded model is back
        afterwards. A collective: every process enters together (the others only help gather)."""
        from vla_robot.policy.runtime import build_model

        state = self.full_state_dict(runtime.model)
        if state is None:
            yield
            return
        sharded = runtime.model
        plain = build_model(sharded.cfg, device="meta")  # no memory: the gathered tensors are assigned
        plain.load_state_dict(state, strict=True, assign=True)
        runtime.model = plain
        try:
            yield
        finally:
            runtime.model = sharded

    def full_state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        """The whole model's weights on the CPU on the main process (None on the others); a collective."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return state if self.is_main else None
