"""GIDM: latent-action model (the inverse dynamics model), plus the MLP / transformer ablations.

Pretraining path:   frames t, t+k -> frame encoder tokens -> spatio-temporal transformer with a
                    causal temporal mask over [language, frame t, frame t+k, 4 action queries] ->
                    VQ (straight-through, commitment beta, dead-code restart) -> decoder that
                    reconstructs frame t+k's tokens (stop-gradient target) from frame t + actions.
Policy path:        the coupling MLP maps GFDM features of frames 0 and k into the frame-encoder
                    token space, then the same transformer + VQ produce the latent-action tokens;
                    frame encoder and decoder are unused.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DefiConfig
from ..language import as_embedding, make_text_encoder
from .blocks import MLP, Block, images_to_float, patchify


def causal_temporal_mask(n_tokens: int, n_queries: int, device) -> torch.Tensor:
    """Bool [L, L], True = may attend, for the sequence [lang, frame0 (n), frame1 (n), queries].

    Time steps: lang and frame0 = 0, frame1 = 1, queries = 2; a token sees tokens at its own or an
    earlier step, so frame t never sees frame t+k and only the queries see both.
    """
    time = torch.cat([torch.zeros(1 + n_tokens), torch.ones(n_tokens), torch.full((n_queries,), 2.0)])
    return (time[None, :] <= time[:, None]).to(device)


class VectorQuantizer(nn.Module):
    def __init__(self, cfg: DefiConfig):
        super().__init__()
        self.cfg = cfg
        self.codebook = nn.Parameter(torch.randn(cfg.codebook_size, cfg.code_dim))
        # EMA of how often each code is picked; travels in the checkpoint with the codebook
        self.register_buffer('usage', torch.full((cfg.codebook_size,), 1.0 / cfg.codebook_size))
        # 0 until the first training batch sets the codebook from encoder outputs (data-dependent
        # init): a random codebook on the sphere sits far from the (initially very similar) encoder
        # outputs, so they all fall into one code and the decoder learns to ignore the latent
        self.register_buffer('initialized', torch.zeros((), dtype=torch.uint8))
        # running mean of the encoder outputs, subtracted before the lookup (centering, as in DINO):
        # early on the outputs share a large input-independent part (query embeddings, biases)
        # that would otherwise map every input to the same code
        self.register_buffer('center', torch.zeros(cfg.code_dim))

    def forward(self, z):
        """z [B, Q, C] -> (z_q straight-through [B, Q, C], codes Long [B, Q], vq_loss).

        Lookup on l2-normalized vectors (as in ViT-VQGAN): every code is reachable from the
        start, so a fresh codebook does not collapse onto its smallest-norm entry.
        """
        if self.training:
            with torch.no_grad():
                batch_mean = z.detach().reshape(-1, z.shape[-1]).mean(0)
                if bool(self.initialized):
                    self.center.lerp_(batch_mean, 1 - self.cfg.code_usage_decay)
                else:
                    self.center.copy_(batch_mean)
        z = F.normalize(z - self.center, dim=-1)
        flat = z.reshape(-1, z.shape[-1])
        if self.training and not bool(self.initialized):
            self._init_from(flat.detach())
        book = F.normalize(self.codebook, dim=-1)
        codes = (flat @ book.t()).argmax(1)
        zq = book[codes].view_as(z)
        codebook_loss = F.mse_loss(zq, z.detach())
        commitment = F.mse_loss(z, zq.detach())
        loss = codebook_loss + self.cfg.commitment_beta * commitment
        if self.training:
            self._restart_dead_codes(flat.detach(), codes)
        return z + (zq - z).detach(), codes.view(z.shape[:-1]), loss

    def non_gradient_state(self) -> list:
        """Tensors this module edits outside autograd (DDP: broadcast them from rank 0 each step)."""
        return [self.codebook.data, self.usage, self.center, self.initialized]

    @torch.no_grad()
    def _init_from(self, flat):
        pick = torch.randperm(flat.shape[0], device=flat.device)[:self.cfg.codebook_size]
        if len(pick) < self.cfg.codebook_size:
            pick = torch.randint(0, flat.shape[0], (self.cfg.codebook_size,), device=flat.device)
        self.codebook.data.copy_(flat[pick] + 0.01 * torch.randn_like(flat[pick]))
        self.initialized.fill_(1)

    @torch.no_grad()
    def _restart_dead_codes(self, flat, codes):
        cfg = self.cfg
        counts = torch.bincount(codes, minlength=cfg.codebook_size).float() / codes.numel()
        self.usage.mul_(cfg.code_usage_decay).add_(counts, alpha=1 - cfg.code_usage_decay)
        dead = (self.usage < cfg.dead_code_threshold / cfg.codebook_size).nonzero().flatten()
        if len(dead):
            pick = torch.randint(0, flat.shape[0], (len(dead),), device=flat.device)
            self.codebook.data[dead] = flat[pick] + 0.01 * torch.randn_like(flat[pick])
            self.usage[dead] = 1.0 / cfg.codebook_size


class GIDM(nn.Module):
    def __init__(self, cfg: DefiConfig, text_encoder=None):
        super().__init__()
        self.cfg = cfg
        self.text_encoder = text_encoder or make_text_encoder(cfg.text_encoder, cfg.text_dim)
        d, p, n, q = cfg.gidm_dim, cfg.patch_size, cfg.tokens_per_frame, cfg.num_action_queries
        # frame encoder: pixels -> tokens (the "input space" the coupling MLP maps into)
        self.frame_embed = nn.Linear(3 * p * p, d)
        self.frame_pos = nn.Parameter(torch.randn(n, d) * 0.02)
        self.frame_encoder = nn.ModuleList(Block(d, cfg.gidm_heads) for _ in range(cfg.gidm_encoder_depth))
        self.frame_norm = nn.LayerNorm(d)
        # spatio-temporal transformer with causal temporal mask + action queries
        self.text_proj = nn.Linear(cfg.text_dim, d)
        self.st_pos = nn.Parameter(torch.randn(n, d) * 0.02)
        self.time_emb = nn.Parameter(torch.randn(2, d) * 0.02)
        self.action_queries = nn.Parameter(torch.randn(q, d) * 0.02)
        # frame t+k's stream also gets the per-patch change since frame t: motion is then visible
        # token by token instead of having to be discovered through attention (pooled features of a
        # translated image hardly change). Allowed by the causal mask: t+k may look at t.
        self.delta_proj = nn.Linear(d, d)
        self.blocks = nn.ModuleList(Block(d, cfg.gidm_heads) for _ in range(cfg.gidm_depth))
        self.norm = nn.LayerNorm(d)
        self.pre_vq = nn.Linear(d, cfg.code_dim)
        self.vq = VectorQuantizer(cfg)
        self.post_vq = nn.Linear(cfg.code_dim, d)
        # decoder (pretraining only): frame t tokens + latent actions -> frame t+k tokens
        self.dec_pos = nn.Parameter(torch.randn(n + q, d) * 0.02)
        self.decoder = nn.ModuleList(Block(d, cfg.gidm_heads) for _ in range(cfg.gidm_decoder_depth))
        self.dec_norm = nn.LayerNorm(d)
        self.dec_out = nn.Linear(d, d)
        self.pixel_head = nn.Linear(d, 3 * p * p)

    @property
    def device(self):
        return self.frame_pos.device

    def _lang(self, lang):
        return as_embedding(self.text_encoder, lang, self.device)

    def _frames(self, frames):
        if frames.dim() == 4:
            frames = frames[:, None]
        if frames.dim() != 5 or frames.shape[1] != self.cfg.num_views:
            raise ValueError(f'frames must be [B, V={self.cfg.num_views}, 3, H, W], got {tuple(frames.shape)}')
        return images_to_float(frames.to(self.device), self.cfg.image_size)

    def embed_frames(self, frames) -> torch.Tensor:
        """[B, V, 3, H, W] -> frame-encoder tokens [B, N, D]."""
        x = self._frames(frames)
        b = x.shape[0]
        h = self.frame_embed(patchify(x, self.cfg.patch_size).reshape(b, self.cfg.tokens_per_frame, -1))
        h = h + self.frame_pos
        for blk in self.frame_encoder:
            h = blk(h)
        return self.frame_norm(h)

    def encode_tokens(self, tok0, tok1, lang):
        """Tokens of frames t and t+k [B, N, D] -> (codes [B, Q], action tokens [B, Q, D], vq_loss)."""
        cfg = self.cfg
        b, n, _ = tok0.shape
        lang_tok = self.text_proj(self._lang(lang))[:, None]
        queries = self.action_queries[None].expand(b, -1, -1)
        x = torch.cat([lang_tok, tok0 + self.st_pos + self.time_emb[0],
                       tok1 + self.delta_proj(tok1 - tok0) + self.st_pos + self.time_emb[1], queries], dim=1)
        mask = causal_temporal_mask(n, cfg.num_action_queries, x.device)
        for blk in self.blocks:
            x = blk(x, mask=mask)
        z = self.pre_vq(self.norm(x[:, -cfg.num_action_queries:]))
        zq, codes, vq_loss = self.vq(z)
        return codes, self.post_vq(zq), vq_loss

    def encode(self, frame_t, frame_t_plus_k, instruction):
        """Pretraining-path inference: (codes Long [B, Q], latent-action tokens [B, Q, D])."""
        codes, tokens, _ = self.encode_tokens(self.embed_frames(frame_t), self.embed_frames(frame_t_plus_k),
                                              instruction)
        return codes, tokens

    def decode(self, tok0, action_tokens):
        """Predicts frame t+k's tokens [B, N, D] from frame t's tokens and the latent actions."""
        n = tok0.shape[1]
        x = torch.cat([tok0, action_tokens], dim=1) + self.dec_pos
        for blk in self.decoder:
            x = blk(x)
        return self.dec_out(self.dec_norm(x[:, :n]))

    def loss(self, batch):
        """Reconstruct frame t+k's tokens (stop-grad target) + its pixels + VQ loss."""
        cfg = self.cfg
        tok0 = self.embed_frames(batch['observation.images'])
        tok1 = self.embed_frames(batch['gap.images'])
        codes, actions, vq_loss = self.encode_tokens(tok0, tok1, batch['task'])
        pred = self.decode(tok0, actions)
        token_loss = F.mse_loss(pred, tok1.detach())
        target_px = patchify(self._frames(batch['gap.images']), cfg.patch_size)
        target_px = target_px.reshape(pred.shape[0], pred.shape[1], -1)
        pixel_loss = F.mse_loss(self.pixel_head(pred), target_px)
        loss = token_loss + cfg.gidm_pixel_loss_weight * pixel_loss + vq_loss
        used = int(torch.unique(codes).numel())
        return loss, {'gidm_loss': float(loss.detach()), 'gidm_token_loss': float(token_loss.detach()),
                      'gidm_pixel_loss': float(pixel_loss.detach()), 'gidm_vq_loss': float(vq_loss.detach()),
                      'gidm_codes_used': float(used)}


