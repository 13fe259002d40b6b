"""GFDM's optional warp head (cfg.gfdm_warp_radius), its own sigma distribution and sampler start:
off by default (older configs and checkpoints are unchanged), and the warp really shifts pixels."""
import torch

from core_helpers import TASKS, tiny_cfg
from defi_core.config import DefiConfig
from defi_core.models.gfdm import GFDM


def test_new_gfdm_fields_default_to_the_old_model():
    cfg = tiny_cfg()
    assert (cfg.gfdm_warp_radius, cfg.gfdm_sample_sigma_max, cfg.gfdm_p_mean, cfg.gfdm_p_std) == (0, 0.0, None, None)
    assert not any(k.startswith('warp_proj') for k in GFDM(cfg).state_dict())
    old = {k: v for k, v in cfg.to_dict().items()
           if k not in ('gfdm_warp_radius', 'gfdm_sample_sigma_max', 'gfdm_p_mean', 'gfdm_p_std')}
    assert DefiConfig.from_dict(old) == cfg        # a config.json written before these fields


def test_warp_head_applies_the_chosen_pixel_shift():
    r = 2
    cfg = tiny_cfg(gfdm_warp_radius=r)
    torch.manual_seed(0)
    gfdm = GFDM(cfg).eval()
    images = torch.randint(0, 256, (2, 1, 3, 64, 64), dtype=torch.uint8)
    cond = gfdm._cond_images(images)
    h = torch.zeros(2, cfg.num_future_frames, cfg.tokens_per_frame, cfg.gfdm_dim)
    start = gfdm._warped(h, cond)                   # mostly "no shift" at initialisation
    assert start.abs().mean() < 0.25 * cond.abs().mean()
    with torch.no_grad():                           # all weight on dy=+1, dx=0: out(y, x) = frame(y+1, x)
        gfdm.warp_proj.bias.zero_()
        gfdm.warp_proj.bias[(r + 1) * (2 * r + 1) + r] = 50.0
    warped = gfdm._warped(h, cond) + cond[:, None]   # residual model: add the frame back
    assert torch.allclose(warped[:, :, :, :, :-1], cond[:, None, :, :, 1:].expand_as(warped[:, :, :, :, :-1]),
                          atol=1e-5)


def test_warp_gfdm_trains_and_samples():
    cfg = tiny_cfg(gfdm_warp_radius=1, sigma_data=0.1, gfdm_p_mean=-0.6, gfdm_p_std=1.4, gfdm_sampling_steps=1)
    torch.manual_seed(0)
    gfdm = GFDM(cfg)
    b = 3
    batch = {'observation.images': torch.randint(0, 256, (b, 1, 3, 64, 64), dtype=torch.uint8),
             'future.images': torch.randint(0, 256, (b, cfg.num_future_frames, 1, 3, 64, 64), dtype=torch.uint8),
             'task': TASKS[:b]}
    loss, _ = gfdm.loss(batch)
    loss.backward()
    assert gfdm.warp_proj.weight.grad.abs().sum() > 0
    frames = gfdm.sample(batch['observation.images'], TASKS[:b], generator=torch.Generator().manual_seed(0))
    assert frames.shape == (b, cfg.num_future_frames, 1, 3, 64, 64)
    assert 0 <= float(frames.min()) and float(frames.max()) <= 1
    assert len(list(gfdm.sample_steps(batch['observation.images'], TASKS[:b]))) == 1


def test_sample_sigma_max_sets_the_first_sampler_level():
    cfg = tiny_cfg(gfdm_sample_sigma_max=2.0)
    gfdm = GFDM(cfg).eval()
    seen = []
    real = gfdm.denoise
    gfdm.denoise = lambda x, s, c, lang: (seen.append(float(s[0])), real(x, s, c, lang))[1]
    gfdm.sample(torch.zeros(1, 1, 3, 64, 64, dtype=torch.uint8), TASKS[:1], steps=3)
    assert abs(seen[0] - 2.0) < 1e-5
