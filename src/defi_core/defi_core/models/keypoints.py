"""Keypoint encoder: a small CNN with a spatial softmax over the current camera views.

The pooled transformer features (8 px patches at 64 px) tell the action head roughly where things
are; manipulation needs the object a few centimetres at a time. A spatial softmax turns each
feature map into the expected image coordinates of what it responds to (Levine et al. 2016), a
sub-pixel position the head can act on. One token per view joins the action head's context.
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import DefiConfig
from .blocks import images_to_float


def spatial_softmax(maps: torch.Tensor) -> torch.Tensor:
    """maps [B, K, H, W] -> expected (x, y) in [-1, 1] of each map's softmax, [B, K, 2]."""
    b, k, h, w = maps.shape
    attn = maps.flatten(2).softmax(-1).view(b, k, h, w)
    ys = torch.linspace(-1.0, 1.0, h, device=maps.device, dtype=maps.dtype)
    xs = torch.linspace(-1.0, 1.0, w, device=maps.device, dtype=maps.dtype)
    return torch.stack([(attn.sum(2) * xs).sum(-1), (attn.sum(3) * ys).sum(-1)], dim=-1)


class KeypointEncoder(nn.Module):
    """locate: images [B, V, 3, H, W] -> keypoints [B, V, K, 2] (shared CNN weights per view);
    embed: keypoints -> [B, V, head_dim] tokens, one per view.

    The two halves are separate so the keypoints can travel between ROS nodes (and be shown)."""

    def __init__(self, cfg: DefiConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.keypoint_channels
        # stride 2 once: 64 px -> 32 x 32 maps, fine enough for a softmax over positions
        self.cnn = nn.Sequential(
            nn.Conv2d(3, c, 5, stride=2, padding=2), nn.GroupNorm(8, c), nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=1), nn.GroupNorm(8, c), nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=1), nn.GroupNorm(8, c), nn.ReLU(),
            nn.Conv2d(c, cfg.keypoints, 1))
        self.view_emb = nn.Parameter(torch.randn(cfg.num_views, cfg.head_dim) * 0.02)
        self.proj = nn.Sequential(nn.Linear(2 * cfg.keypoints, cfg.head_dim), nn.GELU(),
                                  nn.Linear(cfg.head_dim, cfg.head_dim))

    def locate(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() == 4:
            images = images[:, None]
        x = images_to_float(images.to(self.view_emb.device), self.cfg.image_size)
        b, v = x.shape[:2]
        return spatial_softmax(self.cnn(x.flatten(0, 1))).view(b, v, self.cfg.keypoints, 2)

    def embed(self, keypoints: torch.Tensor) -> torch.Tensor:
        b, v = keypoints.shape[:2]
        return self.proj(keypoints.to(self.view_emb.device).reshape(b, v, -1)) + self.view_emb

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed(self.locate(images))
