"""`defi-data inspect` on real bags, videos, LeRobot datasets and caches."""
import json
import subprocess
import sys

import numpy as np

from defi_training.inspect import inspect_path
from defi_training.sources.video import write_video
from defi_training.synthetic import write_synthetic_bag


def _cli(*args):
    return subprocess.run([sys.executable, '-m', 'defi_training.data_cli', *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_bag_topics_types_counts_rates_gaps(tmp_path):
    bag = write_synthetic_bag(tmp_path / 'b', storage='sqlite3', duration_s=4.0, camera_gaps=[(1.0, 2.0)],
                              image_size=16)
    d = inspect_path(bag.path)
    assert d['kind'] == 'rosbag' and d['storage'] == 'sqlite3'
    cam = d['topics']['/camera/front/image_raw']
    assert cam['type'] == 'sensor_msgs/msg/Image' and cam['count'] == 30
    assert abs(cam['max_gap_s'] - 1.1) < 1e-6
    assert len(cam['gaps']) == 1 and abs(cam['gaps'][0][0] - 0.9) < 1e-6
    js = d['topics']['/joint_states']
    assert js['count'] == 40 and abs(js['rate_hz'] - 10.0) < 1e-6 and js['gaps'] == []
    proc = _cli('inspect', bag.path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for text in ('/camera/front/image_raw', 'sensor_msgs/msg/Image', 'defi_msgs/msg/ActionChunk', '/instruction',
                 'storage sqlite3', '1.10s at 0.90s'):
        assert text in out, text
    line = next(x for x in out.splitlines() if '/joint_states' in x)
    assert ' 40 ' in line and '10.00' in line


def test_inspect_video_lerobot_cache_folder_and_errors(tmp_path):
    (tmp_path / 'v').mkdir()
    write_video(tmp_path / 'v' / 'a.mp4', np.zeros((5, 16, 16, 3), np.uint8), fps=5)
    write_synthetic_bag(tmp_path / 'bags' / 'x', duration_s=1.0, image_size=16)
    assert _cli('build-cache', tmp_path / 'bags', '--out', tmp_path / 'cache', '--image-size', 16).returncode == 0
    assert _cli('convert', '--to', 'lerobot', tmp_path / 'cache', '--out', tmp_path / 'lr').returncode == 0
    proc = _cli('inspect', tmp_path / 'v' / 'a.mp4', tmp_path / 'cache', tmp_path / 'lr', tmp_path / 'bags')
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'h264 16x16, 5 frames' in proc.stdout
    assert 'cache: 1 episodes, 10 frames' in proc.stdout
    assert 'LeRobot v3.0: 1 episodes, 10 frames' in proc.stdout
    assert '[folder]' in proc.stdout and '/camera/front/image_raw' in proc.stdout
    (tmp_path / 'bad.mp4').write_bytes(b'junk')
    proc = _cli('inspect', '--json', tmp_path / 'bad.mp4', tmp_path / 'missing')
    assert proc.returncode == 1
    res = json.loads(proc.stdout)
    assert 'error' in res[0] and res[1]['error'] == 'does not exist'


def test_inspect_exits_1_when_an_item_inside_a_folder_fails(tmp_path):
    write_synthetic_bag(tmp_path / 'data' / 'good', duration_s=1.0, image_size=16)
    (tmp_path / 'data' / 'sub').mkdir()
    (tmp_path / 'data' / 'sub' / 'broken.mp4').write_bytes(b'junk')
    proc = _cli('inspect', tmp_path / 'data')
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert 'broken.mp4' in proc.stdout and 'ERROR' in proc.stdout and '/camera/front/image_raw' in proc.stdout
