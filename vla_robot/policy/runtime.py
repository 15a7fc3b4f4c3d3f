"""The policy runtime: a model, its processor and statistics, behind ``infer`` (the Policy interface) and hot-swap.

``load_policy(preset="tiny")`` builds a randomly initialised model from ``models/policy/tiny.yaml``
(deterministic from ``seed``); ``load_policy(checkpoint=DIR)`` loads the OFT layout on disk.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import yaml

from vla_robot.config import from_dict
from vla_robot.policy import action_tokenizer
from vla_robot.policy.config import PolicyModelConfig, ServingConfig
from vla_robot.policy.interface import DEFAULT_TEMPERATURE, check_infer_args
from vla_robot.policy.modeling import OFTModel, PolicyBatch, pick_tokens
from vla_robot.policy.processor import PolicyProcessor
from vla_robot.policy.static import StaticServing

__all__ = ["PolicyRuntime", "load_policy", "build_model", "models_dir", "preset_path", "load_preset", "list_presets"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def models_dir() -> Path:
    """``<repo>/models/policy`` in a checkout (``$VLA_ROBOT_MODELS_DIR/policy`` if set; the share dir when installed)."""
    env = os.environ.get("VLA_ROBOT_MODELS_DIR")
    if env:
        return Path(env) / "policy"
    here = Path(__file__).resolve().parents[2] / "models" / "policy"
    if here.is_dir():
        return here
    try:  # pragma: no cover - only on a ROS 2 install
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory("vla_robot")) / "models" / "policy"
    except Exception:  # noqa: BLE001
        return here


def list_presets() -> list[str]:
    return sorted(p.stem for p in models_dir().glob("*.yaml"))


def preset_path(name: str) -> Path:
    path = models_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown policy preset '{name}'; known presets: {', '.join(list_presets()) or 'none'} (in {models_dir()})")
    return path


def load_preset(name: str, overrides: Mapping[str, Any] | None = None) -> PolicyModelConfig:
    path = preset_path(name)
    data = yaml.safe_load(path.read_text()) or {}
    data.setdefault("name", name)
    if overrides:
        data = _merge(data, dict(overrides))
    return from_dict(PolicyModelConfig, data, source=str(path))


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def build_model(cfg: PolicyModelConfig, seed: int | None = 0, device: str | torch.device = "cpu", dtype: str | None = None) -> OFTModel:
    """A randomly initialised OFT model; the same ``seed`` (and ``dtype``) gives the same weights.

    ``dtype``: build directly in this dtype (saves the float32 copy of a 7B model on a GPU);
    ``None`` builds in float32."""
    dev = torch.device(device)
    if dev.type == "meta":
        with torch.device("meta"):
            return OFTModel(cfg)
    devices = [dev] if dev.type == "cuda" else []
    old = torch.get_default_dtype()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(0 if seed is None else seed)
        try:
            torch.set_default_dtype(_DTYPES[dtype] if dtype else torch.float32)
            with torch.device(dev):
                model = OFTModel(cfg)
                _apply_init_std(model, cfg.llm.init_std)
        finally:
            torch.set_default_dtype(old)
    return model.eval()


@torch.no_grad()
def _apply_init_std(model: OFTModel, init_std: Mapping[str, float]) -> None:
    """Re-draw the LLM weights whose name contains a key of ``init_std`` from N(0, std²)."""
    for part, std in sorted(init_std.items()):
        hits = [p for n, p in model.language_model.named_parameters() if part in n and n.endswith("weight")]
        if not hits:
            raise ValueError(f"llm.init_std: no language-model weight name contains {part!r}")
        for p in hits:
            p.normal_(0.0, float(std))


def tower_mean_std(model: OFTModel) -> list[tuple[tuple, tuple]]:
    out = []
    for tower in (model.vision_backbone.featurizer, model.vision_backbone.fused_featurizer):
        pc = getattr(tower, "pretrained_cfg", None) or {}
        out.append((tuple(pc.get("mean", (0.5, 0.5, 0.5))), tuple(pc.get("std", (0.5, 0.5, 0.5)))))
    return out


class PolicyRuntime:
    """One loaded policy (a :class:`~vla_robot.policy.interface.Policy`): ``infer`` for serving, the trainable ``model`` and ``processor`` for RL."""

    def __init__(self, model: OFTModel, processor: PolicyProcessor, device: str = "cpu", dtype: str = "float32", version: int = 0):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
        self.cfg: PolicyModelConfig = model.cfg
        self.device = torch.device(device)
        self.dtype = dtype
        self.model = model.to(device=self.device, dtype=_DTYPES[dtype])
        self.processor = processor
        self.version = int(version)
        self.lock = threading.RLock()  # infer and load_weights are atomic with respect to each other
        self.serving = StaticServing(self.model, ServingConfig(), processor.pad_id)

    def configure_serving(self, cfg: ServingConfig) -> None:
        """Static shapes and CUDA graphs for ``infer`` (:mod:`vla_robot.policy.static`); the default
        is ``ServingConfig()``: graphs when the model is on CUDA, the eager path elsewhere."""
        with self.lock:
            self.serving = StaticServing(self.model, cfg, self.processor.pad_id)

    # --- description ----------------------------------------------------------------------------
    @property
    def metadata(self) -> dict[str, Any]:
        c = self.cfg
        return {
            "action_dim": c.action_dim,
            "chunk_size": c.chunk_size,
            "proprio_dim": c.proprio_dim,
            "cameras": list(c.cameras),
            "image_size": c.vision.image_size,
            "norm_key": self.processor.norm_key,
            "head": c.head,
            "action_space": c.action_space,
            "version": self.version,
            "model": c.name,
            "dtype": self.dtype,  # the on-policy record keeps it: the learner refuses to recompute in another
        }

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    # --- inference ------------------------------------------------------------------------------
    def batch(self, observations: Sequence[Mapping[str, Any]]) -> PolicyBatch:
        """The processor's batch, on this runtime's device and dtype."""
        return self.processor(observations).to(self.device, _DTYPES[self.dtype])

    def infer(
        self,
        observations: Sequence[Mapping[str, Any]],
        *,
        mode: str = "greedy",
        temperature: float | None = None,
        return_tokens: bool = False,
        seeds: Sequence[int | None] | None = None,
        generator: torch.Generator | None = None,
    ) -> list[dict[str, Any]]:
        """One action chunk per observation (the :class:`~vla_robot.policy.interface.Policy` reply):
        ``{"actions": float32 [chunk, action_dim] (unnormalised), "tokens": int64 [chunk·action_dim] | None,
        "logprobs": float32 [chunk·action_dim] | None, "version": int}``.

        ``seeds``: one per observation (or ``None``): with ``mode="sample"`` that observation's tokens
        come from its own generator, so the same seed gives the same chunk whatever the batch.
        ``generator`` (in-process only): one generator drawn from for the whole batch, in order."""
        observations = check_infer_args(observations, seeds, mode)
        temperature = DEFAULT_TEMPERATURE if temperature is None else temperature
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
        if self.cfg.head == "l1" and mode == "sample":
            raise ValueError("mode='sample' needs the discrete head; this policy has the L1 regression head (deterministic)")
        if seeds is not None:
            if generator is not None:
                raise ValueError("give either generator or seeds, not both")
            if any(s is not None for s in seeds):
                generator = [None if s is None else torch.Generator().manual_seed(int(s)) for s in seeds]
        batch = self.batch(observations)
        with self.lock, torch.inference_mode():
            version = self.version  # read under the lock: the weights that compute this batch
            out = self.serving.outputs(batch)  # L1: normalised actions; discrete: bin logits
            if self.cfg.head == "l1":
                normalized = out.float().cpu().numpy()
                tokens = logprobs = None
            else:
                tok, lp = pick_tokens(out, mode, float(temperature), generator)
                tokens, logprobs = tok.cpu().numpy(), lp.float().cpu().numpy()
                normalized = action_tokenizer.decode(tokens).reshape(len(batch), self.cfg.chunk_size, self.cfg.action_dim)
        states = None
        if self.cfg.action_space != "absolute":
            states = np.stack([np.asarray(o["state"], np.float64).reshape(-1) for o in observations])
        actions = self.processor.decode_actions(normalized, states)
        give = return_tokens and tokens is not None
        return [
            {
                "actions": actions[i],
                "tokens": tokens[i].astype(np.int64) if give else None,
                "logprobs": logprobs[i].astype(np.float32) if give else None,
                "version": version,
            }
            for i in range(len(batch))
        ]


    # --- statistics and weights ----------------------------------------------------------------
    def set_norm_stats(self, stats: Mapping[str, Any], norm_key: str = "") -> None:
        """Use other dataset statistics (e.g. ``normalization.compute_statistics`` of demonstrations)."""
        with self.lock:
            self.processor.set_norm_stats(stats, norm_key)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """All weights (main model, proprio projector, action head), detached, on CPU."""
        with self.lock:
            return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def load_weights(self, state: Mapping[str, Any], version: int, delta: bool = False,
                     lora_base: str | None = None) -> None:
        """Hot-swap weights atomically. ``state`` may hold all tensors or a subset (a partial
        update); with ``delta=True`` its tensors are added to the current ones. Tensors may be torch
        tensors or numpy arrays. Every name and shape is checked before anything changes.

        ``lora_base``: ``state`` is a LoRA adapter push (:mod:`vla_robot.policy.lora`) on the base of
        that name; its plain tensors replace the serving ones. Any other push forgets the base."""
        if not isinstance(state, Mapping) or not state:
            raise ValueError("load_weights needs a non-empty mapping of parameter name -> tensor")
        if lora_base is not None:
            if delta:
                raise ValueError("load_weights: a LoRA push sets W = base + B·A; it cannot also be a delta")
            return self._load_adapter(state, version, str(lora_base))
        own = self.model.state_dict()
        prepared = self._checked(state, own)
        with self.lock, torch.no_grad():
            for name, t in prepared.items():
                target = own[name]
                t = t.to(device=target.device, dtype=target.dtype)
                target.add_(t) if delta else target.copy_(t)
            self._lora_base = None  # the weights moved away from what the base + an adapter would give
            self.version = int(version)

    def _checked(self, state: Mapping[str, Any], own: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``state`` as torch tensors, each a known weight of its shape with finite values, or a ValueError."""
        prepared = {}
        for name, value in state.items():
            if name not in own:
                raise ValueError(f"load_weights: unknown tensor '{name}' (not a parameter of model '{self.cfg.name}')")
            t = torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value)
            if tuple(t.shape) != tuple(own[name].shape):
                raise ValueError(f"load_weights: tensor '{name}' has shape {tuple(t.shape)}; expected {tuple(own[name].shape)}")
            if not torch.isfinite(t.float()).all():
                raise ValueError(f"load_weights: tensor '{name}' contains NaN or inf")
            prepared[name] = t
        return prepared

    def _load_adapter(self, state: Mapping[str, Any], version: int, base_id: str) -> None:
        """Serve W = base + B·A for every adapted W (``policy.lora.merged_weight``), from the base this push
        sends (``W:lora_base``, kept on the model's device from now on) or the one an earlier push of
        ``base_id`` sent. Recomputed from the base each time, so repeated pushes never drift."""
        from vla_robot.policy import lora

        own = self.model.state_dict()
        factors, plain = lora.split_adapter_state(state)
        prepared = self._checked(plain, own)
        sent = self._checked({w: f["lora_base"] for w, f in factors.items() if "lora_base" in f}, own)
        held = getattr(self, "_lora_base", None)
        if sent:
            if set(sent) != set(factors):
                raise ValueError(f"load_weights: a LoRA base must come for every adapted weight ({len(factors)}), "
                                 f"got {len(sent)}")
            wrong = [w for w, t in sent.items() if t.dtype != own[w].dtype]
            if wrong:
                raise ValueError(f"load_weights: LoRA base '{wrong[0]}' is {sent[wrong[0]].dtype}, the model serves "
                                 f"{own[wrong[0]].dtype}: the learner must train in the serving dtype")
        elif held is None or held[0] != base_id:
            raise lora.LoraBaseUnknown(f"load_weights: LoRA base {base_id!r} is not the one this server holds "
                                       f"({held[0] if held else 'none'}): push it with the adapter")
        elif set(held[1]) != set(factors):
            raise ValueError(f"load_weights: the adapter covers {len(factors)} weights, its base {len(held[1])}")
        for w, f in factors.items():
            out_f, in_f = own[w].shape if own[w].ndim == 2 else (None, None)
            a, b = (torch.as_tensor(np.asarray(f[p]) if not isinstance(f[p], torch.Tensor) else f[p])
                    for p in ("lora_A", "lora_B"))
            if out_f is None or a.ndim != 2 or b.shape != (out_f, a.shape[0]) or a.shape[1] != in_f:
                raise ValueError(f"load_weights: LoRA factors of '{w}' are A {tuple(a.shape)}, B {tuple(b.shape)}; "
                                 f"expected A [r, {in_f}] and B [{out_f}, r] for a weight of shape {tuple(own[w].shape)}")
            if not (torch.isfinite(a.float()).all() and torch.isfinite(b.float()).all()):
                raise ValueError(f"load_weights: LoRA factors of '{w}' contain NaN or inf")
            f["lora_A"], f["lora_B"] = a, b
        with self.lock, torch.no_grad():
            base = {w: t.to(own[w].device, copy=True) for w, t in sent.items()} if sent else held[1]
            for w, f in factors.items():
                dev = own[w].device
                own[w].copy_(lora.merged_weight(base[w], f["lora_A"].to(dev), f["lora_B"].to(dev)))
            for name, t in prepared.items():
                own[name].copy_(t.to(device=own[name].device, dtype=own[name].dtype))
            self._lora_base = (base_id, base)
            self.version = int(version)


