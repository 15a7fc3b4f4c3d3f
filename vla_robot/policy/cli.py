"""`vla-robot policy inspect DIR | --preset NAME`: describe a policy and run one forward pass."""
from __future__ import annotations

import argparse
import sys
import time


def policy_args(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="policy_command", metavar="ACTION")
    p = sub.add_parser("inspect", help="print the architecture, sizes, cameras and statistics; run one forward pass")
    p.add_argument("checkpoint", nargs="?", help="checkpoint directory (OFT layout)")
    p.add_argument("--preset", help="a preset in models/policy (tiny, oft-7b) instead of a checkpoint")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--norm-key", default="")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-forward", action="store_true", help="only describe (a preset is then built on the meta device, no memory)")


def _count(module) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def _fmt(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"


def available_memory_bytes(device: str) -> int | None:
    """Free memory where the model would be loaded: a CUDA device's free memory, else the host's
    MemAvailable (Linux). None when it cannot be told (then nothing is refused)."""
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return None
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def memory_refusal(name: str, n_params: int, device: str, dtype: str, available: int | None) -> str | None:
    """Why loading ``n_params`` on ``device`` would not fit, with the fix; None when it fits or cannot be told.

    The need is the weights alone (a preset on the CPU is built in float32, then cast) plus 10 % and
    1 GiB for activations and the interpreter: the kernel kills a process that asks for more, silently."""
    if available is None:
        return None
    per_param = 4 if device == "cpu" or dtype == "float32" else 2
    need = int(n_params * per_param * 1.1) + 2**30
    if need <= available:
        return None
    gib = 2**30
    return (f"{name} needs about {need / gib:.1f} GiB to load on {device} ({n_params / 1e9:.2f} B parameters x "
            f"{per_param} bytes, plus headroom); {available / gib:.1f} GiB is available, so it was not loaded. "
            f"Use --no-forward to describe it without loading it, or --device cuda --dtype bfloat16 on a GPU "
            f"with that much free memory.")


def policy(args: argparse.Namespace) -> int:
    if getattr(args, "policy_command", None) != "inspect":
        print("usage: vla-robot policy inspect DIR | --preset NAME", file=sys.stderr)
        return 2
    if bool(args.checkpoint) == bool(args.preset):
        print("vla-robot policy inspect: give a checkpoint directory or --preset NAME (one of them)", file=sys.stderr)
        return 2
    import numpy as np

    from vla_robot.policy.checkpoint import read_model_config
    from vla_robot.policy.runtime import build_model, load_policy, load_preset

    try:
        if args.no_forward:
            cfg = read_model_config(args.checkpoint) if args.checkpoint else load_preset(args.preset)
            model, runtime = build_model(cfg, device="meta"), None
        else:
            cfg = read_model_config(args.checkpoint) if args.checkpoint else load_preset(args.preset)
            n_params = _count(build_model(cfg, device="meta"))  # no memory: shapes only
            refusal = memory_refusal(cfg.name, n_params, args.device, args.dtype, available_memory_bytes(args.device))
            if refusal:
                print(f"vla-robot policy inspect: {refusal}", file=sys.stderr)
                return 1
            t0 = time.perf_counter()
            runtime = load_policy(preset=args.preset, checkpoint=args.checkpoint, device=args.device, dtype=args.dtype,
                                  seed=args.seed, norm_key=args.norm_key)
            load_s = time.perf_counter() - t0
            model, cfg = runtime.model, runtime.cfg
    except (ValueError, FileNotFoundError) as e:
        print(f"vla-robot policy inspect: {e}", file=sys.stderr)
        return 1
    vb = model.vision_backbone
    print(f"policy        {cfg.name} ({'checkpoint ' + str(args.checkpoint) if args.checkpoint else 'preset, random weights'})")
    print(f"vision        {cfg.vision.timm_model_ids[0]} ({_fmt(_count(vb.featurizer))}, {len(vb.featurizer.blocks)} blocks, dim {vb.featurizer.embed_dim})")
    print(f"              + {cfg.vision.timm_model_ids[1]} ({_fmt(_count(vb.fused_featurizer))}, {len(vb.fused_featurizer.blocks)} blocks, dim {vb.fused_featurizer.embed_dim})")
    print(f"              {cfg.vision.image_size} px, {vb.num_patches} patches/image, features of the second-to-last block"
          + (", FiLM on the instruction" if cfg.film else ""))
    print(f"projector     fused 3-layer MLP {vb.embed_dim} -> {4 * vb.embed_dim} -> {cfg.llm.hidden_size} -> {cfg.llm.hidden_size} ({_fmt(_count(model.projector))})")
    print(f"llm           Llama {cfg.llm.num_hidden_layers} layers, hidden {cfg.llm.hidden_size}, vocab {cfg.llm.vocab_size} ({_fmt(_count(model.language_model))})")
    print(f"proprio       {'dim ' + str(cfg.proprio_dim) + ' (' + _fmt(_count(model.proprio_projector)) + ')' if cfg.proprio_dim else 'none'}")
    head = f"L1 regression MLP-ResNet ({_fmt(_count(model.action_head))})" if cfg.head == "l1" else "discrete tokens, 256 bins (ids 31744..31999)"
    print(f"head          {head}")
    print(f"parameters    {_fmt(_count(model))} total")
    print(f"chunk         {cfg.chunk_size} steps x {cfg.action_dim} action dims = {cfg.num_action_tokens} parallel slots")
    print(f"cameras       {', '.join(cfg.cameras)} (in this order)")
    print(f"sequence      {model.num_prefix_tokens} prefix tokens (BOS + patches{' + proprio' if cfg.proprio_dim else ''}) + prompt + {cfg.num_action_tokens} slots + EOS, bidirectional")
    if runtime is None:
        return 0
    stats = runtime.processor.norm_stats or {}
    if stats:
        print(f"norm stats    keys: {', '.join(stats)}; using '{runtime.processor.norm_key}' ({cfg.normalization})")
    else:
        from vla_robot.policy.normalization import identity_statistics

        print("norm stats    none (the forward below shows normalised actions)")
        runtime.set_norm_stats(identity_statistics(cfg.action_dim, cfg.proprio_dim), "identity")
    rng = np.random.default_rng(0)
    obs = {
        "images": {c: rng.integers(0, 256, (cfg.vision.image_size, cfg.vision.image_size, 3), dtype=np.uint8) for c in cfg.cameras},
        "state": np.zeros(cfg.proprio_dim, np.float32),
        "instruction": "pick up the cube",
    }
    runtime.infer([obs])  # warm-up
    t0 = time.perf_counter()
    out = runtime.infer([obs], return_tokens=True)[0]
    dt = time.perf_counter() - t0
    print(f"forward       one dummy observation on {args.device}/{args.dtype}: actions {out['actions'].shape}, {dt * 1e3:.1f} ms (load {load_s:.1f} s)")
    print(f"first action  {np.array2string(out['actions'][0], precision=3)}")
    return 0
