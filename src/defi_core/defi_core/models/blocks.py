"""Transformer building blocks shared by every DeFI network."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head attention (self or cross) on top of scaled_dot_product_attention."""

    def __init__(self, dim: int, heads: int, kv_dim: int | None = None):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(kv_dim or dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def project_kv(self, context):
        """Keys and values [B, heads, M, D/heads] each; reusable while the context is fixed."""
        b, m, _ = context.shape
        d = self.q.out_features
        k, v = self.kv(context).view(b, m, 2, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return k, v

    def forward(self, x, context=None, mask=None, kv=None):
        # x [B, N, D]; context [B, M, Dk]; mask: bool [N, M] or [B, 1, N, M], True = may attend
        b, n, d = x.shape
        h = self.heads
        q = self.q(x).view(b, n, h, d // h).transpose(1, 2)
        k, v = kv if kv is not None else self.project_kv(x if context is None else context)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int | None = None, out: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden or 4 * dim)
        self.fc2 = nn.Linear(hidden or 4 * dim, out or dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: self-attention, optional cross-attention, MLP."""

    def __init__(self, dim: int, heads: int, cross: bool = False, kv_dim: int | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.cross = cross
        if cross:
            self.norm_x = nn.LayerNorm(dim)
            self.cross_attn = Attention(dim, heads, kv_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim)

    def forward(self, x, context=None, mask=None, context_kv=None):
        x = x + self.attn(self.norm1(x), mask=mask)
        if self.cross:
            x = x + self.cross_attn(self.norm_x(x), context, kv=context_kv)
        return x + self.mlp(self.norm2(x))


def modulate(x, shift, scale):
    return x * (1 + scale) + shift


class FourierEmbedding(nn.Module):
    """Embeds a scalar (EDM's c_noise) with fixed random Fourier features + MLP."""

    def __init__(self, dim: int, num_freqs: int = 32):
        super().__init__()
        g = torch.Generator().manual_seed(1234)
        self.register_buffer('freqs', torch.randn(num_freqs, generator=g) * 4.0, persistent=True)
        self.mlp = nn.Sequential(nn.Linear(2 * num_freqs, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, c):  # c [B]
        ang = 2 * math.pi * c[:, None].float() * self.freqs[None]
        return self.mlp(torch.cat([ang.cos(), ang.sin()], dim=-1))


def patchify(images, p: int):
    """[..., C, H, W] -> [..., (H/p)*(W/p), C*p*p]."""
    *lead, c, h, w = images.shape
    x = images.reshape(-1, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(*lead, (h // p) * (w // p), c * p * p)


def unpatchify(tokens, p: int, c: int, h: int, w: int):
    """Inverse of patchify: [..., N, C*p*p] -> [..., C, H, W]."""
    *lead, n, _ = tokens.shape
    x = tokens.reshape(-1, h // p, w // p, c, p, p).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(*lead, c, h, w)


def images_to_float(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """uint8 [0,255] or float [0,1] images [..., 3, H, W] -> float in [-1, 1] at image_size."""
    if images.dtype == torch.uint8:
        x = images.float() / 255.0
    elif images.is_floating_point():
        x = images.float()
    else:
        raise TypeError(f'images must be uint8 or float, got {images.dtype}')
    if x.shape[-3] != 3:
        raise ValueError(f'images must have 3 channels in dim -3, got shape {tuple(images.shape)}')
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        lead = x.shape[:-3]
        x = F.interpolate(x.reshape(-1, *x.shape[-3:]), size=(image_size, image_size),
                          mode='bilinear', align_corners=False, antialias=True)
        x = x.reshape(*lead, 3, image_size, image_size)
    return x * 2.0 - 1.0


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0, device=None):
    """EDM sampling schedule: steps sigmas from sigma_max down to sigma_min, then a final 0."""
    i = torch.arange(steps, dtype=torch.float64, device=device)
    if steps == 1:
        s = torch.tensor([sigma_max], dtype=torch.float64, device=device)
    else:
        s = (sigma_max ** (1 / rho) + i / (steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([s, s.new_zeros(1)]).float()


def edm_scalings(sigma, sigma_data: float):
    """EDM preconditioning (Karras et al. 2022): c_skip, c_out, c_in, c_noise."""
    s2 = sigma ** 2 + sigma_data ** 2
    c_skip = sigma_data ** 2 / s2
    c_out = sigma * sigma_data / s2.sqrt()
    c_in = 1 / s2.sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


def edm_sample_steps(denoise, x, sigmas, sampler: str = 'euler'):
    """edm_sample one step at a time: yields x after each of the len(sigmas) - 1 steps (a caller can
    pause or lock between steps); the last value yielded is edm_sample's result."""
    b = x.shape[0]
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        d = (x - denoise(x, s.expand(b))) / s
        x_next = x + (s_next - s) * d
        if sampler == 'heun' and s_next > 0:
            d2 = (x_next - denoise(x_next, s_next.expand(b))) / s_next
            x_next = x + (s_next - s) * 0.5 * (d + d2)
        x = x_next
        yield x


def edm_sample(denoise, x, sigmas, sampler: str = 'euler'):
    """Deterministic EDM ODE sampler. denoise(x, sigma[B]) -> x0 estimate; x starts at sigmas[0] scale."""
    for x_step in edm_sample_steps(denoise, x, sigmas, sampler):
        x = x_step
    return x


def fixed_noise(shape, seed: int, device, dtype=torch.float32):
    """Deterministic Gaussian noise (same shape + seed -> same tensor on any device)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)
