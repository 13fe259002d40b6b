"""Bad inputs are skipped with one line naming the file and the reason, counted, never used."""
import io
import json
import subprocess
import sys

import numpy as np
import pytest

from defi_training.cache import EpisodeCache, build_cache
from defi_training.sources import Report
from defi_training.sources.video import write_video
from defi_training.synthetic import synthetic_image, write_synthetic_bag
from defi_training.topic_map import TopicMap

TM = dict(image_size=16)


def _build(paths, out, **kw):
    stream = io.StringIO()
    report = Report(stream=stream)
    tm = TopicMap(**{**TM, **kw})
    cache = build_cache(paths, out, tm, report=report)
    return cache, report, stream.getvalue().strip().splitlines()


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


@pytest.mark.parametrize('storage, suffix', [('mcap', '.mcap'), ('sqlite3', '.db3')])
def test_truncated_bag_is_skipped_and_reported(tmp_path, storage, suffix):
    good = write_synthetic_bag(tmp_path / 'bags' / 'good', storage=storage, duration_s=1.0, image_size=16)
    bad = write_synthetic_bag(tmp_path / 'bags' / 'bad', storage=storage, duration_s=1.0, image_size=16)
    files = list(bad.path.glob('*' + suffix))
    assert len(files) == 1
    _truncate(files[0], 0.4)
    cache, report, lines = _build([tmp_path / 'bags'], tmp_path / 'cache')
    assert cache.num_episodes == 1 and cache.meta['episodes'][0]['source'] == str(good.path)
    assert len(report.skipped) == 1 and len(lines) == 1
    assert lines[0].startswith(f'SKIPPED {bad.path}:') and 'cannot read bag' in lines[0]
    assert cache.meta['skipped'][0]['path'] == str(bad.path)


def test_corrupt_video_is_skipped_and_reported(tmp_path):
    vids = tmp_path / 'videos'
    vids.mkdir()
    write_video(vids / 'good.mp4', np.stack([synthetic_image(i * 20, 16) for i in range(12)]), fps=10)
    (vids / 'broken.mp4').write_bytes(b'\x00\x00\x00\x18ftypisom' + bytes(range(256)) * 4)
    cache, report, lines = _build([vids], tmp_path / 'cache', action={'source': 'none', 'topic': None},
                                  state={'topic': None})
    assert cache.num_episodes == 1 and cache.num_frames == 12
    assert len(lines) == 1 and lines[0].startswith(f"SKIPPED {vids / 'broken.mp4'}: unreadable video")


def test_missing_topic_type_mismatch_and_bad_payload(tmp_path):
    ok = write_synthetic_bag(tmp_path / 'ok', duration_s=1.0, image_size=16)
    report = Report(quiet=True)
    from defi_training.sources.rosbag import read_bag
    eps = list(read_bag(ok.path, TopicMap(cameras={'wrist': 'camera/wrist/image_raw'}, **TM), report))
    assert not eps and "missing topic 'camera/wrist/image_raw'" in report.skipped[-1]['reason']
    eps = list(read_bag(ok.path, TopicMap(state={'topic': 'instruction'}, **TM), report))
    assert not eps and 'type mismatch' in report.skipped[-1]['reason']
    assert 'std_msgs/msg/String' in report.skipped[-1]['reason']
    eps = list(read_bag(ok.path, TopicMap(cameras={'front': 'joint_states'}, **TM), report))
    assert not eps and 'type mismatch' in report.skipped[-1]['reason']
    # an Image whose step is smaller than a row: the decode error names the topic and field
    bad = write_synthetic_bag(tmp_path / 'bad', duration_s=1.0, image_size=16)
    from rosbags.rosbag2 import Reader, Writer

    from defi_training.sources.rosbag import make_typestore
    store = make_typestore()
    out = tmp_path / 'bad_step'
    with Reader(bad.path) as r, Writer(out, version=9) as w:
        conns = {c.id: w.add_connection(c.topic, c.msgtype, typestore=store) for c in r.connections}
        for c, t, raw in r.messages():
            if c.msgtype == 'sensor_msgs/msg/Image':
                msg = store.deserialize_cdr(raw, c.msgtype)
                msg.step = 10
                raw = store.serialize_cdr(msg, c.msgtype)
            w.write(conns[c.id], t, raw)
    eps = list(read_bag(out, TopicMap(**TM), report))
    reason = report.skipped[-1]['reason']
    assert not eps and 'step' in reason and 'camera/front/image_raw' in reason
    assert len(report.skipped) == 4


def test_empty_episode_is_skipped(tmp_path):
    bag = write_synthetic_bag(tmp_path / 'short', duration_s=0.1, image_size=16)   # one frame
    good = write_synthetic_bag(tmp_path / 'good', duration_s=1.0, image_size=16)
    cache, report, lines = _build([bag.path, good.path], tmp_path / 'cache', min_episode_frames=2)
    assert cache.num_episodes == 1
    assert len(lines) == 1 and 'empty episode' in lines[0] and str(bag.path) in lines[0]


def test_nothing_usable_raises_and_leaves_no_cache(tmp_path):
    bag = write_synthetic_bag(tmp_path / 'b', duration_s=1.0, image_size=16)
    with pytest.raises(ValueError, match='no usable episode'):
        _build([bag.path, tmp_path / 'missing'], tmp_path / 'cache', cameras={'x': 'nope'})
    assert not (tmp_path / 'cache').exists()
    assert [p.name for p in tmp_path.iterdir()] == ['b']            # no temp folder left behind


def test_cli_reports_each_skip_and_the_summary(tmp_path):
    good = write_synthetic_bag(tmp_path / 'in' / 'good', duration_s=1.0, image_size=16)
    bad = write_synthetic_bag(tmp_path / 'in' / 'bad', duration_s=1.0, image_size=16)
    _truncate(next(bad.path.glob('*.mcap')), 0.3)
    (tmp_path / 'in' / 'clip.mp4').write_bytes(b'not a video')
    proc = subprocess.run([sys.executable, '-m', 'defi_training.data_cli', 'build-cache', str(tmp_path / 'in'),
                           '--out', str(tmp_path / 'cache'), 'image_size=16'],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    skipped = [line for line in proc.stderr.splitlines() if line.startswith('SKIPPED')]
    assert len(skipped) == 2
    assert any(str(bad.path) in s for s in skipped) and any('clip.mp4' in s for s in skipped)
    assert '1 episodes' in proc.stdout and '2 input(s) skipped' in proc.stdout
    meta = json.loads((tmp_path / 'cache' / 'meta.json').read_text())
    assert len(meta['skipped']) == 2 and meta['episodes'][0]['source'] == str(good.path)
    assert EpisodeCache(tmp_path / 'cache').num_episodes == 1
