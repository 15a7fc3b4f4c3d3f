"""The policy server with the real tiny OFT runtime, over real ZMQ sockets and HTTP on loopback."""
import json
import random
import subprocess
import sys
import threading
import time

import msgpack
import numpy as np
import pytest
import torch
import zmq

from vla_robot.policy import load_policy
from vla_robot.serving import protocol
from vla_robot.serving.client import PolicyClient, PolicyServerError, PolicyTimeout
from vla_robot.serving.server import PolicyServer
from vla_robot.serving.weights import WeightPublisher

torch.set_num_threads(1)
LOOPBACK = "tcp://127.0.0.1:*"


@pytest.fixture(scope="module")
def runtime():
    return load_policy(preset="tiny", seed=0)


@pytest.fixture(scope="module")
def server(runtime):
    with PolicyServer(runtime, bind=LOOPBACK, weights_bind=None, max_wait_ms=2) as s:
        yield s


@pytest.fixture
def client(server):
    with PolicyClient(server.address, timeout_s=10) as c:
        yield c


def make_obs(meta, seed=0, size=None):
    rng = np.random.default_rng(seed)
    s = size or meta["image_size"]
    return {
        "images": {cam: rng.integers(0, 256, (s, s, 3), dtype=np.uint8) for cam in meta["cameras"]},
        "state": rng.uniform(-1, 1, meta["proprio_dim"]).astype(np.float32),
        "instruction": f"pick up cube {seed}",
    }


def test_round_trip_matches_the_runtime(runtime, client):
    meta = client.metadata()
    assert meta["protocol_version"] == protocol.PROTOCOL_VERSION
    for key in ("action_dim", "chunk_size", "proprio_dim", "cameras", "image_size", "norm_key", "head", "model"):
        assert meta[key] == runtime.metadata[key]
    obs = make_obs(meta, 1)
    out = client.infer([obs], return_tokens=True)[0]
    expected = runtime.infer([obs], return_tokens=True)[0]
    assert out["actions"].dtype == np.float32 and out["actions"].shape == (meta["chunk_size"], meta["action_dim"])
    np.testing.assert_allclose(out["actions"], expected["actions"], atol=1e-5)
    np.testing.assert_array_equal(out["tokens"], expected["tokens"])
    np.testing.assert_allclose(out["logprobs"], expected["logprobs"], atol=1e-4)
    assert out["version"] == runtime.version
    assert {"queue_ms", "model_ms", "decode_ms", "server_ms", "round_trip_ms", "batch_size"} <= set(out["timings"])
    plain = client.infer([obs])[0]
    assert plain["tokens"] is None and plain["logprobs"] is None
    # sampling at a temperature gives valid chunks with log-probs of the sampled tokens
    sampled = client.infer([obs], mode="sample", temperature=1.6, return_tokens=True)[0]
    assert sampled["tokens"].shape == (meta["chunk_size"] * meta["action_dim"],)
    assert np.all(sampled["logprobs"] <= 0)


def test_submit_and_poll_never_block(server, client):
    obs = make_obs(client.metadata(), 2)
    t0 = time.perf_counter()
    rid = client.submit(obs)
    first = client.poll(rid)
    assert time.perf_counter() - t0 < 0.05  # returned at once, even though the model has not run yet
    assert first is None or "actions" in first
    out = first
    while out is None:
        time.sleep(0.002)
        out = client.poll(rid)
    assert out["actions"].shape[0] == client.metadata()["chunk_size"]
    with pytest.raises(KeyError, match="unknown to this client"):
        client.poll(rid)


def test_poll_and_act_time_out_when_the_server_is_silent():
    ctx = zmq.Context.instance()
    mute = ctx.socket(zmq.ROUTER)  # a server that never answers
    port = mute.bind_to_random_port("tcp://127.0.0.1")
    try:
        with PolicyClient(f"tcp://127.0.0.1:{port}", timeout_s=0.2) as c:
            obs = {"images": {"front": np.zeros((4, 4, 3), np.uint8)}, "state": np.zeros(2, np.float32), "instruction": ""}
            rid = c.submit(obs)
            assert c.poll(rid) is None
            time.sleep(0.25)
            with pytest.raises(PolicyTimeout, match=f"request {rid}"):
                c.poll(rid)
            with pytest.raises(PolicyTimeout):
                c.infer([obs], timeout_s=0.1)
            assert c.pending == 0
    finally:
        mute.close(linger=0)


