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
never shift the training noise. The helpers live in modules named for what they do: data_loading.py
(cache, datasets, loaders), model_setup.py (model config, policy, stage weights, trainable parameters,
the stage's loss), export.py, checkpointing.py (run checkpoints, RNG states), distributed.py (DDP,
including the state outside autograd) and tensorboard_images.py.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import torch
from torch import nn

from defi_training.checkpointing import (
    capture_rng_state,
    isolated_rng,
    latest_checkpoint,
    load_run_checkpoint,
    load_run_weights,
    restore_rng_state,
    save_run_checkpoint,
)
from defi_training.data_loading import (
    check_data_order,
    make_datasets,
    make_train_loader,
    make_val_loader,
    open_cache,
    to_device,
)
from defi_training.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    broadcast_str,
    cleanup_distributed,
    gather_bytes,
    get_logger,
    init_distributed,
    seed_everything,
    sync_non_gradient_state,
    weights_digest,
)
from defi_training.export import export_policy
from defi_training.model_setup import (
    StageObjective,
    build_model_config,
    build_policy,
    cache_stats,
    load_stage_weights,
    select_trainable,
    set_train_mode,
    use_bf16_autocast,
)
from defi_training.tensorboard_images import log_sample_images
from defi_training.train_config import TrainConfig, save_train_config

__all__ = ['train', 'lr_at', 'validate', 'open_cache', 'use_bf16_autocast', 'default_run_dir']


# ---------------------------------------------------------------------------------------------------
# schedule, validation


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

# ---------------------------------------------------------------------------------------------------
# the run


def default_run_dir(stage: str) -> str:
    return str(Path('runs') / f'{stage}-{datetime.now().strftime("%Y%m%d-%H%M%S")}')


def train(cfg: TrainConfig, resume: str | None = None) -> Path:
    """Run one stage; returns the final export directory (a defi_core checkpoint)."""
    info = init_distributed(cfg.device)
    try:
        final = _train(cfg, info, resume)
        barrier(info)   # no rank tears gloo down while another still exports (aborts under load)
        return final
    finally:
        cleanup_distributed()


def _train(cfg: TrainConfig, info: DistInfo, resume: str | None) -> Path:
    log = get_logger(info)
    device = info.device
    if device.type == 'cpu':
        # 0: every CPU this process may use (affinity, container quota), shared by the ranks on
        # this machine; torch's own default counts the machine's cores and oversubscribes
        from defi_core.threads import set_torch_threads, usable_cpus
        local_ranks = int(os.environ.get('LOCAL_WORLD_SIZE', '1') or 1)
        set_torch_threads(cfg.threads, cpus=max(1, usable_cpus() // max(1, local_ranks)), reserve=0, cap=None)
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
             f'({cache.num_episodes} episodes: {len(split["train_episodes"])} train / '
             f'{len(split["val_episodes"])} val, '
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
    model: nn.Module = objective
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
        check_data_order(state['trainer_state'], len(train_ds), cfg, sampler.steps_per_epoch, run_dir, ckpt)
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

    def save(step: int) -> Path | None:
        """The checkpoint's path (on the main process; None on the others)."""
        blobs = gather_bytes(capture_rng_state(), info)
        path = None
        if info.is_main:
            path = save_run_checkpoint(
                run_dir, step, export_policy=lambda p: export_policy(policy, model_cfg, cfg.stage, stats, p),
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
        last_loss = loss.item()         # one host sync per step, shared by the check and the logging
        if not math.isfinite(last_loss):
            terms = ', '.join(f'{k} {float(v):.4g}' for k, v in (parts or {}).items())
            raise FloatingPointError(
                f'stage {cfg.stage}, step {step + 1}: loss is {last_loss}' + (f' ({terms})' if terms else '')
                + f'; lower optim.lr or check the data (checkpoints in {run_dir / "checkpoints"} stay '
                'usable with --resume)')
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = None
        if cfg.optim.grad_clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, cfg.optim.grad_clip))
        optimizer.step()
        sync_non_gradient_state(policy, info)
        done = step + 1
        window_steps += 1
        pbar.update(1)

        if done % cfg.log_every == 0 or done == cfg.steps:
            loss_mean = all_reduce_sum([last_loss], info)[0] / info.world_size
            elapsed = time.perf_counter() - window_start
            throughput = window_steps * cfg.batch_size * info.world_size / max(elapsed, 1e-9)
            window_steps = 0
            pbar.set_postfix(loss=f'{loss_mean:.4f}', lr=f'{lr:.2e}', sps=f'{throughput:.1f}')
            if writer is not None and metrics_file is not None:     # both on the main process only
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
            if val_loss is not None and writer is not None and metrics_file is not None:
                writer.add_scalar('val/loss', val_loss, done)
                metrics_file.write(json.dumps({'step': done, 'val_loss': val_loss}) + '\n')
                metrics_file.flush()
                pbar.write(f'step {done}: val loss {val_loss:.4f}')

        if (cfg.image_every and done % cfg.image_every == 0 and writer is not None
                and cfg.stage in ('gfdm', 'gidm') and val_loader is not None):
            log_sample_images(writer, policy, val_loader, cfg, done, device)
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
        export_policy(policy, model_cfg, cfg.stage, stats, final_dir)
        (run_dir / 'summary.json').write_text(json.dumps({
            'stage': cfg.stage, 'steps': cfg.steps, 'final_loss': last_loss, 'samples_per_s': throughput,
            'world_size': info.world_size, 'rank_weight_sha256': digests, 'export': str(final_dir)}, indent=2))
        log.info(f'done: {cfg.stage} export {final_dir}')
    barrier(info)
    return final_dir
