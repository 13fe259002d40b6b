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

from defi_core.msg_types import typestore  # noqa: E402


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
    for name, seed in zip(bags, (5, 6)):
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
        first_state = np.array(msgs['/sim/task_state'][0][1].position)
        assert first_state.shape == (39,)
    goal5 = np.array(read_bag(out / bags[0])['/sim/task_state'][0][1].position[-3:])
    goal6 = np.array(read_bag(out / bags[1])['/sim/task_state'][0][1].position[-3:])
    assert not np.allclose(goal5, goal6)

    # the episode round-trips through the data engineer's episode cache
    cache_mod = pytest.importorskip('defi_training.cache')
    from defi_training.topic_map import TopicMap
    cache = cache_mod.build_cache([out], tmp_path / 'cache',
                                  TopicMap(fps=40, image_size=32, success_topic='sim/success'))
    assert cache.num_episodes == 2
    assert cache.task(0) == 'reach the goal position'
    assert cache.frames(0, 'front').shape[1:] == (32, 32, 3)
    actions = cache.array(0, 'action')
    assert actions.shape[1] == 4 and np.abs(actions).max() <= 1.0
    assert abs(cache.episode_length(0) - len(read_bag(out / bags[0])['/camera/front/image_raw'])) <= 1
