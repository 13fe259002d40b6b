"""Video Former: Perceiver-style resampler from GFDM features to a fixed number of tokens.

Each frame has its own learnable queries that cross-attend to that frame's tokens; then all
queries attend to each other across frames (temporal self-attention, with a time embedding).
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import DefiConfig
from .blocks import MLP, Attention


class VideoFormerLayer(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_ctx = nn.LayerNorm(dim)
        self.cross = Attention(dim, heads)
        self.norm_t = nn.LayerNorm(dim)
        self.temporal = Attention(dim, heads)
        self.norm_m = nn.LayerNorm(dim)
        self.mlp = MLP(dim)

    def forward(self, q, ctx):
        # q [B, T, M, D]; ctx [B, T, N, D]
        b, t, m, d = q.shape
        qf = q.reshape(b * t, m, d)
        qf = qf + self.cross(self.norm_q(qf), self.norm_ctx(ctx.reshape(b * t, -1, d)))
        qs = qf.reshape(b, t * m, d)
        qs = qs + self.temporal(self.norm_t(qs))
        qs = qs + self.mlp(self.norm_m(qs))
        return qs.reshape(b, t, m, d)


class VideoFormer(nn.Module):
    def __init__(self, cfg: DefiConfig):
        super().__init__()
        self.cfg = cfg
        d, t = cfg.vf_dim, cfg.feature_frames
        self.in_norm = nn.LayerNorm(cfg.feature_dim)
        self.in_proj = nn.Linear(cfg.feature_dim, d)
        self.pos = nn.Parameter(torch.randn(cfg.tokens_per_frame, d) * 0.02)
        self.queries = nn.Parameter(torch.randn(t, cfg.vf_queries_per_frame, d) * 0.02)
        self.time_emb = nn.Parameter(torch.randn(t, 1, d) * 0.02)
        self.layers = nn.ModuleList(VideoFormerLayer(d, cfg.vf_heads) for _ in range(cfg.vf_depth))
        self.norm = nn.LayerNorm(d)

    def forward(self, feats):
        """feats [B, T, N, C] -> tokens [B, T * queries_per_frame, vf_dim]."""
        b, t, n, _ = feats.shape
        if t != self.queries.shape[0] or n != self.pos.shape[0]:
            raise ValueError(f'VideoFormer expects features [B, {self.queries.shape[0]}, {self.pos.shape[0]}, C], '
                             f'got {tuple(feats.shape)}')
        ctx = self.in_proj(self.in_norm(feats)) + self.pos
        q = (self.queries + self.time_emb)[None].expand(b, -1, -1, -1)
        for layer in self.layers:
            q = layer(q, ctx)
        return self.norm(q.reshape(b, -1, q.shape[-1]))
