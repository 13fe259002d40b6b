"""Model setup per training stage: the DefiConfig (preset + model.* overrides + the cache's shapes
and data facts, and the GFDM stage export's sampler settings for finetuning), the policy with the
cache's normalization stats, the stage exports' weights, which parameters train, the stage's loss
as a module (for DDP), and the autocast choice."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from defi_training.train_config import ConfigError, TrainConfig

__all__ = ['build_model_config', 'GFDM_STAGE_FIELDS', 'gfdm_stage_settings', 'cache_stats', 'build_policy',
           'load_stage_weights', 'select_trainable', 'set_train_mode', 'StageObjective', 'use_bf16_autocast']


def build_model_config(cfg: TrainConfig, cache):
    """defi_core DefiConfig = preset + model.* overrides + shapes and data facts (fps, action and
    state names) taken from the cache. Returns (DefiConfig, the model section as resolved, for
    run_dir/config.yaml)."""
    from defi_core.config import preset
    overrides = dict(cfg.model)            # keys already checked against DefiConfig by train_config.validate
    name = overrides.pop('preset', 'tiny')
    size = cache.meta['image_size']
    if isinstance(size, (list, tuple)):
        raise ValueError(f'episode cache {cfg.data.cache}: images are {size[0]}x{size[1]}; the model needs square '
                         f'images (rebuild the cache with a square image size)')
    derived: dict[str, Any] = {'image_size': int(size), 'cameras': tuple(cache.cameras)}
    if cache.has_state and overrides.get('state_dim', None) != 0:
        derived['state_dim'] = int(cache.meta['state_dim'])
    if cfg.stage == 'finetune':
        if not cache.has_actions:
            raise ValueError(f'episode cache {cfg.data.cache} has no actions: finetune needs labelled data '
                             f'(gfdm and gidm train on action-free caches)')
        derived['action_dim'] = int(cache.meta['action_dim'])
    # the data's facts travel in the checkpoint (checkpoint_facts): the runtime's chunk dt and the
    # names of the action columns and of the joints forming the state
    derived['fps'] = float(cache.meta.get('fps') or 0.0)
    for key, dim in (('action_names', 'action_dim'), ('state_names', 'state_dim')):
        names = tuple(cache.meta.get(key) or ())
        if names and dim in derived and len(names) == derived[dim]:
            derived[key] = names
    for key, value in derived.items():
        if key in overrides:
            given = tuple(overrides[key]) if isinstance(value, tuple) else overrides[key]
            if key == 'cameras' and set(given) <= set(value) and given:
                derived['cameras'] = given           # a subset of the cache's cameras, in the given order
            elif given != value:
                raise ConfigError(f'config key model.{key}={overrides[key]!r} does not match the episode cache '
                                  f'{cfg.data.cache} ({key}={value!r})')
    overrides.update(derived)
    if cfg.stage == 'finetune':
        for key, value in gfdm_stage_settings(cfg, overrides).items():
            overrides.setdefault(key, value)
    try:
        listed = {k: list(v) for k, v in overrides.items() if isinstance(v, tuple)}   # YAML takes no tuple
        return preset(name, **overrides), {'preset': name, **overrides, **listed}
    except (ValueError, TypeError) as err:
        raise ConfigError(f'model config: {err}') from None


# DefiConfig fields only the GFDM reads that leave its other weights' shapes alone: how it was
# trained, how it samples, and its optional warp head. Finetuning takes them from the GFDM stage
# export unless its own model.* keys set them, so the export loads (strictly) and the policy's
# predicted frames use the sampler the stage was trained for. Shapes (gfdm_dim, ...) must still match.
GFDM_STAGE_FIELDS = ('gfdm_sampling_steps', 'gfdm_residual', 'sigma_data', 'sigma_min', 'sigma_max',
                     'gfdm_sigma_max_prob', 'gfdm_p_mean', 'gfdm_p_std', 'gfdm_sample_sigma_max',
                     'gfdm_warp_radius')


def gfdm_stage_settings(cfg: TrainConfig, overrides: dict) -> dict:
    """GFDM_STAGE_FIELDS of the finetune's GFDM stage export ({} when none is used or readable)."""
    if (not cfg.gfdm_checkpoint or overrides.get('backbone', 'gfdm') != 'gfdm'
            or overrides.get('gfdm_pretrained', True) is False
            or not (Path(cfg.gfdm_checkpoint) / 'config.json').is_file()):
        return {}
    from defi_core.checkpoint import read_meta
    saved = read_meta(cfg.gfdm_checkpoint).get('config', {})
    return {k: saved[k] for k in GFDM_STAGE_FIELDS if k in saved}


