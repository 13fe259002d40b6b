"""The sim's robot description and TF frames, read from the MuJoCo model (ROS-free).

    frames = SceneFrames(sim.model, sim.data, sim.cameras)
    frames.urdf()                      # URDF of the Sawyer: one link per MuJoCo body under `base`
    frames.static_transforms()         # world -> base_link, fixed joints, fixed cameras
    frames.dynamic_transforms(data)    # links behind a joint, cameras that follow a body

Frames (what the sim node publishes on /tf_static and /tf):
  world                           the MuJoCo world (the node's `frame_id`)
  base_link                       the Sawyer's `base` body
  <body>                          every other body of the arm under its MuJoCo name (right_l0 ...
                                  right_l6, right_hand, hand = the end effector, the two claws)
  <camera>_camera_optical_frame   each configured camera, ROS optical convention (z forward, x right,
                                  y down); MuJoCo cameras look along -z with y up, so the optical
                                  frame is the MuJoCo camera frame turned 180 degrees about x

The URDF has no meshes (the Meta-World meshes are not installed as ROS package files): each visible
MuJoCo geom becomes a box, cylinder or sphere (a mesh its bounding box), enough for RViz to show
where the arm is. Joint effort and velocity limits are 0: MuJoCo does not model them (the arm
follows a mocap weld).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Sequence
from xml.sax.saxutils import quoteattr

# mujoco picks its GL backend at import: the same default as metaworld_env, whichever comes first
os.environ.setdefault('MUJOCO_GL', 'egl')

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

WORLD_FRAME = 'world'
BASE_FRAME = 'base_link'
ROBOT_ROOT_BODY = 'base'      # Meta-World's Sawyer: base -> right_arm_base_link -> right_l0 ...
EE_FRAME = 'hand'             # the body sim/ee_pose reports
ROBOT_NAME = 'sawyer'
VISIBLE_GROUPS = 3            # MuJoCo renders geom groups 0-2 by default; 3+ are collision-only here

# q_optical = q_mujoco_camera * (180 degrees about x): z forward, y down
_OPTICAL = np.array([0.0, 1.0, 0.0, 0.0])


def camera_frame(name: str) -> str:
    """TF frame (and image header.frame_id) of the ROS camera `name` (topic camera/<name>/image_raw)."""
    return f'{name}_camera_optical_frame'


@dataclass(frozen=True)
class Transform:
    parent: str
    child: str
    translation: tuple      # (x, y, z) metres
    rotation: tuple         # (w, x, y, z)


def _quat(mat: np.ndarray) -> np.ndarray:
    q = np.zeros(4)
    mujoco.mju_mat2Quat(q, np.ascontiguousarray(mat, dtype=np.float64).reshape(9))
    return q


def _mat(quat: np.ndarray) -> np.ndarray:
    m = np.zeros(9)
    mujoco.mju_quat2Mat(m, np.asarray(quat, dtype=np.float64))
    return m.reshape(3, 3)


def _mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    q = np.zeros(4)
    mujoco.mju_mulQuat(q, np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
    return q


def _relative(p_pos, p_mat, c_pos, c_mat):
    """Pose of the child in the parent's frame, from both world poses."""
    p_mat = np.asarray(p_mat).reshape(3, 3)
    rel = p_mat.T @ np.asarray(c_mat).reshape(3, 3)
    return p_mat.T @ (np.asarray(c_pos) - np.asarray(p_pos)), _quat(rel)


def rpy(mat: np.ndarray) -> tuple:
    """URDF roll, pitch, yaw (fixed axes x, y, z: R = Rz(yaw) Ry(pitch) Rx(roll)) of a rotation."""
    r = np.asarray(mat).reshape(3, 3)
    pitch = math.asin(max(-1.0, min(1.0, -r[2, 0])))
    if abs(r[2, 0]) < 1.0 - 1e-9:
        return math.atan2(r[2, 1], r[2, 2]), pitch, math.atan2(r[1, 0], r[0, 0])
    return 0.0, pitch, math.atan2(-r[0, 1], r[1, 1])      # gimbal lock: yaw carries the roll


def _fmt(values, digits: int = 9) -> str:
    # 9 digits: the poses composed along the arm stay within 1e-6 of MuJoCo's; + 0.0 drops '-0'
    return ' '.join(f'{float(v) + 0.0:.{digits}g}' for v in values)


def _origin(pos, mat) -> str:
    return f'<origin xyz="{_fmt(pos)}" rpy="{_fmt(rpy(mat))}"/>'


