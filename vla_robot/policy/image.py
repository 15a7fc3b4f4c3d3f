"""OFT's image preprocessing, without TensorFlow, equal to TensorFlow's within 1 uint8 level.

OpenVLA-OFT's checkpoints were trained on TensorFlow's pipeline, and its deploy code replays it
(openvla-oft ``experiments/robot/openvla_utils.py``: ``resize_image_for_policy``, ``crop_and_resize``,
``center_crop_image``). Each step here reproduces TF's arithmetic, not just its intent:

- ``jpeg_roundtrip``: ``tf.image.encode_jpeg`` is libjpeg-turbo at quality 95, 4:2:0 chroma, the
  accurate integer forward DCT: OpenCV's encoder at quality 95 writes the same entropy-coded scan byte
  for byte. ``tf.io.decode_image`` then decodes with the *fast* integer IDCT (JDCT_IFAST, "the
  TensorFlow-chosen default": tensorflow/core/kernels/image/decode_image_op.cc) and fancy chroma
  upsampling (jpeg_mem.h ``UncompressFlags``). OpenCV decodes with the accurate IDCT and cannot be
  told otherwise (Pillow takes the fast one only in draft mode, which also drops fancy upsampling):
  that is where the old OpenCV round trip differed by up to 11 levels.
  simplejpeg (libjpeg-turbo's TurboJPEG API) takes ``fastdct=True, fastupsample=False``, which is
  TF's decoder bit for bit.
- ``lanczos3_resize``: ``tf.image.resize(method="lanczos3", antialias=True)`` is ``scale_and_translate``
  with the Lanczos-3 kernel widened by the downscale factor, sampled at pixel centres, each output's
  weights normalised, in float32; then ``round`` (half to even) and clip. The weights are precomputed
  once per (input, output) size as a sparse matrix, so a resize is two sparse products in C.
- ``center_crop``: the 90%-area box in float32, ``crop_and_resize``'s sample points
  ``y1·(H-1) + i·(y2-y1)·(H-1)/(H-1)`` and its bilinear formula on ``v/255`` floats, then
  ``convert_image_dtype(..., uint8, saturate=True)``, which *truncates* ``x·255.5`` rather than
  rounding: rounding was the old 1-2 level difference. The taps are cached per size.

tests/test_policy_image.py checks all three against a table TensorFlow computed
(tests/data/make_oft_image_reference.py).
"""
from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np
import scipy.sparse
import simplejpeg

__all__ = ["check_image", "jpeg_roundtrip", "lanczos3_resize", "center_crop", "preprocess_image"]

CROP_AREA = 0.9
JPEG_QUALITY = 95  # tf.image.encode_jpeg's default, what OFT's RLDS data went through


