"""DefiConfig: one dataclass for the whole model, presets, YAML/JSON IO.

Everything shape-related (image size, cameras, horizon, action dim, future frames, frame gap) lives
here, never as constants in the model code.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import config_io

# Checkpoint schema (config.json). 2: the training data's facts (fps, action and state names) are
# DefiConfig fields; version-1 checkpoints are migrated on read (defi_core.checkpoint.read_meta).
SCHEMA_VERSION = 2

IDM_TYPES = ('gidm', 'mlp', 'transformer', 'none')
BACKBONES = ('gfdm', 'scratch')
TEXT_ENCODERS = ('minilm', 'hash')


@dataclass
class DefiConfig:
    preset_name: str = 'tiny'
    # --- data shapes -------------------------------------------------------------------------
    image_size: int = 64                 # square images, H = W = image_size
    cameras: tuple[str, ...] = ('front',)  # view names; images are stacked in this order
    state_dim: int = 0                   # 0 = no proprioception input
    action_dim: int = 4
    horizon: int = 10                    # action chunk length
    n_action_steps: int = 0              # actions popped per chunk by select_action (0 = horizon)
    # --- facts of the training data (set by defi-train from the episode cache; no weight depends
    # on them, the runtime reads them through defi_core.checkpoint.checkpoint_facts) ------------
    fps: float = 0.0                     # frames (= action steps) per second: chunk dt = 1/fps; 0 = unknown
    action_names: tuple[str, ...] = ()   # one per action column; () = unknown (runtime: a0, a1, ...)
    state_names: tuple[str, ...] = ()    # one per observation.state value (joint names); () = unknown
    num_future_frames: int = 4           # T: frames GFDM predicts (t+s, ..., t+T*s)
    future_stride: int = 1               # s: frames between predicted frames
    frame_gap: int = 4                   # k: frames between the two GIDM frames (about 1 s)
    # --- language ----------------------------------------------------------------------------
    text_encoder: str = 'minilm'         # 'minilm' (all-MiniLM-L6-v2, offline) | 'hash' (tests)
    text_dim: int = 384                  # output width of the text encoder
    # --- GFDM: video diffusion transformer ---------------------------------------------------
    patch_size: int = 8                  # shared by GFDM, GIDM and the scratch encoder
    gfdm_dim: int = 64
    gfdm_depth: int = 2
    gfdm_heads: int = 4
    gfdm_feature_layer: int = 0          # blocks run by features(); 0 = all blocks
    gfdm_sampling_steps: int = 10
    gfdm_residual: bool = True           # diffuse future - current frame (most pixels do not move)
    sigma_data: float = 0.5
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    p_mean: float = -1.2                 # log-normal training sigma: ln(sigma) ~ N(p_mean, p_std^2)
    p_std: float = 1.2
    gfdm_sigma_max_prob: float = 0.1     # share of GFDM training samples at exactly sigma_max: the
                                         # level features() runs at, far in the log-normal's tail
    gfdm_p_mean: float | None = None     # GFDM's own training-sigma log-normal mean; None = p_mean
    gfdm_p_std: float | None = None      # its std; None = p_std (p_mean / p_std: the action head's)
    gfdm_sample_sigma_max: float = 0.0   # sampler's first sigma; 0 = sigma_max (features() always
                                         # reads sigma_max)
    gfdm_warp_radius: int = 0            # > 0: each token also predicts a softmax over the
                                         # (2r+1)^2 pixel shifts of the current frame, and the
                                         # diffusion models the deviation from that warped frame
    # --- Video Former ------------------------------------------------------------------------
    vf_dim: int = 64
    vf_depth: int = 1
    vf_heads: int = 4
    vf_queries_per_frame: int = 4
    # --- GIDM --------------------------------------------------------------------------------
    gidm_dim: int = 64
    gidm_encoder_depth: int = 1          # frame encoder (pretraining input path)
    gidm_depth: int = 2                  # spatio-temporal transformer with causal temporal mask
    gidm_decoder_depth: int = 1          # reconstructs frame t+k tokens (pretraining only)
    gidm_heads: int = 4
    num_action_queries: int = 4
    codebook_size: int = 16
    code_dim: int = 32
    commitment_beta: float = 0.25
    dead_code_threshold: float = 0.1     # EMA usage below this x uniform (1/K) -> code restarted
    code_usage_decay: float = 0.95       # from an encoder output (about 45 unused steps)
    gidm_pixel_loss_weight: float = 1.0  # anchors the learned frame encoder against collapse
    # --- action head: EDM diffusion transformer ----------------------------------------------
    head_dim: int = 64
    head_encoder_depth: int = 2
    head_decoder_depth: int = 2
    head_heads: int = 4
    sampling_steps: int = 10             # deterministic sampler steps for actions
    head_sampler: str = 'euler'          # 'euler' (1 eval/step, DDIM-like) | 'heun'
    action_noise_scale: float = 1.0      # inference: the sampler starts from this x N(0, 1) noise;
                                         # 0 = deterministic, the same chunk for the same
                                         # observation (the shipped checkpoint's; at 48000 steps
                                         # 94.5% unseen against 88% at 1, policy_diagnosis.md)
    action_sigma_data: float = 0.5
    action_sigma_min: float = 0.001
    action_sigma_max: float = 80.0
    vq_loss_weight: float = 1.0          # weight of GIDM's VQ loss during finetuning
    image_shift_px: int = 0              # finetuning augmentation: every view shifted by up to this
                                         # many pixels (edge-padded random crop, as in DrQ); 0 = off
    head_context_skip: bool = False      # a linear map from the mean context token straight to the
                                         # chunk, added to the decoder's output: the decoder alone is
                                         # slow to let the image move the chunk (policy_diagnosis.md
                                         # rows 31-34; the shipped checkpoint has it)
    # --- ablation switches -------------------------------------------------------------------
    backbone: str = 'gfdm'               # 'gfdm' | 'scratch' (BC baseline: image encoder, no video model)
    gfdm_pretrained: bool = True         # False: GFDM starts random and is trained during finetuning
    gidm_pretrained: bool = True         # False: training does not load a GIDM stage checkpoint
    idm_type: str = 'gidm'               # 'gidm' | 'mlp' | 'transformer' | 'none' (adapter only)
    train_gfdm: bool = False             # True: GFDM receives gradients during finetuning
    seed: int = 0

    def __post_init__(self):
        self.cameras = tuple(self.cameras)
        self.action_names = tuple(self.action_names)
        self.state_names = tuple(self.state_names)
        self.validate()

    # ------------------------------------------------------------------------------------------
    @property
    def num_views(self) -> int:
        return len(self.cameras)

    @property
    def patches_per_view(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def tokens_per_frame(self) -> int:
        return self.num_views * self.patches_per_view

    @property
    def feature_frames(self) -> int:
        """Frames in forward_features' output: T for GFDM, 1 for the scratch encoder."""
        return self.num_future_frames if self.backbone == 'gfdm' else 1

    @property
    def feature_dim(self) -> int:
        return self.gfdm_dim

    @property
    def gap_feature_index(self) -> int:
        """Index of the predicted frame nearest to t+k (feature frame j is time t+(j+1)*s)."""
        j = round(self.frame_gap / self.future_stride) - 1
        return max(0, min(self.num_future_frames - 1, j))

    @property
    def gfdm_trainable(self) -> bool:
        return self.train_gfdm or not self.gfdm_pretrained

    @property
    def actions_per_chunk(self) -> int:
        return self.n_action_steps or self.horizon

    def validate(self) -> None:
        def bad(name, why):
            raise ValueError(f'DefiConfig.{name}={getattr(self, name)!r}: {why}')
        if self.image_size <= 0 or self.image_size % self.patch_size:
            bad('image_size', f'must be a positive multiple of patch_size={self.patch_size}')
        if not self.cameras or len(set(self.cameras)) != len(self.cameras):
            bad('cameras', 'must be a non-empty tuple of distinct view names')
        for name in ('action_dim', 'horizon', 'num_future_frames', 'future_stride', 'frame_gap',
                     'num_action_queries', 'codebook_size', 'sampling_steps', 'text_dim'):
            if getattr(self, name) <= 0:
                bad(name, 'must be > 0')
        if self.state_dim < 0:
            bad('state_dim', 'must be >= 0')
        if not 0 <= self.fps < float('inf'):        # also refuses NaN
            bad('fps', 'must be a finite number >= 0 (0 = unknown)')
        for name, dim in (('action_names', self.action_dim), ('state_names', self.state_dim)):
            names = getattr(self, name)
            if names and (len(names) != dim or len(set(names)) != len(names)):
                bad(name, f'must be empty or {dim} distinct names ({name[:-6]}_dim={dim})')
        if not 0 <= self.image_shift_px < self.image_size // 2:
            bad('image_shift_px', f'must be in [0, image_size/2={self.image_size // 2})')
        if not 0 <= self.n_action_steps <= self.horizon:
            bad('n_action_steps', f'must be in [0, horizon={self.horizon}]')
        if self.gfdm_warp_radius < 0:
            bad('gfdm_warp_radius', 'must be >= 0')
        if self.gfdm_sample_sigma_max < 0:
            bad('gfdm_sample_sigma_max', 'must be >= 0 (0 = sigma_max)')
        if not 0 <= self.gfdm_feature_layer <= self.gfdm_depth:
            bad('gfdm_feature_layer', f'must be in [0, gfdm_depth={self.gfdm_depth}]')
        for name in ('gfdm', 'vf', 'gidm', 'head'):
            if getattr(self, f'{name}_dim') % getattr(self, f'{name}_heads'):
                bad(f'{name}_dim', f'must be divisible by {name}_heads')
        if self.idm_type not in IDM_TYPES:
            bad('idm_type', f'must be one of {IDM_TYPES}')
        if self.backbone not in BACKBONES:
            bad('backbone', f'must be one of {BACKBONES}')
        if self.text_encoder not in TEXT_ENCODERS:
            bad('text_encoder', f'must be one of {TEXT_ENCODERS}')
        if self.text_encoder == 'minilm' and self.text_dim != 384:
            bad('text_dim', "must be 384 with text_encoder='minilm'")
        if not 0.0 <= self.action_noise_scale <= 10.0:
            bad('action_noise_scale', 'must be within [0, 10] (1 = sample, 0 = deterministic)')
        if self.head_sampler not in ('euler', 'heun'):
            bad('head_sampler', "must be 'euler' or 'heun'")
        if self.backbone == 'scratch' and self.idm_type != 'none':
            bad('idm_type', "backbone='scratch' predicts no future frames; use idm_type='none'")

    # ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return config_io.to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = 'config', field_prefix: str = '') -> 'DefiConfig':
        """field_prefix: how the fields are named inside `source` (e.g. 'config.' in a checkpoint's
        config.json), for the error message. A wrong-typed value names its field ('config.horizon:
        expected an integer, got 'ten'') instead of failing in a comparison inside validate()."""
        try:
            return config_io.from_dict(cls, d, prefix=field_prefix)
        except config_io.ConfigError as err:
            raise config_io.ConfigError(f'{source}: {err}') from None

    def replace(self, **overrides) -> 'DefiConfig':
        return self.from_dict({**self.to_dict(), **overrides}, source='overrides')


