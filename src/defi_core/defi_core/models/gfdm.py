"""GFDM: language-conditioned video diffusion transformer (the forward dynamics model).

Given the current frame of every view and an instruction, it denoises T future frames. Tokens are
image patches; each block runs adaLN-modulated spatial attention (all patches of all views of one
frame), temporal attention (one patch position across the T frames) and an MLP. The conditioning
frame is concatenated channel-wise to every noisy frame (as in Stable Video Diffusion); the noise
level and the instruction enter through adaLN. EDM preconditioning and loss (Karras et al. 2022).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DefiConfig
from ..language import as_embedding, make_text_encoder
from .blocks import (
    MLP,
    Attention,
    Block,
    FourierEmbedding,
    edm_sample_steps,
    edm_scalings,
    fixed_noise,
    images_to_float,
    karras_sigmas,
    modulate,
    patchify,
    unpatchify,
)

FEATURE_NOISE_SEED = 20260416  # features() uses one fixed noise draw so its output is deterministic


class SpatioTemporalBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm_s = nn.LayerNorm(dim, elementwise_affine=False)
        self.attn_s = Attention(dim, heads)
        self.norm_t = nn.LayerNorm(dim, elementwise_affine=False)
        self.attn_t = Attention(dim, heads)
        self.norm_m = nn.LayerNorm(dim, elementwise_affine=False)
        self.mlp = MLP(dim)
        self.ada = nn.Linear(dim, 9 * dim)
        nn.init.zeros_(self.ada.weight)   # DiT's adaLN-zero: every block starts as the identity
        nn.init.zeros_(self.ada.bias)

    def forward(self, x, cond):
        # x [B, T, N, D]; cond [B, D]
        b, t, n, d = x.shape
        mods = self.ada(F.silu(cond))[:, None, None, :].chunk(9, dim=-1)
        h = modulate(self.norm_s(x), mods[0], mods[1]).reshape(b * t, n, d)
        x = x + mods[2] * self.attn_s(h).reshape(b, t, n, d)
        h = modulate(self.norm_t(x), mods[3], mods[4]).transpose(1, 2).reshape(b * n, t, d)
        x = x + mods[5] * self.attn_t(h).reshape(b, n, t, d).transpose(1, 2)
        return x + mods[8] * self.mlp(modulate(self.norm_m(x), mods[6], mods[7]))


class GFDM(nn.Module):
    def __init__(self, cfg: DefiConfig, text_encoder=None):
        super().__init__()
        self.cfg = cfg
        self.text_encoder = text_encoder or make_text_encoder(cfg.text_encoder, cfg.text_dim)
        d, p = cfg.gfdm_dim, cfg.patch_size
        self.in_proj = nn.Linear(2 * 3 * p * p, d)   # noisy patch ++ conditioning-frame patch
        self.pos_spatial = nn.Parameter(torch.randn(cfg.tokens_per_frame, d) * 0.02)
        self.pos_time = nn.Parameter(torch.randn(cfg.num_future_frames, d) * 0.02)
        self.sigma_emb = FourierEmbedding(d)
        self.text_proj = nn.Linear(cfg.text_dim, d)
        self.blocks = nn.ModuleList(SpatioTemporalBlock(d, cfg.gfdm_heads) for _ in range(cfg.gfdm_depth))
        self.final_norm = nn.LayerNorm(d, elementwise_affine=False)
        self.final_ada = nn.Linear(d, 2 * d)
        self.out_proj = nn.Linear(d, 3 * p * p)
        # Noise-level-dependent per-pixel gain on the noisy input, added to the output. A patch token
        # (gfdm_dim wide) cannot carry a patch's per-pixel noise (2*3*p*p values), so without this
        # path the c_skip term keeps the noise at low sigma and samples stay noisy; with it the
        # network can cancel the noise exactly (gain = -c_skip / (c_in * c_out) gives x0-prediction).
        self.skip_gain = nn.Linear(d, 3 * p * p)
        for m in (self.final_ada, self.out_proj, self.skip_gain):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)
        # Motion as a warp (cfg.gfdm_warp_radius > 0): a token cannot render a patch's edges moved
        # by a pixel or two through a gfdm_dim-wide bottleneck, but it can pick the shift; the
        # current frame supplies the pixels. Starts as "no shift".
        self.warp_proj = None
        if cfg.gfdm_warp_radius > 0:
            k = (2 * cfg.gfdm_warp_radius + 1) ** 2
            self.warp_proj = nn.Linear(d, k)
            nn.init.zeros_(self.warp_proj.weight)
            with torch.no_grad():
                self.warp_proj.bias.zero_()
                self.warp_proj.bias[k // 2] = 6.0   # 0.9 on "no shift"
        self._feature_noise: dict = {}     # (shape, device) -> the fixed noise draw of features()

    # -- helpers ---------------------------------------------------------------------------------
    def encode_text(self, tasks) -> torch.Tensor:
        return self.text_encoder.encode(tasks).to(self.pos_time.device)

    def _lang(self, lang):
        return as_embedding(self.text_encoder, lang, self.pos_time.device)

    def _cond_images(self, images):
        """[B, V, 3, H, W] (uint8 or [0,1] float) -> [-1, 1] float."""
        if images.dim() == 4:          # a single view given as [B, 3, H, W]
            images = images[:, None]
        if images.dim() != 5 or images.shape[1] != self.cfg.num_views:
            raise ValueError(f'images must be [B, V={self.cfg.num_views}, 3, H, W], got {tuple(images.shape)}')
        return images_to_float(images.to(self.pos_time.device), self.cfg.image_size)

    def _trunk(self, x_in, sigma, cond_img, lang, num_blocks):
        """Runs the first num_blocks blocks. x_in: c_in-scaled noisy frames [B, T, V, 3, H, W]."""
        cfg, p = self.cfg, self.cfg.patch_size
        b, t = x_in.shape[:2]
        xp = patchify(x_in, p).reshape(b, t, cfg.tokens_per_frame, -1)
        cp = patchify(cond_img, p).reshape(b, 1, cfg.tokens_per_frame, -1).expand(b, t, -1, -1)
        h = self.in_proj(torch.cat([xp, cp], dim=-1)) + self.pos_spatial + self.pos_time[:t, None]
        _, _, _, c_noise = edm_scalings(sigma, cfg.sigma_data)
        cond = self.sigma_emb(c_noise) + self.text_proj(lang)
        for blk in self.blocks[:num_blocks]:
            h = blk(h, cond)
        return h, cond

    def _warped(self, h, cond_img):
        """The current frame warped per token: a softmax over its (2r+1)^2 pixel shifts, weights
        from the token. [B, T, V, 3, H, W] in the diffused space (minus the frame when residual)."""
        cfg, p, r = self.cfg, self.cfg.patch_size, self.cfg.gfdm_warp_radius
        b, t = h.shape[:2]
        v, hw, side = cfg.num_views, cfg.image_size, 2 * cfg.gfdm_warp_radius + 1
        w = self.warp_proj(h).softmax(-1).reshape(b, t, v, cfg.patches_per_view, -1)   # [B, T, V, P, K]
        padded = F.pad(cond_img.flatten(0, 1), (r, r, r, r), mode='replicate').unflatten(0, (b, v))
        shifted = torch.stack([padded[..., dy:dy + hw, dx:dx + hw] for dy in range(side) for dx in range(side)], 2)
        shifted = patchify(shifted, p)                                                  # [B, V, K, P, 3*p*p]
        out = torch.einsum('btvpk,bvkpd->btvpd', w, shifted)
        out = unpatchify(out, p, 3, hw, hw)
        return out - cond_img[:, None] if cfg.gfdm_residual else out

    def denoise(self, x_noisy, sigma, cond_img, lang):
        """EDM denoiser D(x; sigma) = c_skip x + c_out F(c_in x, c_noise). x in [-1,1] pixel scale.
        With the warp (gfdm_warp_radius > 0) it denoises around the warped current frame m:
        D = m + c_skip (x - m) + c_out F."""
        cfg, p, s = self.cfg, self.cfg.patch_size, cfg_sigma(sigma, x_noisy)
        c_skip, c_out, c_in, _ = edm_scalings(s, cfg.sigma_data)
        bc = (-1,) + (1,) * (x_noisy.dim() - 1)
        x_scaled = x_noisy * c_in.view(bc)
        h, cond = self._trunk(x_scaled, s, cond_img, lang, len(self.blocks))
        shift, scale = self.final_ada(F.silu(cond))[:, None, None, :].chunk(2, dim=-1)
        h = modulate(self.final_norm(h), shift, scale)
        out = self.out_proj(h)
        b, t = x_noisy.shape[:2]
        v, hw = cfg.num_views, cfg.image_size
        x_in = patchify(x_scaled, p).reshape(b, t, cfg.tokens_per_frame, -1)
        out = out + self.skip_gain(cond)[:, None, None, :] * x_in
        f = unpatchify(out.reshape(b, t, v, cfg.patches_per_view, -1), p, 3, hw, hw)
        if self.warp_proj is None:
            return c_skip.view(bc) * x_noisy + c_out.view(bc) * f
        m = self._warped(h, cond_img)
        return m + c_skip.view(bc) * (x_noisy - m) + c_out.view(bc) * f

    # -- public API --------------------------------------------------------------------------------
    def features(self, images, lang, noise=None) -> torch.Tensor:
        """ONE partial pass at sigma_max (no sampling loop): tokens per predicted frame [B, T, N, C]."""
        cfg = self.cfg
        cond_img = self._cond_images(images)
        lang = self._lang(lang)
        b = cond_img.shape[0]
        shape = (b, cfg.num_future_frames, cfg.num_views, 3, cfg.image_size, cfg.image_size)
        if noise is None:
            key = (shape, str(cond_img.device))
            if key not in self._feature_noise:
                if len(self._feature_noise) > 8:
                    self._feature_noise.clear()
                self._feature_noise[key] = fixed_noise(shape, FEATURE_NOISE_SEED, cond_img.device)
            noise = self._feature_noise[key]
        sigma = torch.full((b,), cfg.sigma_max, device=cond_img.device)
        _, _, c_in, _ = edm_scalings(sigma, cfg.sigma_data)
        x_in = noise * cfg.sigma_max * c_in.view(-1, 1, 1, 1, 1, 1)
        n_blocks = cfg.gfdm_feature_layer or len(self.blocks)
        h, _ = self._trunk(x_in, sigma, cond_img, lang, n_blocks)
        return h

    @torch.no_grad()
    def sample(self, images, lang, steps: int | None = None, generator=None) -> torch.Tensor:
        """Predicted future frames [B, T, V, 3, H, W] in [0, 1] (deterministic Heun sampler)."""
        frames = None
        for step_frames in self.sample_steps(images, lang, steps, generator):
            frames = step_frames
        assert frames is not None, 'the sampler ran no step'
        return frames

    @torch.no_grad()
    def sample_steps(self, images, lang, steps: int | None = None, generator=None):
        """sample() one denoising step at a time: a generator that yields, after each Heun step, the
        frames [B, T, V, 3, H, W] in [0, 1] of the sample so far; the last one is sample()'s output.
        Between steps the caller may do anything, e.g. release a lock that other inference waits on."""
        cfg = self.cfg
        cond_img = self._cond_images(images)
        lang = self._lang(lang)
        b = cond_img.shape[0]
        shape = (b, cfg.num_future_frames, cfg.num_views, 3, cfg.image_size, cfg.image_size)
        sigmas = karras_sigmas(steps or cfg.gfdm_sampling_steps, cfg.sigma_min,
                               cfg.gfdm_sample_sigma_max or cfg.sigma_max, device=cond_img.device)
        x = torch.randn(shape, generator=generator).to(cond_img.device) * sigmas[0]
        for x_t in edm_sample_steps(lambda xx, s: self.denoise(xx, s, cond_img, lang), x, sigmas, 'heun'):
            frames = x_t + cond_img[:, None] if cfg.gfdm_residual else x_t
            yield (frames.clamp(-1, 1) + 1) / 2

    def loss(self, batch, sigma=None):
        """EDM loss with log-normal sigma on batch['future.images'] given batch['observation.images'].

        sigma: optional fixed noise level(s) (float or [B]) for evaluation curves."""
        cfg = self.cfg
        dev = self.pos_time.device
        cond_img = self._cond_images(batch['observation.images'])
        target = images_to_float(batch['future.images'].to(dev), cfg.image_size)
        if target.dim() != 6 or target.shape[1] != cfg.num_future_frames:
            raise ValueError(f"batch['future.images'] must be [B, T={cfg.num_future_frames}, V, 3, H, W], "
                             f'got {tuple(batch["future.images"].shape)}')
        lang = self._lang(batch['task'])
        if cfg.gfdm_residual:
            target = target - cond_img[:, None]
        b = target.shape[0]
        if sigma is None:
            p_mean = cfg.p_mean if cfg.gfdm_p_mean is None else cfg.gfdm_p_mean
            p_std = cfg.p_std if cfg.gfdm_p_std is None else cfg.gfdm_p_std
            sigma = (torch.randn(b, device=dev) * p_std + p_mean).exp()
            # features() reads the network at sigma_max (about 4.6 std above the log-normal's
            # mean): train that level explicitly so the features encode the predicted future
            at_max = torch.rand(b, device=dev) < cfg.gfdm_sigma_max_prob
            sigma = torch.where(at_max, torch.full_like(sigma, cfg.sigma_max), sigma)
        else:
            sigma = cfg_sigma(sigma, target)
        noisy = target + torch.randn_like(target) * sigma.view(-1, 1, 1, 1, 1, 1)
        denoised = self.denoise(noisy, sigma, cond_img, lang)
        weight = (sigma ** 2 + cfg.sigma_data ** 2) / (sigma * cfg.sigma_data) ** 2
        per_sample = ((denoised - target) ** 2).flatten(1).mean(1)
        loss = (weight * per_sample).mean()
        return loss, {'gfdm_loss': float(loss.detach()), 'gfdm_mse': float(per_sample.mean().detach())}


def cfg_sigma(sigma, x):
    """sigma as a float tensor [B] on x's device (accepts a float or a 0-d tensor)."""
    if not torch.is_tensor(sigma):
        sigma = torch.tensor(float(sigma))
    sigma = sigma.to(x.device, torch.float32)
    return sigma.expand(x.shape[0]) if sigma.dim() == 0 else sigma


class ScratchImageEncoder(nn.Module):
    """BC baseline backbone: a from-scratch ViT over the current views, no video model.

    Returns the same layout as GFDM.features with a single frame: [B, 1, N, C].
    """

    def __init__(self, cfg: DefiConfig):
        super().__init__()
        self.cfg = cfg
        d, p = cfg.gfdm_dim, cfg.patch_size
        self.embed = nn.Linear(3 * p * p, d)
        self.pos = nn.Parameter(torch.randn(cfg.tokens_per_frame, d) * 0.02)
        self.blocks = nn.ModuleList(Block(d, cfg.gfdm_heads) for _ in range(cfg.gfdm_depth))
        self.norm = nn.LayerNorm(d)

    def forward(self, images):
        cfg = self.cfg
        if images.dim() == 4:
            images = images[:, None]
        x = images_to_float(images.to(self.pos.device), cfg.image_size)
        b = x.shape[0]
        h = self.embed(patchify(x, cfg.patch_size).reshape(b, cfg.tokens_per_frame, -1)) + self.pos
        for blk in self.blocks:
            h = blk(h)
        return self.norm(h)[:, None]
