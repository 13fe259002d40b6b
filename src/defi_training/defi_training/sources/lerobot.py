"""LeRobot v3 datasets: read (hub datasets a user brings) and write (export of bags / caches).

Layout (codebase_version v3.0):
    meta/info.json, meta/stats.json, meta/tasks.parquet,
    meta/episodes/chunk-000/file-000.parquet    one row per episode (length, tasks, offsets)
    data/chunk-000/file-000.parquet             one row per frame (state, action, indices)
    videos/<key>/chunk-000/file-000.mp4         all episodes of one camera back to back (h264)
Only pyarrow and PyAV are used (no lerobot, no pandas). Float arrays round-trip exactly; images go
through h264 and come back close, not bit-exact.
Stats as LeRobot's own recorder writes them, since its training normalises with them: min, max,
mean, std, count and the quantiles q01..q99 of every numeric and camera feature (cameras per
channel in [0, 1], shaped [3, 1, 1]), per episode in the episodes parquet (stats/<feature>/<stat>,
what lerobot-edit-dataset rebuilds meta/stats.json from) and over the dataset in meta/stats.json.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from defi_core.files import replace_directory, temp_directory_for
from defi_core.image_codec import ImageDecodeError, decode_compressed, resize_image
from defi_core.timesync import asof_indices, fixed_rate_times

from ..topic_map import TopicMap
from . import Episode, Report
from .video import VideoWriter

__all__ = ['CODEBASE_VERSION', 'read_lerobot', 'write_lerobot', 'episodes_from_cache', 'lerobot_info']

CODEBASE_VERSION = 'v3.0'
IMAGE_PREFIX = 'observation.images.'
DATA_PATH = 'data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet'
VIDEO_PATH = 'videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4'
EPISODES_PATH = 'meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet'


def lerobot_info(root: str | Path) -> dict:
    p = Path(root) / 'meta' / 'info.json'
    try:
        info = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f'{p}: cannot read: {exc}') from exc
    version = str(info.get('codebase_version', ''))
    if not version.startswith('v3'):
        raise ValueError(f'{p}: codebase_version {version!r} is not supported (LeRobot v3.x only)')
    return info


def _col_to_array(col) -> np.ndarray:
    """An arrow column of scalars or (fixed size) lists -> numpy [N] or [N, D]."""
    import pyarrow as pa
    col = col.combine_chunks() if hasattr(col, 'combine_chunks') else col
    t = col.type
    if pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t):
        n = len(col)
        flat = col.flatten().to_numpy(zero_copy_only=False)
        return flat.reshape(n, -1) if n else flat.reshape(0, 0)
    return col.to_numpy(zero_copy_only=False)


def _read_tasks(root: Path) -> dict[int, str]:
    import pyarrow.parquet as pq
    p = root / 'meta' / 'tasks.parquet'
    if p.is_file():
        t = pq.read_table(p)
        names = t.column_names
        idx = _col_to_array(t.column('task_index')).astype(int)
        text_col = 'task' if 'task' in names else next(
            (n for n in names if n != 'task_index' and str(t.schema.field(n).type) in ('string', 'large_string')), None)
        if text_col is None:
            raise ValueError(f'{p}: no task text column')
        return dict(zip(idx.tolist(), [str(x) for x in t.column(text_col).to_pylist()], strict=True))
    p = root / 'meta' / 'tasks.jsonl'
    if p.is_file():
        out = {}
        for line in p.read_text().splitlines():
            if line.strip():
                d = json.loads(line)
                out[int(d['task_index'])] = str(d['task'])
        return out
    return {}


def _read_parquets(folder: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    files = sorted(folder.rglob('*.parquet'))
    if not files:
        raise ValueError(f'{folder}: no parquet files')
    tables = [pq.read_table(f) for f in files]
    return pa.concat_tables(tables, promote_options='default') if len(tables) > 1 else tables[0]


class _VideoFile:
    """All frames of one mp4 decoded at the training size, indexed by time."""

    def __init__(self, path: Path, size: int | None):
        from .video import decode_video
        self.frames, self.times = decode_video(path, size)

    def at(self, t_s: np.ndarray, fps: float) -> np.ndarray:
        # nearest decoded frame to each timestamp (pts are exact multiples of 1/fps when we wrote them)
        idx = np.searchsorted(self.times, t_s - 0.5 / fps, side='left')
        idx = np.clip(idx, 0, len(self.times) - 1)
        bad = np.abs(self.times[idx] - t_s) > 0.5 / fps + 1e-6
        if bad.any():
            raise ValueError(f'no video frame within half a frame of t={float(t_s[bad][0]):.3f}s')
        return self.frames[idx]


def read_lerobot(root: str | Path, tm: TopicMap, report: Report) -> Iterator[Episode]:
    """Episodes of a LeRobot v3 dataset folder; broken datasets/episodes are skipped and reported."""
    root = Path(root)
    try:
        info = lerobot_info(root)
        features = info.get('features', {})
        fps = float(info['fps'])
        data = _read_parquets(root / 'data')
        episodes = _read_parquets(root / 'meta' / 'episodes')
        tasks = _read_tasks(root)
    except Exception as exc:
        report.skip(root, f'cannot read LeRobot dataset: {type(exc).__name__}: {exc}')
        return
    cam_keys = [k for k, f in features.items() if f.get('dtype') in ('video', 'image')]
    if not cam_keys:
        report.skip(root, 'LeRobot dataset has no video/image feature')
        return
    cols = set(data.column_names)
    ep_col = _col_to_array(data.column('episode_index')).astype(np.int64)
    frame_col = _col_to_array(data.column('frame_index')).astype(np.int64) if 'frame_index' in cols else None
    ts_col = _col_to_array(data.column('timestamp')).astype(np.float64)
    state = _col_to_array(data.column('observation.state')).astype(np.float32) if 'observation.state' in cols else None
    action = None
    if 'action' in cols and tm.action.source != 'none':
        action = _col_to_array(data.column('action')).astype(np.float32)
    task_idx = _col_to_array(data.column('task_index')).astype(np.int64) if 'task_index' in cols else None
    names = {k: (features.get(k, {}).get('names') or []) for k in ('observation.state', 'action')}
    names = {k: (list(v) if isinstance(v, list) else list(next(iter(v.values()), [])) if isinstance(v, dict) else [])
             for k, v in names.items()}
    ep_rows = episodes.to_pylist()
    videos: dict[tuple[str, int, int], _VideoFile] = {}
    broken: dict[tuple[str, int, int], str] = {}    # a shared file that failed is not decoded again
    # rows grouped by episode once (stable: file order within an episode), not one scan per episode
    by_episode = np.argsort(ep_col, kind='stable')
    sorted_eps = ep_col[by_episode]
    for row in sorted(ep_rows, key=lambda r: int(r['episode_index'])):
        e = int(row['episode_index'])
        where = f'{root} episode {e}'
        sel = by_episode[np.searchsorted(sorted_eps, e, 'left'):np.searchsorted(sorted_eps, e, 'right')]
        if frame_col is not None:
            sel = sel[np.argsort(frame_col[sel], kind='stable')]
        if sel.size == 0:
            report.skip(where, 'empty episode: no rows in data/')
            continue
        try:
            frames = {}
            for key in cam_keys:
                cam = key[len(IMAGE_PREFIX):] if key.startswith(IMAGE_PREFIX) else key.replace('/', '_')
                if features[key]['dtype'] == 'video':
                    ci = int(row.get(f'videos/{key}/chunk_index', 0) or 0)
                    fi = int(row.get(f'videos/{key}/file_index', 0) or 0)
                    vk = (key, ci, fi)
                    if vk in broken:
                        raise ValueError(broken[vk])
                    if vk not in videos:
                        vpath = root / info.get('video_path', VIDEO_PATH).format(
                            video_key=key, chunk_index=ci, file_index=fi)
                        try:
                            videos.clear()  # one file decoded at a time keeps memory bounded
                            videos[vk] = _VideoFile(vpath, tm.image_size)
                        except Exception as exc:
                            broken[vk] = f'unreadable video {vpath}: {type(exc).__name__}: {exc}'
                            raise ValueError(broken[vk]) from exc
                    t0 = float(row.get(f'videos/{key}/from_timestamp', 0.0) or 0.0)
                    frames[cam] = videos[vk].at(t0 + ts_col[sel] - ts_col[sel][0], fps)
                else:
                    imgs = data.column(key).take(sel).to_pylist()
                    arr = np.stack([decode_compressed('png', d['bytes']) for d in imgs])
                    if tm.image_size is not None:
                        arr = resize_image(arr, tm.image_size, tm.image_size)
                    frames[cam] = arr
        except (ValueError, ImageDecodeError) as exc:
            report.skip(where, str(exc))
            continue
        if task_idx is not None and int(task_idx[sel[0]]) in tasks:
            task = tasks[int(task_idx[sel[0]])]
        else:
            t = row.get('tasks')
            task = str(t[0]) if isinstance(t, list) and t else tm.task.default
        ts = ts_col[sel] - ts_col[sel][0]
        st = None if state is None else state[sel]
        ac = None if action is None else action[sel]
        if abs(tm.fps - fps) > 1e-6:
            # resample with the as-of rule on the (microsecond-rounded) frame timestamps
            t_ns = np.round(ts * 1e6).astype(np.int64) * 1000
            q = fixed_rate_times(0, int(t_ns[-1]), tm.fps)
            idx = asof_indices(t_ns, q, int(tm.max_age_s * 1e9))
            keep = idx >= 0
            q, idx = q[keep], idx[keep]
            frames = {c: f[idx] for c, f in frames.items()}
            st = None if st is None else st[idx]
            ac = None if ac is None else ac[idx]
            ts = q / 1e9
        if ts.size < tm.min_episode_frames:
            report.skip(where, f'empty episode: {ts.size} frame(s), fewer than min_episode_frames')
            continue
        yield Episode(source=str(root), frames=frames, timestamps=ts, task=task, state=st, action=ac,
                      state_names=names['observation.state'], action_names=names['action'],
                      extra={'lerobot_episode': e, 'name': f'episode {e}', 'clock': {'lerobot': 'timestamp'}})


def episodes_from_cache(cache) -> Iterator[Episode]:
    """The cache's episodes as Episode objects (e.g. to export a cache to LeRobot)."""
    for e in range(cache.num_episodes):
        yield Episode(
            source=str(cache.path), frames={c: np.asarray(cache.frames(e, c)) for c in cache.cameras},
            timestamps=cache.timestamps(e), task=cache.task(e),
            state=cache.array(e, 'observation.state') if cache.has_state else None,
            action=cache.array(e, 'action') if cache.has_actions else None,
            state_names=list(cache.meta.get('state_names', [])),
            action_names=list(cache.meta.get('action_names', [])))