def test_two_clients_are_batched_and_each_gets_its_own_answer(runtime):
    with PolicyServer(runtime, bind=LOOPBACK, weights_bind=None, max_batch=4, max_wait_ms=300) as s:
        a, b = PolicyClient(s.address, timeout_s=10), PolicyClient(s.address, timeout_s=10)
        meta = a.metadata()
        obs_a, obs_b = make_obs(meta, 10), make_obs(meta, 11)
        a.infer([obs_a])[0], b.infer([obs_b])  # both are now active clients: the batcher waits for the other
        before = s.stats_snapshot()["batch_sizes"].get("2", 0)
        ra, rb = a.submit(obs_a, return_tokens=True), b.submit(obs_b, return_tokens=True)
        out_a, out_b = a.wait(ra), b.wait(rb)
        assert s.stats_snapshot()["batch_sizes"].get("2", 0) == before + 1
        assert out_a["timings"]["batch_size"] == out_b["timings"]["batch_size"] == 2
        ref = runtime.infer([obs_a, obs_b], return_tokens=True)
        for out, r in zip((out_a, out_b), ref):
            np.testing.assert_allclose(out["actions"], r["actions"], atol=1e-5)
            np.testing.assert_array_equal(out["tokens"], r["tokens"])
            np.testing.assert_allclose(out["logprobs"], r["logprobs"], atol=1e-4)
        # the two observations differ, and so do their answers (a random tiny model often agrees
        # on the argmax tokens, never on the log-probs)
        assert not np.allclose(out_a["logprobs"], out_b["logprobs"], atol=1e-4)
        a.close(), b.close()


def test_a_lone_client_never_waits_for_a_batch(runtime):
    with PolicyServer(runtime, bind=LOOPBACK, weights_bind=None, max_batch=8, max_wait_ms=5000) as s:
        with PolicyClient(s.address, timeout_s=10) as c:
            obs = make_obs(c.metadata(), 12)
            for _ in range(3):
                out = c.infer([obs])[0]
                assert out["timings"]["queue_ms"] < 1000 and out["timings"]["batch_size"] == 1


def test_a_group_submitted_by_one_client_is_batched(runtime):
    """As the RL rollout does: one client submits a whole group, then collects the replies."""
    with PolicyServer(runtime, bind=LOOPBACK, weights_bind=None, max_batch=8) as s, PolicyClient(s.address, timeout_s=20) as c:
        meta = c.metadata()
        group = [make_obs(meta, 80 + i) for i in range(8)]
        for _ in range(3):
            ids = [c.submit(o, mode="sample", return_tokens=True) for o in group]
            while c.poll(ids[-1]) is None:  # replies to the others are kept for wait()
                time.sleep(0.001)
            outs = [c.wait(i) for i in ids[:-1]]
            assert all(o["tokens"].shape == (meta["chunk_size"] * meta["action_dim"],) for o in outs)
        sizes = {int(k): v for k, v in s.stats_snapshot()["batch_sizes"].items()}
        assert sum(sizes.values()) < 3 * 8 and max(sizes) > 1, sizes


def test_a_seeded_request_samples_the_same_chunk_batched_or_alone(runtime):
    """Reproducible evaluations through the server: the seed, not the batch, decides the sample."""
    with PolicyServer(runtime, bind=LOOPBACK, weights_bind=None, max_batch=8, max_wait_ms=50) as s, \
            PolicyClient(s.address, timeout_s=20) as c:
        meta = c.metadata()
        group = [make_obs(meta, 40 + i) for i in range(4)]
        ids = [c.submit(o, mode="sample", temperature=1.0, return_tokens=True, seed=100 + i) for i, o in enumerate(group)]
        batched = [c.wait(i) for i in ids]
        alone = c.infer([group[2]], mode="sample", temperature=1.0, return_tokens=True, seeds=[102])[0]
        again = c.infer([group[2]], mode="sample", temperature=1.0, return_tokens=True, seeds=[103])[0]
        assert max(int(k) for k in s.stats_snapshot()["batch_sizes"]) > 1  # the group did share a forward pass
    np.testing.assert_array_equal(batched[2]["tokens"], alone["tokens"])
    assert not np.array_equal(alone["tokens"], again["tokens"])
    local = runtime.infer([group[2]], mode="sample", temperature=1.0, return_tokens=True, seeds=[102])[0]
    np.testing.assert_array_equal(local["tokens"], alone["tokens"])


