"""Closed-loop evaluation: in-process episodes, chunk execution semantics, and one short episode
through ROS 2 (sim node + defi_bringup as real processes) with a tiny random-weight checkpoint."""
import json
import os
import random
import re

import numpy as np
import pytest
import torch

from defi_sim import eval_cli
from defi_sim.evaluate import (
    EvalConfig,
    frame_offsets_steps,
    load_eval_policy,
    run_inprocess,
    sim_cameras_for,
    write_pictures,
)
from defi_sim.evaluate_ros import private_domain_id
from defi_sim.evaluation import load_results, summarize, write_results

torch.set_num_threads(2)


@pytest.fixture(scope='module')
def tiny_checkpoint(tmp_path_factory):
    from defi_core.checkpoint import save_checkpoint
    from defi_core.config import preset
    from defi_core.policy import DefiPolicy

    torch.manual_seed(0)
    # the hash text encoder keeps the test free of the sentence-transformer load
    cfg = preset('tiny', action_dim=4, text_encoder='hash')
    policy = DefiPolicy(cfg)
    stats = {'action': {'mean': np.zeros(4, np.float32), 'std': np.full(4, 0.5, np.float32),
                        'min': -np.ones(4, np.float32), 'max': np.ones(4, np.float32)}}
    return save_checkpoint(tmp_path_factory.mktemp('ckpt') / 'tiny', policy, cfg, stats)


def _video_frames(path):
    import av
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format='rgb24') for f in container.decode(stream)]
    return frames


def test_inprocess_episode_results_and_pictures(tiny_checkpoint, tmp_path):
    from PIL import Image

    policy = load_eval_policy(tiny_checkpoint)
    config = EvalConfig(tasks=('reach',), episodes=2, max_steps=12, pictures=True, picture_steps=(0, 2))
    episodes, pictures = run_inprocess(policy, config, log=lambda s: None)
    assert [(e.task, e.seed) for e in episodes] == [('reach-v3', 1000), ('reach-v3', 1001)]
    for ep in episodes:
        assert ep.length == 12 or ep.success
        assert len(ep.inference_ms) == 6       # one chunk per observation, 2 control steps each
        assert all(ms > 0 for ms in ep.inference_ms)
    pics = pictures['reach-v3']
    assert len(pics.frames) == 7                  # 6 observations + the final frame
    assert sorted(pics.predictions) == [0, 2]
    assert len(pics.predictions[0]) == policy.cfg.num_future_frames

    written = write_pictures(pictures, policy.cfg, config, tmp_path, log=lambda s: None)
    strip, video = written[0], written[1]
    assert strip.name == 'prediction_strip.png' and video.name == 'episode_reach-v3.mp4'
    size = policy.cfg.image_size
    img = Image.open(strip)
    # 2 strips, each a title + header line and 2 rows of frames scaled x2
    assert img.size == (80 + (1 + policy.cfg.num_future_frames) * (2 * size + 2), 2 * (36 + 2 * (2 * size + 2)))
    frames = _video_frames(video)
    assert len(frames) == 7 and frames[0].shape == (2 * size, 2 * size, 3)

    results = summarize(episodes, str(tiny_checkpoint), 'inprocess')
    json_path, _ = write_results(results, tmp_path)
    assert load_results(json_path)['tasks']['reach-v3']['episodes'] == 2


class ScriptedChunkPolicy:
    """The real tiny policy's config and image path, with a fixed chunk instead of the network, so
    the test can tell which chunk rows the runner executed."""

    def __init__(self, policy, chunk):
        self.cfg, self.gfdm = policy.cfg, None
        self.chunk = torch.as_tensor(chunk, dtype=torch.float32)[None]
        self.calls = 0

    def reset(self):
        pass

    def predict_action_chunk(self, obs, generator=None):
        assert obs['observation.images.front'].shape == (1, 3, self.cfg.image_size, self.cfg.image_size)
        assert obs['task'] == ['reach the goal position']
        self.calls += 1
        return self.chunk


# which chunk row the executor commands at each of the 8 observations (None: no chunk yet -> zero)
EXECUTED_ROWS = {
    (1, 0): [0] * 8,                  # a fresh chunk per observation: always its row 0 (+x)
    (4, 0): [0, 1, 2, 3] * 2,         # a chunk every 4 observations: rows 0..3 (+x, +x, -x, -x)
    (1, 2): [None, None] + [2] * 6,   # chunks arrive 2 observations late: their row 2 is due (-x)
}


