"""The three DeFI training stages, one loop parametrised by the stage.

    gfdm      action-free clips: the video diffusion model learns to predict future frames
              (loss = policy.gfdm.loss(batch); actions in the cache are ignored)
    gidm      action-free frame pairs t, t+k: the latent-action model learns to reconstruct frame t+k
              (loss = policy.gidm.loss(batch); actions ignored)
    finetune  labelled clips: the coupled policy loads both stage exports (GFDM frozen unless
              model.train_gfdm=true), normalization stats come from the cache, loss = policy.compute_loss

Read top to bottom: setup -> data -> model -> optimizer -> resume -> loop (log / validate / images /
checkpoint) -> final export. Exact resume rests on three things saved in every run checkpoint: the
weights + optimizer state, every RNG state (torch, cuda, numpy, python; per rank), and the data
position, which is a pure function of the step (see distributed.ResumableBatchSampler). Validation
and image sampling run under their own fixed seed and put the RNG states back afterwards, so they
never shift the training noise.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import fields, replace
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from defi_training.checkpointing import (capture_rng_state, latest_checkpoint, load_run_checkpoint,
                                         restore_rng_state, save_run_checkpoint)
from defi_training.distributed import (DistInfo, ResumableBatchSampler, all_reduce_sum, barrier,
                                       broadcast_str, cleanup_distributed, fixed_batches, gather_bytes,
                                       get_logger, init_distributed, seed_everything, seed_worker)
from defi_training.train_config import ConfigError, TrainConfig, save_train_config

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
    """defi_core DefiConfig = preset + model.* overrides + shapes taken from the cache.
    Returns (DefiConfig, the model section as resolved, for run_dir/config.yaml)."""
    from defi_core.config import DefiConfig, preset
    overrides = dict(cfg.model)
    name = overrides.pop('preset', 'tiny')
    known = {f.name for f in fields(DefiConfig)} - {'preset_name'}
    for key in overrides:
        if key not in known:
            raise ConfigError(f'unknown config key {"model." + key!r} (not a DefiConfig field)')
    size = cache.meta['image_size']
    if isinstance(size, (list, tuple)):
        raise ValueError(f'episode cache {cfg.data.cache}: images are {size[0]}x{size[1]}; the model needs square '
                         f'images (rebuild the cache with a square image size)')
    derived = {'image_size': int(size), 'cameras': tuple(cache.cameras)}
    if cache.has_state and overrides.get('state_dim', None) != 0:
        derived['state_dim'] = int(cache.meta['state_dim'])
    if cfg.stage == 'finetune':
        if not cache.has_actions:
            raise ValueError(f'episode cache {cfg.data.cache} has no actions: finetune needs labelled data '
                             f'(gfdm and gidm train on action-free caches)')
        derived['action_dim'] = int(cache.meta['action_dim'])
    for key, value in derived.items():
        if key in overrides:
            given = tuple(overrides[key]) if key == 'cameras' else overrides[key]
            if key == 'cameras' and set(given) <= set(value) and given:
                derived['cameras'] = given           # a subset of the cache's cameras, in the given order
            elif given != value:
                raise ConfigError(f'config key model.{key}={overrides[key]!r} does not match the episode cache '
                                  f'{cfg.data.cache} ({key}={value!r})')
    overrides.update(derived)
    try:
        return preset(name, **overrides), {'preset': name, **overrides, 'cameras': list(overrides['cameras'])}
    except (ValueError, TypeError) as err:
        raise ConfigError(f'model config: {err}') from None


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
                        f'model has no pretrained {part}: backbone={model_cfg.backbone}, idm_type={model_cfg.idm_type})')
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


def export_policy(policy, model_cfg, stage: str, stats: dict, path: Path, fps: float) -> None:
    """A defi_core checkpoint: the whole policy (finetune) or the stage's component (gfdm / gidm;
    load_component opens it, finetune loads it with load_state_into). The data rate travels with
    it: the runtime needs it for the chunk's dt (one action per frame of the training data)."""
    from defi_core.checkpoint import save_checkpoint
    extra = {'fps': float(fps)}
    if stage == 'finetune':
        save_checkpoint(path, policy, model_cfg, stats or None, extra=extra)
    else:
        save_checkpoint(path, policy, model_cfg, component=stage, extra=extra)


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
# schedule, RNG isolation, images


