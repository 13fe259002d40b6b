"""Training config system, schedule, data order and checkpoint state (no model training here)."""
import json
import random
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch

from defi_training.checkpointing import (
    capture_rng_state,
    latest_checkpoint,
    list_checkpoints,
    optimizer_state_from_files,
    optimizer_state_to_files,
    restore_rng_state,
    save_run_checkpoint,
)
from defi_training.data_loading import open_cache
from defi_training.distributed import ResumableBatchSampler, fixed_batches
from defi_training.model_setup import use_bf16_autocast
from defi_training.train import lr_at
from defi_training.train_cli import main as train_main
from defi_training.train_config import ConfigError, TrainConfig, apply_overrides, load_train_config, save_train_config

REPO = Path(__file__).resolve().parents[2]
torch.set_num_threads(1)


@pytest.mark.parametrize('stage', ['gfdm', 'gidm', 'finetune'])
def test_shipped_yaml_configs_load_and_round_trip(stage, tmp_path):
    cfg = load_train_config(REPO / 'config' / f'train_{stage}.yaml', stage=stage,
                            overrides=['steps=7', 'optim.lr=3e-4', 'model.preset=tiny', 'model.idm_type=mlp',
                                       'data.num_workers=0', 'amp=none'])
    assert cfg.stage == stage and cfg.steps == 7 and cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.model['preset'] == 'tiny' and cfg.model['idm_type'] == 'mlp'
    assert isinstance(cfg.optim.lr, float) and isinstance(cfg.steps, int)
    save_train_config(cfg, tmp_path / 'config.yaml')
    assert load_train_config(tmp_path / 'config.yaml') == cfg


def test_yaml_of_another_stage_is_rejected():
    with pytest.raises(ConfigError, match='train_gfdm.yaml is for stage .gfdm'):
        load_train_config(REPO / 'config' / 'train_gfdm.yaml', stage='gidm')


@pytest.mark.parametrize('override, named', [
    ('optim.lrr=1e-3', "'optim.lrr'"),
    ('stepz=3', "'stepz'"),
    ('data.cache.path=x', "'data.cache.path'"),
    ('model.no_such_field=1', "'model.no_such_field'"),
])
def test_unknown_override_key_errors_naming_the_key(override, named, capsys):
    with pytest.raises(ConfigError) as err:
        apply_overrides(TrainConfig(), [override])
    assert named in str(err.value)
    # The CLI reports it on stderr and exits 2 before touching any data.
    assert train_main(['gfdm', 'data.cache=/nonexistent', override]) == 2
    assert named in capsys.readouterr().err


def test_override_types_are_checked():
    with pytest.raises(ConfigError, match="'steps': expected an integer"):
        apply_overrides(TrainConfig(), ['steps=abc'])
    with pytest.raises(ConfigError, match="'amp'"):
        apply_overrides(TrainConfig(), ['amp=fp8'])
    with pytest.raises(ConfigError, match="'model.preset'"):
        apply_overrides(TrainConfig(), ['model.preset=huge'])
    cfg = apply_overrides(TrainConfig(), ['progress=false', 'optim.warmup_steps=5', 'optim.lr=1'])
    assert cfg.progress is False and cfg.optim.warmup_steps == 5 and cfg.optim.lr == 1.0


def test_lr_schedule_warmup_then_cosine_to_floor():
    cfg = apply_overrides(TrainConfig(), ['steps=100', 'optim.lr=1.0', 'optim.warmup_steps=10',
                                          'optim.min_lr_ratio=0.1'])
    lrs = [lr_at(s, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in pairwise(lrs[10:]))          # non-increasing after warmup
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)


def test_sampler_resumes_mid_epoch_and_ranks_are_disjoint():
    data = list(range(23))
    stream = ResumableBatchSampler(data, 4, 0, 1, seed=3)
    it = iter(stream)
    first = [next(it) for _ in range(12)]                         # crosses two epoch boundaries
    resumed = iter(ResumableBatchSampler(data, 4, 0, 1, seed=3, start_step=7))
    assert [next(resumed) for _ in range(5)] == first[7:]
    assert first[0] != first[stream.steps_per_epoch]              # reshuffled each epoch
    r0 = next(iter(ResumableBatchSampler(data, 4, 0, 2, seed=3)))
    r1 = next(iter(ResumableBatchSampler(data, 4, 1, 2, seed=3)))
    assert not set(r0) & set(r1)
    assert fixed_batches(23, 4, 2, 0, 1, seed=1) == fixed_batches(23, 4, 2, 0, 1, seed=1)


