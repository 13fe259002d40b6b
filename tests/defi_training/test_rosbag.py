"""rosbag2 source on real bags written with rosbags: storages, compression, encodings, the as-of rule."""
import numpy as np
import pytest

from defi_training.sources import Report
from defi_training.sources.rosbag import read_bag
from defi_training.synthetic import write_synthetic_bag
from defi_training.topic_map import TopicMap


def _read(path, **kw):
    kw.setdefault('image_size', 16)
    report = Report(quiet=True)
    eps = list(read_bag(path, TopicMap(**kw), report))
    return eps, report


def _query_times(ep):
    return ep.extra['start_time_ns'] + np.round(ep.timestamps * 1e9).astype(np.int64)


def _check_asof(sample_times, picked, queries, max_age_ns):
    picked = np.asarray(picked, np.int64)
    t = sample_times[picked]
    assert np.all(t <= queries), 'a sample from the future was used'
    assert np.all(queries - t <= max_age_ns), 'a sample older than max_age_s was used'
    nxt = picked + 1
    has = nxt < sample_times.size
    assert np.all(sample_times[nxt[has]] > queries[has]), 'not the latest sample at or before t'


# zstd: whole-file, per-message, and mcap chunk compression (rosbags cannot write sqlite3 storage-side)
@pytest.mark.parametrize('storage, compression', [
    ('mcap', None), ('mcap', 'file'), ('mcap', 'message'), ('mcap', 'storage'),
    ('sqlite3', None), ('sqlite3', 'file'), ('sqlite3', 'message')])
def test_storages_and_compression(tmp_path, storage, compression):
    bag = write_synthetic_bag(tmp_path / 'b', storage=storage, compression=compression, duration_s=2.0,
                              image_size=32, instructions=('open the drawer',))
    eps, report = _read(bag.path, success_topic='sim/success')
    assert not report.skipped and len(eps) == 1
    ep = eps[0]
    assert ep.length == 20 and ep.frames['front'].shape == (20, 16, 16, 3)
    assert ep.frames['front'][:, 0, 0, 0].tolist() == list(range(20))
    assert ep.state[:, 0].tolist() == list(range(20)) and ep.state.dtype == np.float32
    assert ep.action[:, 0].tolist() == list(range(20))
    assert ep.state_names == ['joint0', 'joint1', 'joint2', 'joint3']
    assert ep.action_names == ['a0', 'a1', 'a2', 'a3']
    assert ep.task == 'open the drawer'
    assert ep.extra['clock']['camera/front/image_raw'] == 'header'
    assert ep.extra['clock']['instruction'] == 'receive'
    assert ep.extra['success'] is True
    np.testing.assert_allclose(np.diff(ep.timestamps), 0.1, atol=1e-9)


@pytest.mark.parametrize('encoding, pad', [('bgr8', 3), ('rgba8', 0), ('mono8', 5), ('rgb8', 7)])
def test_image_encodings_and_step(tmp_path, encoding, pad):
    bag = write_synthetic_bag(tmp_path / 'b', duration_s=1.0, image_size=16, encoding=encoding, step_padding=pad)
    eps, report = _read(bag.path)
    assert not report.skipped
    fr = eps[0].frames['front']
    assert fr[:, 3, 3, 0].tolist() == list(range(10))   # red = sample index, whatever the encoding
    if encoding == 'mono8':
        assert np.array_equal(fr[..., 1], fr[..., 0])
    else:
        assert np.all(fr[..., 1] == 20)                    # green camera marker survives bgr/rgba


@pytest.mark.parametrize('fmt', ['png', 'jpeg'])
def test_compressed_images(tmp_path, fmt):
    bag = write_synthetic_bag(tmp_path / 'b', duration_s=1.0, image_size=16, compressed_format=fmt)
    eps, report = _read(bag.path, cameras={'front': 'camera/front/image_raw/compressed'})
    assert not report.skipped
    red = eps[0].frames['front'][:, 8, 8, 0].astype(int)
    assert np.abs(red - np.arange(10)).max() <= (0 if fmt == 'png' else 3)