# LeRobot's quantiles (its QUANTILES normalisation reads q01 and q99)
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
# frames of an episode that its camera stats look at, evenly spaced (LeRobot samples too)
IMAGE_STATS_FRAMES = 100


def _quantile_key(q: float) -> str:
    return f'q{round(q * 100):02d}'


def _stats(x: np.ndarray) -> dict:
    """Stats over rows of x [N, D]: arrays of D values (count: [N])."""
    x = np.asarray(x, np.float64)
    out = {'min': x.min(0), 'max': x.max(0), 'mean': x.mean(0), 'std': x.std(0), 'count': np.array([x.shape[0]])}
    out.update(zip(map(_quantile_key, QUANTILES), np.quantile(x, QUANTILES, axis=0), strict=True))
    return out


def _image_stats(frames: np.ndarray) -> dict:
    """Per-channel stats of uint8 frames [N, H, W, 3] in [0, 1]; count = frames looked at."""
    n = len(frames)
    pick = np.unique(np.linspace(0, n - 1, min(n, IMAGE_STATS_FRAMES)).round().astype(int))
    out = _stats(frames[pick].reshape(-1, frames.shape[-1]) / 255.0)
    out['count'] = np.array([len(pick)])
    return out


def _aggregate(parts: list) -> dict:
    """Dataset stats from episode stats: min/max/mean/std exact over the frames looked at (all of
    one size), quantiles the count-weighted mean of the episodes' (as LeRobot's aggregate_stats)."""
    n = np.array([p['count'][0] for p in parts], np.float64)[:, None]
    means = np.stack([p['mean'] for p in parts])
    mean = (n * means).sum(0) / n.sum()
    var = (n * (np.stack([p['std'] for p in parts]) ** 2 + (means - mean) ** 2)).sum(0) / n.sum()
    out = {'min': np.min([p['min'] for p in parts], 0), 'max': np.max([p['max'] for p in parts], 0),
           'mean': mean, 'std': np.sqrt(var), 'count': np.array([int(n.sum())])}
    for key in map(_quantile_key, QUANTILES):
        out[key] = (n * np.stack([p[key] for p in parts])).sum(0) / n.sum()
    return out


