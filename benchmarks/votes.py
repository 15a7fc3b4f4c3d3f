"""Votes vs one detector: how many episodes the votes label without a person, and how accurately.

On twin-recorded episodes whose ground truth is the twin's own success check
(:func:`vla_robot.detector.record_twin_dataset`: the scripted expert, and the expert that stops early
or aims a little off), one run:

1. records a training set and a held-out set (different seeds: no episode is in both; kept in
   ``--out`` and reused by the next run with the same sizes);
2. trains ``--detectors`` success detectors on the training set (``vla-robot detector train``'s
   code, seeds 0..n-1; ``--cameras`` gives each its cameras in turn, e.g. ``front+wrist,front,wrist``);
3. runs each, on onnxruntime, on every held-out episode, and prints beside each other:

   * the baseline: one detector (seed 0) at threshold 0.5: labels everything, at its accuracy;
   * the votes (:func:`vla_robot.detector.votes.vote`) at ``--threshold`` / ``--quorum`` (the episode
     manager's ``vote_threshold`` / ``vote_quorum``): the share labelled alone and the accuracy of
     those labels; the rest would go to the person;
   * the same for a few other thresholds and quorums, so the trade-off is visible, and a plot of it
     (``OUT/votes.png``).

``--train-dataset DIR --test-dataset DIR`` measure on datasets already recorded instead (e.g. two
rehearsals' datasets, labelled by the stand-in person from the twin's success check: the policy's
own episodes in the stand-in world, where the rehearsal with votes runs these very detectors).

The issue's goal: >= 70% of episodes labelled alone at >= 97% accuracy. The printed figures are what
this run reaches; ``OUT/votes.json`` keeps them with every held-out P(success).

    .venv/bin/python benchmarks/votes.py [--train 80] [--test 80] [--detectors 3] [--steps 150]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vla_robot.detector.votes import VoteConfig, vote  # noqa: E402

GOAL_ALONE, GOAL_ACCURACY = 0.70, 0.97
SWEEP = [(0.8, 2), (0.85, 2), (0.9, 2), (0.95, 2), (0.9, 3), (0.95, 3)]


def dataset(root: Path, episodes: int, seed: int) -> Path:
    """A twin dataset of ``episodes`` episodes at ``root`` (recorded once; reused when it is complete)."""
    from vla_robot.data.reader import read_journal
    from vla_robot.detector import record_twin_dataset

    if root.is_dir() and len(read_journal(root)) == episodes:
        return root
    if root.exists():
        import shutil

        shutil.rmtree(root)
    record_twin_dataset(root, episodes=episodes, seed=seed, progress=True)
    return root


def train(out: Path, train_root: Path, n: int, cameras: list[list[str]], steps: int) -> list[Path]:
    """n detectors (seeds 0..n-1, cameras in turn), trained once; a finished one is reused."""
    from vla_robot.detector import load_examples, train_detector
    from vla_robot.detector.train import TrainConfig

    cfg = TrainConfig(steps=steps)
    examples: dict[tuple[str, ...], object] = {}
    paths = []
    for seed in range(n):
        cams = cameras[seed % len(cameras)]
        path = out / f"detector_{'+'.join(cams)}_seed{seed}"
        if not (path / "detector.json").is_file():
            key = tuple(cams)
            if key not in examples:  # read each camera set's inputs once
                examples[key] = load_examples([train_root], cams, cfg, progress=False)
            train_detector([train_root], path, seed=seed, cameras=cams, config=cfg, examples=examples[key],
                           overwrite=True, progress=True, log=lambda text: print(text, flush=True))
        paths.append(path)
    return paths


def held_out_probabilities(paths: list[Path], test_root: Path) -> tuple[np.ndarray, np.ndarray]:
    """P(success) [detectors, episodes] on onnxruntime, and the truth [episodes] (the twin's check)."""
    from vla_robot.detector import SuccessDetector, load_examples
    from vla_robot.detector.train import TrainConfig

    dets = [SuccessDetector.load(p) for p in paths]
    cache: dict[tuple[str, ...], object] = {}
    probs, truth = [], None
    for det in dets:
        spec = det.spec
        key = tuple(spec.cameras)
        if key not in cache:
            cfg = TrainConfig(image_size=spec.image_size, from_end=spec.from_end, fractions=spec.fractions)
            cache[key] = load_examples([test_root], list(spec.cameras), cfg, progress=False)
        ex = cache[key]
        truth = ex.y if truth is None else truth
        if not np.array_equal(truth, ex.y):
            raise RuntimeError("the held-out episodes differ between camera sets")
        probs.append(det.predict_features(ex.batch))
    return np.array(probs), np.asarray(truth)


def score(labels: list, truth: np.ndarray) -> dict:
    """Share labelled (not None) and the accuracy of those labels."""
    done = [(lab, t) for lab, t in zip(labels, truth) if lab is not None]
    right = sum(int(lab) == int(t) for lab, t in done)
    return {"alone": len(done) / len(truth), "accuracy": right / len(done) if done else float("nan"),
            "labelled": len(done), "right": right, "episodes": len(truth)}


def votes_score(probs: np.ndarray, names: list[str], truth: np.ndarray, rule: VoteConfig) -> dict:
    labels = []
    for col in probs.T:
        v = vote(dict(zip(names, map(float, col))), rule)
        labels.append(None if v.label is None else v.label.reward)
    return score(labels, truth)


def report(probs: np.ndarray, names: list[str], truth: np.ndarray, threshold: float, quorum: int) -> dict:
    rows = {}
    for i, name in enumerate(names):  # the first is the baseline; the others show how much detectors differ
        rows[f"{'baseline: ' if i == 0 else ''}{Path(name).name.removeprefix('detector_')} at 0.5"] = score(
            [int(p >= 0.5) for p in probs[i]], truth)
    rows[f"votes t={threshold:g} q={quorum} (config)"] = votes_score(probs, names, truth, VoteConfig(threshold, quorum))
    for t, q in SWEEP:
        if q <= len(names) and (t, q) != (threshold, quorum):
            rows[f"votes t={t:g} q={q}"] = votes_score(probs, names, truth, VoteConfig(t, q))
    return rows


def plot(probs: np.ndarray, names: list[str], truth: np.ndarray, path: Path) -> None:
    """Accuracy of the labels against the share labelled alone, as the threshold rises, per quorum."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for q in range(1, len(names) + 1):
        pts = [votes_score(probs, names, truth, VoteConfig(float(t), q)) for t in np.linspace(0.55, 0.995, 40)]
        ax.plot([p["alone"] for p in pts], [p["accuracy"] for p in pts], marker=".", label=f"votes, quorum {q}")
    base = score([int(p >= 0.5) for p in probs[0]], truth)
    ax.plot([base["alone"]], [base["accuracy"]], "k*", ms=12, label="one detector at 0.5")
    ax.axvline(GOAL_ALONE, color="g", ls=":", lw=1)
    ax.axhline(GOAL_ACCURACY, color="g", ls=":", lw=1, label="goal (>= 70% alone at >= 97%)")
    ax.set_xlabel("share of held-out episodes labelled without a person")
    ax.set_ylabel("accuracy of those labels")
    ax.set_title(f"{len(names)} detectors on {len(truth)} held-out episodes")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/bench_votes")
    ap.add_argument("--train", type=int, default=80, help="twin episodes to train the detectors on")
    ap.add_argument("--test", type=int, default=80, help="held-out twin episodes the votes are measured on")
    ap.add_argument("--train-dataset", default="", help="train on this recorded dataset instead of new twin episodes")
    ap.add_argument("--test-dataset", default="", help="measure on this recorded dataset instead of new twin episodes")
    ap.add_argument("--detectors", type=int, default=3)
    ap.add_argument("--cameras", default="front+wrist",
                    help="comma-separated camera sets, given to the detectors in turn (e.g. front+wrist,front,wrist)")
    ap.add_argument("--steps", type=int, default=150, help="training steps per detector")
    ap.add_argument("--threshold", type=float, default=0.9, help="vote_threshold")
    ap.add_argument("--quorum", type=int, default=2, help="vote_quorum")
    args = ap.parse_args()
    rule = VoteConfig(args.threshold, args.quorum)
    rule.validate()
    if args.quorum > args.detectors:
        ap.error(f"--quorum {args.quorum} needs at least that many --detectors (got {args.detectors})")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    train_root = Path(args.train_dataset) if args.train_dataset else dataset(out / f"train_{args.train}", args.train, 100)
    test_root = Path(args.test_dataset) if args.test_dataset else dataset(out / f"test_{args.test}", args.test, 200)
    cameras = [c.split("+") for c in args.cameras.split(",")]
    paths = train(out, train_root, args.detectors, cameras, args.steps)
    probs, truth = held_out_probabilities(paths, test_root)
    names = [str(p) for p in paths]
    rows = report(probs, names, truth, args.threshold, args.quorum)
    plot(probs, names, truth, out / "votes.png")
    print(f"\n{len(truth)} held-out episodes of {test_root} ({int(truth.sum())} successes by the twin's check); "
          f"{args.detectors} detectors trained on {train_root} ({args.steps} steps each, cameras {args.cameras})")
    print(f"{'':44s} {'alone':>7s} {'accuracy':>9s}  labelled")
    for name, r in rows.items():
        print(f"{name:44s} {100 * r['alone']:6.1f}% {100 * r['accuracy']:8.1f}%  {r['right']}/{r['labelled']} right")
    cfg_row = rows[f"votes t={args.threshold:g} q={args.quorum} (config)"]
    met = cfg_row["alone"] >= GOAL_ALONE and cfg_row["accuracy"] >= GOAL_ACCURACY
    print(f"goal >= {GOAL_ALONE:.0%} alone at >= {GOAL_ACCURACY:.0%}: {'met' if met else 'not met'} by the configured "
          f"votes ({100 * cfg_row['alone']:.1f}% at {100 * cfg_row['accuracy']:.1f}%); plot {out / 'votes.png'}; "
          f"{time.monotonic() - t0:.0f} s")
    (out / "votes.json").write_text(json.dumps({"args": vars(args), "rows": rows, "detectors": names,
                                                "truth": truth.tolist(), "p_success": probs.tolist()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
