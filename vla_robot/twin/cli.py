"""``vla-robot twin ACTION``: bench, view, excite, sysid, build-models.

    vla-robot twin bench                         physics steps/s, render fps per resolution, mirror rate
    vla-robot twin view --task pick_place        an expert episode as a contact sheet (PNG), headless
    vla-robot twin excite --arm twin --out runs/excite.npz     drive an arm with an identification signal
    vla-robot twin sysid --log runs/excite.npz --out sim2real/sysid_so101.yaml   fit joint damping/armature
    vla-robot twin build-models                  rebuild models/robots/*/meshes (reduced visual meshes)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from vla_robot.twin.robots import DEFAULT_ROBOT, ROBOT_NAMES

ACTIONS = ("bench", "view", "excite", "sysid", "build-models")


def twin_args(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    p = sub.add_parser("bench", help="physics steps/s, render fps per camera resolution, mirror updates/s")
    p.add_argument("--robot", default=DEFAULT_ROBOT, choices=ROBOT_NAMES)
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 224], help="square image sizes to render")
    p.add_argument("--quick", action="store_true", help="shorter timings (noisier)")

    p = sub.add_parser("view", help="render an expert episode as a contact sheet (PNG)")
    p.add_argument("--task", default="reach", choices=["reach", "pick_place"])
    p.add_argument("--robot", default=DEFAULT_ROBOT, choices=ROBOT_NAMES)
    p.add_argument("--start", type=int, default=0, help="start-state id")
    p.add_argument("--cameras", nargs="+", default=["front", "wrist"])
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--frames", type=int, default=8, help="frames in the sheet")
    p.add_argument("--randomization", default="", help="a sim2real/randomization_*.yaml file")
    p.add_argument("--out", default="runs/twin_view.png")

    p = sub.add_parser("excite", help="drive an arm (twin or real) with an identification signal and log it")
    p.add_argument("--arm", default="twin", help="arm backend: twin, lerobot, ... (vla_robot.drivers)")
    p.add_argument("--arm-option", action="append", default=[], metavar="KEY=VALUE",
                   help="backend option (YAML value), repeatable, e.g. robot_type=so101_follower")
    p.add_argument("--robot", default=DEFAULT_ROBOT, choices=ROBOT_NAMES)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--hz", type=float, default=30.0)
    p.add_argument("--amplitude", type=float, default=0.3, help="rad, per joint, around home")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/excite.npz")

    p = sub.add_parser("sysid", help="fit the twin's joint parameters to a logged trajectory (mujoco.sysid)")
    p.add_argument("--log", required=True, help=".npz from 'twin excite' (t, q_cmd, q_meas)")
    p.add_argument("--params", nargs="+", default=["damping", "armature"],
                   choices=["damping", "armature", "frictionloss"])
    p.add_argument("--joints", nargs="*", default=None)
    p.add_argument("--max-iters", type=int, default=50)
    p.add_argument("--out", default="", help="result YAML (default: sim2real/sysid_<robot>.yaml)")

    p = sub.add_parser("build-models", help="rebuild the reduced visual meshes in models/robots/")
    p.add_argument("--robot", nargs="+", default=list(ROBOT_NAMES), choices=ROBOT_NAMES)
    p.add_argument("--ratio", type=float, default=12.0, help="keep about 1/ratio of the triangles")


def twin(args: argparse.Namespace) -> int:
    action = getattr(args, "action", None)
    if action is None:
        print(__doc__.strip())
        return 0
    try:
        return {"bench": _bench, "view": _view, "excite": _excite, "sysid": _sysid,
                "build-models": _build_models}[action](args)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as e:
        print(f"vla-robot twin {action}: {e}", file=sys.stderr)
        return 2


def _bench(args) -> int:
    from vla_robot.twin.bench import run_bench

    run_bench(args.robot, tuple(args.sizes), quick=args.quick)
    return 0


def _view(args) -> int:
    import numpy as np

    from vla_robot.twin.env import make_env

    env = make_env(task=args.task, robot=args.robot, image_size=(args.size, args.size), cameras=tuple(args.cameras),
                   randomization=args.randomization or None)
    try:
        env.reset(start=args.start)
        frames, ok = [env.render()], False
        while not env.done and not ok:
            env.advance(env.expert_action())
            ok = env.success()
            frames.append(env.render())
        pick = np.linspace(0, len(frames) - 1, min(args.frames, len(frames))).round().astype(int)
        sheet = np.concatenate([np.concatenate([frames[i][c] for c in env.cameras], axis=0) for i in pick], axis=1)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        plt.imsave(out, sheet)
        print(f"{env.instruction!r} (start {env.start_condition}): expert {'succeeded' if ok else 'FAILED'} "
              f"in {env.steps} steps ({env.steps / env.config.control_hz:.2f} s); sheet: {out}")
        return 0 if ok else 1
    finally:
        env.close()


def _excite(args) -> int:
    import numpy as np

    from vla_robot.config import parse_override
    from vla_robot.drivers import make_arm
    from vla_robot.twin.sysid import JointLog, excitation

    options = dict(parse_override(o) for o in args.arm_option)
    if args.arm == "twin":
        options.setdefault("realtime", True)
        options.setdefault("twin", {"robot": args.robot, "control_hz": args.hz, "cameras": ["front"],
                                    "image_size": [32, 32]})
    t, q = excitation(args.robot, args.duration, args.hz, seed=args.seed, amplitude=args.amplitude)
    arm = make_arm(args.arm, options)
    try:
        q_start, _, _ = arm.read()
        # glide to the excitation's first pose, then play it at the control rate
        for k in range(int(args.hz)):
            arm.command(q_start + (q[0] - q_start) * (k + 1) / int(args.hz))
            time.sleep(1.0 / args.hz)
        times, meas = [], []
        t0 = time.monotonic()
        for i, target in enumerate(q):
            pos, _, stamp = arm.read()
            times.append(stamp)
            meas.append(pos)
            arm.command(target)
            delay = t0 + (i + 1) / args.hz - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    finally:
        arm.close()
    times = np.asarray(times)
    times = times - times[0] + np.arange(len(times)) * 1e-9  # strictly increasing even on a coarse clock
    path = JointLog(times, q, np.asarray(meas), args.robot).save(args.out)
    print(f"logged {len(q)} samples ({args.duration:g} s at {args.hz:g} Hz) from arm '{args.arm}' -> {path}")
    return 0


def _sysid(args) -> int:
    from vla_robot.twin.sysid import JointLog, fit

    log = JointLog.load(args.log)
    print(f"fitting {', '.join(args.params)} of {log.robot} joints to {len(log.t)} samples ...", flush=True)
    result = fit(log, params=tuple(args.params), joints=args.joints, max_iters=args.max_iters)
    out = Path(args.out or f"sim2real/sysid_{log.robot}.yaml")
    result.save(out)
    for j, vals in result.values.items():
        text = "  ".join(f"{p} {v:.4g} (model {result.nominal[j][p]:.4g})" for p, v in vals.items())
        print(f"  {j:14s} {text}")
    print(f"cost {result.cost:.3g} after {result.seconds:.1f} s -> {out}")
    _plot_fit(log, out, result)
    return 0


def _plot_fit(log, out: Path, result) -> None:
    """Measured vs simulated (model and fitted parameters) joint trajectories, next to the result."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from vla_robot.twin.env import make_env
    from vla_robot.twin.sysid import record_log

    period = float(np.median(np.diff(log.t)))
    sims = {}
    for label, sysid_file in (("model", ""), ("fitted", str(out))):
        env = make_env(task="reach", robot=log.robot, image_size=(16, 16), cameras=("front",),
                       control_hz=1.0 / period, sysid_file=sysid_file)
        sims[label] = record_log(env, log.q_cmd, log.t).q_meas
        env.close()
    joints = list(result.values)
    from vla_robot.twin.robots import robot_spec

    names = list(robot_spec(log.robot).joint_names)
    fig, axes = plt.subplots(len(joints), 1, figsize=(8, 2.2 * len(joints)), sharex=True, squeeze=False)
    for ax, j in zip(axes[:, 0], joints):
        c = names.index(j)
        ax.plot(log.t, log.q_meas[:, c], "k-", lw=2, label="measured")
        ax.plot(log.t, sims["model"][:, c], "C1--", label="twin, model parameters")
        ax.plot(log.t, sims["fitted"][:, c], "C0-", label="twin, fitted parameters")
        ax.plot(log.t, log.q_cmd[:, c], "C7:", lw=1, label="command")
        ax.set_ylabel(f"{j} [rad]")
    axes[0, 0].legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("time [s]")
    fig.tight_layout()
    png = out.with_suffix(".png")
    fig.savefig(png, dpi=90)
    plt.close(fig)
    print(f"plot: {png}")


def _build_models(args) -> int:
    from vla_robot.twin.models import build_reduced_meshes

    for robot in args.robot:
        files = build_reduced_meshes(robot, ratio=args.ratio, progress=True)
        print(f"{robot}: {len(files)} reduced meshes in {files[0].parent}")
    return 0
