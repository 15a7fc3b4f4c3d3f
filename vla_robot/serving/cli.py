"""``vla-robot serve`` and ``vla-robot keygen``.

::

    vla-robot serve --preset tiny                        # tcp://127.0.0.1:5555, weights on :5556
    vla-robot serve --checkpoint runs/ckpt --http-port 8777 --device cuda --dtype bfloat16
    vla-robot keygen keys/ --name server                 # keys/server.key, keys/server.key_secret
    vla-robot serve --preset tiny --bind tcp://0.0.0.0:5555 --curve-secret-key keys/server.key_secret
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
from pathlib import Path

from vla_robot.config import ConfigError, from_dict, load_node_config
from vla_robot.serving.config import ServerConfig

SECTION = "policy_server"


def serve_args(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--preset", help="model preset (e.g. tiny)")
    src.add_argument("--checkpoint", help="an OpenVLA-OFT checkpoint folder")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--seed", type=int, default=None, help="seed of a preset's random weights")
    parser.add_argument("--config", help=f"ROS 2 parameter YAML with a '{SECTION}' section (flags override it)")
    flags = {
        "bind": (str, "ZMQ endpoint for requests"),
        "weights_bind": (str, "ZMQ endpoint for weight pushes from the learner ('' = off)"),
        "http_port": (int, "OFT-compatible POST /act on this port (OFT uses 8777; -1 = off)"),
        "http_host": (str, "HTTP listen address"),
        "max_batch": (int, "requests per forward pass"),
        "max_wait_ms": (float, "how long a batch waits for other active clients"),
        "max_queue": (int, "queued requests beyond this are refused as overloaded"),
        "max_message_bytes": (int, "largest request accepted"),
        "curve_secret_key": (str, "server NAME.key_secret for CurveZMQ (see `vla-robot keygen`)"),
        "curve_authorized_keys": (str, "folder of client NAME.key files allowed to connect"),
    }
    defaults = ServerConfig()
    for name, (tp, text) in flags.items():
        parser.add_argument("--" + name.replace("_", "-"), type=tp, default=None,
                            help=f"{text} (default: {getattr(defaults, name)!r})")
    parser.add_argument("--insecure", dest="allow_insecure_remote", action="store_true", default=None,
                        help="allow binding beyond loopback without CurveZMQ")


def server_config(args: argparse.Namespace) -> ServerConfig:
    """The server config from ``--config`` (if any) with the flags on top."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(ServerConfig)
             if getattr(args, f.name, None) is not None}
    if args.config:
        return load_node_config(ServerConfig, args.config, SECTION, overrides=given)
    return from_dict(ServerConfig, given, source="command line")


def serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        cfg = server_config(args)
    except ConfigError as e:
        print(f"vla-robot serve: {e}", file=sys.stderr)
        return 2
    if not args.preset and not args.checkpoint:
        print("vla-robot serve: give --preset NAME (e.g. tiny) or --checkpoint DIR", file=sys.stderr)
        return 2
    from vla_robot.policy import load_policy
    from vla_robot.serving.server import PolicyServer

    try:
        runtime = load_policy(preset=args.preset, checkpoint=args.checkpoint, device=args.device, dtype=args.dtype,
                              seed=args.seed)
    except (ValueError, FileNotFoundError) as e:  # CheckpointError is a ValueError: the message says what is wrong
        hint = ("; --checkpoint takes a folder in the OpenVLA-OFT layout (config.json, safetensors, "
                "dataset_statistics.json), or serve a preset with --preset tiny") if args.checkpoint else ""
        print(f"vla-robot serve: {e}{hint}", file=sys.stderr)
        return 2
    runtime.configure_serving(cfg.serving)  # CUDA graphs per batch bucket on a GPU (serving.graphs)
    try:
        server = PolicyServer(
            runtime, bind=cfg.bind, weights_bind=cfg.weights_bind or None, max_batch=cfg.max_batch,
            max_wait_ms=cfg.max_wait_ms, max_queue=cfg.max_queue, max_message_bytes=cfg.max_message_bytes,
            http_port=None if cfg.http_port < 0 else cfg.http_port, http_host=cfg.http_host,
            curve_secret_key=cfg.curve_secret_key or None, curve_authorized_keys=cfg.curve_authorized_keys or None,
            allow_insecure_remote=cfg.allow_insecure_remote,
        ).start()
    except (ValueError, OSError) as e:
        print(f"vla-robot serve: {e}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` stops as cleanly as Ctrl-C
    try:  # the ready line is printed inside: a Ctrl-C right after it must still stop cleanly
        _print_ready(server)
        server.serve_forever()
    except KeyboardInterrupt:
        server.stop()
    return 0


def _print_ready(server) -> None:
    meta = server.metadata()
    print(f"serving {meta.get('model')} v{meta['version']} on {server.address}"
          + (f", weights on {server.weights_address}" if server.weights_address else "")
          + (f", OFT HTTP on {server.http_url}/act" if server.http_url else "")
          + f"; cameras {meta['cameras']}, chunk {meta['chunk_size']}x{meta['action_dim']}. Ctrl-C stops.",
          flush=True)


def keygen_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", help="folder to write NAME.key (public) and NAME.key_secret into")
    parser.add_argument("--name", default="server", help="key name: 'server', or a robot's name for client keys")
    parser.add_argument("--force", action="store_true", help="overwrite an existing key pair")


def keygen(args: argparse.Namespace) -> int:
    import zmq
    import zmq.auth

    if not zmq.has("curve"):
        print("vla-robot keygen: this libzmq was built without CurveZMQ", file=sys.stderr)
        return 2
    folder = Path(args.directory)
    public, secret = folder / f"{args.name}.key", folder / f"{args.name}.key_secret"
    if (public.exists() or secret.exists()) and not args.force:
        print(f"vla-robot keygen: {public} or {secret} exists; pass --force to replace it", file=sys.stderr)
        return 2
    folder.mkdir(parents=True, exist_ok=True)
    zmq.auth.create_certificates(str(folder), args.name)
    os.chmod(secret, 0o600)
    key, _ = zmq.auth.load_certificate(str(public))
    print(f"wrote {public} (give to clients) and {secret} (keep private, mode 600); public key {key.decode()}")
    return 0