def check_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{name} must be a numpy uint8 array HxWx3, got {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 2 or image.shape[1] < 2:
        raise ValueError(f"{name} must be uint8 HxWx3 (RGB), got {image.dtype} {image.shape}")
    return image


def jpeg_roundtrip(image: np.ndarray, quality: int = JPEG_QUALITY) -> np.ndarray:
    """Encode to JPEG and back exactly as ``tf.io.decode_image(tf.image.encode_jpeg(image))`` does."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover - OpenCV always encodes uint8 RGB
        raise ValueError("JPEG encoding failed")
    return simplejpeg.decode_jpeg(buf, colorspace="RGB", fastdct=True, fastupsample=False)


def _lanczos3(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    out = np.where(x < 1e-12, 1.0, 3.0 * np.sin(np.pi * x) * np.sin(np.pi * x / 3.0) / np.maximum(np.pi * np.pi * x * x, 1e-24))
    return np.where(x < 3.0, out, 0.0)


@lru_cache(maxsize=64)
def _weights(in_size: int, out_size: int) -> scipy.sparse.csr_matrix:
    """The ``[out, in]`` resampling matrix of an antialiased Lanczos-3 resize, rows normalised, float32.

    Only the taps inside the kernel's support are stored (7 for a mild resize, 15 when halving), so
    applying it costs ~taps multiply-adds per output value instead of ``in_size``."""
    scale = out_size / in_size
    kscale = max(1.0 / scale, 1.0)  # antialias: widen the kernel when shrinking
    centers = (np.arange(out_size) + 0.5) / scale  # output pixel centres in input coordinates
    samples = np.arange(in_size) + 0.5
    w = _lanczos3((samples[None, :] - centers[:, None]) / kscale)
    w /= np.maximum(w.sum(1, keepdims=True), 1e-12)
    m = scipy.sparse.csr_matrix(w.astype(np.float32))
    m.eliminate_zeros()
    return m


def lanczos3_resize(image: np.ndarray, size: int) -> np.ndarray:
    """Antialiased Lanczos-3 resize of uint8 HxWx3 to ``size``×``size``, rounded and clipped to uint8."""
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image
    x = image.reshape(h, w * 3).astype(np.float32)
    rows = (_weights(h, size) @ x).reshape(size, w, 3)  # along the columns first, then the rows
    out = _weights(w, size) @ rows.transpose(1, 0, 2).reshape(w, size * 3)
    out = out.reshape(size, size, 3).transpose(1, 0, 2)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


@lru_cache(maxsize=64)
def _crop_taps(n: int, area: float, channels: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output index along an axis of length ``n``: the two source indices and the lerp weight,
    in float32 as TF's ``crop_and_resize`` CPU kernel computes them. ``channels`` > 1: the same for
    the interleaved values of a row (``x·channels + c``), so a row is gathered as one flat array."""
    f32 = np.float32
    side = np.clip(np.sqrt(f32(area)), f32(0), f32(1))  # tf.sqrt on a float32 tensor
    lo = (f32(1) - side) / f32(2)
    hi = lo + side
    step = (hi - lo) * f32(n - 1) / f32(max(n - 1, 1))
    pos = lo * f32(n - 1) + np.arange(n, dtype=f32) * step
    first = np.floor(pos)
    i0, i1, t = first.astype(np.intp), np.ceil(pos).astype(np.intp), (pos - first).astype(f32)
    if channels > 1:
        c = np.arange(channels)
        i0, i1, t = (i0[:, None] * channels + c).ravel(), (i1[:, None] * channels + c).ravel(), np.repeat(t, channels)
    return i0, i1, t


def center_crop(image: np.ndarray, area: float = CROP_AREA) -> np.ndarray:
    """The centre crop covering ``area`` of the image, resized back to the same size (bilinear),
    with TF's ``crop_and_resize`` + ``convert_image_dtype`` arithmetic (module docstring)."""
    h, w, c = image.shape
    y0, y1, ty = _crop_taps(h, area)
    x0, x1, tx = _crop_taps(w, area, c)
    x = image.reshape(h, w * c).astype(np.float32)
    x *= np.float32(1.0 / 255.0)  # convert_image_dtype(uint8 -> float32)
    # TF's top/bottom: the lerp along x of each source row, computed once per row (in place: no temporaries)
    left, rows = np.take(x, x0, axis=1), np.take(x, x1, axis=1)
    rows -= left
    rows *= tx
    rows += left
    top, out = np.take(rows, y0, axis=0), np.take(rows, y1, axis=0)
    out -= top
    out *= ty[:, None]
    out += top
    np.clip(out, 0.0, 1.0, out=out)
    out *= np.float32(255.5)
    return out.astype(np.uint8).reshape(h, w, c)  # convert_image_dtype(float32 -> uint8) truncates


def preprocess_image(image: np.ndarray, size: int, crop: bool = True, jpeg: bool = True, name: str = "image") -> np.ndarray:
    """uint8 HxWx3 → uint8 size×size×3 through OFT's deployment path."""
    image = check_image(image, name)
    if image.shape[:2] != (size, size):  # OFT resizes (with the JPEG round trip) only when needed
        if jpeg:
            image = jpeg_roundtrip(image)
        image = lanczos3_resize(image, size)
    if crop:
        image = center_crop(image)
    return image