def load_policy(
    preset: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    seed: int | None = None,
    norm_key: str = "",
    overrides: Mapping[str, Any] | None = None,
) -> PolicyRuntime:
    """Load a policy from a checkpoint directory (OFT layout) or build one from a preset.

    ``overrides``: preset fields to change (e.g. ``{"head": "l1", "chunk_size": 4}``); for a
    checkpoint without our own description (a published OFT one) they give what OFT keeps in code
    constants (``chunk_size``, ``action_dim``, ``cameras`` …).
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    if checkpoint:
        from vla_robot.policy.checkpoint import load_checkpoint

        return load_checkpoint(checkpoint, device=device, dtype=dtype, norm_key=norm_key, overrides=overrides)
    cfg = load_preset(preset or "tiny", overrides)
    # on a GPU build straight in the serving dtype (a 7B model in float32 is 31 GB); on the CPU build
    # in float32 and cast, so a seed gives the same weights in every dtype
    model = build_model(cfg, seed=seed, device=device, dtype=dtype if torch.device(device).type != "cpu" else None)
    from vla_robot.policy import normalization
    from vla_robot.policy.tokenizer import ByteTokenizer, load_tokenizer

    base = models_dir()
    tokenizer = load_tokenizer(None, base / cfg.tokenizer) if cfg.tokenizer else ByteTokenizer()
    stats = normalization.read_statistics(base / cfg.dataset_statistics) if cfg.dataset_statistics else None
    processor = PolicyProcessor(cfg, tokenizer, tower_mean_std(model), stats, norm_key or cfg.norm_key)
    return PolicyRuntime(model, processor, device=device, dtype=dtype)
