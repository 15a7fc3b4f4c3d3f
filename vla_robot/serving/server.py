"""The policy server: ZMQ ROUTER front end, dynamic batching, weight hot-swap, optional OFT HTTP.

::

    runtime = load_policy(preset="tiny")
    server = PolicyServer(runtime, bind="tcp://127.0.0.1:5555", weights_bind="tcp://127.0.0.1:5556")
    server.start()            # background threads; server.serve_forever() blocks instead
    ...
    server.stop()

Threads: the I/O thread owns the ROUTER socket (decodes, validates, answers metadata/ping/errors
at once, queues ``act`` requests); the batcher thread owns the runtime; the weights thread owns the
weights socket. Every malformed message gets an error reply and the server keeps serving.

Binding anything but loopback needs CurveZMQ keys (``curve_secret_key``) or an explicit
``allow_insecure_remote=True``.
"""
from __future__ import annotations

import collections
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import zmq

from vla_robot.policy.lora import LoraBaseUnknown
from vla_robot.serving import protocol
from vla_robot.serving.batching import Batcher, Job, ServerStats
from vla_robot.serving.client import load_curve_key
from vla_robot.serving.weights import MAX_PART_BYTES, WeightReceiver

__all__ = ["PolicyServer", "is_loopback"]

log = logging.getLogger(__name__)

_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


