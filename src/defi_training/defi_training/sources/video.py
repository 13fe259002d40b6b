"""Video-file source (mp4 / webm / avi / mkv / mov via PyAV): action-free episodes, one per file.

The instruction of a file comes from a sidecar: `<name>.json` ({"instruction": ...} or {"task": ...}),
`<name>.txt`, or a CSV in the same folder (instructions.csv / tasks.csv / metadata.csv with a file
column `file`/`filename`/`video`/`path` and a text column `instruction`/`task`/`text`); else the
data config's task.default. Frames are resampled to the config's fps with the as-of rule on the
frames' presentation times.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from defi_core.timesync import asof_indices, fixed_rate_times

from ..topic_map import TopicMap
from . import Episode, Report

if TYPE_CHECKING:
    from av.container import OutputContainer

__all__ = ['read_video', 'video_instruction', 'decode_video', 'write_video', 'VideoWriter', 'probe_video']

_CSV_NAMES = ('instructions.csv', 'tasks.csv', 'metadata.csv')
_FILE_COLS = ('file', 'filename', 'video', 'path')
_TEXT_COLS = ('instruction', 'task', 'text')


def video_instruction(path: Path) -> str | None:
    """The sidecar instruction of a video file, or None."""
    js = path.with_suffix('.json')
    if js.is_file():
        try:
            d = json.loads(js.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f'sidecar {js}: invalid JSON: {exc}') from exc
        if isinstance(d, dict):
            for key in _TEXT_COLS:
                if isinstance(d.get(key), str):
                    return d[key]
        elif isinstance(d, str):
            return d
    txt = path.with_suffix('.txt')
    if txt.is_file():
        return txt.read_text().strip()
    for name in _CSV_NAMES:
        cp = path.parent / name
        if not cp.is_file():
            continue
        with cp.open(newline='') as f:
            for row in csv.DictReader(f):
                row = {(k or '').strip().lower(): (v or '') for k, v in row.items()}
                fcol = next((c for c in _FILE_COLS if c in row), None)
                tcol = next((c for c in _TEXT_COLS if c in row), None)
                if fcol is None or tcol is None:
                    raise ValueError(f'sidecar {cp}: needs a file column ({"/".join(_FILE_COLS)}) and a text '
                                     f'column ({"/".join(_TEXT_COLS)})')
                ref = row[fcol].strip()
                if ref in (path.name, path.stem) or Path(ref).name == path.name:
                    return row[tcol].strip()
    return None


def probe_video(path: str | Path) -> dict:
    """Container facts without decoding: frames, fps, duration, size, codec."""
    import av
    with av.open(str(path)) as c:
        if not c.streams.video:
            raise ValueError('no video stream')
        s = c.streams.video[0]
        fps = float(s.average_rate) if s.average_rate else 0.0
        dur = float(s.duration * s.time_base) if s.duration else (float(c.duration) / 1e6 if c.duration else 0.0)
        return {'frames': int(s.frames), 'fps': fps, 'duration_s': dur, 'width': s.codec_context.width,
                'height': s.codec_context.height, 'codec': s.codec_context.name}


def decode_video(path: str | Path, size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All frames of the first video stream: (uint8 [N, H, W, 3], float64 times in seconds).

    Resizing happens in libswscale (area filter) while decoding, so full-size frames never pile up.
    """
    import av
    frames: list[np.ndarray] = []
    times: list[float] = []
    with av.open(str(path)) as c:
        if not c.streams.video:
            raise ValueError('no video stream')
        s = c.streams.video[0]
        s.thread_type = 'AUTO'
        for i, fr in enumerate(c.decode(s)):
            t = fr.time if fr.time is not None else (i / float(s.average_rate or 30))
            if size is not None:
                img = fr.reformat(width=size, height=size, format='rgb24', interpolation='AREA').to_ndarray()
            else:
                img = fr.to_ndarray(format='rgb24')
            frames.append(img)
            times.append(float(t))
    if not frames:
        return np.zeros((0, size or 1, size or 1, 3), np.uint8), np.zeros(0)
    stamps = np.asarray(times)
    order = np.argsort(stamps, kind='stable')
    return np.stack(frames)[order], stamps[order]


_H264 = ('libx264', 'h264')


class VideoWriter:
    """RGB frames in, one video file out (PyAV): the one encoder behind every video the project writes.

    Frame i gets pts i in a time base of 1/fps, so frames can be added across calls (episode
    after episode into one file, as write_lerobot does). h264 (the default) uses yuv420p, which
    needs even sizes; `gop` sets the keyframe interval (LeRobot seeks better with short GOPs).
    """

    def __init__(self, path: str | Path, width: int, height: int, fps: float, codec: str = 'libx264',
                 crf: int = 18, gop: int | None = None, pix_fmt: str = 'yuv420p'):
        from fractions import Fraction

        import av
        if codec in _H264 and pix_fmt == 'yuv420p' and (height % 2 or width % 2):
            raise ValueError(f'{path}: h264 with yuv420p needs even frame sizes, got {width}x{height}')
        self._av = av
        self.path, self.width, self.height, self.frames = Path(path), int(width), int(height), 0
        rate = Fraction(fps).limit_denominator(1000)
        container = av.open(str(path), mode='w')
        self._container: OutputContainer | None = container
        try:
            stream = container.add_stream('libx264' if codec == 'h264' else codec, rate=rate)
            if not isinstance(stream, av.VideoStream):
                raise ValueError(f'{path}: {codec!r} is not a video codec')
            self._stream = stream
            self._stream.width, self._stream.height, self._stream.pix_fmt = self.width, self.height, pix_fmt
            self._stream.codec_context.time_base = 1 / rate
            if codec in _H264:
                self._stream.options = {'crf': str(crf), 'preset': 'veryfast',
                                        **({'g': str(gop)} if gop is not None else {})}
        except Exception:
            container.close()
            raise

    def write(self, img: np.ndarray) -> None:
        """Append one uint8 [H, W, 3] RGB frame of the writer's size."""
        img = np.ascontiguousarray(img, np.uint8)
        if img.shape != (self.height, self.width, 3):
            raise ValueError(f'{self.path}: frame {self.frames} has shape {img.shape}, '
                             f'expected {(self.height, self.width, 3)}')
        container = self._container
        if container is None:
            raise ValueError(f'{self.path}: the writer is closed')
        frame = self._av.VideoFrame.from_ndarray(img, format='rgb24')
        frame.pts = self.frames
        self.frames += 1
        for packet in self._stream.encode(frame):
            container.mux(packet)

    def close(self, flush: bool = True) -> None:
        """Flush the encoder (unless aborting) and close the file; later calls do nothing."""
        container = self._container
        if container is None:
            return
        try:
            if flush:
                for packet in self._stream.encode():
                    container.mux(packet)
        finally:
            container.close()
            self._container = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(flush=exc_type is None)


