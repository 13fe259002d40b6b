"""Training data setup: the episode cache, the train / validation ClipDatasets (split by episode),
their DataLoaders (the resumable, rank-aware batch order of distributed.py), batches to the device,
and the check that a resumed run can continue the same data order."""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader

from defi_training.distributed import DistInfo, ResumableBatchSampler, fixed_batches, seed_worker
from defi_training.train_config import ConfigError, TrainConfig

__all__ = ['ACTION_KEYS', 'open_cache', 'make_datasets', 'make_train_loader', 'make_val_loader', 'to_device',
           'check_data_order']

# Batch keys the action-free stages drop (they train on video only).
ACTION_KEYS = ('action', 'action_is_pad')


def open_cache(path: str):
    """The episode cache, or a clear error naming the path."""
    from defi_training.cache import EpisodeCache
    if not path:
        raise ConfigError("config key 'data.cache' is empty: point it at a cache built with `defi-data build-cache`")
    if not Path(path).exists():
        raise FileNotFoundError(f'episode cache not found: {path} (build one with `defi-data build-cache`)')
    cache = EpisodeCache(path)
    if cache.num_episodes == 0:
        raise ValueError(f'episode cache {path} holds no episodes (every source was skipped or empty; '
                         f'see the build-cache summary)')
    return cache


def make_datasets(cache, model_cfg, cfg: TrainConfig):
    """(train, val, split): ClipDatasets over disjoint episode sets (validation is split by episode)."""
    from defi_training.dataset import ClipDataset, split_episodes
    train_eps, val_eps = split_episodes(cache, cfg.data.val_fraction, cfg.seed)
    common = dict(num_future_frames=model_cfg.num_future_frames, future_stride=model_cfg.future_stride,
                  frame_gap=model_cfg.frame_gap, horizon=model_cfg.horizon,
                  require_actions=cfg.stage == 'finetune', cameras=list(model_cfg.cameras))
    train_ds = ClipDataset(cache, episodes=train_eps, **common)
    val_ds = ClipDataset(cache, episodes=val_eps, **common)
    if len(train_ds) == 0:
        raise ValueError(f'episode cache {cfg.data.cache}: no training samples after the validation split')
    return train_ds, val_ds, {'train_episodes': train_eps, 'val_episodes': val_eps}


def make_train_loader(ds, cfg: TrainConfig, info: DistInfo, start_step: int):
    sampler = ResumableBatchSampler(ds, cfg.batch_size, info.rank, info.world_size, cfg.seed, start_step)
    # A dedicated generator: creating the loader iterator must not draw from the global torch RNG.
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=cfg.data.num_workers,
                        pin_memory=cfg.data.pin_memory and info.device.type == 'cuda',
                        worker_init_fn=seed_worker,
                        generator=torch.Generator().manual_seed(cfg.seed * 1000 + info.rank))
    return loader, sampler


def make_val_loader(ds, cfg: TrainConfig, info: DistInfo):
    batches = fixed_batches(len(ds), cfg.batch_size, cfg.eval_batches, info.rank, info.world_size, cfg.seed)
    if not batches:
        return None
    return DataLoader(ds, batch_sampler=batches, num_workers=min(cfg.data.num_workers, 1),
                      persistent_workers=cfg.data.num_workers > 0, worker_init_fn=seed_worker,
                      generator=torch.Generator().manual_seed(cfg.seed + 7))


def to_device(batch: dict, device: torch.device, stage: str) -> dict:
    out = {}
    for key, value in batch.items():
        if stage != 'finetune' and key in ACTION_KEYS:
            continue                                   # action-free stages never see labels
        out[key] = value.to(device, non_blocking=True) if torch.is_tensor(value) else value
    return out


def check_data_order(trainer_state: dict, train_samples: int, cfg: TrainConfig, steps_per_epoch: int,
                     run_dir, ckpt) -> None:
    """A resumed run continues the data order only for the same split and batch layout."""
    now = {'train_samples': train_samples, 'batch_size': cfg.batch_size, 'seed': cfg.seed,
           'steps_per_epoch': steps_per_epoch}
    before = {'train_samples': trainer_state.get('train_samples'), 'batch_size': trainer_state.get('batch_size'),
              'seed': trainer_state.get('seed'),
              'steps_per_epoch': trainer_state.get('sampler', {}).get('steps_per_epoch')}
    changed = {k: (before[k], now[k]) for k in now if before[k] is not None and before[k] != now[k]}
    if changed:
        raise ValueError(f'--resume {run_dir}: the data order cannot continue exactly, changed since {ckpt.name}: '
                         + ', '.join(f'{k} {a} -> {b}' for k, (a, b) in changed.items()))