def test_batches_split_by_sampling_options(runtime):
    with PolicyServer(runtime, bind=LOOPBACK, weights_bind=None, max_batch=8, max_wait_ms=500) as s:
        clients = [PolicyClient(s.address, timeout_s=10) for _ in range(3)]
        meta = clients[0].metadata()
        obs = [make_obs(meta, 20 + i) for i in range(3)]
        for c, o in zip(clients, obs):
            c.infer([o])
        ids = [clients[0].submit(obs[0]), clients[1].submit(obs[1], return_tokens=True), clients[2].submit(obs[2])]
        outs = [c.wait(r) for c, r in zip(clients, ids)]
        assert outs[1]["tokens"] is not None and outs[0]["tokens"] is None and outs[2]["tokens"] is None
        for o, out in zip(obs, outs):
            np.testing.assert_allclose(out["actions"], runtime.infer([o])[0]["actions"], atol=1e-5)
        for c in clients:
            c.close()


def test_client_survives_a_server_restart(runtime):
    import socket

    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{sk.getsockname()[1]}"
    with PolicyClient(address, timeout_s=10) as c:
        s = PolicyServer(runtime, bind=address, weights_bind=None).start()
        obs = make_obs(c.metadata(), 70)
        first = c.infer([obs])[0]["actions"]
        s.stop()
        with pytest.raises(RuntimeError, match="cannot start again"):
            s.start()
        with pytest.raises(PolicyTimeout):
            c.infer([obs], timeout_s=0.3)  # nobody serves: the caller hears so in time
        with PolicyServer(runtime, bind=address, weights_bind=None):
            np.testing.assert_allclose(c.infer([obs])[0]["actions"], first, atol=1e-5)  # reconnected by itself


def raw_request(sock, frames, timeout_ms=10000):
    sock.send_multipart(frames)
    assert sock.poll(timeout_ms), "the server did not answer"
    return protocol.unpack(sock.recv_multipart())


@pytest.fixture
def raw(server):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(server.address)
    yield sock
    sock.close()


def test_each_bad_request_gets_its_error_and_the_server_keeps_serving(server, client, raw):
    meta = client.metadata()
    good = make_obs(meta, 3)
    cases = [
        ([b"\x00\xffgarbage"], "bad_message", "not valid msgpack"),
        (protocol.pack({"v": 1, "type": "act", "id": 1, "obs": {**good, "state": np.full(meta["proprio_dim"], np.nan, np.float32)}}), "bad_request", "non-finite"),
        (protocol.pack({"v": 1, "type": "act", "id": 2, "obs": {**good, "images": {meta["cameras"][0]: good["images"][meta["cameras"][0]]}}}), "bad_request", "missing"),
        (protocol.pack({"v": 1, "type": "act", "id": 3, "obs": {**good, "images": {c: np.zeros((9, 9), np.uint8) for c in meta["cameras"]}}}), "bad_request", "HxWx3"),
        (protocol.pack({"v": 1, "type": "act", "id": 4, "obs": good, "priority": 9}), "bad_request", "unknown field"),
        (protocol.pack({"v": 99, "type": "act", "id": 5, "obs": good}), "unsupported_version", "protocol 99"),
        (protocol.pack({"v": 1, "type": "act", "id": 6, "obs": {**good, "state": "fast"}}), "bad_request", "1-D float"),
        (protocol.pack({"v": 1, "type": "act", "id": 7, "obs": good, "options": {"temperature": -1}}), "bad_request", "temperature"),
        ([msgpack.packb({"v": 1, "type": "act", "id": 8, "obs": msgpack.ExtType(1, msgpack.packb(["<f4", [100], 1]))}), b"1234"], "bad_message", "needs 400"),
    ]
    for frames, code, match in cases:
        reply = raw_request(raw, frames)
        assert reply["type"] == "error" and reply["code"] == code, reply
        assert match in reply["message"], reply["message"]
        out = client.infer([good])[0]  # the next good request works
        assert out["actions"].shape == (meta["chunk_size"], meta["action_dim"])
    with pytest.raises(PolicyServerError, match="non-finite") as e:
        client.infer([{**good, "state": np.full(meta["proprio_dim"], np.inf)}])
    assert e.value.code == "bad_request"
    stats = client.ping()
    assert stats["errors"]["bad_request"] >= 6 and stats["requests"]["invalid"] >= len(cases)


