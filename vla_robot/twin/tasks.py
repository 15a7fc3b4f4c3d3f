"""Tasks of the twin: objects, seeded start states, language instruction, success check, expert.

``reach``: three cubes of different colours (``cubes`` fewer: red first, then green); "touch the red cube" succeeds when the tool centre
point is within ``touch_radius`` of the point just above the named cube's top face. The cubes are
fixed to the table (mocap bodies) so a touch does not move them.

``pick_place``: two free cubes (red, blue; ``cubes=1``: red only) and a plate; "put the red cube on the plate" succeeds when the
named cube rests on the plate (centre over the plate, at table height, nearly still) and the
gripper has let go.

Every start state is a pure function of its integer id (``np.random.default_rng(start_id)``), so
the same id gives the same scene: this is what GRPO groups rollouts by.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import mujoco
import numpy as np

from vla_robot.twin.config import TASK_CUBES
from vla_robot.twin.robots import for_robot

__all__ = ["TaskGeometry", "ReachTask", "PickPlaceTask", "TASK_CLASSES", "COLOURS"]

COLOURS = {
    "red": (0.85, 0.12, 0.10, 1.0),
    "green": (0.12, 0.65, 0.18, 1.0),
    "blue": (0.12, 0.25, 0.90, 1.0),
}


@dataclass(frozen=True)
class TaskGeometry:
    """The tasks on one robot: workspace in its base frame (metres, radians), objects, expert tuning."""

    cube_half: float
    radius: tuple[float, float]  # object distance from the base axis
    angle: tuple[float, float]  # object bearing (0 = straight ahead, +x)
    min_separation: float
    plate_half: float
    start_jitter: float  # uniform jitter of the arm joints around home at the start (rad)
    hover: float  # expert approach height above the object's top (m)
    pick_cube_half: float  # pick_place cubes: small enough to fit under the gripper's body
    pick_cube_mass: float  # kg
    pick_episode_s: float  # pick_place episode length: the expert's longest over 40 starts, with a margin
    # reach: the touch point sits this far above the top face (m), where the tcp is when the
    # fingertips touch it
    touch_offset: float
    # pick_place expert: the gripper opening for the grasp (None: the robot's gripper_open), and
    # how far the pinch site sits from the static jaw's pad (None: jaws close symmetrically)
    pick_open: float | None = None
    pinch_to_pad: float | None = None


#: per registered robot (vla_robot.twin.robots): the tasks' geometry on it
GEOMETRY = {
    # the tcp is between the fingertips; the expert needs at most ~3.9 s for pick_place; about 7 cm
    # between the pads leaves room around a 2-3 cm cube, clear of the others; the pinch site sits
    # 15 mm from the static pad, so the expert brings that pad down beside the cube's face
    "so101": TaskGeometry(cube_half=0.015, radius=(0.15, 0.25), angle=(-0.8, 0.8), min_separation=0.065,
                          plate_half=0.035, start_jitter=0.08, hover=0.06, pick_cube_half=0.011,
                          pick_cube_mass=0.02, pick_episode_s=5.0, touch_offset=0.012, pick_open=0.75,
                          pinch_to_pad=0.015),
    # the tcp is between the pads of the Robotiq 2F-85, a little above the tips; the expert needs at
    # most ~5.8 s for pick_place (slower joints)
    "panda": TaskGeometry(cube_half=0.02, radius=(0.40, 0.62), angle=(-0.45, 0.45), min_separation=0.10,
                          plate_half=0.06, start_jitter=0.08, hover=0.10, pick_cube_half=0.02,
                          pick_cube_mass=0.1, pick_episode_s=8.0, touch_offset=0.025),
}


def _place(rng: np.random.Generator, geo: TaskGeometry, n: int, min_sep: float) -> np.ndarray:
    """``n`` table positions (x, y) in the workspace, pairwise at least ``min_sep`` apart."""
    for _ in range(1000):
        r = rng.uniform(*geo.radius, size=n)
        a = rng.uniform(*geo.angle, size=n)
        xy = np.stack([r * np.cos(a), r * np.sin(a)], axis=1)
        d = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + np.eye(n) * 1e9
        if d.min() >= min_sep:
            return xy
    raise RuntimeError("could not place objects apart; the workspace is too small for min_separation")


@dataclass
class Start:
    """A start state: arm joints, object poses and which object the instruction names."""

    start_id: int
    q_arm: np.ndarray
    objects: dict[str, np.ndarray]  # name -> (x, y, z, yaw)
    target: str
    extra: dict = field(default_factory=dict)


class _Task:
    name = ""
    default_episode_s = 2.0
    all_colours: tuple[str, ...] = ()  # the cubes the task can place, in order

    def __init__(self, robot, cubes: int = 0):
        self.robot = robot
        self.geo = for_robot(GEOMETRY, robot.name, "twin/tasks.py GEOMETRY (the tasks' workspace on each robot)")
        n = cubes or len(self.all_colours)
        if not 1 <= n <= len(self.all_colours):
            raise ValueError(f"{self.name}: cubes must be 1..{len(self.all_colours)} (0 for all), got {cubes}")
        self.colours = list(self.all_colours[:n])

    # --- scene --------------------------------------------------------------------------------
    def build(self, spec: mujoco.MjSpec) -> None:
        raise NotImplementedError

    def bind(self, model: mujoco.MjModel) -> None:
        self.model = model

    def sample(self, start_id: int) -> Start:
        raise NotImplementedError

    def apply(self, model: mujoco.MjModel, data: mujoco.MjData, start: Start) -> None:
        raise NotImplementedError

    def instruction(self, start: Start) -> str:
        raise NotImplementedError

    def success(self, env) -> bool:
        raise NotImplementedError

    def expert(self, env) -> np.ndarray:
        raise NotImplementedError

    # --- helpers ------------------------------------------------------------------------------
    def _start_arm(self, rng: np.random.Generator) -> np.ndarray:
        arm = self.robot.arm_joints
        q = self.robot.home.copy()
        q[arm] += rng.uniform(-self.geo.start_jitter, self.geo.start_jitter, size=len(arm))
        return self.robot.clip(q)


def _yaw_quat(yaw: float) -> list[float]:
    return [float(np.cos(yaw / 2)), 0.0, 0.0, float(np.sin(yaw / 2))]


def _step_towards(q: np.ndarray, goal: np.ndarray, max_step: np.ndarray) -> np.ndarray:
    return q + np.clip(goal - q, -max_step, max_step)


class ReachTask(_Task):
    name = "reach"
    default_episode_s = 2.0
    all_colours = TASK_CUBES["reach"]

    def __init__(self, robot, cubes: int = 0):
        super().__init__(robot, cubes)
        self.touch_offset = self.geo.touch_offset
        self.touch_radius = 0.02

    def build(self, spec):
        h = self.geo.cube_half
        for c in self.colours:
            body = spec.worldbody.add_body(name=f"cube_{c}", mocap=True, pos=[0.2, 0, h])
            body.add_geom(name=f"cube_{c}", type=mujoco.mjtGeom.mjGEOM_BOX, size=[h, h, h], rgba=list(COLOURS[c]))

    def bind(self, model):
        super().bind(model)
        self.mocap = {c: model.body_mocapid[model.body(f"cube_{c}").id] for c in self.colours}

    def sample(self, start_id):
        rng = np.random.default_rng(start_id)
        xy = _place(rng, self.geo, len(self.colours), self.geo.min_separation)
        yaw = rng.uniform(-np.pi / 4, np.pi / 4, size=len(self.colours))
        target = self.colours[int(rng.integers(len(self.colours)))]
        objects = {c: np.array([xy[i, 0], xy[i, 1], self.geo.cube_half, yaw[i]]) for i, c in enumerate(self.colours)}
        return Start(start_id, self._start_arm(rng), objects, target)

    def apply(self, model, data, start):
        for c, pose in start.objects.items():
            data.mocap_pos[self.mocap[c]] = pose[:3]
            data.mocap_quat[self.mocap[c]] = _yaw_quat(pose[3])

    def instruction(self, start):
        return f"touch the {start.target} cube"

    def touch_point(self, env) -> np.ndarray:
        pos = env.data.mocap_pos[self.mocap[env.start.target]]
        return pos + np.array([0.0, 0.0, self.geo.cube_half + self.touch_offset])

    def success(self, env) -> bool:
        return bool(np.linalg.norm(env.tcp_pos() - self.touch_point(env)) < self.touch_radius)

    def plan(self, env) -> dict:
        """IK goals for the current start (cached per episode): above the cube, and at the touch point."""
        p = self.touch_point(env)
        q_arm = env.start.q_arm
        above = env.solve_ik(p + [0, 0, self.geo.hover], q_arm)
        touch = env.solve_ik(p, above)
        return {"above": above, "touch": touch}

    def expert(self, env):
        plan = env.episode_cache("plan", lambda: self.plan(env))
        q = env.joint_positions()
        goal = q.copy()
        tcp = env.tcp_pos()
        p = self.touch_point(env)
        near = np.linalg.norm(tcp[:2] - p[:2]) < 0.015 and tcp[2] > p[2] - 0.01
        arm = self.robot.arm_joints
        goal[arm] = plan["touch"] if near else plan["above"]
        goal[self.robot.gripper_index] = env.start.q_arm[self.robot.gripper_index]
        return _step_towards(env.last_command(), goal, env.max_joint_step())


class PickPlaceTask(_Task):
    name = "pick_place"
    all_colours = TASK_CUBES["pick_place"]

    def __init__(self, robot, cubes: int = 0):
        super().__init__(robot, cubes)
        self.default_episode_s = self.geo.pick_episode_s
        self.geo = dataclasses.replace(self.geo, cube_half=self.geo.pick_cube_half)

    def build(self, spec):
        h = self.geo.cube_half
        for c in self.colours:
            body = spec.worldbody.add_body(name=f"cube_{c}", pos=[0.2, 0, h])
            body.add_freejoint(name=f"cube_{c}")
            g = body.add_geom(name=f"cube_{c}", type=mujoco.mjtGeom.mjGEOM_BOX, size=[h, h, h],
                              rgba=list(COLOURS[c]), mass=self.geo.pick_cube_mass)
            g.friction = [1.5, 0.05, 0.001]
            g.condim = 4
        ph = self.geo.plate_half
        plate = spec.worldbody.add_body(name="plate", mocap=True, pos=[0.2, 0.1, 0.002])
        plate.add_geom(name="plate", type=mujoco.mjtGeom.mjGEOM_BOX, size=[ph, ph, 0.002],
                       rgba=[0.92, 0.92, 0.92, 1.0], contype=0, conaffinity=0)

    def bind(self, model):
        super().bind(model)
        self.cube_qadr = {c: model.joint(f"cube_{c}").qposadr[0] for c in self.colours}
        self.cube_dadr = {c: model.joint(f"cube_{c}").dofadr[0] for c in self.colours}
        self.plate_mocap = model.body_mocapid[model.body("plate").id]

    def sample(self, start_id):
        rng = np.random.default_rng(start_id)
        # a little inside the reach workspace: grasps need the gripper close to vertical
        lo, hi = self.geo.radius
        geo = dataclasses.replace(self.geo, radius=(lo, hi - 0.1 * (hi - lo)))
        xy = _place(rng, geo, len(self.colours) + 1, self.geo.min_separation + self.geo.plate_half)
        yaw = rng.uniform(-np.pi / 4, np.pi / 4, size=len(self.colours))
        target = self.colours[int(rng.integers(len(self.colours)))]
        objects = {c: np.array([xy[i, 0], xy[i, 1], self.geo.cube_half, yaw[i]]) for i, c in enumerate(self.colours)}
        objects["plate"] = np.array([xy[-1, 0], xy[-1, 1], 0.002, 0.0])
        return Start(start_id, self._start_arm(rng), objects, target)

    def apply(self, model, data, start):
        for c in self.colours:
            x, y, z, yaw = start.objects[c]
            data.qpos[self.cube_qadr[c]:self.cube_qadr[c] + 7] = [x, y, z, *_yaw_quat(yaw)]
            data.qvel[self.cube_dadr[c]:self.cube_dadr[c] + 6] = 0
        data.mocap_pos[self.plate_mocap] = start.objects["plate"][:3]

    def instruction(self, start):
        return f"put the {start.target} cube on the plate"

    def cube_pos(self, env, colour: str) -> np.ndarray:
        a = self.cube_qadr[colour]
        return env.data.qpos[a:a + 3].copy()

    def success(self, env) -> bool:
        c = self.cube_pos(env, env.start.target)
        plate = env.data.mocap_pos[self.plate_mocap]
        a = self.cube_dadr[env.start.target]
        still = np.linalg.norm(env.data.qvel[a:a + 3]) < 0.05
        on_plate = np.all(np.abs(c[:2] - plate[:2]) < self.geo.plate_half) and c[2] < self.geo.cube_half + 0.01
        released = np.linalg.norm(env.tcp_pos() - c) > self.geo.cube_half + 0.02
        return bool(on_plate and still and released)

    # --- scripted expert: hover, descend, close, lift, carry, lower, open, retreat ----------------
    def _grasp_roll(self, env, q_arm: np.ndarray, yaw: float) -> float:
        """The wrist roll that lines the jaws' closing direction up with a face of the cube."""
        roll_i = len(q_arm) - 1
        lo, hi = env.kinematics.lower[roll_i], env.kinematics.upper[roll_i]
        best, best_cost = q_arm[roll_i], np.inf
        for roll in np.linspace(-np.pi / 2, np.pi / 2, 73):
            if not lo <= roll <= hi:
                continue
            q = q_arm.copy()
            q[roll_i] = roll
            closing = self._closing_dir(env, q)
            mismatch = (np.arctan2(closing[1], closing[0]) - yaw + np.pi / 4) % (np.pi / 2) - np.pi / 4
            cost = abs(mismatch) + 0.01 * abs(roll)
            if cost < best_cost:
                best, best_cost = roll, cost
        return float(best)

    def _closing_dir(self, env, q_arm) -> np.ndarray:
        """World direction along which the jaws close, for arm joints ``q_arm``."""
        kin = env.pinch_kinematics
        kin.fk(q_arm)
        return kin.data.site_xmat[kin.site_id].reshape(3, 3)[:, self.robot.model.closing_axis].copy()

    def _line(self, env, a, b, q_init, n: int) -> list[np.ndarray]:
        """IK waypoints on the straight segment a -> b (the pinch point moves in a line)."""
        out, q = [], q_init
        for t in np.linspace(0, 1, n + 1)[1:]:
            q = env.solve_ik(a + t * (b - a), q, site="pinch", fix_roll=True)
            out.append(q)
        return out

    def plan(self, env) -> list[tuple[str, np.ndarray, float]]:
        """The expert's waypoints: (phase, arm joints, gripper), each reached in turn."""
        start = env.start
        cube = start.objects[start.target]
        plate = start.objects["plate"]
        h = self.geo.cube_half
        up = np.array([0.0, 0.0, self.geo.hover])
        grasp = np.array([cube[0], cube[1], h * 0.9])
        q = start.q_arm[: len(self.robot.arm_joints)].copy()
        g_open = self.robot.gripper_open if self.geo.pick_open is None else self.geo.pick_open
        g_closed = self.robot.gripper_closed
        clear = np.zeros(3)
        q = env.solve_ik(grasp + up, q, site="pinch")
        q[-1] = self._grasp_roll(env, q, cube[3])  # roll the wrist to the cube's faces, then hold it
        if self.geo.pinch_to_pad is not None:
            # bring the static pad down ~5 mm off the cube's face; the closing jaw then pushes the cube onto it
            off = max(0.0, h + 0.005 - self.geo.pinch_to_pad)
            clear = off * self._closing_dir(env, env.solve_ik(grasp + up, q, site="pinch"))
        hover = env.solve_ik(grasp + up + clear, q, site="pinch", fix_roll=True)
        descend = self._line(env, grasp + up + clear, grasp + clear, hover, 4)
        lift = self._line(env, grasp, grasp + up, descend[-1], 2)
        place = np.array([plate[0], plate[1], 0.004 + h + 0.006])
        carry = env.solve_ik(place + up, lift[-1], site="pinch", fix_roll=True)
        lower = self._line(env, place + up, place, carry, 3)
        retreat = self._line(env, place, place + 1.5 * up, lower[-1], 2)
        steps = [("hover", hover, g_open)]
        steps += [("descend", w, g_open) for w in descend]
        steps += [("close", descend[-1], g_closed)]
        steps += [("lift", w, g_closed) for w in lift]
        steps += [("carry", carry, g_closed)]
        steps += [("lower", w, g_closed) for w in lower]
        steps += [("release", lower[-1], g_open)]
        steps += [("retreat", w, g_open) for w in retreat]
        return [(name, self.robot.clip(np.r_[w, g])[: len(w)], g) for name, w, g in steps]

    def expert_phase(self, env) -> str:
        plan = env.episode_cache("plan", lambda: self.plan(env))
        state = env.episode_cache("expert", lambda: {"i": 0, "wait": 0})
        return plan[min(state["i"], len(plan) - 1)][0]

    def expert(self, env):
        plan = env.episode_cache("plan", lambda: self.plan(env))
        state = env.episode_cache("expert", lambda: {"i": 0, "wait": 0})
        arm, gi = self.robot.arm_joints, self.robot.gripper_index
        cmd = env.last_command()
        while True:
            name, q_goal, g_goal = plan[state["i"]]
            goal = cmd.copy()
            goal[arm] = q_goal
            goal[gi] = g_goal
            if state["i"] == len(plan) - 1 or np.max(np.abs(goal - cmd)) > 1e-6:
                break  # still on the way to this waypoint (or at the last one)
            if name in ("close", "release"):
                state["wait"] += 1
                if state["wait"] < 8:  # let the jaws close/open (about 0.25 s at 30 Hz)
                    break
            elif np.max(np.abs(env.joint_positions()[arm] - q_goal)) > 0.03:
                break  # commanded, but the arm has not caught up yet
            state["i"] += 1
            state["wait"] = 0
        slow = 0.5 if name in ("lift", "carry", "lower") else 1.0  # gentle while holding the cube
        return _step_towards(cmd, goal, slow * env.max_joint_step())


TASK_CLASSES = {"reach": ReachTask, "pick_place": PickPlaceTask}
