"""OFT's image preprocessing, in numpy/OpenCV (no TensorFlow).

``resize_image_for_policy``: JPEG encode/decode, then a Lanczos-3 antialiased resize (TF's
``tf.image.resize(method="lanczos3", antialias=True)``, i.e. ``scale_and_translate`` with the
kernel stretched by the downscale factor). ``center_crop``: the centre crop covering 90% of the
area, resized back with bilinear sampling at TF ``crop_and_resize`` sample points.
"""
from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

__all__ = ["check_image", "jpeg_roundtrip", "lanczos3_resize", "center_crop", "preprocess_image"]

CROP_AREA = 0.9


def check_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{name} must be a numpy uint8 array HxWx3, got {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 2 or image.shape[1] < 2:
        raise ValueError(f"{name} must be uint8 HxWx3 (RGB), got {image.dtype} {image.shape}")
    return image


def jpeg_roundtrip(image: np.ndarray, quality: int = 95) -> np.ndarray:
    """Encode to JPEG and back (TF ``encode_jpeg`` default quality is 95), as OFT's training data was stored."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover - OpenCV always encodes uint8 RGB
        raise ValueError("JPEG encoding failed")
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _lanczos3(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    out = np.where(x < 1e-12, 1.0, 3.0 * np.sin(np.pi * x) * np.sin(np.pi * x / 3.0) / np.maximum(np.pi * np.pi * x * x, 1e-24))
    return np.where(x < 3.0, out, 0.0)


@lru_cache(maxsize=64)
def _weights(in_size: int, out_size: int) -> np.ndarray:
    """Row-normalised ``[out, in]`` resampling matrix of an antialiased Lanczos-3 resize."""
    scale = out_size / in_size
    kscale = max(1.0 / scale, 1.0)  # antialias: widen the kernel when shrinking
    centers = (np.arange(out_size) + 0.5) / scale  # output pixel centres in input coordinates
    samples = np.arange(in_size) + 0.5
    w = _lanczos3((samples[None, :] - centers[:, None]) / kscale)
    w /= np.maximum(w.sum(1, keepdims=True), 1e-12)
    return w.astype(np.float32)


def lanczos3_resize(image: np.ndarray, size: int) -> np.ndarray:
    """Antialiased Lanczos-3 resize of uint8 HxWx3 to ``size``×``size``, rounded and clipped to uint8."""
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image
    wy, wx = _weights(h, size), _weights(w, size)
    x = image.astype(np.float32).reshape(h, w * 3)
    # einsum without BLAS: single-threaded and steady; multi-threaded BLAS on these small products
    # stalls for tens of ms when torch's OpenMP threads are still spinning after a forward pass
    rows = np.einsum("oh,hk->ok", wy, x, optimize=False).reshape(size, w, 3).transpose(1, 0, 2).reshape(w, size * 3)
    out = np.einsum("pw,wk->pk", wx, rows, optimize=False).reshape(size, size, 3).transpose(1, 0, 2)  # then columns
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def center_crop(image: np.ndarray, area: float = CROP_AREA) -> np.ndarray:
    """The centre crop covering ``area`` of the image, resized back to the same size (bilinear)."""
    h, w = image.shape[:2]
    side = float(np.sqrt(area))
    y1, x1 = (1 - side) / 2, (1 - side) / 2
    y2, x2 = y1 + side, x1 + side
    # TF crop_and_resize sample points: y = y1*(H-1) + i*(y2-y1)*(H-1)/(crop_h-1)
    ys = (y1 * (h - 1) + np.arange(h) * (y2 - y1) * (h - 1) / max(h - 1, 1)).astype(np.float32)
    xs = (x1 * (w - 1) + np.arange(w) * (x2 - x1) * (w - 1) / max(w - 1, 1)).astype(np.float32)
    map_x, map_y = np.meshgrid(xs, ys)
    out = cv2.remap(image.astype(np.float32), map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


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
