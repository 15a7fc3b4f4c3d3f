"""Robot-side client of the policy server. Imports only numpy, zmq, msgpack, the protocol module and
the policy interface (standard library only).

::

    client = PolicyClient("tcp://127.0.0.1:5555")
    meta = client.metadata()                      # cameras, chunk_size, action_dim, version, ...
    out = client.infer([{"images": {...}, "state": q, "instruction": "pick up the cube"}])[0]
    out["actions"]                                # float32 [chunk_size, action_dim], unnormalized

    rid = client.submit(obs)                      # never blocks: the control loop goes on
    ...
    out = client.poll(rid)                        # None until the reply is in; never blocks

``infer``/``submit``/``poll``/``cancel`` are the :class:`~vla_robot.policy.interface.AsyncPolicy`
interface, the same one the in-process runtime (``infer``) and the simulated server offer.

A client is not thread-safe: use one per thread. Errors from the server raise
:class:`PolicyServerError` (with the server's ``code`` and message); a reply that does not come in
time raises :class:`PolicyTimeout`.
"""
from __future__ import annotations

import itertools
import os
import time
from typing import Any, Sequence

import numpy as np
import zmq

from vla_robot.policy.interface import check_infer_args
from vla_robot.serving import protocol

__all__ = ["PolicyClient", "PolicyServerError", "PolicyTimeout", "load_curve_key"]


