"""torch's thread count comes from the CPUs the process may use (affinity, container quota) and
leaves one to the work beside the model; an explicit count or OMP_NUM_THREADS wins."""
import os
import subprocess
import sys

import pytest

from defi_core.threads import choose_torch_threads, usable_cpus


@pytest.mark.parametrize('cpus, expected', [(1, 1), (2, 1), (3, 2), (4, 3), (16, 4)])
def test_auto_leaves_one_cpu_and_caps(cpus, expected):
    assert choose_torch_threads(0, cpus=cpus, environ={}) == expected


def test_explicit_count_and_omp_num_threads_win():
    assert choose_torch_threads(6, cpus=2, environ={'OMP_NUM_THREADS': '1'}) == 6
    assert choose_torch_threads(0, cpus=8, environ={'OMP_NUM_THREADS': '2'}) == 2
    assert choose_torch_threads(0, cpus=8, environ={'OMP_NUM_THREADS': 'lots'}) == 4
    # training is the main job: every usable CPU
    assert choose_torch_threads(0, cpus=8, reserve=0, cap=None, environ={}) == 8


def test_usable_cpus_follow_affinity_and_cgroup_quota(tmp_path, monkeypatch):
    monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: {0, 1, 2})
    assert usable_cpus(tmp_path) == 3                          # no cpu.max: the affinity mask
    (tmp_path / 'cpu.max').write_text('max 100000\n')
    assert usable_cpus(tmp_path) == 3
    (tmp_path / 'cpu.max').write_text('150000 100000\n')       # a 1.5-CPU container
    assert usable_cpus(tmp_path) == 1


@pytest.mark.skipif(not hasattr(os, 'sched_setaffinity'), reason='Linux only')
def test_a_process_pinned_to_one_cpu_gets_one_thread():
    one = min(os.sched_getaffinity(0))
    code = ('from defi_core.threads import set_torch_threads, usable_cpus; import torch; '
            'print(usable_cpus(), set_torch_threads(), torch.get_num_threads())')
    env = {k: v for k, v in os.environ.items() if k != 'OMP_NUM_THREADS'}
    out = subprocess.run([sys.executable, '-c', code], preexec_fn=lambda: os.sched_setaffinity(0, {one}),
                         capture_output=True, text=True, timeout=60, env=env, check=True).stdout.split()
    assert out == ['1', '1', '1']
