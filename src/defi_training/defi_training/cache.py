"""The episode cache: what training reads (never raw bags).

Layout (one folder, written into a temporary sibling and renamed into place, so a crash never
leaves a half cache under the final name):

    meta.json                          format, fps, cameras, image_size, names, episodes, skipped
    stats.json                         per feature mean/std/min/max/count (float arrays as lists)
    episodes/000000/images.<cam>.npy   uint8 [N, H, W, 3]   (opened with mmap: fast random access)
    episodes/000000/observation.state.npy   float32 [N, S]
    episodes/000000/action.npy              float32 [N, A]
    episodes/000000/timestamp.npy           float64 [N] seconds since the episode start
"""
from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Iterable

import numpy as np

from defi_core.files import replace_directory, temp_directory_for

from .sources import Episode, Report, iter_episodes
from .topic_map import TopicMap

__all__ = ['CACHE_FORMAT', 'EpisodeCache', 'build_cache', 'write_cache', 'RunningStats']

CACHE_FORMAT = 'defi-episode-cache/1'
_CAMERA_NAME = re.compile(r'^[A-Za-z0-9_.-]+$')


class RunningStats:
    """mean/std/min/max over rows of float arrays, accumulated in float64."""

    def __init__(self):
        self.n = 0
        self.sum = None
        self.sumsq = None
        self.min = None
        self.max = None

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float64).reshape(len(x), -1)
        if x.shape[0] == 0:
            return
        if self.sum is None:
            d = x.shape[1]
            self.sum, self.sumsq = np.zeros(d), np.zeros(d)
            self.min, self.max = np.full(d, np.inf), np.full(d, -np.inf)
        self.n += x.shape[0]
        self.sum += x.sum(0)
        self.sumsq += (x * x).sum(0)
        self.min = np.minimum(self.min, x.min(0))
        self.max = np.maximum(self.max, x.max(0))

    def result(self) -> dict:
        mean = self.sum / max(self.n, 1)
        var = np.maximum(self.sumsq / max(self.n, 1) - mean * mean, 0.0)
        return {'mean': mean.tolist(), 'std': np.sqrt(var).tolist(), 'min': self.min.tolist(),
                'max': self.max.tolist(), 'count': int(self.n)}


