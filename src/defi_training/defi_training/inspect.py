"""`defi-data inspect PATH`: what is in a bag, a video, a LeRobot dataset or an episode cache."""
from __future__ import annotations

from pathlib import Path
from typing import TextIO

from .sources import detect_kind

__all__ = ['inspect_path', 'format_inspection']


def inspect_path(path: str | Path) -> dict:
    """Facts about one input as a dict with 'kind' plus kind-specific keys; unreadable inputs give
    {'kind': ..., 'error': reason}."""
    path = Path(path)
    kind = detect_kind(path)
    try:
        if kind == 'rosbag':
            from .sources.rosbag import inspect_bag
            return {'kind': 'rosbag', 'path': str(path), **inspect_bag(path)}
        if kind == 'video':
            from .sources.video import probe_video, video_instruction
            return {'kind': 'video', 'path': str(path), **probe_video(path), 'instruction': video_instruction(path)}
        if kind == 'lerobot':
            return _inspect_lerobot(path)
        if kind == 'cache':
            return _inspect_cache(path)
        if kind == 'folder':
            items = []
            for sub in sorted(path.iterdir()):
                k = detect_kind(sub)
                if k in ('rosbag', 'lerobot', 'cache', 'video'):
                    items.append(inspect_path(sub))
                elif k == 'folder':
                    nested = inspect_path(sub)
                    if nested.get('items'):
                        items.append(nested)
            return {'kind': 'folder', 'path': str(path), 'items': items}
        return {'kind': 'unknown', 'path': str(path),
                'error': 'does not exist' if not path.exists() else 'not a bag, video, LeRobot dataset or cache'}
    except Exception as exc:
        return {'kind': kind, 'path': str(path), 'error': f'{type(exc).__name__}: {exc}'}


def _inspect_lerobot(path: Path) -> dict:
    from .sources.lerobot import _read_parquets, _read_tasks, lerobot_info
    info = lerobot_info(path)
    eps = _read_parquets(path / 'meta' / 'episodes')
    lengths = eps.column('length').to_pylist() if 'length' in eps.column_names else []
    return {'kind': 'lerobot', 'path': str(path), 'version': info.get('codebase_version'), 'fps': info.get('fps'),
            'episodes': info.get('total_episodes'), 'frames': info.get('total_frames'),
            'tasks': list(_read_tasks(path).values()),
            'features': {k: {'dtype': v.get('dtype'), 'shape': v.get('shape')}
                         for k, v in info.get('features', {}).items()},
            'episode_lengths': lengths}


def _inspect_cache(path: Path) -> dict:
    from .cache import EpisodeCache
    c = EpisodeCache(path)
    m = c.meta
    return {'kind': 'cache', 'path': str(path), 'fps': m['fps'], 'episodes': c.num_episodes, 'frames': c.num_frames,
            'cameras': c.cameras, 'image_size': m['image_size'], 'state_dim': m['state_dim'],
            'action_dim': m['action_dim'], 'tasks': m.get('tasks', []), 'skipped': len(m.get('skipped', [])),
            'episode_lengths': [e['length'] for e in m['episodes']]}


def _fmt_rate(x: float) -> str:
    return f'{x:8.2f}' if x else '       -'


def format_inspection(d: dict, out: TextIO, indent: str = '') -> None:
    """Readable text for inspect_path's dict."""
    p = lambda s='': print(indent + s, file=out)  # noqa: E731
    kind = d.get('kind')
    p(f"{d.get('path')}  [{kind}]")
    if 'error' in d:
        p(f"  ERROR: {d['error']}")
        return
    if kind == 'rosbag':
        p(f"  storage {d['storage']}, compression {d['compression']}, {d['message_count']} messages, "
          f"duration {d['duration_s']:.2f} s")
        for text in d.get('warnings', []):
            p(f'  WARNING: {text}')
        w = max([len(t) for t in d['topics']] + [5])
        p(f"  {'topic':<{w}}  {'type':<36} {'count':>7} {'rate Hz':>8} {'dur s':>8} {'max gap s':>9}  gaps")
        for topic, t in d['topics'].items():
            gaps = ', '.join(f'{dur:.2f}s at {at:.2f}s' for at, dur in t['gaps'][:3])
            if len(t['gaps']) > 3:
                gaps += f", ... ({len(t['gaps'])} in all)"
            p(f"  {topic:<{w}}  {t['type']:<36} {t['count']:>7} {_fmt_rate(t['rate_hz'])} "
              f"{t['duration_s']:8.2f} {t['max_gap_s']:9.3f}  {gaps or '-'}")
    elif kind == 'video':
        p(f"  {d['codec']} {d['width']}x{d['height']}, {d['frames'] or '?'} frames, {d['fps']:.2f} fps, "
          f"duration {d['duration_s']:.2f} s, instruction: {d['instruction']!r}")
    elif kind == 'lerobot':
        p(f"  LeRobot {d['version']}: {d['episodes']} episodes, {d['frames']} frames at {d['fps']} fps, "
          f"{len(d['tasks'])} task(s)")
        for k, v in d['features'].items():
            p(f"    {k:<32} {v['dtype']:<8} {v['shape']}")
    elif kind == 'cache':
        p(f"  cache: {d['episodes']} episodes, {d['frames']} frames at {d['fps']} fps, cameras {d['cameras']}, "
          f"image {d['image_size']}, state {d['state_dim']}, action {d['action_dim']}, "
          f"{d['skipped']} input(s) skipped at build time")
        for t in d['tasks'][:10]:
            p(f'    task: {t!r}')
    elif kind == 'folder':
        if not d['items']:
            p('  (nothing readable found)')
        for item in d['items']:
            format_inspection(item, out, indent + '  ')
