"""Configuration of a training run: dataclasses, YAML files in config/, `key=value` overrides.

One run = one `TrainConfig`. The YAML file mirrors the dataclasses; the command line then overrides
single keys with dotted names (`steps=200`, `optim.lr=3e-4`, `data.cache=/data/cache`,
`model.preset=tiny`, `model.idm_type=mlp`). `model.*` keys are not fixed here: `model.preset` picks a
defi_core preset and every other `model.<field>` is a field of defi_core's `DefiConfig` (checked in
validate(), so an unknown model key errors naming it before any data is loaded). The resolved config is written to
`run_dir/config.yaml` and read back by `--resume`.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

STAGES = ('gfdm', 'gidm', 'finetune')


class ConfigError(ValueError):
    """A config file or an override is wrong; the message names the key or the file."""


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
# dict <-> dataclass


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Check/convert one leaf value to the annotated type; errors name the key."""
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ('true', 'false', '1', '0', 'yes', 'no'):
            return value.lower() in ('true', '1', 'yes')
        raise ConfigError(f'config key {key!r}: expected true/false, got {value!r}')
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f'config key {key!r}: expected an integer, got {value!r}')
        try:
            as_float = float(value)
        except ValueError:
            raise ConfigError(f'config key {key!r}: expected an integer, got {value!r}') from None
        if as_float != int(as_float):
            raise ConfigError(f'config key {key!r}: expected an integer, got {value!r}')
        return int(as_float)
    if typ is float:
        if isinstance(value, bool):
            raise ConfigError(f'config key {key!r}: expected a number, got {value!r}')
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f'config key {key!r}: expected a number, got {value!r}') from None
    if typ is str:
        if value is None:
            return ''
        if isinstance(value, (dict, list)):
            raise ConfigError(f'config key {key!r}: expected a string, got {value!r}')
        return str(value)
    if typ is dict or typing.get_origin(typ) is dict:
        if not isinstance(value, dict):
            raise ConfigError(f'config key {key!r}: expected a mapping, got {value!r}')
        return dict(value)
    return value


def from_dict(cls, data: dict, prefix: str = ''):
    """Build dataclass `cls` from a (possibly partial) dict; unknown keys error naming the key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f'config section {prefix.rstrip(".") or "<root>"!r}: expected a mapping, got {data!r}')
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        full = f'{prefix}{key}'
        if key not in names:
            raise ConfigError(f'unknown config key {full!r} (known in this section: {", ".join(sorted(names))})')
        typ = hints[key]
        if dataclasses.is_dataclass(typ):
            kwargs[key] = from_dict(typ, value, prefix=f'{full}.')
        else:
            kwargs[key] = _coerce(value, typ, full)
    cfg = cls(**kwargs)
    return cfg


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
    from defi_core.config import PRESETS, DefiConfig, field_type_error  # ROS-free, cheap: fail before loading data
    known = {f.name for f in dataclasses.fields(DefiConfig)} - {'preset_name'}
    for key, value in cfg.model.items():
        if key != 'preset' and key not in known:
            raise ConfigError(f'unknown config key {"model." + key!r} (not a field of defi_core DefiConfig)')
        problem = field_type_error(key, value)     # before DefiConfig compares it with a number
        if problem:
            raise ConfigError(f'config key {"model." + key!r}: {problem}')
    if cfg.model.get('preset', 'tiny') not in PRESETS:
        raise ConfigError(f"config key 'model.preset': expected one of {sorted(PRESETS)}, got {cfg.model['preset']!r}")
    return cfg


# ---------------------------------------------------------------------------------------------------
# overrides


def parse_override(text: str) -> tuple[str, Any]:
    """'optim.lr=3e-4' -> ('optim.lr', 0.0003). Values are parsed as YAML scalars/lists."""
    if '=' not in text:
        raise ConfigError(f'override {text!r}: expected key=value')
    key, raw = text.split('=', 1)
    key = key.strip()
    if not key:
        raise ConfigError(f'override {text!r}: empty key')
    try:
        value = yaml.safe_load(raw) if raw.strip() else ''
    except yaml.YAMLError:
        value = raw
    return key, value


def apply_overrides(cfg: TrainConfig, overrides: list[str]) -> TrainConfig:
    """Return a new TrainConfig with dotted `key=value` overrides applied (types checked)."""
    data = to_dict(cfg)
    for text in overrides:
        key, value = parse_override(text)
        parts = key.split('.')
        if parts[0] == 'model':
            # model.* keys are DefiConfig fields, checked against defi_core when the model is built.
            if len(parts) != 2:
                raise ConfigError(f'unknown config key {key!r}: model keys look like model.<field>')
            data['model'][parts[1]] = value
            continue
        node: dict = data
        cls: type = TrainConfig
        for depth, part in enumerate(parts):
            hints = typing.get_type_hints(cls)
            if part not in hints:
                known = ', '.join(sorted(hints))
                raise ConfigError(f'unknown config key {key!r} (no {part!r} here; known: {known})')
            typ = hints[part]
            last = depth == len(parts) - 1
            if isinstance(typ, type) and dataclasses.is_dataclass(typ):
                if last:
                    raise ConfigError(f'config key {key!r} is a section; set one of its fields, e.g. {key}.<field>=...')
                node, cls = node[part], typ
            else:
                if not last:
                    raise ConfigError(f'unknown config key {key!r} ({".".join(parts[:depth + 1])!r} is not a section)')
                node[part] = value
    return validate(from_dict(TrainConfig, data))


# ---------------------------------------------------------------------------------------------------
# files


def load_train_config(path: str | Path | None, stage: str | None = None,
                      overrides: list[str] | None = None) -> TrainConfig:
    """YAML file (optional) -> TrainConfig, then `stage` and overrides applied."""
    data: dict = {}
    if path:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f'config file not found: {path}')
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f'config file {path}: not valid YAML: {err}') from None
        if not isinstance(data, dict):
            raise ConfigError(f'config file {path}: expected a mapping at the top level')
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    tmp.replace(path)
