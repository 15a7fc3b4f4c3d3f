"""Writes tests/data/oft_image_reference.npz: OpenVLA-OFT's image preprocessing computed by TensorFlow.

OFT's checkpoints were trained on TensorFlow's pipeline, and its deploy code
(openvla-oft ``experiments/robot/openvla_utils.py``: ``resize_image_for_policy``, ``crop_and_resize``,
``center_crop_image``) replays it at inference:

- ``tf.image.encode_jpeg`` (defaults: quality 95, 4:2:0 chroma) then ``tf.io.decode_image`` (IFAST IDCT,
  fancy upsampling), only when the frame is not already the model's size;
- ``tf.image.resize(method="lanczos3", antialias=True)``, rounded and clipped to uint8;
- the centre crop covering 90% of the area: ``convert_image_dtype`` to float, ``tf.image.crop_and_resize``
  (bilinear) back to the same size, clip to [0, 1], ``convert_image_dtype`` to uint8 with ``saturate``.

Each stage is stored on its own so a test can tell which one drifted. The inputs are stored too, so the
table does not depend on numpy's random streams. Every picture is stored as its differences along the
columns and then the rows (uint8, modulo 256; ``np.cumsum`` along the rows, then the columns, with
``dtype=np.uint8`` restores it), which deflate packs 2-10x smaller than the pixels themselves. TensorFlow is NOT a project dependency; run this in a
scratch venv:

    python3 -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install tensorflow-cpu numpy
    /tmp/tfenv/bin/python tests/data/make_oft_image_reference.py

The committed table was made with TensorFlow 2.21.0 (tensorflow-cpu wheel, libjpeg-turbo inside),
numpy 2.4.6, Python 3.11; the versions are stored in the file as ``tf_version`` / ``numpy_version``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

OUT = Path(__file__).with_name("oft_image_reference.npz")
CROP_AREA = 0.9

# Input pictures (height, width), and the (picture, output size) cases: a camera frame as the twin renders
# it, the same frame shrunk 4.3x (the kernel widens), an upscale, and a frame already at the model's size
# (OFT then skips the JPEG trip and the resize: the crop only)
INPUTS = {"frame": (240, 320), "small": (90, 120), "square": (224, 224)}
CASES = [("frame", 224), ("frame", 56), ("small", 112), ("square", 224)]


def scene(h: int, w: int, seed: int) -> np.ndarray:
    """A deterministic test picture: smooth colour ramps, hard-edged shapes, a fine stripe pattern and
    mild sensor noise in one quadrant (what stresses JPEG blocks, chroma subsampling and resampling ringing)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([255 * x / w, 255 * y / h, 128 + 100 * np.sin((x + y) / 9.0)], -1)
    img[(np.abs(x - w * 0.3) < w * 0.12) & (np.abs(y - h * 0.6) < h * 0.15)] = (220, 30, 40)  # red box
    img[(x - w * 0.7) ** 2 + (y - h * 0.35) ** 2 < (min(h, w) * 0.15) ** 2] = (20, 60, 230)  # blue disc
    stripes = (x > w * 0.8) & (y > h * 0.75)
    img[stripes] = np.where((x[stripes] // 2) % 2 == 0, 250, 5)[:, None]
    noisy = (x < w * 0.25) & (y < h * 0.25)  # sensor noise in one quadrant only: it does not compress
    img[noisy] += rng.normal(0.0, 4.0, (int(noisy.sum()), 3))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def jpeg(img: np.ndarray) -> np.ndarray:
    return tf.io.decode_image(tf.image.encode_jpeg(img), expand_animations=False, dtype=tf.uint8).numpy()


def lanczos(img: np.ndarray, size: int) -> np.ndarray:
    out = tf.image.resize(img, (size, size), method="lanczos3", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8).numpy()


def crop(img: np.ndarray) -> np.ndarray:
    x = tf.image.convert_image_dtype(tf.convert_to_tensor(img), tf.float32)[None]
    side = tf.reshape(tf.clip_by_value(tf.sqrt(CROP_AREA), 0, 1), (1,))
    lo = (1 - side) / 2
    boxes = tf.stack([lo, lo, lo + side, lo + side], axis=1)
    out = tf.image.crop_and_resize(x, boxes, tf.range(1), img.shape[:2])[0]
    return tf.image.convert_image_dtype(tf.clip_by_value(out, 0, 1), tf.uint8, saturate=True).numpy()


def deltas(img: np.ndarray) -> np.ndarray:
    """The lossless, better-compressing form the table stores (see the module docstring)."""
    d = np.diff(img, axis=1, prepend=np.zeros_like(img[:, :1]))
    return np.diff(d, axis=0, prepend=np.zeros_like(d[:1]))


def main() -> None:
    arrays: dict[str, np.ndarray] = {
        "tf_version": np.array(tf.__version__),
        "numpy_version": np.array(np.__version__),
        "cases": np.array([f"{name}_{size}" for name, size in CASES]),
    }
    pictures = {name: scene(h, w, seed=i) for i, (name, (h, w)) in enumerate(INPUTS.items())}
    for name, img in pictures.items():
        arrays[f"{name}/input"] = deltas(img)
        if any(n == name and img.shape[:2] != (size, size) for n, size in CASES):
            arrays[f"{name}/jpeg"] = deltas(jpeg(img))
    for name, size in CASES:
        img, key = pictures[name], f"{name}_{size}"
        arrays[f"{key}/size"] = np.array(size)
        resized = img
        if img.shape[:2] != (size, size):
            arrays[f"{key}/resize_only"] = deltas(lanczos(img, size))  # the resize alone, no JPEG trip
            resized = lanczos(jpeg(img), size)
            arrays[f"{key}/resized"] = deltas(resized)
        arrays[f"{key}/cropped"] = deltas(crop(resized))
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KiB) with TensorFlow {tf.__version__}")

if __name__ == "__main__":
    main()
