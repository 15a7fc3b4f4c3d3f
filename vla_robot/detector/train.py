"""Training a success detector on the person-labelled episodes of recorded datasets.

1. :func:`load_examples`: every labelled episode (the journal's label, relabel log applied; unlabelled
   ones are skipped and counted) becomes one detector input (:mod:`vla_robot.detector.features`).
2. :func:`split_by_episode`: a held-out share of *episodes* (stratified by label), never of frames:
   an episode's frames are all on one side, so the held-out figures are about unseen episodes.
3. :func:`fit`: the :class:`~vla_robot.detector.model.DetectorNet`, Adam, binary cross-entropy,
   random-shift augmentation (a few pixels: the camera mount is never exactly where it was).
4. The held-out figures (:mod:`vla_robot.detector.metrics`), the export to ONNX and the files of
   :func:`vla_robot.detector.runtime.detector_paths`: detector.onnx + detector.json (sidecar),
   detector.pt (torch weights, for the parity benchmark), report/ (report.json, summary.txt, report.png).

The exported model is the one trained on the training split, so the report describes it.
"""
from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import metrics
from .features import INPUTS, FeatureSpec, episode_features, stack
from .model import DetectorNet
from .runtime import FORMAT, OUTPUT, DetectorError, detector_paths, sha256

__all__ = ["TrainConfig", "Examples", "load_examples", "split_by_episode", "fit", "train_detector", "export_onnx",
           "load_torch"]


@dataclass
class TrainConfig:
    """Hyper-parameters of :func:`train_detector` (defaults: ~10-30 s on a 2-core CPU for 40 episodes)."""

    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    val_share: float = 0.25  # held-out share of the episodes (by episode, stratified by label)
    threshold: float = 0.5  # P(success) at or above it: success
    shift: int = 4  # random-shift augmentation, pixels
    smoothing: float = 0.0  # label smoothing: targets eps/2 and 1 - eps/2
    width: int = 32  # conv channels of the trunk
    hidden: int = 64
    image_size: tuple[int, int] = (64, 64)
    from_end: tuple[int, ...] = (0, 2)
    fractions: tuple[float, ...] = (0.25, 0.5)
    # torch threads while training: the model is small, and on a loaded 2-core box two threads cost 4x the
    # CPU of one per step (measured: 0.33 s against 0.074 s for a batch of 32), for a slower wall clock
    threads: int = 1


