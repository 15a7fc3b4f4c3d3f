"""Weight hot-swap: the learner pushes a new policy version to the server over its weights socket.

::

    pub = WeightPublisher("tcp://127.0.0.1:5556")
    pub.push(runtime.state_dict(), version=7)          # all weights, or a subset of them
    pub.push(update, version=8, delta=True)            # tensors added to the serving ones
    pub.push(adapter, version=9, lora_base=base_id, base=base_tensors)  # a LoRA adapter (policy/lora.py)

A server bound beyond loopback encrypts its weights socket with CurveZMQ, as its policy socket:
``WeightPublisher(address, curve_server_key="keys/server.key", curve_client_key="keys/learner.key_secret")``
(``vla-robot keygen`` makes both; ``vla-robot learn --curve-server-key/--curve-client-key``). A
handshake CurveZMQ refuses is silent on the wire, so a timeout then says which keys to check.

A push is one transfer: ``begin`` (version, tensor count, total bytes), ``part`` messages of at most
``part_bytes`` each, then ``commit``. A part carries pieces of tensors (name, dtype, shape, byte
offset, raw bytes) and a SHA-256 of its bytes, so a tensor larger than a part (a 7B model's
embedding) is split over several parts and memory holds one part at a time on each side. The
server assembles the tensors, checks order, counts, sizes, digests and that float tensors are
finite, and only then hands the whole update to the batcher, which calls
``runtime.load_weights(state, version, delta=...)`` between two batches. A transfer that stops
half-way, a wrong digest, a stale version or weights the runtime refuses all leave the serving
version as it was; the publisher gets an error that says why.

A LoRA push (``lora_base``) carries the adapter's factors, not merged weights: for OFT's rank-32
adapter on the 7B some 110 M values instead of 7.5 G. The server merges them from the base of that
name (``runtime.load_weights(..., lora_base=...)``); a server that does not hold it (it restarted)
refuses with the code ``lora_base_unknown`` and the publisher sends the push again with ``base()``'s
tensors (``W:lora_base``) in it, once.

Tensors travel as numpy buffers; ``bfloat16`` (which numpy lacks) travels as its 16-bit pattern with
a tag, and comes back as a ``torch.bfloat16`` tensor. The server hands torch tensors to the runtime.
"""
from __future__ import annotations

import hashlib
import itertools
import time
import uuid
from typing import Any, Callable, Mapping

import numpy as np
import zmq

from vla_robot.serving import protocol
from vla_robot.serving.client import PolicyServerError, PolicyTimeout, curve_client_setup

__all__ = ["WeightPublisher", "WeightReceiver", "DEFAULT_PART_BYTES"]

DEFAULT_PART_BYTES = 32 * 1024 * 1024
MAX_PART_BYTES = 256 * 1024 * 1024


def _to_numpy(name: str, t: Any) -> tuple[np.ndarray, str | None]:
    """A tensor or array as a C-contiguous numpy array, plus a dtype tag for bfloat16."""
    if hasattr(t, "detach"):  # a torch tensor; torch itself is not imported here
        t = t.detach().cpu().contiguous()
        if str(t.dtype) == "torch.bfloat16":
            import torch

            return t.view(torch.int16).numpy(), "bfloat16"
        return t.numpy(), None
    if isinstance(t, np.ndarray):
        return (t if t.flags.c_contiguous else t.copy(order="C")), None
    raise ValueError(f"weight '{name}' is a {type(t).__name__}; expected a torch tensor or numpy array")


def _nbytes(name: str, t: Any) -> int:
    if hasattr(t, "detach"):
        return int(t.numel()) * int(t.element_size())
    if isinstance(t, np.ndarray):
        return int(t.nbytes)
    raise ValueError(f"weight '{name}' is a {type(t).__name__}; expected a torch tensor or numpy array")


def _digest(arrays: list[np.ndarray]) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(a.reshape(-1).view(np.uint8))
    return h.hexdigest()