def test_asof_never_picks_future_with_skewed_rates(tmp_path):
    bag = write_synthetic_bag(tmp_path / 'b', duration_s=4.0, fps=10, camera_rate=7.3, state_rate=23.0,
                              action_rate=13.0, jitter=0.3, seed=3)
    max_age = 0.3
    eps, report = _read(bag.path, fps=10, max_age_s=max_age)
    assert len(eps) == 1 and not report.skipped
    ep = eps[0]
    q = _query_times(ep)
    cam_idx = ep.frames['front'][:, 0, 0, 0].astype(np.int64)
    _check_asof(bag.camera_times_ns['front'], cam_idx, q, int(max_age * 1e9))
    _check_asof(bag.state_times_ns, ep.state[:, 0].astype(np.int64), q, int(max_age * 1e9))
    _check_asof(bag.action_times_ns, ep.action[:, 0].astype(np.int64), q, int(max_age * 1e9))
    # slower camera than the frame rate: some camera samples repeat, none is skipped ahead of time
    assert np.any(np.diff(cam_idx) == 0)


def test_gap_splits_episode_or_drops_frames(tmp_path):
    bag = write_synthetic_bag(tmp_path / 'b', duration_s=4.0, camera_gaps=[(1.5, 2.5)])
    cam_t = bag.camera_times_ns['front']
    eps, report = _read(bag.path, max_age_s=0.25, gap_policy='split')
    assert len(eps) == 2 and not report.skipped
    for ep in eps:
        _check_asof(cam_t, ep.frames['front'][:, 0, 0, 0], _query_times(ep), 250_000_000)
        assert ep.extra['gaps'] == 1 and ep.extra['num_segments'] == 2
    # frames within max_age after the last sample before the gap stay; later ones do not
    assert eps[0].length == 17 and eps[1].length == 15
    eps_d, _ = _read(bag.path, max_age_s=0.25, gap_policy='drop')
    assert len(eps_d) == 1 and eps_d[0].length == 32
    assert np.max(np.diff(eps_d[0].timestamps)) > 0.5          # time jumps over the dropped frames
    _check_asof(cam_t, eps_d[0].frames['front'][:, 0, 0, 0], _query_times(eps_d[0]), 250_000_000)


def test_receive_clock_when_no_header_stamps(tmp_path):
    bag = write_synthetic_bag(tmp_path / 'b', duration_s=1.0, header_stamps=False, latency_s=0.02)
    eps, _ = _read(bag.path)
    assert eps[0].extra['clock']['camera/front/image_raw'] == 'receive'
    assert eps[0].extra['start_time_ns'] == int(bag.camera_times_ns['front'][0]) + 20_000_000
    with pytest.raises(ValueError, match='clock'):
        TopicMap(clock='gps')
    eps, report = _read(bag.path, clock='header')
    assert not eps and 'no header stamps' in report.skipped[0]['reason']


@pytest.mark.parametrize('kind, names', [
    ('twist', ['linear.x', 'linear.y', 'linear.z', 'angular.x', 'angular.y', 'angular.z']),
    ('trajectory', ['joint0', 'joint1', 'joint2', 'joint3']),
])
def test_command_types(tmp_path, kind, names):
    bag = write_synthetic_bag(tmp_path / 'b', duration_s=1.0, action=kind)
    eps, report = _read(bag.path)
    assert not report.skipped
    assert eps[0].action_names == names and eps[0].action[:, 0].tolist() == list(range(10))


def test_chunk_row0_and_actions_from_states(tmp_path):
    bag = write_synthetic_bag(tmp_path / 'b', duration_s=1.0, chunk_horizon=3)
    eps, _ = _read(bag.path)
    assert eps[0].action[:, 0].tolist() == list(range(10))     # row 0, not rows 1..2 (+1000)
    bag2 = write_synthetic_bag(tmp_path / 'c', duration_s=1.0, action=None)
    eps, _ = _read(bag2.path, action={'source': 'next_state', 'topic': None})
    st, ac = eps[0].state, eps[0].action
    assert np.array_equal(ac[:-1], st[1:]) and np.array_equal(ac[-1], st[-1])
    eps, _ = _read(bag2.path, action={'source': 'state_delta', 'topic': None})
    assert np.allclose(eps[0].action[:-1], st[1:] - st[:-1]) and np.all(eps[0].action[-1] == 0)
    eps, _ = _read(bag2.path, action={'source': 'none', 'topic': None})
    assert eps[0].action is None


