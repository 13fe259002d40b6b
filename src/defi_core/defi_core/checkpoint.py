"""Checkpoints: a directory with config.json (schema version), model.safetensors, stats.safetensors.

No pickle: tensors go through safetensors, everything else through JSON. Writes are atomic (a
temporary sibling directory renamed into place). Loading is strict and names what is wrong.
Older schema versions are migrated on read (read_meta); what the runtime needs to know about the
training data (fps, camera, action and state names) is read through checkpoint_facts().
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .config import SCHEMA_VERSION, DefiConfig
from .files import replace_directory, temp_directory_for
from .normalization import Normalizer

CONFIG_FILE = 'config.json'
MODEL_FILE = 'model.safetensors'
STATS_FILE = 'stats.safetensors'
STATS_JSON = 'stats.json'
KINDS = ('policy', 'gfdm', 'gidm')


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file, key, shape or schema."""


# DefiConfig fields that once travelled untyped in config.json's 'extra' (schema 1: extra.fps):
# save_checkpoint refuses them there, so that they are never written where no reader looks.
DATA_FACT_FIELDS = ('fps', 'action_names', 'state_names')


def save_tensors(tensors: dict, path, metadata: dict | None = None) -> None:
    """safetensors' save_file, whose I/O failures (a full disk, a read-only folder) come as a
    SafetensorError naming no file: raised here as an OSError naming `path`."""
    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as err:
        found = re.search(r'os error (\d+)', str(err))
        if not found:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), str(path)) from None


def error_at_destination(exc: OSError, tmp, dest) -> OSError:
    """`exc` naming the file under `dest` that failed under its temporary folder `tmp` (a user
    knows the checkpoint's name, not the hidden temporary's); a write on a full disk that names no
    file names `dest`."""
    name = str(exc.filename or '')
    if name and name != str(tmp) and not name.startswith(str(tmp) + os.sep):
        return exc
    rel = os.path.relpath(name, str(tmp)) if name else '.'
    where = Path(dest) if rel == '.' else Path(dest) / rel
    return OSError(exc.errno, exc.strerror or str(exc), str(where))


def _kind_of(module) -> str:
    from .models.gfdm import GFDM
    from .models.gidm import GIDM
    from .policy import DefiPolicy
    if isinstance(module, DefiPolicy):
        return 'policy'
    if isinstance(module, GFDM):
        return 'gfdm'
    if isinstance(module, GIDM):
        return 'gidm'
    raise TypeError(f'save_checkpoint: cannot save a {type(module).__name__} (need DefiPolicy, GFDM or GIDM)')


def save_checkpoint(dirpath, module, cfg: DefiConfig | None = None, stats=None, component: str | None = None,
                    extra: dict | None = None) -> Path:
    """Write a policy, or a GFDM / GIDM stage checkpoint (component='gfdm'|'gidm' on a policy, or pass
    policy.gfdm / policy.gidm). stats: a Normalizer or a stats dict; a policy needs stats (its own
    normalizer is used when stats is None). extra: JSON-able info (step, metrics, ...); the data's
    fps and names are DefiConfig fields (cfg.replace(fps=...)), not extra."""
    misplaced = sorted(set(extra or {}) & set(DATA_FACT_FIELDS))
    if misplaced:
        raise ValueError(f'save_checkpoint: extra={misplaced} are DefiConfig fields since checkpoint schema 2; '
                         f'pass cfg.replace({misplaced[0]}=...) instead')
    kind = _kind_of(module)
    if component is not None:
        if component not in ('gfdm', 'gidm') or kind != 'policy':
            raise ValueError(f"component={component!r}: use 'gfdm' or 'gidm' with a DefiPolicy")
        module = getattr(module, component)
        if module is None:
            raise ValueError(f'save_checkpoint: this policy has no {component} (idm_type/backbone switches)')
        kind = component
    cfg = cfg or module.cfg
    norm = None
    if stats is not None:
        norm = stats if isinstance(stats, Normalizer) else Normalizer(stats)
    elif kind == 'policy':
        norm = module.normalizer
    if kind == 'policy' and norm is None:
        raise ValueError('save_checkpoint: a policy checkpoint needs normalization stats '
                         '(pass stats= or call policy.set_normalization first)')
    dirpath = Path(dirpath)
    tmp = temp_directory_for(dirpath, overwrite=True)
    try:
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
        save_tensors(tensors, tmp / MODEL_FILE, metadata={'schema_version': str(SCHEMA_VERSION), 'kind': kind})
        meta = {'schema_version': SCHEMA_VERSION, 'kind': kind, 'config': cfg.to_dict(),
                'created': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()), 'extra': extra or {}}
        if norm is not None:
            save_tensors(norm.to_tensors(), tmp / STATS_FILE)
            (tmp / STATS_JSON).write_text(json.dumps(norm.to_json(), indent=1))
            meta['normalization_modes'] = norm.modes
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
        replace_directory(tmp, dirpath)
    except OSError as exc:                   # a full disk, a read-only folder
        shutil.rmtree(tmp, ignore_errors=True)
        raise error_at_destination(exc, tmp, dirpath) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dirpath