@pytest.mark.parametrize('replan_every,chunk_delay', sorted(EXECUTED_ROWS))
def test_inprocess_executes_chunks_like_the_executor(tiny_checkpoint, replan_every, chunk_delay):
    from defi_sim.metaworld_env import MetaWorldSim

    base = load_eval_policy(tiny_checkpoint)
    chunk = np.zeros((base.cfg.horizon, 4))
    chunk[:2, 0], chunk[2:, 0] = 1.0, -1.0      # +x for two steps, then -x
    chunk[:, 1] = 0.5
    policy = ScriptedChunkPolicy(base, chunk)
    config = EvalConfig(tasks=('reach',), episodes=1, max_steps=16, replan_every=replan_every,
                        chunk_delay=chunk_delay, pictures=True)
    episodes, pictures = run_inprocess(policy, config, log=lambda s: None)
    assert policy.calls == 8 // replan_every
    assert episodes[0].length == 16
    final_frame = pictures['reach-v3'].frames[-1]

    def replay(rows):
        sim = MetaWorldSim('reach', seed=config.seed, image_size=base.cfg.image_size)
        for r in rows:
            for _ in range(2):          # each command is held for one observation (2 control steps)
                sim.step(np.zeros(4) if r is None else chunk[r])
        frame, x = sim.render()['front'], sim.ee_position()[0]
        sim.close()
        return frame, x

    expected = EXECUTED_ROWS[(replan_every, chunk_delay)]
    wrong = [0] * 8 if expected != [0] * 8 else [0, 1, 2, 3] * 2
    frame_expected, x_expected = replay(expected)
    frame_wrong, x_wrong = replay(wrong)
    np.testing.assert_array_equal(final_frame, frame_expected)
    assert x_expected != pytest.approx(x_wrong, abs=1e-3)
    assert not np.array_equal(final_frame, frame_wrong)


def test_camera_specs_and_frame_offsets(tiny_checkpoint):
    from defi_core.config import preset
    assert sim_cameras_for(('front',)) == ['front=corner']
    assert sim_cameras_for(('front', 'side'), ['side=corner2', 'front=corner3']) == ['front=corner3', 'side=corner2']
    with pytest.raises(ValueError, match='no spec for'):
        sim_cameras_for(('front', 'wrist'), ['front=corner'])
    cfg = preset('tiny', num_future_frames=3, future_stride=2)
    # data at 10 Hz, observations every 25 ms: predicted frame j is (j+1)*2 data frames = 8(j+1) observations
    assert frame_offsets_steps(cfg, 0.1, 0.025) == [8, 16, 24]


def test_cli_errors_name_the_problem(tmp_path, capsys):
    assert eval_cli.main(['--checkpoint', str(tmp_path / 'nope'), '--tasks', 'reach']) == 2
    assert 'no config.json' in capsys.readouterr().err
    assert eval_cli.main(['--checkpoint', str(tmp_path), '--tasks', 'reachx']) == 2
    assert "unknown Meta-World v3 task 'reachx'" in capsys.readouterr().err


def test_closed_loop_through_ros(tiny_checkpoint, tmp_path, capsys):
    """One short episode with the sim node (lockstep) and defi_bringup as real ROS 2 processes."""
    out = tmp_path / 'eval_ros'
    rc = eval_cli.main(['--checkpoint', str(tiny_checkpoint), '--tasks', 'reach', '--episodes', '1',
                        '--mode', 'ros', '--max-steps', '16', '--out', str(out), '--pictures',
                        'picture_steps=[0]'])
    printed = capsys.readouterr()
    assert rc == 0, printed.out + printed.err
    # its own graph: the eval's bringup commands an arm, which nothing on this domain may hear
    domain = int(re.search(r'ROS_DOMAIN_ID (\d+)', printed.out).group(1))
    assert domain != int(os.environ['ROS_DOMAIN_ID'])
    results = json.loads((out / 'results.json').read_text())
    load_results(out / 'results.json')
    assert results['mode'] == 'ros'
    task = results['tasks']['reach-v3']
    assert task['episodes'] == 1
    # the closed loop really ran: the sim advanced to max_steps (or succeeded earlier)
    assert 0 < task['mean_length'] <= 16
    assert task['success'] == 1.0 or task['mean_length'] == 16
    # chunks came back for camera images of this episode
    assert results['latency_ms']['count'] >= 1 and results['latency_ms']['median'] > 0
    assert '| reach-v3 |' in (out / 'results.md').read_text()
    assert (out / 'prediction_strip.png').stat().st_size > 0
    frames = _video_frames(out / 'episode_reach-v3.mp4')
    assert 4 <= len(frames) <= 9                  # one frame per observation (16 steps / 2)