def test_a_full_queue_answers_overloaded_and_keeps_serving(runtime):
    with PolicyServer(runtime, bind=LOOPBACK, weights_bind=None, max_batch=1, max_queue=1) as s:
        with PolicyClient(s.address, timeout_s=30) as c:
            obs = make_obs(c.metadata(), 90)
            ids = [c.submit(obs) for _ in range(20)]
            outcomes = []
            for rid in ids:
                try:
                    outcomes.append("ok" if c.wait(rid)["actions"] is not None else "?")
                except PolicyServerError as e:
                    assert e.code == "overloaded" and "max_queue=1" in e.message
                    outcomes.append("overloaded")
            assert "ok" in outcomes and "overloaded" in outcomes, outcomes
            assert c.infer([obs])[0]["actions"].shape[0] == c.metadata()["chunk_size"]


def test_oversized_message_is_refused(runtime):
    with PolicyServer(runtime, bind=LOOPBACK, weights_bind=None, max_message_bytes=100_000) as s:
        with PolicyClient(s.address, timeout_s=10, max_message_bytes=100_000) as c:
            meta = c.metadata()
            with pytest.raises(ValueError, match="over the limit of 100000"):
                c.infer([make_obs(meta, 0, size=224)])
            # a sender that ignores the limit is cut off by ZMQ; the server keeps serving others
            sock = zmq.Context.instance().socket(zmq.DEALER)
            sock.linger = 0
            sock.connect(s.address)
            sock.send_multipart([b"\x80", b"x" * 200_000])
            assert not sock.poll(300)
            sock.close()
            assert c.infer([make_obs(meta, 0)])[0]["actions"].shape[0] == meta["chunk_size"]


def test_fuzz_random_and_mutated_messages_never_kill_the_server(server, client, raw):
    """Thousands of random and mutated messages: each gets exactly one reply; then good requests work."""
    meta = client.metadata()
    rng = random.Random(1234)
    good = protocol.pack(protocol.request("act", 1, make_obs(meta, 5)))
    good = [bytes(memoryview(f).cast("B")) for f in good]
    values = [None, True, -1, 2**64 - 1, -(2**63), 3.5, float("nan"), "", "x" * 50, b"\x00", [], {}, [1, "a"], {"a": {"b": []}}]

    def mutate() -> list[bytes]:
        kind = rng.randrange(7)
        if kind == 0:  # random bytes
            return [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))]
        if kind == 1:  # bit flips in the header
            h = bytearray(good[0])
            for _ in range(rng.randrange(1, 4)):
                h[rng.randrange(len(h))] ^= 1 << rng.randrange(8)
            return [bytes(h), *good[1:]]
        if kind == 2:  # truncated frames or frames left out
            frames = list(good)
            i = rng.randrange(len(frames))
            frames[i] = frames[i][: rng.randrange(len(frames[i]) + 1)]
            if rng.random() < 0.3:
                frames.pop(rng.randrange(1, len(frames)))
            return frames
        if kind == 3:  # a field replaced by a random value
            h = msgpack.unpackb(good[0], raw=False)
            path = rng.choice([("v",), ("type",), ("id",), ("obs",), ("obs", "state"), ("obs", "images"),
                               ("obs", "instruction"), ("options",), ("extra",)])
            node = h
            for p in path[:-1]:
                node = node[p]
            node[path[-1]] = rng.choice(values)
            return [msgpack.packb(h, use_bin_type=True), *good[1:]]
        if kind == 4:  # arrays with wrong dtype/shape descriptors
            arr = rng.choice(["<f4", "|u1", "<i8", "|b1"])
            shape = [rng.randrange(0, 300) for _ in range(rng.randrange(0, 4))]
            h = msgpack.unpackb(good[0], raw=False, ext_hook=lambda c, d: msgpack.ExtType(c, d))
            h["obs"]["state"] = msgpack.ExtType(1, msgpack.packb([arr, shape, 3]))
            return [msgpack.packb(h, use_bin_type=True), *good[1:]]
        if kind == 5:  # random extra frames
            return [*good, bytes(rng.randrange(256) for _ in range(rng.randrange(8)))]
        return list(good)  # a valid request now and then

    n = 2500
    sent = 0
    kinds = []

    def receive():
        reply = protocol.unpack(raw.recv_multipart())
        kinds.append(reply.get("code", reply["type"]))

    for i in range(n):
        raw.send_multipart(mutate())
        sent += 1
        while raw.poll(0):  # read as we go so no queue fills up
            receive()
    deadline = time.monotonic() + 60
    while len(kinds) < sent and time.monotonic() < deadline:
        if raw.poll(100):
            receive()
    assert len(kinds) == sent  # one reply per message, none lost, none doubled
    assert {"result", "bad_message", "bad_request", "unsupported_version"} <= set(kinds), set(kinds)
    out = client.infer([make_obs(meta, 6)])[0]
    assert out["actions"].shape == (meta["chunk_size"], meta["action_dim"])
    assert client.ping()["requests"]["invalid"] > n / 2


