"""A ROS-free Meta-World v3 task with fast offscreen rendering of named cameras.

    sim = MetaWorldSim('drawer-open-v3', seed=0, cameras=['front=corner'], image_size=96)
    obs = sim.reset()                       # 39-D Meta-World observation (goal visible)
    frames = sim.render()                   # {'front': uint8 [96, 96, 3]}
    result = sim.step(sim.expert_action())  # 4-D action [dx, dy, dz, gripper] in [-1, 1]

The initial state (object and goal positions) is a pure function of (task, seed): seeds below
tasks.EVAL_SEED_OFFSET are for recording training data, seeds from it on for unseen evaluation states.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

os.environ.setdefault('MUJOCO_GL', 'egl')

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from defi_sim.tasks import canonical_task_name, instruction_for  # noqa: E402

if TYPE_CHECKING:
    from metaworld.policies.policy import Policy

# Meta-World's corner cameras look at the table upside down; a vertical flip makes them upright.
UPSIDE_DOWN_CAMERAS = frozenset({'corner', 'corner2', 'corner3', 'corner4'})
ARM_JOINTS = ('right_j0', 'right_j1', 'right_j2', 'right_j3', 'right_j4', 'right_j5', 'right_j6',
              'r_close', 'l_close')
ACTION_NAMES = ('dx', 'dy', 'dz', 'gripper')


def observation_names() -> list[str]:
    """Names of the 39 entries of a Meta-World observation (current 18, previous 18, goal 3)."""
    current = ['hand_x', 'hand_y', 'hand_z', 'gripper_open']
    for obj in range(2):
        current += [f'obj{obj}_{axis}' for axis in ('x', 'y', 'z', 'qw', 'qx', 'qy', 'qz')]
    return current + ['prev_' + name for name in current] + ['goal_x', 'goal_y', 'goal_z']


@dataclass(frozen=True)
class CameraSpec:
    name: str            # the ROS-side name: topic camera/<name>/image_raw, policy view name
    mujoco_camera: str   # the camera in the Meta-World scene
    flip_vertical: bool


def parse_cameras(specs: Sequence[str], available: Sequence[str] | None = None) -> list[CameraSpec]:
    """'front=corner' -> CameraSpec('front', 'corner', flip); a bare 'corner' names both."""
    cameras = []
    for spec in specs:
        name, _, mj_name = str(spec).partition('=')
        name, mj_name = name.strip(), (mj_name or name).strip()
        if not name or not mj_name:
            raise ValueError(f'camera spec {spec!r}: expected "<name>=<mujoco camera>" or "<mujoco camera>"')
        if available is not None and mj_name not in available:
            raise ValueError(f'camera spec {spec!r}: the scene has no camera {mj_name!r}; '
                             f'available: {", ".join(available)}')
        cameras.append(CameraSpec(name, mj_name, mj_name in UPSIDE_DOWN_CAMERAS))
    names = [c.name for c in cameras]
    if len(set(names)) != len(names):
        raise ValueError(f'camera names must be unique, got {names}')
    return cameras


@dataclass
class StepResult:
    observation: np.ndarray  # 39-D float64
    reward: float
    success: bool
    truncated: bool          # max_episode_steps reached


def scripted_expert(task: str) -> Policy:
    """Meta-World's scripted expert policy for `task` (a canonical task name)."""
    from metaworld.policies import ENV_POLICY_MAP
    # every value is a concrete Policy subclass; mypy types the dict's values as the abstract base
    return ENV_POLICY_MAP[task]()  # type: ignore[abstract]


