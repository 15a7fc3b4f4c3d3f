"""Static-shape serving: requests padded to buckets, and one CUDA graph per bucket.

A chunk of the 7B model is launch-bound (issue 19: 1,387 kernel launches, 39 ms of CPU for 23 ms of
GPU). A CUDA graph replays all of them with one launch, but only for fixed shapes and fixed tensor
addresses. The shapes are known per request: the prefix (BOS, image patches, proprio) and the
action slots have fixed lengths, only the prompt varies. So the prompt is padded until the sequence
is a multiple of ``seq_multiple`` positions (16: aligned mask rows, which memory-efficient SDPA
wants) and the batch up to the next of ``batch_buckets`` (padding rows are copies of the first row,
so they compute ordinary numbers and are dropped); the attention mask hides the padding as it hides
any right padding, and stays bidirectional over the action slots.

Why hand-captured ``torch.cuda.CUDAGraph`` rather than ``torch.compile(mode="reduce-overhead")``:
- the replayed kernels are exactly the eager ones (same SDPA kernel, same GEMMs), so graphed
  outputs equal the eager static path; inductor fuses and reorders, which changes bf16 rounding;
- capture takes about as long as a few forward passes per bucket; compiling a 7B model takes
  minutes per shape and recompiles on a new shape mid-episode;
- a failure is visible and local: a capture that fails (an op that syncs with the host) is logged
  and that runtime serves the static eager path, instead of silent graph breaks.
The cost: no kernel fusion. The launch overhead, not the GPU time, is what issue 19 measured.

Hot-swaps keep graphs valid: ``load_weights`` copies into the same tensors. Anything that moves the
weights (``model.to``, new parameter objects) changes their addresses; that is checked on every
call and the graphs are recaptured.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from vla_robot.policy.config import ServingConfig
from vla_robot.policy.modeling import OFTModel, PolicyBatch

__all__ = ["StaticServing", "bucket_for"]

_log = logging.getLogger(__name__)
_WARMUP_PASSES = 3  # before capture, on a side stream: cuBLAS/cuDNN pick and allocate their workspaces


def bucket_for(n: int, buckets: list[int]) -> int:
    """The smallest bucket that holds ``n`` rows."""
    for b in buckets:
        if n <= b:
            return b
    raise ValueError(f"{n} rows exceed the largest batch bucket {buckets[-1]}")


def round_up(n: int, multiple: int) -> int:
    return -(-int(n) // multiple) * multiple


class _StaticRunner:
    """One bucket: input buffers of its fixed shapes, and the model's pass over them."""

    def __init__(self, model: OFTModel, example: PolicyBatch, rows: int, seq_len: int, pad_id: int):
        self.rows, self.seq_len, self.pad_id = rows, seq_len, pad_id
        # the longest prompt (ids incl. BOS) that fits: S = prefix + (prompt - 1) + action slots + </s>
        prompt_len = seq_len - model.num_prefix_tokens - model.num_action_tokens
        self.inputs = PolicyBatch(
            pixel_values=example.pixel_values.new_zeros((rows, *example.pixel_values.shape[1:])),
            input_ids=example.input_ids.new_full((rows, prompt_len), pad_id),
            prompt_lengths=example.prompt_lengths.new_ones(rows),
            proprio=None if example.proprio is None else example.proprio.new_zeros((rows, *example.proprio.shape[1:])),
        )
        self.forward: Callable[[], torch.Tensor] = lambda: model.serving_outputs(self.inputs, self.seq_len)

    def load(self, batch: PolicyBatch) -> None:
        """Copy ``batch`` into the buffers; rows beyond it repeat its first row."""
        n, width = len(batch), batch.input_ids.shape[1]
        fill = torch.zeros(self.rows, dtype=torch.long, device=batch.input_ids.device)
        fill[:n] = torch.arange(n, device=fill.device)
        src = batch.select(fill)  # [rows, ...]: real rows, then copies of row 0
        self.inputs.pixel_values.copy_(src.pixel_values)
        self.inputs.input_ids.fill_(self.pad_id)
        self.inputs.input_ids[:, :width].copy_(src.input_ids)
        self.inputs.prompt_lengths.copy_(src.prompt_lengths)
        if self.inputs.proprio is not None:
            self.inputs.proprio.copy_(src.proprio)

    def run(self) -> torch.Tensor:
        return self.forward()

    def __call__(self, batch: PolicyBatch) -> torch.Tensor:
        self.load(batch)
        return self.run()


