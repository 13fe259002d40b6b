"""defi-data ends with one line and an exit code (2 bad input / file system, 130 Ctrl-C), removes
its partial output, and a rerun removes the temporaries of a killed run (only when its PID is gone)."""
import json
import subprocess
import sys

import numpy as np
import pytest

from defi_training.synthetic import write_synthetic_bag

pytestmark = pytest.mark.timeout(120)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, '-c', 'pass'])
    proc.wait()
    return proc.pid


def defi_data(*args):
    proc = subprocess.run([sys.executable, '-m', 'defi_training.data_cli', *map(str, args)],
                          capture_output=True, text=True, timeout=100)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope='module')
def bags(tmp_path_factory):
    root = tmp_path_factory.mktemp('bags')
    for k in range(2):
        write_synthetic_bag(root / f'ep{k}', duration_s=1.0, image_size=16)
    return root


def test_output_under_a_file_is_one_line_with_exit_2(bags, tmp_path):
    blocker = tmp_path / 'not_a_dir'
    blocker.write_text('x')
    rc, out, err = defi_data('build-cache', bags, '--out', blocker / 'cache', 'image_size=16')
    assert rc == 2, err
    assert 'Traceback' not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith('defi-data build-cache: error: ') and str(blocker) in err


def test_full_disk_is_one_line_naming_the_output_with_exit_2(bags, tmp_path, monkeypatch, capsys):
    import defi_training.cache as cache_mod
    from defi_training.data_cli import main

    def save(path, arr, *a, **k):     # what numpy says when the disk is full: no path, no errno
        raise OSError('737280 requested and 130944 written')
    monkeypatch.setattr(cache_mod.np, 'save', save)
    try:
        rc = main(['build-cache', str(bags), '--out', str(tmp_path / 'cache'), 'image_size=16'])
    except OSError as exc:
        rc = f'raw {exc!r}'
    assert rc == 2
    assert capsys.readouterr().err.strip() == (
        f"defi-data build-cache: error: 737280 requested and 130944 written (writing {tmp_path / 'cache'})")
    assert list(tmp_path.iterdir()) == []


def test_damaged_cache_names_the_file(bags, tmp_path):
    cache = tmp_path / 'cache'
    rc, _, err = defi_data('build-cache', bags, '--out', cache, 'image_size=16')
    assert rc == 0, err
    npy = cache / 'episodes' / '000000' / 'images.front.npy'
    npy.write_bytes(npy.read_bytes()[:200])                     # truncated
    rc, _, err = defi_data('convert', cache, '--to', 'lerobot', '--out', tmp_path / 'lr')
    assert rc == 2 and 'Traceback' not in err and len(err.strip().splitlines()) == 1, err
    assert str(npy) in err
    (cache / 'meta.json').write_text('{"format": ')               # broken JSON
    rc, _, err = defi_data('convert', cache, '--to', 'lerobot', '--out', tmp_path / 'lr')
    assert rc == 2 and 'Traceback' not in err and str(cache / 'meta.json') in err, err
    assert not (tmp_path / 'lr').exists()


def test_ctrl_c_exits_130_and_removes_the_partial_cache(bags, tmp_path, monkeypatch, capsys):
    import defi_training.cache as cache_mod
    from defi_training.data_cli import main
    saves = []
    real_save = np.save

    def save(path, arr, *a, **k):
        saves.append(path)
        if len(saves) == 3:           # in the middle of the build
            raise KeyboardInterrupt
        return real_save(path, arr, *a, **k)
    monkeypatch.setattr(cache_mod.np, 'save', save)
    try:
        rc = main(['build-cache', str(bags), '--out', str(tmp_path / 'cache'), 'image_size=16'])
    except KeyboardInterrupt:
        rc = 'KeyboardInterrupt escaped'
    assert rc == 130
    assert capsys.readouterr().err.strip() == 'defi-data build-cache: interrupted'
    assert list(tmp_path.iterdir()) == []                         # no cache, no .cache.tmp-PID


def test_a_rerun_removes_temporaries_of_killed_runs_only(bags, tmp_path):
    import os
    stale = tmp_path / f'.cache.tmp-{dead_pid()}'
    (stale / 'episodes').mkdir(parents=True)
    live = tmp_path / f'.cache.tmp-{os.getpid()}'                  # a writer that is still running
    live.mkdir()
    rc, _, err = defi_data('build-cache', bags, '--out', tmp_path / 'cache', 'image_size=16')
    assert rc == 0, err
    assert not stale.exists() and live.exists()
    assert json.loads((tmp_path / 'cache' / 'meta.json').read_text())['num_episodes'] == 2


def test_a_checkpoint_save_removes_a_dead_runs_temporaries_first(tmp_path):
    import os

    import torch

    from defi_training.checkpointing import save_run_checkpoint
    root = tmp_path / 'run' / 'checkpoints'
    stale = root / f'.tmp-step_00000100-{dead_pid()}'
    stale.mkdir(parents=True)
    live = root / f'.tmp-step_00000200-{os.getppid()}'
    live.mkdir()
    seen = []
    param = torch.zeros(2, requires_grad=True)

    def export(path):
        seen.append(stale.exists())     # already gone while this save writes: its space is free
        path.mkdir(parents=True)
    save_run_checkpoint(tmp_path / 'run', 300, export_policy=export,
                        optimizer=torch.optim.SGD([param], lr=0.1), rng_blobs=[b'r'], trainer_state={})
    assert seen == [False] and live.exists()


@pytest.mark.parametrize('text, field', [('fps: ten\n', "fps: expected a number, got 'ten'"),
                                         ('image_size: big\n', "image_size: expected an integer or null, got 'big'"),
                                         ('action: {topic: 5}\n', 'action.topic: expected a string or null, got 5')])
def test_wrong_typed_data_config_field_is_named(bags, tmp_path, text, field):
    config = tmp_path / 'data.yaml'
    config.write_text(text)
    rc, _, err = defi_data('build-cache', bags, '--config', config, '--out', tmp_path / 'cache')
    assert rc == 2 and err.strip() == f'defi-data build-cache: error: data config {config}: {field}', err
