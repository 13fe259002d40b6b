"""Configuration of a training run: dataclasses, YAML files in config/, `key=value` overrides.

One run = one `TrainConfig`. The YAML file mirrors the dataclasses; the command line then overrides
single keys with dotted names (`steps=200`, `optim.lr=3e-4`, `data.cache=/data/cache`,
`model.preset=tiny`, `model.idm_type=mlp`). `model.*` keys are not fixed here: `model.preset` picks a
defi_core preset and every other `model.<field>` is a field of defi_core's `DefiConfig` (checked in
validate(), so an unknown model key errors naming it before any data is loaded). The resolved config is written to
`run_dir/config.yaml` and read back by `--resume`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from defi_core import config_io

STAGES = ('gfdm', 'gidm', 'finetune')


ConfigError = config_io.ConfigError     # a config file or an override is wrong; the message names it


@dataclass
class DataConfig:
    cache: str = ''                 # path of an episode cache written by `defi-data build-cache`
    val_fraction: float = 0.1       # share of episodes held out for validation (split by episode)
    num_workers: int = 0            # DataLoader worker processes per rank
    pin_memory: bool = False


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    grad_clip: float = 1.0          # max global grad norm; 0 = off
    schedule: str = 'cosine'        # 'cosine' | 'linear' | 'constant' (all after linear warmup)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1       # final lr = lr * min_lr_ratio (cosine/linear)


@dataclass
class TrainConfig:
    stage: str = 'gfdm'                                 # 'gfdm' | 'gidm' | 'finetune'
    model: dict = field(default_factory=lambda: {'preset': 'tiny'})
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    steps: int = 1000                                   # optimizer steps in the whole run
    batch_size: int = 8                                 # per rank
    seed: int = 0
    device: str = 'auto'                                # 'auto' (cuda if available) | 'cpu' | 'cuda' | 'cuda:1'
    amp: str = 'auto'                                   # 'auto' (bf16 on GPU) | 'bf16' | 'none'; CPU is always fp32
    threads: int = 0                                    # torch threads on CPU; 0 = the CPUs this process may use
                                                        # (affinity / quota; OMP_NUM_THREADS wins), split per rank
    log_every: int = 10                                 # scalars to TensorBoard
    eval_every: int = 200                               # validation loss
    eval_batches: int = 8
    image_every: int = 500                              # sample predictions as images; 0 = off
    image_samples: int = 2
    sample_steps: int = 0                               # diffusion steps for image samples; 0 = model default
    ckpt_every: int = 500                               # atomic run checkpoints
    keep_checkpoints: int = 2                           # older run checkpoints are deleted
    find_unused_parameters: bool = True                 # DDP: frozen/unused branches are normal here
    gfdm_checkpoint: str = ''                           # finetune: GFDM stage export (a defi_core checkpoint dir)
    gidm_checkpoint: str = ''                           # finetune: GIDM stage export
    out_dir: str = ''                                   # run directory; '' = runs/<stage>-<date>
    progress: bool = True                               # tqdm bar on rank 0


# ---------------------------------------------------------------------------------------------------
# dict <-> dataclass, through defi_core's one config layer; errors read "config key 'optim.lr': ..."


def to_dict(cfg) -> dict:
    return config_io.to_dict(cfg)


def _keyed(err: ConfigError) -> ConfigError:
    """config_io's error worded as this tool's: "config key 'optim.lr': <problem>" or "unknown
    config key 'optim.lrr' (<why>)"."""
    if not err.key:
        return err
    if err.problem.startswith('unknown key'):
        return ConfigError(f'unknown config key {err.key!r}{err.problem[len("unknown key"):]}')
    return ConfigError(f'config key {err.key!r}: {err.problem}')


def from_dict(cls, data: dict, prefix: str = ''):
    """Build dataclass `cls` from a (possibly partial) dict; unknown keys error naming the key."""
    try:
        return config_io.from_dict(cls, data, prefix=prefix)
    except ConfigError as err:
        raise _keyed(err) from None


def validate(cfg: TrainConfig) -> TrainConfig:
    if cfg.stage not in STAGES:
        raise ConfigError(f"config key 'stage': expected one of {STAGES}, got {cfg.stage!r}")
    if cfg.optim.schedule not in ('cosine', 'linear', 'constant'):
        raise ConfigError(f"config key 'optim.schedule': expected cosine|linear|constant, got {cfg.optim.schedule!r}")
    if cfg.amp not in ('auto', 'bf16', 'none'):
        raise ConfigError(f"config key 'amp': expected auto|bf16|none, got {cfg.amp!r}")
    for key in ('steps', 'batch_size', 'log_every', 'eval_every', 'ckpt_every'):
        if getattr(cfg, key) < 1:
            raise ConfigError(f'config key {key!r}: must be >= 1, got {getattr(cfg, key)}')
    if not 0.0 <= cfg.data.val_fraction < 1.0:
        raise ConfigError(f"config key 'data.val_fraction': must be in [0, 1), got {cfg.data.val_fraction}")
    if not isinstance(cfg.model, dict):
        raise ConfigError("config key 'model': expected a mapping like {preset: tiny}")
    from defi_core.config import PRESETS, DefiConfig  # ROS-free, cheap: fail before loading data
    fields = {k: v for k, v in cfg.model.items() if k != 'preset'}
    if 'preset_name' in fields:
        raise ConfigError("config key 'model.preset_name': set model.preset instead")
    try:        # types checked before DefiConfig compares a value with a number
        config_io.check_fields(DefiConfig, fields, prefix='model.')
    except ConfigError as err:
        if err.problem.startswith('unknown key'):
            raise ConfigError(f'unknown config key {err.key!r} (not a field of defi_core DefiConfig)') from None
        raise _keyed(err) from None
    if cfg.model.get('preset', 'tiny') not in PRESETS:
        raise ConfigError(f"config key 'model.preset': expected one of {sorted(PRESETS)}, got {cfg.model['preset']!r}")
    return cfg


# ---------------------------------------------------------------------------------------------------
# overrides


parse_override = config_io.parse_override


def apply_overrides(cfg: TrainConfig, overrides: list[str]) -> TrainConfig:
    """Return a new TrainConfig with dotted `key=value` overrides applied (types checked).
    `model.<field>` keys are DefiConfig fields, checked against defi_core by validate()."""
    data = to_dict(cfg)
    try:
        config_io.apply_overrides(data, overrides, TrainConfig, open_sections=('model',))
    except ConfigError as err:
        raise _keyed(err) from None
    return validate(from_dict(TrainConfig, data))


# ---------------------------------------------------------------------------------------------------
# files


def load_train_config(path: str | Path | None, stage: str | None = None,
                      overrides: list[str] | None = None) -> TrainConfig:
    """YAML file (optional) -> TrainConfig, then `stage` and overrides applied."""
    data: dict = {}
    if path:
        data = config_io.read_yaml(path)
        try:
            cfg = from_dict(TrainConfig, data)
        except ConfigError as err:
            raise ConfigError(f'config file {path}: {err}') from None
    else:
        cfg = TrainConfig()
    if stage is not None:
        if path and 'stage' in data and data['stage'] != stage:
            raise ConfigError(f'config file {path} is for stage {data["stage"]!r}, not {stage!r}')
        cfg.stage = stage
    return apply_overrides(cfg, list(overrides or []))


def save_train_config(cfg: TrainConfig, path: str | Path) -> None:
    config_io.save(cfg, path)