def _perturbed(state, scale):
    """Weights of a clearly different policy: the token-logit rows of the LLM head scaled."""
    out = {}
    for k, v in state.items():
        if k.endswith("lm_head.weight") or k.endswith("embed_tokens.weight"):
            g = torch.Generator().manual_seed(7)
            out[k] = v + scale * torch.randn(v.shape, generator=g)
    assert out, "the tiny model has no lm_head to perturb"
    return out


def test_hot_swap_mid_traffic_never_mixes_versions():
    runtime = load_policy(preset="tiny", seed=0)
    meta = runtime.metadata
    obs = make_obs(meta, 30)
    base = runtime.state_dict()
    other = {**base, **_perturbed(base, 0.5)}
    ref_base = runtime.infer([obs])[0]["actions"]
    probe = load_policy(preset="tiny", seed=0)
    probe.load_weights(other, 1)
    ref_other = probe.infer([obs])[0]["actions"]
    assert not np.allclose(ref_base, ref_other, atol=1e-3)

    with PolicyServer(runtime, bind=LOOPBACK, weights_bind=LOOPBACK, max_wait_ms=1) as s:
        results, stop = [], threading.Event()

        def traffic():
            with PolicyClient(s.address, timeout_s=20) as c:
                while not stop.is_set():
                    out = c.infer([obs])[0]
                    results.append((out["version"], out["actions"]))

        workers = [threading.Thread(target=traffic) for _ in range(2)]
        for w in workers:
            w.start()
        with WeightPublisher(s.weights_address, timeout_s=30, part_bytes=1 << 20) as pub:
            for version in range(1, 7):
                time.sleep(0.05)
                ack = pub.push(other if version % 2 else base, version)
                assert ack["version"] == version and ack["tensors"] == len(base)
        time.sleep(0.05)
        stop.set()
        for w in workers:
            w.join()
        versions = {v for v, _ in results}
        assert len(versions) >= 3, versions
        for version, actions in results:
            expected = ref_other if version % 2 else ref_base
            np.testing.assert_allclose(actions, expected, atol=1e-5, err_msg=f"version {version}")
        assert s.stats_snapshot()["swaps"] == 6

        # a delta (partial update added to the serving weights) also swaps in whole
        with WeightPublisher(s.weights_address, timeout_s=30) as pub:
            delta = {k: other[k] - base[k] for k in _perturbed(base, 0.5)}
            pub.push(delta, 7, delta=True)
        with PolicyClient(s.address) as c:
            out = c.infer([obs])[0]
            assert out["version"] == 7
            np.testing.assert_allclose(out["actions"], ref_other, atol=1e-5)


def _begin(transfer, version, n_tensors, n_parts, total, rid=1):
    return protocol.pack({"v": 1, "id": rid, "type": "begin", "transfer": transfer, "version": version,
                          "n_tensors": n_tensors, "n_parts": n_parts, "total_bytes": total})