def test_cli_config_file_then_flags(tmp_path):
    cfg_file = tmp_path / 'eval.yaml'
    cfg_file.write_text('tasks: [push]\nepisodes: 7\nmax_steps: 50\nchunk_delay: 1\n')
    args = eval_cli.build_parser().parse_args(['--checkpoint', 'c', '--config', str(cfg_file),
                                               '--episodes', '3', '--pictures', 'chunk_delay=2'])
    config = eval_cli.make_config(args)
    assert config.tasks == ('push-v3',) and config.episodes == 3 and config.max_steps == 50
    assert config.pictures and config.seed == 1000 and config.chunk_delay == 2
    cfg_file.write_text('episode: 7\n')
    with pytest.raises(ValueError, match=f"--config {cfg_file}: episode: unknown key"):
        eval_cli.make_config(eval_cli.build_parser().parse_args(['--checkpoint', 'c', '--config', str(cfg_file)]))


def test_chunk_dt_from_flag_checkpoint_or_observation_period(tiny_checkpoint, tmp_path):
    from defi_core.checkpoint import save_checkpoint
    from defi_sim.evaluate import checkpoint_chunk_dt

    policy = load_eval_policy(tiny_checkpoint)
    assert checkpoint_chunk_dt(tiny_checkpoint, EvalConfig()) == pytest.approx(0.025)  # no fps stored
    ckpt = save_checkpoint(tmp_path / 'with_fps', policy, policy.cfg.replace(fps=10.0), policy.normalizer)
    assert checkpoint_chunk_dt(ckpt, EvalConfig()) == pytest.approx(0.1)
    assert checkpoint_chunk_dt(ckpt, EvalConfig(action_dt_s=0.05)) == pytest.approx(0.05)


def test_inprocess_reruns_give_the_same_episodes(tiny_checkpoint):
    """The action sampler is seeded per episode: a rerun repeats every command, while the global
    torch RNG (which nothing in the loop reseeds) is left to whatever else the process does."""
    policy = load_eval_policy(tiny_checkpoint)
    config = EvalConfig(tasks=('reach',), episodes=2, max_steps=12, record_trajectory=True)
    first, _ = run_inprocess(policy, config, log=lambda s: None)
    torch.manual_seed(12345)                     # disturb the global RNG between the runs
    torch.randn(100)
    second, _ = run_inprocess(policy, config, log=lambda s: None)
    for a, b in zip(first, second, strict=True):
        assert a.seed == b.seed and len(a.trajectory['command']) == 6
        np.testing.assert_array_equal(a.trajectory['command'], b.trajectory['command'])
        np.testing.assert_array_equal(a.trajectory['hand'], b.trajectory['hand'])
    # the recording is of each episode: seeds 1000 and 1001 (other states, other noise) differ
    assert not np.array_equal(first[0].trajectory['command'], first[1].trajectory['command'])


def test_policy_state_takes_the_checkpoint_joints_by_name():
    """In-process evaluation reads observation.state as the ROS action decoder does: the joints the
    checkpoint names, else the first state_dim positions."""
    from types import SimpleNamespace

    from defi_core.config import preset
    from defi_sim.evaluate import _policy_state
    sim = SimpleNamespace(joint_names=['a', 'b', 'c'], joint_positions=lambda: np.array([1.0, 2.0, 3.0]))
    cfg = preset('tiny', action_dim=4, state_dim=2, text_encoder='hash')
    np.testing.assert_array_equal(_policy_state(SimpleNamespace(cfg=cfg.replace(state_names=('c', 'a'))), sim),
                                  [3.0, 1.0])
    np.testing.assert_array_equal(_policy_state(SimpleNamespace(cfg=cfg), sim), [1.0, 2.0])
    with pytest.raises(ValueError, match=r"state joints \['z'\] are not joints of the sim"):
        _policy_state(SimpleNamespace(cfg=cfg.replace(state_names=('a', 'z'))), sim)


def test_the_ros_eval_never_takes_the_callers_domain():
    rng = random.Random(0)
    draws = {private_domain_id('150', rng) for _ in range(2000)}
    assert 150 not in draws and len(draws) == 99 and min(draws) == 101 and max(draws) == 200
    assert 101 <= private_domain_id(None, rng) <= 200 and 101 <= private_domain_id('x', rng) <= 200
