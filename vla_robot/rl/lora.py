"""LoRA in the learner, as OpenVLA-OFT fine-tunes: peft's LoRA on the VLA, trained by GRPO and hybrid SFT.

OFT's settings (moojink/openvla-oft ``vla-scripts/finetune.py``, ``LoraConfig(r=cfg.lora_rank,
lora_alpha=min(cfg.lora_rank, 16), lora_dropout=cfg.lora_dropout, target_modules="all-linear",
init_lora_weights="gaussian")`` with ``lora_rank = 32`` and ``lora_dropout = 0.0``): rank 32,
alpha min(r, 16), no dropout, A drawn from N(0, 1/r²) and B zero. ``"all-linear"`` on OFT's
``OpenVLAForActionPrediction`` is every ``nn.Linear`` of the vision towers, the projector and the
Llama except the output layer (peft leaves out ``get_output_embeddings()``, the ``lm_head``);
:func:`target_modules` names exactly those in our model. OFT's proprio projector and L1 action
head are modules outside the peft model, and its FiLM layers wrap in after ``get_peft_model``: all
three train in full, here too. Everything else is frozen (embeddings, norms, ``lm_head``).

The adapter is peft's (``peft.inject_adapter_in_model``: the model keeps its class, its LoRA
layers hold ``base_layer``, ``lora_A``, ``lora_B``); its factors train in float32 whatever the
model's dtype, so AdamW's small steps are not rounded away in bfloat16.

The learner's LoRA layers compute with the merged weight the server serves (:func:`_served_forward`),
not peft's ``W0 x + s·B(A x)``: the same function in exact arithmetic, but in bfloat16 the two
round differently, and the learner must reproduce the log-probs of the policy that acted (its
on-policy check; on tiny in bf16 peft's form was off by a median |r - 1| of 2.5e-3, max 1.4e-2).
Gradients flow through the merge to A and B. Hence no LoRA dropout (OFT's default is 0 too): a
dropout on the adapter's input has no merged form. The backward pass recomputes each merged weight
rather than keep it (:class:`_ServedLinear`: a 7B's are 14.6 GB), so memory stays about peft's.

What leaves the learner is the merged policy, W = W0 + (alpha / r)·B·A, computed by
``vla_robot.policy.lora.merged_weight`` on the factors in the serving dtype: the server's hot-swap
(:meth:`LoraAdapter.update` + :meth:`LoraAdapter.base`) and the checkpoint's OFT-layout export
(:meth:`LoraAdapter.merged`) compute the same numbers.
"""
from __future__ import annotations

import json
import uuid
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vla_robot.policy.lora import adapter_key, merged_weight

ADAPTER_DIR = "lora_adapter"        # OFT's name for the peft adapter folder in a checkpoint
BASE_FILE = "lora_base.safetensors"  # the adapted weights before any adapter (W0), with the base's name
_PEFT_PREFIX = "base_model.model."   # peft's key prefix in a PeftModel's adapter_model.safetensors
_FULL = ("proprio_projector.", "action_head.")


def default_alpha(rank: int) -> float:
    """OFT's ``lora_alpha = min(lora_rank, 16)``."""
    return float(min(rank, 16))


def target_modules(model: nn.Module) -> list[str]:
    """OFT's ``target_modules="all-linear"`` in our model (module docstring): the ``nn.Linear`` modules of
    the vision towers, projector and Llama, without ``lm_head`` and FiLM's scale/shift."""
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or name == "language_model.lm_head" or name.startswith(_FULL):
            continue
        if name.endswith((".scale", ".shift")) and name.startswith("vision_backbone."):
            continue  # FiLM (FiLMedBlock), trained in full
        names.append(name)
    return names


def _served_forward(layer, x: torch.Tensor) -> torch.Tensor:
    """``layer`` (peft's lora.Linear) as the server computes it: x through W = merged_weight(W0, A, scale·B)."""
    base = layer.base_layer
    return _ServedLinear.apply(x, base.weight, base.bias, layer.lora_A["default"].weight,
                               layer.lora_B["default"].weight, float(layer.scaling["default"]))


