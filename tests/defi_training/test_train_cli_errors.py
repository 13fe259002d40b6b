"""defi-train ends with one line and an exit code: 2 for bad input (a wrong-typed override, an output
it cannot write, a full disk), 1 for a run that diverged (NaN loss, naming stage and step), 130 on
Ctrl-C; a checkpoint being written when it stops is removed, the ones before it stay."""
import resource
import subprocess
import sys

import pytest
import torch

from defi_training.cache import build_cache
from defi_training.checkpointing import list_checkpoints
from defi_training.synthetic import write_synthetic_bag
from defi_training.topic_map import ActionSpec, TopicMap
from defi_training.train_cli import main as train_main

pytestmark = pytest.mark.timeout(240)
torch.set_num_threads(1)
FAST = ['model.preset=tiny', 'model.text_encoder=hash', 'batch_size=2', 'threads=1', 'progress=false',
        'log_every=1', 'eval_every=100', 'image_every=0', 'ckpt_every=1']


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp('train_cli')
    for k in range(2):
        write_synthetic_bag(root / f'ep{k}', duration_s=1.5, image_size=16, seed=k)
    return build_cache([root / 'ep0', root / 'ep1'], root / 'cache',
                       TopicMap(image_size=16, action=ActionSpec(source='none'))).path


@pytest.fixture(autouse=True)
def fresh_logger():
    # the training logger keeps the stderr it was made with: give each test's capture its own
    import logging
    logging.getLogger('defi_train.rank0').handlers.clear()


def leftovers(run_dir):
    root = run_dir / 'checkpoints'
    return sorted(p.name for p in root.iterdir() if p.name.startswith('.')) if root.is_dir() else []


def one_line(err: str) -> str:
    """The one error line, last after the run's log lines ('defi-train gfdm: run ...')."""
    lines = err.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith('defi-train: ')]
    assert 'Traceback' not in err and len(errors) == 1 and lines[-1] == errors[0], err
    return errors[0]


def test_wrong_typed_model_override_names_the_key(cache, capsys):
    rc = train_main(['gfdm', f'data.cache={cache}', 'model.image_size=big'])
    assert rc == 2
    assert one_line(capsys.readouterr().err) == (
        "defi-train: config key 'model.image_size': expected an integer, got 'big'")


def test_an_output_it_cannot_make_is_one_line_and_exit_2(cache, tmp_path, capsys):
    blocker = tmp_path / 'not_a_dir'
    blocker.write_text('x')
    rc = train_main(['gfdm', f'data.cache={cache}', '--out', str(blocker / 'run'), 'steps=1', *FAST])
    assert rc == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith('defi-train: error: ') and str(blocker) in line


def test_nan_loss_names_stage_and_step_and_keeps_the_checkpoints(cache, tmp_path, monkeypatch, capsys):
    import defi_training.train as train_mod
    calls = []

    class Diverging(train_mod.StageObjective):
        def forward(self, batch):
            loss, parts = super().forward(batch)
            calls.append(1)
            return (loss * float('nan'), parts) if len(calls) == 3 else (loss, parts)
    monkeypatch.setattr(train_mod, 'StageObjective', Diverging)
    run = tmp_path / 'run'
    rc = train_main(['gfdm', f'data.cache={cache}', '--out', str(run), 'steps=5', *FAST])
    assert rc == 1
    line = one_line(capsys.readouterr().err)
    assert line.startswith('defi-train: stage gfdm, step 3: loss is nan'), line
    assert str(run / 'checkpoints') in line
    assert [p.name for p in list_checkpoints(run)] == ['step_00000001', 'step_00000002'] and not leftovers(run)


def test_ctrl_c_while_saving_exits_130_without_a_half_checkpoint(cache, tmp_path, monkeypatch, capsys):
    import defi_training.checkpointing as ckpt_mod
    real = ckpt_mod._fsync_dir_files
    saves = []

    def fsync(directory):
        saves.append(directory)
        if len(saves) == 2:              # Ctrl-C in the middle of the second checkpoint
            raise KeyboardInterrupt
        real(directory)
    monkeypatch.setattr(ckpt_mod, '_fsync_dir_files', fsync)
    run = tmp_path / 'run'
    rc = train_main(['gfdm', f'data.cache={cache}', '--out', str(run), 'steps=5', *FAST])
    assert rc == 130
    assert one_line(capsys.readouterr().err) == (
        f'defi-train: interrupted; continue with: defi-train gfdm --resume {run}')
    assert [p.name for p in list_checkpoints(run)] == ['step_00000001'] and not leftovers(run)
    assert not [p for p in run.rglob('*.tmp*')]


def test_full_disk_names_the_file_and_leaves_no_temporary(cache, tmp_path):
    def small_disk():                    # writes past 300 kB fail (EFBIG) like on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, resource.RLIM_INFINITY))
    run = tmp_path / 'run'
    proc = subprocess.run([sys.executable, '-m', 'defi_training.train_cli', 'gfdm', f'data.cache={cache}',
                           '--out', str(run), 'steps=2', *FAST], preexec_fn=small_disk,
                          capture_output=True, text=True, timeout=200)
    assert proc.returncode == 2, proc.stderr
    line = one_line(proc.stderr)
    assert line.startswith('defi-train: error: '), line
    assert line == f"defi-train: error: File too large: {run / 'checkpoints' / 'step_00000001' / 'model.safetensors'}"
    assert not list_checkpoints(run) and not leftovers(run)
