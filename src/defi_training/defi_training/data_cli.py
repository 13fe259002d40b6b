"""`defi-data`: inspect inputs, build the episode cache, convert to LeRobot v3.

    defi-data inspect PATH [PATH ...] [--json]
    defi-data build-cache PATH [PATH ...] --out DIR [--config config/data_metaworld.yaml] [key=value ...]
    defi-data convert --to lerobot PATH [PATH ...] --out DIR [--config ...] [key=value ...]

key=value words override data config (topic map) keys, e.g. fps=5 action.source=none; `--help`
lists them.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from defi_core.cli import run_cli
from defi_core.config_io import describe, is_override

from .topic_map import TopicMap, load_topic_map

__all__ = ['main']


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument('--config', help='data config YAML (topic map); default: built-in defaults')
    p.add_argument('--image-size', type=int, help='shortcut for image_size=N')
    p.add_argument('--camera', help='camera name for video files (default: the first camera in the config)')
    p.add_argument('--overwrite', action='store_true', help='replace --out if it exists')
    p.add_argument('--workers', type=int, default=1, help='bags / videos read in parallel threads (default 1)')


def _split_overrides(args) -> None:
    """`key=value` words among the paths are config overrides (the train CLI's style)."""
    paths: list[str] = []
    extra: list[str] = []
    for p in args.paths:
        (extra if is_override(p) and not Path(p).exists() else paths).append(p)
    args.paths = paths
    if args.command != 'inspect':
        args.overrides = extra
    elif extra:
        raise ValueError(f'unexpected override(s) {extra}')
    if not paths:
        raise ValueError('no input path given')


def _topic_map(args):
    overrides = list(args.overrides)
    if args.image_size:
        overrides.append(f'image_size={args.image_size}')
    tm = load_topic_map(args.config, overrides)
    _choose_rate(tm, args.paths, f'defi-data {args.command}')
    return tm


def _choose_rate(tm, paths, prog: str) -> None:
    """The rate episodes are resampled to: the data config's fps when it sets one, else the
    LeRobot inputs' own fps (meta/info.json), else the default; printed either way."""
    if tm.fps_explicit:
        print(f'{prog}: {tm.fps:g} fps (the data config\'s fps)', flush=True)
        return
    from .sources import Report, expand_inputs
    from .sources.lerobot import lerobot_info
    rates = {}
    for kind, p in expand_inputs(paths, Report(quiet=True)):
        if kind == 'lerobot':
            try:
                rate = float(lerobot_info(p)['fps'])
            except (ValueError, KeyError, TypeError):
                continue            # read_lerobot skips it with the reason
            if rate > 0:
                rates[p] = rate
    if not rates:
        print(f'{prog}: {tm.fps:g} fps (the default; set fps=N to change it)', flush=True)
        return
    if len(set(rates.values())) > 1:
        listed = ', '.join(f'{p}: {r:g}' for p, r in rates.items())
        raise ValueError(f'the LeRobot inputs have different fps ({listed}); set fps=N to resample them to one rate')
    first, fps = next(iter(rates.items()))
    tm.fps = fps
    print(f"{prog}: {fps:g} fps, the rate of {first} (meta/info.json); set fps=N to resample", flush=True)


def _cmd_inspect(args) -> int:
    from .inspect import format_inspection, inspect_path
    results = [inspect_path(p) for p in args.paths]
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for r in results:
            format_inspection(r, sys.stdout)
    return 1 if any(_failed(r) for r in results) else 0


def _failed(result: dict) -> bool:
    """An input, or any item inside a folder, that could not be read."""
    return 'error' in result or any(_failed(item) for item in result.get('items', ()))


def _cmd_build_cache(args) -> int:
    from .cache import build_cache
    from .sources import Report
    tm = _topic_map(args)
    report = Report()
    t0 = time.perf_counter()
    cache = build_cache(args.paths, args.out, tm, report=report, overwrite=args.overwrite,
                        video_camera=args.camera, workers=args.workers)
    dt = time.perf_counter() - t0
    print(f'wrote {cache.path}: {report.summary()} in {dt:.1f} s '
          f'({report.frames / max(dt, 1e-9):.0f} frames/s); {cache.fps:g} fps, cameras {cache.cameras}, '
          f"image {cache.meta['image_size']}, state {cache.meta['state_dim']}, action {cache.meta['action_dim']}")
    return 0


def _cmd_convert(args) -> int:
    from .cache import EpisodeCache
    from .sources import Report, detect_kind, iter_episodes
    from .sources.lerobot import episodes_from_cache, write_lerobot
    if args.to != 'lerobot':
        print(f'defi-data convert: unknown target {args.to!r} (only lerobot)', file=sys.stderr)
        return 2
    report = Report()
    if len(args.paths) == 1 and detect_kind(args.paths[0]) == 'cache':
        cache = EpisodeCache(args.paths[0])
        eps = episodes_from_cache(cache)
        fps = cache.fps
    else:
        tm = _topic_map(args)
        eps = iter_episodes(args.paths, tm, report, video_camera=args.camera, workers=args.workers)
        fps = tm.fps
    out = write_lerobot(eps, args.out, fps=fps, overwrite=args.overwrite, report=report,
                        robot_type=args.robot_type)
    print(f'wrote LeRobot v3 dataset {out}: {report.summary()} at {fps:g} fps')
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog='defi-data', description=__doc__.split('\n')[0])
    sub = ap.add_subparsers(dest='command', required=True)
    p = sub.add_parser('inspect', help='print topics, types, counts, rates, durations and gaps')
    p.add_argument('paths', nargs='+')
    p.add_argument('--json', action='store_true', help='machine-readable output')
    p.set_defaults(func=_cmd_inspect)
    keys = 'data config keys (key=value after the paths; default shown):\n' + '\n'.join(describe(TopicMap))
    raw = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser('build-cache', help='bags / videos / LeRobot datasets -> episode cache for training',
                       epilog=keys, formatter_class=raw)
    p.add_argument('paths', nargs='+')
    p.add_argument('--out', required=True, help='cache folder to create')
    _config_args(p)
    p.set_defaults(func=_cmd_build_cache)
    p = sub.add_parser('convert', help='export bags / videos / a cache as a LeRobot v3 dataset',
                       epilog=keys, formatter_class=raw)
    p.add_argument('paths', nargs='+')
    p.add_argument('--to', required=True, choices=['lerobot'])
    p.add_argument('--out', required=True)
    p.add_argument('--robot-type', default=None)
    _config_args(p)
    p.set_defaults(func=_cmd_convert)
    return ap


def main(argv=None) -> int:
    parser = build_parser()
    # paths and key=value overrides may come before or after the options
    args, rest = parser.parse_known_args(argv)
    bad = [r for r in rest if r.startswith('-')]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    args.paths = list(args.paths) + rest

    def body():
        _split_overrides(args)
        return args.func(args)
    # one line + exit 2 for bad input and file-system errors, 130 on Ctrl-C (the cache and the
    # LeRobot writer remove their temporary folder on the way out)
    return run_cli(f'defi-data {args.command}', body, writing=getattr(args, 'out', None))


if __name__ == '__main__':
    sys.exit(main())