def _wire_factors(w0: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A and scale·B in W0's (the serving) dtype: what a push carries and every merge uses."""
    return a.to(w0.dtype), (b * scale).to(w0.dtype)


def _served_weight(w0: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    return merged_weight(w0, *_wire_factors(w0, a, b, scale))


class _ServedLinear(torch.autograd.Function):
    """y = x Wᵀ + bias, W = merged_weight(W0, A, s·B); gradients for x, A and B only (W0 and bias are frozen).

    The backward pass recomputes W instead of keeping it between the passes, and takes the casts to W0's
    dtype as identity (straight through), so the float32 factors get float32 gradients."""

    @staticmethod
    def forward(ctx, x, w0, bias, a, b, scale):
        ctx.save_for_backward(x, w0, a, b)
        ctx.scale = scale
        return F.linear(x, _served_weight(w0, a, b, scale), bias)

    @staticmethod
    def backward(ctx, gy):
        x, w0, a, b = ctx.saved_tensors
        s = ctx.scale
        gx = gy @ _served_weight(w0, a, b, s) if ctx.needs_input_grad[0] else None
        gw = gy.reshape(-1, gy.shape[-1]).float().T @ x.reshape(-1, x.shape[-1]).float()  # dL/dW [out, in]
        a_used, b_used = (t.float() for t in _wire_factors(w0, a, b, s))  # what W was merged from
        return gx, None, None, (b_used.T @ gw).to(a.dtype), ((gw @ a_used.T) * s).to(b.dtype), None


def _fully_trained(name: str) -> bool:
    film = name.startswith("vision_backbone.") and (".scale." in name or ".shift." in name)
    return name.startswith(_FULL) or film


class LoraAdapter:
    """peft's LoRA injected into ``model`` (an ``OFTModel``) in place; ``base_id`` names its base W0."""

    def __init__(self, model: nn.Module, rank: int, alpha: float = 0.0, seed: int = 0,
                 base_id: str | None = None) -> None:
        import peft

        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1 (0 is full fine-tuning, without an adapter), got {rank}")
        self.model, self.rank = model, int(rank)
        self.alpha = float(alpha) if alpha else default_alpha(rank)
        self.targets = target_modules(model)
        self.config = peft.LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=0.0,
                                      target_modules=self.targets, init_lora_weights="gaussian")
        with torch.random.fork_rng(devices=[]):  # A's draw is the seed's, whatever came before
            torch.manual_seed(seed)
            peft.inject_adapter_in_model(self.config, model)
        self.layers = {name: model.get_submodule(name) for name in self.targets}
        for layer in self.layers.values():
            layer.forward = partial(_served_forward, layer)  # module docstring: the served weights
        for name, p in model.named_parameters():
            if ".lora_A." in name or ".lora_B." in name:
                p.data = p.data.float()
            elif _fully_trained(name):
                p.requires_grad_(True)
        self.base_id = base_id or uuid.uuid4().hex

    # ---- the merged policy ----------------------------------------------------------------
    def factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A and scale·B of target ``name`` in the serving dtype: what the server merges with."""
        layer = self.layers[name]
        with torch.no_grad():
            return _wire_factors(layer.base_layer.weight, layer.lora_A["default"].weight,
                                 layer.lora_B["default"].weight, float(layer.scaling["default"]))

    def update(self) -> dict[str, torch.Tensor]:
        """The hot-swap after an update: every target's factors (``W:lora_A``, ``W:lora_B``) and the
        fully trained modules' tensors, which the server serves as they are. Nothing frozen travels."""
        out = {}
        for name in self.targets:
            a, b = self.factors(name)  # copies: the caller may keep them while training goes on
            out[adapter_key(f"{name}.weight", "lora_A")] = a.to("cpu", copy=True)
            out[adapter_key(f"{name}.weight", "lora_B")] = b.to("cpu", copy=True)
        for name, p in self.model.named_parameters():
            if _fully_trained(name):
                out[name] = p.detach().to("cpu", copy=True)
        return out

    def base(self) -> dict[str, torch.Tensor]:
        """W0 of every target (``W:lora_base``), for a server that does not hold this base yet."""
        return {adapter_key(f"{n}.weight", "lora_base"): self.layers[n].base_layer.weight.detach() for n in self.targets}

    @contextmanager
    def merged(self):
        """Within it ``model`` has plain ``nn.Linear`` layers holding the merged weights (on the CPU:
        for ``state_dict`` and ``save_checkpoint``, not for a forward); the LoRA layers come back after."""
        parents = {}
        for name, layer in self.layers.items():
            parent_name, _, child = name.rpartition(".")
            parent = self.model.get_submodule(parent_name) if parent_name else self.model
            base = layer.base_layer
            plain = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
            with torch.no_grad():
                a, b = self.factors(name)
                plain.weight = nn.Parameter(merged_weight(base.weight, a, b).cpu(), requires_grad=False)
                if base.bias is not None:
                    plain.bias = nn.Parameter(base.bias.detach().cpu(), requires_grad=False)
            parents[name] = (parent, child)
            setattr(parent, child, plain)
        try:
            yield self.model
        finally:
            for name, (parent, child) in parents.items():
                setattr(parent, child, self.layers[name])

    # ---- files ----------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """peft's adapter files as OFT writes them (``lora_adapter/adapter_config.json`` and
        ``adapter_model.safetensors``, keys ``base_model.model.<module>.lora_A.weight``): OFT's
        ``PeftModel.from_pretrained(vla, dir)`` and ``merge_lora_weights_and_save.py`` read them."""
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for name, layer in self.layers.items():
            for part in ("lora_A", "lora_B"):
                w = getattr(layer, part)["default"].weight
                tensors[f"{_PEFT_PREFIX}{name}.{part}.weight"] = w.detach().cpu().contiguous()
        save_file(tensors, str(d / "adapter_model.safetensors"), metadata={"format": "pt", "lora_base": self.base_id})
        config = self.config.to_dict()
        config["target_modules"] = sorted(config["target_modules"])
        (d / "adapter_config.json").write_text(json.dumps(config, indent=2, default=str))
        return d

    def load(self, directory: str | Path) -> None:
        """The factors of an adapter :meth:`save` wrote; every target's, of this rank, or a ValueError."""
        from safetensors.torch import load_file

        path = Path(directory) / "adapter_model.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing (a LoRA learner checkpoint holds {ADAPTER_DIR}/)")
        saved = load_file(str(path))
        with torch.no_grad():
            for name, layer in self.layers.items():
                for part in ("lora_A", "lora_B"):
                    key, own = f"{_PEFT_PREFIX}{name}.{part}.weight", getattr(layer, part)["default"].weight
                    if key not in saved or saved[key].shape != own.shape:
                        got = tuple(saved[key].shape) if key in saved else "missing"
                        raise ValueError(f"{path}: '{key}' is {got}; expected {tuple(own.shape)} (rank {self.rank})")
                    own.copy_(saved[key])

    def save_base(self, path: str | Path) -> None:
        """W0 of every target, written once per base (the file names its base in its metadata)."""
        from safetensors.torch import save_file

        tensors = {f"{n}.weight": self.layers[n].base_layer.weight.detach().cpu().contiguous() for n in self.targets}
        save_file(tensors, str(path), metadata={"format": "pt", "lora_base": self.base_id})


def read_base(path: str | Path) -> tuple[str, dict[str, torch.Tensor]]:
    """``(base name, {weight name: W0})`` from a :data:`BASE_FILE`."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: a LoRA learner checkpoint keeps its base weights W0 there")
    with safe_open(str(path), "pt") as f:
        base_id = (f.metadata() or {}).get("lora_base", "")
    return base_id, load_file(str(path))


def adapter_bytes(model: nn.Module, rank: int, dtype_bytes: int) -> dict[str, int]:
    """What one hot-swap of a rank-``rank`` adapter on ``model`` carries (arithmetic, from the shapes;
    ``model`` may live on the meta device): adapter, fully trained, whole-model and adapted-base values, and
    the bytes of an adapter push and of a full one."""
    factor = base = 0
    for name in target_modules(model):
        m = model.get_submodule(name)
        factor += rank * (m.in_features + m.out_features)
        base += m.in_features * m.out_features
    full = sum(p.numel() for n, p in model.named_parameters() if _fully_trained(n))
    total = sum(p.numel() for p in model.parameters())
    return {"adapter_values": factor, "fully_trained_values": full, "model_values": total, "base_values": base,
            "push_bytes": (factor + full) * dtype_bytes, "full_push_bytes": total * dtype_bytes}
