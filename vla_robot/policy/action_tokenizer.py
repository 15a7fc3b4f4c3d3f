"""Action ↔ token ids, exactly as OpenVLA's ``ActionTokenizer`` (numpy only).

256 uniform bin *edges* ``linspace(-1, 1, 256)`` (255 bin centres). Encoding:
``token = 32000 - digitize(clip(a, -1, 1), edges)`` gives ids 31744…31999. Decoding:
``centres[clip(32000 - token - 1, 0, 254)]``. "Bin index" below is ``token - 31744`` (0…255), the
position in the 256-logit slice ``logits[..., 31744:32000]`` that SimpleVLA-RL samples from.
"""
from __future__ import annotations

import numpy as np

from vla_robot.policy.config import ACTION_TOKEN_MIN, N_ACTION_BINS, VOCAB_SIZE

BIN_EDGES = np.linspace(-1.0, 1.0, N_ACTION_BINS)
BIN_CENTERS = (BIN_EDGES[:-1] + BIN_EDGES[1:]) / 2.0

__all__ = ["BIN_EDGES", "BIN_CENTERS", "encode", "decode", "tokens_to_bins", "bins_to_tokens"]


def encode(normalized_actions: np.ndarray) -> np.ndarray:
    """Normalised actions in [-1, 1] → int64 token ids (same shape)."""
    a = np.clip(np.asarray(normalized_actions, np.float64), -1.0, 1.0)
    if not np.all(np.isfinite(a)):
        raise ValueError("cannot tokenize actions containing NaN or inf")
    return (VOCAB_SIZE - np.digitize(a, BIN_EDGES)).astype(np.int64)


def decode(tokens: np.ndarray) -> np.ndarray:
    """Token ids → normalised actions (bin centres), as OFT's discrete decoding."""
    t = np.asarray(tokens, np.int64)
    idx = np.clip(VOCAB_SIZE - t - 1, 0, BIN_CENTERS.shape[0] - 1)
    return BIN_CENTERS[idx]


def tokens_to_bins(tokens: np.ndarray) -> np.ndarray:
    """Token ids → index in the 256-logit slice (0…255); raises for non-action ids."""
    t = np.asarray(tokens, np.int64)
    b = t - ACTION_TOKEN_MIN
    if np.any((b < 0) | (b >= N_ACTION_BINS)):
        bad = t[(b < 0) | (b >= N_ACTION_BINS)].ravel()[:5].tolist()
        raise ValueError(f"not action tokens: {bad}; expected ids in {ACTION_TOKEN_MIN}..{VOCAB_SIZE - 1}")
    return b


def bins_to_tokens(bins: np.ndarray) -> np.ndarray:
    return np.asarray(bins, np.int64) + ACTION_TOKEN_MIN
