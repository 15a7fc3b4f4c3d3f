"""policy_node with CurveZMQ keys (defect 7): it talks to an encrypted policy server (real ZMQ, the tiny
policy) only with the server's public key, and a bad key file stops it at start with an error naming
the parameter."""
import pytest

pytest.importorskip("rclpy")
zmq_auth = pytest.importorskip("zmq.auth")
import rclpy  # noqa: E402

from vla_robot.config import ConfigError  # noqa: E402
from vla_robot.nodes.policy_node import PolicyNode  # noqa: E402


def node(ctx, **params):
    overrides = [rclpy.parameter.Parameter(k, value=v) for k, v in params.items()]
    return PolicyNode("policy_node", context=ctx, parameter_overrides=overrides)


def test_curve_keys_reach_the_policy_server(ros_context, tmp_path):
    from vla_robot.policy import load_policy
    from vla_robot.serving.server import PolicyServer

    server_pub, server_secret = zmq_auth.create_certificates(str(tmp_path), "server")
    client_pub, client_secret = zmq_auth.create_certificates(str(tmp_path), "robot")
    allowed = tmp_path / "clients"
    allowed.mkdir()
    (allowed / "robot.key").write_text(open(client_pub).read())
    runtime = load_policy(preset="tiny", seed=0)
    with PolicyServer(runtime, bind="tcp://127.0.0.1:*", weights_bind=None, curve_secret_key=server_secret,
                      curve_authorized_keys=str(allowed)).start() as server:
        n = node(ros_context, policy_server=server.address, curve_server_key=server_pub,
                 curve_client_key=client_secret)
        try:
            assert n.policy_metadata is not None and n.policy_metadata["model"] == "tiny"
        finally:
            n.destroy_node()
        plain = node(ros_context, policy_server=server.address)  # no keys: the server never answers
        try:
            assert plain.policy_metadata is None
        finally:
            plain.destroy_node()


def test_bad_curve_keys_stop_the_node_at_start(ros_context, tmp_path):
    (tmp_path / "junk.key").write_text("not a certificate")
    public, _ = zmq_auth.create_certificates(str(tmp_path), "server")
    with pytest.raises(ConfigError, match=r"'curve_server_key' \(.*missing\.key\).*neither a 40-character Z85 key nor"):
        node(ros_context, curve_server_key=str(tmp_path / "missing.key"))
    with pytest.raises(ConfigError, match=r"'curve_client_key' .*holds no secret key"):
        node(ros_context, curve_server_key=public, curve_client_key=public)
    with pytest.raises(ConfigError, match="curve_client_key needs curve_server_key"):
        node(ros_context, curve_client_key=public)
    with pytest.raises(ConfigError, match="'curve_server_key'"):
        node(ros_context, curve_server_key=str(tmp_path / "junk.key"))
