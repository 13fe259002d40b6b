"""Does the GFDM predict the future better than "nothing moves"? PSNR / SSIM of its sampled future
frames on held-out episodes, next to the baseline that copies the current frame.

    python benchmarks/video_prediction.py --checkpoint C --cache D [--steps N] [--threads 1] [--out FILE]

C: a GFDM stage checkpoint (`defi-train gfdm` writes RUN/final) or a policy checkpoint (its GFDM is
used). D: an episode cache (action-free is fine). Held-out episodes: the run's split.json next to C
(RUN/split.json) when there is one, else the training split rule (`split_episodes`, val_fraction
0.1, seed 0) on D. Clips start every --clip-stride frames of those episodes, wherever all T future
frames exist (no clamped futures).

Per predicted frame t+1..t+T (index k of the model's frames, time t+k*future_stride), for the GFDM's
sample (deterministic Heun, one seeded noise draw per clip) and for the copy baseline:
  psnr, ssim                 the whole frame (torchmetrics; data range 1, per clip, then the mean)
  psnr_changed, ssim_changed the pixels whose real value changes between t and t+k by more than
                             --change-threshold in some channel (the copy is wrong there by
                             definition); SSIM there is the mean of the SSIM map over those pixels.
                             Clips with fewer than 16 changed pixels at that horizon are left out
                             (for both, so the two stay comparable).
Cost: sampling steps (Heun: 2 network calls per step, 1 for the last), ms per prediction at batch 1,
GFDM training samples/s (forward + backward + AdamW at batch 16 on real clips, median step).
--sigma-curve adds where the denoiser fails: its error per noise level, next to the copy baseline's.

Writes benchmarks/results/video_prediction.json (or --out), the table into the generated section of
the .md beside it (the rest of that file, the experiment log, is kept), and a .png of predicted vs
real strips (and overlays of frame t+k on frame t that show the direction of motion) for the clips
with the most motion, one per held-out task, up to --pictures.
The last printed line is the JSON record.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault('HF_HUB_OFFLINE', '1')

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common import RESULTS, emit  # noqa: E402

MD_BEGIN = '<!-- video_prediction.py: generated section, rewritten by each run -->'
MD_END = '<!-- end of generated section -->'
MIN_CHANGED = 16          # changed pixels a clip needs at a horizon to enter the *_changed figures


def load_gfdm(path: str, steps: int | None, sample_sigma_max: float | None = None):
    from defi_core.checkpoint import load_component, load_policy, read_meta
    kind = read_meta(path)['kind']
    if kind == 'gfdm':
        gfdm = load_component(path)
    elif kind == 'policy':
        gfdm = load_policy(path).gfdm
    else:
        raise SystemExit(f'{path}: a {kind} checkpoint; need a GFDM stage or a policy checkpoint')
    if steps:
        gfdm.cfg = gfdm.cfg.replace(gfdm_sampling_steps=steps)
    if sample_sigma_max is not None:
        gfdm.cfg = gfdm.cfg.replace(gfdm_sample_sigma_max=sample_sigma_max)
    return gfdm.eval()


def held_out_episodes(checkpoint: str, cache) -> tuple[list[int], str]:
    from defi_training.dataset import split_episodes
    for cand in (Path(checkpoint).parent / 'split.json', Path(checkpoint).parent.parent / 'split.json'):
        if cand.is_file():
            eps = json.loads(cand.read_text())['val_episodes']
            if eps and max(eps) < cache.num_episodes:
                return eps, str(cand)
    return split_episodes(cache, 0.1, 0)[1], 'split_episodes(cache, 0.1, seed 0)'


def make_clips(cache, episodes, cfg, clip_stride: int):
    """(current [N, V, 3, H, W] uint8, future [N, T, V, 3, H, W] uint8, tasks, (episode, t) per clip)."""
    span = cfg.num_future_frames * cfg.future_stride
    now, fut, tasks, where = [], [], [], []
    for e in episodes:
        frames = np.stack([np.asarray(cache.frames(e, c)) for c in cfg.cameras], axis=1)  # [n, V, H, W, 3]
        frames = frames.transpose(0, 1, 4, 2, 3)
        for t in range(0, cache.episode_length(e) - span, clip_stride):
            now.append(frames[t])
            fut.append(frames[t + cfg.future_stride:t + span + 1:cfg.future_stride])
            tasks.append(cache.task(e))
            where.append((int(e), int(t)))
    return torch.from_numpy(np.stack(now)), torch.from_numpy(np.stack(fut)), tasks, where


@torch.no_grad()
def predict(gfdm, now, tasks, batch: int, seed: int) -> torch.Tensor:
    """GFDM samples [N, T, V, 3, H, W] in [0, 1]; clip i's noise depends on (seed, i) only."""
    out = []
    for i in range(0, len(now), batch):
        g = torch.Generator().manual_seed(seed + i)
        out.append(gfdm.sample(now[i:i + batch], tasks[i:i + batch], generator=g).float())
    return torch.cat(out)


