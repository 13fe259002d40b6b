"""The robot description and TF frames read from the MuJoCo model agree with MuJoCo's own poses."""
import math
import xml.etree.ElementTree as ET

import mujoco
import numpy as np
import pytest

from defi_sim.description import SceneFrames, camera_frame, rpy
from defi_sim.metaworld_env import MetaWorldSim


def mat_of_quat(q):
    m = np.zeros(9)
    mujoco.mju_quat2Mat(m, np.asarray(q, dtype=np.float64))
    return m.reshape(3, 3)


def mat_of_rpy(r, p, y):
    cr, sr, cp, sp, cy, sy = math.cos(r), math.sin(r), math.cos(p), math.sin(p), math.cos(y), math.sin(y)
    rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    return rz @ ry @ rx


def homogeneous(pos, rot):
    t = np.eye(4)
    t[:3, :3], t[:3, 3] = rot, pos
    return t


def axis_angle(axis, angle):
    q = np.zeros(4)
    mujoco.mju_axisAngle2Quat(q, np.asarray(axis, dtype=np.float64), float(angle))
    return mat_of_quat(q)


def urdf_forward_kinematics(urdf, positions, base_pose):
    """World pose of every URDF link from the joint origins/axes and `positions` {joint: q}."""
    root = ET.fromstring(urdf)
    poses = {'base_link': base_pose}
    joints = root.findall('joint')
    while len(poses) < len(root.findall('link')):
        progressed = False
        for j in joints:
            parent, child = j.find('parent').get('link'), j.find('child').get('link')
            if parent not in poses or child in poses:
                continue
            o = j.find('origin')
            xyz = [float(v) for v in o.get('xyz').split()]
            t = poses[parent] @ homogeneous(xyz, mat_of_rpy(*[float(v) for v in o.get('rpy').split()]))
            q = positions.get(j.get('name'), 0.0)
            axis = [float(v) for v in j.find('axis').get('xyz').split()] if j.find('axis') is not None else None
            if j.get('type') in ('revolute', 'continuous'):
                t = t @ homogeneous(np.zeros(3), axis_angle(axis, q))
            elif j.get('type') == 'prismatic':
                t = t @ homogeneous(np.asarray(axis) * q, np.eye(3))
            poses[child] = t
            progressed = True
        assert progressed, 'URDF tree is not connected'
    return poses


def tf_world_poses(transforms, world='world'):
    """Compose parent -> child transforms into world poses of every frame."""
    by_child = {t.child: t for t in transforms}
    assert len(by_child) == len(transforms), 'a frame has two parents'
    poses = {world: np.eye(4)}

    def pose(frame):
        if frame not in poses:
            t = by_child[frame]
            poses[frame] = pose(t.parent) @ homogeneous(t.translation, mat_of_quat(t.rotation))
        return poses[frame]
    for child in by_child:
        pose(child)
    return poses


@pytest.fixture(scope='module')
def sim():
    s = MetaWorldSim('reach-v3', seed=3, image_size=16, cameras=['front=corner', 'wrist=gripperPOV'])
    yield s
    s.close()


def test_rpy_round_trips():
    rng = np.random.default_rng(0)
    for _ in range(200):
        q = rng.standard_normal(4)
        q /= np.linalg.norm(q)
        r = mat_of_quat(q)
        np.testing.assert_allclose(mat_of_rpy(*rpy(r)), r, atol=1e-9)
    np.testing.assert_allclose(mat_of_rpy(*rpy(axis_angle([0, 1, 0], math.pi / 2))),
                               axis_angle([0, 1, 0], math.pi / 2), atol=1e-9)


