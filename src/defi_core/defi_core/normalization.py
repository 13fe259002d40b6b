"""Input/output normalization with statistics that travel in the checkpoint.

stats: {feature: {'mean', 'std', 'min', 'max'}} (numpy or torch, 1-D per feature). Actions use
min/max -> [-1, 1] (the action head's EDM sigma_data=0.5 assumes that range); state uses mean/std.
"""
from __future__ import annotations

import numpy as np
import torch

STAT_KEYS = ('mean', 'std', 'min', 'max')
DEFAULT_MODES = {'action': 'min_max', 'observation.state': 'mean_std'}
EPS = 1e-6


class Normalizer:
    def __init__(self, stats: dict, modes: dict | None = None):
        if not isinstance(stats, dict) or not stats:
            raise ValueError('normalization stats must be a non-empty dict {feature: {mean, std, min, max}}')
        self.modes = dict(DEFAULT_MODES if modes is None else modes)
        self.stats: dict[str, dict[str, torch.Tensor]] = {}
        for feat, s in stats.items():
            missing = [k for k in STAT_KEYS if k not in s]
            if missing:
                raise ValueError(f'normalization stats for {feat!r} miss {missing}')
            self.stats[feat] = {k: torch.as_tensor(np.asarray(s[k], dtype=np.float32)).flatten()
                                for k in STAT_KEYS}
            dims = {k: v.numel() for k, v in self.stats[feat].items()}
            if len(set(dims.values())) != 1:
                raise ValueError(f'normalization stats for {feat!r} have inconsistent sizes {dims}')

    def has(self, feature: str) -> bool:
        return feature in self.stats

    def dim(self, feature: str) -> int:
        return self.stats[feature]['mean'].numel()

    def _get(self, feature, x):
        if feature not in self.stats:
            raise KeyError(f'no normalization statistics for {feature!r} (have {sorted(self.stats)})')
        s = {k: v.to(x.device, x.dtype) for k, v in self.stats[feature].items()}
        if x.shape[-1] != s['mean'].numel():
            raise ValueError(f'{feature!r} has last dim {x.shape[-1]} but its statistics have {s["mean"].numel()}')
        return s, self.modes.get(feature, 'mean_std')

    def normalize(self, feature: str, x: torch.Tensor) -> torch.Tensor:
        s, mode = self._get(feature, x)
        if mode == 'min_max':
            return (x - s['min']) / (s['max'] - s['min']).clamp(min=EPS) * 2 - 1
        return (x - s['mean']) / s['std'].clamp(min=EPS)

    def unnormalize(self, feature: str, x: torch.Tensor) -> torch.Tensor:
        s, mode = self._get(feature, x)
        if mode == 'min_max':
            return (x + 1) / 2 * (s['max'] - s['min']).clamp(min=EPS) + s['min']
        return x * s['std'].clamp(min=EPS) + s['mean']

    # -- flat tensor dict for safetensors ----------------------------------------------------------
    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {f'{feat}/{k}': v.contiguous() for feat, s in self.stats.items() for k, v in s.items()}

    @classmethod
    def from_tensors(cls, tensors: dict, modes: dict | None = None, source: str = 'stats') -> 'Normalizer':
        stats: dict[str, dict] = {}
        for key, v in tensors.items():
            if '/' not in key:
                raise ValueError(f'{source}: bad statistics key {key!r} (expected "<feature>/<stat>")')
            feat, k = key.rsplit('/', 1)
            stats.setdefault(feat, {})[k] = v.numpy() if torch.is_tensor(v) else v
        try:
            return cls(stats, modes)
        except ValueError as err:
            raise ValueError(f'{source}: {err}') from None

    def to_json(self) -> dict:
        return {'modes': self.modes,
                'stats': {f: {k: v.tolist() for k, v in s.items()} for f, s in self.stats.items()}}