def metrics(pred, real, now, threshold: float) -> dict:
    """Per-clip figures per horizon: {'psnr': [N, T], ...} (NaN where a clip has too few changed pixels).
    pred, real: [N, T, V, 3, H, W] in [0, 1]; now: [N, V, 3, H, W] in [0, 1]."""
    from torchmetrics.functional.image import peak_signal_noise_ratio as psnr_fn
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim_fn
    n, t = real.shape[:2]
    out = {k: torch.full((n, t), float('nan')) for k in ('psnr', 'ssim', 'psnr_changed', 'ssim_changed')}
    for k in range(t):
        p = pred[:, k].flatten(0, 1)            # views side by side as separate images: [N*V, 3, H, W]
        r = real[:, k].flatten(0, 1)
        views = pred.shape[2]
        out['psnr'][:, k] = psnr_fn(p, r, data_range=1.0, dim=(1, 2, 3), reduction='none').reshape(n, views).mean(1)
        _, ssim_map = ssim_fn(p, r, data_range=1.0, return_full_image=True, reduction='none')
        out['ssim'][:, k] = ssim_map.reshape(n, -1).mean(1)
        changed = ((real[:, k] - now).abs().amax(dim=-3, keepdim=True) > threshold).expand_as(now)
        ssim_map = ssim_map.reshape(now.shape)
        for i in range(n):
            m = changed[i]
            if int(m[..., 0, :, :].sum()) < MIN_CHANGED:
                continue
            out['psnr_changed'][i, k] = psnr_fn(pred[i, k][m], real[i, k][m], data_range=1.0)
            out['ssim_changed'][i, k] = ssim_map[i][m].mean()
    return out


def summarize(per_clip: dict) -> dict:
    return {name: [round(float(np.nanmean(col)), 4) for col in values.T.numpy()] for name, values in per_clip.items()}


@torch.no_grad()
def sigma_curve(gfdm, now_u8, fut_u8, tasks, threshold: float, seed: int, batch: int) -> list:
    """Where the denoiser fails: its one-call estimate of the future frames from the real ones noised
    at fixed sigmas, as MSE ([-1, 1] units) over every pixel and over the changed pixels, next to
    the copy baseline's. At high sigma the estimate is the model's expected future."""
    from defi_core.models.blocks import images_to_float
    cfg = gfdm.cfg
    cond = gfdm._cond_images(now_u8)
    lang = gfdm._lang(tasks)
    target = images_to_float(fut_u8, cfg.image_size)
    diffused = target - cond[:, None] if cfg.gfdm_residual else target
    changed = ((target - cond[:, None]).abs().amax(-3, keepdim=True) > 2 * threshold).expand_as(target)
    noise = torch.randn(diffused.shape, generator=torch.Generator().manual_seed(seed))
    copy_err = (target - cond[:, None]) ** 2
    rows = [{'sigma': 'copy', 'mse': round(float(copy_err.mean()), 6),
             'mse_changed': round(float(copy_err[changed].mean()), 5)}]
    for sigma in (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, cfg.sigma_max):
        est = torch.cat([gfdm.denoise(diffused[i:i + batch] + noise[i:i + batch] * sigma, sigma,
                                      cond[i:i + batch], lang[i:i + batch]) for i in range(0, len(tasks), batch)])
        err = ((est + cond[:, None] if cfg.gfdm_residual else est) - target) ** 2
        rows.append({'sigma': sigma, 'mse': round(float(err.mean()), 6),
                     'mse_changed': round(float(err[changed].mean()), 5)})
    return rows