def test_corrupt_or_incomplete_updates_are_refused_and_the_old_version_keeps_serving():
    from vla_robot.serving.weights import _digest

    runtime = load_policy(preset="tiny", seed=0)
    obs = make_obs(runtime.metadata, 40)
    ref = runtime.infer([obs])[0]["actions"]
    base = runtime.state_dict()
    name = next(k for k in base if k.endswith("lm_head.weight"))
    w = base[name].numpy() + 1.0
    with PolicyServer(runtime, bind=LOOPBACK, weights_bind=LOOPBACK) as s:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(s.weights_address)

        def part(transfer, arrays, names, digest=None, seq=0):
            pieces = [{"name": n, "dtype": a.dtype.str, "shape": list(a.shape), "tag": None, "offset": 0,
                       "data": a.reshape(-1).view(np.uint8)} for n, a in zip(names, arrays)]
            return protocol.pack({"v": 1, "id": 2, "type": "part", "transfer": transfer, "seq": seq, "pieces": pieces,
                                  "sha256": digest or _digest([p["data"] for p in pieces])})

        commit = lambda t: protocol.pack({"v": 1, "id": 3, "type": "commit", "transfer": t})  # noqa: E731
        # 1. a part whose bytes do not match its digest
        assert raw_request(sock, _begin("t1", 1, 1, 1, w.nbytes))["type"] == "ack"
        reply = raw_request(sock, part("t1", [w], [name], digest="0" * 64))
        assert reply["type"] == "error" and "corrupt" in reply["message"]
        assert "not the open transfer" in raw_request(sock, commit("t1"))["message"]
        # 2. half an update: one part of two, then commit
        raw_request(sock, _begin("t2", 1, 2, 2, 2 * w.nbytes))
        assert raw_request(sock, part("t2", [w], [name]))["type"] == "ack"
        reply = raw_request(sock, commit("t2"))
        assert reply["type"] == "error" and "incomplete update: 1/2 parts" in reply["message"]
        # 2b. a piece that skips bytes of its tensor
        raw_request(sock, _begin("t3", 1, 1, 1, w.nbytes))
        msg = protocol.unpack(part("t3", [w], [name]))
        msg["pieces"][0]["offset"] = 8
        msg["pieces"][0]["data"] = msg["pieces"][0]["data"][8:]
        msg["sha256"] = _digest([msg["pieces"][0]["data"]])
        reply = raw_request(sock, protocol.pack(msg))
        assert reply["type"] == "error" and "expected byte 0" in reply["message"]
        # 3. garbage on the weights socket
        assert raw_request(sock, [b"\x92junk"])["code"] == "bad_message"
        sock.close()
        with WeightPublisher(s.weights_address, timeout_s=30) as pub:
            # 4. NaN weights, 5. a shape the model does not have, 6. a name it does not have, 7. a stale version
            bad = w.copy()
            bad[0, 0] = np.nan
            with pytest.raises(PolicyServerError, match="non-finite"):
                pub.push({name: bad}, 1)
            with pytest.raises(PolicyServerError, match="shape"):
                pub.push({name: np.zeros((3, 3), np.float32)}, 1)
            with pytest.raises(PolicyServerError, match="unknown tensor"):
                pub.push({"no.such.weight": np.zeros(3, np.float32)}, 1)
            pub.push({name: base[name]}, 5)
            with pytest.raises(PolicyServerError, match="not newer"):
                pub.push({name: w}, 5)
        with PolicyClient(s.address) as c:
            out = c.infer([obs])[0]
        assert out["version"] == 5
        np.testing.assert_allclose(out["actions"], ref, atol=1e-5)
        assert s.stats_snapshot()["swaps_rejected"] >= 6


def test_curve_rejects_clients_without_the_key(runtime, tmp_path):
    from vla_robot.cli import main

    assert main(["keygen", str(tmp_path / "server"), "--name", "server"]) == 0
    assert main(["keygen", str(tmp_path / "allowed"), "--name", "robot1"]) == 0
    assert main(["keygen", str(tmp_path / "other"), "--name", "robot2"]) == 0
    assert main(["keygen", str(tmp_path / "server"), "--name", "server"]) == 2  # never overwrites silently
    assert oct((tmp_path / "server" / "server.key_secret").stat().st_mode & 0o777) == "0o600"
    server_pub = tmp_path / "server" / "server.key"
    with PolicyServer(runtime, bind=LOOPBACK, weights_bind=LOOPBACK,
                      curve_secret_key=tmp_path / "server" / "server.key_secret",
                      curve_authorized_keys=tmp_path / "allowed") as s:
        with PolicyClient(s.address, timeout_s=1.0) as plain:
            with pytest.raises(PolicyTimeout):
                plain.metadata()
        with PolicyClient(s.address, timeout_s=1.0, curve_server_key=server_pub,
                          curve_client_key=tmp_path / "other" / "robot2.key_secret") as stranger:
            with pytest.raises(PolicyTimeout):
                stranger.metadata()
        with PolicyClient(s.address, timeout_s=10, curve_server_key=server_pub,
                          curve_client_key=tmp_path / "allowed" / "robot1.key_secret") as robot:
            meta = robot.metadata()
            assert robot.infer([make_obs(meta, 50)])[0]["actions"].shape == (meta["chunk_size"], meta["action_dim"])
        # the weights socket is behind the same keys: only the holder of an allowed key can push
        name = next(k for k in runtime.state_dict() if k.endswith("lm_head.weight"))
        same = {name: runtime.state_dict()[name]}
        with WeightPublisher(s.weights_address, timeout_s=1.0) as intruder:
            with pytest.raises(PolicyTimeout):
                intruder.push(same, runtime.version + 1)
        with WeightPublisher(s.weights_address, timeout_s=30, curve_server_key=server_pub,
                             curve_client_key=tmp_path / "allowed" / "robot1.key_secret") as learner:
            assert learner.push(same, runtime.version + 1)["version"] == runtime.version