def test_rng_state_round_trip_covers_torch_numpy_python():
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    blob = capture_rng_state()
    draws = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    restore_rng_state(blob)
    assert torch.equal(torch.rand(3), draws[0])
    assert np.array_equal(np.random.rand(3), draws[1])
    assert [random.random() for _ in range(3)] == draws[2]


def test_optimizer_state_round_trip_is_exact():
    torch.manual_seed(0)
    net = torch.nn.Linear(5, 3)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, betas=(0.8, 0.95))
    for _ in range(3):
        net(torch.randn(4, 5)).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
    tensors, meta = optimizer_state_to_files(opt)
    json.dumps(meta)                                              # the non-tensor rest is plain JSON
    net2 = torch.nn.Linear(5, 3)
    net2.load_state_dict(net.state_dict())
    opt2 = torch.optim.AdamW(net2.parameters(), lr=1.0)
    opt2.load_state_dict(optimizer_state_from_files(tensors, meta))
    assert opt2.param_groups[0]['betas'] == (0.8, 0.95) and opt2.param_groups[0]['lr'] == 1e-2
    x = torch.randn(4, 5)
    for n, o in ((net, opt), (net2, opt2)):
        n(x).pow(2).sum().backward()
        o.step()
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), net2.parameters(), strict=True))


def test_run_checkpoints_are_atomic_and_pruned(tmp_path):
    net = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(net.parameters())

    def export(path):
        path.mkdir(parents=True)
        (path / 'model.safetensors').write_bytes(b'x')

    for step in (2, 4, 6):
        save_run_checkpoint(tmp_path, step, export_policy=export, optimizer=opt,
                            rng_blobs=[capture_rng_state()], trainer_state={'note': step}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ['step_00000004', 'step_00000006']
    # A checkpoint a killed process left half-written is invisible, and cleaned on the next save.
    (tmp_path / 'checkpoints' / 'step_00000008').mkdir()
    (tmp_path / 'checkpoints' / '.tmp-step_00000010-123').mkdir()
    assert latest_checkpoint(tmp_path).name == 'step_00000006'
    save_run_checkpoint(tmp_path, 12, export_policy=export, optimizer=opt, rng_blobs=[capture_rng_state()],
                        trainer_state={}, keep=0)
    assert not (tmp_path / 'checkpoints' / '.tmp-step_00000010-123').exists()
    state = json.loads((latest_checkpoint(tmp_path) / 'trainer_state.json').read_text())
    assert state['step'] == 12 and state['world_size'] == 1


def test_missing_or_empty_cache_fails_naming_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / 'nope')):
        open_cache(str(tmp_path / 'nope'))
    empty = tmp_path / 'empty_cache'
    empty.mkdir()
    (empty / 'meta.json').write_text(json.dumps({
        'format': 'defi-episode-cache/1', 'num_episodes': 0, 'num_frames': 0, 'cameras': ['front'],
        'image_size': 32, 'has_actions': False, 'has_state': False, 'episodes': [], 'fps': 10.0}))
    with pytest.raises(ValueError, match=f'{empty}.*no episodes'):
        open_cache(str(empty))
    with pytest.raises(ConfigError, match='data.cache'):
        open_cache('')


def test_bf16_autocast_only_on_gpu():
    assert use_bf16_autocast(torch.device('cuda:0'), 'auto') and use_bf16_autocast(torch.device('cuda'), 'bf16')
    assert not use_bf16_autocast(torch.device('cuda:0'), 'none')
    assert not use_bf16_autocast(torch.device('cpu'), 'auto') and not use_bf16_autocast(torch.device('cpu'), 'bf16')


def test_defi_train_console_script_is_installed():
    import shutil
    import subprocess
    exe = shutil.which('defi-train')
    assert exe, 'defi-train is not on PATH (run `bash scripts/setup.sh` and `source scripts/env.sh`)'
    proc = subprocess.run([exe, 'finetune', '--help'], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and '--resume' in proc.stdout and '--gfdm' in proc.stdout
    proc = subprocess.run([exe, 'gidm', 'optim.nope=1'], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "'optim.nope'" in proc.stderr


@pytest.mark.parametrize('entry', ['script', 'module'])
def test_torchrun_exit_path_keeps_exit_code_and_error(entry):
    # Under torchrun (WORLD_SIZE > 1) the entry point skips interpreter finalization (a gloo thread can
    # abort it); the exit code and the error must still come through (test_train_ddp checks stdout).
    import os
    import shutil
    import subprocess
    import sys
    exe = [shutil.which('defi-train')] if entry == 'script' else [sys.executable, '-m', 'defi_training.train_cli']
    env = {**os.environ, 'WORLD_SIZE': '2', 'RANK': '0'}
    proc = subprocess.run([*exe, 'gidm', 'optim.nope=1'], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2 and "'optim.nope'" in proc.stderr
