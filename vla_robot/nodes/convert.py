"""The one place where ROS messages become numpy arrays and back.

Every node goes through these functions, so an image, a joint state or a trajectory means the same
thing everywhere. Conventions (docs/interfaces.md): images are ``uint8`` H×W×3 RGB; joint vectors
are float arrays ordered by a list of joint names; stamps are ``float`` seconds. Bad messages raise
``ValueError`` saying what was wrong and what was expected.

Standard messages only: the control source of a command travels in ``header.frame_id`` of the
command trajectory, episode events are JSON in ``std_msgs/String``, the on-policy record of a chunk
(observation as sent, tokens, log-probs) travels as its msgpack bytes in ``std_msgs/UInt8MultiArray``.
"""
from __future__ import annotations

import json
import math
from typing import Any, Sequence

import numpy as np
from builtin_interfaces.msg import Duration, Time
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Float64MultiArray, String, UInt8MultiArray
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from vla_robot.control.trajectory import chunk_to_trajectory
from vla_robot.data import records
from vla_robot.robot.description import RobotDescription, reorder_joints

__all__ = [
    "to_stamp",
    "from_stamp",
    "to_duration",
    "from_duration",
    "image_to_msg",
    "msg_to_image",
    "camera_info_msg",
    "joint_state_to_msg",
    "msg_to_joint_state",
    "trajectory_to_msg",
    "chunk_to_msg",
    "command_to_msg",
    "arm_trajectory_msg",
    "gripper_command_msg",
    "msg_to_trajectory",
    "msg_to_command",
    "record_to_msg",
    "msg_to_record",
    "event_to_msg",
    "msg_to_event",
    "COMMAND_SOURCES",
    "command_chunk",
]

# header.frame_id of an arm command says who produced it (recorded as the `control` column).
COMMAND_SOURCES = ("policy", "teleop", "hold", "reset", "estop")


# --- time ---------------------------------------------------------------------------------------
def _sec_nanosec(t: float, what: str) -> tuple[int, int]:
    """Seconds (float, >= 0) -> (sec, nanosec) with nanosec < 1e9."""
    if not math.isfinite(t) or t < 0:
        raise ValueError(f"{what} must be a finite, non-negative number of seconds, got {t!r}")
    sec = int(math.floor(t))
    nanosec = int(round((t - sec) * 1e9))
    if nanosec >= 1_000_000_000:
        sec, nanosec = sec + 1, nanosec - 1_000_000_000
    return sec, nanosec


def to_stamp(t: float) -> Time:
    """Seconds (float, >= 0) -> builtin_interfaces/Time."""
    sec, nanosec = _sec_nanosec(t, "stamp")
    return Time(sec=sec, nanosec=nanosec)


def from_stamp(stamp: Time) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def to_duration(t: float) -> Duration:
    sec, nanosec = _sec_nanosec(t, "duration")
    return Duration(sec=sec, nanosec=nanosec)


def from_duration(d: Duration) -> float:
    return d.sec + d.nanosec * 1e-9


# --- images -------------------------------------------------------------------------------------
_ENCODINGS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}


