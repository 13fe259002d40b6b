"""defi-eval refuses a checkpoint it must not score: NaN/Inf weights (a diverged run, which would
otherwise score 0 % without a word) or a wrong-typed config.json field; one line naming the file,
exit 2."""
import json
import subprocess
import sys

import pytest
from safetensors.torch import load_file, save_file

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint


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