def use_bf16_autocast(device: torch.device, amp: str) -> bool:
    """bf16 autocast on GPUs only ('auto' or 'bf16'); CPU training stays fp32 (and bit-reproducible)."""
    return device.type == 'cuda' and amp in ('auto', 'bf16')


def lr_at(step: int, cfg: TrainConfig) -> float:
    o = cfg.optim
    if o.warmup_steps > 0 and step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    if o.schedule == 'constant':
        return o.lr
    span = max(1, cfg.steps - o.warmup_steps)
    progress = min(1.0, (step - o.warmup_steps) / span)
    if o.schedule == 'linear':
        factor = 1.0 - progress
    else:
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    return o.lr * (o.min_lr_ratio + (1.0 - o.min_lr_ratio) * factor)


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
def validate(model, loader, device, stage: str, use_amp: bool, info: DistInfo, seed: int) -> float | None:
    if loader is None:
        values = all_reduce_sum([0.0, 0.0], info)
        return values[0] / values[1] if values[1] else None
    model.eval()
    total, count = 0.0, 0.0
    with isolated_rng(seed):
        for batch in loader:
            batch = to_device(batch, device, stage)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss, _ = model(batch)
            n = len(batch['task']) if 'task' in batch else 1
            total += float(loss) * n
            count += n
    set_train_mode(model, model.module.policy if hasattr(model, 'module') else model.policy, stage)
    total, count = all_reduce_sum([total, count], info)
    return total / count if count else None


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


# ---------------------------------------------------------------------------------------------------
# the run


def default_run_dir(stage: str) -> str:
    return str(Path('runs') / f'{stage}-{datetime.now().strftime("%Y%m%d-%H%M%S")}')


def train(cfg: TrainConfig, resume: str | None = None) -> Path:
    """Run one stage; returns the final export directory (a defi_core checkpoint)."""
    info = init_distributed(cfg.device)
    try:
        return _train(cfg, info, resume)
    finally:
        cleanup_distributed()