def cache_stats(cache) -> dict:
    """Normalization stats {feature: {mean, std, min, max}} as float32 tensors."""
    out = {}
    for feature, values in (cache.stats or {}).items():
        tensors = {k: torch.as_tensor(np.asarray(v, dtype=np.float32)) for k, v in values.items()}
        if all(t.numel() > 0 for t in tensors.values()):
            out[feature] = tensors
    return out


def build_policy(model_cfg, stats: dict):
    from defi_core.policy import DefiPolicy
    policy = DefiPolicy(model_cfg)
    if stats:
        policy.set_normalization(stats)
    return policy


def load_stage_weights(policy, cfg: TrainConfig, model_cfg, log) -> None:
    """Finetune: GFDM weights from the gfdm export, GIDM weights from the gidm export (per switch)."""
    wants = []
    if model_cfg.backbone == 'gfdm' and model_cfg.gfdm_pretrained:
        wants.append(('gfdm', cfg.gfdm_checkpoint, 'gfdm_pretrained'))
    if model_cfg.idm_type == 'gidm' and model_cfg.gidm_pretrained:
        wants.append(('gidm', cfg.gidm_checkpoint, 'gidm_pretrained'))
    for part, path, switch in (('gfdm', cfg.gfdm_checkpoint, 'gfdm_pretrained'),
                               ('gidm', cfg.gidm_checkpoint, 'gidm_pretrained')):
        if path and part not in [w[0] for w in wants]:
            log.warning(f'finetune: ignoring the {part} checkpoint {path} (model.{switch}=false or the '
                        f'model has no pretrained {part}: backbone={model_cfg.backbone}, '
                        f'idm_type={model_cfg.idm_type})')
    for part, path, switch in wants:
        if not path:
            raise ConfigError(f'finetune needs the {part} stage checkpoint: pass --{part} CKPT '
                              f'(or {part}_checkpoint=...), or set model.{switch}=false')
        from defi_core.checkpoint import load_state_into
        load_state_into(policy, path, part)
        log.info(f'finetune: {part} weights from {path}')


def select_trainable(policy, stage: str) -> list[nn.Parameter]:
    """Freeze what the stage does not train; return the parameters the optimizer updates."""
    if stage == 'finetune':
        policy.apply_trainable_flags()          # defi_core's switches: GFDM frozen unless train_gfdm, ...
    else:
        part = getattr(policy, stage, None)
        if part is None:
            raise ConfigError(f'stage {stage}: the model config has no {stage} module '
                              f'(backbone={policy.cfg.backbone!r}, idm_type={policy.cfg.idm_type!r})')
        policy.requires_grad_(False)
        part.requires_grad_(True)               # the whole module, incl. pretraining-only parts
    params = [p for p in policy.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f'stage {stage}: no trainable parameters')
    return params


def set_train_mode(model, policy, stage: str) -> None:
    """model.train(), but the pretrained stage's module really trains (DefiPolicy.train keeps a
    frozen GFDM in eval mode, which is right for finetuning only)."""
    model.train()
    if stage != 'finetune':
        getattr(policy, stage).train()


class StageObjective(nn.Module):
    """The stage's loss as forward(): DDP syncs gradients only through a wrapped module's forward."""

    def __init__(self, policy, stage: str):
        super().__init__()
        self.policy = policy
        self.stage = stage

    def forward(self, batch):
        if self.stage == 'gfdm':
            return self.policy.gfdm.loss(batch)
        if self.stage == 'gidm':
            return self.policy.gidm.loss(batch)
        return self.policy.compute_loss(batch)


def use_bf16_autocast(device: torch.device, amp: str) -> bool:
    """bf16 autocast on GPUs only ('auto' or 'bf16'); CPU training stays fp32 (and bit-reproducible)."""
    return device.type == 'cuda' and amp in ('auto', 'bf16')
