"""The trained success detector, run with onnxruntime (no torch: the robot side can use it).

A detector on disk is two files side by side: ``X.onnx`` (the graph; inputs ``images`` uint8
[N, cameras, K, H, W, 3] and ``state`` float32 [N, K, D], output ``p_success`` float32 [N]) and its
sidecar ``X.json`` (the :class:`~vla_robot.detector.features.FeatureSpec`, the threshold, the
input spec, the .onnx's sha256 and the training report). ``vla-robot detector train --out DIR``
writes ``DIR/detector.onnx`` and ``DIR/detector.json``; :meth:`SuccessDetector.load` takes the
folder, the .onnx or the .json.

::

    det = SuccessDetector.load("runs/detector")
    p = det.predict_episode({"front": frames_TxHxWx3, "wrist": ...}, states_TxD)   # P(success)
    det.label(p)                                                               # Label by threshold

Anything missing, damaged or not matching its sidecar is a :class:`DetectorError` that names the
file and says how to fix it; a caller that labels episodes falls back to asking a person.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from .features import INPUTS, FeatureSpec, episode_features, features_from_arrays

__all__ = ["SuccessDetector", "DetectorError", "detector_paths", "choose_providers", "FORMAT", "OUTPUT"]

FORMAT = "vla_robot.success_detector/1"
OUTPUT = "p_success"
TRAIN_HINT = "train one with: vla-robot detector train --dataset DIR --out {out}"


class DetectorError(RuntimeError):
    """A success detector that cannot be used: missing, damaged, or not matching its inputs (the message says which)."""


def detector_paths(path: str | Path) -> dict[str, Path]:
    """The files of the detector at ``path`` (a folder, its .onnx or its .json): onnx, sidecar, torch
    weights (for the parity benchmark) and the training report's folder."""
    path = Path(path)
    if path.suffix in (".onnx", ".json", ".pt"):
        stem = path.with_suffix("")
        return {"onnx": stem.with_suffix(".onnx"), "sidecar": stem.with_suffix(".json"),
                "torch": stem.with_suffix(".pt"), "report": stem.parent / f"{stem.name}_report"}
    return {"onnx": path / "detector.onnx", "sidecar": path / "detector.json", "torch": path / "detector.pt",
            "report": path / "report"}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def choose_providers(device: str = "auto") -> list[str]:
    """onnxruntime providers: CUDA first where onnxruntime offers it and the machine has an NVIDIA
    device (onnxruntime-gpu lists CUDA even without a GPU, then warns and falls back), else CPU.
    ``device``: "auto", "cuda" (CUDA required) or "cpu"."""
    import onnxruntime as ort

    if device not in ("auto", "cuda", "cpu"):
        raise ValueError(f"device must be 'auto', 'cuda' or 'cpu', got {device!r}")
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers() and os.path.exists("/dev/nvidiactl")
    if device == "cuda" and not has_cuda:
        raise DetectorError("device 'cuda': onnxruntime has no usable CUDAExecutionProvider here "
                            f"(available: {ort.get_available_providers()}); use device 'cpu' or 'auto'")
    if device == "cpu" or not has_cuda:
        return ["CPUExecutionProvider"]
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def _read_sidecar(paths: dict[str, Path], asked: Path) -> dict:
    missing = [str(p) for p in (paths["onnx"], paths["sidecar"]) if not p.is_file()]
    if missing:
        raise DetectorError(f"no success detector at {asked}: {', '.join(missing)} missing (a detector is "
                            f"detector.onnx with its sidecar detector.json); {TRAIN_HINT.format(out=asked)}")
    try:
        meta = json.loads(paths["sidecar"].read_text())
        if not isinstance(meta, dict):
            raise ValueError(f"a JSON object expected, got {type(meta).__name__}")
    except (ValueError, UnicodeDecodeError) as e:
        raise DetectorError(f"{paths['sidecar']} is damaged (not JSON: {e}); "
                            f"{TRAIN_HINT.format(out=asked)}") from None
    if meta.get("format") != FORMAT:
        raise DetectorError(f"{paths['sidecar']} is not a success-detector sidecar (format {meta.get('format')!r}, "
                            f"expected {FORMAT!r}); {TRAIN_HINT.format(out=asked)}")
    if meta.get("onnx_sha256") != sha256(paths["onnx"]):
        raise DetectorError(f"{paths['onnx']} does not match its sidecar {paths['sidecar'].name} (sha256 differs): "
                            f"the .onnx was damaged or replaced; restore both files together or "
                            f"{TRAIN_HINT.format(out=asked)}")
    return meta


