"""defi-sim dataset: scripted-expert episodes written straight into an episode cache (real MuJoCo)."""
import numpy as np
import pytest

from defi_sim.expert_data import ExpertDataConfig, expert_episode, write_expert_cache
from defi_sim.metaworld_env import MetaWorldSim
from defi_sim.record import main as defi_sim_main


def test_rows_pair_each_frame_with_the_command_sent_for_it(tmp_path):
    cfg = ExpertDataConfig(tasks=('reach',), episodes=2, seed=3, image_size=32, extra_observations=2)
    cache = write_expert_cache(cfg, tmp_path / 'c', log=lambda s: None)
    assert cache.num_episodes == 2 and cache.fps == 40.0 and cache.has_actions
    assert cache.meta['state_dim'] == 9 and cache.meta['action_names'] == ['dx', 'dy', 'dz', 'gripper']
    info = cache.episode_info(0)
    assert info['success'] and info['seed'] == 3 and cache.task(0) == 'reach the goal position'
    frames, actions = cache.frames(0, 'front'), cache.array(0, 'action')
    assert frames.shape[1:] == (32, 32, 3) and len(frames) == len(actions) == cache.episode_length(0)
    assert np.all(np.abs(actions) <= 1.0)
    assert np.abs(frames[-1].astype(int) - frames[0].astype(int)).mean() > 0.5   # the arm moved
    # replaying the recorded commands from the same initial state succeeds within the same rows:
    # row i's action is what was applied after row i's frame
    sim = MetaWorldSim('reach', seed=3, image_size=32)
    try:
        sim.reset(3)
        done_at = None
        for i, a in enumerate(actions):
            if sim.success:
                done_at = i
                break
            for _ in range(cfg.steps_per_observation):
                sim.step(a)
        assert done_at == len(actions) - 1 - cfg.extra_observations
        np.testing.assert_allclose(sim.joint_positions(), cache.array(0, 'observation.state')[done_at],
                                   atol=1e-5)
    finally:
        sim.close()


def test_noise_and_action_free_and_parallel_jobs(tmp_path):
    base = dict(tasks=('reach', 'button-press-topdown'), episodes=1, seed=7, image_size=32,
                extra_observations=0)
    clean = write_expert_cache(ExpertDataConfig(**base), tmp_path / 'a', log=lambda s: None)
    noisy = write_expert_cache(ExpertDataConfig(**base, noise_std=0.5, with_actions=False),
                               tmp_path / 'b', jobs=2, log=lambda s: None)
    assert not noisy.has_actions and noisy.meta['action_dim'] == 0
    assert [noisy.task(e) for e in range(2)] == [clean.task(e) for e in range(2)]
    # the same initial state, but noise changes the trajectory
    assert not np.array_equal(noisy.array(0, 'observation.state')[:5], clean.array(0, 'observation.state')[:5])
    np.testing.assert_array_equal(noisy.frames(0, 'front')[0], clean.frames(0, 'front')[0])


def test_dart_labels_are_the_experts_clean_commands(tmp_path):
    """labels=expert: the noisy command moves the arm, the expert's own command is the label, so
    the labels are the expert's answer in the states the noise leads to."""
    base = dict(tasks=('reach',), episodes=1, seed=5, image_size=32, extra_observations=0, noise_std=0.5)
    executed = write_expert_cache(ExpertDataConfig(**base), tmp_path / 'a', log=lambda s: None)
    dart = write_expert_cache(ExpertDataConfig(**base, labels='expert'), tmp_path / 'b', log=lambda s: None)
    # the same states (the same noise ran), other labels
    np.testing.assert_array_equal(dart.array(0, 'observation.state'), executed.array(0, 'observation.state'))
    assert not np.allclose(dart.array(0, 'action'), executed.array(0, 'action'))
    # each label is what the expert commands in that state: replay the executed commands and ask it
    sim = MetaWorldSim('reach-v3', seed=5, image_size=32)
    try:
        sim.reset(5)
        for label, command in list(zip(dart.array(0, 'action'), executed.array(0, 'action'), strict=True))[:20]:
            np.testing.assert_allclose(label, np.clip(sim.expert_action(), -1, 1), atol=1e-5)
            for _ in range(2):
                sim.step(command)
    finally:
        sim.close()
    with pytest.raises(ValueError, match="labels: expected 'executed' or 'expert'"):
        ExpertDataConfig(labels='clean')


def test_a_driver_moves_the_arm_and_the_expert_labels_each_state():
    """driver (DAgger): the driver's command moves the arm, the expert's clean command is the label."""
    config = ExpertDataConfig(tasks=('reach',), image_size=32, extra_observations=0, max_steps=20)
    command = np.array([0.6, -0.3, 0.2, -1.0])
    sim = MetaWorldSim('reach-v3', seed=5, image_size=32)
    try:
        episode = expert_episode(sim, 5, config, driver=lambda views: command)
        assert episode.extra['policy_driven'] and episode.extra['labels'] == 'expert'
        sim.reset(5)
        for row, label in enumerate(episode.action):
            np.testing.assert_allclose(episode.state[row], sim.joint_positions(), atol=1e-5)
            np.testing.assert_allclose(label, np.clip(sim.expert_action(), -1, 1), atol=1e-5)
            for _ in range(2):
                sim.step(command)
    finally:
        sim.close()


def test_cli_rejects_an_unknown_task_and_keeps_no_partial_cache(tmp_path, capsys):
    out = tmp_path / 'c'
    assert defi_sim_main(['dataset', '--tasks', 'reach', 'fly-to-the-moon', '--out', str(out)]) == 2
    assert 'fly-to-the-moon' in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.iterdir())
