"""ClipDataset over a real cache: sample shapes, dtypes, clamping, action padding, collate."""
import pytest
import torch

from defi_training.cache import build_cache
from defi_training.dataset import ClipDataset, split_episodes
from defi_training.sources import Report
from defi_training.synthetic import write_synthetic_bag
from defi_training.topic_map import TopicMap

torch.set_num_threads(1)


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp('ds')
    write_synthetic_bag(root / 'bags' / 'a', duration_s=1.0, image_size=16, cameras=('front', 'wrist'))
    write_synthetic_bag(root / 'bags' / 'b', duration_s=0.6, image_size=16, cameras=('front', 'wrist'),
                        instructions=('second',))
    tm = TopicMap(image_size=16, cameras={'front': 'camera/front/image_raw', 'wrist': 'camera/wrist/image_raw'})
    return build_cache([root / 'bags'], root / 'cache', tm, report=Report(quiet=True))


def test_sample_shapes_and_dtypes(cache):
    ds = ClipDataset(cache, num_future_frames=3, future_stride=2, frame_gap=4, horizon=5, require_actions=True)
    assert len(ds) == 10 + 6
    s = ds[0]
    assert s['observation.images'].shape == (2, 3, 16, 16) and s['observation.images'].dtype == torch.uint8
    assert s['future.images'].shape == (3, 2, 3, 16, 16) and s['gap.images'].shape == (2, 3, 16, 16)
    assert s['observation.state'].shape == (4,) and s['observation.state'].dtype == torch.float32
    assert s['action'].shape == (5, 4) and s['action_is_pad'].dtype == torch.bool
    assert s['task'] == 'push the block' and s['episode_index'] == 0 and s['frame_index'] == 0
    # channel-first with the right content: red = frame index, green = camera marker
    assert s['observation.images'][0, 1, 0, 0] == 20 and s['observation.images'][1, 1, 0, 0] == 60
    assert s['future.images'][:, 0, 0, 0, 0].tolist() == [2, 4, 6] and s['gap.images'][0, 0, 0, 0] == 4


def test_clamping_at_episode_end_and_action_padding(cache):
    ds = ClipDataset(cache, num_future_frames=3, future_stride=2, frame_gap=4, horizon=5)
    s = ds[8]                                  # episode 0 (10 frames), t = 8
    assert s['frame_index'] == 8
    assert s['future.images'][:, 0, 0, 0, 0].tolist() == [9, 9, 9]
    assert s['gap.images'][0, 0, 0, 0] == 9
    assert s['action'][:, 0].tolist() == [8, 9, 9, 9, 9]
    assert s['action_is_pad'].tolist() == [False, False, True, True, True]
    last = ds[len(ds) - 1]                     # never reaches into the next episode
    assert last['episode_index'] == 1 and last['frame_index'] == 5
    assert last['future.images'][:, 0, 0, 0, 0].tolist() == [5, 5, 5] and last['task'] == 'second'
    assert ds[-1]['frame_index'] == 5
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_collate_camera_order_and_subsets(cache):
    ds = ClipDataset(cache, num_future_frames=2, frame_gap=1, horizon=2, cameras=['wrist', 'front'], episodes=[1])
    assert len(ds) == 6
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4, num_workers=0)))
    assert batch['observation.images'].shape == (4, 2, 3, 16, 16) and batch['observation.images'].dtype == torch.uint8
    assert batch['observation.images'][0, 0, 1, 0, 0] == 60       # wrist first
    assert batch['future.images'].shape == (4, 2, 2, 3, 16, 16)
    assert batch['task'] == ['second'] * 4 and batch['episode_index'].tolist() == [1] * 4
    assert batch['action'].shape == (4, 2, 4)
    ds0 = ClipDataset(cache, num_future_frames=0)
    assert ds0[0]['future.images'].shape == (0, 2, 3, 16, 16)


def test_errors_and_split(cache, tmp_path):
    with pytest.raises(ValueError, match='camera'):
        ClipDataset(cache, cameras=['nope'])
    with pytest.raises(ValueError, match='future_stride'):
        ClipDataset(cache, future_stride=0)
    write_synthetic_bag(tmp_path / 'b', duration_s=0.5, image_size=16, action=None)
    free = build_cache([tmp_path / 'b'], tmp_path / 'c',
                       TopicMap(image_size=16, action={'source': 'none', 'topic': None}), report=Report(quiet=True))
    with pytest.raises(ValueError, match='action-free'):
        ClipDataset(free, require_actions=True)
    assert 'action' not in ClipDataset(free)[0]
    train, val = split_episodes(cache, val_fraction=0.5, seed=0)
    assert sorted(train + val) == [0, 1] and len(val) == 1
    assert split_episodes(free, 0.1) == ([0], [])
