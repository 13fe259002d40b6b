"""Action head: EDM diffusion transformer over the action chunk.

Encoder: self-attention over the context tokens (language token, Video Former tokens, latent-action
tokens, optional state token), each with a type embedding. Decoder: the noisy chunk (one token per
step, c_in-scaled) plus the noise-level embedding, self-attention + cross-attention to the encoder
output; with head_context_skip, a linear map of the mean context token is added to its output.
Sampling: deterministic EDM ODE sampler (Euler = DDIM-like, or Heun), default 10 steps.
Actions here are normalized (the policy's Normalizer maps them to/from robot units).
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import DefiConfig
from .blocks import Block, FourierEmbedding, edm_sample, edm_scalings, karras_sigmas


class ActionHead(nn.Module):
    def __init__(self, cfg: DefiConfig, latent_dim: int | None):
        super().__init__()
        self.cfg = cfg
        d = cfg.head_dim
        self.lang_proj = nn.Linear(cfg.text_dim, d)
        self.vf_proj = nn.Linear(cfg.vf_dim, d)
        self.latent_proj = nn.Linear(latent_dim, d) if latent_dim else None
        self.state_proj = nn.Linear(cfg.state_dim, d) if cfg.state_dim > 0 else None
        self.type_emb = nn.Parameter(torch.randn(4, d) * 0.02)  # lang, video, latent action, state
        self.encoder = nn.ModuleList(Block(d, cfg.head_heads) for _ in range(cfg.head_encoder_depth))
        self.enc_norm = nn.LayerNorm(d)
        self.action_in = nn.Linear(cfg.action_dim, d)
        self.action_pos = nn.Parameter(torch.randn(cfg.horizon, d) * 0.02)
        self.sigma_emb = FourierEmbedding(d)
        self.decoder = nn.ModuleList(Block(d, cfg.head_heads, cross=True) for _ in range(cfg.head_decoder_depth))
        self.dec_norm = nn.LayerNorm(d)
        self.action_out = nn.Linear(d, cfg.action_dim)
        self.context_skip = nn.Linear(d, cfg.horizon * cfg.action_dim) if cfg.head_context_skip else None

    def encode_context(self, lang, video_tokens, latent_tokens=None, state=None):
        """-> context [B, M, head_dim]. lang [B, text_dim]; video [B, Mv, vf_dim]; latent [B, Q, D]."""
        parts = [self.lang_proj(lang)[:, None] + self.type_emb[0],
                 self.vf_proj(video_tokens) + self.type_emb[1]]
        if self.latent_proj is not None:
            if latent_tokens is None:
                raise ValueError('this action head was built with a latent-action branch: pass latent tokens')
            parts.append(self.latent_proj(latent_tokens) + self.type_emb[2])
        if self.state_proj is not None:
            if state is None:
                raise ValueError(f'state_dim={self.cfg.state_dim}: observation.state is required')
            parts.append(self.state_proj(state)[:, None] + self.type_emb[3])
        x = torch.cat(parts, dim=1)
        for blk in self.encoder:
            x = blk(x)
        return self.enc_norm(x)

    def context_kv(self, context):
        """Per-decoder-layer cross-attention keys/values: computed once per chunk, not per step."""
        return [blk.cross_attn.project_kv(context) for blk in self.decoder]

    def denoise(self, x, sigma, context, context_kv=None):
        """EDM denoiser on normalized actions x [B, H, A]."""
        cfg = self.cfg
        c_skip, c_out, c_in, c_noise = edm_scalings(sigma, cfg.action_sigma_data)
        h = self.action_in(x * c_in.view(-1, 1, 1)) + self.action_pos + self.sigma_emb(c_noise)[:, None]
        for i, blk in enumerate(self.decoder):
            h = blk(h, context, context_kv=None if context_kv is None else context_kv[i])
        f = self.action_out(self.dec_norm(h))
        if self.context_skip is not None:
            f = f + self.context_skip(context.mean(1)).view_as(f)
        return c_skip.view(-1, 1, 1) * x + c_out.view(-1, 1, 1) * f

    @torch.no_grad()
    def sample(self, context, steps: int | None = None, generator=None, noise=None):
        cfg = self.cfg
        b = context.shape[0]
        sigmas = karras_sigmas(steps or cfg.sampling_steps, cfg.action_sigma_min, cfg.action_sigma_max,
                               device=context.device)
        if noise is None:
            noise = torch.randn(b, cfg.horizon, cfg.action_dim, generator=generator).to(context.device)
            noise = noise * cfg.action_noise_scale
        x = noise * sigmas[0]
        kv = self.context_kv(context)
        return edm_sample(lambda xx, s: self.denoise(xx, s, context, kv), x, sigmas, cfg.head_sampler)

    def loss(self, context, actions, is_pad=None, sigma=None):
        """EDM loss (log-normal sigma) on normalized actions [B, H, A]; padded steps are masked.

        sigma: optional fixed noise level (float) for evaluation curves."""
        cfg = self.cfg
        b = actions.shape[0]
        if sigma is None:
            sigma = (torch.randn(b, device=actions.device) * cfg.p_std + cfg.p_mean).exp()
        else:
            sigma = torch.full((b,), float(sigma), device=actions.device)
        noisy = actions + torch.randn_like(actions) * sigma.view(-1, 1, 1)
        denoised = self.denoise(noisy, sigma, context)
        weight = (sigma ** 2 + cfg.action_sigma_data ** 2) / (sigma * cfg.action_sigma_data) ** 2
        err = ((denoised - actions) ** 2).mean(-1)               # [B, H]
        if is_pad is not None:
            keep = (~is_pad.bool()).float()
            per_sample = (err * keep).sum(1) / keep.sum(1).clamp(min=1)
        else:
            per_sample = err.mean(1)
        return (weight * per_sample).mean(), per_sample.mean().detach()
