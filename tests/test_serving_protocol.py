"""The wire format on its own: array frames, request checking, and the light client import."""
import subprocess
import sys

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from vla_robot.serving import protocol
from vla_robot.serving.protocol import ProtocolError

META = {"cameras": ["front", "wrist"], "proprio_dim": 6, "action_dim": 6, "chunk_size": 8}


def obs(**changes):
    o = {
        "images": {"front": np.zeros((56, 56, 3), np.uint8), "wrist": np.full((48, 64, 3), 7, np.uint8)},
        "state": np.arange(6, dtype=np.float32),
        "instruction": "pick up the cube",
    }
    o.update(changes)
    return o


def roundtrip(header):
    frames = protocol.pack(header)
    return protocol.unpack([bytes(memoryview(f).cast("B")) for f in frames])


dtypes = st.sampled_from(["u1", "i1", "<u2", "<i2", "<i4", "<u4", "<i8", "<f2", "<f4", "<f8", "?"])


@settings(max_examples=60, deadline=None)
@given(arrays=st.lists(hnp.arrays(dtypes, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)), max_size=4),
       text=st.text(max_size=20), number=st.integers(-(2**62), 2**62))
def test_arrays_and_values_survive_the_round_trip(arrays, text, number):
    header = {"arrays": arrays, "nested": {"t": text, "n": number, "a": arrays[:1]}}
    out = roundtrip(header)
    assert len(out["arrays"]) == len(arrays)
    for a, b in zip(arrays, out["arrays"]):
        assert b.dtype == a.dtype and b.shape == a.shape
        np.testing.assert_array_equal(a, b)
    assert out["nested"]["t"] == text and out["nested"]["n"] == number


def test_arrays_travel_as_raw_frames_not_inside_the_header():
    img = np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    frames = protocol.pack({"img": img, "s": np.zeros(8, np.float32)})
    assert len(frames) == 3 and len(frames[0]) < 100
    assert memoryview(frames[1]).nbytes == img.nbytes
    out = protocol.unpack(frames)
    assert np.shares_memory(out["img"], frames[1]) or np.array_equal(out["img"], img)


def test_non_contiguous_and_refused_dtypes():
    a = np.arange(12, dtype=np.float32).reshape(3, 4).T
    np.testing.assert_array_equal(roundtrip({"a": a})["a"], a)
    with pytest.raises(ValueError, match="cannot be sent"):
        protocol.pack({"a": np.array([object()], dtype=object)})
    with pytest.raises(ValueError, match="big-endian"):
        protocol.pack({"a": np.zeros(3, ">f4")})
    with pytest.raises(TypeError, match="cannot encode set"):
        protocol.pack({"a": {1, 2}})


@pytest.mark.parametrize(
    "frames, match",
    [
        ([], "empty message"),
        ([b"\xc1garbage"], "not valid msgpack"),
        ([msgpack.packb([1, 2])], "must be a msgpack map"),
        ([msgpack.packb({"a": msgpack.ExtType(7, b"x")})], "unknown msgpack extension"),
        ([msgpack.packb({"a": msgpack.ExtType(1, b"\x93")})], "array descriptor"),
        ([msgpack.packb({"a": msgpack.ExtType(1, msgpack.packb(["|O", [1], 1]))}), b"12345678"], "dtype '\\|O' is not allowed"),
        ([msgpack.packb({"a": msgpack.ExtType(1, msgpack.packb(["<f4", [-1], 1]))}), b""], "non-negative"),
        ([msgpack.packb({"a": msgpack.ExtType(1, msgpack.packb(["<f4", [3], 2]))}), b"x" * 12], "frame index 2"),
        ([msgpack.packb({"a": msgpack.ExtType(1, msgpack.packb(["<f4", [3], 1]))}), b"x" * 11], "has 11 bytes"),
        ([msgpack.packb({"a": 1}), b"stray"], "disagree"),
        ([msgpack.packb({1: 1})], "not valid msgpack"),
    ],
)
def test_malformed_messages_name_the_problem(frames, match):
    with pytest.raises(ProtocolError, match=match) as e:
        protocol.unpack(frames)
    assert e.value.code == "bad_message"


def test_size_limit():
    frames = protocol.pack({"a": np.zeros(1000, np.uint8)})
    with pytest.raises(ProtocolError, match="at most 500") as e:
        protocol.unpack(frames, max_bytes=500)
    assert e.value.code == "too_large"


