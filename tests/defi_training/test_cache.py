"""Episode cache: built from real bags and videos, read back with memory maps; atomic writes."""
import json
import os

import numpy as np
import pytest

from defi_training.cache import EpisodeCache, build_cache, write_cache
from defi_training.sources import Episode, Report
from defi_training.synthetic import write_synthetic_bag
from defi_training.topic_map import TopicMap


@pytest.fixture(scope='module')
def bags(tmp_path_factory):
    root = tmp_path_factory.mktemp('bags')
    write_synthetic_bag(root / 'a', storage='mcap', duration_s=2.0, image_size=32, instructions=('open',))
    write_synthetic_bag(root / 'b', storage='sqlite3', duration_s=1.5, image_size=32, instructions=('close',),
                        success=False)
    return root


def test_build_and_read(bags, tmp_path):
    tm = TopicMap(image_size=16, success_topic='sim/success')
    cache = build_cache([bags], tmp_path / 'cache', tm, report=Report(quiet=True))
    assert cache.num_episodes == 2 and cache.num_frames == 35
    assert [cache.episode_length(e) for e in range(2)] == [20, 15]
    assert [cache.task(e) for e in range(2)] == ['open', 'close']
    m = cache.meta
    assert m['fps'] == 10.0 and m['cameras'] == ['front'] and m['image_size'] == 16
    assert m['has_actions'] and m['has_state'] and m['state_dim'] == 4 and m['action_dim'] == 4
    assert m['action_names'] == ['a0', 'a1', 'a2', 'a3']
    assert m['episodes'][0]['clock']['camera/front/image_raw'] == 'header'
    assert [e['success'] for e in m['episodes']] == [True, False]
    assert m['topic_map']['fps'] == 10.0
    fr = cache.frames(0, 'front')
    assert isinstance(fr, np.memmap) and fr.shape == (20, 16, 16, 3) and fr.dtype == np.uint8
    assert fr[:, 0, 0, 0].tolist() == list(range(20))
    st = cache.array(1, 'observation.state')
    assert st.dtype == np.float32 and st.shape == (15, 4) and st[:, 0].tolist() == list(range(15))
    assert cache.timestamps(0)[-1] == pytest.approx(1.9)
    # stats over every frame of every episode
    allact = np.concatenate([cache.array(e, 'action') for e in range(2)]).astype(np.float64)
    np.testing.assert_allclose(cache.stats['action']['mean'], allact.mean(0), rtol=1e-5)
    np.testing.assert_allclose(cache.stats['action']['std'], allact.std(0), rtol=1e-4)
    np.testing.assert_array_equal(cache.stats['action']['min'], allact.min(0).astype(np.float32))
    assert cache.stats['observation.state']['max'].dtype == np.float32
    with pytest.raises(IndexError):
        cache.frames(2, 'front')
    with pytest.raises(KeyError, match='wrist'):
        cache.frames(0, 'wrist')


def test_atomic_overwrite_and_guard(bags, tmp_path):
    out = tmp_path / 'cache'
    build_cache([bags / 'a'], out, TopicMap(image_size=16), report=Report(quiet=True))
    with pytest.raises(FileExistsError, match='overwrite'):
        build_cache([bags / 'a'], out, TopicMap(image_size=16), report=Report(quiet=True))
    c = build_cache([bags], out, TopicMap(image_size=8), report=Report(quiet=True), overwrite=True)
    assert c.num_episodes == 2 and c.frames(0, 'front').shape[1] == 8
    assert sorted(os.listdir(tmp_path)) == ['cache']     # no temp or old folders left

    def crashing():
        yield _ep()
        raise RuntimeError('source crashed mid-way')
    with pytest.raises(RuntimeError, match='mid-way'):
        write_cache(crashing(), out, TopicMap(), overwrite=True)
    assert EpisodeCache(out).num_episodes == 2            # the old cache is untouched
    assert sorted(os.listdir(tmp_path)) == ['cache']


