"""`--resume` after a real SIGKILL continues exactly: the final weights and optimizer state are
bit-identical to an uninterrupted run (CPU, real synthetic bags -> real cache, tiny preset)."""
import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from defi_training.cache import build_cache
from defi_training.checkpointing import latest_checkpoint
from defi_training.topic_map import TopicMap
from train_data import synthetic_bags

STEPS = 10


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp('resume_data')
    bags = synthetic_bags(root, storages=('mcap',) * 3)
    return build_cache(bags, root / 'cache', TopicMap(image_size=32)).path


def _cmd(cache, out, workers):
    # finetune with GFDM and GIDM from scratch exercises every source of randomness: EDM noise in
    # both diffusion models, VQ dead-code restarts, the data order, DataLoader workers.
    return [sys.executable, '-m', 'defi_training.train_cli', 'finetune', '--out', str(out),
            f'data.cache={cache}', f'steps={STEPS}', 'ckpt_every=2', 'eval_every=3', 'eval_batches=1',
            'log_every=1', 'batch_size=2', 'threads=1', 'progress=false', f'data.num_workers={workers}',
            'model.preset=tiny', 'model.text_encoder=hash', 'model.gfdm_pretrained=false',
            'model.gidm_pretrained=false', 'optim.warmup_steps=3', 'optim.lr=1e-3', 'keep_checkpoints=0']


def _env():
    return {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONHASHSEED': '0'}


def _run(args, timeout=120):
    proc = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_resume_after_sigkill_equals_uninterrupted_run(cache_dir, tmp_path):
    straight = tmp_path / 'straight'
    _run(_cmd(cache_dir, straight, workers=0))

    # Same run (with a DataLoader worker this time: it must not change a bit), killed hard once a
    # checkpoint exists and before the run can finish.
    killed = tmp_path / 'killed'
    proc = subprocess.Popen(_cmd(cache_dir, killed, workers=1), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        ckpt = latest_checkpoint(killed)
        if ckpt is not None and ckpt.name == 'step_00000002':
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, f'the run ended before it could be killed: {proc.stderr.read()[-2000:]}'
    assert not (killed / 'final').exists()
    resumed_from = latest_checkpoint(killed).name
    assert resumed_from < f'step_{STEPS:08d}'

    res = _run([*_cmd(cache_dir, killed, workers=1)[:4], '--resume', str(killed)])
    assert f'resumed from {killed / "checkpoints" / resumed_from}' in res.stderr

    a = load_file(str(straight / 'final' / 'model.safetensors'))
    b = load_file(str(killed / 'final' / 'model.safetensors'))
    assert a.keys() == b.keys()
    different = [k for k in a if not (a[k] == b[k]).all()]
    assert not different, f'{len(different)} tensors differ after resume, e.g. {different[:3]}'
    oa = load_file(str(straight / 'checkpoints' / f'step_{STEPS:08d}' / 'optimizer.safetensors'))
    ob = load_file(str(killed / 'checkpoints' / f'step_{STEPS:08d}' / 'optimizer.safetensors'))
    assert oa.keys() == ob.keys() and all((oa[k] == ob[k]).all() for k in oa)
    # Sanity: training moved the weights (so the equality above is not trivial).
    first = load_file(str(straight / 'checkpoints' / 'step_00000004' / 'model.safetensors'))
    assert any(not (first[k] == a[k]).all() for k in a)