def test_binding_beyond_loopback_needs_keys_or_consent(runtime):
    with pytest.raises(ValueError, match="reachable from other machines.*keygen"):
        PolicyServer(runtime, bind="tcp://0.0.0.0:5555", weights_bind=None)
    with pytest.raises(ValueError, match="beyond this machine"):
        PolicyServer(runtime, bind=LOOPBACK, weights_bind=None, http_port=0, http_host="0.0.0.0")
    with pytest.raises(TypeError, match="lacks 'metadata'"):
        PolicyServer(object())
    with pytest.raises(ValueError, match="neither a 40-character Z85 key nor a key file"):
        PolicyClient("tcp://127.0.0.1:1", curve_server_key="/no/such/key")
    with pytest.raises(ValueError, match="ZMQ endpoint"):
        PolicyClient("127.0.0.1:5555")


OFT_CLIENT = r"""
import sys, json_numpy, numpy as np
json_numpy.patch()
import requests   # after the patch, as OFT's clients do
rng = np.random.default_rng(0)
obs = {"full_image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
       "wrist_image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
       "state": np.linspace(-0.5, 0.5, 6), "instruction": "pick up the cube"}
actions = requests.post(sys.argv[1] + "/act", json=obs).json()
encoded = requests.post(sys.argv[1] + "/act", json={"encoded": json_numpy.dumps(obs)}).json()
print(json_numpy.dumps({"actions": np.stack(actions), "encoded": np.stack(json_numpy.loads(encoded)), "obs": obs}))
"""