def test_a_good_act_request_is_normalised():
    req = protocol.parse_request(roundtrip(protocol.request("act", 5, obs(state=np.arange(6.0)), {"mode": "sample", "temperature": 2})), META)
    assert req.type == "act" and req.id == 5
    assert list(req.obs["images"]) == ["front", "wrist"]
    assert req.obs["state"].dtype == np.float32
    assert req.options.mode == "sample" and req.options.temperature == 2.0 and not req.options.return_tokens
    # requests whose options match can share a forward pass; greedy ignores the temperature
    assert protocol.ActOptions("greedy", 1.0).key() == protocol.ActOptions("greedy", 2.0).key()
    assert protocol.ActOptions("sample", 1.0).key() != protocol.ActOptions("sample", 2.0).key()
    # a seed is per request (its own generator), so seeded requests still share a forward pass
    seeded = protocol.parse_request(roundtrip(protocol.request("act", 6, obs(), {"mode": "sample", "seed": 2**40})), META)
    assert seeded.options.seed == 2**40 and seeded.options.key() == protocol.ActOptions("sample", 1.6).key()
    assert protocol.parse_request(roundtrip(protocol.request("act", 7, obs(), {"seed": None})), META).options.seed is None


@pytest.mark.parametrize(
    "header, code, match",
    [
        ({"type": "ping", "id": 1}, "bad_request", "protocol version"),
        ({"v": 2, "type": "ping", "id": 1}, "unsupported_version", "speaks protocol 2"),
        ({"v": 1, "type": "ping", "id": -3}, "bad_request", "'id'"),
        ({"v": 1, "type": "dance", "id": 1}, "bad_request", "expected one of metadata, ping, act"),
        ({"v": 1, "type": "ping", "id": 1, "extra": 0}, "bad_request", "unknown field"),
        ({"v": 1, "type": "act", "id": 1}, "bad_request", "needs 'obs'"),
        ({"v": 1, "type": "act", "id": 1, "obs": obs(state=np.array([np.nan] * 6))}, "bad_request", "non-finite entries at \\[0"),
        ({"v": 1, "type": "act", "id": 1, "obs": obs(state=np.zeros(5))}, "bad_request", "proprio_dim=6"),
        ({"v": 1, "type": "act", "id": 1, "obs": obs(state=[1.0] * 6)}, "bad_request", "1-D float array"),
        ({"v": 1, "type": "act", "id": 1, "obs": obs(images={"front": np.zeros((8, 8, 3), np.uint8)})}, "bad_request", "missing \\['wrist'\\]"),
        ({"v": 1, "type": "act", "id": 1, "obs": obs(images={"front": np.zeros((8, 8, 3), np.uint8), "wrist": np.zeros((8, 8), np.uint8)})}, "bad_request", "image 'wrist' is uint8 \\[8, 8\\]"),
        ({"v": 1, "type": "act", "id": 1, "obs": obs(images={"front": np.zeros((8, 8, 3), np.float32), "wrist": np.zeros((8, 8, 3), np.uint8)})}, "bad_request", "expected uint8 HxWx3"),
        ({"v": 1, "type": "act", "id": 1, "obs": obs(instruction=3)}, "bad_request", "'instruction' is a int"),
        ({"v": 1, "type": "act", "id": 1, "obs": {**obs(), "depth": 1}}, "bad_request", "unknown observation field"),
        ({"v": 1, "type": "act", "id": 1, "obs": obs(), "options": {"mode": "beam"}}, "bad_request", "'greedy' or 'sample'"),
        ({"v": 1, "type": "act", "id": 1, "obs": obs(), "options": {"temperature": 0}}, "bad_request", "temperature"),
        ({"v": 1, "type": "act", "id": 1, "obs": obs(), "options": {"beam_width": 4}}, "bad_request", "unknown option"),
        ({"v": 1, "type": "act", "id": 1, "obs": obs(), "options": {"seed": -1}}, "bad_request", "'seed' is -1; expected an integer"),
        ({"v": 1, "type": "act", "id": 1, "obs": obs(), "options": {"seed": True}}, "bad_request", "'seed' is True"),
        ({"v": 1, "type": "act", "id": 1, "obs": obs(), "options": {"seed": 1.5}}, "bad_request", "'seed' is 1.5"),
    ],
)
def test_each_bad_request_gets_its_own_error(header, code, match):
    with pytest.raises(ProtocolError, match=match) as e:
        protocol.parse_request(header, META)
    assert e.value.code == code


