"""`vla-robot detector train|twin-dataset|predict`: the learned success detector (docs/detector.md).

* ``train``: a detector from the person-labelled episodes of recorded datasets, held out by episode,
  exported to ONNX, with its report (accuracy, calibration, precision-recall; report.png).
* ``twin-dataset``: a small recorded dataset from the MuJoCo twin, labelled by the twin's success check.
* ``predict``: P(success) of each episode of a dataset, on onnxruntime, beside its label.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vla_robot.twin.robots import DEFAULT_ROBOT, ROBOT_NAMES


def detector_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = sub.add_parser("train", help="train a success detector on labelled episodes and export it to ONNX")
    t.add_argument("--dataset", action="append", required=True, metavar="DIR",
                   help="a recorded dataset (repeat for several); its labelled episodes are used")
    t.add_argument("--out", required=True, help="a folder (detector.onnx, detector.json, report/) or an X.onnx path")
    t.add_argument("--camera", action="append", default=None,
                   help="a camera to read (repeat; default: every camera the datasets share)")
    t.add_argument("--seed", type=int, default=0, help="seed of the split, the initial weights and the batches")
    t.add_argument("--steps", type=int, default=None, help="training steps (default 300)")
    t.add_argument("--val-share", type=float, default=None, help="held-out share of the episodes (default 0.25)")
    t.add_argument("--threshold", type=float, default=None, help="P(success) at or above it is success (default 0.5)")
    t.add_argument("--overwrite", action="store_true", help="replace a detector already at --out")
    d = sub.add_parser("twin-dataset", help="record a small labelled dataset from the MuJoCo twin (ground truth)")
    d.add_argument("--out", required=True, help="the dataset folder (created, or resumed)")
    d.add_argument("--episodes", type=int, default=40)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--robot", choices=ROBOT_NAMES, default=DEFAULT_ROBOT)
    d.add_argument("--labelled", type=float, default=1.0,
                   help="share of episodes saved with the twin's label; the rest are unlabelled (truth in meta)")
    r = sub.add_parser("predict", help="P(success) of each episode of a dataset, beside its label")
    r.add_argument("--detector", required=True, help="the detector's folder, .onnx or .json")
    r.add_argument("--dataset", required=True, metavar="DIR")
    r.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    r.add_argument("--json", action="store_true", help="print JSON lines instead of text")


def detector(args) -> int:
    from .runtime import DetectorError

    try:
        if args.action == "train":
            return _train(args)
        if args.action == "twin-dataset":
            return _twin_dataset(args)
        return _predict(args)
    except (DetectorError, ValueError) as e:
        print(f"vla-robot detector {args.action}: {e}", file=sys.stderr)
        return 2


def _train(args) -> int:
    from .train import TrainConfig, train_detector

    overrides = {"steps": args.steps, "val_share": args.val_share, "threshold": args.threshold}
    cfg = TrainConfig(**{k: v for k, v in overrides.items() if v is not None})
    if cfg.steps < 1 or not 0 < cfg.val_share < 1 or not 0 < cfg.threshold < 1:
        raise ValueError(f"--steps must be >= 1, --val-share and --threshold in (0, 1); got {cfg.steps}, "
                         f"{cfg.val_share}, {cfg.threshold}")
    train_detector(args.dataset, args.out, seed=args.seed, cameras=args.camera, config=cfg,
                   overwrite=args.overwrite, progress=sys.stderr.isatty())
    return 0


def _twin_dataset(args) -> int:
    from collections import Counter

    from .synthetic import record_twin_dataset

    truth = record_twin_dataset(args.out, args.episodes, seed=args.seed, robot=args.robot, labelled=args.labelled,
                                progress=sys.stderr.isatty())
    by = Counter((t["mode"], "success" if t["success"] else "failure") for t in truth)
    print(f"{args.out}: {len(truth)} twin episodes, {sum(t['success'] for t in truth)} successes by the twin's check; "
          + ", ".join(f"{m} {s}: {n}" for (m, s), n in sorted(by.items())))
    return 0


def _predict(args) -> int:
    from vla_robot.data.reader import iter_episodes

    from .runtime import SuccessDetector

    det = SuccessDetector.load(args.detector, device=args.device)
    if not Path(args.dataset).is_dir():
        raise ValueError(f"--dataset {args.dataset}: no such folder")
    if not args.json:
        print(f"detector {args.detector} on {det.provider}, threshold {det.threshold:.2f}")
    for ep in iter_episodes(args.dataset, with_frames=False):
        p = det.predict_dataset_episode(ep)
        row = {"episode": ep.index, "p_success": round(p, 4), "detector": "success" if det.is_success(p) else "failure",
               "label": str(ep.record.label)}
        print(json.dumps(row) if args.json else
              f"  episode {row['episode']:>4}: P(success) {p:.3f} -> {row['detector']:<8} (label: {row['label']})")
    return 0
