"""DefiPolicy: GFDM features -> (coupling MLP -> GIDM latent actions) -> Video Former -> action head.

LeRobot-style API: reset(), predict_action_chunk(obs), select_action(obs) with an internal chunk
queue. The same computation is exposed in stages for the ROS nodes:
encode_instruction -> forward_features -> latent_actions -> decode_actions.
"""
from __future__ import annotations

from collections import deque

import torch
from torch import nn

from .config import DefiConfig
from .language import as_embedding, make_text_encoder
from .models.action_head import ActionHead
from .models.gfdm import GFDM, ScratchImageEncoder
from .models.gidm import GIDM, MLPIDM, TransformerIDM
from .models.video_former import VideoFormer
from .normalization import Normalizer


def random_shift(images: torch.Tensor, pad: int, generator=None) -> torch.Tensor:
    """Each sample's views shifted by the same random offset in [-pad, pad] pixels (edge padding).

    With a few dozen demonstrations per task a policy can key its actions on where the arm is in
    the picture rather than on where the object is; small shifts break that shortcut (DrQ, Kostrikov
    et al. 2020). images [B, V, 3, H, W] (any dtype) -> same shape and dtype."""
    b, v, c, h, w = images.shape
    x = images.reshape(b, v * c, h, w)
    padded = torch.nn.functional.pad(x.float(), (pad, pad, pad, pad), mode='replicate')
    off = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator, device=images.device)
    rows = (off[:, 0, None] + torch.arange(h, device=images.device))[:, None, :, None]
    cols = (off[:, 1, None] + torch.arange(w, device=images.device))[:, None, None, :]
    out = padded[torch.arange(b, device=images.device)[:, None, None, None],
                 torch.arange(v * c, device=images.device)[None, :, None, None], rows, cols]
    return out.to(images.dtype).reshape(b, v, c, h, w)


class Coupling(nn.Module):
    """MLP from GFDM feature tokens into GIDM's input (frame-encoder token) space."""

    def __init__(self, cfg: DefiConfig):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(cfg.feature_dim), nn.Linear(cfg.feature_dim, 2 * cfg.gidm_dim),
                                 nn.GELU(), nn.Linear(2 * cfg.gidm_dim, cfg.gidm_dim), nn.LayerNorm(cfg.gidm_dim))

    def forward(self, x):
        return self.net(x)


