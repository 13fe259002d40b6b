"""Data sources: rosbag2 bags, video files and LeRobot v3 datasets, all yielding `Episode`s.

Every source skips bad inputs with ONE line naming the file and the reason (`Report.skip`) and
keeps going; the summary counts them. Nothing bad is used silently.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, TextIO

import numpy as np

from ..topic_map import TopicMap

__all__ = ['Episode', 'Report', 'detect_kind', 'iter_episodes', 'expand_inputs', 'VIDEO_SUFFIXES']

VIDEO_SUFFIXES = ('.mp4', '.webm', '.avi', '.mkv', '.mov')
BAG_FILE_SUFFIXES = ('.mcap', '.db3')
_COMPRESSED_BAG_FILE = ('.mcap.zstd', '.db3.zstd')
_COMPRESSED_WHY = ('a zstd-compressed bag file, readable only through its bag folder (metadata.yaml '
                   'says how it was compressed): pass that folder, or decompress it (zstd -d)')


@dataclass
class Episode:
    """One episode at a fixed rate: row i of every array belongs to time timestamps[i]."""
    source: str                                 # file or folder it came from
    frames: dict[str, np.ndarray]               # camera -> uint8 [N, H, W, 3]
    timestamps: np.ndarray                      # float64 [N] seconds since the episode start
    task: str = ''
    state: np.ndarray | None = None             # float32 [N, S]
    action: np.ndarray | None = None            # float32 [N, A]
    state_names: list[str] = field(default_factory=list)
    action_names: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)   # clock per topic, success, gaps, start time ...

    @property
    def length(self) -> int:
        return int(self.timestamps.shape[0])


class Report:
    """Collects skipped inputs (one printed line each) and counts for the summary."""

    def __init__(self, stream: TextIO | None = None, quiet: bool = False):
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet
        self.skipped: list[dict] = []
        self.notes: list[str] = []
        self.warnings: list[dict] = []
        self.episodes = 0
        self.frames = 0

    def skip(self, path, reason: str) -> None:
        self.skipped.append({'path': str(path), 'reason': str(reason)})
        if not self.quiet:
            print(f'SKIPPED {path}: {reason}', file=self.stream, flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def warn(self, path, reason: str) -> None:
        """An input used, but not all of it or not as laid out (one printed line each)."""
        self.warnings.append({'path': str(path), 'warning': str(reason)})
        if not self.quiet:
            print(f'WARNING {path}: {reason}', file=self.stream, flush=True)

    def summary(self) -> str:
        warned = f', {len(self.warnings)} warning(s)' if self.warnings else ''
        return (f'{self.episodes} episodes, {self.frames} frames; '
                f'{len(self.skipped)} input(s) skipped{warned}')


def _is_bag(p: Path) -> bool:
    return p.is_dir() and (p / 'metadata.yaml').is_file()


def _is_lerobot(p: Path) -> bool:
    return p.is_dir() and (p / 'meta' / 'info.json').is_file()


def detect_kind(path: str | Path) -> str:
    """'rosbag' | 'video' | 'lerobot' | 'cache' | 'folder' (a folder of bags/videos) | 'unknown'."""
    p = Path(path)
    if _is_bag(p):
        return 'rosbag'
    if _is_lerobot(p):
        return 'lerobot'
    if p.is_dir() and (p / 'meta.json').is_file() and (p / 'episodes').is_dir():
        return 'cache'
    if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES:
        return 'video'
    if p.is_file() and p.suffix.lower() in BAG_FILE_SUFFIXES:
        return 'rosbag'
    if p.is_dir():
        return 'folder'
    return 'unknown'


def expand_inputs(paths, report: Report) -> list[tuple[str, Path]]:
    """Resolve the user's paths to (kind, path) pairs; folders are searched for bags and videos."""
    out: list[tuple[str, Path]] = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            report.skip(p, 'does not exist')
            continue
        kind = detect_kind(p)
        if kind in ('rosbag', 'video', 'lerobot'):
            out.append((kind, p))
        elif kind == 'folder':
            found = []
            for sub in sorted(p.rglob('*')):
                if _is_bag(sub):
                    found.append(('rosbag', sub))
                elif _is_lerobot(sub):
                    found.append(('lerobot', sub))
                elif sub.is_file() and sub.suffix.lower() in VIDEO_SUFFIXES:
                    found.append(('video', sub))
                elif sub.is_file() and sub.suffix.lower() in BAG_FILE_SUFFIXES:
                    found.append(('bag_file', sub))         # a bag file without its metadata.yaml
                elif sub.is_file() and sub.name.lower().endswith(_COMPRESSED_BAG_FILE):
                    found.append(('compressed', sub))
            # files inside a bag or a LeRobot dataset belong to it
            roots = [f for k, f in found if k in ('rosbag', 'lerobot')]
            found = [(k, f) for k, f in found if not any(r != f and r in f.parents for r in roots)]
            if not found:
                report.skip(p, 'no rosbag2 bag, video file or LeRobot dataset found in this folder')
            loose: dict[Path, int] = {}
            for k, f in found:
                if k == 'compressed':
                    report.skip(f, _COMPRESSED_WHY)
                    continue
                if k == 'bag_file':
                    loose[f.parent] = loose.get(f.parent, 0) + 1
                    k = 'rosbag'
                out.append((k, f))
            for folder, n in loose.items():
                # rosbag2 reads a storage file alone; a split recording then becomes n episodes
                report.warn(folder, f'{n} .mcap/.db3 file(s) without a metadata.yaml: each is read as a '
                                    'bag of its own')
        elif p.is_file() and p.name.lower().endswith(_COMPRESSED_BAG_FILE):
            report.skip(p, _COMPRESSED_WHY)
        else:
            report.skip(p, 'not a rosbag2 bag, a video file or a LeRobot dataset')
    return out


def _read_one(kind: str, p: Path, topic_map: TopicMap, report: Report, video_camera: str | None):
    if kind == 'rosbag':
        from .rosbag import read_bag
        return read_bag(p, topic_map, report)
    if kind == 'video':
        from .video import read_video
        return read_video(p, topic_map, report, camera=video_camera)
    from .lerobot import read_lerobot
    return read_lerobot(p, topic_map, report)


def iter_episodes(paths, topic_map: TopicMap, report: Report, video_camera: str | None = None,
                  workers: int = 1) -> Iterator[Episode]:
    """Episodes from any mix of bags, videos and LeRobot datasets; bad inputs are skipped.

    workers > 1 reads that many bags / videos at once in threads (decoding and resizing release the
    GIL); episodes still come out in input order. LeRobot datasets are streamed one at a time.
    """
    inputs = expand_inputs(paths, report)
    if workers <= 1:
        for kind, p in inputs:
            yield from _read_one(kind, p, topic_map, report, video_camera)
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix='defi-data') as pool:
        pending: deque = deque()
        it = iter(inputs)

        def read_all(kind: str, p) -> list:
            return list(_read_one(kind, p, topic_map, report, video_camera))

        def submit_next() -> bool:
            for kind, p in it:
                if kind == 'lerobot':   # large: read lazily in order instead of all at once
                    pending.append((kind, p, None))
                else:
                    pending.append((kind, p, pool.submit(read_all, kind, p)))
                return True
            return False

        for _ in range(workers):
            submit_next()
        while pending:
            kind, p, fut = pending.popleft()
            submit_next()
            if fut is None:
                yield from _read_one(kind, p, topic_map, report, video_camera)
            else:
                yield from fut.result()
