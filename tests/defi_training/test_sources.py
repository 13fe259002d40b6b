"""Data config (topic map) loading and source discovery over mixed inputs."""
from pathlib import Path

import numpy as np
import pytest

from defi_training.sources import Report, detect_kind, expand_inputs, iter_episodes
from defi_training.sources.rosbag import defi_msgs_dir, make_typestore
from defi_training.sources.video import write_video
from defi_training.synthetic import write_synthetic_bag
from defi_training.topic_map import TopicMap, load_topic_map


def test_shipped_configs_load_and_overrides_apply(tmp_path):
    tm = load_topic_map('config/data_metaworld.yaml', ['fps=5', 'action.topic=/cmd', 'image_size=null'])
    assert tm.fps == 5 and tm.action.topic == 'cmd' and tm.image_size is None
    assert tm.cameras == {'front': 'camera/front/image_raw'} and tm.success_topic == 'sim/success'
    assert not load_topic_map('config/data_video.yaml').has_actions
    assert load_topic_map('config/data_robot.yaml').episode.split == 'topic'
    p = tmp_path / 'x.yaml'
    tm.save(p)
    assert load_topic_map(p) == tm
    assert load_topic_map(None, ['cameras.wrist=camera/wrist/image_raw']).cameras == {
        'front': 'camera/front/image_raw', 'wrist': 'camera/wrist/image_raw'}


@pytest.mark.parametrize('overrides, message', [
    (['fps=0'], 'fps'), (['gap_policy=skip'], 'gap_policy'), (['bogus=1'], 'bogus'),
    (['action.source=magic'], 'action.source'), (['episode.split=topic'], 'episode.topic'),
    (['state.fields=[torque]'], 'state.fields'), (['noequals'], 'key=value'),
])
def test_bad_config_names_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_topic_map('config/data_metaworld.yaml', overrides)


def test_missing_config_file():
    with pytest.raises(ValueError, match='data config nope.yaml: not found'):
        load_topic_map('nope.yaml')


def test_defi_msgs_types_registered():
    assert defi_msgs_dir() is not None and (defi_msgs_dir() / 'ActionChunk.msg').is_file()
    store = make_typestore('humble')
    assert 'defi_msgs/msg/ActionChunk' in store.types and 'defi_msgs/msg/ForwardFeatures' in store.types


def test_discovery_and_mixed_sources(tmp_path):
    write_synthetic_bag(tmp_path / 'data' / 'bags' / 'b1', duration_s=1.0, image_size=16)
    (tmp_path / 'data' / 'clips').mkdir(parents=True)
    write_video(tmp_path / 'data' / 'clips' / 'c.mp4', np.zeros((6, 16, 16, 3), np.uint8), fps=10)
    (tmp_path / 'data' / 'notes.txt').write_text('ignored')
    assert detect_kind(tmp_path / 'data' / 'bags' / 'b1') == 'rosbag'
    assert detect_kind(tmp_path / 'data' / 'clips' / 'c.mp4') == 'video'
    assert detect_kind(tmp_path / 'data') == 'folder'
    report = Report(quiet=True)
    found = expand_inputs([tmp_path / 'data', tmp_path / 'missing', tmp_path / 'data' / 'notes.txt'], report)
    assert [k for k, _ in found] == ['rosbag', 'video']       # files inside the bag folder are not separate inputs
    assert len(report.skipped) == 2
    tm = TopicMap(image_size=16, action={'source': 'none', 'topic': None}, state={'topic': None})
    eps = list(iter_episodes([tmp_path / 'data'], tm, Report(quiet=True)))
    assert len(eps) == 2 and all(e.action is None for e in eps)
    assert {e.frames['front'].shape[1:] for e in eps} == {(16, 16, 3)}


def test_loose_bag_files_in_a_folder_are_read_and_named(tmp_path, capsys):
    # storage files copied out of their bag folders (no metadata.yaml), as outside data often comes
    loose = tmp_path / 'loose'
    loose.mkdir()
    for name, storage in (('a', 'mcap'), ('b', 'sqlite3')):
        bag = write_synthetic_bag(tmp_path / name, storage=storage, duration_s=1.0, image_size=16, seed=len(name))
        (storage_file,) = [f for f in Path(bag.path).iterdir() if f.suffix in ('.mcap', '.db3')]
        storage_file.rename(loose / f'{name}{storage_file.suffix}')
    (loose / 'c.mcap.zstd').write_bytes(b'\x28\xb5\x2f\xfd')
    report = Report()
    eps = list(iter_episodes([loose], TopicMap(image_size=16), report))
    err = capsys.readouterr().err
    assert sorted(Path(e.source).name for e in eps) == ['a.mcap', 'b.db3']
    assert f'WARNING {loose}: 2 .mcap/.db3 file(s) without a metadata.yaml: each is read as a bag of its own' in err
    assert f'SKIPPED {loose / "c.mcap.zstd"}: a zstd-compressed bag file' in err
    report = Report(quiet=True)
    expand_inputs([loose / 'c.mcap.zstd'], report)
    assert report.skipped[0]['reason'].startswith('a zstd-compressed bag file')