def _ep(n=5, sdim=3, adim=2, cams=('front',), size=8, task='t'):
    return Episode(source=f'mem:{task}', frames={c: np.zeros((n, size, size, 3), np.uint8) for c in cams},
                   timestamps=np.arange(n) / 10, task=task,
                   state=None if sdim is None else np.ones((n, sdim), np.float32),
                   action=None if adim is None else np.ones((n, adim), np.float32))


def test_mismatching_episodes_are_skipped(tmp_path):
    report = Report(quiet=True)
    eps = [_ep(), _ep(sdim=4, task='s4'), _ep(adim=None, task='noact'), _ep(cams=('wrist',), task='cam'),
           _ep(size=16, task='big'), _ep(task='ok2')]
    bad = _ep(task='nan')
    bad.action[2, 0] = np.nan
    eps.append(bad)
    c = write_cache(eps, tmp_path / 'c', TopicMap(), report=report)
    assert c.num_episodes == 2 and [c.task(e) for e in range(2)] == ['t', 'ok2']
    reasons = ' | '.join(s['reason'] for s in report.skipped)
    for word in ('observation.state has 4 dims', 'no action', 'cameras', 'image size', 'NaN'):
        assert word in reasons


def test_action_free_cache_from_first_episode(tmp_path):
    c = write_cache([_ep(sdim=None, adim=None), _ep(task='with actions')], tmp_path / 'c', TopicMap(),
                    report=Report(quiet=True))
    assert not c.has_actions and not c.has_state and c.num_episodes == 2 and c.stats == {}
    with pytest.raises(KeyError, match='action-free'):
        c.array(0, 'action')
    meta = json.loads((tmp_path / 'c' / 'meta.json').read_text())
    assert meta['action_dim'] == 0 and meta['action_names'] == []


def test_not_a_cache(tmp_path):
    with pytest.raises(FileNotFoundError, match='build-cache'):
        EpisodeCache(tmp_path)


def test_parallel_build_keeps_input_order_and_content(bags, tmp_path):
    tm = TopicMap(image_size=16)
    (tmp_path / 'broken').mkdir()
    (tmp_path / 'broken' / 'metadata.yaml').write_text('not: [valid')
    inputs = [bags / 'a', tmp_path / 'broken', bags / 'b']
    r1, r2 = Report(quiet=True), Report(quiet=True)
    one = build_cache(inputs, tmp_path / 'one', tm, report=r1)
    two = build_cache(inputs, tmp_path / 'two', tm, report=r2, workers=2)
    assert one.num_episodes == 2
    assert [e['source'] for e in one.meta['episodes']] == [e['source'] for e in two.meta['episodes']]
    for e in range(one.num_episodes):
        assert np.array_equal(one.frames(e, 'front'), two.frames(e, 'front'))
        assert np.array_equal(one.array(e, 'action'), two.array(e, 'action'))
    assert len(r1.skipped) == len(r2.skipped) == 1 and 'broken' in r2.skipped[0]['path']


def test_nan_actions_name_the_episode_frame_and_column(tmp_path, capsys):
    bad = _ep(task='nan')
    bad.action[3, 1] = np.inf
    bad.action_names = ['x', 'y', 'z', 'grip'][:bad.action.shape[1]]
    write_cache([_ep(), bad], tmp_path / 'c', TopicMap(), report=Report())
    err = capsys.readouterr().err
    assert f'SKIPPED {bad.source}: action: NaN or infinite value at frame 3 (t=0.30 s), column 1 (y)' in err, err


def test_a_cache_holding_nan_actions_is_refused_when_read(tmp_path):
    c = write_cache([_ep(), _ep(task='b')], tmp_path / 'c', TopicMap(), report=Report(quiet=True))
    path = c.path / 'episodes' / '000001' / 'action.npy'
    arr = np.load(path)
    arr[2, 0] = np.nan
    np.save(path, arr)                      # written by something other than build-cache
    c = EpisodeCache(c.path)
    assert np.isfinite(c.array(0, 'action')).all()
    with pytest.raises(ValueError, match=rf'^{path}: NaN or infinite value at frame 2, column 0 \(episode 1'):
        c.array(1, 'action')
