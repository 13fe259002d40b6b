"""LeRobot v3 write -> read on real parquet + h264 files: arrays lossless, layout as LeRobot expects."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from defi_training.sources import Episode, Report
from defi_training.sources.lerobot import read_lerobot, write_lerobot
from defi_training.topic_map import TopicMap


def _episodes(n_eps=3, size=16, seed=0):
    rng = np.random.default_rng(seed)
    eps = []
    for e in range(n_eps):
        n = 8 + 3 * e
        levels = (np.arange(n) * 17 + 40 * e) % 256
        frames = {'front': np.broadcast_to(levels[:, None, None, None], (n, size, size, 3)).astype(np.uint8).copy(),
                  'wrist': np.full((n, size, size, 3), 100 + e * 30, np.uint8)}
        eps.append(Episode(source=f'ep{e}', frames=frames, timestamps=np.arange(n) / 10.0,
                           task=['open', 'close'][e % 2],
                           state=rng.standard_normal((n, 5)).astype(np.float32),
                           action=rng.standard_normal((n, 3)).astype(np.float32) * 1e3,
                           state_names=[f's{i}' for i in range(5)], action_names=['x', 'y', 'g']))
    return eps


def test_round_trip_lossless_for_arrays(tmp_path):
    src = _episodes()
    out = write_lerobot(src, tmp_path / 'ds', fps=10)
    report = Report(quiet=True)
    back = list(read_lerobot(out, TopicMap(image_size=16, fps=10), report))
    assert not report.skipped and len(back) == 3
    for a, b in zip(src, back, strict=True):
        assert np.array_equal(a.state, b.state) and b.state.dtype == np.float32
        assert np.array_equal(a.action, b.action)
        assert a.task == b.task and b.state_names == a.state_names and b.action_names == a.action_names
        np.testing.assert_allclose(b.timestamps, a.timestamps, atol=1e-6)
        assert list(b.frames) == ['front', 'wrist']
        for cam in ('front', 'wrist'):
            diff = np.abs(a.frames[cam].astype(int) - b.frames[cam].astype(int))
            assert diff.mean() < 3, cam                  # h264: close, and the right frame (levels differ by 17)


def test_layout_info_tasks_stats(tmp_path):
    src = _episodes(2)
    root = write_lerobot(src, tmp_path / 'ds', fps=10, robot_type='sim_arm')
    info = json.loads((root / 'meta' / 'info.json').read_text())
    assert info['codebase_version'] == 'v3.0' and info['total_episodes'] == 2 and info['total_frames'] == 19
    assert info['features']['observation.images.front']['dtype'] == 'video'
    assert info['features']['action']['shape'] == [3] and info['features']['action']['names'] == ['x', 'y', 'g']
    assert info['robot_type'] == 'sim_arm' and info['total_tasks'] == 2
    for rel in ('data/chunk-000/file-000.parquet', 'meta/episodes/chunk-000/file-000.parquet',
                'videos/observation.images.front/chunk-000/file-000.mp4',
                'videos/observation.images.wrist/chunk-000/file-000.mp4', 'meta/tasks.parquet', 'meta/stats.json'):
        assert (root / rel).is_file(), rel
    tasks = pq.read_table(root / 'meta' / 'tasks.parquet').to_pydict()
    assert tasks == {'task': ['open', 'close'], 'task_index': [0, 1]}
    eps = pq.read_table(root / 'meta' / 'episodes' / 'chunk-000' / 'file-000.parquet').to_pylist()
    assert [e['length'] for e in eps] == [8, 11] and eps[1]['dataset_from_index'] == 8
    assert eps[1]['videos/observation.images.front/from_timestamp'] == pytest.approx(0.8)
    data = pq.read_table(root / 'data' / 'chunk-000' / 'file-000.parquet')
    assert data.num_rows == 19 and data.column('index').to_pylist() == list(range(19))
    stats = json.loads((root / 'meta' / 'stats.json').read_text())
    all_action = np.concatenate([e.action for e in src]).astype(np.float64)
    np.testing.assert_allclose(stats['action']['mean'], all_action.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats['action']['max'], all_action.max(0))


def test_read_resamples_to_config_fps_and_drops_actions_when_action_free(tmp_path):
    root = write_lerobot(_episodes(1), tmp_path / 'ds', fps=10)
    ep = next(read_lerobot(root, TopicMap(image_size=16, fps=5), Report(quiet=True)))
    src = _episodes(1)[0]
    assert ep.length == 4 and np.array_equal(ep.state, src.state[::2])
    ep = next(read_lerobot(root, TopicMap(image_size=8, action={'source': 'none', 'topic': None}, fps=10),
                           Report(quiet=True)))
    assert ep.action is None and ep.frames['front'].shape == (8, 8, 8, 3)


def test_overwrite_guard_and_broken_dataset(tmp_path):
    root = write_lerobot(_episodes(1), tmp_path / 'ds', fps=10)
    with pytest.raises(FileExistsError):
        write_lerobot(_episodes(1), root, fps=10)
    write_lerobot(_episodes(2), root, fps=10, overwrite=True)
    assert json.loads((root / 'meta' / 'info.json').read_text())['total_episodes'] == 2
    (root / 'videos' / 'observation.images.front' / 'chunk-000' / 'file-000.mp4').write_bytes(b'garbage')
    report = Report(quiet=True)
    import defi_training.sources.lerobot as lerobot_mod
    opened = []

    class Counting(lerobot_mod._VideoFile):
        def __init__(self, path, size):
            opened.append(str(path))
            super().__init__(path, size)
    real, lerobot_mod._VideoFile = lerobot_mod._VideoFile, Counting
    try:
        assert list(read_lerobot(root, TopicMap(image_size=16, fps=10), report)) == []
    finally:
        lerobot_mod._VideoFile = real
    assert len(report.skipped) == 2 and 'unreadable video' in report.skipped[0]['reason']
    assert sum('images.front' in p for p in opened) == 1     # the shared broken file: decoded once
    assert report.skipped[1]['reason'] == report.skipped[0]['reason']
    info = json.loads((root / 'meta' / 'info.json').read_text())
    info['codebase_version'] = 'v2.1'
    (root / 'meta' / 'info.json').write_text(json.dumps(info))
    assert list(read_lerobot(root, TopicMap(), report)) == []
    assert 'v2.1' in report.skipped[-1]['reason']


def test_read_hand_made_dataset_with_image_features_and_several_files(tmp_path):
    """Hub datasets vary: png image features, variable-length list columns, tasks.jsonl, several files."""
    import io

    import pyarrow as pa
    from PIL import Image
    root = tmp_path / 'hub'
    (root / 'meta' / 'episodes' / 'chunk-000').mkdir(parents=True)
    (root / 'data' / 'chunk-000').mkdir(parents=True)

    def png(level):
        buf = io.BytesIO()
        Image.fromarray(np.full((8, 8, 3), level, np.uint8)).save(buf, format='PNG')
        return {'bytes': buf.getvalue(), 'path': None}

    states = {0: np.arange(12, dtype=np.float32).reshape(4, 3), 1: -np.arange(9, dtype=np.float32).reshape(3, 3)}
    for e, n in ((0, 4), (1, 3)):
        pq.write_table(pa.table({
            'observation.image': [png(10 * e + i) for i in range(n)],
            'observation.state': pa.array([list(r) for r in states[e]], pa.list_(pa.float32())),
            'timestamp': pa.array(np.arange(n) / 5.0, pa.float32()),
            'frame_index': np.arange(n), 'episode_index': np.full(n, e), 'task_index': np.full(n, 1 - e),
        }), root / 'data' / 'chunk-000' / f'file-00{e}.parquet')
    pq.write_table(pa.Table.from_pylist([{'episode_index': 0, 'length': 4}, {'episode_index': 1, 'length': 3}]),
                   root / 'meta' / 'episodes' / 'chunk-000' / 'file-000.parquet')
    (root / 'meta' / 'tasks.jsonl').write_text('{"task_index": 0, "task": "b"}\n{"task_index": 1, "task": "a"}\n')
    (root / 'meta' / 'info.json').write_text(json.dumps({
        'codebase_version': 'v3.0', 'fps': 5,
        'features': {'observation.image': {'dtype': 'image', 'shape': [8, 8, 3]},
                     'observation.state': {'dtype': 'float32', 'shape': [3], 'names': {'motors': ['x', 'y', 'z']}}}}))
    report = Report(quiet=True)
    eps = list(read_lerobot(root, TopicMap(image_size=8, fps=5, action={'source': 'none', 'topic': None}), report))
    assert not report.skipped and [e.task for e in eps] == ['a', 'b']
    assert list(eps[0].frames) == ['observation.image']
    assert eps[1].frames['observation.image'][:, 0, 0, 0].tolist() == [10, 11, 12]
    assert np.array_equal(eps[1].state, states[1]) and eps[0].state_names == ['x', 'y', 'z']


# What LeRobot 0.4's training and dataset tools read from an export (lerobot-train failed on the
# export without image stats; its quantile normalisation needs q01/q99; lerobot-edit-dataset
# rebuilds meta/stats.json from the episodes' stats/* columns).

def _per_channel(frames):
    return frames.reshape(-1, 3).astype(np.float64) / 255.0


def test_stats_json_has_image_features_per_channel_in_unit_range(tmp_path):
    src = _episodes(2)
    root = write_lerobot(src, tmp_path / 'ds', fps=10)
    stats = json.loads((root / 'meta' / 'stats.json').read_text())
    for cam in ('front', 'wrist'):
        s = stats[f'observation.images.{cam}']
        assert set(s) >= {'mean', 'std', 'min', 'max', 'count', 'q01', 'q99'}
        assert np.asarray(s['mean']).shape == (3, 1, 1) and np.asarray(s['q99']).shape == (3, 1, 1)
        pixels = np.concatenate([_per_channel(e.frames[cam]) for e in src])
        np.testing.assert_allclose(np.asarray(s['mean']).reshape(3), pixels.mean(0), rtol=1e-6)
        np.testing.assert_allclose(np.asarray(s['std']).reshape(3), pixels.std(0), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(np.asarray(s['max']).reshape(3), pixels.max(0))
        assert s['count'] == [sum(e.length for e in src)]


def test_stats_json_has_quantiles(tmp_path):
    src = _episodes(3)
    root = write_lerobot(src, tmp_path / 'ds', fps=10)
    stats = json.loads((root / 'meta' / 'stats.json').read_text())
    all_action = np.concatenate([e.action for e in src]).astype(np.float64)
    for key, q in (('q01', 0.01), ('q10', 0.10), ('q50', 0.50), ('q90', 0.90), ('q99', 0.99)):
        np.testing.assert_allclose(stats['action'][key], np.quantile(all_action, q, axis=0), rtol=1e-6)
        assert len(stats['observation.state'][key]) == 5 and len(stats['frame_index'][key]) == 1


def test_episodes_parquet_has_per_episode_stats_columns(tmp_path):
    src = _episodes(2)
    root = write_lerobot(src, tmp_path / 'ds', fps=10)
    rows = pq.read_table(root / 'meta' / 'episodes' / 'chunk-000' / 'file-000.parquet').to_pylist()
    for ep, row in zip(src, rows, strict=True):
        np.testing.assert_allclose(row['stats/action/mean'], ep.action.astype(np.float64).mean(0), rtol=1e-6)
        np.testing.assert_allclose(row['stats/observation.state/q99'],
                                   np.quantile(ep.state.astype(np.float64), 0.99, axis=0), rtol=1e-6)
        assert row['stats/action/count'] == [ep.length] and row['stats/frame_index/max'] == [ep.length - 1]
        wrist = np.asarray(row['stats/observation.images.wrist/mean'])
        assert wrist.shape == (3, 1, 1)
        np.testing.assert_allclose(wrist.reshape(3), _per_channel(ep.frames['wrist']).mean(0), rtol=1e-6)


def test_info_fps_is_an_int_when_integral(tmp_path):
    info = json.loads((write_lerobot(_episodes(1), tmp_path / 'a', fps=10.0) / 'meta' / 'info.json').read_text())
    assert info['fps'] == 10 and isinstance(info['fps'], int)
    assert isinstance(info['features']['observation.images.front']['info']['video.fps'], int)
    info = json.loads((write_lerobot(_episodes(1), tmp_path / 'b', fps=12.5) / 'meta' / 'info.json').read_text())
    assert info['fps'] == 12.5


def test_build_cache_keeps_the_datasets_own_fps_unless_told(tmp_path, capsys):
    from defi_training.cache import EpisodeCache
    from defi_training.data_cli import main
    root = write_lerobot(_episodes(2), tmp_path / 'ds', fps=30)
    assert main(['build-cache', str(root), '--out', str(tmp_path / 'own'), 'image_size=16']) == 0
    out = capsys.readouterr().out
    assert f'defi-data build-cache: 30 fps, the rate of {root} (meta/info.json); set fps=N to resample' in out
    own = EpisodeCache(tmp_path / 'own')
    assert own.fps == 30 and [own.episode_length(e) for e in range(2)] == [8, 11]   # every frame kept
    assert main(['build-cache', str(root), '--out', str(tmp_path / 'ten'), 'image_size=16', 'fps=10']) == 0
    assert "defi-data build-cache: 10 fps (the data config's fps)" in capsys.readouterr().out
    ten = EpisodeCache(tmp_path / 'ten')
    assert ten.fps == 10 and [ten.episode_length(e) for e in range(2)] == [3, 4]


def test_lerobot_inputs_with_different_fps_need_an_explicit_rate(tmp_path, capsys):
    from defi_training.data_cli import main
    a = write_lerobot(_episodes(1), tmp_path / 'a', fps=30)
    b = write_lerobot(_episodes(1), tmp_path / 'b', fps=15)
    assert main(['build-cache', str(a), str(b), '--out', str(tmp_path / 'c')]) == 2
    err = capsys.readouterr().err
    assert 'different fps' in err and 'set fps=N' in err and not (tmp_path / 'c').exists()