def test_urdf_and_tf_reproduce_mujoco_poses(sim):
    # move every arm joint away from its rest pose first: a wrong axis or origin shows then
    rng = np.random.default_rng(1)
    for _ in range(40):
        sim.step(rng.uniform(-1, 1, 4))
    m, d = sim.model, sim.data
    frames = SceneFrames(m, d, sim.cameras)
    urdf = frames.urdf()
    root = ET.fromstring(urdf)
    links = {e.get('name') for e in root.findall('link')}
    assert {'base_link', 'right_l0', 'right_l6', 'right_hand', 'hand', 'rightclaw', 'leftclaw'} <= links
    joints = {e.get('name'): e.get('type') for e in root.findall('joint')}
    # every joint of sensor_msgs/JointState on joint_states is a movable URDF joint of the same name
    for name in sim.joint_names:
        assert joints[name] in ('revolute', 'prismatic'), name
    assert len(root.findall('link/visual')) >= 15     # the arm is drawn, not only frames

    positions = dict(zip(sim.joint_names, sim.joint_positions(), strict=True))
    base = homogeneous(d.xpos[m.body('base').id], d.xmat[m.body('base').id].reshape(3, 3))
    fk = urdf_forward_kinematics(urdf, positions, base)
    tf = tf_world_poses(frames.static_transforms() + frames.dynamic_transforms(d))
    for name in links:
        body = m.body('base' if name == 'base_link' else name).id
        np.testing.assert_allclose(fk[name][:3, 3], d.xpos[body], atol=1e-6, err_msg=name)
        np.testing.assert_allclose(fk[name][:3, :3], d.xmat[body].reshape(3, 3), atol=1e-6, err_msg=name)
        np.testing.assert_allclose(tf[name][:3, 3], d.xpos[body], atol=1e-9, err_msg=name)
        np.testing.assert_allclose(tf[name][:3, :3], d.xmat[body].reshape(3, 3), atol=1e-9, err_msg=name)
    np.testing.assert_allclose(tf['hand'][:3, 3], sim.ee_position(), atol=1e-9)

    # cameras: optical frame = MuJoCo camera frame turned 180 deg about x (z forward, y down)
    flip = np.diag([1.0, -1.0, -1.0])
    for spec in sim.cameras:
        cam = m.camera(spec.mujoco_camera).id
        pose = tf[camera_frame(spec.name)]
        np.testing.assert_allclose(pose[:3, 3], d.cam_xpos[cam], atol=1e-9)
        np.testing.assert_allclose(pose[:3, :3], d.cam_xmat[cam].reshape(3, 3) @ flip, atol=1e-9)
    static = {t.child for t in frames.static_transforms()}
    dynamic = {t.child for t in frames.dynamic_transforms(d)}
    assert 'front_camera_optical_frame' in static       # the corner camera stands in the world
    assert 'wrist_camera_optical_frame' in dynamic      # gripperPOV tracks the hand
    assert {'right_l0', 'hand'} <= set(tf) and 'right_l0' in dynamic and 'base_link' in static
    assert not static & dynamic


def test_optical_frame_projects_like_the_renderer(sim):
    """A point seen through the optical frame (x right, y down, z forward) lands on the pixel where
    MuJoCo renders it (before the sim's vertical flip of the corner cameras)."""
    m, d = sim.model, sim.data
    frames = SceneFrames(m, d, sim.cameras)
    tf = tf_world_poses(frames.static_transforms() + frames.dynamic_transforms(d))
    cam = m.camera('corner').id
    size = 64
    renderer = mujoco.Renderer(m, size, size)
    renderer.enable_segmentation_rendering()
    renderer.update_scene(d, camera='corner')
    seg = renderer.render()[..., 0]
    renderer.close()
    obj = m.body('obj').id
    geoms = [g for g in range(m.ngeom) if m.geom_bodyid[g] == obj]
    vs, us = np.nonzero(np.isin(seg, geoms))
    assert len(us) > 3
    pose = tf[camera_frame('front')]
    p = pose[:3, :3].T @ (d.xpos[obj] - pose[:3, 3])
    f = size / 2 / math.tan(math.radians(m.cam_fovy[cam]) / 2)
    assert p[2] > 0                                    # in front of the camera
    u, v = size / 2 + f * p[0] / p[2] - 0.5, size / 2 + f * p[1] / p[2] - 0.5
    assert abs(u - us.mean()) < 1.5 and abs(v - vs.mean()) < 1.5, ((u, v), (us.mean(), vs.mean()))


def test_a_model_without_the_robot_base_is_refused():
    model = mujoco.MjModel.from_xml_string('<mujoco><worldbody><body name="b"><geom size="1"/></body>'
                                           '</worldbody></mujoco>')
    with pytest.raises(ValueError, match="no body 'base'"):
        SceneFrames(model, mujoco.MjData(model))


def test_rviz_and_the_sim_parameters_name_frames_the_sim_publishes(sim):
    """The RViz fixed frame, the status marker's frame and the predicted frames' frame exist in the
    sim's TF tree; RViz reads the URDF with the durability it is published with."""
    from pathlib import Path

    import yaml

    from defi_perception.forward_predictor_node import ForwardPredictorParams
    from defi_ros.params import CommonParams
    from defi_sim.sim_node import SimNodeConfig
    root = Path(__file__).resolve().parents[2]
    frames = set(SceneFrames(sim.model, sim.data, sim.cameras).frame_names())
    rviz = yaml.safe_load((root / 'src' / 'defi_bringup' / 'rviz' / 'defi.rviz').read_text())
    manager = rviz['Visualization Manager']
    assert manager['Global Options']['Fixed Frame'] == SimNodeConfig().frame_id == 'world'
    assert SimNodeConfig().frame_id in frames
    displays = {d['Class'].split('/')[-1]: d for d in manager['Displays']}
    model = displays['RobotModel']
    assert model['Description Source'] == 'Topic'
    assert model['Description Topic']['Value'] == '/robot_description'
    assert model['Description Topic']['Durability Policy'] == 'Transient Local'
    assert 'TF' in displays
    assert CommonParams().status_marker_frame in frames
    defi_sim = yaml.safe_load((root / 'src' / 'defi_sim' / 'config' / 'defi_sim.yaml').read_text())
    predicted = defi_sim['forward_predictor']['ros__parameters']['frame_id']
    assert predicted in frames and predicted != ForwardPredictorParams().frame_id
