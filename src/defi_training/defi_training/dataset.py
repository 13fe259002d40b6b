"""ClipDataset: training samples (current frame, future frames, gap frame, actions) from the cache."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .cache import EpisodeCache

__all__ = ['ClipDataset', 'split_episodes']


def split_episodes(cache: EpisodeCache, val_fraction: float = 0.1, seed: int = 0,
                   ) -> tuple[list[int], list[int]]:
    """(train, val) episode indices; val gets at least one episode when there are two or more."""
    n = cache.num_episodes
    order = np.random.default_rng(seed).permutation(n).tolist()
    n_val = int(round(n * val_fraction))
    if val_fraction > 0 and n >= 2:
        n_val = max(1, n_val)
    n_val = min(n_val, n - 1) if n > 1 else 0
    return sorted(order[n_val:]), sorted(order[:n_val])


class ClipDataset(Dataset):
    """One sample per (episode, frame t) of the chosen episodes.

    future.images: frames t+s, ..., t+T*s (clamped to the last frame); gap.images: frame t+k
    (clamped); action: rows t..t+H-1, past the end padded by repeating the last row, with
    action_is_pad marking the padded rows.
    """

    def __init__(self, cache: EpisodeCache | str, num_future_frames: int = 4, future_stride: int = 1,
                 frame_gap: int = 4, horizon: int = 1, require_actions: bool = False,
                 cameras: Sequence[str] | None = None, episodes: Sequence[int] | None = None):
        self.cache = cache if isinstance(cache, EpisodeCache) else EpisodeCache(cache)
        if num_future_frames < 0 or future_stride < 1 or frame_gap < 0 or horizon < 1:
            raise ValueError(f'ClipDataset: need num_future_frames >= 0, future_stride >= 1, frame_gap >= 0, '
                             f'horizon >= 1 (got {num_future_frames}, {future_stride}, {frame_gap}, {horizon})')
        if require_actions and not self.cache.has_actions:
            raise ValueError(f'{self.cache.path}: this stage needs actions, but the cache is action-free '
                             '(build it from data with an action topic)')
        self.cameras = list(cameras) if cameras is not None else self.cache.cameras
        missing = [c for c in self.cameras if c not in self.cache.cameras]
        if missing:
            raise ValueError(f'{self.cache.path}: camera(s) {missing} not in the cache (has {self.cache.cameras})')
        self.T, self.s, self.k, self.H = int(num_future_frames), int(future_stride), int(frame_gap), int(horizon)
        self.episodes = list(range(self.cache.num_episodes)) if episodes is None else [int(e) for e in episodes]
        lengths = np.array([self.cache.episode_length(e) for e in self.episodes], dtype=np.int64)
        self._ep = np.repeat(np.arange(len(self.episodes)), lengths)
        self._t = np.concatenate([np.arange(n) for n in lengths]) if len(lengths) else np.zeros(0, np.int64)
        self.with_actions = self.cache.has_actions

    def __len__(self) -> int:
        return int(self._t.shape[0])

    def _images(self, e: int, rows: np.ndarray) -> np.ndarray:
        # [len(rows), V, 3, H, W]
        per_cam = [np.asarray(self.cache.frames(e, c)[rows]) for c in self.cameras]
        return np.ascontiguousarray(np.stack(per_cam, axis=1).transpose(0, 1, 4, 2, 3))

    def __getitem__(self, i: int) -> dict:
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        e = self.episodes[int(self._ep[i])]
        t = int(self._t[i])
        n = self.cache.episode_length(e)
        last = n - 1
        fut = np.minimum(t + self.s * np.arange(1, self.T + 1), last)
        gap = min(t + self.k, last)
        rows = np.concatenate([[t, gap], fut]).astype(np.int64)
        imgs = self._images(e, rows)
        out = {
            'observation.images': torch.from_numpy(imgs[0]),
            'gap.images': torch.from_numpy(imgs[1]),
            'future.images': torch.from_numpy(imgs[2:]),
            'task': self.cache.task(e),
            'episode_index': e,
            'frame_index': t,
        }
        if self.cache.has_state:
            out['observation.state'] = torch.from_numpy(np.array(self.cache.array(e, 'observation.state')[t],
                                                                 dtype=np.float32))
        if self.with_actions:
            act = self.cache.array(e, 'action')
            idx = t + np.arange(self.H)
            out['action'] = torch.from_numpy(np.array(act[np.minimum(idx, last)], dtype=np.float32))
            out['action_is_pad'] = torch.from_numpy(idx > last)
        return out