def image_to_msg(image: np.ndarray, stamp: float, frame_id: str = "") -> Image:
    """uint8 H×W×3 RGB array -> sensor_msgs/Image (rgb8)."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"image must be a uint8 array of shape H×W×3 (RGB), got {image.dtype} array of shape {image.shape}"
        )
    msg = Image()
    msg.header.stamp = to_stamp(stamp)
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(image.shape[0]), int(image.shape[1])
    msg.encoding = "rgb8"
    msg.is_bigendian = 0
    msg.step = msg.width * 3
    msg.data = np.ascontiguousarray(image).tobytes()
    return msg


def msg_to_image(msg: Image) -> tuple[np.ndarray, float]:
    """sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8 or mono8) -> (uint8 H×W×3 RGB array, stamp)."""
    enc = msg.encoding.lower()
    if enc not in _ENCODINGS:
        raise ValueError(f"image encoding '{msg.encoding}' is not supported; expected one of {', '.join(_ENCODINGS)}")
    ch = _ENCODINGS[enc]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise ValueError(f"image has no pixels (height={h}, width={w})")
    if step < w * ch:
        raise ValueError(f"image step {step} is shorter than width×channels = {w * ch} for {enc}")
    buf = np.frombuffer(msg.data, dtype=np.uint8)
    if buf.size != step * h:
        raise ValueError(f"image data has {buf.size} bytes; expected step×height = {step}×{h} = {step * h}")
    img = buf.reshape(h, step)[:, : w * ch].reshape(h, w, ch)
    if enc == "rgb8":
        out = img
    elif enc == "bgr8":
        out = img[:, :, ::-1]
    elif enc == "rgba8":
        out = img[:, :, :3]
    elif enc == "bgra8":
        out = img[:, :, 2::-1]
    else:
        out = np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(out), from_stamp(msg.header.stamp)


def camera_info_msg(
    width: int,
    height: int,
    stamp: float,
    frame_id: str = "",
    k: Sequence[float] | None = None,
    d: Sequence[float] | None = None,
    distortion_model: str = "plumb_bob",
) -> CameraInfo:
    """CameraInfo for a camera of the given size; ``k`` is the 3×3 intrinsic matrix row-major (9 numbers)."""
    msg = CameraInfo()
    msg.header.stamp = to_stamp(stamp)
    msg.header.frame_id = frame_id
    msg.width, msg.height = int(width), int(height)
    if k is None:
        f = float(max(width, height))
        k = [f, 0.0, width / 2.0, 0.0, f, height / 2.0, 0.0, 0.0, 1.0]
    k = [float(v) for v in np.asarray(k, dtype=float).ravel()]
    if len(k) != 9:
        raise ValueError(f"camera matrix k must have 9 numbers (3×3 row-major), got {len(k)}")
    msg.k = k
    msg.d = [float(v) for v in (np.zeros(5) if d is None else np.asarray(d, dtype=float).ravel())]
    msg.distortion_model = distortion_model
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [k[0], k[1], k[2], 0.0, k[3], k[4], k[5], 0.0, k[6], k[7], k[8], 0.0]
    return msg


# --- joints -------------------------------------------------------------------------------------
def _vector(values: Any, n: int | None, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or (n is not None and arr.shape[0] != n):
        raise ValueError(f"{what} must be a 1-D vector of {n if n is not None else 'N'} numbers, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} contains NaN or infinity: {arr.tolist()}")
    return arr


def joint_state_to_msg(
    names: Sequence[str], position: Any, stamp: float, velocity: Any = None, effort: Any = None
) -> JointState:
    names = list(names)
    msg = JointState()
    msg.header.stamp = to_stamp(stamp)
    msg.name = names
    msg.position = _vector(position, len(names), "joint position").tolist()
    if velocity is not None:
        msg.velocity = _vector(velocity, len(names), "joint velocity").tolist()
    if effort is not None:
        msg.effort = _vector(effort, len(names), "joint effort").tolist()
    return msg


def msg_to_joint_state(
    msg: JointState, names: Sequence[str] | None = None, *, description: RobotDescription | None = None
) -> tuple[np.ndarray, np.ndarray | None, float]:
    """JointState -> (position, velocity or None, stamp).

    With ``description`` the message is in the hardware's names (any order, as a
    joint_state_broadcaster publishes them) and comes back in the policy's order and units
    (:meth:`vla_robot.robot.RobotDescription.from_joint_state`); with ``names`` it is reordered to
    them; with neither it stays as it came.
    """
    have = list(msg.name)
    if description is not None:
        pos, vel = description.from_joint_state(have, msg.position, msg.velocity)
    else:
        pos, vel = reorder_joints(have, have if names is None else list(names), msg.position, msg.velocity)
    if not np.all(np.isfinite(pos)):
        raise ValueError(f"joint state position contains NaN or infinity: {pos.tolist()}")
    return pos, vel, from_stamp(msg.header.stamp)


# --- trajectories -------------------------------------------------------------------------------
def trajectory_to_msg(trajectory: dict, stamp: float, frame_id: str = "") -> JointTrajectory:
    """A JointTrajectory-shaped dict (``vla_robot.control.chunk_to_trajectory``) -> JointTrajectory."""
    try:
        names = [str(n) for n in trajectory["joint_names"]]
        points = trajectory["points"]
    except (KeyError, TypeError):
        raise ValueError("trajectory must be a dict with 'joint_names' and 'points' (see control.chunk_to_trajectory)") from None
    if not points:
        raise ValueError("trajectory has no points; expected at least one")
    msg = JointTrajectory()
    msg.header.stamp = to_stamp(stamp)
    msg.header.frame_id = frame_id
    msg.joint_names = names
    for i, pt in enumerate(points):
        p = JointTrajectoryPoint()
        p.positions = _vector(pt["positions"], len(names), f"point {i} positions").tolist()
        if pt.get("velocities") is not None:
            p.velocities = _vector(pt["velocities"], len(names), f"point {i} velocities").tolist()
        p.time_from_start = to_duration(float(pt["time_from_start"]))
        msg.points.append(p)
    return msg


def chunk_to_msg(positions: Any, dt: float, names: Sequence[str], stamp: float, frame_id: str = "",
                 start_q: Any = None) -> JointTrajectory:
    """An action chunk H×D -> JointTrajectory (velocities filled, last point at rest), via
    ``vla_robot.control.chunk_to_trajectory``."""
    return trajectory_to_msg(chunk_to_trajectory(positions, dt, list(names), start_q=start_q), stamp, frame_id)


def command_to_msg(
    q_target: Any,
    names: Sequence[str],
    stamp: float,
    dt: float,
    source: str = "policy",
    chunk: tuple[int, int] | None = None,
) -> JointTrajectory:
    """One arm command: reach ``q_target`` in ``dt`` and stop there (a single point at rest).

    ``stamp`` is the stamp of the observation the command came from; ``source`` (policy, teleop,
    hold, reset, estop) goes into ``header.frame_id``. For a policy command, ``chunk`` = (chunk id,
    index of the action in that chunk) is appended as ``policy/c<id>/s<index>``, so whoever records
    knows exactly which action of which chunk the arm executed. A joint trajectory controller stops
    the arm at the target if no further command arrives.
    """
    if source not in COMMAND_SOURCES:
        raise ValueError(f"command source must be one of {COMMAND_SOURCES}, got {source!r}")
    q = _vector(q_target, len(list(names)), "command target")
    frame_id = source if chunk is None else f"{source}/c{int(chunk[0])}/s{int(chunk[1])}"
    return chunk_to_msg(q[None], dt, names, stamp, frame_id=frame_id)


def arm_trajectory_msg(plan: Any, dt: float, description: RobotDescription, stamp: float, frame_id: str = "",
                       start_q: Any = None, velocities: bool = True, hold_s: float = 0.0) -> JointTrajectory:
    """A plan [N, D] of safe commands one ``dt`` apart (policy order and units) -> the message for the
    arm's joint trajectory controller: its joints only (the description's ``arm_hardware_names``: the
    gripper is left out unless it travels with the arm), hardware names and units, point i at
    ``time_from_start = (i + 1)·dt`` after ``stamp`` (the arm is at ``start_q`` at ``stamp``),
    velocities filled with the last point at rest (``velocities=False``: positions only, for a controller
    that upsamples positions-only chunks itself). ``stamp`` 0 means "start on arrival". ``hold_s`` > 0
    repeats the last point that much later: the arm holds it either way, but the trajectory ends later,
    so a controller that drops trajectories ending in the past keeps one delayed beyond its lead."""
    plan = np.atleast_2d(np.asarray(plan, dtype=np.float64))
    names = description.arm_hardware_names()
    n = len(names)
    hw = np.stack([description.to_hardware(q)[:n] for q in plan])
    start = None if start_q is None else description.to_hardware(start_q)[:n]
    traj = chunk_to_trajectory(hw, dt, names, start_q=start)
    if hold_s > 0:
        last = traj["points"][-1]
        traj["points"].append({**last, "time_from_start": last["time_from_start"] + float(hold_s)})
    if not velocities:
        for p in traj["points"]:
            p["velocities"] = None
    return trajectory_to_msg(traj, stamp, frame_id)


def gripper_command_msg(q: Any, description: RobotDescription, dt: float) -> Float64MultiArray | JointTrajectory:
    """The gripper's entry of a command (policy order and units) for its own controller: one value in
    hardware units for a ``position_controller`` (std_msgs/Float64MultiArray, forward_command_controller's
    ``~/commands``), a one-point trajectory reached in ``dt`` from arrival (stamp 0) for a
    ``trajectory_controller``. ValueError for a gripper without a controller of its own."""
    g = description.gripper
    if g.interface not in ("position_controller", "trajectory_controller"):
        raise ValueError(f"{description.label}: the gripper's interface is {g.interface!r}; only a "
                         "position_controller or trajectory_controller gripper takes commands of its own")
    q = _vector(q, description.n_joints, "command")
    value = float(g.to_hardware(q[description.gripper_index]))
    if g.interface == "position_controller":
        return Float64MultiArray(data=[value])
    return trajectory_to_msg({"joint_names": [g.hardware_name], "points": [
        {"positions": [value], "velocities": [0.0], "time_from_start": float(dt)}]}, 0.0)


def command_chunk(frame_id: str) -> tuple[int, int] | None:
    """(chunk id, action index) of a command's ``header.frame_id`` (``policy/c<id>/s<index>``), or None."""
    parts = frame_id.split("/")
    if len(parts) != 3 or not parts[1].startswith("c") or not parts[2].startswith("s"):
        return None
    try:
        return int(parts[1][1:]), int(parts[2][1:])
    except ValueError:
        return None