class PolicyServerError(RuntimeError):
    """The server answered with an error (``code`` is one of ``protocol.ERROR_CODES``)."""

    def __init__(self, code: str, message: str, request_id: int | None = None):
        super().__init__(f"policy server error [{code}]: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id


class PolicyTimeout(TimeoutError):
    """No reply within the timeout (server down, overloaded, or the request was lost)."""


def load_curve_key(key: str | bytes | os.PathLike, *, secret: bool = False) -> tuple[bytes, bytes | None]:
    """A CurveZMQ key as ``(public, secret)`` from a Z85 string (40 characters) or a key file.

    Key files are the ones ``vla-robot keygen`` (``zmq.auth.create_certificates``) writes:
    ``NAME.key`` (public only) and ``NAME.key_secret`` (both).
    """
    if isinstance(key, (str, bytes)) and len(key) == 40 and not os.path.exists(os.fsdecode(key)):
        k = key.encode() if isinstance(key, str) else key
        if secret:
            raise ValueError("a secret key must be given as a NAME.key_secret file (it holds both halves), not a Z85 string")
        return k, None
    path = os.fsdecode(key)
    if not os.path.isfile(path):
        raise ValueError(f"CurveZMQ key '{path}' is neither a 40-character Z85 key nor a key file")
    import zmq.auth

    public, sec = zmq.auth.load_certificate(path)
    if secret and sec is None:
        raise ValueError(f"'{path}' holds no secret key; pass the NAME.key_secret file")
    return public, sec


def curve_client_setup(sock: zmq.Socket, server_key, client_key=None) -> None:
    """Configure ``sock`` as a CurveZMQ client of the server whose public key is ``server_key``."""
    server_public, _ = load_curve_key(server_key)
    if client_key is not None:
        public, sec = load_curve_key(client_key, secret=True)
    else:
        public, sec = zmq.curve_keypair()  # an anonymous client (servers that allow any key)
    sock.curve_serverkey = server_public
    sock.curve_publickey = public
    sock.curve_secretkey = sec


class PolicyClient:
    """Client of :class:`vla_robot.serving.server.PolicyServer` over a ZMQ DEALER socket: an
    :class:`~vla_robot.policy.interface.AsyncPolicy`.

    ``curve_server_key``: the server's public key (Z85 or ``server.key`` file) for a Curve-encrypted
    server; ``curve_client_key``: this client's ``NAME.key_secret`` when the server only admits
    listed clients. ``max_message_bytes`` refuses (with ``ValueError``) requests the server would drop.
    """

    def __init__(
        self,
        address: str = f"tcp://127.0.0.1:{protocol.DEFAULT_PORT}",
        timeout_s: float = 5.0,
        curve_server_key: str | bytes | os.PathLike | None = None,
        curve_client_key: str | os.PathLike | None = None,
        max_message_bytes: int = protocol.DEFAULT_MAX_MESSAGE_BYTES,
        context: zmq.Context | None = None,
    ):
        if not isinstance(address, str) or not address.startswith(("tcp://", "ipc://", "inproc://")):
            raise ValueError(f"address must be a ZMQ endpoint like tcp://127.0.0.1:5555, got {address!r}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0 seconds, got {timeout_s}")
        self.address = address
        self.timeout_s = float(timeout_s)
        self.max_message_bytes = int(max_message_bytes)
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.linger = 0
        self._sock.sndhwm = 1000
        self._sock.rcvhwm = 1000
        if curve_server_key is not None:
            curve_client_setup(self._sock, curve_server_key, curve_client_key)
        self._sock.connect(address)
        self._poller = zmq.Poller()
        self._poller.register(self._sock, zmq.POLLIN)
        self._ids = itertools.count(1)
        self._sent: dict[int, float] = {}  # request id -> send time (monotonic)
        self._done: dict[int, dict] = {}  # replies received and not yet polled
        self._closed = False

    # --- non-blocking form ----------------------------------------------------------------------

    def submit(self, observation: dict, *, mode: str = "greedy", temperature: float | None = None,
               return_tokens: bool = False, seed: int | None = None) -> int:
        """Send an ``act`` request without waiting; returns its id for :meth:`poll`. Never blocks.

        ``seed``: with ``mode="sample"`` the server draws this chunk from its own generator, so the
        same seed, weights and observation give the same chunk."""
        options: dict[str, Any] = {"mode": mode, "return_tokens": return_tokens}
        if temperature is not None:
            options["temperature"] = float(temperature)
        if seed is not None:
            options["seed"] = int(seed)
        return self._send("act", obs=_as_wire_observation(observation), options=options)

    def poll(self, request_id: int) -> dict | None:
        """The reply to ``request_id`` if it has come in, else ``None``. Never blocks.

        Raises :class:`PolicyServerError` if the server answered with an error and
        :class:`PolicyTimeout` once the request is older than ``timeout_s`` (it is then forgotten).
        """
        self._drain(0)
        return self._take(request_id)

    def cancel(self, request_id: int) -> None:
        """Forget a request; its reply, if it still comes, is dropped."""
        self._sent.pop(request_id, None)
        self._done.pop(request_id, None)

    @property
    def pending(self) -> int:
        """Requests sent and not yet collected."""
        return len(self._sent)

    # --- blocking form --------------------------------------------------------------------------

    def infer(self, observations: Sequence[dict], *, mode: str = "greedy", temperature: float | None = None,
              return_tokens: bool = False, seeds: Sequence[int | None] | None = None,
              timeout_s: float | None = None) -> list[dict]:
        """The :class:`~vla_robot.policy.interface.Policy` form: one chunk per observation, in order.

        Every observation goes out at once (the server batches them) with its seed; then this waits
        until all replies are in, at most ``timeout_s`` (default the client's) after each was sent. On any
        error or timeout the remaining requests are cancelled and the error is raised. Each reply is
        ``{"actions": float32 [H, D], "tokens", "logprobs", "version", "timings"}``."""
        observations = check_infer_args(observations, seeds, mode)
        seeds = [None] * len(observations) if seeds is None else list(seeds)
        ids: list[int] = []
        try:
            for obs, seed in zip(observations, seeds):
                ids.append(self.submit(obs, mode=mode, temperature=temperature, return_tokens=return_tokens, seed=seed))
            return [self.wait(rid, timeout_s) for rid in ids]
        except BaseException:
            for rid in ids:
                self.cancel(rid)
            raise

    def wait(self, request_id: int, timeout_s: float | None = None) -> dict:
        """Block until the reply to a submitted request is in (at most ``timeout_s`` after it was sent)."""
        return self._wait(request_id, timeout_s)

    def metadata(self, timeout_s: float | None = None) -> dict:
        """The policy's metadata (cameras and their order, action_dim, chunk_size, ...) + protocol_version."""
        return self._wait(self._send("metadata"), timeout_s)["metadata"]

    def ping(self, timeout_s: float | None = None) -> dict:
        """Server stats: version, queue depth, batch sizes, latency percentiles, error counts."""
        return self._wait(self._send("ping"), timeout_s)["stats"]

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._sock.close(linger=0)

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    # --- internals ------------------------------------------------------------------------------

    def _send(self, kind: str, obs: dict | None = None, options: dict | None = None) -> int:
        if self._closed:
            raise RuntimeError("PolicyClient is closed")
        rid = next(self._ids)
        frames = protocol.pack(protocol.request(kind, rid, obs, options))
        size = sum(memoryview(f).nbytes for f in frames)
        if size > self.max_message_bytes:
            raise ValueError(
                f"request is {size} bytes, over the limit of {self.max_message_bytes}; send smaller images "
                "(the policy resizes to its own image_size anyway)"
            )
        try:
            self._sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            raise PolicyServerError("overloaded", f"{self.pending} requests already queued towards {self.address}") from None
        self._sent[rid] = time.monotonic()
        return rid

    def _drain(self, timeout_ms: int) -> None:
        """Read every reply that has arrived (waiting at most ``timeout_ms`` for the first)."""
        while self._poller.poll(timeout_ms):
            timeout_ms = 0
            frames = self._sock.recv_multipart(copy=False)
            try:
                reply = protocol.unpack(frames)
            except protocol.ProtocolError:
                continue  # not a reply of ours; nothing can be done with it
            rid = reply.get("id")
            if rid in self._sent:
                sent = self._sent.pop(rid)
                if isinstance(reply.get("timings"), dict):
                    reply["timings"]["round_trip_ms"] = (time.monotonic() - sent) * 1e3
                self._done[rid] = reply

    def _take(self, rid: int) -> dict | None:
        if rid in self._done:
            reply = self._done.pop(rid)
            if reply.get("type") == "error":
                raise PolicyServerError(str(reply.get("code")), str(reply.get("message")), rid)
            return reply
        if rid not in self._sent:
            raise KeyError(f"request {rid} is unknown to this client (never sent, already collected, or cancelled)")
        if time.monotonic() - self._sent[rid] > self.timeout_s:
            self._sent.pop(rid)
            raise PolicyTimeout(f"no reply from {self.address} to request {rid} within {self.timeout_s:.3g} s")
        return None

    def _wait(self, rid: int, timeout_s: float | None) -> dict:
        if rid in self._done:
            return self._take(rid)
        if rid not in self._sent:
            raise KeyError(f"request {rid} is unknown to this client (never sent, already collected, or cancelled)")
        deadline = self._sent[rid] + (self.timeout_s if timeout_s is None else float(timeout_s))
        while True:
            remaining = deadline - time.monotonic()
            self._drain(max(0, int(remaining * 1000) + 1) if remaining > 0 else 0)
            if rid in self._done:
                return self._take(rid)
            if time.monotonic() >= deadline:
                self._sent.pop(rid, None)
                waited = time.monotonic() - (deadline - (self.timeout_s if timeout_s is None else float(timeout_s)))
                raise PolicyTimeout(f"no reply from {self.address} to request {rid} within {waited:.3g} s")


def _as_wire_observation(observation: dict) -> dict:
    """The observation as the protocol sends it; lists become arrays, nothing is resized or cast."""
    if not isinstance(observation, dict):
        raise ValueError(f"observation must be a dict with images, state, instruction; got {type(observation).__name__}")
    out = dict(observation)
    if "state" in out and not isinstance(out["state"], np.ndarray):
        out["state"] = np.asarray(out["state"], dtype=np.float32)
    if isinstance(out.get("images"), dict):
        out["images"] = {k: (v if isinstance(v, np.ndarray) else np.asarray(v)) for k, v in out["images"].items()}
    return out
