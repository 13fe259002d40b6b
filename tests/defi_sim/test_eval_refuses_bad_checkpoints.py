"""defi-eval refuses a checkpoint it must not score: NaN/Inf weights (a diverged run, which would
otherwise score 0 % without a word) or a wrong-typed config.json field; one line naming the file,
exit 2."""
import json
import subprocess
import sys

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def checkpoint(tmp_path):
    from defi_core.checkpoint import save_checkpoint
    from defi_core.config import preset
    from defi_core.policy import DefiPolicy
    cfg = preset('tiny', text_encoder='hash')
    a = cfg.action_dim
    stats = {'action': {'mean': np.zeros(a, np.float32), 'std': np.ones(a, np.float32),
                        'min': -np.ones(a, np.float32), 'max': np.ones(a, np.float32)}}
    return save_checkpoint(tmp_path / 'ckpt', DefiPolicy(cfg), cfg, stats)


def defi_eval(checkpoint, tmp_path):
    proc = subprocess.run([sys.executable, '-m', 'defi_sim.eval_cli', '--checkpoint', str(checkpoint),
                           '--episodes', '1', '--out', str(tmp_path / 'eval')],
                          capture_output=True, text=True, timeout=100)
    return proc.returncode, proc.stderr.strip()


def test_nan_weights_are_refused_naming_the_file(checkpoint, tmp_path):
    tensors = load_file(str(checkpoint / 'model.safetensors'))
    key = sorted(tensors)[0]
    tensors[key].view(-1)[0] = float('nan')
    save_file(tensors, str(checkpoint / 'model.safetensors'))
    rc, err = defi_eval(checkpoint, tmp_path)
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert err == (f"defi-eval: {checkpoint / 'model.safetensors'}: weight {key!r} holds NaN or infinite "
                   'values (the training run diverged?); refusing to load it')
    assert not (tmp_path / 'eval').exists()


def test_wrong_typed_config_field_names_file_and_field(checkpoint, tmp_path):
    meta = json.loads((checkpoint / 'config.json').read_text())
    meta['config']['horizon'] = 'ten'
    (checkpoint / 'config.json').write_text(json.dumps(meta))
    rc, err = defi_eval(checkpoint, tmp_path)
    assert rc == 2 and err == f"defi-eval: {checkpoint / 'config.json'}: config.horizon: expected an integer, got 'ten'"
