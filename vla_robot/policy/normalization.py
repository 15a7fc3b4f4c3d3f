"""Action/proprio normalisation exactly as OpenVLA-OFT does it, and its dataset statistics.

``dataset_statistics.json`` is ``{norm_key: {"action": {mean, std, max, min, q01, q99[, mask]},
"proprio": {...}, "num_transitions", "num_trajectories"}}``. With ``bounds_q99`` the bounds are
q01/q99, with ``bounds`` min/max. Normalising: ``clip(2 (x - low) / (high - low + 1e-8) - 1, -1, 1)``
where the mask is true (dimensions with high == low become 0); un-normalising:
``0.5 (x + 1) (high - low + 1e-8) + low`` where the mask is true; masked-off dimensions pass through.

numpy only: the recorder and the RL learner use it without torch.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

__all__ = [
    "compute_statistics",
    "identity_statistics",
    "bounds",
    "normalize",
    "unnormalize",
    "read_statistics",
    "write_statistics",
    "resolve_norm_key",
    "check_statistics",
]

_EPS = 1e-8
_REQUIRED = ("q01", "q99", "min", "max")


def compute_statistics(
    actions: np.ndarray,
    states: np.ndarray | None = None,
    action_mask: np.ndarray | list[bool] | None = None,
    num_trajectories: int = 0,
) -> dict[str, Any]:
    """Statistics of one dataset in OFT's ``dataset_statistics.json`` form (one key's value).

    ``actions``: ``[N, action_dim]`` (or ``[N, chunk, action_dim]``); ``states``: ``[N, proprio_dim]``.
    ``action_mask``: which action dimensions are normalised (default: all, as for absolute joints).
    """
    a = _as_2d(actions, "actions")
    out: dict[str, Any] = {"action": _stats(a), "num_transitions": int(a.shape[0]), "num_trajectories": int(num_trajectories)}
    mask = np.ones(a.shape[1], bool) if action_mask is None else np.asarray(action_mask, bool)
    if mask.shape != (a.shape[1],):
        raise ValueError(f"action_mask has {mask.shape[0] if mask.ndim else 0} entries; expected {a.shape[1]} (one per action dimension)")
    out["action"]["mask"] = mask.tolist()
    if states is not None:
        s = _as_2d(states, "states")
        out["proprio"] = _stats(s)
    return out


def identity_statistics(action_dim: int, proprio_dim: int = 0) -> dict[str, Any]:
    """Statistics whose bounds are [-1, 1] (normalising changes nothing): for random-weight presets
    and dry runs, never for a trained policy."""
    one = {"mean": [0.0] * action_dim, "std": [1.0] * action_dim, "max": [1.0] * action_dim, "min": [-1.0] * action_dim,
           "q01": [-1.0] * action_dim, "q99": [1.0] * action_dim}
    out: dict[str, Any] = {"action": dict(one, mask=[True] * action_dim), "num_transitions": 0, "num_trajectories": 0}
    if proprio_dim:
        out["proprio"] = {k: [v[0]] * proprio_dim for k, v in one.items()}
    return out


def _as_2d(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 3:
        x = x.reshape(-1, x.shape[-1])
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty array [N, dim] (or [N, chunk, dim]), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or inf")
    return x


def _stats(x: np.ndarray) -> dict[str, list[float]]:
    return {
        "mean": x.mean(0).tolist(),
        "std": x.std(0).tolist(),
        "max": x.max(0).tolist(),
        "min": x.min(0).tolist(),
        "q01": np.quantile(x, 0.01, axis=0).tolist(),
        "q99": np.quantile(x, 0.99, axis=0).tolist(),
    }


def check_statistics(stats: Mapping[str, Any], where: str = "dataset statistics") -> None:
    """Raise ValueError naming what is missing or malformed in ``{norm_key: {...}}``."""
    if not isinstance(stats, Mapping) or not stats:
        raise ValueError(f"{where}: expected a non-empty mapping {{norm_key: {{'action': ..., 'proprio': ...}}}}")
    for key, entry in stats.items():
        if not isinstance(entry, Mapping) or "action" not in entry:
            raise ValueError(f"{where}: '{key}' has no 'action' statistics")
        for part in ("action", "proprio"):
            if part not in entry:
                continue
            d = entry[part]
            missing = [f for f in _REQUIRED if f not in d]
            if missing:
                raise ValueError(f"{where}: '{key}.{part}' lacks {', '.join(missing)} (needs q01, q99, min, max)")
            n = len(d["q01"])
            for f in _REQUIRED + (("mask",) if "mask" in d else ()):
                if len(d[f]) != n:
                    raise ValueError(f"{where}: '{key}.{part}.{f}' has {len(d[f])} entries, expected {n}")


def resolve_norm_key(stats: Mapping[str, Any], norm_key: str | None) -> str:
    """The statistics key to use: ``norm_key`` if given, else the only key (as OFT's ``_check_unnorm_key``)."""
    if not norm_key:
        if len(stats) != 1:
            raise ValueError(f"several dataset statistics are present ({', '.join(stats)}); choose one with norm_key")
        return next(iter(stats))
    if norm_key not in stats:
        raise ValueError(f"norm_key '{norm_key}' is not in the dataset statistics; available: {', '.join(stats) or 'none'}")
    return norm_key


def bounds(part: Mapping[str, Any], normalization: str = "bounds_q99") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(low, high, mask)`` of one part (``stats[key]["action"]`` or ``["proprio"]``)."""
    if normalization == "bounds_q99":
        low, high = np.asarray(part["q01"], np.float64), np.asarray(part["q99"], np.float64)
    elif normalization == "bounds":
        low, high = np.asarray(part["min"], np.float64), np.asarray(part["max"], np.float64)
    else:
        raise ValueError(f"normalization '{normalization}' is unknown; expected 'bounds_q99' or 'bounds'")
    mask = np.asarray(part.get("mask", np.ones_like(low, bool)), bool)
    return low, high, mask


def normalize(x: np.ndarray, part: Mapping[str, Any], normalization: str = "bounds_q99") -> np.ndarray:
    """Raw → [-1, 1] (masked dimensions pass through), as OFT's ``normalize_action_and_proprio``."""
    low, high, mask = bounds(part, normalization)
    x = np.asarray(x, np.float64)
    if x.shape[-1] != low.shape[0]:
        raise ValueError(f"cannot normalize: last dimension is {x.shape[-1]}, statistics have {low.shape[0]}")
    n = np.clip(2.0 * (x - low) / (high - low + _EPS) - 1.0, -1.0, 1.0)
    n = np.where(high == low, 0.0, n)
    return np.where(mask, n, x)


def unnormalize(xn: np.ndarray, part: Mapping[str, Any], normalization: str = "bounds_q99") -> np.ndarray:
    """[-1, 1] → raw, as OFT's ``_unnormalize_actions`` (masked-off dimensions pass through)."""
    low, high, mask = bounds(part, normalization)
    xn = np.asarray(xn, np.float64)
    if xn.shape[-1] != low.shape[0]:
        raise ValueError(f"cannot unnormalize: last dimension is {xn.shape[-1]}, statistics have {low.shape[0]}")
    return np.where(mask, 0.5 * (xn + 1.0) * (high - low + _EPS) + low, xn)


def read_statistics(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: dataset statistics not found (expected OFT's dataset_statistics.json)")
    try:
        stats = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None
    check_statistics(stats, str(path))
    return stats


def write_statistics(stats: Mapping[str, Any], path: str | os.PathLike) -> None:
    check_statistics(stats)
    Path(path).write_text(json.dumps(_plain(stats), indent=2))


def _plain(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return x
