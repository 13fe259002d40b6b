"""How many torch CPU threads to use: from the CPUs this process may run on, not the machine's.

torch's default is one intra-op thread per physical core of the machine, whatever the process's
CPU affinity (taskset, cpusets) or container quota allows, and whatever else runs there. Its
threads spin while they wait for each other, so a process with more threads than free cores
stalls: with one other 2-thread torch process on 2 cores, defi-eval's chunk latency went from a
10 ms median to 3 s; with 1 thread it stayed fast. A robot computer always runs other work (ROS
callbacks, drivers, the controller), so the model's default leaves one usable CPU to it.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping, Optional

__all__ = ['usable_cpus', 'choose_torch_threads', 'set_torch_threads', 'MODEL_THREADS_CAP']

# more intra-op threads do not speed up a small model's per-chunk ops, and every one of them can
# be preempted by the work beside it
MODEL_THREADS_CAP = 4


def _cgroup_cpu_limit(root: Path = Path('/sys/fs/cgroup')) -> Optional[float]:
    """CPUs allowed by a cgroup v2 quota ('200000 100000' in cpu.max = 2 CPUs), or None."""
    try:
        quota, period = (root / 'cpu.max').read_text().split()[:2]
        if quota == 'max':
            return None
        return float(quota) / float(period)
    except (OSError, ValueError):
        return None


def usable_cpus(cgroup_root: Path = Path('/sys/fs/cgroup')) -> int:
    """CPUs this process may run on: its affinity mask (os.sched_getaffinity), capped by a
    container's CPU quota; at least 1."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):      # not Linux
        n = os.cpu_count() or 1
    limit = _cgroup_cpu_limit(cgroup_root)
    if limit is not None:
        n = min(n, max(1, math.floor(limit)))
    return max(1, n)


def choose_torch_threads(requested: int = 0, *, cpus: Optional[int] = None, reserve: int = 1,
                         cap: Optional[int] = MODEL_THREADS_CAP,
                         environ: Optional[Mapping[str, str]] = None) -> int:
    """The thread count to give torch. requested > 0: exactly that. 0 (auto): OMP_NUM_THREADS when
    it is set (the user's choice for this machine), else the usable CPUs less `reserve` (for the
    work beside the model), at most `cap` (None: no cap), at least 1."""
    if requested > 0:
        return int(requested)
    env = os.environ if environ is None else environ
    try:
        from_env = int(env.get('OMP_NUM_THREADS', '') or 0)
    except ValueError:
        from_env = 0
    if from_env > 0:
        return from_env
    n = (usable_cpus() if cpus is None else cpus) - reserve
    if cap is not None:
        n = min(n, cap)
    return max(1, n)


def set_torch_threads(requested: int = 0, **kwargs) -> int:
    """torch.set_num_threads(choose_torch_threads(...)); returns the count used."""
    import torch
    n = choose_torch_threads(requested, **kwargs)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