class _GraphRunner(_StaticRunner):
    """A bucket whose pass is a captured CUDA graph: ``run`` replays it into a fixed output tensor."""

    def __init__(self, model: OFTModel, example: PolicyBatch, rows: int, seq_len: int, pad_id: int, pool):
        super().__init__(model, example, rows, seq_len, pad_id)
        self.load(example)  # real numbers in the buffers while warming up and capturing
        side = torch.cuda.Stream(device=example.input_ids.device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(_WARMUP_PASSES):
                self.forward()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.output = self.forward()

    def run(self) -> torch.Tensor:
        self.graph.replay()
        return self.output


class StaticServing:
    """The model's serving pass (:meth:`OFTModel.serving_outputs`) at bucketed static shapes, through
    a CUDA graph per bucket when the model is on CUDA and ``cfg.graphs`` allows."""

    def __init__(self, model: OFTModel, cfg: ServingConfig, pad_id: int = 32000):
        cfg.validate()
        self.model, self.cfg, self.pad_id = model, cfg, pad_id
        self.graphs = self._graphs_wanted()
        self.static = self.graphs or cfg.static_shapes == "on"
        self._runners: dict[tuple[int, int], _StaticRunner] = {}
        self._pool = None
        self._weights = self._fingerprint()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _graphs_wanted(self) -> bool:
        if self.cfg.graphs == "off":
            _log.info("CUDA graphs: off (serving.graphs: off); %s", "static shapes" if self.cfg.static_shapes == "on" else "eager")
            return False
        if self.device.type != "cuda":
            _log.info("CUDA graphs: unavailable (no CUDA: the policy runs on %s); serving %s", self.device,
                      "static shapes without graphs" if self.cfg.static_shapes == "on" else "eager")
            return False
        _log.info("CUDA graphs: on, one per batch bucket %s and sequence length (multiples of %d), captured on first use",
                  self.cfg.batch_buckets, self.cfg.seq_multiple)
        return True

    def describe(self) -> str:
        if self.graphs:
            return f"graphed ({len(self._runners)} captured)"
        return "static" if self.static else "eager"

    def outputs(self, batch: PolicyBatch) -> torch.Tensor:
        """``model.serving_outputs(batch)`` (a new tensor, safe to keep after the next call)."""
        if not self.static:
            return self.model.serving_outputs(batch)
        self._check_weights()
        step = self.cfg.batch_buckets[-1]
        parts = [self._run(batch.select(slice(i, i + step))) for i in range(0, len(batch), step)]
        return torch.cat(parts)  # a copy: a graph's output tensor is overwritten by its next replay

    def _run(self, part: PolicyBatch) -> torch.Tensor:
        n = len(part)
        need = self.model.seq_len_for(int(part.prompt_lengths.max()))
        key = (bucket_for(n, self.cfg.batch_buckets), round_up(need, self.cfg.seq_multiple))
        runner = self._runners.get(key)
        if runner is None:
            runner = self._runners[key] = self._make_runner(part, *key)
        return runner(part)[:n]

    def _make_runner(self, example: PolicyBatch, rows: int, seq_len: int) -> _StaticRunner:
        if self.graphs:
            try:
                if self._pool is None:
                    self._pool = torch.cuda.graph_pool_handle()  # one memory pool: buckets never run at once
                runner = _GraphRunner(self.model, example, rows, seq_len, self.pad_id, self._pool)
                _log.info("CUDA graph captured: batch %d, sequence %d", rows, seq_len)
                return runner
            except Exception as e:  # noqa: BLE001 - any capture failure: serve, slower, and say why
                _log.warning("CUDA graph capture failed for batch %d, sequence %d (%s: %s); serving static shapes "
                             "without graphs from now on", rows, seq_len, type(e).__name__, e)
                self.graphs = False
                self._runners.clear()
        return _StaticRunner(self.model, example, rows, seq_len, self.pad_id)

    def _fingerprint(self) -> tuple[int, ...]:
        return tuple(t.data_ptr() for t in (*self.model.parameters(), *self.model.buffers()))

    def _check_weights(self) -> None:
        """Graphs read the weights at fixed addresses: if they moved, capture again."""
        now = self._fingerprint()
        if now != self._weights:
            if self._runners:
                _log.info("policy weights moved (new tensors, not an in-place hot-swap): recapturing %d bucket(s) on use",
                          len(self._runners))
            self._runners.clear()
            self._weights = now
            self.graphs = self._graphs_wanted() if self.graphs or self.cfg.graphs != "off" else False
            self.static = self.graphs or self.cfg.static_shapes == "on"