def write_cache(episodes: Iterable[Episode], out_dir: str | Path, topic_map: TopicMap | None = None,
                report: Report | None = None, overwrite: bool = False,
                sources: list[str] | None = None) -> EpisodeCache:
    """Write episodes into a new cache at out_dir (atomically). Episodes that do not match the first
    one (cameras, image size, state/action width) are skipped and reported."""
    out_dir = Path(out_dir)
    report = report or Report()
    tmp = temp_directory_for(out_dir, overwrite)
    (tmp / 'episodes').mkdir()
    t0 = time.perf_counter()
    ref: dict | None = None
    entries: list[dict] = []
    stats = {'observation.state': RunningStats(), 'action': RunningStats()}
    total_frames = 0
    image_bytes = 0
    try:
        for ep in episodes:
            problem = _check_episode(ep, ref)
            if problem:
                name = str(ep.extra.get('name') or '')
                report.skip(ep.source if not name or ep.source.endswith(name) else f'{ep.source} ({name})', problem)
                continue
            if ref is None:
                first_cam = next(iter(ep.frames.values()))
                ref = {
                    'cameras': list(ep.frames),
                    'hw': tuple(first_cam.shape[1:3]),
                    'state_dim': None if ep.state is None else int(ep.state.shape[1]),
                    'action_dim': None if ep.action is None else int(ep.action.shape[1]),
                    'state_names': list(ep.state_names), 'action_names': list(ep.action_names),
                }
            action = ep.action if ref['action_dim'] is not None else None
            e = len(entries)
            ed = tmp / 'episodes' / f'{e:06d}'
            ed.mkdir()
            for cam in ref['cameras']:
                arr = np.ascontiguousarray(ep.frames[cam], dtype=np.uint8)
                np.save(ed / f'images.{cam}.npy', arr)
                image_bytes += arr.nbytes
            np.save(ed / 'timestamp.npy', np.asarray(ep.timestamps, np.float64))
            if ref['state_dim'] is not None and ep.state is not None:   # _check_episode: both or neither
                np.save(ed / 'observation.state.npy', np.asarray(ep.state, np.float32))
                stats['observation.state'].update(ep.state)
            if action is not None:
                np.save(ed / 'action.npy', np.asarray(action, np.float32))
                stats['action'].update(action)
            entry = {'index': e, 'length': ep.length, 'task': ep.task, 'source': ep.source}
            entry.update({k: v for k, v in ep.extra.items() if _jsonable(v)})
            entries.append(entry)
            total_frames += ep.length
            report.episodes += 1
            report.frames += ep.length
        if ref is None:
            raise ValueError('no usable episode in the inputs (' + report.summary() + ')')
        h, w = ref['hw']
        tm = topic_map.to_dict() if topic_map is not None else None
        meta = {
            'format': CACHE_FORMAT,
            'created': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
            'fps': float(topic_map.fps) if topic_map is not None else float(_guess_fps(entries)),
            'cameras': ref['cameras'],
            'image_size': h if h == w else [h, w],
            'state_names': ref['state_names'] if ref['state_dim'] is not None else [],
            'action_names': ref['action_names'] if ref['action_dim'] is not None else [],
            'state_dim': ref['state_dim'] or 0,
            'action_dim': ref['action_dim'] or 0,
            'has_state': ref['state_dim'] is not None,
            'has_actions': ref['action_dim'] is not None,
            'num_episodes': len(entries),
            'num_frames': total_frames,
            'tasks': sorted({e['task'] for e in entries}),
            'episodes': entries,
            'skipped': list(report.skipped),
            'warnings': list(report.warnings),
            'sources': [str(s) for s in (sources or [])],
            'topic_map': tm,
            'build_seconds': round(time.perf_counter() - t0, 3),
            'image_bytes': int(image_bytes),
        }
        stats_out = {k: s.result() for k, s in stats.items() if s.n}
        # plain writes: the whole folder is renamed into place afterwards
        (tmp / 'stats.json').write_text(json.dumps(stats_out, indent=1))
        (tmp / 'meta.json').write_text(json.dumps(meta, indent=1))
        replace_directory(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return EpisodeCache(out_dir)


def _jsonable(v) -> bool:
    try:
        json.dumps(v)
        return True
    except (TypeError, ValueError):
        return False


def _guess_fps(entries) -> float:
    return float(entries[0].get('fps', 10.0)) if entries else 10.0


def _first_non_finite(arr: np.ndarray) -> tuple[int, int] | None:
    """(row, column) of the first NaN/Inf in a [N, D] array, or None."""
    finite = np.isfinite(arr)
    if finite.all():
        return None
    row, col = np.argwhere(~finite)[0]
    return int(row), int(col)


def _check_episode(ep: Episode, ref: dict | None) -> str | None:
    """Why this episode cannot go into the cache, or None."""
    if ep.length < 1:
        return 'empty episode (0 frames)'
    if not ep.frames:
        return 'episode has no camera frames'
    for cam, fr in ep.frames.items():
        if not _CAMERA_NAME.match(cam):
            return f'camera name {cam!r} may only hold letters, digits, _ . -'
        if fr.ndim != 4 or fr.shape[0] != ep.length or fr.shape[3] != 3 or fr.dtype != np.uint8:
            return f'camera {cam}: frames {fr.dtype} {fr.shape} do not match uint8 [{ep.length}, H, W, 3]'
    for name, arr in (('observation.state', ep.state), ('action', ep.action)):
        if arr is not None:
            if arr.ndim != 2 or arr.shape[0] != ep.length:
                return f'{name}: shape {arr.shape} does not match [{ep.length}, D]'
            bad = _first_non_finite(arr)
            if bad is not None:
                row, col = bad
                names = ep.state_names if name == 'observation.state' else ep.action_names
                label = f' ({names[col]})' if col < len(names) else ''
                return (f'{name}: NaN or infinite value at frame {row} '
                        f'(t={float(ep.timestamps[row]):.2f} s), column {col}{label}')
    if ref is None:
        return None
    if list(ep.frames) != ref['cameras']:
        return f"cameras {list(ep.frames)} differ from the cache's {ref['cameras']}"
    hw = next(iter(ep.frames.values())).shape[1:3]
    if any(fr.shape[1:3] != ref['hw'] for fr in ep.frames.values()):
        return f"image size {tuple(hw)} differs from the cache's {ref['hw']} (set image_size)"
    if ref['state_dim'] is not None:
        if ep.state is None:
            return 'no observation.state, but the cache has one'
        if ep.state.shape[1] != ref['state_dim']:
            return f"observation.state has {ep.state.shape[1]} dims, the cache has {ref['state_dim']}"
    if ref['action_dim'] is not None:
        if ep.action is None:
            return 'no action, but the cache has actions (use action.source=none for action-free data)'
        if ep.action.shape[1] != ref['action_dim']:
            return f"action has {ep.action.shape[1]} dims, the cache has {ref['action_dim']}"
    return None


def build_cache(inputs, out_dir: str | Path, topic_map: TopicMap | None = None, *,
                report: Report | None = None, overwrite: bool = False,
                video_camera: str | None = None, workers: int = 1) -> EpisodeCache:
    """Any mix of bags / videos / LeRobot datasets (paths or folders) -> an episode cache."""
    topic_map = topic_map or TopicMap()
    report = report or Report()
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    eps = iter_episodes(inputs, topic_map, report, video_camera=video_camera, workers=workers)
    return write_cache(eps, out_dir, topic_map, report, overwrite=overwrite, sources=list(inputs))


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f'{path}: not valid JSON ({exc}); the cache is damaged: build it again') from None