def msg_to_trajectory(msg: JointTrajectory, names: Sequence[str] | None = None) -> dict:
    """JointTrajectory -> {"positions": P×D, "velocities": P×D or None, "times": P, "names", "stamp", "frame_id"}."""
    have = list(msg.joint_names)
    if not msg.points:
        raise ValueError("joint trajectory has no points; expected at least one")
    pos = np.array([list(p.positions) for p in msg.points], dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != len(have):
        raise ValueError(f"every trajectory point must have {len(have)} positions (one per joint name)")
    vel = None
    if all(len(p.velocities) == len(have) for p in msg.points):
        vel = np.array([list(p.velocities) for p in msg.points], dtype=np.float64)
    times = np.array([from_duration(p.time_from_start) for p in msg.points])
    if names is not None and list(names) != have:
        missing = [n for n in names if n not in have]
        if missing:
            raise ValueError(f"joint trajectory lacks joints {missing}; it has {have}")
        idx = [have.index(n) for n in names]
        pos = pos[:, idx]
        vel = vel[:, idx] if vel is not None else None
        have = list(names)
    if not np.all(np.isfinite(pos)):
        raise ValueError("joint trajectory contains NaN or infinity")
    return {
        "positions": pos,
        "velocities": vel,
        "times": times,
        "names": have,
        "stamp": from_stamp(msg.header.stamp),
        "frame_id": msg.header.frame_id,
    }


def msg_to_command(msg: JointTrajectory, names: Sequence[str] | None = None) -> tuple[np.ndarray, float, str]:
    """An arm command -> (target of its first point, stamp, source); see :func:`command_chunk` for the rest."""
    traj = msg_to_trajectory(msg, names)
    return traj["positions"][0], traj["stamp"], traj["frame_id"].split("/", 1)[0]


# --- the on-policy record of a chunk (RL) --------------------------------------------------------
def record_to_msg(chunk: dict) -> UInt8MultiArray:
    """A chunk record (:func:`vla_robot.data.records.make_chunk`) as the bytes of its msgpack encoding."""
    msg = UInt8MultiArray()
    msg.data = records.encode(chunk)
    return msg


def msg_to_record(msg: UInt8MultiArray) -> dict:
    """-> the chunk record, checked; ValueError saying what is wrong."""
    return records.decode_chunk(memoryview(msg.data))


# --- events -------------------------------------------------------------------------------------
def event_to_msg(event: dict) -> String:
    """An episode event (a JSON-able dict with a ``type`` key) -> std_msgs/String."""
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise ValueError(f"an event must be a dict with a string 'type', got {event!r}")
    return String(data=json.dumps(event, sort_keys=True, default=_json_default))


def msg_to_event(msg: String) -> dict:
    try:
        event = json.loads(msg.data)
    except json.JSONDecodeError as e:
        raise ValueError(f"event is not JSON: {e}: {msg.data[:200]!r}") from None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise ValueError(f"event must be a JSON object with a string 'type', got {msg.data[:200]!r}")
    return event


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)
