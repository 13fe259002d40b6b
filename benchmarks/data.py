"""Data pipeline throughput: rosbag2 bag -> episode cache, next to a plain rosbags read.

    python benchmarks/data.py [--quick] [--out FILE] [--skip-train]

A bag like the simulator records (128x128 rgb8 camera at 30 Hz, joint_states, ActionChunk commands,
mcap) is generated with rosbags. Figures:
  cache_frames_per_s / cache_MB_per_s  bag -> cache (read, deserialize, as-of resample, decode,
                                       area-resize 128 -> 64 px, write .npy + stats + meta)
  raw_read_frames_per_s                rosbags Reader + typestore.deserialize_cdr of the same
                                       messages, nothing else (the floor any bag reader pays)
  ratio                                cache / raw (the cost of everything beyond reading)
  train_samples_per_s                  per stage and preset, from benchmarks/train_throughput.py
Each timing is the median of three runs (the machine is shared). Target: >= 1500 frames/s into
the cache on 2 cores.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

TARGET_FRAMES_PER_S = 1500


def _raw_read(bag: Path) -> tuple[float, int]:
    from rosbags.rosbag2 import Reader

    from defi_training.sources.msg_types import typestore
    store = typestore()
    t0 = time.perf_counter()
    frames = 0
    with Reader(bag) as reader:
        for conn, _, raw in reader.messages():
            store.deserialize_cdr(raw, conn.msgtype)
            frames += conn.msgtype == 'sensor_msgs/msg/Image'
    return time.perf_counter() - t0, frames


def _cache(bag: Path, out: Path, image_size: int) -> tuple[float, int]:
    from defi_training.cache import build_cache
    from defi_training.sources import Report
    from defi_training.topic_map import TopicMap
    tm = TopicMap(fps=30.0, max_age_s=0.1, image_size=image_size)
    t0 = time.perf_counter()
    cache = build_cache([bag], out, tm, report=Report(quiet=True), overwrite=True)
    return time.perf_counter() - t0, cache.num_frames


def main() -> int:
    from common import emit
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--quick', action='store_true', help='a shorter bag and tiny-only training figures')
    p.add_argument('--out', help='JSON file (default benchmarks/results/data.json)')
    p.add_argument('--skip-train', action='store_true', help='leave train_samples_per_s empty')
    p.add_argument('--storage', choices=['mcap', 'sqlite3'], default='mcap')
    args = p.parse_args()
    import torch
    torch.set_num_threads(2)
    from defi_training.synthetic import write_synthetic_bag

    duration_s = 20.0 if args.quick else 100.0
    src_size, dst_size, rate = 128, 64, 30.0
    t_start = time.perf_counter()
    figures: dict = {}
    with tempfile.TemporaryDirectory(prefix='defi-data-bench-') as tmp:
        tmp = Path(tmp)
        bag = tmp / 'bag'
        write_synthetic_bag(bag, storage=args.storage, duration_s=duration_s, fps=rate, image_size=src_size)
        bag_mb = sum(f.stat().st_size for f in bag.iterdir()) / 1e6
        raw = [_raw_read(bag) for _ in range(3)]
        cached = [_cache(bag, tmp / 'cache', dst_size) for _ in range(3)]
        raw_s = statistics.median(r[0] for r in raw)
        cache_s = statistics.median(c[0] for c in cached)
        n_img = raw[0][1]
        n_cache = cached[0][1]
        img_mb = n_img * src_size * src_size * 3 / 1e6
        figures.update(
            cache_frames_per_s=round(n_cache / cache_s, 1),
            cache_MB_per_s=round(img_mb / cache_s, 1),
            raw_read_frames_per_s=round(n_img / raw_s, 1),
            raw_read_MB_per_s=round(img_mb / raw_s, 1),
            ratio=round((n_cache / cache_s) / (n_img / raw_s), 3),
            target_frames_per_s=TARGET_FRAMES_PER_S,
            meets_target=bool(n_cache / cache_s >= TARGET_FRAMES_PER_S),
            bag={'storage': args.storage, 'frames': n_img, 'image': f'{src_size}x{src_size} rgb8', 'rate_hz': rate,
                 'topics': ['camera/front/image_raw', 'joint_states', 'defi/action_command', 'instruction',
                            'sim/success'], 'size_MB': round(bag_mb, 1)},
            cache={'image_size': dst_size, 'frames': n_cache, 'fps': rate},
            cpu_cores=os.cpu_count(),
            load_avg_1min=round(os.getloadavg()[0], 2),   # the machine is shared: context for the figures
        )
        print(f'bag: {n_img} frames {src_size}x{src_size} rgb8 at {rate:.0f} Hz, {args.storage}, {bag_mb:.1f} MB')
        print(f'{"path":<34} {"frames/s":>10} {"MB/s":>8} {"s":>7}')
        print(f'{"rosbags read + deserialize":<34} {n_img / raw_s:>10.0f} {img_mb / raw_s:>8.1f} {raw_s:>7.3f}')
        print(f'{"bag -> cache (" + str(dst_size) + " px)":<34} {n_cache / cache_s:>10.0f} {img_mb / cache_s:>8.1f} '
              f'{cache_s:>7.3f}')
        print(f'ratio cache/raw {figures["ratio"]:.3f}; target >= {TARGET_FRAMES_PER_S} frames/s into the cache: '
              f'{"met" if figures["meets_target"] else "NOT met"}')

        figures['train_samples_per_s'] = None
        if not args.skip_train:
            try:
                from train_throughput import _make_cache, train_throughput
                tcache = _make_cache(tmp / 'train', image_size=64, episodes=4, duration_s=3.0)
                presets = ('tiny',) if args.quick else ('tiny', 'base')
                steps, warmup = (8, 2) if args.quick else (20, 4)
                figures['train_samples_per_s'] = train_throughput(tcache, presets=presets, steps=steps,
                                                                  warmup=warmup, batch_size=8, threads=2)
                for stage, per in figures['train_samples_per_s'].items():
                    for preset, r in per.items():
                        print(f'train {stage:<9} {preset:<5} {r:>8.1f} samples/s')
            except Exception as exc:  # the training part is optional here; say why it is missing
                figures['train_error'] = f'{type(exc).__name__}: {exc}'
                print(f'train throughput not measured: {figures["train_error"]}')
    figures['wall_s'] = round(time.perf_counter() - t_start, 1)
    emit('data', figures, args.out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