def is_loopback(endpoint: str) -> bool:
    """Whether a ZMQ endpoint stays on this machine (``ipc://``, ``inproc://`` or a loopback tcp host)."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    if not endpoint.startswith("tcp://"):
        raise ValueError(f"endpoint must look like tcp://127.0.0.1:5555, got {endpoint!r}")
    host = endpoint[len("tcp://"):].rsplit(":", 1)[0]
    return host in _LOOPBACK_HOSTS or host.startswith("127.")


class PolicyServer:
    """Serves ``runtime`` (a :class:`~vla_robot.policy.interface.Policy` with ``metadata``, ``version`` and ``load_weights``).

    ``bind``/``weights_bind`` may use port ``*`` (``tcp://127.0.0.1:*``) to pick a free port; the
    bound endpoints are :attr:`address` and :attr:`weights_address`. ``weights_bind=None`` turns
    hot-swap off. ``http_port`` (0 picks one) adds the OFT-compatible ``POST /act`` endpoint.
    """

    def __init__(
        self,
        runtime: Any,
        bind: str = f"tcp://127.0.0.1:{protocol.DEFAULT_PORT}",
        weights_bind: str | None = f"tcp://127.0.0.1:{protocol.DEFAULT_WEIGHTS_PORT}",
        max_batch: int = 8,
        max_wait_ms: float = 2.0,
        max_queue: int = 256,
        max_message_bytes: int = protocol.DEFAULT_MAX_MESSAGE_BYTES,
        http_port: int | None = None,
        http_host: str = "127.0.0.1",
        curve_secret_key: str | os.PathLike | None = None,
        curve_authorized_keys: str | os.PathLike | None = None,
        allow_insecure_remote: bool = False,
    ):
        for name in ("metadata", "infer", "load_weights"):
            if not hasattr(runtime, name):
                raise TypeError(f"runtime lacks '{name}'; expected a vla_robot.policy runtime (load_policy(...))")
        meta = runtime.metadata
        for key in ("cameras", "proprio_dim", "action_dim", "chunk_size"):
            if key not in meta:
                raise ValueError(f"runtime.metadata lacks '{key}'; it has {sorted(meta)}")
        endpoints = [bind] + ([weights_bind] if weights_bind else [])
        remote = [e for e in endpoints if not is_loopback(e)]
        if http_port is not None and http_host not in _LOOPBACK_HOSTS:
            if not allow_insecure_remote:
                raise ValueError(f"the HTTP endpoint would listen on {http_host}, beyond this machine, unencrypted and "
                                 "unauthenticated; pass allow_insecure_remote=True (--insecure) to do so anyway")
        if remote and curve_secret_key is None and not allow_insecure_remote:
            raise ValueError(
                f"{remote[0]} is reachable from other machines; give curve_secret_key (make one with "
                "`vla-robot keygen`) or allow_insecure_remote=True to serve unencrypted"
            )
        if curve_authorized_keys is not None and curve_secret_key is None:
            raise ValueError("curve_authorized_keys needs curve_secret_key: client keys are checked by CurveZMQ")
        self.runtime = runtime
        self.max_message_bytes = int(max_message_bytes)
        self._bind, self._weights_bind = bind, weights_bind
        self._curve = load_curve_key(curve_secret_key, secret=True) if curve_secret_key is not None else None
        self._authorized = Path(curve_authorized_keys) if curve_authorized_keys is not None else None
        if self._authorized is not None and not self._authorized.is_dir():
            raise ValueError(f"curve_authorized_keys '{self._authorized}' must be a folder of client NAME.key files")
        self._http_port, self._http_host = http_port, http_host
        self.stats = ServerStats()
        self.batcher = Batcher(runtime, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue,
                               stats=self.stats)
        self._ctx: zmq.Context | None = None
        self._auth = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._outbox: collections.deque = collections.deque()
        self._wake_r, self._wake_w = -1, -1
        self._http = None
        self.address: str | None = None
        self.weights_address: str | None = None
        self.http_url: str | None = None

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> PolicyServer:
        """Bind the sockets (errors raise here) and start serving in background threads."""
        if self._ctx is not None:
            raise RuntimeError("server already started")
        if self._stop.is_set():
            raise RuntimeError("a stopped PolicyServer cannot start again; make a new one")
        self._ctx = zmq.Context()
        try:
            if self._curve is not None:
                self._start_auth()
            self._sock = self._socket(self.max_message_bytes)
            self._sock.bind(self._bind)
            self.address = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
            if self._weights_bind:
                self._wsock = self._socket(MAX_PART_BYTES + 1024 * 1024)
                self._wsock.bind(self._weights_bind)
                self.weights_address = self._wsock.getsockopt_string(zmq.LAST_ENDPOINT)
        except zmq.ZMQError as e:
            self._close_ctx()
            raise OSError(f"cannot bind the policy server ({self._bind} / {self._weights_bind}): {e}") from None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)  # a full pipe already means "wake up"; never block the batcher
        self.batcher.start()
        self._spawn(self._io_loop, "policy-server-io")
        if self._weights_bind:
            self._spawn(self._weights_loop, "policy-server-weights")
        if self._http_port is not None:
            from vla_robot.serving.http import HttpEndpoint

            self._http = HttpEndpoint(self, host=self._http_host, port=self._http_port)
            self._http.start()
            self.http_url = self._http.url
        log.info("policy server on %s (weights %s, http %s), version %s", self.address, self.weights_address,
                 self.http_url, self.version)
        return self

    def serve_forever(self) -> None:
        """Start (if needed) and block until :meth:`stop` or Ctrl-C."""
        if self._ctx is None:
            self.start()
        try:
            while not self._stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop serving; queued requests get an ``unavailable`` error. Safe to call twice."""
        if self._stop.is_set() and self._ctx is None:
            return
        self._stop.set()
        if self._http is not None:
            self._http.stop()
        self.batcher.stop()
        self._wake()
        for t in self._threads:
            t.join(5.0)
        self._threads.clear()
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1
        self._close_ctx()

    def __enter__(self) -> PolicyServer:
        return self.start() if self._ctx is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- what the server says about itself -----------------------------------------------------------

    @property
    def version(self) -> int:
        return int(getattr(self.runtime, "version", 0))

    def metadata(self) -> dict:
        meta = dict(self.runtime.metadata)
        meta.update(version=self.version, protocol_version=protocol.PROTOCOL_VERSION,
                    max_message_bytes=self.max_message_bytes, max_batch=self.batcher.max_batch)
        return meta

    def stats_snapshot(self) -> dict:
        s = self.stats.snapshot()
        s.update(version=self.version, queue_depth=self.batcher.depth, protocol_version=protocol.PROTOCOL_VERSION)
        return s

    def submit_job(self, obs: dict, options: protocol.ActOptions, done, client: Any = None) -> bool:
        """Queue a checked observation (used by the HTTP endpoint); ``done(result_or_error)`` is called once."""
        self.stats.count("act")
        return self.batcher.submit(Job(obs=obs, options=options, done=done, client=client))

    # --- internals -----------------------------------------------------------------------------------

    def _spawn(self, target, name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _socket(self, max_bytes: int) -> zmq.Socket:
        sock = self._ctx.socket(zmq.ROUTER)
        sock.linger = 0
        sock.maxmsgsize = max_bytes
        sock.router_mandatory = False  # a reply to a client that left is dropped, not an error
        sock.sndhwm = sock.rcvhwm = 10000
        if self._curve is not None:
            public, secret = self._curve
            sock.curve_server = True
            sock.curve_publickey = public
            sock.curve_secretkey = secret
        return sock

    def _start_auth(self) -> None:
        from zmq.auth.thread import ThreadAuthenticator

        self._auth = ThreadAuthenticator(self._ctx, log=logging.getLogger(__name__ + ".auth"))
        self._auth.start()
        if self._authorized is not None:
            self._auth.configure_curve(domain="*", location=str(self._authorized))
        else:
            import zmq.auth

            self._auth.configure_curve(domain="*", location=zmq.auth.CURVE_ALLOW_ANY)

    def _close_ctx(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._ctx is not None:
            self._ctx.destroy(linger=0)
            self._ctx = None

    def _wake(self) -> None:
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"x")
            except (BlockingIOError, OSError):
                pass

    def _io_loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        while not self._stop.is_set():
            events = dict(poller.poll(200))
            if self._wake_r in events:
                try:
                    os.read(self._wake_r, 65536)
                except BlockingIOError:
                    pass
            while self._outbox:
                identity, frames = self._outbox.popleft()
                self._send(identity, frames)
            if self._sock in events:
                jobs: list[tuple] = []
                for _ in range(64):  # fairness: answer queued replies between bursts
                    try:
                        frames = self._sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    try:
                        job = self._handle(frames)
                    except Exception:  # noqa: BLE001 - the server must keep serving
                        log.exception("unexpected error handling a request")
                        self.stats.error("internal")
                        continue
                    if job is not None:
                        jobs.append(job)
                # a burst (e.g. one client submitting a whole group) is queued at once, so it can be one batch
                for identity, job in jobs:
                    if not self.batcher.submit(job):
                        self._reply_error(identity, "overloaded" if not self._stop.is_set() else "unavailable",
                                          f"{self.batcher.depth} requests are queued (max_queue="
                                          f"{self.batcher.max_queue}); try again shortly", job.request_id)
        self._sock.close(linger=0)

    def _send(self, identity, frames: list) -> None:
        try:
            self._sock.send_multipart([identity, *frames], flags=zmq.NOBLOCK, copy=False)
        except zmq.ZMQError:
            self.stats.error("send_failed")

    def _reply_error(self, identity, code: str, message: str, rid: int | None) -> None:
        self.stats.error(code)
        self._send(identity, protocol.pack(protocol.error_reply(code, message, rid)))

    def _handle(self, frames: list) -> tuple | None:
        """Answer what can be answered at once; return ``(identity, Job)`` for an ``act`` request."""
        t_recv = time.monotonic()
        identity, body = frames[0], frames[1:]
        try:
            header = protocol.unpack(body, max_bytes=self.max_message_bytes)
        except protocol.ProtocolError as e:
            self.stats.count("invalid")
            return self._reply_error(identity, e.code, e.message, None)
        try:
            req = protocol.parse_request(header, self.runtime.metadata)
        except protocol.ProtocolError as e:
            self.stats.count("invalid")
            return self._reply_error(identity, e.code, e.message, e.request_id)
        self.stats.count(req.type)
        if req.type == "metadata":
            reply = {"v": protocol.PROTOCOL_VERSION, "type": "metadata", "id": req.id, "metadata": self.metadata()}
            return self._send(identity, protocol.pack(reply))
        if req.type == "ping":
            reply = {"v": protocol.PROTOCOL_VERSION, "type": "stats", "id": req.id, "stats": self.stats_snapshot()}
            return self._send(identity, protocol.pack(reply))
        t_checked = time.monotonic()
        rid = req.id
        key = identity.bytes if hasattr(identity, "bytes") else bytes(identity)

        def done(res: dict) -> None:  # runs in the batcher thread
            if "code" in res:
                self.stats.error(res["code"])
                frames_out = protocol.pack(protocol.error_reply(res["code"], res["message"], rid))
            else:
                timings = dict(res["timings"])
                timings["decode_ms"] = (t_checked - t_recv) * 1e3
                timings["server_ms"] = (time.monotonic() - t_recv) * 1e3
                self.stats.latency(timings["server_ms"])
                frames_out = protocol.pack(protocol.result_reply(rid, res, res["version"], timings), copy_threshold=4096)
            self._outbox.append((identity, frames_out))
            self._wake()

        return identity, Job(obs=req.obs, options=req.options, done=done, client=key, t_received=t_recv, request_id=rid)

    def _weights_loop(self) -> None:
        receiver = WeightReceiver()
        sock = self._wsock
        while not self._stop.is_set():
            if not sock.poll(200):
                continue
            frames = sock.recv_multipart(copy=False)
            identity, body = frames[0], frames[1:]
            try:
                msg = protocol.unpack(body)
            except protocol.ProtocolError as e:
                self.stats.swapped(False)
                sock.send_multipart([identity, *protocol.pack(protocol.error_reply(e.code, e.message, None))])
                continue
            reply, update = receiver.handle(msg)
            if update is not None:
                state, version, delta, lora_base = update
                try:
                    self.batcher.swap(state, version, delta=delta, timeout_s=600.0, lora_base=lora_base)
                    log.info("now serving weights version %d", version)
                except LoraBaseUnknown as e:  # the publisher sends the base with the adapter again
                    reply = protocol.error_reply("lora_base_unknown", str(e), msg.get("id"))
                except Exception as e:  # noqa: BLE001 - refused; the old version keeps serving
                    reply = protocol.error_reply("bad_request", f"weights version {version} refused, version "
                                                 f"{self.version} keeps serving: {type(e).__name__}: {e}", msg.get("id"))
            elif reply.get("type") == "error":
                self.stats.swapped(False)
            sock.send_multipart([identity, *protocol.pack(reply)])
        sock.close(linger=0)
