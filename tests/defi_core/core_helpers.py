"""Shared builders for the defi_core model tests (tiny presets, hash text encoder, fake batches)."""
import numpy as np
import torch

from defi_core.config import preset
from defi_core.policy import DefiPolicy

torch.set_num_threads(1)  # the 2 shared cores are busy; 1 thread contends least

TASKS = ['open the drawer', 'push the red block left', 'close the window', 'press the button']


def tiny_cfg(**kw):
    kw.setdefault('text_encoder', 'hash')
    return preset('tiny', **kw)


def make_stats(cfg):
    a = cfg.action_dim
    stats = {'action': {'mean': np.zeros(a, np.float32), 'std': np.ones(a, np.float32),
                        'min': -2 * np.ones(a, np.float32), 'max': 3 * np.ones(a, np.float32)}}
    if cfg.state_dim:
        s = cfg.state_dim
        stats['observation.state'] = {'mean': np.full(s, 0.5, np.float32), 'std': np.full(s, 2.0, np.float32),
                                      'min': -np.ones(s, np.float32), 'max': np.ones(s, np.float32)}
    return stats


def make_policy(cfg=None, seed=0, stats=True, **kw):
    cfg = cfg or tiny_cfg(**kw)
    torch.manual_seed(seed)
    policy = DefiPolicy(cfg)
    if stats:
        policy.set_normalization(make_stats(cfg))
    return policy


MOTIONS = [(0, 3), (0, -3), (3, 0), (-3, 0), (2, 2), (-2, 2), (0, 0), (2, -2)]


def make_batch(cfg, b=2, seed=0):
    """A batch shaped like the episode-cache contract (ClipDataset + default collate).

    Each sample is a coherent clip: smooth random colour blobs translating with a per-sample motion
    (pixels per frame), so future frames and the t+k frame follow from frame t and the "action".
    """
    g = torch.Generator().manual_seed(seed)
    v, s = cfg.num_views, cfg.image_size
    low = torch.rand(b * v, 3, 8, 8, generator=g)
    base = torch.nn.functional.interpolate(low, size=(s, s), mode='bilinear', align_corners=False)
    base = base.reshape(b, v, 3, s, s)

    def frame(i, t):
        dy, dx = MOTIONS[(i + seed) % len(MOTIONS)]
        return torch.roll(base[i], shifts=(dy * t, dx * t), dims=(-2, -1))

    def to_u8(x):
        return (x * 255).round().to(torch.uint8)

    ts = [cfg.future_stride * (j + 1) for j in range(cfg.num_future_frames)]
    batch = {'observation.images': to_u8(torch.stack([frame(i, 0) for i in range(b)])),
             'future.images': to_u8(torch.stack([torch.stack([frame(i, t) for t in ts]) for i in range(b)])),
             'gap.images': to_u8(torch.stack([frame(i, cfg.frame_gap) for i in range(b)])),
             'action': smooth_actions(cfg, b, g),
             'action_is_pad': torch.zeros(b, cfg.horizon, dtype=torch.bool),
             'task': [TASKS[i % len(TASKS)] for i in range(b)],
             'episode_index': torch.arange(b), 'frame_index': torch.zeros(b, dtype=torch.long)}
    batch['action_is_pad'][:, -2:] = True
    if cfg.state_dim:
        batch['observation.state'] = torch.randn(b, cfg.state_dim, generator=g)
    return batch


def smooth_actions(cfg, b, g):
    """Action chunks like a robot's: a per-sample start plus a per-sample constant velocity."""
    start = torch.rand(b, 1, cfg.action_dim, generator=g) * 3 - 1.5
    velocity = (torch.rand(b, 1, cfg.action_dim, generator=g) - 0.5) * 0.2
    return start + velocity * torch.arange(cfg.horizon, dtype=torch.float32)[None, :, None]


def obs_from_batch(cfg, batch):
    obs = {f'observation.images.{cam}': batch['observation.images'][:, i] for i, cam in enumerate(cfg.cameras)}
    obs['task'] = batch['task']
    if cfg.state_dim:
        obs['observation.state'] = batch['observation.state']
    return obs
