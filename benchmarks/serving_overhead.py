"""Round-trip overhead of the policy server beyond the model's own time, against an OFT-style server.

For 2 cameras at 224x224 RGB + an 8-D state, on loopback, with the tiny OFT runtime:

(a) ours: ``PolicyServer`` (ZMQ + msgpack + raw buffers) and ``PolicyClient.act``;
(b) OFT-style: FastAPI + uvicorn + ``json_numpy.patch()`` around the same runtime, batch size 1,
    the handler written as ``vla-scripts/deploy.py`` writes it, and the client as OFT's robot
    clients call it (``requests.post(url, json=obs).json()``), plus the same with a keep-alive
    ``requests.Session`` (a kinder baseline).

Overhead per request = client round trip − the server's own ``runtime.infer`` time for that
request (reported by each server). Each server runs in its own process, as on a real robot/GPU
pair. Then batched throughput of our server with 8 concurrent clients vs 1.

    .venv/bin/python benchmarks/serving_overhead.py [--requests 1000] [--seconds 10]

Targets (issue 4): ours p50 <= 0.5 ms, p99 <= 2 ms, and >= 20x lower than (b).
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Dict  # noqa: UP035 - the OFT handler's own annotation, resolved by FastAPI

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def make_runtime():
    import torch

    torch.set_num_threads(1)
    from vla_robot.policy import load_policy
    from vla_robot.policy.normalization import compute_statistics

    rt = load_policy(preset="tiny", seed=0, overrides={"proprio_dim": 8, "dataset_statistics": ""})
    rng = np.random.default_rng(0)
    meta = rt.metadata
    rt.set_norm_stats(compute_statistics(rng.uniform(-1, 1, (256, meta["action_dim"])), rng.uniform(-1, 1, (256, 8))),
                      "bench")
    return rt


def observation(meta, seed=0, size=224):
    rng = np.random.default_rng(seed)
    return {
        "images": {cam: rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for cam in meta["cameras"]},
        "state": rng.uniform(-1, 1, 8).astype(np.float32),
        "instruction": "pick up the red cube and put it in the bowl",
    }


# --- servers (run in child processes) --------------------------------------------------------------


def serve_ours(port: int, max_batch: int) -> None:
    from vla_robot.serving.server import PolicyServer

    server = PolicyServer(make_runtime(), bind=f"tcp://127.0.0.1:{port}", weights_bind=None, max_batch=max_batch,
                          max_wait_ms=2.0)
    server.start()
    print("ready", flush=True)
    server.serve_forever()


def serve_oft_style(port: int) -> None:
    """The shape of OpenVLA-OFT's vla-scripts/deploy.py: json_numpy.patch(), FastAPI, POST /act."""
    import json_numpy
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    runtime = make_runtime()  # before the patch: transformers' own json.loads calls break under it
    json_numpy.patch()
    cams = runtime.metadata["cameras"]
    app = FastAPI()

    def get_server_action(payload: Dict[str, Any]):
        try:
            images = [payload["full_image"]] + [payload[k] for k in payload if "wrist" in k]
            obs = {"images": dict(zip(cams, images)), "state": np.asarray(payload["state"], np.float32),
                   "instruction": payload["instruction"]}
            t0 = time.perf_counter()
            actions = runtime.infer([obs])[0]["actions"]
            model_ms = (time.perf_counter() - t0) * 1e3
            return JSONResponse([a for a in actions], headers={"X-Model-Ms": f"{model_ms:.6f}"})
        except Exception:  # noqa: BLE001 - as deploy.py
            return "error"

    app.post("/act")(get_server_action)
    print("ready", flush=True)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def serve_echo(port: int, sleep_ms: float) -> None:
    """The floor: a bare ZMQ ROUTER that waits as long as the model would, then answers 200 bytes."""
    import zmq

    sock = zmq.Context().socket(zmq.ROUTER)
    sock.bind(f"tcp://127.0.0.1:{port}")
    print("ready", flush=True)
    while True:
        frames = sock.recv_multipart(copy=False)
        time.sleep(sleep_ms / 1e3)
        sock.send_multipart([frames[0], b"x" * 200])