def test_client_module_stays_light():
    """The robot PC needs no torch, no server: of the policy package only the interface (standard library)."""
    code = (
        "import sys; import vla_robot.serving.client, vla_robot.serving; "
        "print(sorted(m for m in sys.modules if m in ('torch', 'fastapi', 'rclpy', 'vla_robot.serving.server') "
        "or m.startswith('vla_robot.policy.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['vla_robot.policy.interface']"


def test_publisher_and_client_refuse_bad_arguments_before_sending():
    from vla_robot.serving.client import PolicyClient
    from vla_robot.serving.weights import WeightPublisher

    with WeightPublisher("tcp://127.0.0.1:9", timeout_s=0.1) as pub:  # nothing listens: nothing may be sent
        with pytest.raises(ValueError, match="non-empty mapping"):
            pub.push({}, 1)
        with pytest.raises(ValueError, match="non-negative integer"):
            pub.push({"w": np.zeros(2, np.float32)}, -1)
        with pytest.raises(ValueError, match="'w' is a str; expected a torch tensor or numpy array"):
            pub.push({"w": "weights"}, 1)
    with pytest.raises(ValueError, match="part_bytes"):
        WeightPublisher("tcp://127.0.0.1:9", part_bytes=0)
    with PolicyClient("tcp://127.0.0.1:9", timeout_s=0.1) as c:
        with pytest.raises(ValueError, match="observation must be a dict"):
            c.submit([1, 2, 3])
        assert c.pending == 0
    with pytest.raises(ValueError, match="timeout_s must be > 0"):
        PolicyClient("tcp://127.0.0.1:9", timeout_s=0)


def test_server_config_names_bad_values():
    from vla_robot.config import ConfigError, from_dict
    from vla_robot.serving.config import ServerConfig

    assert from_dict(ServerConfig, {"max_batch": 4}).max_batch == 4
    for data, match in [
        ({"max_batch": 0}, "max_batch must be >= 1"),
        ({"bind": "127.0.0.1:5555"}, "bind must be a ZMQ endpoint"),
        ({"http_port": 70000}, "http_port must be -1"),
        ({"max_wait_ms": -1}, "max_wait_ms"),
        ({"curve_authorized_keys": "keys/"}, "needs curve_secret_key"),
        ({"max_batch": "8"}, "expected an integer"),
    ]:
        with pytest.raises(ConfigError, match=match):
            from_dict(ServerConfig, data)


def test_loopback_detection():
    from vla_robot.serving.server import is_loopback

    assert is_loopback("tcp://127.0.0.1:5555") and is_loopback("tcp://localhost:*") and is_loopback("ipc:///tmp/x")
    assert is_loopback("tcp://[::1]:5555")
    assert not is_loopback("tcp://0.0.0.0:5555") and not is_loopback("tcp://*:5555") and not is_loopback("tcp://10.0.0.2:1")


@pytest.mark.parametrize("part_bytes", [1, 7, 16, 24, 10_000])
def test_weight_parts_reassemble_exactly(part_bytes):
    """Publisher and receiver over the real wire encoding (no socket): empty, 0-d, exact-fit, split tensors."""
    from vla_robot.serving.weights import WeightPublisher, WeightReceiver

    rng = np.random.default_rng(0)
    state = {
        "a": rng.standard_normal((4, 2)).astype(np.float32),  # 32 bytes
        "empty": np.zeros((0, 3), np.float32),
        "scalar": np.array(2.5, np.float64),
        "ints": np.arange(5, dtype=np.int64),
        "flags": np.array([True, False, True]),
        "tail_empty": np.zeros(0, np.uint8),
    }
    receiver = WeightReceiver()
    updates = []

    def call(msg):
        frames = protocol.pack({"v": protocol.PROTOCOL_VERSION, "id": 1, **msg})
        reply, update = receiver.handle(protocol.unpack([bytes(memoryview(f).cast("B")) if not isinstance(f, bytes) else f
                                                         for f in frames]))
        assert reply["type"] != "error", reply["message"]
        if update is not None:
            updates.append(update)
        return reply

    pub = WeightPublisher("tcp://127.0.0.1:9", part_bytes=part_bytes)
    pub._call = call
    ack = pub.push(state, 4, delta=True)
    pub.close()
    assert ack["bytes"] == sum(a.nbytes for a in state.values())
    (got, version, delta, lora_base), = updates
    assert version == 4 and delta is True and lora_base is None and set(got) == set(state)
    for k, a in state.items():
        assert tuple(got[k].shape) == a.shape
        np.testing.assert_array_equal(got[k].numpy(), a)