def write_video(path: str | Path, frames: np.ndarray, fps: float, codec: str = 'libx264',
                crf: int = 18, pix_fmt: str = 'yuv420p', gop: int | None = 30) -> None:
    """uint8 [N, H, W, 3] -> a video file (h264 mp4 by default; libvpx-vp9 for webm, mpeg4 for avi)."""
    frames = np.asarray(frames, np.uint8)
    _, h, w, _ = frames.shape
    with VideoWriter(path, w, h, fps, codec=codec, crf=crf, gop=gop, pix_fmt=pix_fmt) as writer:
        for img in frames:
            writer.write(img)


def read_video(path: str | Path, tm: TopicMap, report: Report, camera: str | None = None) -> Iterator[Episode]:
    """One action-free episode from one video file; unreadable files are skipped and reported."""
    path = Path(path)
    cam = camera or next(iter(tm.cameras))
    try:
        task = video_instruction(path)
    except (OSError, ValueError) as exc:
        report.skip(path, str(exc))
        return
    try:
        frames, times = decode_video(path, tm.image_size)
    except Exception as exc:  # av.error.* (corrupt/unsupported), OSError
        report.skip(path, f'unreadable video: {type(exc).__name__}: {exc}')
        return
    if frames.shape[0] == 0:
        report.skip(path, 'empty episode: the video has no frames')
        return
    _warn_if_truncated(path, times, report)
    t_ns = np.round(times * 1e9).astype(np.int64)
    q = fixed_rate_times(int(t_ns[0]), int(t_ns[-1]), tm.fps)
    idx = asof_indices(t_ns, q, int(tm.max_age_s * 1e9))
    keep = idx >= 0
    if keep.sum() < tm.min_episode_frames:
        report.skip(path, f'empty episode: {int(keep.sum())} frame(s) at {tm.fps} fps, '
                          f'fewer than min_episode_frames={tm.min_episode_frames}')
        return
    # a gap (no frame within max_age_s) splits the episode or is dropped, as for bags
    runs = _runs(keep)
    segs = runs if tm.gap_policy == 'split' else [np.nonzero(keep)[0]]
    if len(runs) > 1:
        at = ', '.join(f'{(q[r[-1]] - q[0]) / 1e9:.2f} s' for r in runs[:-1][:3])
        more = ', ...' if len(runs) > 4 else ''
        then = (f'split into {len(runs)} episodes' if tm.gap_policy == 'split'
                else f'{int((~keep).sum())} frame time(s) dropped, timestamps jump (gap_policy: drop)')
        report.warn(path, f'{len(runs) - 1} gap(s) without a frame for over max_age_s={tm.max_age_s} s '
                          f'(after {at}{more}): {then}')
    for si, rows in enumerate(segs):
        if rows.size < tm.min_episode_frames:
            report.skip(f'{path} segment {si}', f'empty episode: {rows.size} frame(s) between gaps, '
                                                f'fewer than min_episode_frames={tm.min_episode_frames}')
            continue
        qs, ids = q[rows], idx[rows]
        yield Episode(source=str(path), frames={cam: frames[ids]}, timestamps=(qs - qs[0]) / 1e9,
                      task=task if task is not None else tm.task.default,
                      extra={'clock': {'video': 'pts'}, 'start_time_ns': int(qs[0]),
                             'dropped_frames': int((~keep).sum()), 'name': path.name, 'segment': si,
                             'num_segments': len(segs), 'gaps': len(runs) - 1, 'gap_policy': tm.gap_policy})


def _runs(mask: np.ndarray) -> list[np.ndarray]:
    """Index arrays of the maximal runs of True in mask."""
    idx = np.nonzero(mask)[0]
    return np.split(idx, np.nonzero(np.diff(idx) > 1)[0] + 1) if idx.size else []


def _warn_if_truncated(path: Path, times: np.ndarray, report: Report) -> None:
    """A file cut short decodes without an error into fewer frames than its header declares."""
    try:
        declared = probe_video(path)
    except Exception:  # noqa: BLE001 - it decoded; a header that cannot be probed declares nothing
        return
    period = 1.0 / declared['fps'] if declared['fps'] > 0 else (
        float(np.median(np.diff(times))) if times.size > 1 else 0.0)
    decoded = float(times[-1] - times[0]) + period
    if declared['duration_s'] - decoded > 2 * period + 0.01 * declared['duration_s']:
        report.warn(path, f"decoded {decoded:.2f} s of the {declared['duration_s']:.2f} s its header declares "
                          '(truncated file?); using what decoded')
