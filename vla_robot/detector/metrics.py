"""How good a success detector is on held-out episodes: accuracy, calibration (ECE, reliability
diagram) and the precision-recall curve, as numbers (:func:`evaluate`) and as one PNG (:func:`plot`).

numpy and matplotlib only. ``p``: predicted P(success) per episode; ``y``: the label (1 success, 0 failure).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from vla_robot.data.report import wilson_interval

__all__ = ["evaluate", "reliability", "pr_curve", "plot"]


def _check(p, y) -> tuple[np.ndarray, np.ndarray]:
    p, y = np.asarray(p, float).reshape(-1), np.asarray(y, int).reshape(-1)
    if len(p) != len(y) or not len(p):
        raise ValueError(f"need one probability per label and at least one, got {len(p)} and {len(y)}")
    return p, y


def reliability(p, y, bins: int = 10) -> dict:
    """Equal-width bins of P(success): per bin the count, mean prediction and observed success rate,
    and the expected calibration error (|rate - mean prediction|, weighted by the bin's share)."""
    p, y = _check(p, y)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        m = which == b
        if not m.any():
            continue
        conf, acc = float(p[m].mean()), float(y[m].mean())
        rows.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": int(m.sum()), "mean_p": conf, "rate": acc})
        ece += m.mean() * abs(acc - conf)
    return {"ece": float(ece), "bins": rows}


def pr_curve(p, y) -> dict:
    """Precision and recall of 'success' at every threshold, and the average precision (area, step-wise)."""
    p, y = _check(p, y)
    order = np.argsort(-p, kind="stable")
    ys, ps = y[order], p[order]
    tp, fp = np.cumsum(ys), np.cumsum(1 - ys)
    last = np.r_[np.nonzero(np.diff(ps))[0], len(ps) - 1]  # one point per distinct threshold
    positives = max(1, int(y.sum()))
    precision, recall = tp[last] / (tp[last] + fp[last]), tp[last] / positives
    ap = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    return {"precision": precision.tolist(), "recall": recall.tolist(), "thresholds": ps[last].tolist(),
            "average_precision": ap}


def evaluate(p, y, threshold: float = 0.5) -> dict:
    """Held-out figures at ``threshold``: accuracy (95 % Wilson), precision, recall, confusion, ECE, AP."""
    p, y = _check(p, y)
    pred = (p >= threshold).astype(int)
    k = int((pred == y).sum())
    tp, fp = int(((pred == 1) & (y == 1)).sum()), int(((pred == 1) & (y == 0)).sum())
    fn, tn = int(((pred == 0) & (y == 1)).sum()), int(((pred == 0) & (y == 0)).sum())
    nll = -np.mean(y * np.log(np.clip(p, 1e-7, 1)) + (1 - y) * np.log(np.clip(1 - p, 1e-7, 1)))
    return {"episodes": len(y), "successes": int(y.sum()), "threshold": float(threshold),
            "accuracy": k / len(y), "accuracy_ci95": list(wilson_interval(k, len(y))),
            "majority_baseline": max(y.mean(), 1 - y.mean()),
            "precision": tp / (tp + fp) if tp + fp else float("nan"),
            "recall": tp / (tp + fn) if tp + fn else float("nan"),
            "confusion": {"tp": tp, "fp": fp, "fn": fn, "tn": tn}, "log_loss": float(nll),
            "calibration": reliability(p, y), "pr": pr_curve(p, y)}


def plot(figures: dict, path: str | Path, title: str = "success detector, held-out episodes") -> Path:
    """The reliability diagram and the precision-recall curve of :func:`evaluate`'s result, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
    cal = figures["calibration"]
    ax1.plot([0, 1], [0, 1], ls="--", color="gray", lw=1, label="perfectly calibrated")
    for b in cal["bins"]:
        ax1.bar((b["lo"] + b["hi"]) / 2, b["rate"], width=b["hi"] - b["lo"], alpha=0.5, color="tab:blue",
                edgecolor="black")
        ax1.text((b["lo"] + b["hi"]) / 2, b["rate"] + 0.02, str(b["n"]), ha="center", fontsize=7)
    ax1.plot([b["mean_p"] for b in cal["bins"]], [b["rate"] for b in cal["bins"]], "o", color="tab:orange",
             label="observed success rate (n per bin)")
    ax1.set(xlim=(0, 1), ylim=(0, 1.08), xlabel="predicted P(success)", ylabel="observed success rate",
            title=f"reliability: ECE {cal['ece']:.3f}")
    ax1.legend(fontsize=7, loc="upper left")
    pr = figures["pr"]
    ax2.step(pr["recall"], pr["precision"], where="post", color="tab:green",
             label=f"AP {pr['average_precision']:.3f}")
    base = figures["successes"] / figures["episodes"]
    ax2.axhline(base, ls=":", color="gray", lw=1, label=f"share of successes {base:.2f}")
    ax2.set(xlim=(0, 1.02), ylim=(0, 1.05), xlabel="recall (successes found)", ylabel="precision",
            title=f"precision-recall; accuracy {figures['accuracy']:.3f} at {figures['threshold']:.2f}")
    ax2.legend(fontsize=7, loc="lower left")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title} ({figures['episodes']} episodes)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
