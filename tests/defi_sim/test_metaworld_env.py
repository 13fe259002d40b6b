"""The ROS-free Meta-World wrapper: task table, seeded resets, rendering, commanded motion, expert."""
import numpy as np
import pytest

from defi_sim.metaworld_env import MetaWorldSim, observation_names, parse_cameras
from defi_sim.tasks import DEVELOPMENT_TASKS, INSTRUCTIONS, canonical_task_name, instruction_for


def test_every_metaworld_task_has_an_instruction_and_an_expert():
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS
    from metaworld.policies import ENV_POLICY_MAP
    assert set(INSTRUCTIONS) == set(ALL_V3_ENVIRONMENTS)
    assert set(INSTRUCTIONS) <= set(ENV_POLICY_MAP)
    assert len(set(INSTRUCTIONS.values())) == len(INSTRUCTIONS)  # no two tasks share a sentence
    assert set(DEVELOPMENT_TASKS) <= set(INSTRUCTIONS)
    assert instruction_for('drawer-open') == 'open the drawer'
    assert instruction_for('button-press-topdown-v3') == 'press the button from above'
    assert canonical_task_name('reach') == 'reach-v3'
    with pytest.raises(ValueError, match='unknown Meta-World v3 task'):
        canonical_task_name('make-coffee')


def test_camera_specs():
    cams = parse_cameras(['front=corner', 'gripperPOV'], ['corner', 'gripperPOV'])
    assert [(c.name, c.mujoco_camera, c.flip_vertical) for c in cams] == [
        ('front', 'corner', True), ('gripperPOV', 'gripperPOV', False)]
    with pytest.raises(ValueError, match="no camera 'nope'"):
        parse_cameras(['front=nope'], ['corner'])
    with pytest.raises(ValueError, match='unique'):
        parse_cameras(['a=corner', 'a=corner2'])


@pytest.fixture(scope='module')
def sim():
    s = MetaWorldSim('drawer-open-v3', seed=0, cameras=['front=corner', 'wrist=gripperPOV'],
                     image_size=(48, 64), max_episode_steps=300)
    yield s
    s.close()


def test_seed_decides_the_initial_state(sim):
    a = sim.reset(7).copy()
    b = sim.reset(7).copy()
    c = sim.reset(8).copy()
    assert a.shape == (39,) and len(observation_names()) == 39
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a[4:7], c[4:7])  # the drawer moved with the seed


def test_first_observation_shows_the_object_where_it_is(sim):
    """Meta-World's drawer moves its body after reset last ran the physics: without a forward pass
    the first observation (and frame) showed it where an earlier episode had put it."""
    first = sim.reset(1007).copy()
    frame = sim.render()['front']
    sim.step([0.0, 0.0, 0.0, -1.0])
    np.testing.assert_allclose(sim.observation[4:7], first[4:7], atol=1e-3)
    assert np.abs(sim.render()['front'].astype(int) - frame).mean() < 0.5


def test_render_named_cameras_at_the_configured_size(sim):
    sim.reset(1)
    frames = sim.render()
    assert set(frames) == {'front', 'wrist'}
    for image in frames.values():
        assert image.shape == (48, 64, 3) and image.dtype == np.uint8
        assert image.std() > 5  # a scene, not a blank buffer
    assert not np.array_equal(frames['front'], frames['wrist'])


def test_end_effector_moves_the_commanded_way(sim):
    sim.reset(2)
    start = sim.ee_position()
    for _ in range(10):
        sim.step([1.0, 0.0, 0.0, 0.0])
    moved = sim.ee_position() - start
    assert moved[0] > 0.03 and abs(moved[1]) < 0.01
    start = sim.ee_position()
    for _ in range(10):
        sim.step([0.0, 0.0, -1.0, 0.0])
    moved = sim.ee_position() - start
    assert moved[2] < -0.03
    with pytest.raises(ValueError, match='4 components'):
        sim.step([0.0, 0.0, 1.0])
    with pytest.raises(ValueError, match='not finite'):
        sim.step([np.nan, 0.0, 0.0, 0.0])


def test_scripted_expert_solves_the_task(sim):
    sim.reset(3)
    for _ in range(200):
        result = sim.step(sim.expert_action())
        if result.success:
            break
    assert result.success and sim.steps < 200
    assert sim.joint_positions().shape == (len(sim.joint_names),)
