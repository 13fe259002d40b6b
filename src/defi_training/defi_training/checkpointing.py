"""Atomic run checkpoints for exact resume: safetensors + JSON only (no pickle).

A run checkpoint is a directory `run_dir/checkpoints/step_XXXXXXXX/`:

    config.json, model.safetensors, stats.*   the policy, written by defi_core's save_checkpoint
                                             (so `load_policy` opens any run checkpoint too)
    optimizer.safetensors + optimizer.json    every optimizer state tensor / the param groups
    rng_rank<R>.safetensors                   torch (+cuda), numpy and python RNG states of rank R
    trainer_state.json                        step, data-sampler position, lr schedule, world size

It is written into a hidden temporary directory that is renamed into place with os.replace, so a
process killed at any moment leaves either the previous checkpoint or the new one, never half of one.
`load_run_weights` puts a run checkpoint's weights back into the live policy; `isolated_rng` runs a
block under a fixed seed and restores every RNG state afterwards.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load as st_load_bytes
from safetensors.torch import load_file, save

from defi_core.checkpoint import error_at_destination, load_state_into, save_tensors
from defi_core.files import remove_stale_temporaries, replace_directory
from defi_training.distributed import seed_everything

CKPT_PREFIX = 'step_'
TRAINER_STATE = 'trainer_state.json'


# ---------------------------------------------------------------------------------------------------
# RNG states <-> safetensors bytes


def capture_rng_state() -> bytes:
    """This process's torch/cuda/numpy/python RNG states as one safetensors blob."""
    tensors = {'torch': torch.get_rng_state().clone()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f'cuda.{i}'] = s.clone()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors['numpy.keys'] = torch.from_numpy(np.asarray(keys, dtype=np.uint32).astype(np.int64))
    py_version, py_state, py_gauss = random.getstate()
    tensors['python.state'] = torch.tensor(py_state, dtype=torch.int64)
    meta = {
        'numpy': json.dumps({'kind': kind, 'pos': int(pos), 'has_gauss': int(has_gauss),
                             'cached_gaussian': float(cached)}),
        'python': json.dumps({'version': py_version, 'gauss_next': py_gauss}),
    }
    return save(tensors, metadata=meta)