# Preset sizes. tiny: tests (< 2M params). base: CPU benchmark (<= 50 ms per chunk on 2 threads).
# large: GPU, closer to the paper (head 4+4 layers x 384, Video Former 14 queries per frame).
PRESETS: dict[str, dict[str, Any]] = {
    'tiny': dict(),
    'base': dict(
        image_size=64, patch_size=8, num_future_frames=4,
        gfdm_dim=128, gfdm_depth=4, gfdm_heads=4, gfdm_feature_layer=3,
        vf_dim=128, vf_depth=2, vf_heads=4, vf_queries_per_frame=8,
        gidm_dim=128, gidm_encoder_depth=2, gidm_depth=3, gidm_decoder_depth=2, gidm_heads=4,
        code_dim=64, head_dim=128, head_encoder_depth=3, head_decoder_depth=3, head_heads=4,
    ),
    'large': dict(
        image_size=128, patch_size=16, num_future_frames=8, future_stride=2, frame_gap=8,
        gfdm_dim=384, gfdm_depth=12, gfdm_heads=6, gfdm_feature_layer=8,
        vf_dim=384, vf_depth=4, vf_heads=6, vf_queries_per_frame=14,
        gidm_dim=384, gidm_encoder_depth=4, gidm_depth=6, gidm_decoder_depth=4, gidm_heads=6,
        code_dim=128, head_dim=384, head_encoder_depth=4, head_decoder_depth=4, head_heads=6,
    ),
}


def preset(name: str, **overrides) -> DefiConfig:
    """A preset config with overrides, e.g. preset('tiny', action_dim=7, cameras=('front', 'wrist'))."""
    if name not in PRESETS:
        raise ValueError(f'unknown preset {name!r}; choose one of {sorted(PRESETS)}')
    return DefiConfig.from_dict({**PRESETS[name], 'preset_name': name, **overrides}, source=f'preset({name!r})')


def load_config(path) -> DefiConfig:
    """Read a config from YAML or JSON (YAML is a superset of JSON). A top-level 'preset' key
    starts from that preset; a top-level 'model' section (a training config) is read too."""
    data = config_io.read_yaml(path, 'model config')
    data = dict(data.get('model', data))
    name = data.pop('preset', None)
    if name is not None:
        try:
            return preset(name, **data)
        except ValueError as err:
            raise config_io.ConfigError(f'{path}: {err}') from None
    return DefiConfig.from_dict(data, source=str(path))


def save_config(cfg: DefiConfig, path) -> None:
    path = Path(path)
    if path.suffix in ('.yaml', '.yml'):
        config_io.save(cfg, path)
    else:
        path.write_text(json.dumps(cfg.to_dict(), indent=2))
