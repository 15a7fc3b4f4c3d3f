"""Hand-eye refinement: the landing algorithm vs the rotation-vector least-squares baseline.

Both refine the same joint reprojection cost (all corners of all views; unknowns R_A, t_A, R_B,
t_B) from the same OpenCV PARK start, in the same run, on the same data. Views come from the
MuJoCo calibration rig's geometry (vla_robot.calibration.synthetic), projected with lens
distortion and pixel noise, with and without robot-pose noise; ``--render`` uses rendered and
detected images instead (slower). Printed per setting, as medians over seeds: errors against
the true camera pose for PARK, the best of the five OpenCV methods, landing and baseline; final
cost; time; residual evaluations; max |R^T R - I|. With robot-pose noise, "+prior" rows also refine
each view's arm pose under a prior of the arm's accuracy (handeye.pose_sigma_mm/deg).

    .venv/bin/python benchmarks/calibration_refine.py [--seeds 8] [--views 15] [--render]

Exits non-zero if landing ends off the manifold (> 1e-6) or at a higher cost than the baseline.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vla_robot.calibration.config import HandEyeConfig  # noqa: E402
from vla_robot.calibration.geometry import make_T, pose_error  # noqa: E402
from vla_robot.calibration.handeye import calibrate_hand_eye  # noqa: E402
from vla_robot.calibration.synthetic import default_rig, projected_views  # noqa: E402

SETTINGS = [
    # name, pixel noise px, robot pose noise mm, deg
    ("pixel 0.2", 0.2, 0.0, 0.0),
    ("pixel 0.5", 0.5, 0.0, 0.0),
    ("pixel 0.2 + pose 0.5mm/0.05deg", 0.2, 0.5, 0.05),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--views", type=int, default=15)
    ap.add_argument("--render", action="store_true", help="rendered + detected views (one setting)")
    args = ap.parse_args()
    failures = 0
    settings = [("rendered, 1 grey-level noise", None, 0.0, 0.0)] if args.render else SETTINGS
    for mode in ("eye_in_hand", "eye_to_hand"):
        for name, pix, mm, deg in settings:
            rows = {k: [] for k in ("PARK", "best OpenCV", "landing", "baseline")}
            extra = {"landing": [], "baseline": []}
            if mm:
                for k in ("landing+prior", "baseline+prior"):
                    rows[k], extra[k] = [], []
            for seed in range(args.seeds):
                rig = default_rig(mode, seed=seed)
                try:
                    if pix is None:
                        poses, dets = [], []
                        for q in rig.view_joints(args.views):
                            poses.append(rig.fk(q))
                            dets.append(rig.board.detect(rig.render()))
                        camera = rig.camera
                    else:
                        poses, dets, camera = projected_views(rig, args.views, pix, mm, deg, seed=seed,
                                                              distortion=[-0.08, 0.05, 0.0005, -0.0003, 0.0])
                    res = calibrate_hand_eye(poses, dets, camera, rig.board, mode)
                    prior = calibrate_hand_eye(poses, dets, camera, rig.board, mode,
                                               HandEyeConfig(pose_sigma_mm=mm, pose_sigma_deg=deg)) if mm else None
                finally:
                    rig.close()
                truth = rig.truth.T_gripper_cam if mode == "eye_in_hand" else rig.truth.T_base_cam
                errs = {m: pose_error(T, truth) for m, T in res.methods.items()}
                rows["PARK"].append(errs["PARK"])
                rows["best OpenCV"].append(min(errs.values(), key=lambda e: e[0] + e[1]))
                runs = [(res, "")] + ([(prior, "+prior")] if prior is not None else [])
                for rr, suffix in runs:
                    for r, key in ((rr.landing, "landing"), (rr.baseline, "baseline")):
                        rows[key + suffix].append(pose_error(make_T(r.rotations[0], r.vector[:3]), truth))
                        extra[key + suffix].append((r.cost, r.seconds * 1000, r.evaluations, r.orthogonality))
                    if rr.landing.orthogonality > 1e-6 or rr.landing.cost > rr.baseline.cost * (1 + 1e-6):
                        failures += 1
                        print(f"  FAIL seed {seed}{suffix}: landing cost {rr.landing.cost:.6g} vs {rr.baseline.cost:.6g}, "
                              f"orthogonality {rr.landing.orthogonality:.1e}")
            print(f"\n{mode}, {name}, {args.views} views, median of {args.seeds} seeds")
            print(f"  {'estimator':<14s} {'rot [deg]':>10s} {'trans [mm]':>11s} {'cost':>10s} {'ms':>7s} {'evals':>6s} {'|RtR-I|':>8s}")
            for key, vals in rows.items():
                v = np.median(np.array(vals), axis=0)
                line = f"  {key:<14s} {v[0]:10.4f} {v[1]:11.3f}"
                if key in extra:
                    e = np.array(extra[key])
                    line += f" {np.median(e[:, 0]):10.4f} {np.median(e[:, 1]):7.1f} {np.median(e[:, 2]):6.0f} {e[:, 3].max():8.1e}"
                print(line)
    print("\nOK: landing ends on the manifold and at or below the baseline's cost in every run" if not failures
          else f"\n{failures} runs failed the landing checks")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