def _migrate_v1(meta: dict, path: Path) -> dict:
    """Schema 1 -> 2: the data rate moves from extra.fps (written by defi-train) to config.fps.
    Schema 1 recorded no action or state names: they stay () (unknown), and the runtime falls back
    as documented in CheckpointFacts."""
    extra = dict(meta.get('extra') or {})
    fps = extra.pop('fps', None)
    try:
        fps = float(fps or 0.0)
    except (TypeError, ValueError):
        raise CheckpointError(f'{path}: schema_version 1 with extra.fps={fps!r}, not a number; '
                              'fix it or remove it to migrate this checkpoint') from None
    config = dict(meta['config'])
    config.setdefault('fps', fps)
    return {**meta, 'schema_version': 2, 'config': config, 'extra': extra}


# version -> the function that lifts a config.json of that version by one
_MIGRATIONS = {1: _migrate_v1}


def read_meta(dirpath) -> dict:
    """config.json of a checkpoint, with its schema version and kind checked; an older schema
    version is migrated to SCHEMA_VERSION in memory ('migrated_from' then names the file's)."""
    dirpath = Path(dirpath)
    path = dirpath / CONFIG_FILE
    if not dirpath.is_dir():
        raise CheckpointError(f'{dirpath}: not a checkpoint directory')
    if not path.exists():
        raise CheckpointError(f'{path}: missing (not a DeFI checkpoint?)')
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f'{path}: invalid JSON ({err})') from None
    if not isinstance(meta, dict):
        raise CheckpointError(f'{path}: expected a JSON object, got {type(meta).__name__}')
    version = meta.get('schema_version')
    # an int, not a bool: true == 1 in Python
    known = version if isinstance(version, int) and not isinstance(version, bool) else None
    if known is None or (known != SCHEMA_VERSION and known not in _MIGRATIONS):
        readable = sorted([*_MIGRATIONS, SCHEMA_VERSION])
        newer = ' (written by a newer DeFI: update this one)' if known is not None and known > SCHEMA_VERSION else ''
        raise CheckpointError(f'{path}: unknown schema_version {version!r}{newer}; this code reads '
                              f'schema versions {readable} (older ones are migrated on read)')
    if meta.get('kind') not in KINDS:
        raise CheckpointError(f'{path}: unknown kind {meta.get("kind")!r} (expected one of {KINDS})')
    if not isinstance(meta.get('config'), dict):
        raise CheckpointError(f'{path}: missing "config" mapping')
    version = known
    while version != SCHEMA_VERSION:        # each migration lifts the version by one
        meta = _MIGRATIONS[version](meta, path)
        version = int(meta['schema_version'])
    if known != SCHEMA_VERSION:
        meta['migrated_from'] = known
    return meta


def load_config_from(dirpath, meta: dict | None = None) -> DefiConfig:
    """The DefiConfig of a checkpoint (meta: its read_meta(), when the caller already has it)."""
    meta = meta or read_meta(dirpath)
    path = Path(dirpath) / CONFIG_FILE
    try:
        return DefiConfig.from_dict(meta['config'], source=str(path), field_prefix='config.')
    except (ValueError, TypeError) as err:
        text = str(err)
        raise CheckpointError(text if text.startswith(str(path)) else f'{path}: {text}') from None


def _read_tensors(path: Path) -> dict:
    if not path.exists():
        raise CheckpointError(f'{path}: missing')
    try:
        with safe_open(str(path), framework='pt', device='cpu') as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f'{path}: cannot read safetensors ({err})') from None


def _check_finite(tensors: dict, source: str) -> None:
    """Refuse weights holding NaN/Inf (a diverged run): such a policy outputs NaN actions.
    One isfinite pass over the weights, cheap next to reading them."""
    for k, v in tensors.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise CheckpointError(f'{source}: weight {k!r} holds NaN or infinite values '
                                  '(the training run diverged?); refusing to load it')


def _strict_load(module: torch.nn.Module, tensors: dict, source: str) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        raise CheckpointError(f'{source}: missing key(s) {missing[:10]}{" ..." if len(missing) > 10 else ""}')
    if unexpected:
        raise CheckpointError(f'{source}: unexpected key(s) {unexpected[:10]}{" ..." if len(unexpected) > 10 else ""}')
    for k, v in expected.items():
        if tuple(tensors[k].shape) != tuple(v.shape):
            raise CheckpointError(f'{source}: key {k!r} has shape {tuple(tensors[k].shape)}, '
                                  f'the model expects {tuple(v.shape)}')
        if tensors[k].dtype != v.dtype:
            raise CheckpointError(f'{source}: key {k!r} has dtype {tensors[k].dtype}, the model expects {v.dtype}')
    _check_finite(tensors, source)
    module.load_state_dict(tensors, strict=True)


