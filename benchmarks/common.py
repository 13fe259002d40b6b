"""What every benchmark script shares: the machine, the command, the date, and the JSON contract."""
from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / 'results'


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    import torch
    return (f'{os.cpu_count()} cores ({cpu}), torch {torch.__version__} with '
            f'{torch.get_num_threads()} threads, Python {platform.python_version()}')


def command() -> str:
    return 'python ' + ' '.join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0])] + sys.argv[1:])


def percentile(values, q):
    ordered = sorted(values)
    if not ordered:
        return float('nan')
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def median(values):
    return statistics.median(values) if values else float('nan')


def emit(name: str, figures: dict, out: str | None = None) -> dict:
    """Attach machine/command/date, write results/<name>.json (or `out`), print the JSON line last."""
    record = dict(figures)
    record.update(machine=machine(), command=command(),
                  date=datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC'))
    path = Path(out) if out else RESULTS / f'{name}.json'
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + '.tmp')
    tmp.write_text(json.dumps(record, indent=2) + '\n')
    os.replace(tmp, path)
    print(json.dumps(record))
    return record


def cache_tasks(cache) -> list:
    """Meta-World task names of an episode cache's instructions (defi_sim.tasks), sorted."""
    from defi_sim.tasks import INSTRUCTIONS
    by_text = {text: name for name, text in INSTRUCTIONS.items()}
    unknown = [t for t in cache.meta['tasks'] if t not in by_text]
    if unknown:
        raise SystemExit(f'{cache.path}: instruction(s) {unknown} are no Meta-World task of defi_sim.tasks; '
                         'give the tasks with --tasks')
    return sorted({by_text[t] for t in cache.meta['tasks']})