# --- measuring -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(kind: str, port: int, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    p = subprocess.Popen([sys.executable, __file__, "--serve", kind, "--port", str(port), *extra],
                         stdout=subprocess.PIPE, text=True, env=env)
    line = p.stdout.readline()
    if "ready" not in line:
        p.kill()
        raise RuntimeError(f"{kind} server did not start")
    return p


def stop(p: subprocess.Popen) -> None:
    p.terminate()
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()


def pct(xs) -> str:
    a = np.asarray(xs)
    return f"p50 {np.percentile(a, 50):7.3f} ms   p99 {np.percentile(a, 99):7.3f} ms   mean {a.mean():7.3f} ms"


def bench_ours(port: int, n: int, meta_out: dict) -> tuple[list, list]:
    from tqdm import tqdm

    from vla_robot.serving.client import PolicyClient

    with PolicyClient(f"tcp://127.0.0.1:{port}", timeout_s=30) as c:
        meta = c.metadata()
        meta_out.update(meta)
        obs = observation(meta)
        for _ in range(20):
            c.infer([obs])
        over, model, inside = [], [], []
        for _ in tqdm(range(n), desc="ours (ZMQ)", leave=False, disable=None):
            t0 = time.perf_counter()
            out = c.infer([obs])[0]
            rtt = (time.perf_counter() - t0) * 1e3
            over.append(rtt - out["timings"]["model_ms"])
            model.append(out["timings"]["model_ms"])
            inside.append(out["timings"]["server_ms"] - out["timings"]["model_ms"])
    meta_out["inside_ms"] = inside
    return over, model


def bench_echo(port: int, n: int, meta: dict, sleep_ms: float) -> list:
    import zmq
    from tqdm import tqdm

    from vla_robot.serving import protocol

    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.connect(f"tcp://127.0.0.1:{port}")
    frames = protocol.pack(protocol.request("act", 1, observation(meta)))
    over = []
    for i in tqdm(range(n + 20), desc="bare ZMQ floor", leave=False, disable=None):
        t0 = time.perf_counter()
        sock.send_multipart(frames, copy=False)
        sock.recv_multipart()
        if i >= 20:
            over.append((time.perf_counter() - t0) * 1e3 - sleep_ms)
    sock.close(linger=0)
    return over


def bench_oft(port: int, n: int, meta: dict, session: bool) -> tuple[list, list]:
    import json_numpy

    json_numpy.patch()
    import requests
    from tqdm import tqdm

    obs = observation(meta)
    cams = meta["cameras"]
    payload = {"full_image": obs["images"][cams[0]], **{f"wrist_image_{i}": obs["images"][c] for i, c in enumerate(cams[1:])},
               "state": obs["state"], "instruction": obs["instruction"]}
    url = f"http://127.0.0.1:{port}/act"
    post = requests.Session().post if session else requests.post
    for _ in range(10):
        post(url, json=payload).json()
    over, model = [], []
    for _ in tqdm(range(n), desc="OFT-style" + (" (session)" if session else ""), leave=False, disable=None):
        t0 = time.perf_counter()
        r = post(url, json=payload)
        actions = r.json()
        rtt = (time.perf_counter() - t0) * 1e3
        assert len(actions) == meta["chunk_size"], actions
        m = float(r.headers["X-Model-Ms"])
        over.append(rtt - m)
        model.append(m)
    return over, model