def _train(cfg: TrainConfig, info: DistInfo, resume: str | None) -> Path:
    log = get_logger(info)
    device = info.device
    if device.type == 'cpu' and cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    use_amp = use_bf16_autocast(device, cfg.amp)

    # --- run directory and the resolved config ---------------------------------------------------
    run_dir = Path(broadcast_str(str(resume or cfg.out_dir or default_run_dir(cfg.stage)), info))
    cfg = replace(cfg, out_dir=str(run_dir))

    # --- data ---------------------------------------------------------------------------------------
    cache = open_cache(cfg.data.cache)
    model_cfg, resolved_model = build_model_config(cfg, cache)
    cfg = replace(cfg, model=resolved_model)
    train_ds, val_ds, split = make_datasets(cache, model_cfg, cfg)
    stats = cache_stats(cache) if cfg.stage == 'finetune' else {}
    log.info(f'defi-train {cfg.stage}: run {run_dir}, cache {cfg.data.cache} '
             f'({cache.num_episodes} episodes: {len(split["train_episodes"])} train / {len(split["val_episodes"])} val, '
             f'{len(train_ds)} train samples), device {device}, world size {info.world_size}, '
             f'amp {"bf16" if use_amp else "off"}')

    # --- model: identical initial weights on every rank; a resumed run takes the checkpoint's --------
    seed_everything(cfg.seed)
    policy = build_policy(model_cfg, stats)
    ckpt = latest_checkpoint(run_dir) if resume else None
    if resume and ckpt is None:
        log.warning(f'--resume {run_dir}: no checkpoint yet, starting from step 0')
    state = None
    if ckpt is not None:
        state = load_run_checkpoint(ckpt, info.rank)
        saved_world = state['trainer_state'].get('world_size', 1)
        if saved_world != info.world_size:
            raise ValueError(f'{ckpt} was written by {saved_world} process(es); resume with the same number '
                             f'(now {info.world_size}) so the data order and RNG streams continue exactly')
        load_run_weights(policy, ckpt, cfg.stage)
    elif cfg.stage == 'finetune':
        load_stage_weights(policy, cfg, model_cfg, log)
    trainable = select_trainable(policy, cfg.stage)
    policy.to(device)
    objective = StageObjective(policy, cfg.stage)
    model = objective
    if info.distributed:
        model = nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == 'cuda' else None,
            find_unused_parameters=cfg.find_unused_parameters)
    optimizer = torch.optim.AdamW(trainable, lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
                                  eps=cfg.optim.eps, weight_decay=cfg.optim.weight_decay)
    n_params = sum(p.numel() for p in trainable)
    log.info(f'model: preset {model_cfg.preset_name}, {n_params / 1e6:.2f}M trainable parameters')

    # --- resume: optimizer and RNG states; the data position follows from the step ------------------
    start_step = 0
    if state is not None:
        optimizer.load_state_dict(state['optimizer'])
        restore_rng_state(state['rng'])
        start_step = int(state['trainer_state']['step'])
        log.info(f'resumed from {ckpt} at step {start_step}')
    else:
        seed_everything(cfg.seed + 1_000_003 * info.rank)   # per-rank noise streams
    if start_step >= cfg.steps:
        log.info(f'nothing to do: step {start_step} >= steps={cfg.steps}')

    train_loader, sampler = make_train_loader(train_ds, cfg, info, start_step)
    if state is not None:
        # The data position is only meaningful for the same split and batch layout.
        saved = state['trainer_state']
        now = {'train_samples': len(train_ds), 'batch_size': cfg.batch_size, 'seed': cfg.seed,
               'steps_per_epoch': sampler.steps_per_epoch}
        before = {'train_samples': saved.get('train_samples'), 'batch_size': saved.get('batch_size'),
                  'seed': saved.get('seed'), 'steps_per_epoch': saved.get('sampler', {}).get('steps_per_epoch')}
        changed = {k: (before[k], now[k]) for k in now if before[k] is not None and before[k] != now[k]}
        if changed:
            raise ValueError(f'--resume {run_dir}: the data order cannot continue exactly, changed since {ckpt.name}: '
                             + ', '.join(f'{k} {a} -> {b}' for k, (a, b) in changed.items()))
    val_loader = make_val_loader(val_ds, cfg, info)
    if info.is_main:            # the resolved config, written once every check has passed
        run_dir.mkdir(parents=True, exist_ok=True)
        save_train_config(cfg, run_dir / 'config.yaml')
        (run_dir / 'split.json').write_text(json.dumps(split))
        from defi_core.config import save_config
        save_config(model_cfg, run_dir / 'model_config.json')
    writer = None
    if info.is_main:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(run_dir / 'tb'), purge_step=start_step if start_step else None)

    def save(step: int) -> Path:
        blobs = gather_bytes(capture_rng_state(), info)
        path = None
        if info.is_main:
            path = save_run_checkpoint(
                run_dir, step, export_policy=lambda p: export_policy(policy, model_cfg, cfg.stage, stats, p, cache.meta['fps']),
                optimizer=optimizer, rng_blobs=blobs, keep=cfg.keep_checkpoints,
                trainer_state={'stage': cfg.stage, 'sampler': sampler.position(step), 'seed': cfg.seed,
                               'train_samples': len(train_ds), 'batch_size': cfg.batch_size,
                               'lr': lr_at(min(step, cfg.steps - 1), cfg), 'schedule': cfg.optim.schedule,
                               'total_steps': cfg.steps})
        barrier(info)
        return path

    # --- the loop ----------------------------------------------------------------------------------
    from tqdm import tqdm
    set_train_mode(model, policy, cfg.stage)
    pbar = tqdm(total=cfg.steps, initial=start_step, disable=not (info.is_main and cfg.progress),
                desc=f'defi-train {cfg.stage}', dynamic_ncols=True)
    batches = iter(train_loader)
    window_start, window_steps = time.perf_counter(), 0
    metrics_file = open(run_dir / 'metrics.jsonl', 'a') if info.is_main else None
    throughput = None
    last_loss = float('nan')
    for step in range(start_step, cfg.steps):
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group['lr'] = lr
        batch = to_device(next(batches), device, cfg.stage)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss, parts = model(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f'step {step}: loss is {loss.item()} (parts {parts}); lower optim.lr or check the data')
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = None
        if cfg.optim.grad_clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, cfg.optim.grad_clip))
        optimizer.step()
        sync_non_gradient_state(policy, info)
        done = step + 1
        window_steps += 1
        last_loss = loss.item()
        pbar.update(1)

        if done % cfg.log_every == 0 or done == cfg.steps:
            loss_mean = all_reduce_sum([last_loss], info)[0] / info.world_size
            elapsed = time.perf_counter() - window_start
            throughput = window_steps * cfg.batch_size * info.world_size / max(elapsed, 1e-9)
            window_steps = 0
            pbar.set_postfix(loss=f'{loss_mean:.4f}', lr=f'{lr:.2e}', sps=f'{throughput:.1f}')
            if writer is not None:
                writer.add_scalar('train/loss', loss_mean, done)
                for name, value in (parts or {}).items():
                    writer.add_scalar(f'train/{name}', float(value), done)
                writer.add_scalar('train/lr', lr, done)
                writer.add_scalar('train/samples_per_s', throughput, done)
                if grad_norm is not None:
                    writer.add_scalar('train/grad_norm', grad_norm, done)
                metrics_file.write(json.dumps({'step': done, 'loss': loss_mean, 'lr': lr,
                                               'samples_per_s': throughput}) + '\n')
                metrics_file.flush()

        if done % cfg.eval_every == 0 or done == cfg.steps:
            val_loss = validate(model, val_loader, device, cfg.stage, use_amp, info, cfg.seed + 99)
            if val_loss is not None and writer is not None:
                writer.add_scalar('val/loss', val_loss, done)
                metrics_file.write(json.dumps({'step': done, 'val_loss': val_loss}) + '\n')
                metrics_file.flush()
                pbar.write(f'step {done}: val loss {val_loss:.4f}')

        if (cfg.image_every and done % cfg.image_every == 0 and writer is not None
                and cfg.stage in ('gfdm', 'gidm') and val_loader is not None):
            policy.eval()
            with isolated_rng(cfg.seed + 123):
                sample_batch = next(iter(val_loader))
                if cfg.stage == 'gfdm':
                    grid = gfdm_sample_image(policy, sample_batch, cfg.image_samples, cfg.sample_steps, device)
                    writer.add_image('samples/gfdm_real_top_predicted_bottom', grid, done)
                else:
                    grid = gidm_reconstruction_image(policy, sample_batch, cfg.image_samples, device)
                    writer.add_image('samples/gidm_frame_t_real_t+k_reconstructed_t+k', grid, done)
            set_train_mode(model, policy, cfg.stage)

        if done % cfg.ckpt_every == 0 or done == cfg.steps:
            path = save(done)
            if path is not None:
                pbar.write(f'step {done}: checkpoint {path}')
        if window_steps == 0:
            window_start = time.perf_counter()     # throughput counts training steps only
    pbar.close()
    if metrics_file is not None:
        metrics_file.close()
    if writer is not None:
        writer.close()

    # --- final export: what defi_core.load_policy and the next stage read -------------------------
    final_dir = run_dir / 'final'
    digests = [d.decode() for d in gather_bytes(weights_digest(policy).encode(), info)]
    if len(set(digests)) != 1:
        log.warning(f'DDP ranks ended with different weights: {digests}')
    if info.is_main:
        export_policy(policy, model_cfg, cfg.stage, stats, final_dir, cache.meta['fps'])
        (run_dir / 'summary.json').write_text(json.dumps({
            'stage': cfg.stage, 'steps': cfg.steps, 'final_loss': last_loss, 'samples_per_s': throughput,
            'world_size': info.world_size, 'rank_weight_sha256': digests, 'export': str(final_dir)}, indent=2))
        log.info(f'done: {cfg.stage} export {final_dir}')
    barrier(info)
    return final_dir