def load_stats(dirpath, meta: dict | None = None) -> Normalizer:
    dirpath = Path(dirpath)
    path = dirpath / STATS_FILE
    if not path.exists():
        raise CheckpointError(f'{path}: missing - this checkpoint has no normalization statistics')
    modes = (meta or read_meta(dirpath)).get('normalization_modes')
    return Normalizer.from_tensors(_read_tensors(path), modes, source=str(path))


def load_policy(dirpath, device='cpu', text_encoder=None, **cfg_overrides):
    """A DefiPolicy from a policy checkpoint, in eval mode, with its normalization stats.

    cfg_overrides may change only fields that do not affect weights (e.g. sampling_steps)."""
    from .policy import DefiPolicy
    dirpath = Path(dirpath)
    meta = read_meta(dirpath)
    if meta['kind'] != 'policy':
        raise CheckpointError(f'{dirpath / CONFIG_FILE}: kind is {meta["kind"]!r}, load_policy needs a policy '
                              f'checkpoint (use load_state_into(policy, path, component={meta["kind"]!r}))')
    cfg = load_config_from(dirpath, meta)
    if cfg_overrides:
        cfg = cfg.replace(**cfg_overrides)
    policy = DefiPolicy(cfg, text_encoder=text_encoder)
    _strict_load(policy, _read_tensors(dirpath / MODEL_FILE), str(dirpath / MODEL_FILE))
    policy.set_normalization(load_stats(dirpath, meta))
    return policy.to(device).eval()


def load_component(dirpath, device='cpu', text_encoder=None):
    """A standalone GFDM or GIDM from a stage checkpoint (e.g. to resume pretraining)."""
    from .models.gfdm import GFDM
    from .models.gidm import GIDM
    meta = read_meta(dirpath)
    if meta['kind'] not in ('gfdm', 'gidm'):
        raise CheckpointError(f'{Path(dirpath) / CONFIG_FILE}: kind is {meta["kind"]!r}, not a stage checkpoint')
    cfg = load_config_from(dirpath, meta)
    module = (GFDM if meta['kind'] == 'gfdm' else GIDM)(cfg, text_encoder)
    _strict_load(module, _read_tensors(Path(dirpath) / MODEL_FILE), str(Path(dirpath) / MODEL_FILE))
    return module.to(device)


def load_state_into(policy, dirpath, component: str) -> None:
    """Load a GFDM or GIDM stage checkpoint into the coupled policy's component, strictly."""
    dirpath = Path(dirpath)
    if component not in ('gfdm', 'gidm'):
        raise ValueError(f"component must be 'gfdm' or 'gidm', got {component!r}")
    meta = read_meta(dirpath)
    if meta['kind'] != component:
        raise CheckpointError(f'{dirpath / CONFIG_FILE}: kind is {meta["kind"]!r}, expected {component!r}')
    target = getattr(policy, component, None)
    if target is None:
        raise CheckpointError(f'{dirpath}: the policy has no {component} (backbone={policy.cfg.backbone!r}, '
                              f'idm_type={policy.cfg.idm_type!r})')
    _strict_load(target, _read_tensors(dirpath / MODEL_FILE), str(dirpath / MODEL_FILE))
    policy.apply_trainable_flags()


# ------------------------------------------------------------------------------------------------
# What the runtime needs to know about the training data, in one place.

@dataclass(frozen=True)
class CheckpointFacts:
    """Facts of a checkpoint's training data (DefiConfig fields, set by defi-train from the episode
    cache). Unknown facts (checkpoints saved by hand, or schema 1, which recorded no names):
    fps = 0 -> chunk_dt_s is None (the caller says what it falls back to); action_names = () -> the
    action decoder names the columns a0, a1, ...; state_names = () -> JointState positions are taken
    in order (exactly state_dim of them)."""
    fps: float
    cameras: tuple
    action_names: tuple
    state_names: tuple
    action_dim: int
    state_dim: int

    @property
    def chunk_dt_s(self) -> float | None:
        """Seconds between the steps of an action chunk (one per training-data frame)."""
        return 1.0 / self.fps if self.fps > 0 else None


def checkpoint_facts(source) -> CheckpointFacts:
    """The training data's facts of a checkpoint directory, a loaded policy (or component) or a
    DefiConfig. The one reader of fps / names: nodes and evaluation go through here."""
    cfg = source if isinstance(source, DefiConfig) else getattr(source, 'cfg', None)
    if cfg is None:
        if not isinstance(source, (str, os.PathLike)):
            raise TypeError(f'checkpoint_facts: need a checkpoint directory, a policy or a DefiConfig, '
                            f'got {type(source).__name__}')
        cfg = load_config_from(source)
    return CheckpointFacts(fps=float(cfg.fps), cameras=tuple(cfg.cameras), action_names=tuple(cfg.action_names),
                           state_names=tuple(cfg.state_names), action_dim=int(cfg.action_dim),
                           state_dim=int(cfg.state_dim))
