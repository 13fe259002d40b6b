"""defi-sim and defi-record: an --out they cannot write ends with one line and exit 2."""
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize('command', [
    ['defi_sim.record', 'dataset', '--tasks', 'reach', '--episodes', '1', '--out'],
    ['defi_recorder.recorder', '--topics', 'joint_states', '--out'],
])
def test_an_output_that_cannot_be_made_is_one_line_and_exit_2(command):
    out = '/proc/defi_cannot_write_here'          # mkdir fails there, even for root
    proc = subprocess.run([sys.executable, '-m', *command, out],
                          capture_output=True, text=True, timeout=100)
    err = proc.stderr.strip()
    assert proc.returncode == 2, proc.stdout + err
    assert 'Traceback' not in err and 'defi_cannot_write_here' in err.splitlines()[-1], err
    assert err.splitlines()[-1].startswith(('defi-sim dataset: error: ', 'defi-record: error: '))
