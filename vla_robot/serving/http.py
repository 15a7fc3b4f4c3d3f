"""OpenVLA-OFT-compatible HTTP endpoint: ``POST /act`` as ``vla-scripts/deploy.py`` serves it.

Existing OFT robot clients work unchanged: the body is JSON with ``json_numpy`` arrays
(``full_image``, then any ``*wrist*`` images in the policy's camera order, ``state``,
``instruction``), or ``{"encoded": "<json_numpy string>"}``; the reply is the list of the chunk's
actions (one float32 array of ``action_dim`` per step, unnormalized), double-encoded when the
request was. Unlike deploy.py, a bad request gets a real status code (400 malformed body, 422 wrong
fields, 503 overloaded, 500 model failure) and ``{"error": message}``; the reply carries the policy
version in the ``X-Policy-Version`` header. Requests go through the same batcher as ZMQ requests.

Also ``GET /metadata`` and ``GET /health`` (the stats of ``ping``).
"""
from __future__ import annotations

import asyncio
import json
import socket
import threading
from typing import Any

import json_numpy
import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from vla_robot.serving import protocol

__all__ = ["make_app", "oft_to_observation", "HttpEndpoint"]

_STATUS = {"bad_request": 422, "bad_message": 400, "overloaded": 503, "unavailable": 503, "internal": 500,
           "too_large": 413}


def _object_hook(dct: dict) -> Any:
    if "__numpy__" in dct:
        descr = dct.get("dtype")
        if not isinstance(descr, str) or descr not in protocol.ALLOWED_DTYPES:
            raise ValueError(f"json_numpy array of dtype {descr!r} is not accepted; allowed: {sorted(protocol.ALLOWED_DTYPES)}")
        shape = dct.get("shape")
        if not isinstance(shape, list) or len(shape) > protocol.MAX_NDIM:
            raise ValueError(f"json_numpy array shape {shape!r} must be a list of at most {protocol.MAX_NDIM} sizes")
        return json_numpy.object_hook(dct)
    return dct


def _loads(text: str | bytes) -> Any:
    # an explicit decoder: correct even where json_numpy.patch() has replaced json.loads
    if isinstance(text, (bytes, bytearray)):
        text = text.decode("utf-8")
    return json.JSONDecoder(object_hook=_object_hook).decode(text)


def oft_to_observation(payload: dict, metadata: dict) -> dict:
    """An OFT deploy.py payload as this server's observation; ``ValueError`` names what is wrong."""
    if not isinstance(payload, dict):
        raise ValueError(f"the body must be a JSON object, got {type(payload).__name__}")
    cams = list(metadata["cameras"])
    wrist_keys = [k for k in payload if "wrist" in k]
    unknown = [k for k in payload if k not in ("full_image", "state", "instruction") and "wrist" not in k]
    if unknown:
        raise ValueError(f"unknown field(s) {unknown}; OFT's /act takes full_image, *wrist* images, state, instruction")
    for key in ("full_image", "state", "instruction"):
        if key not in payload:
            raise ValueError(f"missing '{key}'; OFT's /act takes full_image, *wrist* images, state, instruction")
    if 1 + len(wrist_keys) != len(cams):
        raise ValueError(
            f"got full_image + {len(wrist_keys)} wrist image(s) {wrist_keys}; this policy takes {len(cams)} cameras "
            f"{cams}: full_image, then {len(cams) - 1} '*wrist*' key(s) in that order"
        )
    images = {}
    for cam, key in zip(cams, ["full_image", *wrist_keys]):
        img = payload[key]
        if not isinstance(img, np.ndarray):
            raise ValueError(f"'{key}' is a {type(img).__name__}; send it as a json_numpy array (uint8 HxWx3)")
        images[cam] = img
    state = payload["state"]
    if isinstance(state, list):
        try:
            state = np.asarray(state, dtype=np.float32)
        except (TypeError, ValueError):
            raise ValueError("'state' must be a list of numbers or a json_numpy float array") from None
    obs = {"images": images, "state": state, "instruction": payload["instruction"]}
    try:
        return protocol.check_observation(obs, metadata)
    except ValueError as e:  # name the OFT keys, not our camera names
        text = str(e)
        for cam, key in zip(cams, ["full_image", *wrist_keys]):
            text = text.replace(f"image '{cam}'", f"'{key}' (camera '{cam}')")
        raise ValueError(text) from None


