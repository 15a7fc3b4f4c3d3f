"""A LoRA adapter on the wire and in the serving weights: what the learner sends, what the server computes.

The learner (``vla_robot.rl.lora``) trains a LoRA adapter; the server serves merged weights. A push
of version k carries, for every adapted weight ``W`` (a parameter name such as
``language_model.model.layers.0.self_attn.q_proj.weight``)::

    W:lora_A   [r, in]     the adapter's A
    W:lora_B   [out, r]    the adapter's B with the scale alpha / r already multiplied in
    W:lora_base [out, in]  only when the server lacks this base: the weight before any adapter

and the server serves ``W = merged_weight(base, A, B)``, always from the same base. A push never
adds to what the previous one left (the base is kept beside the model), so a thousand pushes in
bfloat16 end exactly where one would, with no rounding walk. The learner's merged export uses the
same function on the same factors, so the served weights are the exported ones.

Standard library only at import. The ``:`` cannot appear in a PyTorch parameter name, so these names never collide with a weight's.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch only where weights are merged: the server imports the error without it
    import torch

PARTS = ("lora_A", "lora_B", "lora_base")
SEP = ":"


class LoraBaseUnknown(ValueError):
    """An adapter push for a base the runtime does not hold (a restarted server): send the base too."""


def adapter_key(weight: str, part: str) -> str:
    if part not in PARTS:
        raise ValueError(f"LoRA part must be one of {PARTS}, got {part!r}")
    return f"{weight}{SEP}{part}"


def split_adapter_state(state: Mapping[str, Any]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """``({W: {"lora_A": a, "lora_B": b[, "lora_base": w0]}}, {plain name: tensor})``; a name whose
    part is not one of ``PARTS`` is an error that says which."""
    factors: dict[str, dict[str, Any]] = {}
    plain: dict[str, Any] = {}
    for name, value in state.items():
        if SEP not in name:
            plain[name] = value
            continue
        weight, part = name.rsplit(SEP, 1)
        if part not in PARTS:
            raise ValueError(f"'{name}': unknown LoRA part {part!r}; expected one of {', '.join(PARTS)}")
        factors.setdefault(weight, {})[part] = value
    for weight, parts in factors.items():
        if "lora_A" not in parts or "lora_B" not in parts:
            raise ValueError(f"'{weight}' has {sorted(parts)}; an adapted weight needs both lora_A and lora_B")
    return factors, plain


def merged_weight(base: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``base + b @ a`` computed in float32 and cast once to ``base``'s dtype (``b`` holds the scale)."""
    return (base.float() + b.float() @ a.float()).to(base.dtype)
