"""ChArUco boards: definitions from YAML, detection, and printable images (PNG/PDF at true scale).

Uses the OpenCV >= 4.7 API (``cv2.aruco.CharucoDetector`` + ``board.matchImagePoints``); the old
contrib functions (``calibrateCameraCharuco``, ``interpolateCornersCharuco``) no longer exist.
Board frame: origin at the outer corner of the top-left square, x along the columns, y down the
rows, z into the board (the printed face looks along -z). Corner ``i`` of the board is
``board.corners[i]`` in metres.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml

from vla_robot.calibration.config import BoardConfig
from vla_robot.config import from_dict, read_yaml

__all__ = ["Board", "Detection", "load_board", "save_board"]


@dataclass
class Detection:
    """ChArUco corners found in one image: ``ids`` (N,), ``object_points`` (N,3) m, ``image_points`` (N,2) px."""

    ids: np.ndarray
    object_points: np.ndarray
    image_points: np.ndarray
    markers: int

    @property
    def count(self) -> int:
        return int(self.ids.size)


def load_board(path: str | os.PathLike) -> "Board":
    """Read a board definition YAML (the keys of :class:`BoardConfig`)."""
    path = Path(path)
    doc = read_yaml(path, "board file", hint="examples are in calibration/boards/")
    cfg = from_dict(BoardConfig, doc if doc is not None else {}, source=str(path))
    if not cfg.name:
        cfg.name = path.stem
    return Board(cfg)


def save_board(cfg: BoardConfig, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(asdict(cfg), sort_keys=False))
    return path


_OFFSET: np.ndarray | None = None


def _detector_offset() -> np.ndarray:
    """The constant shift of ``CharucoDetector`` corners in this OpenCV build, measured once.

    OpenCV < 4.13 returns ChArUco corners shifted by +0.5 px in x and y (opencv#25539; fixed by
    opencv PR #28380, which removed a stray +0.5 after ``cornerSubPix``). A half-pixel error in every
    corner is a 0.05 deg camera rotation at 600 px focal length, so it is measured on a rendered
    board (where the true corners are known exactly) and removed; rounded to 0 or 0.5 so that a
    fixed build gets no correction.
    """
    global _OFFSET
    if _OFFSET is None:
        cfg = BoardConfig(squares_x=5, squares_y=5, square_length=0.04, marker_length=0.03, dictionary="4X4_50")
        board = cv2.aruco.CharucoBoard((5, 5), 0.04, 0.03, cv2.aruco.getPredefinedDictionary(cv2.aruco.DICT_4X4_50))
        ppm, margin = 1000.0, 20
        img = cv2.GaussianBlur(board.generateImage((200 + 2 * margin, 200 + 2 * margin), marginSize=margin, borderBits=1), (0, 0), 0.8)
        corners, ids, _, _ = cv2.aruco.CharucoDetector(board).detectBoard(img)
        if ids is None or len(ids) < 4:  # pragma: no cover - the detector itself is broken
            raise RuntimeError(f"OpenCV {cv2.__version__}: CharucoDetector finds no corners on a generated board ({cfg})")
        obj = np.asarray(board.getChessboardCorners())[np.asarray(ids).ravel(), :2]
        shift = (np.asarray(corners).reshape(-1, 2) - (obj * ppm + margin - 0.5)).mean(axis=0)
        _OFFSET = np.round(shift * 2) / 2
    return _OFFSET


class Board:
    """A ChArUco board and its detector."""

    def __init__(self, config: BoardConfig | None = None, **kwargs) -> None:
        if config is None:
            config = from_dict(BoardConfig, kwargs, source="Board()")
        else:
            config.validate()
        self.config = config
        dictionary = cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, "DICT_" + config.dictionary))
        self.cv_board = cv2.aruco.CharucoBoard(
            (config.squares_x, config.squares_y), config.square_length, config.marker_length, dictionary
        )
        if config.legacy_pattern:
            self.cv_board.setLegacyPattern(True)
        params = cv2.aruco.CharucoParameters()
        params.tryRefineMarkers = True
        detector_params = cv2.aruco.DetectorParameters()
        detector_params.cornerRefinementMethod = cv2.aruco.CORNER_REFINE_SUBPIX
        self._detector = cv2.aruco.CharucoDetector(self.cv_board, params, detector_params)
        self.corners = np.asarray(self.cv_board.getChessboardCorners(), dtype=np.float64).reshape(-1, 3)

    @property
    def size_m(self) -> tuple[float, float]:
        """Width and height of the squares area in metres."""
        c = self.config
        return c.squares_x * c.square_length, c.squares_y * c.square_length

    @property
    def max_corners(self) -> int:
        return len(self.corners)

    def detect(self, image: np.ndarray) -> Detection:
        """Find the board's inner corners in an RGB, BGR or grey ``uint8`` image (sub-pixel refined)."""
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
            raise ValueError(f"detect: expected a uint8 HxW or HxWx3 image, got {image.dtype} {image.shape}")
        gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.shape[2] == 3 else image[..., 0]
        ch_corners, ch_ids, _mk_corners, mk_ids = self._detector.detectBoard(np.ascontiguousarray(gray))
        markers = 0 if mk_ids is None else len(mk_ids)
        if ch_ids is None or len(ch_ids) == 0:
            return Detection(np.zeros(0, int), np.zeros((0, 3)), np.zeros((0, 2)), markers)
        ids = np.asarray(ch_ids).reshape(-1).astype(int)
        pts = np.asarray(ch_corners, np.float64).reshape(-1, 2) - _detector_offset()
        return Detection(ids, self.corners[ids].copy(), pts, markers)

    # --- printing -------------------------------------------------------------------------------
    def image(self, pixels_per_metre: float = 300 / 0.0254, margin_m: float = 0.01) -> np.ndarray:
        """The board as a grey uint8 image with a white margin (default 300 dpi)."""
        w, h = self.size_m
        margin = int(round(margin_m * pixels_per_metre))
        size = (int(round(w * pixels_per_metre)) + 2 * margin, int(round(h * pixels_per_metre)) + 2 * margin)
        return self.cv_board.generateImage(size, marginSize=margin, borderBits=1)

    def write_png(self, path: str | os.PathLike, dpi: float = 300, margin_m: float = 0.01) -> Path:
        """PNG at ``dpi`` with the DPI stored, so printing at 100 % gives the true size."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        img = self.image(dpi / 0.0254, margin_m)
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.image

        matplotlib.image.imsave(path, img, cmap="gray", vmin=0, vmax=255, dpi=dpi, format="png")
        return path

    def write_pdf(self, path: str | os.PathLike, dpi: float = 300, margin_m: float = 0.01) -> Path:
        """A one-page PDF whose page is exactly the board plus margin; print at 100 % (no fit-to-page)."""
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        img = self.image(dpi / 0.0254, margin_m)
        w, h = self.size_m
        fig = Figure(figsize=((w + 2 * margin_m) / 0.0254, (h + 2 * margin_m) / 0.0254))
        ax = fig.add_axes((0, 0, 1, 1))
        ax.imshow(img, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_axis_off()
        c = self.config
        fig.text(
            0.5, 0.002,
            f"{c.name or 'charuco'}: {c.squares_x}x{c.squares_y} squares of {c.square_length * 1000:g} mm, "
            f"markers {c.marker_length * 1000:g} mm, DICT_{c.dictionary}. Print at 100 %; check one square with a ruler.",
            ha="center", va="bottom", fontsize=5, color="0.4",
        )
        fig.savefig(path, format="pdf", dpi=dpi)
        return path
