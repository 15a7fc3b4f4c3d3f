"""Per-frame CPU image preprocessing to 224 px: OFT's JPEG trip + Lanczos resize + centre crop, then
the per-tower normalisation into the model's ``pixel_values``.

Baseline in the same run: ``vla_robot/policy/image.py`` and ``processor.py`` as they were before
issue 19 (OpenCV JPEG trip, a dense float32 Lanczos product through ``np.einsum``, ``cv2.remap`` for
the crop, normalisation through temporaries), read from git at commit ``BASELINE_COMMIT``, against
the current modules. Frames: 256x256 (what benchmarks/policy_latency.py feeds), 240x320 (the twin's
cameras) and 480x640 (a RealSense frame). Each row: p50 / p99 of one frame from uint8 to
``pixel_values`` (wall clock, then CPU time of the thread), then the CPU p50 of each stage.

    .venv/bin/python benchmarks/preprocess.py [--iters 50]
"""
from __future__ import annotations

import argparse
import subprocess
import time
import types
from pathlib import Path

import numpy as np
from tqdm import tqdm

import vla_robot.policy.image as current
import vla_robot.policy.processor as current_processor
from vla_robot.policy.runtime import load_preset
from vla_robot.policy.tokenizer import ByteTokenizer

BASELINE_COMMIT = "764bcec"  # the last commit with the OpenCV/einsum pipeline
SIZE = 224
FRAMES = [(256, 256), (240, 320), (480, 640)]


def baseline_module(path: str) -> types.ModuleType | None:
    """Our module at ``path`` as it was at BASELINE_COMMIT, or None when git or the commit is not
    there (a source tarball)."""
    root = Path(__file__).resolve().parents[1]
    try:
        src = subprocess.run(["git", "show", f"{BASELINE_COMMIT}:{path}"], cwd=root,
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    mod = types.ModuleType(f"baseline_{Path(path).stem}")
    exec(compile(src, f"{BASELINE_COMMIT}:{path}", "exec"), mod.__dict__)  # noqa: S102 - our own past code
    return mod


def processor(mod: types.ModuleType):
    """A PolicyProcessor of ``mod`` with 224-px towers and OFT's DINOv2/SigLIP normalisation."""
    cfg = load_preset("tiny")
    cfg.vision.image_size = SIZE
    towers = [((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]
    return mod.PolicyProcessor(cfg, ByteTokenizer(), towers)


def frame(h: int, w: int) -> np.ndarray:
    """A camera-like picture (smooth shading, edges, noise): JPEG's cost depends on the content."""
    rng = np.random.default_rng(h * w)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([255 * x / w, 255 * y / h, 128 + 100 * np.sin((x + y) / 9.0)], -1)
    img[(np.abs(x - w * 0.3) < w * 0.12) & (np.abs(y - h * 0.6) < h * 0.15)] = (220, 30, 40)
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


def timed(fn, iters: int, label: str) -> tuple[np.ndarray, np.ndarray]:
    """Wall and CPU (this thread) milliseconds per call. Every step here runs on the calling thread,
    so on a shared, loaded machine the CPU time is the figure that does not count the waiting."""
    for _ in range(3):
        fn()
    wall, cpu = [], []
    for _ in tqdm(range(iters), desc=label, leave=False, disable=None):
        t0, c0 = time.perf_counter(), time.thread_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
    return np.asarray(wall) * 1e3, np.asarray(cpu) * 1e3


def row(mod: types.ModuleType, proc, img: np.ndarray, iters: int, label: str) -> str:
    wall, cpu = timed(lambda: proc.pixel_values(mod.preprocess_image(img, SIZE)[None, None]), iters, f"{label} total")
    decoded = mod.jpeg_roundtrip(img)
    resized = mod.lanczos3_resize(decoded, SIZE)
    cropped = mod.center_crop(resized)[None, None]
    stages = [
        timed(lambda: mod.jpeg_roundtrip(img), iters, f"{label} jpeg")[1],
        timed(lambda: mod.lanczos3_resize(decoded, SIZE), iters, f"{label} resize")[1],
        timed(lambda: mod.center_crop(resized), iters, f"{label} crop")[1],
        timed(lambda: proc.pixel_values(cropped), iters, f"{label} normalise")[1],
    ]
    return (f"{np.median(wall):8.2f} {np.percentile(wall, 99):8.2f} {np.median(cpu):8.2f} {np.percentile(cpu, 99):8.2f}   "
            + " ".join(f"{np.median(s):9.2f}" for s in stages))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=50, help="timed calls per row and stage")
    args = ap.parse_args()
    base_image = baseline_module("vla_robot/policy/image.py")
    base_processor = baseline_module("vla_robot/policy/processor.py")
    variants = [("now", current, processor(current_processor))]
    if base_image is not None and base_processor is not None:
        variants.insert(0, ("before", base_image, processor(base_processor)))
    print(f"one frame, uint8 HxWx3 -> pixel_values of {SIZE}x{SIZE}, {args.iters} calls, ms "
          f"(wall and CPU of the whole; CPU p50 of each stage):")
    print(f"  {'frame':9} {'code':7} {'wall p50':>8} {'wall p99':>8} {'cpu p50':>8} {'cpu p99':>8}   "
          f"{'jpeg':>9} {'resize':>9} {'crop':>9} {'normalise':>9}")
    for h, w in FRAMES:
        img = frame(h, w)
        for name, mod, proc in variants:
            print(f"  {f'{h}x{w}':9} {name:7} {row(mod, proc, img, args.iters, f'{h}x{w} {name}')}")
    if len(variants) == 1:
        print(f"  (no baseline: git or commit {BASELINE_COMMIT} unavailable here)")

if __name__ == "__main__":
    main()
