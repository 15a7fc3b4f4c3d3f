"""Checkpoint I/O in the OpenVLA-OFT layout, without executing pickle.

A checkpoint directory holds ``config.json`` (OpenVLA's ``OpenVLAConfig`` fields, plus our model
description under ``"vla_robot"``), the main weights as safetensors (``model.safetensors`` or
``model-0000i-of-0000n.safetensors`` + ``model.safetensors.index.json``), ``dataset_statistics.json``,
the tokenizer files, ``proprio_projector--{step}_checkpoint.pt`` and, for the L1 head,
``action_head--{step}_checkpoint.pt``. ``.pt`` files load with ``weights_only=True``; DDP
``module.`` prefixes are stripped. Every missing, unexpected or mis-shaped tensor is an error that
names it and the file it came from.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from vla_robot.config import ConfigError, from_dict
from vla_robot.policy import normalization
from vla_robot.policy.config import PolicyModelConfig
from vla_robot.policy.hf_export import write_hf_processor
from vla_robot.policy.modeling import OFTModel

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "read_model_config", "check_state_dict", "find_component"]

CONFIG_FILE = "config.json"
STATS_FILE = "dataset_statistics.json"
INDEX_FILE = "model.safetensors.index.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
SINGLE_FILE = "model.safetensors"
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3


class CheckpointError(ValueError):
    """A checkpoint file or tensor is missing, unexpected, or of the wrong shape."""


# --- config.json ----------------------------------------------------------------------------------
def _oft_config(cfg: PolicyModelConfig, stats: Mapping[str, Any] | None, torch_dtype: str) -> dict[str, Any]:
    c = cfg.llm
    return {
        "architectures": ["OpenVLAForActionPrediction"],
        "auto_map": {
            "AutoConfig": "configuration_prismatic.OpenVLAConfig",
            "AutoModelForVision2Seq": "modeling_prismatic.OpenVLAForActionPrediction",
        },
        "model_type": "openvla",
        "vision_backbone_id": "dinosiglip-vit-so-224px",
        "llm_backbone_id": "llama2-7b-pure",
        "arch_specifier": "no-align+fused-gelu-mlp",
        "use_fused_vision_backbone": True,
        "image_resize_strategy": "resize-naive",
        "timm_model_ids": list(cfg.vision.timm_model_ids),
        "timm_override_act_layers": [None, None],
        "image_sizes": [cfg.vision.image_size, cfg.vision.image_size],
        "llm_max_length": c.max_position_embeddings,
        "pad_token_id": 32000,
        "pad_to_multiple_of": c.pad_to_multiple_of,
        "n_action_bins": 256,
        "norm_stats": stats,
        "output_projector_states": False,
        "torch_dtype": torch_dtype,
        "text_config": {
            "model_type": "llama",
            "vocab_size": c.vocab_size,
            "hidden_size": c.hidden_size,
            "intermediate_size": c.intermediate_size,
            "num_hidden_layers": c.num_hidden_layers,
            "num_attention_heads": c.num_attention_heads,
            "num_key_value_heads": c.num_key_value_heads,
            "max_position_embeddings": c.max_position_embeddings,
            "rms_norm_eps": c.rms_norm_eps,
            "rope_theta": c.rope_theta,
            "pad_token_id": 32000,
            "torch_dtype": torch_dtype,
        },
        "vla_robot": dataclasses.asdict(cfg),
    }


def read_model_config(directory: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> PolicyModelConfig:
    """Our model description of a checkpoint: from ``config.json["vla_robot"]`` when we wrote it,
    else derived from OFT's fields (text_config, image sizes, timm ids) + the oft-7b preset + which
    component files exist + ``overrides``."""
    d = Path(directory)
    path = d / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{d}: {CONFIG_FILE} is missing (an OpenVLA-OFT checkpoint directory has config.json + safetensors)")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON: {e}") from None
    overrides = dict(overrides or {})
    if "vla_robot" in raw:
        data = dict(raw["vla_robot"])
    else:  # a published OFT checkpoint: dimensions from text_config, the rest from the oft-7b preset
        from vla_robot.policy.runtime import load_preset

        data = dataclasses.asdict(load_preset("oft-7b"))
        tc = raw.get("text_config") or {}
        for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "rope_theta"):
            if k in tc:
                data["llm"][k] = tc[k]
        if raw.get("timm_model_ids"):
            data["vision"]["timm_model_ids"] = list(raw["timm_model_ids"])
        if raw.get("image_sizes"):
            data["vision"]["image_size"] = int(raw["image_sizes"][0])
        data["name"] = d.name
        data["tokenizer"] = data["dataset_statistics"] = ""
        has_head = _find_optional(d, "action_head") is not None
        data["head"] = "l1" if has_head else "discrete"
        data["film"] = _find_optional(d, "vision_backbone") is not None
        proprio = _find_optional(d, "proprio_projector")
        if proprio is None:
            data["proprio_dim"] = 0
        else:
            sd = _load_pt(proprio)
            if "fc1.weight" not in sd:
                raise CheckpointError(f"{proprio}: tensor 'fc1.weight' is missing (a proprio projector has fc1, fc2)")
            data["proprio_dim"] = int(sd["fc1.weight"].shape[1])
    data = _merge(data, overrides)
    try:
        return from_dict(PolicyModelConfig, data, source=str(path))
    except ConfigError as e:
        raise CheckpointError(str(e)) from None


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# --- component files --------------------------------------------------------------------------------
def _find_optional(d: Path, component: str) -> Path | None:
    found = sorted(p for p in d.iterdir() if p.is_file() and component in p.name and "checkpoint" in p.name)
    if len(found) > 1:
        raise CheckpointError(f"{d}: several {component} checkpoint files ({', '.join(p.name for p in found)}); expected exactly one")
    return found[0] if found else None


def find_component(directory: str | os.PathLike, component: str) -> Path:
    """The one file whose name contains ``component`` and ``checkpoint`` (as OFT's ``find_checkpoint_file``)."""
    p = _find_optional(Path(directory), component)
    if p is None:
        raise CheckpointError(f"{directory}: no '{component}--*checkpoint.pt' file (needed by this model)")
    return p


def _load_pt(path: Path) -> dict[str, torch.Tensor]:
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle refusals, truncated files …
        raise CheckpointError(f"{path}: cannot be read as a weights-only state dict: {e}") from None
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path}: expected a state dict, got {type(sd).__name__}")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}


