"""What publishing the on-policy record costs policy_node, and whether every record arrives.

For each image size (the twin's 64x64 and a real robot's two 640x480 cameras) a publisher node sends
one record per tick at ``--hz`` on ``policy/record`` (RECORD_QOS) for ``--seconds``, as policy_node
would if every tick brought a chunk (the async executor brings one every few ticks: this is the worst
case); a subscriber node in its own process decodes each one as recorder_node does. Prints, per size:
the record's size, the publisher's cost per record (build + encode + publish: what the control tick
pays), and how many records arrived.

    ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST ROS_DOMAIN_ID=12 python benchmarks/onpolicy_record.py

Measured on the 2-core dev machine (load average ~3 from other work), 30 records/s for 5 s:

    twin 2x64x64     25.7 kB/record  publish 1.1 ms mean, 2.4 ms p95, 5.3 ms max (3 % of a tick)   150/150 arrived
    real 2x640x480   1.84 MB/record  publish 4.4 ms mean, 9.8 ms p95, 31 ms max (13 % of a tick)   150/150 arrived

With the rl executor (async, request_threshold 4 of a chunk of 8) a record comes every ~4 ticks, so a
quarter of that per tick. A 30-s episode on real cameras holds ~200 records, ~0.4 GB in the recorder's
memory until it is saved, and on disk (lossless, uncompressed: what the server saw).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time

import numpy as np

SIZES = {"twin 2x64x64": (2, 64, 64), "real 2x640x480": (2, 480, 640)}


def _subscriber(n_expected: int, ready, conn) -> None:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from std_msgs.msg import UInt8MultiArray

    from vla_robot.nodes import common, convert

    rclpy.init()
    node = rclpy.create_node("record_sink")
    got, bad = [], 0

    def on_msg(msg):
        nonlocal bad
        try:
            got.append(convert.msg_to_record(msg)["chunk_id"])
        except ValueError:
            bad += 1

    node.create_subscription(UInt8MultiArray, common.POLICY_RECORD, on_msg, common.RECORD_QOS)
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    ready.set()
    deadline = time.monotonic() + 120
    while len(got) + bad < n_expected and time.monotonic() < deadline:
        ex.spin_once(timeout_sec=0.1)
    conn.send({"received": len(got), "bad": bad, "in_order": got == sorted(got)})
    node.destroy_node()
    rclpy.shutdown()


def run(size: tuple[int, int, int], hz: float, seconds: float) -> dict:
    import rclpy
    from std_msgs.msg import UInt8MultiArray

    from vla_robot.data import records
    from vla_robot.nodes import common, convert

    n = int(hz * seconds)
    ctx = mp.get_context("spawn")
    ready, (parent, child) = ctx.Event(), ctx.Pipe()
    sub = ctx.Process(target=_subscriber, args=(n, ready, child))
    sub.start()
    ready.wait(60)
    rclpy.init()
    node = rclpy.create_node("record_source")
    pub = node.create_publisher(UInt8MultiArray, common.POLICY_RECORD, common.RECORD_QOS)
    deadline = time.monotonic() + 20
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    cams, h, w = size
    rng = np.random.default_rng(0)
    images = {f"cam{i}": rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for i in range(cams)}
    meta = {"model": "tiny", "dtype": "float32", "image_size": 224, "cameras": list(images), "version": 0}
    costs, nbytes = [], 0
    t_next = time.monotonic()
    for i in range(n):
        obs = {"images": images, "state": rng.normal(size=6).astype(np.float32), "instruction": "touch the red cube"}
        reply = {"actions": rng.normal(size=(8, 6)).astype(np.float32), "tokens": rng.integers(31744, 32000, 48),
                 "logprobs": -rng.uniform(0.1, 3, 48).astype(np.float32), "version": 0}
        t0 = time.perf_counter()
        msg = convert.record_to_msg(records.make_chunk(reply, obs, {"mode": "sample", "temperature": 1.6}, i, 0.0, meta))
        pub.publish(msg)
        costs.append(time.perf_counter() - t0)
        nbytes = len(msg.data)
        t_next += 1.0 / hz
        time.sleep(max(0.0, t_next - time.monotonic()))
    result = parent.recv() if parent.poll(150) else {"received": None}
    sub.join(30)
    node.destroy_node()
    rclpy.shutdown()
    c = np.array(costs[1:]) * 1e3  # the first publish allocates
    return {"record_bytes": nbytes, "records": n, "publish_ms_mean": round(float(c.mean()), 3),
            "publish_ms_p95": round(float(np.percentile(c, 95)), 3), "publish_ms_max": round(float(c.max()), 3),
            "tick_share_at_hz": round(float(c.mean()) / (1e3 / hz), 4), **result}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hz", type=float, default=30.0)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    for name, size in SIZES.items():
        print(json.dumps({"case": name, "hz": args.hz, **run(size, args.hz, args.seconds)}), flush=True)


if __name__ == "__main__":
    main()
