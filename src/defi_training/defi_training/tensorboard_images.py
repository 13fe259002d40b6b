"""The images train.py logs to TensorBoard in the pretraining stages: a GFDM prediction grid (real
future frames above the predicted ones) or a GIDM reconstruction grid, of one validation batch under
a fixed seed."""
from __future__ import annotations

import torch

from defi_training.checkpointing import isolated_rng
from defi_training.train_config import TrainConfig

__all__ = ['gfdm_sample_image', 'gidm_reconstruction_image', 'log_sample_images']


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