def restore_rng_state(blob: bytes) -> None:
    tensors = st_load_bytes(blob)
    meta = _safetensors_metadata_from_bytes(blob)
    torch.set_rng_state(tensors['torch'])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith('cuda.')),
                                       key=lambda k: int(k.split('.')[1]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    np_meta = json.loads(meta['numpy'])
    keys = tensors['numpy.keys'].numpy().astype(np.uint32)
    np.random.set_state((np_meta['kind'], keys, np_meta['pos'], np_meta['has_gauss'], np_meta['cached_gaussian']))
    py_meta = json.loads(meta['python'])
    py_state = tuple(int(x) for x in tensors['python.state'].tolist())
    random.setstate((py_meta['version'], py_state, py_meta['gauss_next']))


@contextlib.contextmanager
def isolated_rng(seed: int):
    """Run a block under a fixed seed and put every RNG state back afterwards (validation and the
    TensorBoard images, so they never shift the training noise)."""
    saved = capture_rng_state()
    seed_everything(seed)
    try:
        yield
    finally:
        restore_rng_state(saved)


def _safetensors_metadata_from_bytes(blob: bytes) -> dict:
    header_len = int.from_bytes(blob[:8], 'little')
    header = json.loads(blob[8:8 + header_len])
    return header.get('__metadata__', {}) or {}


# ---------------------------------------------------------------------------------------------------
# optimizer state <-> safetensors + JSON


def optimizer_state_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """(tensors for safetensors, JSON-able rest). Tensor keys: 'state.<param_index>.<name>'."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, pstate in sd['state'].items():
        for name, value in pstate.items():
            key = f'state.{pid}.{name}'
            if torch.is_tensor(value):
                tensors[key] = value.detach().to('cpu').contiguous().clone()
            else:
                scalars[key] = value
    groups = []
    for g in sd['param_groups']:
        group = {}
        for k, v in g.items():
            group[k] = list(v) if isinstance(v, tuple) else v
        groups.append(group)
    return tensors, {'param_groups': groups, 'scalars': scalars, 'format': 'defi_optimizer_v1'}


def optimizer_state_from_files(tensors: dict, meta: dict) -> dict:
    state: dict = {}
    for key, value in list(tensors.items()) + list(meta.get('scalars', {}).items()):
        _, pid, name = key.split('.', 2)
        state.setdefault(int(pid), {})[name] = value
    groups = []
    for g in meta['param_groups']:
        group = dict(g)
        if 'betas' in group:
            group['betas'] = tuple(group['betas'])
        groups.append(group)
    return {'state': state, 'param_groups': groups}


# ---------------------------------------------------------------------------------------------------
# run checkpoints


def checkpoint_name(step: int) -> str:
    return f'{CKPT_PREFIX}{step:08d}'


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete run checkpoints, oldest first (temporary directories are ignored)."""
    root = Path(run_dir) / 'checkpoints'
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir()
             if p.is_dir() and p.name.startswith(CKPT_PREFIX) and (p / TRAINER_STATE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(CKPT_PREFIX):]))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def save_run_checkpoint(run_dir: str | Path, step: int, *, export_policy: Callable[[Path], None],
                        optimizer: torch.optim.Optimizer, rng_blobs: list[bytes], trainer_state: dict,
                        keep: int = 2) -> Path:
    """Write checkpoint `step` atomically; keep the newest `keep` (0 = keep all). Returns its path."""
    root = Path(run_dir) / 'checkpoints'
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    # before writing: a run that died on a full disk left its temporaries, and their space is
    # needed now
    remove_stale_temporaries(root)
    tmp = root / f'.tmp-{checkpoint_name(step)}-{os.getpid()}'
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        export_policy(tmp)                   # defi_core save_checkpoint creates the directory
        tmp.mkdir(parents=True, exist_ok=True)
        opt_tensors, opt_meta = optimizer_state_to_files(optimizer)
        save_tensors(opt_tensors, tmp / 'optimizer.safetensors')
        _write_json(tmp / 'optimizer.json', opt_meta)
        for rank, blob in enumerate(rng_blobs):
            (tmp / f'rng_rank{rank}.safetensors').write_bytes(blob)
        _write_json(tmp / TRAINER_STATE, {**trainer_state, 'step': step, 'world_size': len(rng_blobs)})
        _fsync_dir_files(tmp)
        replace_directory(tmp, final)        # final exists when a step is saved again (after a resume)
    except OSError as exc:                   # a full disk: name the checkpoint, not the temporary
        shutil.rmtree(tmp, ignore_errors=True)
        raise error_at_destination(exc, tmp, final) from None
    except BaseException:
        # Ctrl-C / SIGTERM while writing: no half checkpoint left behind (the older ones stay)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep > 0:
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    # leftovers of killed runs and of our own failed saves; a live writer's stay
    remove_stale_temporaries(root, include_own=True)
    return final


def load_run_checkpoint(path: str | Path, rank: int = 0) -> dict:
    """{'trainer_state', 'optimizer' (a state_dict), 'rng' (blob of `rank`), 'path'}."""
    path = Path(path)
    state_file = path / TRAINER_STATE
    if not state_file.is_file():
        raise FileNotFoundError(f'not a run checkpoint (no {TRAINER_STATE}): {path}')
    trainer_state = json.loads(state_file.read_text())
    opt_tensors = load_file(str(path / 'optimizer.safetensors'))
    opt_meta = json.loads((path / 'optimizer.json').read_text())
    rng_file = path / f'rng_rank{rank}.safetensors'
    if not rng_file.is_file():
        raise FileNotFoundError(f'{path} holds no RNG state for rank {rank} (saved with world size '
                                f'{trainer_state.get("world_size")}); resume with the same number of processes')
    return {'trainer_state': trainer_state, 'optimizer': optimizer_state_from_files(opt_tensors, opt_meta),
            'rng': rng_file.read_bytes(), 'path': path}


def load_run_weights(policy, ckpt_dir: Path, stage: str) -> None:
    """Exact weights of a run checkpoint back into the live policy (strict): the whole policy's
    model.safetensors (finetune), or the stage's component (gfdm / gidm) through defi_core."""
    if stage == 'finetune':
        policy.load_state_dict(load_file(str(Path(ckpt_dir) / 'model.safetensors')), strict=True)
    else:
        load_state_into(policy, ckpt_dir, stage)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True))


def _fsync_dir_files(directory: Path) -> None:
    for p in directory.rglob('*'):
        if p.is_file():
            with open(p, 'rb') as f:
                os.fsync(f.fileno())