def _as_json(stats: dict, image: bool = False) -> dict:
    """Arrays -> lists; camera stats shaped [3, 1, 1] as LeRobot stores them (count stays [N])."""
    return {k: (np.reshape(v, (-1, 1, 1)) if image and k != 'count' else np.asarray(v)).tolist()
            for k, v in stats.items()}


def _json_fps(fps: float):
    """LeRobot writes fps as an int; a non-integral rate stays a float."""
    return int(fps) if float(fps).is_integer() else float(fps)


def _pandas_index_meta(index_col: str, cols: list[tuple[str, str]]) -> bytes:
    """Parquet schema metadata that makes pandas (LeRobot reads tasks.parquet with it) use
    `index_col` as the DataFrame index."""
    return json.dumps({
        'index_columns': [index_col],
        'column_indexes': [{'name': None, 'field_name': None, 'pandas_type': 'unicode', 'numpy_type': 'object',
                            'metadata': {'encoding': 'UTF-8'}}],
        'columns': [{'name': n, 'field_name': n, 'pandas_type': pt, 'numpy_type': 'object' if pt == 'unicode' else pt,
                     'metadata': None} for n, pt in cols],
        'creator': {'library': 'pyarrow', 'version': '0'}, 'pandas_version': '2.2.0',
    }).encode()