@dataclass
class Examples:
    """Detector inputs of labelled episodes: ``keys[i]`` is (dataset, episode index), ``y[i]`` 1/0."""

    spec: FeatureSpec
    keys: list[tuple[str, int]]
    y: np.ndarray
    batch: dict[str, np.ndarray]
    skipped_unlabelled: int = 0
    per_dataset: dict[str, int] = field(default_factory=dict)

    def take(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        return {k: self.batch[k][idx] for k in INPUTS}


def _dataset_schema(root: Path):
    from vla_robot.data import schema as S
    from vla_robot.data.reader import dataset_info

    if not root.is_dir():
        raise DetectorError(f"--dataset {root}: no such folder (expected a recorded LeRobotDataset, e.g. "
                            "from vla-robot record or vla-robot detector twin-dataset)")
    try:
        return S.Schema.from_features(dataset_info(root)["features"])
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise DetectorError(f"--dataset {root} is not a recorded vla_robot dataset ({e}); pass the folder that "
                            "holds meta/info.json (vla-robot dataset info DIR checks one)") from None


def load_examples(datasets: Sequence[str | Path], cameras: Sequence[str] | None = None,
                  config: TrainConfig | None = None, progress: bool = True) -> Examples:
    """The labelled episodes of ``datasets`` as detector inputs (all cameras the datasets share by default)."""
    from tqdm import tqdm

    from vla_robot.data.reader import iter_episodes

    cfg = config or TrainConfig()
    roots = [Path(d) for d in datasets]
    if not roots:
        raise DetectorError("no --dataset given: name at least one recorded dataset folder")
    schemas = [_dataset_schema(r) for r in roots]
    shared = [c for c in schemas[0].cameras if all(c in s.cameras for s in schemas)]
    cams = list(cameras) if cameras else shared
    for r, s in zip(roots, schemas):
        if [c for c in cams if c not in s.cameras]:
            raise DetectorError(f"--dataset {r} has cameras {list(s.cameras)}; the detector reads {cams} "
                                "(pass --camera to choose ones every dataset has)")
        if len(s.state_names) != len(schemas[0].state_names):
            raise DetectorError(f"--dataset {r} has {len(s.state_names)} joints, {roots[0]} has "
                                f"{len(schemas[0].state_names)}: one detector reads one robot's state")
    spec = FeatureSpec(tuple(cams), len(schemas[0].state_names), cfg.image_size, cfg.from_end, cfg.fractions,
                       schemas[0].state_names)
    keys, ys, feats, skipped, per = [], [], [], 0, {}
    for root in roots:
        eps = list(iter_episodes(root, with_frames=False))
        for ep in tqdm(eps, desc=f"reading {root.name}", unit="ep", disable=not progress, leave=False):
            if ep.record.label.reward is None:
                skipped += 1
                continue
            feats.append(episode_features(ep, spec))
            keys.append((str(root), ep.index))
            ys.append(ep.record.label.reward)
        per[str(root)] = sum(1 for k in keys if k[0] == str(root))
    if not keys:
        raise DetectorError(f"no labelled episodes in {', '.join(map(str, roots))} ({skipped} unlabelled): label "
                            "some first (vla-robot dataset relabel DIR --episode N --label success|failure)")
    y = np.asarray(ys, np.int64)
    if y.min() == y.max():
        only = "success" if y[0] else "failure"
        raise DetectorError(f"all {len(y)} labelled episodes are labelled {only}: a detector needs both successes "
                            "and failures to learn the difference; record or label some of the other kind")
    return Examples(spec, keys, y, stack(feats), skipped, per)


def split_by_episode(keys: Sequence[tuple[str, int]], y: np.ndarray, val_share: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and held-out positions into ``keys``: whole episodes, stratified by label, at least one
    episode of each class held out and one of each kept for training (when the class has two)."""
    if not 0.0 < val_share < 1.0:
        raise ValueError(f"val_share must be in (0, 1), got {val_share}")
    if len(set(keys)) != len(keys):
        raise ValueError("an episode appears twice among the examples: one input per episode")
    rng = np.random.default_rng(seed)
    val = []
    for cls in (0, 1):
        members = np.flatnonzero(np.asarray(y) == cls)
        rng.shuffle(members)
        n = min(len(members) - 1, max(1, int(round(val_share * len(members)))))
        val.extend(members[:max(0, n)].tolist())
    val_idx = np.array(sorted(val), dtype=int)
    train_idx = np.setdiff1d(np.arange(len(keys)), val_idx)
    return train_idx, val_idx


def _shift(images: np.ndarray, pad: int, rng: np.random.Generator) -> np.ndarray:
    """Random translation of each example by up to ``pad`` pixels (edge-padded), the same for its frames."""
    if pad <= 0:
        return images
    n, c, k, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (0, 0), (0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    out = np.empty_like(images)
    for i, (dy, dx) in enumerate(rng.integers(0, 2 * pad + 1, size=(n, 2))):
        out[i] = padded[i, :, :, dy:dy + h, dx:dx + w]
    return out


def fit(model: DetectorNet, batch: dict[str, np.ndarray], y: np.ndarray, cfg: TrainConfig, seed: int = 0,
        progress: bool = True) -> list[float]:
    """Train ``model`` on the examples ``batch``/``y``; returns the loss per step."""
    rng = np.random.default_rng(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _fit(model, batch, y, cfg, rng, progress)
    finally:
        torch.set_num_threads(threads)


def _fit(model, batch, y, cfg: TrainConfig, rng: np.random.Generator, progress: bool) -> list[float]:
    from tqdm import tqdm

    states = batch["state"].reshape(-1, batch["state"].shape[-1])
    model.set_state_stats(states.mean(0), states.std(0))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.steps))
    loss_fn = torch.nn.BCEWithLogitsLoss()
    target = torch.as_tensor(y, dtype=torch.float32)
    losses = []
    model.train()
    bar = tqdm(range(cfg.steps), desc="training detector", unit="step", disable=not progress)
    for _ in bar:
        idx = rng.integers(0, len(y), size=min(cfg.batch_size, len(y)))
        images = torch.from_numpy(_shift(batch["images"][idx], cfg.shift, rng))
        t = target[idx] * (1.0 - cfg.smoothing) + cfg.smoothing / 2
        loss = loss_fn(model.logits(images, torch.from_numpy(batch["state"][idx])), t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    model.eval()
    return losses


@torch.no_grad()
def predict_torch(model: DetectorNet, batch: dict[str, np.ndarray], chunk: int = 64) -> np.ndarray:
    """P(success) [N] from the torch model (what the ONNX graph must reproduce)."""
    model.eval()
    out = [model(torch.from_numpy(batch["images"][i:i + chunk]), torch.from_numpy(batch["state"][i:i + chunk]))
           for i in range(0, len(batch["state"]), chunk)]
    return torch.cat(out).numpy().astype(np.float64)


def export_onnx(model: DetectorNet, path: str | Path, opset: int = 17) -> Path:
    """``model`` as an ONNX graph (the TorchScript exporter, dynamo=False: the dynamo one needs onnxscript
    too), the batch axis dynamic."""
    spec, path = model.spec, Path(path)
    k, (h, w) = spec.frames, spec.image_size
    example = (torch.zeros(2, len(spec.cameras), k, h, w, 3, dtype=torch.uint8),
               torch.zeros(2, k, spec.state_dim, dtype=torch.float32))
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notice that it is the legacy one
        torch.onnx.export(model, example, str(path), dynamo=False, input_names=list(INPUTS), output_names=[OUTPUT],
                          dynamic_axes={**{n: {0: "batch"} for n in INPUTS}, OUTPUT: {0: "batch"}},
                          opset_version=opset)
    return path


def load_torch(path: str | Path) -> DetectorNet:
    """The torch model a detector was exported from (``detector.pt`` beside its .onnx)."""
    p = detector_paths(path)["torch"]
    if not p.is_file():
        raise DetectorError(f"{p} is missing: vla-robot detector train writes the torch weights beside the .onnx; "
                            "retrain to get them")
    saved = torch.load(p, weights_only=True, map_location="cpu")
    model = DetectorNet(FeatureSpec.from_json(saved["spec"]), saved["width"], saved["hidden"])
    model.load_state_dict(saved["state_dict"])
    return model.eval()


def train_detector(datasets: Sequence[str | Path], out: str | Path, *, seed: int = 0,
                   cameras: Sequence[str] | None = None, config: TrainConfig | None = None,
                   examples: Examples | None = None, overwrite: bool = False, progress: bool = True,
                   log: Callable[[str], None] = print) -> dict:
    """Train, evaluate on held-out episodes, export; returns the report (also in ``report/report.json``).

    ``out``: a folder (detector.onnx, detector.json, detector.pt, report/) or an ``X.onnx`` path.
    ``examples``: inputs already read by :func:`load_examples` (several detectors on the same data:
    read once). An existing detector at ``out`` is kept unless ``overwrite``."""
    cfg = config or TrainConfig()
    paths = detector_paths(out)
    if not overwrite and (paths["onnx"].exists() or paths["sidecar"].exists()):
        raise DetectorError(f"{paths['onnx']} already exists: choose another --out, or pass --overwrite to replace it")
    t0 = time.monotonic()
    ex = examples if examples is not None else load_examples(datasets, cameras, cfg, progress)
    train_idx, val_idx = split_by_episode(ex.keys, ex.y, cfg.val_share, seed)
    torch.manual_seed(seed)
    model = DetectorNet(ex.spec, cfg.width, cfg.hidden)
    t1 = time.monotonic()
    losses = fit(model, ex.take(train_idx), ex.y[train_idx], cfg, seed, progress)
    t2 = time.monotonic()
    p_val = predict_torch(model, ex.take(val_idx))
    held_out = metrics.evaluate(p_val, ex.y[val_idx], cfg.threshold)
    train_acc = float(((predict_torch(model, ex.take(train_idx)) >= cfg.threshold) == ex.y[train_idx]).mean())
    report = {
        "datasets": ex.per_dataset, "seed": seed, "cameras": list(ex.spec.cameras), "spec": ex.spec.to_json(),
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()},
        "episodes": {"labelled": len(ex.y), "successes": int(ex.y.sum()), "skipped_unlabelled": ex.skipped_unlabelled,
                     "train": len(train_idx), "held_out": len(val_idx)},
        "split": {"train": [list(ex.keys[i]) for i in train_idx], "held_out": [list(ex.keys[i]) for i in val_idx]},
        "held_out": held_out, "train_accuracy": train_acc, "final_loss": float(np.mean(losses[-20:])),
        "held_out_predictions": [{"dataset": ex.keys[i][0], "episode": ex.keys[i][1], "label": int(ex.y[i]),
                                  "p_success": float(p)} for i, p in zip(val_idx, p_val)],
        "seconds": {"read": t1 - t0, "train": t2 - t1},
    }
    _save(model, report, cfg, paths)
    log(summary(report, paths))
    return report


def _save(model: DetectorNet, report: dict, cfg: TrainConfig, paths: dict[str, Path]) -> None:
    """The detector's files. The sidecar is written last (it names the .onnx's hash), each file through a
    temporary name, so a detector interrupted mid-save is refused by load, never half-used."""
    for p in paths.values():
        p.parent.mkdir(parents=True, exist_ok=True)
    paths["report"].mkdir(parents=True, exist_ok=True)
    tmp_onnx = paths["onnx"].with_name(paths["onnx"].name + ".tmp")
    export_onnx(model, tmp_onnx)
    os.replace(tmp_onnx, paths["onnx"])
    torch.save({"state_dict": model.state_dict(), "spec": model.spec.to_json(), "width": cfg.width,
                "hidden": cfg.hidden}, paths["torch"])
    metrics.plot(report["held_out"], paths["report"] / "report.png",
                 title=f"success detector ({', '.join(report['cameras'])}), held-out episodes")
    (paths["report"] / "report.json").write_text(json.dumps(report, indent=1))
    (paths["report"] / "summary.txt").write_text(summary(report, paths) + "\n")
    k, (h, w) = model.spec.frames, model.spec.image_size
    sidecar = {
        "format": FORMAT, "onnx": paths["onnx"].name, "onnx_sha256": sha256(paths["onnx"]),
        "spec": model.spec.to_json(), "threshold": cfg.threshold,
        "inputs": {"images": {"dtype": "uint8", "shape": ["N", len(model.spec.cameras), k, h, w, 3]},
                   "state": {"dtype": "float32", "shape": ["N", k, model.spec.state_dim]}},
        "output": {"name": OUTPUT, "dtype": "float32", "shape": ["N"], "meaning": "P(success)"},
        "report": {key: report[key] for key in ("datasets", "seed", "episodes", "train_accuracy")}
        | {"held_out": {k: v for k, v in report["held_out"].items() if k != "pr"}},
        "created_at": time.time(),
    }
    tmp = paths["sidecar"].with_name(paths["sidecar"].name + ".tmp")
    tmp.write_text(json.dumps(sidecar, indent=1))
    os.replace(tmp, paths["sidecar"])


def summary(report: dict, paths: dict[str, Path] | None = None) -> str:
    """The report in a few readable lines."""
    e, h = report["episodes"], report["held_out"]
    lo, hi = h["accuracy_ci95"]
    c = h["confusion"]
    lines = [
        f"success detector, cameras {', '.join(report['cameras'])}, seed {report['seed']}",
        f"  episodes: {e['labelled']} labelled ({e['successes']} successes), {e['skipped_unlabelled']} unlabelled "
        f"skipped; split by episode: {e['train']} train, {e['held_out']} held out",
        f"  held out: accuracy {h['accuracy']:.3f} (95% CI {lo:.2f}-{hi:.2f}; always-the-majority "
        f"{h['majority_baseline']:.3f}) at threshold {h['threshold']:.2f}",
        f"            precision {h['precision']:.3f}, recall {h['recall']:.3f} (tp {c['tp']}, fp {c['fp']}, "
        f"fn {c['fn']}, tn {c['tn']}), average precision {h['pr']['average_precision']:.3f}",
        f"            calibration: ECE {h['calibration']['ece']:.3f}, log loss {h['log_loss']:.3f}",
        f"  train accuracy {report['train_accuracy']:.3f}, final loss {report['final_loss']:.3f}; "
        f"{report['seconds']['read']:.1f} s reading, {report['seconds']['train']:.1f} s training",
    ]
    if paths is not None:
        lines.append(f"  wrote {paths['onnx']} (+ {paths['sidecar'].name}, {paths['torch'].name}); "
                     f"report: {paths['report']}/report.png, report.json, summary.txt")
    return "\n".join(lines)