class DefiPolicy(nn.Module):
    def __init__(self, cfg: DefiConfig, text_encoder=None):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.text_encoder = text_encoder or make_text_encoder(cfg.text_encoder, cfg.text_dim)
        if text_encoder is not None and getattr(text_encoder, 'dim', cfg.text_dim) != cfg.text_dim:
            raise ValueError(f'text encoder gives {text_encoder.dim}-d embeddings but cfg.text_dim={cfg.text_dim}')
        # exactly one of the two backbones exists (cfg.backbone)
        self.gfdm: GFDM | None = None
        self.image_encoder: ScratchImageEncoder | None = None
        if cfg.backbone == 'gfdm':
            self.gfdm = GFDM(cfg, self.text_encoder)
        else:
            self.image_encoder = ScratchImageEncoder(cfg)
        self.coupling = Coupling(cfg) if cfg.idm_type != 'none' else None
        self.gidm = GIDM(cfg, self.text_encoder) if cfg.idm_type == 'gidm' else None
        # the MLP / transformer ablations replace GIDM under their own checkpoint name
        self.idm_ablation = {'mlp': MLPIDM, 'transformer': TransformerIDM}[cfg.idm_type](cfg) \
            if cfg.idm_type in ('mlp', 'transformer') else None
        self.video_former = VideoFormer(cfg)
        self.action_head = ActionHead(cfg, cfg.gidm_dim if cfg.idm_type != 'none' else None)
        self.normalizer: Normalizer | None = None
        self._queue: deque = deque()
        self.apply_trainable_flags()

    # -- trainability ------------------------------------------------------------------------------
    def apply_trainable_flags(self) -> None:
        """Frozen GFDM by default; GIDM's pixel frame encoder and decoder are pretraining-only."""
        for p in self.parameters():
            p.requires_grad_(True)
        if self.gfdm is not None:
            if not self.cfg.gfdm_trainable:
                self.gfdm.requires_grad_(False)
            else:   # features() never reaches the output head nor blocks past the feature layer
                for mod in [self.gfdm.final_ada, self.gfdm.out_proj, self.gfdm.skip_gain,
                            *self.gfdm.blocks[self.cfg.gfdm_feature_layer or len(self.gfdm.blocks):]]:
                    mod.requires_grad_(False)
        if self.gidm is not None:
            for mod in (self.gidm.frame_embed, self.gidm.frame_encoder, self.gidm.frame_norm,
                        self.gidm.decoder, self.gidm.dec_norm, self.gidm.dec_out, self.gidm.pixel_head):
                mod.requires_grad_(False)
            self.gidm.frame_pos.requires_grad_(False)
            self.gidm.dec_pos.requires_grad_(False)

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]

    def train(self, mode: bool = True):
        super().train(mode)
        if self.gfdm is not None and not self.cfg.gfdm_trainable:
            self.gfdm.eval()       # a frozen GFDM always runs in inference mode
        return self

    @property
    def idm(self):
        """The latent-action branch in use (GIDM or an ablation), None for adapter only."""
        return self.gidm if self.gidm is not None else self.idm_ablation

    @property
    def device(self) -> torch.device:
        return self.action_head.action_pos.device

    # -- normalization -----------------------------------------------------------------------------
    def set_normalization(self, stats) -> None:
        """stats: a Normalizer or {feature: {mean, std, min, max}} (needs 'action'; state if used)."""
        norm = stats if isinstance(stats, Normalizer) else Normalizer(stats)
        if not norm.has('action'):
            raise ValueError("normalization stats need an 'action' entry")
        if norm.dim('action') != self.cfg.action_dim:
            raise ValueError(f"stats['action'] has {norm.dim('action')} dims, cfg.action_dim={self.cfg.action_dim}")
        if self.cfg.state_dim > 0:
            if not norm.has('observation.state'):
                raise ValueError(f"state_dim={self.cfg.state_dim}: stats need an 'observation.state' entry")
            if norm.dim('observation.state') != self.cfg.state_dim:
                raise ValueError(f"stats['observation.state'] has {norm.dim('observation.state')} dims, "
                                 f'cfg.state_dim={self.cfg.state_dim}')
        self.normalizer = norm

    def _require_normalizer(self) -> Normalizer:
        if self.normalizer is None:
            raise RuntimeError('DefiPolicy has no normalization statistics: call policy.set_normalization(stats) '
                               'or load a checkpoint that contains stats.safetensors')
        return self.normalizer

    # -- staged API --------------------------------------------------------------------------------
    def encode_instruction(self, texts) -> torch.Tensor:
        """list[str] -> [B, text_dim] (frozen encoder, cached per string)."""
        return self.text_encoder.encode(texts).to(self.device)

    def _lang(self, lang):
        return as_embedding(self.text_encoder, lang, self.device)

    def forward_features(self, images, lang) -> torch.Tensor:
        """images [B, V, 3, H, W] uint8 or float in [0,1] -> features [B, T, N, C]."""
        lang = self._lang(lang)
        if self.gfdm is None:
            assert self.image_encoder is not None        # __init__ makes one of the two
            return self.image_encoder(images)
        if self.cfg.gfdm_trainable and torch.is_grad_enabled():
            return self.gfdm.features(images, lang)
        with torch.no_grad():
            return self.gfdm.features(images, lang)

    def _latent(self, feats, lang):
        cfg = self.cfg
        b = feats.shape[0]
        if self.idm is None:
            empty = feats.new_zeros(b, 0, cfg.gidm_dim)
            return torch.zeros(b, 0, dtype=torch.long, device=feats.device), empty, feats.new_zeros(())
        tok0 = self.coupling(feats[:, 0])
        tok1 = self.coupling(feats[:, cfg.gap_feature_index])
        return self.idm.encode_tokens(tok0, tok1, lang)

    def latent_actions(self, feats, lang):
        """-> codes Long [B, Q] (-1 where the IDM has no codebook), tokens [B, Q, D] (Q=0 for 'none')."""
        codes, tokens, _ = self._latent(feats.to(self.device), self._lang(lang))
        return codes, tokens

    def _context(self, feats, tokens, lang, state):
        vf = self.video_former(feats)
        if state is not None:
            state = self._require_normalizer().normalize('observation.state', state.to(self.device).float())
        return self.action_head.encode_context(lang, vf, tokens if self.idm is not None else None, state)

    def decode_actions(self, feats, tokens, lang, state=None, generator=None) -> torch.Tensor:
        """-> action chunk [B, horizon, action_dim] in robot units."""
        norm = self._require_normalizer()
        lang = self._lang(lang)
        ctx = self._context(feats.to(self.device), tokens.to(self.device), lang, state)
        actions = self.action_head.sample(ctx, generator=generator)
        return norm.unnormalize('action', actions)

    # -- observation parsing -----------------------------------------------------------------------
    def images_from_obs(self, obs) -> torch.Tensor:
        """Stack 'observation.images.<cam>' [B,3,H,W] in cfg.cameras order -> [B, V, 3, H, W]."""
        if 'observation.images' in obs:
            imgs = obs['observation.images']
            return imgs[:, None] if imgs.dim() == 4 else imgs
        views = []
        for cam in self.cfg.cameras:
            key = f'observation.images.{cam}'
            if key not in obs:
                raise KeyError(f'observation is missing {key!r} (cameras={list(self.cfg.cameras)}, '
                               f'got keys {sorted(obs)})')
            img = obs[key]
            views.append(img[None] if img.dim() == 3 else img)
        return torch.stack(views, dim=1)

    def _state_from(self, obs):
        if self.cfg.state_dim <= 0:
            return None
        if 'observation.state' not in obs:
            raise KeyError(f"observation is missing 'observation.state' (state_dim={self.cfg.state_dim})")
        state = torch.as_tensor(obs['observation.state'])
        return state[None] if state.dim() == 1 else state

    @staticmethod
    def _tasks(obs, b):
        task = obs.get('task')
        if task is None:
            raise KeyError("observation is missing 'task' (list[str] of length B)")
        tasks = [task] * b if isinstance(task, str) else list(task)
        if len(tasks) != b:
            raise ValueError(f"'task' has {len(tasks)} strings for a batch of {b}")
        return tasks

    # -- LeRobot-style API -------------------------------------------------------------------------
    @torch.no_grad()
    def predict_action_chunk(self, obs, generator=None) -> torch.Tensor:
        self._require_normalizer()
        images = self.images_from_obs(obs)
        lang = self.encode_instruction(self._tasks(obs, images.shape[0]))
        feats = self.forward_features(images, lang)
        _, tokens = self.latent_actions(feats, lang)
        return self.decode_actions(feats, tokens, lang, self._state_from(obs), generator=generator)

    @torch.no_grad()
    def select_action(self, obs) -> torch.Tensor:
        """[B, action_dim]: pops the next action; predicts a new chunk when the queue is empty."""
        if not self._queue:
            chunk = self.predict_action_chunk(obs)[:, :self.cfg.actions_per_chunk]
            self._queue.extend(chunk.transpose(0, 1))
        return self._queue.popleft()

    def reset(self) -> None:
        self._queue.clear()

    # -- training ----------------------------------------------------------------------------------
    def compute_loss(self, batch, sigma=None):
        """Finetuning loss: action EDM loss (+ GIDM VQ loss). Batch keys: see the cache contract.

        sigma: optional fixed action noise level, for evaluation curves (default: log-normal)."""
        norm = self._require_normalizer()
        images = batch['observation.images']
        if self.training and self.cfg.image_shift_px > 0:
            images = random_shift(images, self.cfg.image_shift_px)
        lang = self.encode_instruction(batch['task'])   # encode() takes one string or a batch of them
        feats = self.forward_features(images, lang)
        codes, tokens, vq_loss = self._latent(feats, lang)
        state = batch.get('observation.state') if self.cfg.state_dim > 0 else None
        if self.cfg.state_dim > 0 and state is None:
            raise KeyError(f"batch is missing 'observation.state' (state_dim={self.cfg.state_dim})")
        ctx = self._context(feats, tokens, lang, state)
        actions = norm.normalize('action', batch['action'].to(self.device).float())
        is_pad = batch.get('action_is_pad')
        action_loss, mse = self.action_head.loss(ctx, actions, None if is_pad is None else is_pad.to(self.device),
                                                sigma=sigma)
        loss = action_loss + self.cfg.vq_loss_weight * vq_loss
        logs = {'loss': float(loss.detach()), 'action_loss': float(action_loss.detach()),
                'action_mse': float(mse), 'vq_loss': float(vq_loss.detach())}
        if self.gidm is not None:
            logs['codes_used'] = float(torch.unique(codes).numel())
        return loss, logs

    def forward(self, batch):
        return self.compute_loss(batch)
