"""The policy server's wire format: the one module both ends import.

A message is a ZMQ multipart message::

    frame 0      msgpack header (a map)
    frame 1..n   raw array buffers, C order, referenced from the header

Arrays never travel as pickle or JSON: in the header an array is the msgpack extension type
:data:`ARRAY_EXT` whose payload is ``msgpack([dtype_str, shape, frame_index])``; its bytes are the
frame ``frame_index``. Decoding checks every array (allowed dtype, shape matches the frame's size,
each frame used exactly once), so a hostile message can cost no more than its own size.

Requests (client → server), every one with ``v`` (protocol version) and ``type``:

- ``{"v": 1, "type": "metadata", "id": int}``
- ``{"v": 1, "type": "ping", "id": int}``                          → stats
- ``{"v": 1, "type": "act", "id": int, "obs": {"images": {cam: uint8 HxWx3}, "state": float[P],
  "instruction": str}, "options": {"mode": "greedy"|"sample", "temperature": float,
  "return_tokens": bool, "seed": int}}``  (``options`` and each option may be left out; ``seed``
  makes a sampled chunk reproducible: that request draws from its own generator)

Replies (server → client):

- ``{"v": 1, "type": "result", "id": int, "actions": float32[H, D], "tokens": int64[H*D] | None,
  "logprobs": float32[H*D] | None, "version": int, "timings": {name: ms}}``
- ``{"v": 1, "type": "metadata", "id": int, "metadata": {...}}``
- ``{"v": 1, "type": "stats", "id": int, "stats": {...}}``
- ``{"v": 1, "type": "error", "id": int | None, "code": str, "message": str}``

This module imports only numpy and msgpack.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

PROTOCOL_VERSION = 1
ARRAY_EXT = 1
DEFAULT_PORT = 5555
DEFAULT_WEIGHTS_PORT = 5556
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
MAX_INSTRUCTION_CHARS = 2048
MAX_IMAGE_SIDE = 4096
MAX_NDIM = 8
MAX_TEMPERATURE = 100.0

# Dtypes an array may carry on the wire (little-endian, no objects, no structured dtypes).
ALLOWED_DTYPES = frozenset(
    ["|u1", "|i1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f2", "<f4", "<f8", "|b1"]
)
# Names used in error replies.
ERROR_CODES = (
    "bad_message",  # not a message at all: garbage bytes, not msgpack, bad array frames
    "bad_request",  # a message, but a field is missing, unknown, of the wrong type or value
    "unsupported_version",  # protocol version this server does not speak
    "too_large",  # over the size limit
    "overloaded",  # the queue is full; try again later
    "internal",  # the model failed; the server keeps serving
    "unavailable",  # the server is shutting down
    "lora_base_unknown",  # a LoRA adapter push for a base this server does not hold: send the base with it
)
SAMPLING_MODES = ("greedy", "sample")
REQUEST_TYPES = ("metadata", "ping", "act")


class ProtocolError(ValueError):
    """A message broke the protocol; ``code`` is one of :data:`ERROR_CODES`."""

    def __init__(self, code: str, message: str, request_id: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


# --- arrays in frames ----------------------------------------------------------------------------


def _wire_dtype(a: np.ndarray) -> str:
    dt = a.dtype
    if dt.byteorder == ">":
        raise ValueError(f"big-endian arrays are not sent; convert with .astype('{dt.newbyteorder('<').str}')")
    s = dt.str
    if s not in ALLOWED_DTYPES:
        raise ValueError(f"arrays of dtype {dt} cannot be sent; allowed: {sorted(ALLOWED_DTYPES)}")
    return s


_tls = threading.local()  # per-thread packers: msgpack.packb allocates a 256 KiB buffer per call


def _default(obj: Any):
    if isinstance(obj, np.ndarray):
        a = obj if obj.flags.c_contiguous else obj.copy(order="C")  # (ascontiguousarray makes 0-d 1-d)
        dtype = _wire_dtype(a)
        frames = _tls.frames
        frames.append(a if a.nbytes >= _tls.copy_threshold else a.tobytes())
        return msgpack.ExtType(ARRAY_EXT, _tls.small.pack([dtype, list(a.shape), len(frames) - 1]))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"cannot encode {type(obj).__name__} on the policy wire (use numpy arrays, str, numbers, lists, dicts)")


def pack(header: dict, *, copy_threshold: int = 0) -> list:
    """Encode ``header`` (numpy arrays anywhere inside it) into the frames of one multipart message.

    Arrays of at least ``copy_threshold`` bytes are frames of their own memory (zero-copy with
    ``send_multipart(copy=False)``); smaller ones are copied into ``bytes``.
    """
    if not hasattr(_tls, "header"):
        _tls.header = msgpack.Packer(default=_default, use_bin_type=True, buf_size=4096)
        _tls.small = msgpack.Packer(use_bin_type=True, buf_size=256)
    frames: list = [b""]
    _tls.frames, _tls.copy_threshold = frames, max(copy_threshold, 1)
    try:
        frames[0] = _tls.header.pack(header)
    finally:
        _tls.frames = None
    return frames


def _buffer(frame: Any) -> memoryview:
    """The bytes of a frame (``zmq.Frame``, bytes, or anything with the buffer protocol) as a flat view."""
    if isinstance(frame, np.ndarray):
        return memoryview(frame.reshape(-1).view(np.uint8))
    mv = frame.buffer if hasattr(frame, "buffer") and hasattr(frame, "bytes") else memoryview(frame)
    return mv if mv.ndim == 1 and mv.format == "B" else mv.cast("B")


def unpack(frames: list, *, max_bytes: int | None = None) -> dict:
    """Decode a multipart message into its header, arrays restored (read-only views of the frames).

    Raises :class:`ProtocolError` (``bad_message`` or ``too_large``) with what was wrong.
    """
    if not frames:
        raise ProtocolError("bad_message", "empty message: expected a msgpack header frame")
    bufs = [_buffer(f) for f in frames]
    if max_bytes is not None:
        total = sum(len(b) for b in bufs)
        if total > max_bytes:
            raise ProtocolError("too_large", f"message is {total} bytes; this server accepts at most {max_bytes}")
    used: list[int] = []

    def ext_hook(code: int, data: bytes):
        if code != ARRAY_EXT:
            raise ProtocolError("bad_message", f"unknown msgpack extension type {code}; only {ARRAY_EXT} (array) is used")
        try:
            dtype, shape, index = msgpack.unpackb(data, use_list=True, strict_map_key=True)
        except Exception:  # noqa: BLE001
            raise ProtocolError("bad_message", "array descriptor is not msgpack [dtype, shape, frame_index]") from None
        if dtype.__class__ is not str or dtype not in ALLOWED_DTYPES:
            raise ProtocolError("bad_message", f"array dtype {dtype!r} is not allowed; allowed: {sorted(ALLOWED_DTYPES)}")
        if (
            shape.__class__ is not list
            or len(shape) > MAX_NDIM
            or not all(d.__class__ is int and 0 <= d < 2**40 for d in shape)
        ):
            raise ProtocolError("bad_message", f"array shape {shape!r} must be a list of at most {MAX_NDIM} non-negative integers")
        if index.__class__ is not int or not 1 <= index < len(bufs):
            raise ProtocolError("bad_message", f"array frame index {index!r} is not one of the {len(bufs) - 1} data frames")
        dt = np.dtype(dtype)
        expected = dt.itemsize * math.prod(shape)
        if expected != len(bufs[index]):
            raise ProtocolError(
                "bad_message", f"array frame {index} has {len(bufs[index])} bytes; dtype {dtype} shape {shape} needs {expected}"
            )
        used.append(index)
        return np.frombuffer(bufs[index], dtype=dt).reshape(shape)

    try:
        header = msgpack.unpackb(bufs[0], ext_hook=ext_hook, raw=False, strict_map_key=True, use_list=True)
    except ProtocolError:
        raise
    except Exception as e:  # noqa: BLE001 - msgpack raises many kinds
        raise ProtocolError("bad_message", f"header frame is not valid msgpack ({type(e).__name__}: {e})") from None
    if header.__class__ is not dict:
        raise ProtocolError("bad_message", f"header must be a msgpack map, got {type(header).__name__}")
    if len(used) != len(bufs) - 1 or (used and sorted(used) != list(range(1, len(bufs)))):
        raise ProtocolError(
            "bad_message",
            f"data frames and array references disagree: {len(bufs) - 1} data frame(s), referenced {sorted(used)}",
        )
    return header


def dumps(obj: dict) -> bytes:
    """``obj`` as one self-contained byte string (a file, a ROS message): the frames of :func:`pack`
    as a msgpack list of bin. The same array encoding and checks as the wire, in one buffer."""
    return msgpack.packb([bytes(_buffer(f)) for f in pack(obj)], use_bin_type=True)


def loads(data: Any, *, max_bytes: int | None = None) -> dict:
    """Inverse of :func:`dumps` (any bytes-like ``data``). Raises :class:`ProtocolError` (``bad_message``)
    saying what is wrong: not msgpack, not a list of frames, cut short, or bad arrays."""
    try:
        frames = msgpack.unpackb(_buffer(data), raw=False, use_list=True)
    except Exception as e:  # noqa: BLE001 - msgpack raises many kinds (a cut-short buffer among them)
        raise ProtocolError("bad_message", f"not a msgpack list of frames ({type(e).__name__}: {e})") from None
    if frames.__class__ is not list or not frames or not all(f.__class__ is bytes for f in frames):
        raise ProtocolError("bad_message", "expected a msgpack list of binary frames (header first), as dumps() writes")
    return unpack(frames, max_bytes=max_bytes)


# --- requests ------------------------------------------------------------------------------------


@dataclass
class ActOptions:
    """Sampling options of one ``act`` request (the keywords of the runtime's ``infer``)."""

    mode: str = "greedy"
    temperature: float = 1.6
    return_tokens: bool = False
    seed: int | None = None  # mode "sample": this request's own generator (requests still batch together)

    def key(self) -> tuple:
        """Requests with equal keys can share one batched forward pass (the seed is per row)."""
        return (self.mode, self.temperature if self.mode == "sample" else None, self.return_tokens)


@dataclass
class Request:
    type: str
    id: int
    obs: dict | None = None
    options: ActOptions = field(default_factory=ActOptions)


def _request_id(header: dict) -> int | None:
    rid = header.get("id")
    return rid if isinstance(rid, int) and not isinstance(rid, bool) and 0 <= rid < 2**63 else None


def parse_request(header: dict, metadata: dict | None = None) -> Request:
    """Check a decoded request header; with ``metadata`` also check an observation against the policy.

    Raises :class:`ProtocolError` naming the field, what it was and what was expected.
    """
    rid = _request_id(header)

    def fail(code: str, msg: str):
        raise ProtocolError(code, msg, rid)

    v = header.get("v")
    if not isinstance(v, int) or isinstance(v, bool):
        fail("bad_request", f"'v' (protocol version) must be an integer, got {v!r}; this server speaks {PROTOCOL_VERSION}")
    if v != PROTOCOL_VERSION:
        fail("unsupported_version", f"request speaks protocol {v}; this server speaks protocol {PROTOCOL_VERSION} only")
    if rid is None:
        fail("bad_request", f"'id' must be an integer in [0, 2**63), got {header.get('id')!r}")
    kind = header.get("type")
    if kind not in REQUEST_TYPES:
        fail("bad_request", f"'type' is {kind!r}; expected one of {', '.join(REQUEST_TYPES)}")
    allowed = {"v", "type", "id"} | ({"obs", "options"} if kind == "act" else set())
    unknown = sorted(str(k) for k in set(header) - allowed)
    if unknown:
        fail("bad_request", f"unknown field(s) {unknown} in a '{kind}' request; allowed: {sorted(allowed)}")
    if kind != "act":
        return Request(kind, rid)
    if "obs" not in header:
        fail("bad_request", "an 'act' request needs 'obs' = {images, state, instruction}")
    try:
        obs = check_observation(header["obs"], metadata)
        options = parse_options(header.get("options", {}))
    except ValueError as e:
        fail("bad_request", str(e))
    return Request("act", rid, obs, options)


def parse_options(options: Any) -> ActOptions:
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise ValueError(f"'options' must be a map of mode/temperature/return_tokens/seed, got {type(options).__name__}")
    unknown = sorted(str(k) for k in set(options) - {"mode", "temperature", "return_tokens", "seed"})
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}; allowed: mode, temperature, return_tokens, seed")
    out = ActOptions()
    if "mode" in options:
        if options["mode"] not in SAMPLING_MODES:
            raise ValueError(f"option 'mode' is {options['mode']!r}; expected 'greedy' or 'sample'")
        out.mode = options["mode"]
    if "temperature" in options:
        t = options["temperature"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not (0 < t <= MAX_TEMPERATURE):
            raise ValueError(f"option 'temperature' is {t!r}; expected a number in (0, {MAX_TEMPERATURE}]")
        out.temperature = float(t)
    if "return_tokens" in options:
        if not isinstance(options["return_tokens"], bool):
            raise ValueError(f"option 'return_tokens' is {options['return_tokens']!r}; expected true or false")
        out.return_tokens = options["return_tokens"]
    if options.get("seed") is not None:
        seed = options["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise ValueError(f"option 'seed' is {seed!r}; expected an integer in [0, 2**63) or null")
        out.seed = seed
    return out


def check_observation(obs: Any, metadata: dict | None = None) -> dict:
    """Validate an observation (and against ``metadata``: cameras, proprio_dim); return it normalized.

    The returned dict has exactly ``images`` (in the policy's camera order), ``state`` (float32) and
    ``instruction``. Raises ``ValueError`` that names the problem.
    """
    if not isinstance(obs, dict):
        raise ValueError(f"'obs' must be a map with images, state, instruction; got {type(obs).__name__}")
    unknown = sorted(str(k) for k in set(obs) - {"images", "state", "instruction"})
    if unknown:
        raise ValueError(f"unknown observation field(s) {unknown}; expected images, state, instruction")
    for key in ("images", "state", "instruction"):
        if key not in obs:
            raise ValueError(f"observation lacks '{key}'; expected images (by camera), state, instruction")
    images = obs["images"]
    if not isinstance(images, dict) or not images:
        raise ValueError("'images' must be a non-empty map of camera name -> uint8 HxWx3 array")
    cams = list(metadata["cameras"]) if metadata else list(images)
    missing = [c for c in cams if c not in images]
    extra = [str(c) for c in images if c not in cams]
    if missing or extra:
        raise ValueError(
            f"cameras do not match the policy's: missing {missing}, unexpected {extra}; expected exactly {cams}"
        )
    out_images = {}
    for cam in cams:
        img = images[cam]
        if not isinstance(img, np.ndarray):
            raise ValueError(f"image '{cam}' is a {type(img).__name__}; expected a uint8 HxWx3 array")
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"image '{cam}' is {img.dtype} {list(img.shape)}; expected uint8 HxWx3 (RGB)")
        if not (1 <= img.shape[0] <= MAX_IMAGE_SIDE and 1 <= img.shape[1] <= MAX_IMAGE_SIDE):
            raise ValueError(f"image '{cam}' is {img.shape[0]}x{img.shape[1]}; each side must be 1..{MAX_IMAGE_SIDE}")
        out_images[cam] = img
    state = obs["state"]
    if not isinstance(state, np.ndarray) or state.ndim != 1 or state.dtype.kind not in "fiu":
        desc = f"{state.dtype} {list(state.shape)}" if isinstance(state, np.ndarray) else type(state).__name__
        raise ValueError(f"'state' is {desc}; expected a 1-D float array")
    if metadata is not None and state.shape[0] != metadata["proprio_dim"]:
        raise ValueError(f"'state' has {state.shape[0]} entries; the policy expects proprio_dim={metadata['proprio_dim']}")
    state = state.astype(np.float32)
    if not np.all(np.isfinite(state)):
        bad = np.flatnonzero(~np.isfinite(state)).tolist()
        raise ValueError(f"'state' has non-finite entries at {bad}; expected finite numbers")
    instruction = obs["instruction"]
    if not isinstance(instruction, str):
        raise ValueError(f"'instruction' is a {type(instruction).__name__}; expected a string")
    if len(instruction) > MAX_INSTRUCTION_CHARS:
        raise ValueError(f"'instruction' has {len(instruction)} characters; at most {MAX_INSTRUCTION_CHARS}")
    return {"images": out_images, "state": state, "instruction": instruction}


# --- message builders (both ends use these) --------------------------------------------------------


def request(kind: str, request_id: int, obs: dict | None = None, options: dict | None = None) -> dict:
    msg: dict = {"v": PROTOCOL_VERSION, "type": kind, "id": request_id}
    if obs is not None:
        msg["obs"] = obs
    if options:
        msg["options"] = options
    return msg


def error_reply(code: str, message: str, request_id: int | None = None) -> dict:
    return {"v": PROTOCOL_VERSION, "type": "error", "id": request_id, "code": code, "message": message}


def result_reply(request_id: int, result: dict, version: int, timings: dict) -> dict:
    return {
        "v": PROTOCOL_VERSION,
        "type": "result",
        "id": request_id,
        "actions": np.asarray(result["actions"], dtype=np.float32),
        "tokens": None if result.get("tokens") is None else np.asarray(result["tokens"], dtype=np.int64),
        "logprobs": None if result.get("logprobs") is None else np.asarray(result["logprobs"], dtype=np.float32),
        "version": int(version),
        "timings": timings,
    }