def write_lerobot(episodes: Iterable[Episode], out_dir: str | Path, fps: float, *, robot_type: str | None = None,
                  overwrite: bool = False, crf: int = 18, report: Report | None = None) -> Path:
    """Write episodes as a LeRobot v3 dataset (atomically: temp folder, then rename)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    out_dir = Path(out_dir)
    report = report or Report()
    tmp = temp_directory_for(out_dir, overwrite)
    (tmp / 'meta').mkdir()
    writers: dict[str, VideoWriter] = {}
    rows: dict[str, list] = {k: [] for k in ('timestamp', 'frame_index', 'episode_index', 'index', 'task_index')}
    states, actions = [], []
    image_stats: dict[str, list] = {}      # camera -> stats of each episode
    ep_rows: list[dict] = []
    tasks: dict[str, int] = {}
    ref = None
    total = 0
    try:
        for ep in episodes:
            cams = list(ep.frames)
            sig = (cams, {c: ep.frames[c].shape[1:] for c in cams}, None if ep.state is None else ep.state.shape[1],
                   None if ep.action is None else ep.action.shape[1])
            if ref is None:
                ref = sig
                ref_names = (list(ep.state_names), list(ep.action_names))
                for c in cams:
                    h, w = ep.frames[c].shape[1:3]
                    if h % 2 or w % 2:
                        raise ValueError(f'camera {c}: h264 needs even frame sizes, got {w}x{h}')
                    key = IMAGE_PREFIX + c
                    vp = tmp / VIDEO_PATH.format(video_key=key, chunk_index=0, file_index=0)
                    vp.parent.mkdir(parents=True, exist_ok=True)
                    writers[c] = VideoWriter(vp, w, h, fps, crf=crf, gop=2)
            elif sig != ref:
                report.skip(ep.source, f'episode shape {sig} differs from the first episode {ref}')
                continue
            e = len(ep_rows)
            n = ep.length
            ti = tasks.setdefault(ep.task, len(tasks))
            row = {'episode_index': e, 'tasks': [ep.task], 'length': n,
                   'data/chunk_index': 0, 'data/file_index': 0,
                   'dataset_from_index': total, 'dataset_to_index': total + n,
                   'meta/episodes/chunk_index': 0, 'meta/episodes/file_index': 0}
            for c in cams:
                start = writers[c].frames
                for img in ep.frames[c]:
                    writers[c].write(img)
                key = IMAGE_PREFIX + c
                row[f'videos/{key}/chunk_index'] = 0
                row[f'videos/{key}/file_index'] = 0
                row[f'videos/{key}/from_timestamp'] = float(start / fps)
                row[f'videos/{key}/to_timestamp'] = float((start + n) / fps)
            # timestamps: frame_index / fps, as LeRobot's recorder writes them
            rows['timestamp'].append((np.arange(n) / fps).astype(np.float32))
            rows['frame_index'].append(np.arange(n, dtype=np.int64))
            rows['episode_index'].append(np.full(n, e, np.int64))
            rows['index'].append(np.arange(total, total + n, dtype=np.int64))
            rows['task_index'].append(np.full(n, ti, np.int64))
            if ep.state is not None:
                states.append(np.asarray(ep.state, np.float32))
            if ep.action is not None:
                actions.append(np.asarray(ep.action, np.float32))
            ep_stats = {}
            if ep.state is not None:
                ep_stats['observation.state'] = _as_json(_stats(states[-1]))
            if ep.action is not None:
                ep_stats['action'] = _as_json(_stats(actions[-1]))
            for k in rows:
                ep_stats[k] = _as_json(_stats(rows[k][-1].reshape(-1, 1)))
            for c in cams:
                image_stats.setdefault(c, []).append(_image_stats(ep.frames[c]))
                ep_stats[IMAGE_PREFIX + c] = _as_json(image_stats[c][-1], image=True)
            row.update({f'stats/{k}/{name}': v for k, st in ep_stats.items() for name, v in st.items()})
            ep_rows.append(row)
            total += n
            report.episodes += 1
            report.frames += n
        for writer in writers.values():
            writer.close()
        writers = {}
        if ref is None:
            raise ValueError('no episode to export')
        cams = ref[0]

        def fsl(arr: np.ndarray):
            return pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1), pa.float32()), arr.shape[1])

        cols = {}
        features: dict[str, dict] = {}
        stats = {}
        if states:
            st = np.concatenate(states)
            cols['observation.state'] = fsl(st)
            features['observation.state'] = {'dtype': 'float32', 'shape': [st.shape[1]],
                                             'names': ref_names[0] or None}
            stats['observation.state'] = _as_json(_stats(st))
        if actions:
            ac = np.concatenate(actions)
            cols['action'] = fsl(ac)
            features['action'] = {'dtype': 'float32', 'shape': [ac.shape[1]], 'names': ref_names[1] or None}
            stats['action'] = _as_json(_stats(ac))
        for k in rows:
            arr = np.concatenate(rows[k])
            cols[k] = pa.array(arr)
            features[k] = {'dtype': 'float32' if k == 'timestamp' else 'int64', 'shape': [1], 'names': None}
            stats[k] = _as_json(_stats(arr.reshape(-1, 1)))
        for c in cams:
            h, w = ref[1][c][:2]
            features[IMAGE_PREFIX + c] = {
                'dtype': 'video', 'shape': [h, w, 3], 'names': ['height', 'width', 'channels'],
                'info': {'video.height': h, 'video.width': w, 'video.codec': 'h264', 'video.pix_fmt': 'yuv420p',
                         'video.is_depth_map': False, 'video.fps': _json_fps(fps), 'video.channels': 3,
                         'has_audio': False}}
            stats[IMAGE_PREFIX + c] = _as_json(_aggregate(image_stats[c]), image=True)
        dp = tmp / DATA_PATH.format(chunk_index=0, file_index=0)
        dp.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(cols), dp)
        epp = tmp / EPISODES_PATH.format(chunk_index=0, file_index=0)
        epp.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(ep_rows), epp)
        task_list = sorted(tasks, key=tasks.__getitem__)
        ttab = pa.table({'task': pa.array(task_list, pa.string()),
                         'task_index': pa.array([tasks[t] for t in task_list], pa.int64())})
        ttab = ttab.replace_schema_metadata({b'pandas': _pandas_index_meta('task', [('task', 'unicode'),
                                                                                     ('task_index', 'int64')])})
        pq.write_table(ttab, tmp / 'meta' / 'tasks.parquet')
        info = {
            'codebase_version': CODEBASE_VERSION, 'robot_type': robot_type, 'total_episodes': len(ep_rows),
            'total_frames': total, 'total_tasks': len(tasks), 'chunks_size': 1000,
            'data_files_size_in_mb': 100, 'video_files_size_in_mb': 500, 'fps': _json_fps(fps),
            'splits': {'train': f'0:{len(ep_rows)}'}, 'data_path': DATA_PATH, 'video_path': VIDEO_PATH,
            'features': features,
        }
        (tmp / 'meta' / 'info.json').write_text(json.dumps(info, indent=2))
        (tmp / 'meta' / 'stats.json').write_text(json.dumps(stats, indent=2))
        replace_directory(tmp, out_dir)
    except BaseException:
        for writer in writers.values():
            try:
                writer.close(flush=False)
            except Exception:
                pass
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