class SuccessDetector:
    """P(success) of an episode from its last frames and joint state, on onnxruntime."""

    def __init__(self, session, meta: dict, paths: dict[str, Path]):
        self.session, self.meta, self.paths = session, meta, paths
        self.spec = FeatureSpec.from_json(meta["spec"])
        self.threshold = float(meta["threshold"])

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", threads: int | None = 1) -> "SuccessDetector":
        """The detector at ``path`` (folder, .onnx or .json); :class:`DetectorError` if missing, damaged
        or mismatched. ``device``: see :func:`choose_providers`. ``threads``: onnxruntime's intra-op
        threads on the CPU; one by default, because the robot PC's cores belong to the control loop and
        one thread labels an episode in about a millisecond (None: onnxruntime's default, every core)."""
        import onnxruntime as ort

        asked = Path(path)
        paths = detector_paths(asked)
        meta = _read_sidecar(paths, asked)
        try:
            spec = FeatureSpec.from_json(meta["spec"])
            float(meta["threshold"])
        except (KeyError, TypeError, ValueError) as e:
            raise DetectorError(f"{paths['sidecar']} is damaged (its spec or threshold: {e}); "
                                f"{TRAIN_HINT.format(out=asked)}") from None
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads is not None:
            opts.intra_op_num_threads = int(threads)
        try:
            session = ort.InferenceSession(str(paths["onnx"]), opts, providers=choose_providers(device))
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own kinds for a damaged graph
            raise DetectorError(f"{paths['onnx']} cannot be loaded by onnxruntime ({type(e).__name__}: "
                                f"{str(e)[:300]}); the file is damaged: {TRAIN_HINT.format(out=asked)}") from None
        _check_graph(session, spec, paths["onnx"])
        return cls(session, meta, paths)

    @property
    def provider(self) -> str:
        """The execution provider onnxruntime actually uses (CUDA falls back to CPU when it cannot start)."""
        return self.session.get_providers()[0]

    @property
    def report(self) -> dict:
        """The training report (held-out figures) saved with the detector."""
        return dict(self.meta.get("report", {}))

    def predict_features(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """P(success) [N] for a batch of detector inputs (:func:`vla_robot.detector.features.stack`)."""
        k, (h, w), d = self.spec.frames, self.spec.image_size, self.spec.state_dim
        want = {"images": ((len(self.spec.cameras), k, h, w, 3), np.uint8), "state": ((k, d), np.float32)}
        feeds = {}
        for name, (shape, dtype) in want.items():
            a = batch.get(name) if isinstance(batch, dict) else None
            if not isinstance(a, np.ndarray) or a.shape[1:] != shape or a.dtype != dtype or len(a) < 1:
                got = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
                raise ValueError(f"batch[{name!r}] must be {np.dtype(dtype).name} [N, {', '.join(map(str, shape))}] "
                                 f"(features.stack of episode_features), got {got}")
            feeds[name] = np.ascontiguousarray(a)
        if len(feeds["images"]) != len(feeds["state"]):
            raise ValueError(f"batch has {len(feeds['images'])} images but {len(feeds['state'])} state rows")
        return self.session.run([OUTPUT], feeds)[0].astype(np.float64)

    def predict_episode(self, frames: dict[str, np.ndarray], states: np.ndarray) -> float:
        """P(success) of one episode: ``frames[cam]`` uint8 [T, H, W, 3] in time order, ``states`` [T, D]."""
        f = features_from_arrays(frames, states, self.spec)
        return float(self.predict_features({k: f[k][None] for k in INPUTS})[0])

    def predict_dataset_episode(self, ep) -> float:
        """P(success) of a saved episode (:class:`vla_robot.data.reader.Episode`), decoding only the frames it reads."""
        f = episode_features(ep, self.spec)
        return float(self.predict_features({k: f[k][None] for k in INPUTS})[0])

    def is_success(self, p: float) -> bool:
        return bool(p >= self.threshold)


def _check_graph(session, spec: FeatureSpec, onnx_path: Path) -> None:
    """The graph's inputs must be the sidecar's (names, dtypes, fixed sizes)."""
    k, (h, w) = spec.frames, spec.image_size
    want = {"images": ("tensor(uint8)", [len(spec.cameras), k, h, w, 3]),
            "state": ("tensor(float)", [k, spec.state_dim])}
    got = {i.name: (i.type, list(i.shape[1:])) for i in session.get_inputs()}
    if got != want:
        raise DetectorError(f"{onnx_path} takes inputs {got}, but its sidecar describes {want}: the two files are "
                            f"from different detectors; {TRAIN_HINT.format(out=onnx_path.parent)}")
