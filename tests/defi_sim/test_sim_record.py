"""`defi-sim record`: expert episodes driven through ROS topics, one readable rosbag2 per episode."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

pytest.importorskip('rclpy')
from rosbags.rosbag2 import Reader  # noqa: E402

from defi_training.sources.msg_types import typestore  # noqa: E402


def read_bag(path):
    store = typestore()
    messages = {}
    with Reader(path) as reader:
        for conn, t, raw in reader.messages():
            messages.setdefault(conn.topic, []).append((t, store.deserialize_cdr(raw, conn.msgtype)))
    return messages


def test_record_cli_writes_one_readable_bag_per_episode(tmp_path):
    env = dict(os.environ)
    cmd = [sys.executable, '-m', 'defi_sim.record', 'record', '--task', 'reach', '--episodes', '2',
           '--seed', '5', '--noise', '0.05', '--image-size', '32', '--out', str(tmp_path), '--extra', '3']
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary['episodes'] == 2 and summary['success_rate'] == 1.0

    out = tmp_path / 'reach-v3'
    bags = sorted(p.name for p in out.iterdir())
    assert bags == ['reach-v3_seed00005', 'reach-v3_seed00006']  # nothing left in .partial
    for name, seed in zip(bags, (5, 6), strict=True):
        meta = yaml.safe_load((out / name / 'metadata.yaml').read_text())['rosbag2_bagfile_information']
        custom = meta['custom_data']
        assert custom['task'] == 'reach-v3' and custom['seed'] == str(seed)
        assert custom['success'] == 'true' and custom['instruction'] == 'reach the goal position'

        msgs = read_bag(out / name)
        assert [m.data for _, m in msgs['/instruction']] == ['reach the goal position']
        images, commands = msgs['/camera/front/image_raw'], msgs['/defi/action_command']
        n = len(images)
        assert n > 10
        for topic in ('/joint_states', '/sim/ee_pose', '/sim/success', '/sim/task_state'):
            assert len(msgs[topic]) == n, topic
        # the expert answered every observation, stamped with that observation's sim time
        assert len(commands) == n
        image_stamps = [t for t, _ in images]
        assert [t for t, _ in commands] == image_stamps
        assert np.all(np.diff(image_stamps) == 25_000_000)  # lockstep: 2 x 12.5 ms per observation
        assert all((m.width, m.height, m.encoding) == (32, 32, 'rgb8') for _, m in images)
        chunk = commands[0][1]
        assert (chunk.horizon, chunk.action_dim, list(chunk.names)) == (1, 4, ['dx', 'dy', 'dz', 'gripper'])
        assert msgs['/sim/success'][-1][1].data and not msgs['/sim/success'][0][1].data
        # the recorded episode starts at the seed's initial state (reach's goal follows the seed)
        first_state = msgs['/sim/task_state'][0][1]
        assert np.asarray(first_state.values).shape == (39,) and first_state.task == 'reach-v3'
    goal5 = np.array(read_bag(out / bags[0])['/sim/task_state'][0][1].values[-3:])
    goal6 = np.array(read_bag(out / bags[1])['/sim/task_state'][0][1].values[-3:])
    assert not np.allclose(goal5, goal6)
    # a seed is the same initial state through ROS as in-process (evaluation compares the two)
    from defi_sim.metaworld_env import MetaWorldSim
    local = MetaWorldSim('reach', seed=6, image_size=16)
    np.testing.assert_allclose(read_bag(out / bags[1])['/sim/task_state'][0][1].values,
                               local.observation, atol=1e-12)
    local.close()

    # `defi-data inspect` reads them: 40 Hz streams without gaps
    pytest.importorskip('defi_training.data_cli')
    proc = subprocess.run([sys.executable, '-m', 'defi_training.data_cli', 'inspect', '--json', str(out)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    items = json.loads(proc.stdout)[0]['items']
    assert len(items) == 2
    for item in items:
        image = item['topics']['/camera/front/image_raw']
        assert image['rate_hz'] == pytest.approx(40.0) and not image['gaps']
        assert item['topics']['/defi/action_command']['count'] == image['count']

    # ... and round-trip through the episode cache with the project's Meta-World data config
    cache_mod = pytest.importorskip('defi_training.cache')
    from pathlib import Path

    from defi_training.topic_map import TopicMap
    config = Path(__file__).resolve().parents[2] / 'config' / 'data_metaworld.yaml'
    topic_map = TopicMap.from_dict(yaml.safe_load(config.read_text())) if config.is_file() else TopicMap(fps=40)
    topic_map.image_size = 32
    cache = cache_mod.build_cache([out], tmp_path / 'cache', topic_map)
    assert cache.num_episodes == 2
    assert cache.task(0) == 'reach the goal position'
    assert cache.episode_info(0).get('success') is True
    assert cache.frames(0, 'front').shape[1:] == (32, 32, 3)
    actions = cache.array(0, 'action')
    assert actions.shape[1] == 4 and np.abs(actions).max() <= 1.0
    assert abs(cache.episode_length(0) - len(read_bag(out / bags[0])['/camera/front/image_raw'])) <= 1
