"""Training throughput (samples/s) of each DeFI stage, through the real `defi_training.train` loop.

    python benchmarks/train_throughput.py [--quick] [--out FILE]

`train_throughput(cache_dir, ...)` is what benchmarks/data.py imports for its `train_samples_per_s`
figures: it runs gfdm, gidm, then finetune (loading the two stage exports, GFDM frozen as by
default) for a few steps per preset and reports the median samples/s over the steps after warm-up
(evaluation, image logging and checkpointing are excluded from the timed steps).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def train_throughput(cache_dir, presets=('tiny', 'base'), stages=('gfdm', 'gidm', 'finetune'), *,
                     steps: int = 12, warmup: int = 3, batch_size: int = 8, threads: int = 2,
                     num_workers: int = 0, text_encoder: str = 'hash', workdir=None,
                     action_free_cache=None) -> dict:
    """{stage: {preset: samples/s}} for one episode cache (labelled, so finetune can run too; the
    pretraining stages ignore its actions, or use `action_free_cache` when given)."""
    import torch

    from defi_training.train import train
    from defi_training.train_config import load_train_config
    torch.set_num_threads(threads)
    out: dict = {s: {} for s in stages}
    with tempfile.TemporaryDirectory(prefix='defi-train-bench-', dir=workdir) as tmp:
        for preset in presets:
            exports = {}
            for stage in ('gfdm', 'gidm', 'finetune'):
                if stage not in stages and not (stage != 'finetune' and 'finetune' in stages):
                    continue                           # finetune needs both stage exports
                run_dir = Path(tmp) / f'{preset}-{stage}'
                cache = action_free_cache if (stage != 'finetune' and action_free_cache) else cache_dir
                overrides = [
                    f'data.cache={cache}', f'out_dir={run_dir}', f'steps={steps}', f'batch_size={batch_size}',
                    f'threads={threads}', f'data.num_workers={num_workers}', 'log_every=1',
                    f'eval_every={steps}', 'eval_batches=1', f'ckpt_every={steps}', 'image_every=0',
                    'progress=false', 'optim.warmup_steps=0', f'model.preset={preset}',
                    f'model.text_encoder={text_encoder}', 'keep_checkpoints=1']
                if stage == 'finetune':
                    overrides += [f'gfdm_checkpoint={exports["gfdm"]}', f'gidm_checkpoint={exports["gidm"]}']
                cfg = load_train_config(None, stage, overrides)
                exports[stage] = train(cfg)
                rows = [json.loads(x) for x in (run_dir / 'metrics.jsonl').read_text().splitlines()]
                rates = [r['samples_per_s'] for r in rows if 'samples_per_s' in r and r['step'] > warmup]
                if stage in stages:
                    out[stage][preset] = round(statistics.median(rates), 2)
    return out


def _make_cache(root: Path, image_size: int, episodes: int, duration_s: float) -> Path:
    from defi_training.cache import build_cache
    from defi_training.synthetic import write_synthetic_bag
    from defi_training.topic_map import TopicMap
    bags = []
    for i in range(episodes):
        bags.append(root / f'bag{i}')
        write_synthetic_bag(bags[-1], duration_s=duration_s, fps=10, image_size=image_size,
                            instructions=(['push the block', 'open the drawer'][i % 2],), seed=i)
    return build_cache(bags, root / 'cache', TopicMap(image_size=image_size)).path


def main() -> int:
    from common import emit
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--quick', action='store_true', help='fewer steps (a minute or two on 2 cores)')
    p.add_argument('--out', help='JSON file (default benchmarks/results/train_throughput.json)')
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--threads', type=int, default=2)
    args = p.parse_args()
    steps, warmup = (8, 2) if args.quick else (30, 5)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix='defi-train-bench-data-') as tmp:
        cache = _make_cache(Path(tmp), image_size=64, episodes=4, duration_s=3.0)
        figures = train_throughput(cache, steps=steps, warmup=warmup, batch_size=args.batch_size,
                                   threads=args.threads)
    print(f'{"stage":<10} {"preset":<6} {"samples/s":>10}')
    for stage, per in figures.items():
        for preset, rate in per.items():
            print(f'{stage:<10} {preset:<6} {rate:>10.1f}')
    emit('train_throughput', {'train_samples_per_s': figures, 'batch_size': args.batch_size,
                              'image_size': 64, 'steps': steps, 'warmup_steps': warmup,
                              'wall_s': round(time.perf_counter() - t0, 1)}, args.out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
