"""Two-process DDP (gloo on CPU) through torchrun: the run completes and both ranks end with the
same weights (real synthetic bags -> real cache, tiny preset)."""
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from defi_core.checkpoint import load_component
from defi_core.models.gidm import GIDM
from defi_training.cache import build_cache
from defi_training.topic_map import ActionSpec, TopicMap
from train_data import synthetic_bags


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp('ddp_data')
    bags = synthetic_bags(root, storages=('sqlite3',) * 3, instructions=('push the block',))
    return build_cache(bags, root / 'cache', TopicMap(image_size=32, action=ActionSpec(source='none'))).path


def _torchrun(stage_args, steps, extra=()):
    torchrun = shutil.which('torchrun') or str(Path(sys.executable).parent / 'torchrun')
    cmd = [torchrun, '--nproc_per_node', '2', '--master_addr', '127.0.0.1', '--master_port', str(_free_port()),
           '-m', 'defi_training.train_cli', 'gidm', *stage_args, f'steps={steps}', *extra]
    proc = subprocess.run(cmd, env={**os.environ, 'OMP_NUM_THREADS': '1'}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_two_process_gloo_ddp_run_keeps_ranks_identical_and_resumes_exactly(cache_dir, tmp_path):
    # GIDM: besides the DDP-synced gradients, its VQ restarts dead codes outside autograd; a low
    # dead-code threshold makes that happen here, so the per-step broadcast is exercised.
    common = [f'data.cache={cache_dir}', 'ckpt_every=2', 'eval_every=2', 'eval_batches=1', 'batch_size=2',
              'threads=1', 'progress=false', 'data.num_workers=0', 'model.preset=tiny', 'model.text_encoder=hash',
              'model.dead_code_threshold=0.2', 'model.code_usage_decay=0.5', 'image_every=0',
              'optim.schedule=constant', 'keep_checkpoints=0']
    out = tmp_path / 'ddp'
    proc = _torchrun(['--out', str(out), *common], steps=4)
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['world_size'] == 2
    assert str(out / 'final') in proc.stdout   # rank 0 prints the export; it survives the fast exit
    digests = summary['rank_weight_sha256']
    assert len(digests) == 2 and digests[0] == digests[1]
    assert 'different weights' not in proc.stderr
    assert isinstance(load_component(out / 'final'), GIDM)
    ckpt = out / 'checkpoints' / 'step_00000004'
    # One RNG state per rank (distinct noise streams), for an exact resume with the same world size.
    r0, r1 = (load_file(str(ckpt / f'rng_rank{r}.safetensors'))['torch'] for r in (0, 1))
    assert not (r0 == r1).all()
    state = json.loads((ckpt / 'trainer_state.json').read_text())
    assert state['world_size'] == 2 and state['step'] == 4

    # 2 steps, then --resume extends the run to 4 (constant lr, so the schedule is the same):
    # both ranks pick up their own RNG streams and data shards, and the result is bit-identical.
    part = tmp_path / 'part'
    _torchrun(['--out', str(part), *common], steps=2)
    proc = _torchrun(['--resume', str(part)], steps=4)
    assert 'resumed from' in proc.stderr
    a = load_file(str(out / 'final' / 'model.safetensors'))
    b = load_file(str(part / 'final' / 'model.safetensors'))
    assert all(torch.equal(a[k], b[k]) for k in a)