def make_app(server) -> FastAPI:
    """The FastAPI app around a started :class:`~vla_robot.serving.server.PolicyServer`."""
    app = FastAPI(title="vla_robot policy server (OpenVLA-OFT compatible)", docs_url=None, redoc_url=None)

    def error(status: int, message: str) -> JSONResponse:
        server.stats.error(f"http_{status}")
        return JSONResponse({"error": message}, status_code=status)

    @app.post("/act")
    async def act(request: Request):
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > server.max_message_bytes:  # refuse before reading it
            return error(413, f"body is {declared} bytes; this server accepts at most {server.max_message_bytes}")
        body = await request.body()
        if len(body) > server.max_message_bytes:
            return error(413, f"body is {len(body)} bytes; this server accepts at most {server.max_message_bytes}")
        try:
            payload = _loads(body)
        except Exception as e:  # noqa: BLE001
            return error(400, f"body is not JSON with json_numpy arrays: {e}")
        double = isinstance(payload, dict) and "encoded" in payload
        if double:
            if len(payload) != 1 or not isinstance(payload["encoded"], str):
                return error(400, "a double-encoded body is exactly {\"encoded\": \"<json_numpy string>\"}")
            try:
                payload = _loads(payload["encoded"])
            except Exception as e:  # noqa: BLE001
                return error(400, f"'encoded' is not a json_numpy string: {e}")
        try:
            obs = oft_to_observation(payload, server.runtime.metadata)
        except ValueError as e:
            return error(422, str(e))
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def done(res: dict) -> None:
            loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(res))

        client = (request.client.host, request.client.port) if request.client else "http"
        if not server.submit_job(obs, protocol.ActOptions(), done, client=client):
            return error(503, f"{server.batcher.depth} requests queued; try again shortly")
        res = await fut
        if "code" in res:
            return error(_STATUS.get(res["code"], 500), res["message"])
        actions = [np.asarray(a, dtype=np.float32) for a in res["actions"]]
        text = json_numpy.dumps(actions)
        if double:
            text = json.JSONEncoder().encode(text)
        return Response(text, media_type="application/json", headers={"X-Policy-Version": str(res["version"])})

    @app.get("/metadata")
    async def metadata():
        return server.metadata()

    @app.get("/health")
    async def health():
        return server.stats_snapshot()

    return app


class HttpEndpoint:
    """Runs :func:`make_app` under uvicorn in a background thread on ``host:port`` (0 picks a port)."""

    def __init__(self, server, host: str = "127.0.0.1", port: int = 8777):
        self._sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((host.strip("[]"), port))
        except OSError as e:
            self._sock.close()
            raise OSError(f"cannot listen for HTTP on {host}:{port}: {e}") from None
        self.port = self._sock.getsockname()[1]
        bare = host.strip("[]")
        self.url = f"http://[{bare}]:{self.port}" if ":" in bare else f"http://{bare}:{self.port}"
        config = uvicorn.Config(make_app(server), log_level="warning", lifespan="off", access_log=False)
        self._uv = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._uv.run, kwargs={"sockets": [self._sock]},
                                        name="policy-server-http", daemon=True)

    def start(self, timeout_s: float = 10.0) -> None:
        self._thread.start()
        deadline = threading.Event()
        for _ in range(int(timeout_s / 0.01)):
            if self._uv.started:
                return
            deadline.wait(0.01)
        raise RuntimeError(f"the HTTP endpoint did not start within {timeout_s} s")

    def stop(self) -> None:
        self._uv.should_exit = True
        self._thread.join(5.0)
        self._sock.close()