def _load_main(d: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All main tensors and, for each, the file it came from."""
    from safetensors.torch import load_file

    if (d / INDEX_FILE).is_file():
        index = json.loads((d / INDEX_FILE).read_text())
        files = sorted(set(index.get("weight_map", {}).values()))
        if not files:
            raise CheckpointError(f"{d / INDEX_FILE}: empty weight_map")
    elif (d / SINGLE_FILE).is_file():
        files = [SINGLE_FILE]
    elif (d / "lora_adapter").is_dir():
        raise CheckpointError(
            f"{d}: only a LoRA adapter (lora_adapter/) and no merged weights; merge it into the base model first "
            f"(OFT's vla-scripts/merge_lora_weights_and_save.py), which writes {SINGLE_FILE} or {INDEX_FILE}"
        )
    else:
        raise CheckpointError(f"{d}: no safetensors weights ({SINGLE_FILE} or {INDEX_FILE} with shards)")
    state, origin = {}, {}
    for name in files:
        path = d / name
        if not path.is_file():
            raise CheckpointError(f"{d}: shard '{name}' listed in {INDEX_FILE} is missing")
        for k, v in load_file(str(path)).items():
            state[k], origin[k] = v, name
    return state, origin


def check_state_dict(expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor], where: str | Mapping[str, str]) -> None:
    """Raise :class:`CheckpointError` naming the first missing, unexpected or mis-shaped tensor."""
    def src(k: str) -> str:
        return where.get(k, "?") if isinstance(where, Mapping) else where

    missing = sorted(set(expected) - set(got))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{src(missing[0]) if not isinstance(where, Mapping) else 'checkpoint'}: tensor '{missing[0]}' is missing{more}")
    extra = sorted(set(got) - set(expected))
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise CheckpointError(f"{src(extra[0])}: unexpected tensor '{extra[0]}'{more} (not part of this model)")
    for k, v in got.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise CheckpointError(f"{src(k)}: tensor '{k}' has shape {tuple(v.shape)}; expected {tuple(expected[k].shape)}")


# --- save / load ----------------------------------------------------------------------------------
def save_checkpoint(runtime, directory: str | os.PathLike, step: int = 0, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> Path:
    """Write ``runtime`` in the OFT layout (loadable by :func:`load_checkpoint` and OFT's own tools)."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    model: OFTModel = runtime.model
    stats = runtime.processor.norm_stats
    torch_dtype = runtime.dtype
    with runtime.lock:
        main = {k: v.detach().cpu().contiguous() for k, v in model.main_state_dict().items()}
        proprio = None if model.proprio_projector is None else {k: v.detach().cpu().clone() for k, v in model.proprio_projector.state_dict().items()}
        head = None if model.action_head is None else {k: v.detach().cpu().clone() for k, v in model.action_head.state_dict().items()}
        vision = {k: v.detach().cpu().clone() for k, v in model.vision_state_dict().items()} if runtime.cfg.film else None
    adapted = [k for k in main if ".lora_A." in k or ".base_layer." in k]
    if adapted:  # peft's layers in place (rl/lora.py): OFT's tools and load_checkpoint need plain, merged weights
        raise CheckpointError(f"the model carries a LoRA adapter ('{adapted[0]}'); save its merged weights (Learner.save, "
                              "or save_checkpoint inside vla_robot.rl.lora.LoraAdapter.merged())")
    for stale in list(d.glob("model*.safetensors")) + list(d.glob("*--*checkpoint.pt")) + [d / INDEX_FILE]:
        stale.unlink(missing_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in main.items():
        n = v.numel() * v.element_size()
        if shards[-1] and size + n > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += n
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], str(d / SINGLE_FILE), metadata=meta)
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(d / name), metadata=meta)
            weight_map.update({k: name for k in shard})
        total = sum(v.numel() * v.element_size() for v in main.values())
        (d / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    if proprio is not None:
        torch.save(proprio, d / f"proprio_projector--{step}_checkpoint.pt")
    if head is not None:
        torch.save(head, d / f"action_head--{step}_checkpoint.pt")
    if vision is not None:
        torch.save(vision, d / f"vision_backbone--{step}_checkpoint.pt")
    if stats:
        normalization.write_statistics(stats, d / STATS_FILE)
    cfg = dataclasses.replace(runtime.cfg, norm_key=runtime.processor.norm_key, tokenizer="", dataset_statistics="")
    (d / CONFIG_FILE).write_text(json.dumps(_oft_config(cfg, stats, torch_dtype), indent=2))
    runtime.processor.tokenizer.save(d)
    write_hf_processor(runtime, d, PREPROCESSOR_FILE)  # + processing_prismatic.py: OFT's get_processor loads it
    return d


def _read_mean_std(d: Path, default):
    """Per-tower (mean, std) from the checkpoint's preprocessor_config.json, else ``default``."""
    path = d / PREPROCESSOR_FILE
    if not path.is_file():
        return default
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON: {e}") from None
    means, stds = raw.get("means"), raw.get("stds")
    if means is None or stds is None:
        return default
    if len(means) != 2 or len(stds) != 2 or any(len(x) != 3 for x in list(means) + list(stds)):
        raise CheckpointError(f"{path}: 'means' and 'stds' must be two RGB triples (one per vision tower)")
    return [(tuple(means[0]), tuple(stds[0])), (tuple(means[1]), tuple(stds[1]))]


def load_checkpoint(
    directory: str | os.PathLike,
    device: str = "cpu",
    dtype: str = "float32",
    norm_key: str = "",
    overrides: Mapping[str, Any] | None = None,
):
    """Load an OFT-layout checkpoint into a :class:`~vla_robot.policy.runtime.PolicyRuntime`."""
    from vla_robot.policy.processor import PolicyProcessor
    from vla_robot.policy.runtime import PolicyRuntime, build_model, tower_mean_std
    from vla_robot.policy.tokenizer import load_tokenizer

    d = Path(directory)
    if not d.is_dir():
        raise CheckpointError(f"{d}: checkpoint directory not found")
    cfg = read_model_config(d, overrides)
    main, origin = _load_main(d)
    model = build_model(cfg, seed=0, device=device, dtype=dtype if torch.device(device).type != "cpu" else None)
    check_state_dict(model.main_state_dict(), main, origin)
    parts = [main]
    if model.proprio_projector is not None:
        path = find_component(d, "proprio_projector")
        sd = _load_pt(path)
        check_state_dict(model.proprio_projector.state_dict(), sd, path.name)
        parts.append({"proprio_projector." + k: v for k, v in sd.items()})
    if model.action_head is not None:
        path = find_component(d, "action_head")
        sd = _load_pt(path)
        check_state_dict(model.action_head.state_dict(), sd, path.name)
        parts.append({"action_head." + k: v for k, v in sd.items()})
    parts[0] = model.load_main_state_dict(main)
    if cfg.film:
        path = find_component(d, "vision_backbone")
        sd = _load_pt(path)
        lora = [k for k in sd if "lora_" in k or ".base_layer." in k]
        if lora:
            raise CheckpointError(f"{path}: tensor '{lora[0]}' belongs to a LoRA-wrapped backbone; merge the LoRA weights first")
        check_state_dict(model.vision_state_dict(), sd, path.name)
        parts.append(sd)
    full = {k: v for p in parts for k, v in p.items()}
    model.load_state_dict(full, strict=True)
    stats = None
    if (d / STATS_FILE).is_file():
        stats = normalization.read_statistics(d / STATS_FILE)
    else:
        raw = json.loads((d / CONFIG_FILE).read_text())
        stats = raw.get("norm_stats") or None
    if stats is None:
        raise CheckpointError(f"{d}: {STATS_FILE} is missing (needed to un-normalise actions)")
    tokenizer = load_tokenizer(d)
    processor = PolicyProcessor(cfg, tokenizer, _read_mean_std(d, tower_mean_std(model)), stats, norm_key or cfg.norm_key)
    return PolicyRuntime(model, processor, device=device, dtype=dtype)