def time_prediction(gfdm, now, task, reps: int) -> float:
    with torch.no_grad():
        for _ in range(2):
            gfdm.sample(now, [task])
        ms = []
        for _ in range(reps):
            t0 = time.perf_counter()
            gfdm.sample(now, [task], generator=torch.Generator().manual_seed(0))
            ms.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ms)


def time_training(gfdm, cache, episodes, steps: int = 12, warmup: int = 3, batch_size: int = 16) -> float:
    """Samples/s of GFDM training steps (loss, backward, AdamW) on a copy of the model."""
    from defi_core.models.gfdm import GFDM
    from defi_training.dataset import ClipDataset
    model = GFDM(gfdm.cfg, gfdm.text_encoder)
    model.load_state_dict(gfdm.state_dict())
    model.train()
    cfg = model.cfg
    ds = ClipDataset(cache, num_future_frames=cfg.num_future_frames, future_stride=cfg.future_stride,
                     frame_gap=cfg.frame_gap, cameras=list(cfg.cameras), episodes=episodes)
    rng = np.random.default_rng(0)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    times = []
    for step in range(steps + warmup):
        items = [ds[int(i)] for i in rng.integers(0, len(ds), batch_size)]
        batch = {'observation.images': torch.stack([x['observation.images'] for x in items]),
                 'future.images': torch.stack([x['future.images'] for x in items]),
                 'task': [x['task'] for x in items]}
        t0 = time.perf_counter()
        loss, _ = model.loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= warmup:
            times.append(time.perf_counter() - t0)
    return batch_size / statistics.median(times)


