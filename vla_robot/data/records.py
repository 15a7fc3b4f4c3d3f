"""The on-policy record: for each policy chunk, exactly what the server saw and what it sampled.

The learner must recompute the behaviour log-probs on the very inputs the server had (images as
sent, lossless; the state; the instruction; the temperature; the policy version), so these are
kept per chunk, not rebuilt from the recorded frames (those are a later observation, and AV1 video).

Flow: policy_node builds one chunk record per reply that carries tokens (:func:`make_chunk`) and
publishes ``encode(chunk)`` on ``policy/record``; the recorder keeps each episode's chunks and, when
it saves the episode, writes them into one file next to the LeRobotDataset, published and committed
with the episode (see :mod:`vla_robot.data.store`)::

    <root>/rl/episode_000012.msgpack

A file holds (msgpack; arrays as on the policy wire, :func:`vla_robot.serving.protocol.dumps`)::

    {"format": "vla_robot.onpolicy", "v": 1, "episode_index": int, "length": int (frames),
     "chunks": [chunk, ...]}                                   # in chunk-id order
    chunk = {"chunk_id": int,          # policy_node's id; the frames' action.chunk_id points here
             "version": int,           # policy version that sampled it
             "obs_stamp": float,       # stamp of the observation (s)
             "observation": {"images": {cam: uint8 HxWx3}, "state": float32[P], "instruction": str},
             "options": {"mode": "greedy"|"sample", "temperature": float, "seed": int|None},
             "tokens": int64[H*D], "logprobs": float32[H*D], "actions": float32[H, D],
             "served_by": {...}}       # the server's metadata (model, dtype, image_size, ...), no version

Which of a chunk's actions the arm executed is not stored here: it comes from the frames
(``action.chunk_id``, ``action.chunk_step``, ``control``) through :func:`schema.executed_mask`
when the episode is read, whatever the order in which records and commands arrived.

numpy, msgpack and the protocol module only.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vla_robot.serving import protocol

FORMAT = "vla_robot.onpolicy"
VERSION = 1
DIR = "rl"  # under the dataset root; tracked, published and committed like data/ and videos/
CHUNK_KEYS = ("chunk_id", "version", "obs_stamp", "observation", "options", "tokens", "logprobs", "actions",
              "served_by")


def episode_path(root: str | Path, episode_index: int) -> Path:
    return Path(root) / DIR / f"episode_{int(episode_index):06d}.msgpack"


def served_by(metadata: dict | None) -> dict:
    """The serving policy's identity from the server's metadata: all of it but the version, which
    changes with every hot-swap and is kept per chunk."""
    return {str(k): v for k, v in (metadata or {}).items() if k != "version"}


def make_chunk(reply: dict, observation: dict, options: dict, chunk_id: int, obs_stamp: float,
               metadata: dict | None) -> dict:
    """The record of one reply: ``observation`` exactly as it was sent, the request ``options``
    (their effective values: the server's default temperature when none was sent)."""
    opts = protocol.parse_options({k: v for k, v in options.items() if k != "return_tokens"})
    return {
        "chunk_id": int(chunk_id),
        "version": int(reply.get("version", 0) or 0),
        "obs_stamp": float(obs_stamp),
        "observation": {"images": dict(observation["images"]), "state": np.asarray(observation["state"], np.float32),
                        "instruction": str(observation["instruction"])},
        "options": {"mode": opts.mode, "temperature": opts.temperature, "seed": opts.seed},
        "tokens": np.asarray(reply["tokens"], np.int64),
        "logprobs": np.asarray(reply["logprobs"], np.float32),
        "actions": np.asarray(reply["actions"], np.float32),
        "served_by": served_by(metadata),
    }


def encode(obj: dict) -> bytes:
    return protocol.dumps(obj)


def check_chunk(chunk: Any) -> dict:
    """Validate one chunk record; raises ValueError saying which field is wrong and what was expected."""
    if not isinstance(chunk, dict):
        raise ValueError(f"a chunk record must be a map, got {type(chunk).__name__}")
    missing = [k for k in CHUNK_KEYS if k not in chunk]
    if missing:
        raise ValueError(f"chunk record lacks {missing}; expected {list(CHUNK_KEYS)}")
    cid = chunk["chunk_id"]
    for key in ("chunk_id", "version"):
        if not isinstance(chunk[key], int) or isinstance(chunk[key], bool):
            raise ValueError(f"chunk record: '{key}' must be an integer, got {chunk[key]!r}")
    try:
        protocol.check_observation(chunk["observation"])
        protocol.parse_options(chunk["options"])
    except ValueError as e:
        raise ValueError(f"chunk {cid}: {e}") from None
    if not isinstance(chunk["observation"]["state"], np.ndarray) or chunk["observation"]["state"].dtype != np.float32:
        raise ValueError(f"chunk {cid}: observation state must be float32 as sent")
    tokens, logprobs = chunk["tokens"], chunk["logprobs"]
    if not (isinstance(tokens, np.ndarray) and tokens.ndim == 1 and tokens.dtype == np.int64 and tokens.size):
        raise ValueError(f"chunk {cid}: 'tokens' must be a non-empty 1-D int64 array, got {_desc(tokens)}")
    if not (isinstance(logprobs, np.ndarray) and logprobs.dtype == np.float32 and logprobs.shape == tokens.shape):
        raise ValueError(f"chunk {cid}: 'logprobs' must be float32 of shape {tokens.shape}, got {_desc(logprobs)}")
    if not np.all(np.isfinite(logprobs)):
        raise ValueError(f"chunk {cid}: 'logprobs' has non-finite values")
    actions = chunk["actions"]
    if not (isinstance(actions, np.ndarray) and actions.ndim == 2 and actions.size == tokens.size):
        raise ValueError(f"chunk {cid}: 'actions' must be [H, D] with H*D = {tokens.size} tokens, got {_desc(actions)}")
    if not isinstance(chunk["served_by"], dict):
        raise ValueError(f"chunk {cid}: 'served_by' must be a map (the server's metadata)")
    return chunk


def decode_chunk(data: Any) -> dict:
    """One chunk record from :func:`encode`'s bytes; ValueError (naming the problem) if malformed."""
    try:
        chunk = protocol.loads(data)
    except protocol.ProtocolError as e:
        raise ValueError(f"chunk record is not readable: {e}") from None
    return check_chunk(chunk)


def encode_episode(chunks: list[dict], episode_index: int, length: int) -> bytes:
    chunks = sorted(chunks, key=lambda c: c["chunk_id"])
    return encode({"format": FORMAT, "v": VERSION, "episode_index": int(episode_index), "length": int(length),
                   "chunks": chunks})


def read_episode(path: str | Path) -> dict:
    """An episode's record file, checked; ValueError saying what is wrong (missing, cut short, malformed)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist: the episode has no on-policy record (recorded with "
                         "policy_node's return_tokens off, or by an older recorder)") from None
    try:
        rec = protocol.loads(data)
    except protocol.ProtocolError as e:
        raise ValueError(f"{path} is not a readable on-policy record (truncated or corrupt?): {e}") from None
    if rec.get("format") != FORMAT or rec.get("v") != VERSION:
        raise ValueError(f"{path}: format {rec.get('format')!r} v{rec.get('v')!r}; expected {FORMAT!r} v{VERSION}")
    for key in ("episode_index", "length"):
        if not isinstance(rec.get(key), int):
            raise ValueError(f"{path}: '{key}' must be an integer, got {rec.get(key)!r}")
    if not isinstance(rec.get("chunks"), list):
        raise ValueError(f"{path}: 'chunks' must be a list of chunk records")
    for c in rec["chunks"]:
        try:
            check_chunk(c)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    return rec


def _desc(a: Any) -> str:
    return f"{a.dtype} {list(a.shape)}" if isinstance(a, np.ndarray) else type(a).__name__