class MLPIDM(nn.Module):
    """Ablation: an MLP instead of GIDM (pooled tokens of frames 0 and k -> Q action tokens, no VQ)."""

    def __init__(self, cfg: DefiConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.gidm_dim
        self.text_proj = nn.Linear(cfg.text_dim, d)
        self.mlp = MLP(3 * d, 4 * d, cfg.num_action_queries * d)

    def encode_tokens(self, tok0, tok1, lang):
        b = tok0.shape[0]
        x = torch.cat([tok0.mean(1), tok1.mean(1), self.text_proj(lang)], dim=-1)
        tokens = self.mlp(x).view(b, self.cfg.num_action_queries, -1)
        codes = torch.full((b, self.cfg.num_action_queries), -1, dtype=torch.long, device=x.device)
        return codes, tokens, x.new_zeros(())


class TransformerIDM(nn.Module):
    """Ablation: a plain transformer (no causal mask, no VQ) instead of GIDM."""

    def __init__(self, cfg: DefiConfig):
        super().__init__()
        self.cfg = cfg
        d, n = cfg.gidm_dim, cfg.tokens_per_frame
        self.text_proj = nn.Linear(cfg.text_dim, d)
        self.pos = nn.Parameter(torch.randn(2, n, d) * 0.02)
        self.action_queries = nn.Parameter(torch.randn(cfg.num_action_queries, d) * 0.02)
        self.blocks = nn.ModuleList(Block(d, cfg.gidm_heads) for _ in range(cfg.gidm_depth))
        self.norm = nn.LayerNorm(d)

    def encode_tokens(self, tok0, tok1, lang):
        b, q = tok0.shape[0], self.cfg.num_action_queries
        x = torch.cat([self.text_proj(lang)[:, None], tok0 + self.pos[0], tok1 + self.pos[1],
                       self.action_queries[None].expand(b, -1, -1)], dim=1)
        for blk in self.blocks:
            x = blk(x)
        codes = torch.full((b, q), -1, dtype=torch.long, device=x.device)
        return codes, self.norm(x[:, -q:]), x.new_zeros(())