class MetaWorldSim:
    """One Meta-World v3 task; seeded resets; offscreen rendering at a small size."""

    def __init__(self, task: str, seed: int = 0, cameras: Sequence[str] = ('front=corner',),
                 image_size: int | tuple[int, int] = 96, max_episode_steps: int = 500):
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS

        self.task = canonical_task_name(task)
        self.instruction = instruction_for(self.task)
        self.max_episode_steps = int(max_episode_steps)
        self.height, self.width = ((image_size, image_size) if isinstance(image_size, int)
                                   else (int(image_size[0]), int(image_size[1])))
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f'image_size must be positive, got {image_size!r}')

        env = ALL_V3_ENVIRONMENTS[self.task]()
        # The scripted experts read the goal from the observation: make it observable.
        env._partially_observable = False
        del env.sawyer_observation_space  # cached property, recomputed for the observable goal
        # Draw the random initial state from the env's own seeded generator, so it follows `seed`.
        env._freeze_rand_vec = False
        env.seeded_rand_vec = True
        env._set_task_called = True
        # The node enforces the episode length; Meta-World would raise at its own limit (500).
        env.max_path_length = 10 ** 9
        self.env = env
        self.model, self.data = env.model, env.data
        self.dt = float(env.frame_skip * self.model.opt.timestep)  # one control step (0.0125 s)
        self._expert = scripted_expert(self.task)

        scene_cameras = [self.model.camera(i).name for i in range(self.model.ncam)]
        self.cameras = parse_cameras(cameras, scene_cameras)
        self.joint_names = list(ARM_JOINTS)
        self._qpos_idx = np.array([self.model.joint(n).qposadr[0] for n in ARM_JOINTS])
        self._qvel_idx = np.array([self.model.joint(n).dofadr[0] for n in ARM_JOINTS])
        self._hand_id = self.model.body('hand').id
        self._renderer: mujoco.Renderer | None = None

        self.seed = int(seed)
        self.steps = 0
        self.success = False
        self.observation = self.reset(self.seed)

    # ------------------------------------------------------------------ episode
    def reset(self, seed: int | None = None) -> np.ndarray:
        """Start an episode from the initial state of `seed` (default: the current seed)."""
        if seed is not None:
            self.seed = int(seed)
        self.env.seed(self.seed)
        self.env.reset()
        obs = self._first_observation()
        # the hand hangs this far from its mocap target at rest (hold_position keeps it)
        self._mocap_offset = np.array(self.data.mocap_pos[0], dtype=np.float64) - self.ee_position()
        self.steps = 0
        self.success = False
        self.observation = np.asarray(obs, dtype=np.float64)
        return self.observation

    def _first_observation(self) -> np.ndarray:
        """The observation of a fresh episode. Some tasks (drawer, window) move their object's
        body after Meta-World's reset last ran the physics, so its observation and the first
        rendered frame would show the object a few cm from where it is: recompute positions."""
        env = self.env
        mujoco.mj_forward(self.model, self.data)
        obs = np.asarray(env._get_obs(), dtype=np.float64)
        env._prev_obs = obs[:18].copy()       # as Meta-World's reset: no motion in the first frame
        obs[18:36] = env._prev_obs
        return obs

    def step(self, action: Sequence[float] | np.ndarray) -> StepResult:
        """Apply [dx, dy, dz, gripper] (clipped to [-1, 1]) for one control step."""
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (4,):
            raise ValueError(f'action must have 4 components [dx, dy, dz, gripper], got shape {a.shape}')
        if not np.all(np.isfinite(a)):
            raise ValueError(f'action is not finite: {a.tolist()}')
        obs, reward, _, _, info = self.env.step(np.clip(a, -1.0, 1.0).astype(np.float32))
        self.steps += 1
        self.success = bool(info.get('success', 0.0) > 0.5)
        self.observation = np.asarray(obs, dtype=np.float64)
        return StepResult(self.observation, float(reward), self.success,
                          self.max_episode_steps > 0 and self.steps >= self.max_episode_steps)

    def hold_position(self) -> None:
        """Move the mocap target to the hand, so that zero actions hold the arm where it is (the
        hand trails its target by a few cm while moving and would otherwise keep closing the gap)."""
        self.data.mocap_pos[0] = self.ee_position() + self._mocap_offset

    def expert_action(self, observation: np.ndarray | None = None) -> np.ndarray:
        """The scripted Meta-World expert's action for an observation (default: the current one)."""
        obs = self.observation if observation is None else np.asarray(observation, dtype=np.float64)
        return np.asarray(self._expert.get_action(obs), dtype=np.float32)

    # ------------------------------------------------------------------ state
    def ee_position(self) -> np.ndarray:
        return np.array(self.data.xpos[self._hand_id], dtype=np.float64)

    def ee_quaternion(self) -> np.ndarray:
        """Hand orientation as (w, x, y, z)."""
        return np.array(self.data.xquat[self._hand_id], dtype=np.float64)

    def joint_positions(self) -> np.ndarray:
        return np.array(self.data.qpos[self._qpos_idx], dtype=np.float64)

    def joint_velocities(self) -> np.ndarray:
        return np.array(self.data.qvel[self._qvel_idx], dtype=np.float64)

    # ------------------------------------------------------------------ rendering
    def _make_renderer(self) -> mujoco.Renderer:
        vis = self.model.vis
        # A small offscreen buffer (just the image size), no shadow map, no multisampling: software
        # rendering spends most of its time there.
        vis.global_.offwidth, vis.global_.offheight = self.width, self.height
        vis.quality.shadowsize = 0
        vis.quality.offsamples = 0
        try:
            renderer = mujoco.Renderer(self.model, self.height, self.width)
        except Exception as err:  # no GL: say which backend failed and what to do
            raise RuntimeError(
                f'MuJoCo offscreen rendering failed with MUJOCO_GL={os.environ.get("MUJOCO_GL")!r} '
                f'({err}); install EGL (libegl1) or OSMesa (libosmesa6) and set MUJOCO_GL=egl or '
                f'osmesa before starting') from err
        for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION,
                     mujoco.mjtRndFlag.mjRND_SKYBOX):
            renderer.scene.flags[flag] = 0
        return renderer

    def render(self) -> dict[str, np.ndarray]:
        """One uint8 [H, W, 3] RGB image per configured camera, keyed by camera name."""
        renderer = self._renderer
        if renderer is None:
            renderer = self._renderer = self._make_renderer()
        frames = {}
        for camera in self.cameras:
            renderer.update_scene(self.data, camera=camera.mujoco_camera)
            image = renderer.render()
            frames[camera.name] = np.ascontiguousarray(image[::-1] if camera.flip_vertical else image)
        return frames

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self.env.close()
