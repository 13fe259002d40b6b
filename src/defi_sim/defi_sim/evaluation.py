"""Closed-loop evaluation results: statistics, the results JSON + markdown, and the pictures.

ROS-free and simulator-free (it imports neither rclpy nor MuJoCo, so results can be summarized and
drawn anywhere defi_sim is installed): the episode runners (defi_sim.evaluate, in-process or
through ROS 2) produce `EpisodeResult`s; this module turns them into

    {"tasks": {name: {"success": rate, "ci95": [lo, hi], "episodes": n, "mean_length": steps}},
     "mean_success": rate, "ci95": [lo, hi], "latency_ms": {"median", "p95", "mean", "count"},
     "checkpoint": path, "mode": "inprocess" | "ros"}

Intervals (95%, computed by scipy.stats):
- per task: the Wilson score interval of the binomial success rate (well behaved at 0/n and n/n,
  unlike the normal approximation): `binomtest(k, n).proportion_ci(method='wilson')`;
- mean across tasks (the unweighted mean of the per-task rates): a stratified percentile bootstrap
  over episodes (`scipy.stats.bootstrap`, one unpaired sample per task): each resample redraws
  every task's episodes with replacement within that task (so each task keeps its episode count)
  and recomputes the mean of the per-task rates; 10000 resamples with a fixed seed, so the same
  episodes always give the same interval. When every episode of every task has the same outcome
  the bootstrap interval collapses to a point; the per-task Wilson intervals still show the
  uncertainty then.

Pictures: a PNG strip per chosen step (top row: the real frame at t and the GFDM's predicted future
frames; bottom row: the same real frame and the real frames that followed) and an h264 mp4 of an
episode written with PyAV (the project's one writer, defi_training.sources.video.VideoWriter).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    'EpisodeResult', 'wilson_interval', 'bootstrap_mean_interval', 'latency_summary',
    'summarize', 'validate_results', 'results_markdown', 'write_results',
    'PredictionRecord', 'prediction_strip', 'save_prediction_strips', 'write_video',
    'predicted_frames_for_view', 'load_results', 'to_hwc_uint8',
]

@dataclass
class EpisodeResult:
    """One evaluation episode."""
    task: str
    seed: int
    success: bool
    length: int                      # control steps executed (up to and including the success step)
    inference_ms: list = field(default_factory=list)  # one entry per computed action chunk
    instruction: str = ''
    trajectory: dict = field(default_factory=dict)    # optional: per-observation hand, gripper, command


# ------------------------------------------------------------------------------------ statistics


def wilson_interval(successes: int, n: int, confidence_level: float = 0.95) -> tuple:
    """Wilson score interval for `successes` out of `n` Bernoulli trials (scipy.stats.binomtest)."""
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f'wilson_interval: need 0 <= successes <= n, got {successes}/{n}')
    if n == 0:
        return (0.0, 1.0)
    from scipy.stats import binomtest
    ci = binomtest(successes, n).proportion_ci(confidence_level=confidence_level, method='wilson')
    return (float(ci.low), float(ci.high))


def bootstrap_mean_interval(outcomes_per_task: Mapping[str, Sequence[bool]], resamples: int = 10000,
                            seed: int = 0, level: float = 0.95) -> tuple:
    """(mean of per-task success rates, lo, hi) with a stratified percentile bootstrap over episodes.

    scipy.stats.bootstrap with one sample per task (unpaired: each task's episodes are redrawn
    with replacement within that task). A task with a single episode always redraws that
    episode, so it enters as a constant (scipy needs two or more observations per sample).
    """
    groups = [np.asarray(v, dtype=np.float64) for v in outcomes_per_task.values()]
    if not groups or any(g.size == 0 for g in groups):
        raise ValueError('bootstrap_mean_interval: every task needs at least one episode')
    mean = float(np.mean([g.mean() for g in groups]))
    varying = [g for g in groups if g.size > 1]
    if not varying:
        return mean, mean, mean
    fixed = sum(float(g[0]) for g in groups if g.size == 1)
    from scipy.stats import bootstrap

    def mean_of_rates(*samples, axis=-1):
        return (sum(s.mean(axis=axis) for s in samples) + fixed) / len(groups)

    res = bootstrap(tuple(varying), mean_of_rates, n_resamples=resamples, confidence_level=level,
                    method='percentile', vectorized=True, paired=False, axis=-1,
                    rng=np.random.default_rng(seed))
    lo, hi = res.confidence_interval
    return mean, float(min(lo, mean)), float(max(hi, mean))


def latency_summary(latencies_ms: Iterable[float]) -> dict:
    """Median, 95th percentile and mean of per-chunk inference latencies (ms)."""
    arr = np.asarray([float(x) for x in latencies_ms], dtype=np.float64)
    if arr.size == 0:
        return {'median': None, 'p95': None, 'mean': None, 'count': 0}
    return {'median': float(np.median(arr)), 'p95': float(np.percentile(arr, 95)),
            'mean': float(arr.mean()), 'count': int(arr.size)}


def summarize(episodes: Sequence[EpisodeResult], checkpoint: str, mode: str,
              bootstrap_seed: int = 0) -> dict:
    """The results dict (see the module docstring) of a list of episodes; tasks in first-seen order."""
    if not episodes:
        raise ValueError('summarize: no episodes')
    by_task: dict = {}
    for ep in episodes:
        by_task.setdefault(ep.task, []).append(ep)
    tasks = {}
    outcomes = {}
    for name, eps in by_task.items():
        wins = sum(bool(e.success) for e in eps)
        lo, hi = wilson_interval(wins, len(eps))
        tasks[name] = {'success': wins / len(eps), 'ci95': [lo, hi], 'episodes': len(eps),
                       'mean_length': float(np.mean([e.length for e in eps]))}
        outcomes[name] = [bool(e.success) for e in eps]
    mean, lo, hi = bootstrap_mean_interval(outcomes, seed=bootstrap_seed)
    latencies = [ms for e in episodes for ms in e.inference_ms]
    return {'tasks': tasks, 'mean_success': mean, 'ci95': [lo, hi],
            'latency_ms': latency_summary(latencies), 'checkpoint': str(checkpoint), 'mode': str(mode)}


RESULT_KEYS = ('tasks', 'mean_success', 'ci95', 'latency_ms', 'checkpoint', 'mode')
TASK_KEYS = ('success', 'ci95', 'episodes', 'mean_length')
LATENCY_KEYS = ('median', 'p95', 'mean', 'count')
MODES = ('inprocess', 'ros')


def validate_results(results: Mapping) -> None:
    """Raise ValueError naming the field when `results` does not follow the results schema.

    Checked here rather than by a schema library: the schema is three key sets and a few ranges,
    no schema library is a direct dependency (jsonschema is not installed; pydantic comes only
    through the Hub client's CLI), and the message names the field as `results.tasks['x'].success`.
    """
    def need(ok, where, why):
        if not ok:
            raise ValueError(f'results{where}: {why}')

    def keys(d, expected, where):
        need(isinstance(d, Mapping) and set(d) == set(expected), where,
             f'keys {sorted(d) if isinstance(d, Mapping) else d!r} differ from {sorted(expected)}')

    def rate_with_interval(where, rate, ci_where, ci):
        need(isinstance(rate, (int, float)) and 0.0 <= rate <= 1.0, where, f'{rate!r} outside [0, 1]')
        need(isinstance(ci, (list, tuple)) and len(ci) == 2, ci_where, f'must be [lo, hi], got {ci!r}')
        need(0.0 <= ci[0] <= rate <= ci[1] <= 1.0, ci_where, f'need 0 <= lo <= {rate} <= hi <= 1, got {ci!r}')

    keys(results, RESULT_KEYS, '')
    need(isinstance(results['tasks'], Mapping) and results['tasks'], '.tasks', 'must be a non-empty mapping')
    for name, t in results['tasks'].items():
        where = f'.tasks[{name!r}]'
        keys(t, TASK_KEYS, where)
        rate_with_interval(f'{where}.success', t['success'], f'{where}.ci95', t['ci95'])
        need(isinstance(t['episodes'], int) and t['episodes'] > 0, f'{where}.episodes',
             f'must be a positive int, got {t["episodes"]!r}')
        need(isinstance(t['mean_length'], (int, float)) and t['mean_length'] >= 0, f'{where}.mean_length',
             f'must be >= 0, got {t["mean_length"]!r}')
    rate_with_interval('.mean_success', results['mean_success'], '.ci95', results['ci95'])
    keys(results['latency_ms'], LATENCY_KEYS, '.latency_ms')
    need(results['mode'] in MODES, '.mode', f"must be 'inprocess' or 'ros', got {results['mode']!r}")


def _fmt_ci(ci) -> str:
    return f'[{100 * ci[0]:.0f}, {100 * ci[1]:.0f}]'


def results_markdown(results: Mapping) -> str:
    """A markdown table: one row per task and a mean row, then latency and provenance."""
    lines = ['| task | success | 95% CI | episodes | mean length (steps) |',
             '|---|---:|---:|---:|---:|']
    for name, t in results['tasks'].items():
        lines.append(f'| {name} | {100 * t["success"]:.1f}% | {_fmt_ci(t["ci95"])} | {t["episodes"]} '
                     f'| {t["mean_length"]:.1f} |')
    n_total = sum(t['episodes'] for t in results['tasks'].values())
    lines.append(f'| **mean** | **{100 * results["mean_success"]:.1f}%** | {_fmt_ci(results["ci95"])} '
                 f'| {n_total} | |')
    lat = results['latency_ms']
    lines.append('')
    if lat['count']:
        lines.append(f'Inference latency per action chunk: median {lat["median"]:.1f} ms, '
                     f'p95 {lat["p95"]:.1f} ms ({lat["count"]} chunks).')
    lines.append(f'Checkpoint `{results["checkpoint"]}`, mode `{results["mode"]}`. Intervals: Wilson '
                 'per task; stratified bootstrap over episodes for the mean.')
    return '\n'.join(lines) + '\n'


def write_results(results: Mapping, out_dir) -> tuple:
    """Write results.json and results.md into out_dir (atomically each); return both paths."""
    validate_results(results)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in (('results.json', json.dumps(results, indent=2) + '\n'),
                       ('results.md', results_markdown(results))):
        path = out / name
        tmp = out / f'.{name}.tmp'
        tmp.write_text(text)
        os.replace(tmp, path)
        paths.append(path)
    return tuple(paths)


# ------------------------------------------------------------------------------------ pictures


def to_hwc_uint8(image) -> np.ndarray:
    """[H, W, 3] or [3, H, W], uint8 or float in [0, 1] (numpy or torch) -> uint8 [H, W, 3]."""
    arr = image.detach().cpu().numpy() if hasattr(image, 'detach') else np.asarray(image)
    if arr.ndim != 3:
        raise ValueError(f'image: expected 3 dims ([H,W,3] or [3,H,W]), got shape {arr.shape}')
    if arr.shape[-1] != 3 and arr.shape[0] == 3:
        arr = np.transpose(arr, (1, 2, 0))
    if arr.shape[-1] != 3:
        raise ValueError(f'image: expected 3 colour channels, got shape {arr.shape}')
    if arr.dtype != np.uint8:
        arr = np.clip(np.nan_to_num(arr.astype(np.float64)) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


@dataclass
class PredictionRecord:
    """What the GFDM predicted at one step, and what really followed."""
    step: int                        # control step of the current frame
    current: np.ndarray              # uint8 [H, W, 3]
    predicted: list                  # T frames uint8 [H, W, 3] (t + offsets[i])
    real: list                       # the real frames at the same offsets (may be shorter: episode end)
    offsets: list                    # offsets in control steps of the predicted frames
    task: str = ''


def _label_font(size: int):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def prediction_strip(record: PredictionRecord, scale: int = 2, label_width: int = 80,
                     header: int = 18):
    """One PIL image: a title line, then rows 'predicted' and 'real' of [t, t+o1, ..., t+oT].

    Each cell is a frame scaled by `scale` (nearest neighbour); a real frame that does not exist
    (the episode ended first) is drawn as a grey cell.
    """
    from PIL import Image, ImageDraw

    current = to_hwc_uint8(record.current)
    h, w = current.shape[:2]
    cw, ch = w * scale, h * scale
    columns = 1 + len(record.predicted)
    pad = 2
    width = label_width + columns * (cw + pad)
    height = 2 * header + 2 * (ch + pad)
    canvas = Image.new('RGB', (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = _label_font(12)
    title = f'step {record.step}' + (f'  {record.task}' if record.task else '')
    draw.text((4, 3), title, fill=(0, 0, 0), font=font)
    col_labels = ['t'] + [f't+{o}' for o in record.offsets]
    for c, text in enumerate(col_labels):
        draw.text((label_width + c * (cw + pad) + 2, header + 3), text, fill=(0, 0, 0), font=font)

    def cell(img):
        if img is None:
            return Image.new('RGB', (cw, ch), (160, 160, 160))
        arr = to_hwc_uint8(img)
        if arr.shape[:2] != (h, w):
            raise ValueError(f'prediction strip: frame shape {arr.shape} differs from current {current.shape}')
        return Image.fromarray(arr).resize((cw, ch), Image.NEAREST)

    rows = [('predicted', [current] + list(record.predicted)),
            ('real', [current] + [record.real[i] if i < len(record.real) else None
                                  for i in range(len(record.predicted))])]
    for r, (name, frames) in enumerate(rows):
        y = 2 * header + r * (ch + pad)
        draw.text((4, y + ch // 2 - 6), name, fill=(0, 0, 0), font=font)
        for c, frame in enumerate(frames):
            canvas.paste(cell(frame), (label_width + c * (cw + pad), y))
    return canvas


def save_prediction_strips(path, records: Sequence[PredictionRecord], scale: int = 2) -> Path:
    """Stack the strips of several steps vertically into one PNG."""
    from PIL import Image

    if not records:
        raise ValueError('save_prediction_strips: no prediction records')
    strips = [prediction_strip(r, scale=scale) for r in records]
    width = max(s.width for s in strips)
    canvas = Image.new('RGB', (width, sum(s.height for s in strips)), (255, 255, 255))
    y = 0
    for s in strips:
        canvas.paste(s, (0, y))
        y += s.height
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, format='PNG')
    return path


def write_video(path, frames: Sequence, fps: float = 20.0, scale: int = 1) -> Path:
    """Write RGB frames (uint8 [H, W, 3], all the same size) as an h264 mp4
    (defi_training.sources.video.VideoWriter).

    yuv420p needs even sizes: odd sizes are padded by one pixel (edge-replicated).
    """
    from defi_training.sources.video import VideoWriter

    if len(frames) == 0:
        raise ValueError('write_video: no frames')
    first = to_hwc_uint8(frames[0])
    h, w = first.shape[0] * scale, first.shape[1] * scale
    eh, ew = h + (h % 2), w + (w % 2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with VideoWriter(path, ew, eh, fps, codec='libx264', crf=20) as writer:
        for i, frame in enumerate(frames):
            arr = to_hwc_uint8(frame)
            if scale != 1:
                arr = np.repeat(np.repeat(arr, scale, axis=0), scale, axis=1)
            if arr.shape[:2] != (h, w):
                raise ValueError(f'write_video: frame {i} has shape {arr.shape}, expected {(h, w, 3)}')
            if (eh, ew) != (h, w):
                arr = np.pad(arr, ((0, eh - h), (0, ew - w), (0, 0)), mode='edge')
            writer.write(arr)
    return path


def predicted_frames_for_view(sample, view: int = 0) -> list:
    """policy.gfdm.sample output for batch item 0 -> list of T frames of one view.

    Accepts [B, T, V, 3, H, W] or [B, T, 3, H, W] (single view), torch or numpy, floats in [0, 1].
    """
    arr = sample.detach().cpu().numpy() if hasattr(sample, 'detach') else np.asarray(sample)
    if arr.ndim == 6:
        arr = arr[0, :, view]
    elif arr.ndim == 5:
        arr = arr[0]
    else:
        raise ValueError(f'gfdm.sample: expected [B,T,V,3,H,W] or [B,T,3,H,W], got shape {arr.shape}')
    return [to_hwc_uint8(f) for f in arr]


def load_results(path) -> dict:
    """Read and validate a results.json."""
    path = Path(path)
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f'{path}: not valid JSON ({e})') from e
    validate_results(results)
    return results