def test_oft_http_endpoint_answers_an_oft_client_unchanged(runtime):
    import requests

    with PolicyServer(runtime, bind=LOOPBACK, weights_bind=None, http_port=0, max_message_bytes=2_000_000) as s:
        out = subprocess.run([sys.executable, "-c", OFT_CLIENT, s.http_url], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        import json_numpy

        got = json_numpy.loads(out.stdout)
        o = got["obs"]
        obs = {"images": {"front": o["full_image"], "wrist": o["wrist_image"]}, "state": o["state"].astype(np.float32),
               "instruction": o["instruction"]}
        ref = runtime.infer([obs])[0]["actions"]
        assert got["actions"].shape == ref.shape and got["actions"].dtype == np.float32
        np.testing.assert_allclose(got["actions"], ref, atol=1e-5)
        np.testing.assert_allclose(got["encoded"], ref, atol=1e-5)

        # bad requests get real status codes and say what was wrong
        def post(payload, raw=None):
            body = raw if raw is not None else json_numpy.dumps(payload)
            return requests.post(s.http_url + "/act", data=body, headers={"Content-Type": "application/json"}, timeout=30)

        good = {"full_image": o["full_image"], "wrist_image": o["wrist_image"], "state": o["state"], "instruction": "x"}
        r = post(None, raw=b"{not json")
        assert r.status_code == 400 and "not JSON" in r.json()["error"]
        r = post({k: v for k, v in good.items() if k != "wrist_image"})
        assert r.status_code == 422 and "takes 2 cameras" in r.json()["error"]
        r = post({**good, "state": np.array([np.nan] * 6)})
        assert r.status_code == 422 and "non-finite" in r.json()["error"]
        r = post({**good, "full_image": np.zeros((5, 5), np.uint8)})
        assert r.status_code == 422 and "'full_image' (camera 'front')" in r.json()["error"]
        r = post({**good, "gripper": 1})
        assert r.status_code == 422 and "unknown field" in r.json()["error"]
        r = post(None, raw=json.dumps({"full_image": {"__numpy__": "AAAA", "dtype": "|O", "shape": [1]}}))
        assert r.status_code == 400 and "not accepted" in r.json()["error"]
        r = post(None, raw=b"x" * (s.max_message_bytes + 1))
        assert r.status_code == 413 and "at most" in r.json()["error"]
        # concurrent OFT requests share the batcher and each gets its own answer
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(4) as pool:
            replies = list(pool.map(lambda _: post(good), range(8)))
        assert all(r.status_code == 200 and r.headers["X-Policy-Version"] == str(runtime.version) for r in replies)
        assert all(len(json_numpy.loads(r.text)) == runtime.metadata["chunk_size"] for r in replies)
        assert requests.get(s.http_url + "/metadata", timeout=10).json()["cameras"] == ["front", "wrist"]


def test_serve_command_checks_its_arguments(capsys, tmp_path):
    from vla_robot.cli import main

    assert main(["serve", "--preset", "tiny", "--max-batch", "0"]) == 2
    assert "max_batch must be >= 1" in capsys.readouterr().err
    assert main(["serve", "--preset", "tiny", "--bind", "localhost:5555"]) == 2
    assert "must be a ZMQ endpoint" in capsys.readouterr().err
    assert main(["serve"]) == 2
    assert "--preset NAME" in capsys.readouterr().err
    cfg = tmp_path / "server.yaml"
    cfg.write_text("policy_server:\n  ros__parameters:\n    max_batch: 4\n    max_wait: 3\n")
    assert main(["serve", "--preset", "tiny", "--config", str(cfg)]) == 2
    assert "unknown key 'max_wait'" in capsys.readouterr().err


@pytest.mark.slow
def test_serve_command_serves_until_interrupted(tmp_path):
    import signal
    import socket

    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    cfg = tmp_path / "server.yaml"
    cfg.write_text("policy_server:\n  ros__parameters:\n    max_batch: 2\n    weights_bind: ''\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "vla_robot.cli", "serve", "--preset", "tiny", "--config", str(cfg),
         "--bind", f"tcp://127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stdout.readline()
        assert f"tcp://127.0.0.1:{port}" in line and "weights on" not in line, (line, proc.stderr.read()[-2000:] if not line else "")
        with PolicyClient(f"tcp://127.0.0.1:{port}", timeout_s=30) as c:
            meta = c.metadata()
            assert meta["model"] == "tiny" and meta["max_batch"] == 2
            assert c.infer([make_obs(meta, 60)])[0]["actions"].shape == (meta["chunk_size"], meta["action_dim"])
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_bfloat16_weights_travel_bit_exact():
    runtime = load_policy(preset="tiny", seed=0, dtype="bfloat16")
    state = runtime.state_dict()
    name = next(k for k in state if k.endswith("lm_head.weight"))
    assert state[name].dtype == torch.bfloat16
    new = {name: (state[name].float() * -1.5).to(torch.bfloat16)}
    with PolicyServer(runtime, bind=LOOPBACK, weights_bind=LOOPBACK) as s:
        with WeightPublisher(s.weights_address) as pub:
            ack = pub.push(new, 3)
        assert ack["bytes"] == new[name].numel() * 2
        assert runtime.version == 3
        assert torch.equal(runtime.state_dict()[name], new[name])


def test_tensors_larger_than_a_part_are_split_and_reassembled():
    """A 7B model's embedding is larger than a part; tiny parts make every tensor span several."""
    runtime = load_policy(preset="tiny", seed=0)
    base = runtime.state_dict()
    target = {k: v + 0.25 for k, v in base.items() if v.is_floating_point()}
    with PolicyServer(runtime, bind=LOOPBACK, weights_bind=LOOPBACK) as s:
        with WeightPublisher(s.weights_address, part_bytes=300_001) as pub:  # odd size: pieces straddle parts
            ack = pub.push(target, 1)
    total = sum(v.numel() * v.element_size() for v in target.values())
    assert ack["bytes"] == total and ack["tensors"] == len(target)
    assert max(v.numel() * v.element_size() for v in target.values()) > 300_001
    now = runtime.state_dict()
    for k, v in target.items():
        assert torch.equal(now[k], v), k
