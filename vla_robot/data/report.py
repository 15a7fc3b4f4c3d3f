"""The evaluation report: a pure function of episode records, written as JSON, markdown and a PNG.

::

    rep = evaluation_report(read_journal(root))     # dict, JSON-able
    paths = write_report(rep, out_dir)              # report.json, report.md, report.png

Per task and overall: episodes, successes, success rate with its Wilson 95% interval, timeouts,
episode length (frames and seconds: mean, median, min, max), policy latency percentiles (p50, p90,
p99, max, over every chunk), interventions (takeovers, episodes with any, teleop share of frames),
dropped frames and policy versions. Unlabelled episodes are counted but not in the success rate.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Iterable

import numpy as np

from .schema import EpisodeRecord, Label

__all__ = ["wilson_interval", "evaluation_report", "render_markdown", "write_report"]

Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (0, 1) when n == 0."""
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)  # exact ends (rounding would leave 1e-17)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def _stats(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    a = np.asarray(values, dtype=float)
    return {"n": int(a.size), "mean": float(a.mean()), "median": float(np.median(a)), "min": float(a.min()),
            "max": float(a.max())}


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    a = np.asarray(values, dtype=float)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"n": int(a.size), "p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(a.max()),
            "mean": float(a.mean())}


def _summary(recs: list[EpisodeRecord], fps: float | None) -> dict:
    labelled = [r for r in recs if r.label is not Label.UNLABELLED]
    k = sum(r.label is Label.SUCCESS for r in labelled)
    n = len(labelled)
    lo, hi = wilson_interval(k, n)
    frames = sum(r.length for r in recs)
    teleop = sum(r.intervention_frames for r in recs)
    return {
        "episodes": len(recs),
        "labelled": n,
        "unlabelled": len(recs) - n,
        "successes": k,
        "failures": n - k,
        "success_rate": (k / n) if n else None,
        "wilson95": [lo, hi],
        "timeouts": sum(bool(r.timeout) for r in recs),
        "length_frames": _stats([r.length for r in recs]),
        "length_s": _stats([r.length / fps for r in recs]) if fps else _stats([r.duration_s for r in recs]),
        "latency_ms": _percentiles([1000.0 * x for r in recs for x in r.latency_s]),
        "interventions": {
            "takeovers": sum(r.interventions for r in recs),
            "episodes_with_takeover": sum(r.interventions > 0 for r in recs),
            "teleop_frame_share": (teleop / frames) if frames else 0.0,
        },
        "dropped_frames": sum(r.dropped_frames for r in recs),
        "policy_versions": sorted({v for r in recs for v in r.policy_versions}),
    }