@dataclass(frozen=True)
class _Link:
    body: int
    name: str
    parent_body: int
    parent: str
    joint: int              # MuJoCo joint id, -1 = welded to its parent (a fixed URDF joint)


@dataclass(frozen=True)
class _Camera:
    name: str               # ROS camera name
    frame: str
    cam_id: int
    parent: str             # frame a static camera hangs from ('' = dynamic, from world)


class SceneFrames:
    """The arm under `root_body` as URDF links and TF frames, plus one frame per camera."""

    def __init__(self, model: mujoco.MjModel, data: mujoco.MjData, cameras: Sequence = (),
                 world_frame: str = WORLD_FRAME, root_body: str = ROBOT_ROOT_BODY):
        self.model, self.world_frame = model, world_frame
        try:
            root = model.body(root_body).id
        except KeyError:
            raise ValueError(f'the MuJoCo model has no body {root_body!r} (the robot base)') from None
        if model.body_weldid[root] != 0:
            raise ValueError(f'body {root_body!r} is not fixed to the world: no static world -> '
                             f'{BASE_FRAME} transform')
        names = {root: BASE_FRAME}
        self.links: list[_Link] = []
        for body in range(root + 1, model.nbody):     # MuJoCo numbers bodies parents first
            parent = int(model.body_parentid[body])
            if parent not in names:
                continue
            names[body] = model.body(body).name or f'body{body}'
            self.links.append(_Link(body, names[body], parent, names[parent], self._joint(body)))
        self.root, self.names = root, names
        # world -> base_link from the current state (the root is welded to the world: constant)
        pos, quat = _relative(np.zeros(3), np.eye(3), data.xpos[root], data.xmat[root])
        self._base = Transform(world_frame, BASE_FRAME, tuple(pos), tuple(quat))

        self.cameras: list[_Camera] = []
        for spec in cameras:
            cam = model.camera(spec.mujoco_camera).id
            body = int(model.cam_bodyid[cam])
            fixed = model.cam_mode[cam] == mujoco.mjtCamLight.mjCAMLIGHT_FIXED
            parent_frame = world_frame if body == 0 else names.get(body, '')
            # a fixed camera on the world or the arm hangs statically from its body; a tracking
            # camera (e.g. gripperPOV follows the hand in position only) is sent from world each step
            self.cameras.append(_Camera(spec.name, camera_frame(spec.name), cam, parent_frame if fixed else ''))

    def _joint(self, body: int) -> int:
        m = self.model
        n = int(m.body_jntnum[body])
        if n == 0:
            return -1
        joint = int(m.body_jntadr[body])
        if n > 1 or m.jnt_type[joint] not in (mujoco.mjtJoint.mjJNT_HINGE, mujoco.mjtJoint.mjJNT_SLIDE):
            raise ValueError(f'body {m.body(body).name!r}: only one hinge or slide joint per body '
                             'has a URDF joint here')
        if np.any(m.jnt_pos[joint]):
            raise ValueError(f'joint {m.joint(joint).name!r}: a joint away from its body origin has '
                             'no URDF joint here')
        return joint

    # ------------------------------------------------------------------ robot_description
    def urdf(self) -> str:
        m = self.model
        out = ['<?xml version="1.0"?>',
               '<!-- Generated by defi_sim.description from the MuJoCo model of Meta-World\'s Sawyer: one '
               'link per body, boxes for meshes, effort/velocity limits not modelled (0). -->',
               f'<robot name="{ROBOT_NAME}">']
        for body, name in self.names.items():
            out.append(f'  <link name={quoteattr(name)}>')
            out += self._visuals(body)
            out.append('  </link>')
        for link in self.links:
            j = link.joint
            rot = _mat(m.body_quat[link.body])
            pos = np.array(m.body_pos[link.body], dtype=np.float64)
            if j < 0:
                kind, jname = 'fixed', f'{link.parent}_to_{link.name}'
            else:
                jname = m.joint(j).name or f'joint{j}'
                axis = np.array(m.jnt_axis[j], dtype=np.float64)
                ref = float(m.qpos0[m.jnt_qposadr[j]])
                hinge = m.jnt_type[j] == mujoco.mjtJoint.mjJNT_HINGE
                # MuJoCo measures a joint from its `ref`; URDF from its origin: fold ref in, so that
                # joint_states positions (MuJoCo's qpos) mean the same pose in both
                if ref and hinge:
                    q = np.zeros(4)
                    mujoco.mju_axisAngle2Quat(q, axis, -ref)
                    rot = rot @ _mat(q)
                elif ref:
                    pos = pos - rot @ axis * ref
                limited = bool(m.jnt_limited[j])
                kind = ('revolute' if limited else 'continuous') if hinge else 'prismatic'
            out.append(f'  <joint name={quoteattr(jname)} type="{kind}">')
            out.append(f'    <parent link={quoteattr(link.parent)}/>')
            out.append(f'    <child link={quoteattr(link.name)}/>')
            out.append(f'    {_origin(pos, rot)}')
            if j >= 0:
                out.append(f'    <axis xyz="{_fmt(m.jnt_axis[j])}"/>')
                if kind != 'continuous':
                    lo, hi = m.jnt_range[j] if m.jnt_limited[j] else (0.0, 0.0)
                    out.append(f'    <limit lower="{lo:.6g}" upper="{hi:.6g}" effort="0" velocity="0"/>')
            out.append('  </joint>')
        out.append('</robot>')
        return '\n'.join(out) + '\n'

    def _visuals(self, body: int) -> list:
        m, out = self.model, []
        for g in range(m.body_geomadr[body], m.body_geomadr[body] + m.body_geomnum[body]):
            rgba = m.mat_rgba[m.geom_matid[g]] if m.geom_matid[g] >= 0 else m.geom_rgba[g]
            if m.geom_group[g] >= VISIBLE_GROUPS or rgba[3] <= 0:
                continue
            kind, size = m.geom_type[g], m.geom_size[g]
            pos, rot = np.array(m.geom_pos[g], dtype=np.float64), _mat(m.geom_quat[g])
            if kind == mujoco.mjtGeom.mjGEOM_BOX:
                shape = f'<box size="{_fmt(2 * size)}"/>'
            elif kind == mujoco.mjtGeom.mjGEOM_SPHERE:
                shape = f'<sphere radius="{size[0]:.6g}"/>'
            elif kind in (mujoco.mjtGeom.mjGEOM_CYLINDER, mujoco.mjtGeom.mjGEOM_CAPSULE):
                length = 2 * size[1] + (2 * size[0] if kind == mujoco.mjtGeom.mjGEOM_CAPSULE else 0)
                shape = f'<cylinder radius="{size[0]:.6g}" length="{length:.6g}"/>'
            elif kind in (mujoco.mjtGeom.mjGEOM_MESH, mujoco.mjtGeom.mjGEOM_ELLIPSOID):
                center, half = m.geom_aabb[g][:3], m.geom_aabb[g][3:]   # in the geom's frame
                pos = pos + rot @ center
                shape = f'<box size="{_fmt(2 * half)}"/>'
            else:
                continue
            color = _fmt(rgba, 3)
            out += ['    <visual>', f'      {_origin(pos, rot)}', f'      <geometry>{shape}</geometry>',
                    f'      <material name="rgba_{color.replace(" ", "_")}"><color rgba="{color}"/></material>',
                    '    </visual>']
        return out

    # ------------------------------------------------------------------ TF
    def static_transforms(self) -> list:
        """world -> base_link, the links welded to their parent, the fixed cameras."""
        m = self.model
        out = [self._base]
        for link in self.links:
            if link.joint < 0:
                out.append(Transform(link.parent, link.name, tuple(map(float, m.body_pos[link.body])),
                                     tuple(map(float, m.body_quat[link.body]))))
        for cam in self.cameras:
            if cam.parent:
                out.append(Transform(cam.parent, cam.frame, tuple(map(float, m.cam_pos[cam.cam_id])),
                                     tuple(_mul(m.cam_quat[cam.cam_id], _OPTICAL))))
        return out

    def dynamic_transforms(self, data: mujoco.MjData) -> list:
        """The links behind a joint (from their parent) and the tracking cameras (from world), now."""
        out = []
        for link in self.links:
            if link.joint >= 0:
                pos, quat = _relative(data.xpos[link.parent_body], data.xmat[link.parent_body],
                                      data.xpos[link.body], data.xmat[link.body])
                out.append(Transform(link.parent, link.name, tuple(pos), tuple(quat)))
        for cam in self.cameras:
            if not cam.parent:
                quat = _mul(_quat(data.cam_xmat[cam.cam_id]), _OPTICAL)
                out.append(Transform(self.world_frame, cam.frame, tuple(data.cam_xpos[cam.cam_id]),
                                     tuple(quat)))
        return out

    def frame_names(self) -> list:
        return [self.world_frame, *self.names.values(), *(c.frame for c in self.cameras)]