def _load_npy(path: Path, mmap_mode=None) -> np.ndarray:
    # a truncated file otherwise says only 'mmap length is greater than file size'
    try:
        return np.load(path, mmap_mode=mmap_mode)
    except FileNotFoundError:
        raise FileNotFoundError(f'{path}: missing; the cache is damaged: build it again') from None
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f'{path}: cannot be read ({exc}); the cache is damaged: build it again') from None


class EpisodeCache:
    """Read side of the cache: memory-mapped frames, float arrays, stats and meta."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta_path = self.path / 'meta.json'
        if not meta_path.is_file():
            raise FileNotFoundError(f'{self.path} is not an episode cache (no meta.json); '
                                    'build one with `defi-data build-cache`')
        self.meta = _read_json(meta_path)
        if not isinstance(self.meta, dict):
            raise ValueError(f'{meta_path}: expected a JSON object; the cache is damaged: build it again')
        if self.meta.get('format') != CACHE_FORMAT:
            raise ValueError(f"{meta_path}: format {self.meta.get('format')!r}, expected {CACHE_FORMAT!r}")
        stats_path = self.path / 'stats.json'
        raw = _read_json(stats_path) if stats_path.is_file() else {}
        self.stats = {k: {s: np.asarray(v[s], np.float32) for s in ('mean', 'std', 'min', 'max')}
                      for k, v in raw.items()}
        self._frames: dict[tuple[int, str], np.ndarray] = {}
        self._arrays: dict[tuple[int, str], np.ndarray] = {}

    def __getstate__(self):
        # DataLoader workers re-open their own memory maps
        d = dict(self.__dict__)
        d['_frames'] = {}
        d['_arrays'] = {}
        return d

    def __repr__(self) -> str:
        return (f'EpisodeCache({str(self.path)!r}, episodes={self.num_episodes}, frames={self.num_frames}, '
                f"cameras={self.cameras}, image_size={self.meta['image_size']})")

    @property
    def num_episodes(self) -> int:
        return int(self.meta['num_episodes'])

    @property
    def num_frames(self) -> int:
        return int(self.meta['num_frames'])

    @property
    def fps(self) -> float:
        return float(self.meta['fps'])

    @property
    def cameras(self) -> list[str]:
        return list(self.meta['cameras'])

    @property
    def has_actions(self) -> bool:
        return bool(self.meta['has_actions'])

    @property
    def has_state(self) -> bool:
        return bool(self.meta['has_state'])

    def _check(self, e: int) -> None:
        if not 0 <= e < self.num_episodes:
            raise IndexError(f'episode {e} out of range (cache has {self.num_episodes})')

    def episode_length(self, e: int) -> int:
        self._check(e)
        return int(self.meta['episodes'][e]['length'])

    def episode_info(self, e: int) -> dict:
        self._check(e)
        return dict(self.meta['episodes'][e])

    def task(self, e: int) -> str:
        self._check(e)
        return str(self.meta['episodes'][e]['task'])

    def _dir(self, e: int) -> Path:
        return self.path / 'episodes' / f'{e:06d}'

    def frames(self, e: int, cam: str) -> np.ndarray:
        key = (e, cam)
        arr = self._frames.get(key)
        if arr is None:
            self._check(e)
            if cam not in self.cameras:
                raise KeyError(f'camera {cam!r} not in the cache (has {self.cameras})')
            arr = _load_npy(self._dir(e) / f'images.{cam}.npy', mmap_mode='r')
            self._frames[key] = arr
        return arr

    def array(self, e: int, name: str) -> np.ndarray:
        key = (e, name)
        arr = self._arrays.get(key)
        if arr is None:
            self._check(e)
            if name == 'action' and not self.has_actions:
                raise KeyError(f'{self.path}: the cache has no actions (action-free data)')
            if name == 'observation.state' and not self.has_state:
                raise KeyError(f'{self.path}: the cache has no observation.state')
            if name not in ('action', 'observation.state', 'timestamp'):
                raise KeyError(f"unknown array {name!r} (action, observation.state, timestamp)")
            path = self._dir(e) / f'{name}.npy'
            arr = _load_npy(path)
            # build-cache skips such episodes; a cache written otherwise would train on NaN
            bad = _first_non_finite(arr.reshape(len(arr), -1)) if name != 'timestamp' else None
            if bad is not None:
                raise ValueError(f'{path}: NaN or infinite value at frame {bad[0]}, column {bad[1]} '
                                 f'(episode {e}, source {self.meta["episodes"][e].get("source", "?")}); '
                                 'the cache is damaged: build it again')
            self._arrays[key] = arr
        return arr

    def timestamps(self, e: int) -> np.ndarray:
        return self.array(e, 'timestamp')