def test_episodes_split_by_instruction_topic_and_metadata_task(tmp_path):
    bag = write_synthetic_bag(tmp_path / 'b', duration_s=3.0, instructions=('open', 'close', 'push'))
    eps, report = _read(bag.path, episode={'split': 'topic', 'topic': '/instruction'})
    assert [e.task for e in eps] == ['open', 'close', 'push'] and not report.skipped
    assert sum(e.length for e in eps) == 30
    firsts = [int(e.frames['front'][0, 0, 0, 0]) for e in eps]
    assert firsts == [0, 10, 20]
    bag2 = write_synthetic_bag(tmp_path / 'c', duration_s=1.0, instructions=(), instruction_in_metadata='wipe it')
    eps, _ = _read(bag2.path)
    assert eps[0].task == 'wipe it'
    bag3 = write_synthetic_bag(tmp_path / 'd', duration_s=1.0, instructions=())
    eps, _ = _read(bag3.path, task={'topic': 'instruction', 'default': 'fallback'})
    assert eps[0].task == 'fallback'


def test_two_cameras_and_topics_without_leading_slash(tmp_path):
    bag = write_synthetic_bag(tmp_path / 'b', duration_s=1.0, cameras=('front', 'wrist'), topic_prefix='')
    eps, _ = _read(bag.path, cameras={'front': '/camera/front/image_raw', 'wrist': 'camera/wrist/image_raw'})
    assert list(eps[0].frames) == ['front', 'wrist']
    assert np.all(eps[0].frames['wrist'][..., 1] == 60) and np.all(eps[0].frames['front'][..., 1] == 20)


def test_a_video_config_on_a_bag_names_the_camera_without_a_topic(tmp_path):
    from pathlib import Path

    from defi_training.topic_map import load_topic_map
    bag = write_synthetic_bag(tmp_path / 'b', duration_s=1.0, image_size=16)
    video_config = Path(__file__).resolve().parents[2] / 'config' / 'data_video.yaml'
    report = Report(quiet=True)
    assert list(read_bag(bag.path, load_topic_map(video_config), report)) == []
    assert report.skipped[0]['reason'] == ("camera 'front' has no topic in the data config: set "
                                           'cameras.front=<image topic> (image topics in the bag: '
                                           'camera/front/image_raw)')


@pytest.mark.parametrize('storage', ['sqlite3', 'mcap'])
def test_qos_text_that_differs_from_the_storage_file_is_read_with_a_warning(tmp_path, storage, capsys):
    from pathlib import Path

    import yaml

    from defi_training.inspect import inspect_path
    bag = write_synthetic_bag(tmp_path / 'b', storage=storage, duration_s=1.0, image_size=16)
    meta_path = Path(bag.path) / 'metadata.yaml'
    meta = yaml.safe_load(meta_path.read_text())
    for t in meta['rosbag2_bagfile_information']['topics_with_message_count']:
        if t['topic_metadata']['name'].endswith('image_raw'):     # as another rosbag2 version writes it
            forever = {'sec': 9223372036, 'nsec': 854775807}
            t['topic_metadata']['offered_qos_profiles'] = yaml.safe_dump([{
                'history': 1, 'depth': 5, 'reliability': 2, 'durability': 2, 'deadline': forever,
                'lifespan': forever, 'liveliness': 1, 'liveliness_lease_duration': forever,
                'avoid_ros_namespace_conventions': False}])
    meta_path.write_text(yaml.safe_dump(meta))
    d = inspect_path(bag.path)
    assert d['topics']['/camera/front/image_raw']['count'] == 10, d['topics']
    assert d['warnings'] == ["the QoS of /camera/front/image_raw in metadata.yaml differs from the storage "
                             "file's; read with the storage file's"]
    eps = list(read_bag(bag.path, TopicMap(image_size=16), Report()))
    assert len(eps) == 1 and eps[0].length >= 9
    assert f'WARNING {bag.path}: the QoS of /camera/front/image_raw' in capsys.readouterr().err