def picture(path: Path, pred, real, now, tasks, where, per_clip, max_clips: int) -> list:
    """Per chosen clip four rows (camera 0): real frames, GFDM frames, and for each an overlay of the
    current frame (cyan) with frame t+k (red): grey where nothing moves, red where something arrives,
    cyan where it left, so the direction of motion shows at a glance. Chosen: per held-out task, the
    clip whose real frames change most at the last horizon."""
    from PIL import Image, ImageDraw
    motion = (real[:, -1, 0] - now[:, 0]).abs().amax(1).gt(0.05).flatten(1).sum(1)   # changed px at t+T
    best: dict = {}
    for i in range(len(tasks)):
        if tasks[i] not in best or motion[i] > motion[best[tasks[i]]]:
            best[tasks[i]] = i
    chosen = sorted(best.values(), key=lambda i: -int(motion[i]))[:max_clips]
    scale, label_w = 2, 150
    t = real.shape[1]
    hw = now.shape[-1] * scale

    def tile(x):   # [3, H, W] in [0, 1] -> PIL image
        a = (x.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        return Image.fromarray(a).resize((hw, hw), Image.NEAREST)

    def overlay(frame, current):
        luma = torch.tensor([0.299, 0.587, 0.114])[:, None, None]
        a, b = (frame * luma).sum(0), (current * luma).sum(0)
        return torch.stack([a, b, b])

    rows_per_clip, title_h = 4, 14
    canvas = Image.new('RGB', (label_w + (t + 1) * hw, len(chosen) * (rows_per_clip * hw + title_h)), 'white')
    draw = ImageDraw.Draw(canvas)
    y = 0
    for i in chosen:
        e, t0 = where[i]
        draw.text((2, y + 1), f'{tasks[i]} (episode {e}, t={t0}): now | t+1 .. t+{t}; '
                  f'changed-pixel PSNR at t+{t}: GFDM {per_clip["model"][i, -1]:.1f} dB, '
                  f'copy {per_clip["copy"][i, -1]:.1f} dB', fill='black')
        y += title_h
        cur = now[i, 0]
        rows = [('real', [cur] + [real[i, k, 0] for k in range(t)]),
                ('GFDM', [cur] + [pred[i, k, 0] for k in range(t)]),
                ('real: now cyan,\nt+k red', [overlay(cur, cur)] + [overlay(real[i, k, 0], cur) for k in range(t)]),
                ('GFDM: now cyan,\nt+k red', [overlay(cur, cur)] + [overlay(pred[i, k, 0], cur) for k in range(t)])]
        for name, frames in rows:
            draw.multiline_text((4, y + hw // 2 - 12), name, fill='black')
            for j, f in enumerate(frames):
                canvas.paste(tile(f), (label_w + j * hw, y))
            y += hw
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return [f'{tasks[i]} e{where[i][0]} t{where[i][1]}' for i in chosen]


def table(rec: dict) -> str:
    h = rec['horizons']
    lines = ['| metric | ' + ' | '.join(f't+{k}' for k in h) + ' |', '|---|' + '---:|' * len(h)]
    for key, unit in (('psnr_changed', 'dB'), ('psnr', 'dB'), ('ssim_changed', ''), ('ssim', '')):
        for who, name in (('model', 'GFDM'), ('copy', 'copy')):
            fmt = '{:.2f}' if unit else '{:.3f}'
            lines.append(f'| {key} {name} | ' + ' | '.join(fmt.format(v) for v in rec[who][key]) + ' |')
        d = [a - b for a, b in zip(rec['model'][key], rec['copy'][key], strict=True)]
        fmt = '{:+.2f}' if unit else '{:+.3f}'
        lines.append(f'| **{key} GFDM - copy** | ' + ' | '.join(f'**{fmt.format(v)}**' for v in d) + ' |')
    return '\n'.join(lines)


def write_md(path: Path, rec: dict, png: Path) -> None:
    body = [MD_BEGIN, '', '## Latest run', '',
            f'_{rec["date"]} · {rec["machine"]} · `{rec["command"]}`_', '',
            f'Checkpoint `{rec["checkpoint"]}`; {rec["clips"]} clips from {len(rec["episodes"])} held-out episodes '
            f'({rec["split"]}); {rec["sampling_steps"]} sampler step(s) (Heun, the last one Euler) from sigma '
            f'{rec["sample_sigma_max"]:g}, {rec["network_calls"]} network call(s), '
            f'**{rec["ms_per_prediction"]:.1f} ms** per prediction (batch 1, {rec["threads"]} thread(s)); '
            + (f'GFDM training **{rec["train_samples_per_s"]:.1f} samples/s** (batch 16). '
               if rec['train_samples_per_s'] else '') +
            f'Changed pixels: real change since t > {rec["change_threshold"]} '
            f'(share of pixels per horizon: {", ".join(f"{v:.3f}" for v in rec["changed_fraction"])}).', '',
            table(rec), '']
    if rec.get('sigma_curve'):
        body += ['Denoising error (MSE, [-1, 1] units) of one network call on the real future noised at sigma, '
                 'next to copying the current frame:', '',
                 '| sigma | ' + ' | '.join(str(r['sigma']) for r in rec['sigma_curve']) + ' |',
                 '|---|' + '---:|' * len(rec['sigma_curve']),
                 '| whole frame | ' + ' | '.join(f"{r['mse']:.5f}" for r in rec['sigma_curve']) + ' |',
                 '| changed pixels | ' + ' | '.join(f"{r['mse_changed']:.4f}" for r in rec['sigma_curve']) + ' |', '']
    body += [f'![predicted vs real]({png.name})', '', MD_END]
    text = path.read_text() if path.is_file() else '# Video prediction: GFDM vs copying the current frame\n\n'
    if MD_BEGIN in text and MD_END in text:
        head, rest = text.split(MD_BEGIN, 1)
        text = head + '\n'.join(body) + rest.split(MD_END, 1)[1]
    else:
        text = text.rstrip('\n') + '\n\n' + '\n'.join(body) + '\n'
    path.write_text(text)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--checkpoint', required=True, help='GFDM stage checkpoint (RUN/final) or policy checkpoint')
    p.add_argument('--cache', required=True, help='episode cache holding the held-out episodes')
    p.add_argument('--steps', type=int, default=0, help='sampling steps (0 = the checkpoint config)')
    p.add_argument('--sample-sigma-max', type=float, default=None,
                   help="sampler's first sigma (default: the checkpoint config's)")
    p.add_argument('--clip-stride', type=int, default=4, help='frames between clip starts within an episode')
    p.add_argument('--change-threshold', type=float, default=0.05, help='a pixel "changes" above this (0..1)')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--batch', type=int, default=32)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--pictures', type=int, default=4, help='clips in the PNG (one per task)')
    p.add_argument('--no-train-timing', action='store_true', help='skip the training samples/s figure')
    p.add_argument('--sigma-curve', action='store_true',
                   help='also the denoising error per noise level (whole frame and changed pixels)')
    p.add_argument('--out', default=None, help='JSON file (default benchmarks/results/video_prediction.json); '
                   'the .md and .png go beside it')
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    from defi_training.cache import EpisodeCache
    cache = EpisodeCache(args.cache)
    gfdm = load_gfdm(args.checkpoint, args.steps or None, args.sample_sigma_max)
    cfg = gfdm.cfg
    episodes, split_source = held_out_episodes(args.checkpoint, cache)
    now_u8, fut_u8, tasks, where = make_clips(cache, episodes, cfg, args.clip_stride)
    now, real = now_u8.float() / 255, fut_u8.float() / 255
    torch.manual_seed(args.seed)
    pred = predict(gfdm, now_u8, tasks, args.batch, args.seed)
    copy = now[:, None].expand_as(real).contiguous()
    per = {'model': metrics(pred, real, now, args.change_threshold),
           'copy': metrics(copy, real, now, args.change_threshold)}
    steps = cfg.gfdm_sampling_steps
    changed_frac = [float(((real[:, k] - now).abs().amax(-3) > args.change_threshold).float().mean())
                    for k in range(real.shape[1])]
    ms = time_prediction(gfdm, now_u8[:1], tasks[0], reps=10)
    curve = (sigma_curve(gfdm, now_u8, fut_u8, tasks, args.change_threshold, args.seed, args.batch)
             if args.sigma_curve else None)
    train_sps = None
    if not args.no_train_timing:
        from defi_training.dataset import split_episodes
        train_eps = sorted(set(range(cache.num_episodes)) - set(episodes)) or split_episodes(cache, 0.1, 0)[0]
        train_sps = time_training(gfdm, cache, train_eps)
    out = Path(args.out) if args.out else RESULTS / 'video_prediction.json'
    png = out.with_suffix('.png')
    shown = picture(png, pred, real, now, tasks, where,
                    {k: v['psnr_changed'] for k, v in per.items()}, args.pictures)
    rec = {'horizons': list(range(1, cfg.num_future_frames + 1)),
           'frame_offsets': [k * cfg.future_stride for k in range(1, cfg.num_future_frames + 1)],
           'fps': cache.fps,
           'model': summarize(per['model']), 'copy': summarize(per['copy']),
           'clips_with_change': [int((~per['copy']['psnr_changed'][:, k].isnan()).sum()) for k in range(real.shape[1])],
           'changed_fraction': [round(v, 4) for v in changed_frac],
           'change_threshold': args.change_threshold,
           'sampling_steps': steps, 'sampler': 'heun',
           'sample_sigma_max': cfg.gfdm_sample_sigma_max or cfg.sigma_max, 'network_calls': 2 * steps - 1,
           'ms_per_prediction': round(ms, 2), 'train_samples_per_s': round(train_sps, 1) if train_sps else None,
           'threads': args.threads, 'checkpoint': args.checkpoint, 'cache': args.cache,
           'episodes': episodes, 'split': split_source, 'clips': len(tasks),
           'tasks': sorted(set(tasks)), 'picture': png.name, 'picture_clips': shown,
           'model_config': {k: getattr(cfg, k) for k in ('preset_name', 'image_size', 'patch_size', 'gfdm_dim',
                                                         'gfdm_depth', 'num_future_frames', 'future_stride',
                                                         'gfdm_residual', 'sigma_data', 'gfdm_warp_radius',
                                                         'gfdm_p_mean', 'gfdm_p_std', 'p_mean', 'p_std')},
           'sigma_curve': curve,
           'wall_s': round(time.perf_counter() - t_start, 1)}
    from datetime import datetime, timezone

    from common import command, machine
    rec_md = dict(rec, machine=machine(), command=command(),
                  date=datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC'))
    print(table(rec_md))
    print(f'{len(tasks)} clips, {len(episodes)} held-out episodes; {steps} sampler steps, {ms:.1f} ms per prediction; '
          f'training {train_sps or float("nan"):.1f} samples/s; picture {png}')
    write_md(out.with_suffix('.md'), rec_md, png)
    emit('video_prediction', rec, str(out))
    return 0


if __name__ == '__main__':
    sys.exit(main())