def evaluation_report(records: Iterable[EpisodeRecord | dict], fps: float | None = None, title: str = "Evaluation") -> dict:
    """Everything a person needs from a set of labelled episodes (see the module docstring)."""
    recs = [r if isinstance(r, EpisodeRecord) else EpisodeRecord.from_json(r) for r in records]
    by_task: dict[str, list[EpisodeRecord]] = defaultdict(list)
    for r in recs:  # the task's name when the episode manager gave one, else the instruction
        by_task[str(r.meta.get("task") or r.task)].append(r)
    return {
        "title": title,
        "fps": fps,
        "overall": _summary(recs, fps),
        "tasks": {t: _summary(rs, fps) for t, rs in sorted(by_task.items())},
        "episodes": [
            {"index": r.episode_index, "task": str(r.meta.get("task") or r.task), "instruction": r.task,
             "label": str(r.label), "length": r.length, "timeout": r.timeout,
             "interventions": r.interventions, "start_condition": r.start_condition}
            for r in recs
        ],
    }


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def render_markdown(rep: dict) -> str:
    o = rep["overall"]
    lines = [f"# {rep['title']}", ""]
    if o["labelled"]:
        lo, hi = o["wilson95"]
        lines.append(f"**Success rate {_pct(o['success_rate'])}** ({o['successes']}/{o['labelled']} labelled episodes; "
                     f"95% Wilson interval {_pct(lo)} – {_pct(hi)}).")
    else:
        lines.append("No labelled episode yet.")
    lines += ["", "| task | episodes | successes | success rate | 95% interval | timeouts | mean length (s) | takeovers |",
              "|---|---:|---:|---:|---|---:|---:|---:|"]
    for task, s in rep["tasks"].items():
        lo, hi = s["wilson95"]
        mean_len = s["length_s"].get("mean")
        lines.append(f"| {task} | {s['episodes']} | {s['successes']}/{s['labelled']} | {_pct(s['success_rate'])} | "
                     f"{_pct(lo)} – {_pct(hi)} | {s['timeouts']} | {'–' if mean_len is None else f'{mean_len:.2f}'} | "
                     f"{s['interventions']['takeovers']} |")
    lat = o["latency_ms"]
    lines += ["", "## Policy latency", ""]
    if lat["n"]:
        lines.append(f"{lat['n']} chunks: p50 {lat['p50']:.1f} ms, p90 {lat['p90']:.1f} ms, p99 {lat['p99']:.1f} ms, "
                     f"max {lat['max']:.1f} ms.")
    else:
        lines.append("No policy chunk latencies were recorded.")
    lf = o["length_frames"]
    iv = o["interventions"]
    lines += ["", "## Episodes", ""]
    if lf["n"]:
        lines.append(f"{o['episodes']} episodes, {o['unlabelled']} unlabelled; length {lf['mean']:.1f} frames on average "
                     f"(median {lf['median']:.0f}, {lf['min']:.0f}–{lf['max']:.0f}).")
    lines.append(f"Interventions: {iv['takeovers']} takeover(s) in {iv['episodes_with_takeover']} episode(s); "
                 f"{_pct(iv['teleop_frame_share'])} of frames under teleop. Dropped frames: {o['dropped_frames']}. "
                 f"Policy versions: {', '.join(map(str, o['policy_versions'])) or '–'}.")
    lines += ["", "| # | task | label | frames | timeout | takeovers |", "|---:|---|---|---:|---|---:|"]
    for e in rep["episodes"]:
        lines.append(f"| {e['index']} | {e['task']} | {e['label']} | {e['length']} | {'yes' if e['timeout'] else ''} | "
                     f"{e['interventions']} |")
    return "\n".join(lines) + "\n"


def _plot(rep: dict, path: Path, records: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(rep["tasks"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    rates = [rep["tasks"][t]["success_rate"] or 0.0 for t in tasks]
    err = np.array([[r - rep["tasks"][t]["wilson95"][0], rep["tasks"][t]["wilson95"][1] - r] for t, r in zip(tasks, rates)]).T
    ax.bar(range(len(tasks)), rates, yerr=err if len(tasks) else None, capsize=6, color="#4c72b0")
    for x, t in enumerate(tasks):
        s = rep["tasks"][t]
        ax.text(x, 0.02, f"{s['successes']}/{s['labelled']}", ha="center", va="bottom", color="white", fontweight="bold")
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels([t if len(t) < 24 else t[:21] + "..." for t in tasks], rotation=15)
    ax.set_ylim(0, 1)
    ax.set_ylabel("success rate (95% Wilson interval)")
    ax.set_title("success per task")
    ax = axes[1]
    colours = {Label.SUCCESS: "#55a868", Label.FAILURE: "#c44e52", Label.UNLABELLED: "#8c8c8c"}
    for label, colour in colours.items():
        xs = [e["index"] for e in records if e["label"] == label]
        ys = [e["length"] for e in records if e["label"] == label]
        if xs:
            ax.scatter(xs, ys, c=colour, label=str(label), s=18)
    ax.set_xlabel("episode")
    ax.set_ylabel("length (frames)")
    ax.set_title("episode lengths")
    if records:
        ax.legend()
    fig.suptitle(rep["title"])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(rep: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write report.json, report.md and report.png into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "markdown": out / "report.md", "plot": out / "report.png"}
    paths["json"].write_text(json.dumps(rep, indent=2))
    paths["markdown"].write_text(render_markdown(rep) + "\n![plot](report.png)\n")
    _plot(rep, paths["plot"], rep["episodes"])
    return paths