class WeightPublisher:
    """Pushes weights to a :class:`~vla_robot.serving.server.PolicyServer`'s weights socket."""

    def __init__(
        self,
        address: str = f"tcp://127.0.0.1:{protocol.DEFAULT_WEIGHTS_PORT}",
        timeout_s: float = 120.0,
        curve_server_key=None,
        curve_client_key=None,
        part_bytes: int = DEFAULT_PART_BYTES,
        context: zmq.Context | None = None,
    ):
        if not isinstance(address, str) or not address.startswith(("tcp://", "ipc://", "inproc://")):
            raise ValueError(f"address must be a ZMQ endpoint like tcp://127.0.0.1:5556, got {address!r}")
        if not 1 <= part_bytes <= MAX_PART_BYTES:
            raise ValueError(f"part_bytes must be in [1, {MAX_PART_BYTES}], got {part_bytes}")
        self.address = address
        self.timeout_s = float(timeout_s)
        self.part_bytes = int(part_bytes)
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.linger = 0
        self._curve = curve_server_key is not None
        if self._curve:
            curve_client_setup(self._sock, curve_server_key, curve_client_key)
        self._sock.connect(address)
        self._ids = itertools.count(1)

    def push(self, state_dict_or_delta: Mapping[str, Any], version: int, delta: bool = False,
             lora_base: str | None = None, base: Callable[[], Mapping[str, Any]] | None = None) -> dict:
        """Send ``state_dict_or_delta`` as policy ``version``; return once it serves.

        A state dict may hold all tensors or a subset; with ``delta=True`` the tensors are added to
        the serving ones (``runtime.load_weights(..., delta=True)``). ``version`` must be newer than
        the serving one. With ``lora_base`` it is a LoRA adapter push (module docstring); ``base()``
        gives the base's ``W:lora_base`` tensors, sent only when the server does not hold that base.

        Returns ``{"version", "bytes", "tensors", "seconds"}``. Raises :class:`PolicyServerError`
        when the server refuses the update (the old version keeps serving) and
        :class:`PolicyTimeout` when it does not answer within ``timeout_s``.
        """
        if not isinstance(state_dict_or_delta, Mapping) or not state_dict_or_delta:
            raise ValueError("push needs a non-empty mapping of parameter name -> tensor")
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise ValueError(f"version must be a non-negative integer, got {version!r}")
        if lora_base is not None and (delta or not isinstance(lora_base, str) or not lora_base):
            raise ValueError(f"lora_base must be a non-empty string and excludes delta, got {lora_base!r}, delta={delta}")
        t0 = time.monotonic()
        try:
            reply = self._transfer(state_dict_or_delta, version, delta, lora_base)
        except PolicyServerError as e:
            if e.code != "lora_base_unknown" or base is None:
                raise
            reply = self._transfer({**base(), **state_dict_or_delta}, version, delta, lora_base)
        return {**reply, "seconds": time.monotonic() - t0}

    def _transfer(self, state_dict_or_delta: Mapping[str, Any], version: int, delta: bool,
                  lora_base: str | None) -> dict:
        """One begin/part.../commit transfer; ``{"version", "bytes", "tensors"}`` once it serves."""
        sizes = []
        for name, t in state_dict_or_delta.items():
            if not isinstance(name, str):
                raise ValueError(f"parameter names must be strings, got {name!r}")
            sizes.append((name, _nbytes(name, t)))
        total = sum(n for _, n in sizes)
        n_parts = max(1, -(-total // self.part_bytes))  # pieces fill each part up to part_bytes
        transfer = uuid.uuid4().hex
        self._call({"type": "begin", "transfer": transfer, "version": version, "delta": bool(delta),
                    "lora_base": lora_base, "n_tensors": len(sizes), "n_parts": n_parts, "total_bytes": total})
        seq, pieces, room = 0, [], self.part_bytes

        def send_part() -> None:
            nonlocal seq, pieces, room
            self._call({"type": "part", "transfer": transfer, "seq": seq, "pieces": pieces,
                        "sha256": _digest([p["data"] for p in pieces])})
            seq, pieces, room = seq + 1, [], self.part_bytes

        for name, _ in sizes:
            arr, tag = _to_numpy(name, state_dict_or_delta[name])  # one tensor on the host at a time
            flat = arr.reshape(-1).view(np.uint8)
            offset = 0
            while True:
                if room == 0 and offset < flat.size:
                    send_part()
                take = min(room, flat.size - offset)
                pieces.append({"name": name, "dtype": arr.dtype.str, "shape": list(arr.shape), "tag": tag,
                               "offset": offset, "data": flat[offset:offset + take]})
                offset += take
                room -= take
                if offset >= flat.size:
                    break
        if pieces:
            send_part()
        if seq != n_parts:  # only if the mapping changed under us
            raise RuntimeError(f"sent {seq} parts, announced {n_parts}; was the state dict modified during push?")
        reply = self._call({"type": "commit", "transfer": transfer})
        return {"version": int(reply["version"]), "bytes": total, "tensors": len(sizes)}

    def _call(self, msg: dict) -> dict:
        rid = next(self._ids)
        msg = {"v": protocol.PROTOCOL_VERSION, "id": rid, **msg}
        self._sock.send_multipart(protocol.pack(msg, copy_threshold=64 * 1024), copy=False)
        deadline = time.monotonic() + self.timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._sock.poll(int(remaining * 1000) + 1):
                hint = (" (CurveZMQ: is curve_server_key the server's public key, and is this client's key among "
                        "the server's authorized keys?)" if self._curve else "")
                raise PolicyTimeout(f"weights server {self.address} did not answer '{msg['type']}' within "
                                    f"{self.timeout_s:.3g} s{hint}")
            reply = protocol.unpack(self._sock.recv_multipart(copy=False))
            if reply.get("id") != rid:
                continue  # a late answer to an earlier, timed-out call
            if reply.get("type") == "error":
                raise PolicyServerError(str(reply.get("code")), str(reply.get("message")), rid)
            return reply

    def close(self) -> None:
        self._sock.close(linger=0)

    def __enter__(self) -> WeightPublisher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class WeightReceiver:
    """Server side: stages one transfer at a time and returns the finished update on ``commit``.

    ``handle(header)`` returns ``(reply, update)``; ``update`` is ``None`` or ``(state, version, delta,
    lora_base)`` with torch tensors, ready for ``runtime.load_weights``.
    """

    def __init__(self, max_total_bytes: int = 64 * 1024**3, stale_after_s: float = 300.0):
        self.max_total_bytes = int(max_total_bytes)
        self.stale_after_s = float(stale_after_s)
        self._t: dict | None = None

    def handle(self, msg: dict) -> tuple[dict, tuple[dict, int] | None]:
        rid = msg.get("id") if isinstance(msg.get("id"), int) else None
        try:
            return self._handle(msg, rid)
        except protocol.ProtocolError as e:
            return protocol.error_reply(e.code, e.message, rid), None
        except ValueError as e:
            self._t = None
            return protocol.error_reply("bad_request", f"weights update refused: {e}", rid), None

    def _handle(self, msg: dict, rid: int | None):
        def fail(text: str):
            raise ValueError(text)

        if msg.get("v") != protocol.PROTOCOL_VERSION:
            raise protocol.ProtocolError("unsupported_version", f"weights message speaks protocol {msg.get('v')!r}; "
                                         f"this server speaks {protocol.PROTOCOL_VERSION}", rid)
        kind = msg.get("type")
        if self._t is not None and time.monotonic() - self._t["touched"] > self.stale_after_s:
            self._t = None  # the publisher vanished half-way; drop what it sent
        if kind == "begin":
            for key in ("transfer", "version", "n_tensors", "n_parts", "total_bytes"):
                if key not in msg:
                    fail(f"'begin' lacks '{key}'")
            ints = ("version", "n_tensors", "n_parts", "total_bytes")
            if any(isinstance(msg[k], bool) or not isinstance(msg[k], int) or msg[k] < 0 for k in ints):
                fail(f"'begin' fields {ints} must be non-negative integers")
            if not isinstance(msg.get("delta", False), bool):
                fail(f"'begin' field 'delta' must be true or false, got {msg.get('delta')!r}")
            if msg.get("lora_base") is not None and not (isinstance(msg["lora_base"], str) and msg["lora_base"]):
                fail(f"'begin' field 'lora_base' must be a base name (a non-empty string) or null, got {msg['lora_base']!r}")
            if msg["total_bytes"] > self.max_total_bytes:
                fail(f"update of {msg['total_bytes']} bytes is over this server's limit of {self.max_total_bytes}")
            if msg["n_parts"] < 1 or msg["n_tensors"] < 1:
                fail("an update needs at least one part and one tensor")
            self._t = {"id": msg["transfer"], "version": msg["version"], "delta": msg.get("delta", False),
                       "lora_base": msg.get("lora_base"),
                       "n_tensors": msg["n_tensors"],
                       "n_parts": msg["n_parts"], "total_bytes": msg["total_bytes"], "next": 0,
                       "tensors": {}, "bytes": 0, "bytes_announced": 0, "touched": time.monotonic()}
            return {"v": protocol.PROTOCOL_VERSION, "type": "ack", "id": rid}, None
        t = self._t
        if kind not in ("part", "commit"):
            fail(f"'type' is {kind!r}; expected begin, part or commit")
        if t is None or msg.get("transfer") != t["id"]:
            raise protocol.ProtocolError("bad_request", f"'{kind}' for transfer {msg.get('transfer')!r}, which is not the "
                                         "open transfer (never begun, superseded, or dropped after an error)", rid)
        t["touched"] = time.monotonic()
        if kind == "part":
            if msg.get("seq") != t["next"]:
                fail(f"part {msg.get('seq')!r} arrived; expected part {t['next']} (parts go in order, none missing)")
            pieces = msg.get("pieces")
            if not isinstance(pieces, list) or not pieces:
                fail("a part needs a non-empty list 'pieces'")
            if not all(isinstance(p, dict) and isinstance(p.get("data"), np.ndarray) for p in pieces):
                fail("each piece is a map with 'data' (a uint8 array), name, dtype, shape, tag, offset")
            if _digest([p["data"] for p in pieces]) != msg.get("sha256"):
                fail(f"part {t['next']} is corrupt: its SHA-256 does not match the bytes received")
            for p in pieces:
                self._add_piece(t, p)
            t["next"] += 1
            return {"v": protocol.PROTOCOL_VERSION, "type": "ack", "id": rid}, None
        # commit
        self._t = None
        if t["next"] != t["n_parts"] or len(t["tensors"]) != t["n_tensors"] or t["bytes"] != t["total_bytes"]:
            fail(f"incomplete update: {t['next']}/{t['n_parts']} parts, {len(t['tensors'])}/{t['n_tensors']} tensors, "
                 f"{t['bytes']}/{t['total_bytes']} bytes")
        state = {}
        for name, e in t["tensors"].items():
            if e["filled"] != e["buf"].size:
                fail(f"incomplete update: parameter '{name}' has {e['filled']} of {e['buf'].size} bytes")
            a = e["buf"].view(e["dtype"]).reshape(e["shape"])
            if e["tag"] is None and a.dtype.kind == "f" and not np.all(np.isfinite(a)):
                fail(f"parameter '{name}' has non-finite values; refusing to serve it")
            state[name] = _to_torch(a, e["tag"])
        return {"v": protocol.PROTOCOL_VERSION, "type": "swapped", "id": rid, "version": t["version"]}, (state, t["version"], t["delta"], t["lora_base"])


    def _add_piece(self, t: dict, p: dict) -> None:
        name, data = p.get("name"), p["data"]
        dtype, shape, tag, offset = p.get("dtype"), p.get("shape"), p.get("tag"), p.get("offset")
        if not isinstance(name, str) or dtype not in protocol.ALLOWED_DTYPES or data.dtype != np.uint8 or data.ndim != 1:
            raise ValueError(f"piece of {name!r}: needs a name, an allowed dtype (got {dtype!r}) and 1-D uint8 data")
        if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise ValueError(f"piece of '{name}': shape {shape!r} must be a list of non-negative integers")
        if tag not in (None, "bfloat16") or (tag == "bfloat16" and dtype != "<i2"):
            raise ValueError(f"parameter '{name}' has dtype tag {tag!r}; expected none or 'bfloat16' on int16 bits")
        e = t["tensors"].get(name)
        if e is None:
            if len(t["tensors"]) >= t["n_tensors"]:
                raise ValueError(f"more tensors than the {t['n_tensors']} announced ('{name}')")
            nbytes = np.dtype(dtype).itemsize * int(np.prod(shape, dtype=np.int64))
            if t["bytes_announced"] + nbytes > t["total_bytes"]:
                raise ValueError(f"'{name}' ({nbytes} bytes) is over the {t['total_bytes']} bytes announced")
            t["bytes_announced"] += nbytes
            e = t["tensors"][name] = {"buf": np.empty(nbytes, np.uint8), "dtype": dtype, "shape": shape, "tag": tag,
                                      "filled": 0}
        elif (dtype, shape, tag) != (e["dtype"], e["shape"], e["tag"]):
            raise ValueError(f"pieces of '{name}' disagree on dtype/shape/tag (or it was sent twice)")
        if offset != e["filled"] or offset + data.size > e["buf"].size:
            raise ValueError(f"piece of '{name}' at byte {offset!r} (+{data.size}); expected byte {e['filled']} "
                             f"of {e['buf'].size} (pieces go in order, none missing or overlapping)")
        e["buf"][offset:offset + data.size] = data
        e["filled"] += data.size
        t["bytes"] += data.size

def _to_torch(a: np.ndarray, tag: str | None):
    import torch

    tensor = torch.from_numpy(a)  # a view of the staging buffer, which the receiver no longer holds
    return tensor.view(torch.bfloat16) if tag == "bfloat16" else tensor
