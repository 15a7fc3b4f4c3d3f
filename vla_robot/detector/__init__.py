"""Learned success detectors: label an episode from its last frames and joint state (issue 17).

::

    from vla_robot.detector import SuccessDetector, DetectorError, train_detector
    train_detector(["runs/ds"], "runs/detector", seed=0)        # torch; writes detector.onnx + .json
    det = SuccessDetector.load("runs/detector")                  # onnxruntime only
    p = det.predict_episode(frames, states)                      # P(success)

The runtime (:mod:`.runtime`, :mod:`.features`) needs numpy, OpenCV and onnxruntime; training
(:mod:`.train`, :mod:`.model`) needs torch. Names are imported on first use, so importing this
package imports neither. See docs/detector.md.
"""
from __future__ import annotations

__all__ = ["SuccessDetector", "DetectorError", "FeatureSpec", "episode_features", "features_from_arrays", "stack",
           "train_detector", "load_examples", "TrainConfig", "Examples", "record_twin_dataset", "detector_paths"]

_LAZY = {
    "SuccessDetector": "runtime", "DetectorError": "runtime", "detector_paths": "runtime",
    "FeatureSpec": "features", "episode_features": "features", "features_from_arrays": "features", "stack": "features",
    "train_detector": "train", "load_examples": "train", "TrainConfig": "train", "Examples": "train",
    "record_twin_dataset": "synthetic",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
