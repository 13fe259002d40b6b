"""Helpers of the training loop in train.py: data setup, model setup per stage, DDP state sync,
export, RNG isolation and the images logged to TensorBoard. train.py reads top to bottom; the
details live here."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from defi_training.checkpointing import capture_rng_state, restore_rng_state
from defi_training.distributed import DistInfo, ResumableBatchSampler, fixed_batches, seed_everything, seed_worker
from defi_training.train_config import ConfigError, TrainConfig

# Batch keys the action-free stages drop (they train on video only).
ACTION_KEYS = ('action', 'action_is_pad')


# ---------------------------------------------------------------------------------------------------
# data


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


# ---------------------------------------------------------------------------------------------------
# model


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


def export_policy(policy, model_cfg, stage: str, stats: dict, path: Path) -> None:
    """A defi_core checkpoint: the whole policy (finetune) or the stage's component (gfdm / gidm;
    load_component opens it, finetune loads it with load_state_into). The data's facts (fps for the
    chunk's dt, action and state names) travel in model_cfg (build_model_config)."""
    from defi_core.checkpoint import save_checkpoint
    if stage == 'finetune':
        save_checkpoint(path, policy, model_cfg, stats or None)
    else:
        save_checkpoint(path, policy, model_cfg, component=stage)


def load_run_weights(policy, ckpt_dir: Path, stage: str) -> None:
    """Exact weights of a run checkpoint back into the live policy (strict)."""
    if stage == 'finetune':
        from safetensors.torch import load_file
        policy.load_state_dict(load_file(str(Path(ckpt_dir) / 'model.safetensors')), strict=True)
    else:
        from defi_core.checkpoint import load_state_into
        load_state_into(policy, ckpt_dir, stage)


def sync_non_gradient_state(policy, info: DistInfo) -> None:
    """DDP keeps gradients in sync; GIDM's VQ also edits its codebook and usage EMA outside autograd
    (dead-code restarts from each rank's own batch), so rank 0's values are broadcast after each step."""
    if not info.distributed:
        return
    import torch.distributed as dist
    for module in policy.modules():
        if hasattr(module, 'non_gradient_state'):   # the VQ: codebook, usage, centre, init flag
            for t in module.non_gradient_state():
                dist.broadcast(t, src=0)


def weights_digest(policy) -> str:
    """sha256 over every parameter and buffer (to show all DDP ranks hold the same weights)."""
    import hashlib
    h = hashlib.sha256()
    for name, t in sorted(policy.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------
# autocast, RNG isolation, images


def use_bf16_autocast(device: torch.device, amp: str) -> bool:
    """bf16 autocast on GPUs only ('auto' or 'bf16'); CPU training stays fp32 (and bit-reproducible)."""
    return device.type == 'cuda' and amp in ('auto', 'bf16')


@contextlib.contextmanager
def isolated_rng(seed: int):
    """Run a block under a fixed seed and put every RNG state back afterwards."""
    saved = capture_rng_state()
    seed_everything(seed)
    try:
        yield
    finally:
        restore_rng_state(saved)


@torch.no_grad()
def gfdm_sample_image(policy, batch: dict, n: int, steps: int, device) -> torch.Tensor:
    """One image: per sample a row of real frames (t, t+s, ...) above the GFDM prediction, camera 0."""
    images = batch['observation.images'][:n].to(device)           # [n, V, 3, H, W] uint8
    future = batch['future.images'][:n].to(device)                # [n, T, V, 3, H, W] uint8
    lang = policy.encode_instruction(list(batch['task'][:n]))
    kwargs = {'steps': steps} if steps else {}
    pred = policy.gfdm.sample(images, lang.to(device), **kwargs)  # [n, T, (V,) 3, H, W] in [0, 1]
    if pred.dim() == 6:
        pred = pred[:, :, 0]
    now = images[:, 0].float() / 255.0
    real = future[:, :, 0].float() / 255.0
    rows = []
    for b in range(images.shape[0]):
        rows.append(torch.cat([now[b]] + list(real[b]), dim=-1))
        rows.append(torch.cat([now[b]] + list(pred[b].float().clamp(0, 1)), dim=-1))
    return torch.cat(rows, dim=-2).cpu()                         # [3, 2n*H, (T+1)*W]


@torch.no_grad()
def gidm_reconstruction_image(policy, batch: dict, n: int, device) -> torch.Tensor:
    """Per sample one row: frame t | real frame t+k | GIDM's pixel reconstruction of t+k (camera 0)."""
    from defi_core.models.blocks import unpatchify
    gidm, mcfg = policy.gidm, policy.cfg
    now = batch['observation.images'][:n].to(device)
    gap = batch['gap.images'][:n].to(device)
    tok0, tok1 = gidm.embed_frames(now), gidm.embed_frames(gap)
    _, actions, _ = gidm.encode_tokens(tok0, tok1, list(batch['task'][:n]))
    patches = gidm.pixel_head(gidm.decode(tok0, actions))        # [n, V*P, 3*p*p] in [-1, 1]
    b, size = patches.shape[0], mcfg.image_size
    patches = patches.reshape(b, mcfg.num_views, mcfg.patches_per_view, -1)
    recon = (unpatchify(patches, mcfg.patch_size, 3, size, size)[:, 0].clamp(-1, 1) + 1) / 2
    to01 = (lambda x: x[:, 0].float() / 255.0) if now.dtype == torch.uint8 else (lambda x: x[:, 0].float())
    rows = [torch.cat([to01(now)[i], to01(gap)[i], recon[i].float()], dim=-1) for i in range(b)]
    return torch.cat(rows, dim=-2).cpu()                         # [3, n*H, 3*W]


def log_sample_images(writer, policy, val_loader, cfg: TrainConfig, step: int, device) -> None:
    """Pretraining stages: a GFDM prediction grid or a GIDM reconstruction grid of one validation
    batch, under a fixed seed (the training RNG streams are left untouched)."""
    policy.eval()
    with isolated_rng(cfg.seed + 123):
        sample_batch = next(iter(val_loader))
        if cfg.stage == 'gfdm':
            grid = gfdm_sample_image(policy, sample_batch, cfg.image_samples, cfg.sample_steps, device)
            writer.add_image('samples/gfdm_real_top_predicted_bottom', grid, step)
        else:
            grid = gidm_reconstruction_image(policy, sample_batch, cfg.image_samples, device)
            writer.add_image('samples/gidm_frame_t_real_t+k_reconstructed_t+k', grid, step)


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