def throughput(port: int, clients: int, seconds: float, meta: dict, size: int = 224) -> float:
    from vla_robot.serving.client import PolicyClient

    count = [0] * clients
    stop_at = time.monotonic() + seconds

    def run(i: int) -> None:
        with PolicyClient(f"tcp://127.0.0.1:{port}", timeout_s=60) as c:
            obs = observation(meta, i, size)
            c.infer([obs])
            while time.monotonic() < stop_at:
                c.infer([obs])
                count[i] += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(count) / (time.monotonic() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1000, help="requests per path (>= 1000 for the issue's figures)")
    ap.add_argument("--seconds", type=float, default=10.0, help="duration of each throughput run")
    ap.add_argument("--serve", choices=["ours", "oft", "echo"], help=argparse.SUPPRESS)
    ap.add_argument("--sleep-ms", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--max-batch", type=int, default=8, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve == "ours":
        serve_ours(args.port, args.max_batch)
        return 0
    if args.serve == "oft":
        serve_oft_style(args.port)
        return 0
    if args.serve == "echo":
        serve_echo(args.port, args.sleep_ms)
        return 0

    print(f"serving overhead, {args.requests} requests per path, 2 cameras 224x224x3 + 8-D state, loopback, "
          f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} (a busy machine inflates every figure)")
    results = {}
    meta: dict = {}
    ours = start("ours", free_port())
    try:
        port = int(ours.args[ours.args.index("--port") + 1])
        results["ours"] = bench_ours(port, args.requests, meta)
        tp = {(n, size): throughput(port, n, args.seconds, meta, size)
              for size in (224, meta["image_size"]) for n in (1, 8)}
    finally:
        stop(ours)
    model_p50 = float(np.percentile(results["ours"][1], 50))
    echo = start("echo", free_port(), "--sleep-ms", f"{model_p50:.3f}")
    try:
        port = int(echo.args[echo.args.index("--port") + 1])
        floor = bench_echo(port, args.requests, meta, model_p50)
    finally:
        stop(echo)
    oft = start("oft", free_port())
    try:
        port = int(oft.args[oft.args.index("--port") + 1])
        results["oft"] = bench_oft(port, args.requests, meta, session=False)
        results["oft_session"] = bench_oft(port, args.requests, meta, session=True)
    finally:
        stop(oft)

    print(f"load average now {os.getloadavg()[0]:.1f}; model: {meta.get('model')} chunk {meta.get('chunk_size')}x{meta.get('action_dim')}, "
          f"its own time per request {pct(results['ours'][1])}")
    print(f"(0) floor: bare ZMQ round trip, same frames, server idle for the model's p50 time: {pct(floor)}")
    print(f"    ours, inside the server (decode, queue, hand-offs): {pct(meta['inside_ms'])}")
    names = {"ours": "(a) ours, ZMQ+msgpack      ", "oft": "(b) OFT-style, requests.post",
             "oft_session": "(b') OFT-style, keep-alive "}
    for key, label in names.items():
        print(f"{label} overhead: {pct(results[key][0])}")
    p50 = {k: float(np.percentile(v[0], 50)) for k, v in results.items()}
    p99 = {k: float(np.percentile(v[0], 99)) for k, v in results.items()}
    ratio = p50["oft"] / max(p50["ours"], 1e-9)
    ratio_s = p50["oft_session"] / max(p50["ours"], 1e-9)
    print(f"targets: ours p50 <= 0.5 ms: {'MET' if p50['ours'] <= 0.5 else 'MISSED'} ({p50['ours']:.3f}); "
          f"p99 <= 2 ms: {'MET' if p99['ours'] <= 2 else 'MISSED'} ({p99['ours']:.3f}); "
          f">= 20x lower than (b): {'MET' if ratio >= 20 else 'MISSED'} ({ratio:.1f}x; {ratio_s:.1f}x vs keep-alive)")
    for size in sorted({s for _, s in tp}, reverse=True):
        one, eight = tp[(1, size)], tp[(8, size)]
        print(f"throughput, ours, {size}x{size} images: 1 client {one:.1f} req/s, 8 clients {eight:.1f} req/s "
              f"({eight / max(one, 1e-9):.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
