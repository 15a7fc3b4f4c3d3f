"""Reduced visual meshes for CPU rendering: read STL/OBJ, decimate, write binary STL.

MuJoCo's CPU renderer (Mesa llvmpipe) pays per triangle: the stock SO-101 meshes (322k triangles)
render at about 20 fps. :func:`reduce_mesh` simplifies a mesh by vertex clustering (every vertex
snaps to the mean of its grid cell, collapsed triangles are dropped), which keeps each part's
silhouette at the sizes the policy sees (64–256 px) at a tenth of the triangles. The reduced files
keep the originals' names and coordinate frames, so they replace them one for one in the MJCF.

numpy only; used offline by ``vla-robot twin build-models`` to write ``models/robots/<robot>/meshes``.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

__all__ = ["read_mesh", "read_stl", "read_obj", "write_stl", "reduce_mesh", "weld"]


def read_stl(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (N x 3 float64) and faces (M x 3 int64) of a binary or ASCII STL file, welded."""
    data = Path(path).read_bytes()
    if len(data) >= 84:
        (n,) = struct.unpack_from("<I", data, 80)
        if 84 + 50 * n == len(data):
            rec = np.frombuffer(data, dtype=np.dtype([("n", "<f4", 3), ("v", "<f4", (3, 3)), ("a", "<u2")]),
                                count=n, offset=84)
            tris = rec["v"].astype(np.float64)
            return weld(tris.reshape(-1, 3), np.arange(3 * n).reshape(n, 3))
    text = data.decode("ascii", errors="replace")
    if not text.lstrip().startswith("solid"):
        raise ValueError(f"{path}: not an STL file (neither binary with a matching size nor ASCII 'solid')")
    verts = [list(map(float, line.split()[1:4])) for line in text.splitlines() if line.strip().startswith("vertex")]
    if len(verts) % 3:
        raise ValueError(f"{path}: ASCII STL has {len(verts)} vertices, not a multiple of 3")
    v = np.array(verts, dtype=np.float64).reshape(-1, 3)
    return weld(v, np.arange(len(v)).reshape(-1, 3))


def read_obj(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices and triangulated faces of a Wavefront OBJ file (positions only)."""
    verts, faces = [], []
    for line in Path(path).read_text(errors="replace").splitlines():
        if line.startswith("v "):
            verts.append([float(x) for x in line.split()[1:4]])
        elif line.startswith("f "):
            idx = [int(tok.split("/")[0]) for tok in line.split()[1:]]
            idx = [i - 1 if i > 0 else len(verts) + i for i in idx]
            faces.extend([idx[0], idx[k], idx[k + 1]] for k in range(1, len(idx) - 1))
    if not verts or not faces:
        raise ValueError(f"{path}: OBJ file has no vertices or faces")
    return np.array(verts, dtype=np.float64), np.array(faces, dtype=np.int64)


def read_mesh(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an STL or OBJ mesh by its extension."""
    suffix = Path(path).suffix.lower()
    if suffix == ".stl":
        return read_stl(path)
    if suffix == ".obj":
        return read_obj(path)
    raise ValueError(f"{path}: unsupported mesh format {suffix!r}; expected .stl or .obj")


def write_stl(path: str | Path, vertices: np.ndarray, faces: np.ndarray) -> None:
    """Write a binary STL (face normals computed from the winding)."""
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    tri = v[f]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    norm = np.linalg.norm(normal, axis=1, keepdims=True)
    normal = np.divide(normal, norm, out=np.zeros_like(normal), where=norm > 0)
    rec = np.zeros(len(f), dtype=np.dtype([("n", "<f4", 3), ("v", "<f4", (3, 3)), ("a", "<u2")]))
    rec["n"] = normal
    rec["v"] = tri
    header = b"vla_robot reduced mesh".ljust(80, b" ")
    Path(path).write_bytes(header + struct.pack("<I", len(f)) + rec.tobytes())


def weld(vertices: np.ndarray, faces: np.ndarray, tol: float = 1e-7) -> tuple[np.ndarray, np.ndarray]:
    """Merge vertices closer than ``tol`` (STL stores three copies of each shared corner)."""
    key = np.round(vertices / tol).astype(np.int64)
    _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    return vertices[first], inverse.reshape(-1)[faces]


def _cluster(v: np.ndarray, f: np.ndarray, cell: float) -> tuple[np.ndarray, np.ndarray]:
    key = np.floor((v - v.min(axis=0)) / cell).astype(np.int64)
    _, inverse = np.unique(key, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    n = int(inverse.max()) + 1
    nv = np.zeros((n, 3))
    np.add.at(nv, inverse, v)
    nv /= np.bincount(inverse, minlength=n)[:, None]
    nf = inverse[f]
    keep = (nf[:, 0] != nf[:, 1]) & (nf[:, 1] != nf[:, 2]) & (nf[:, 0] != nf[:, 2])
    nf = nf[keep]
    if len(nf):
        _, idx = np.unique(np.sort(nf, axis=1), axis=0, return_index=True)
        nf = nf[np.sort(idx)]
    used = np.unique(nf)
    remap = np.full(n, -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    return nv[used], remap[nf]


def reduce_mesh(vertices: np.ndarray, faces: np.ndarray, target_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """Simplify to at most about ``target_faces`` triangles by vertex clustering.

    The grid cell is found by bisection on a log scale; a mesh already small enough is returned
    unchanged. At least 4 faces are kept so that MuJoCo can still compute a volume.
    """
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    if target_faces < 4:
        raise ValueError(f"target_faces must be >= 4, got {target_faces}")
    if len(f) <= target_faces:
        return v, f
    extent = float(np.max(v.max(axis=0) - v.min(axis=0)))
    lo, hi = extent * 1e-4, extent / 2  # lo: (nearly) no reduction; hi: a handful of faces
    best = _cluster(v, f, hi)
    for _ in range(18):
        mid = float(np.sqrt(lo * hi))
        cand = _cluster(v, f, mid)
        if len(cand[1]) > target_faces:
            lo = mid
        else:
            hi, best = mid, cand
    if len(best[1]) < 4:  # degenerate tiny part: keep the original
        return v, f
    return best
