"""Why does a policy fail? Open-loop action error, closed-loop success on the demonstrations' own
initial states and on unseen ones, and what the failed episodes did.

    python benchmarks/policy_diagnosis.py --checkpoint models/defi_metaworld [--cache DIR]
        [--episodes 20] [--tasks reach-v3 ...] [--label "what changed"] [--out FILE]

1. Open loop, on the training cache (the checkpoint's own when --cache is not given): the chunk the
   policy predicts for a recorded observation against the recorded actions, on training rows and on
   the held-out episodes (the same split training used), in robot units. Two references: the
   mean-action baseline (predict the training mean everywhere) and the demonstrations' own noise
   (the Gaussian noise added to the expert's dx, dy, dz when they were recorded: no policy can
   predict it, so it is the floor of the error). And whether the policy reads the target from the
   image at all: on each held-out episode's first frame only the image differs (all start from the
   same arm pose): the share of the demonstrated first dx, dy, dz's spread the predictions explain.
2. Closed loop, in-process (defi_sim.evaluate.run_inprocess, the action sampler seeded per episode):
   on the initial states the demonstrations were recorded from (seeds 0..) and on unseen ones
   (seeds 1000..).
3. Every failed episode is classified from its hand trajectory against the scripted expert's from
   the same initial state: never_moves, wrong_direction, never_closes_gripper (the expert grasps,
   the policy never closes), oscillates, stalls_short (comes to rest away from where the expert
   ends), wanders (keeps moving, never succeeds).

reach-v3 is reported apart from the mean: its goal is a marker about 1 px wide at 64 px.
Prints a table; the last line is the JSON record (also benchmarks/results/policy_diagnosis.json).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('MUJOCO_GL', 'egl')

import warnings  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common import cache_tasks, emit  # noqa: E402

APART = ('reach-v3',)          # reported, not averaged: the goal is hardly visible at 64 px
FAILURE_KINDS = ('never_moves', 'wrong_direction', 'never_closes_gripper', 'oscillates', 'stalls_short',
                 'wanders')


# ------------------------------------------------------------------------------------ open loop


def training_setup(checkpoint: Path, cache_arg: str | None):
    """(cache path, val_fraction, split seed) from the checkpoint's training/finetune.yaml (a shipped
    checkpoint) or its run's config.yaml (runs/<name>/final)."""
    import yaml
    cfg = {}
    for path in (checkpoint / 'training' / 'finetune.yaml', checkpoint.parent / 'config.yaml'):
        if path.is_file():
            cfg = yaml.safe_load(path.read_text()) or {}
            break
    data = cfg.get('data') or {}
    cache = cache_arg or data.get('cache')
    if not cache:
        raise SystemExit(f'{checkpoint}: no training/finetune.yaml with data.cache; pass --cache')
    return cache, float(data.get('val_fraction', 0.1)), int(cfg.get('seed', 0))


def policy_clips(policy, cache, episodes):
    """The cache's rows of `episodes` as the policy's training saw them (its cameras and horizon)."""
    from defi_training.dataset import ClipDataset
    cfg = policy.cfg
    return ClipDataset(cache, num_future_frames=cfg.num_future_frames, future_stride=cfg.future_stride,
                       frame_gap=cfg.frame_gap, horizon=cfg.horizon, require_actions=True,
                       cameras=list(cfg.cameras), episodes=episodes)


@torch.no_grad()
def open_loop(policy, cache, episodes, rows: int, seed: int, batch: int = 64) -> dict:
    """Mean squared error (robot units, per action component) of the predicted chunk's first step and
    of the whole chunk against the recorded actions, on up to `rows` sampled rows of `episodes`."""
    cfg = policy.cfg
    ds = policy_clips(policy, cache, episodes)
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(ds), size=min(rows, len(ds)), replace=False)
    first, chunk, count = 0.0, 0.0, 0
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, len(idx), batch):
        items = [ds[int(i)] for i in idx[start:start + batch]]
        obs = {'observation.images': torch.stack([it['observation.images'] for it in items]),
               'task': [it['task'] for it in items]}
        if cfg.state_dim > 0:
            obs['observation.state'] = torch.stack([it['observation.state'] for it in items])
        pred = policy.predict_action_chunk(obs, generator=gen)
        true = torch.stack([it['action'] for it in items])
        keep = (~torch.stack([it['action_is_pad'] for it in items])).float()[..., None]
        err = (pred - true) ** 2
        first += float(err[:, 0].mean(-1).sum())
        chunk += float(((err * keep).sum((1, 2)) / (keep.sum((1, 2)) * err.shape[-1])).sum())
        count += len(items)
    return {'first_step_mse': first / count, 'chunk_mse': chunk / count, 'rows': count}


@torch.no_grad()
def first_frame_reading(policy, cache, episodes) -> dict:
    """Does the policy read the target from the image? Every demonstration starts from the same arm
    pose, so on an episode's first frame the state is the same for all of them and only the image
    tells where the object is. Per task, the share of the demonstrated first dx, dy, dz's spread
    across those episodes that the predictions explain, 1 - var(demonstrated - predicted) /
    var(demonstrated), for each component whose spread is well above the recording noise (the
    action sampler starts from the same noise each time): 0 means the same action whatever the
    picture shows, 1 that the policy reads the target."""
    cfg = policy.cfg
    ds = policy_clips(policy, cache, episodes)
    starts = np.concatenate([[0], np.cumsum([cache.episode_length(e) for e in episodes])[:-1]])
    pred, true, tasks = [], [], []
    for i in starts:
        item = ds[int(i)]
        obs = {'observation.images': item['observation.images'][None], 'task': [item['task']]}
        if cfg.state_dim > 0:
            obs['observation.state'] = item['observation.state'][None]
        pred.append(policy.predict_action_chunk(obs, generator=torch.Generator().manual_seed(0))[0, 0, :3])
        true.append(item['action'][0, :3])
        tasks.append(item['task'])
    pred_a, true_a = torch.stack(pred).numpy(), torch.stack(true).numpy()
    explained = {}
    for task in sorted(set(tasks)):
        rows = [k for k, t in enumerate(tasks) if t == task]
        y, p = true_a[rows], pred_a[rows]
        dims = [k for k in range(3) if y[:, k].std() > 0.2]    # recording noise: 0.1 per component
        if len(rows) > 2 and dims:
            explained[task] = float(np.mean([1.0 - (y[:, k] - p[:, k]).var() / y[:, k].var() for k in dims]))
    return {'explained': explained, 'mean': float(np.mean(list(explained.values()))) if explained else None,
            'episodes': len(starts)}


def reference_errors(cache, train_eps, eval_eps) -> dict:
    """The mean-action baseline's MSE on eval_eps and the floor set by the recording noise."""
    acts = np.concatenate([np.asarray(cache.array(e, 'action')) for e in train_eps])
    mean = acts.mean(0)
    held = np.concatenate([np.asarray(cache.array(e, 'action')) for e in eval_eps])
    noise = [float(cache.episode_info(e).get('noise_std') or 0.0) for e in train_eps]
    # noise was added to dx, dy, dz of a 4-D action before clipping: the floor per component
    floor = 3 * float(np.mean(noise)) ** 2 / acts.shape[1] if noise else 0.0
    return {'mean_action_mse': float(((held - mean) ** 2).mean()), 'noise_floor_mse': floor}


# ------------------------------------------------------------------------------------ closed loop


def expert_reference(task: str, seed: int, max_steps: int, steps_per_observation: int) -> dict:
    """The scripted expert's hand path and gripper use from one initial state (no rendering)."""
    from defi_sim.metaworld_env import MetaWorldSim
    sim = MetaWorldSim(task, seed=seed, max_episode_steps=max_steps)
    try:
        hand, grip = [sim.observation[:3].copy()], []
        while sim.steps < max_steps and not sim.success:
            action = sim.expert_action()
            grip.append(float(action[3]))
            for _ in range(steps_per_observation):
                if sim.step(action).success:
                    break
            hand.append(sim.observation[:3].copy())
        return {'hand': np.array(hand), 'closes_gripper': bool(np.max(grip) > 0.0) if grip else False}
    finally:
        sim.close()


def classify_failure(trajectory: dict, expert: dict) -> str:
    """One of FAILURE_KINDS for a failed episode, from its hand path and commands."""
    hand = np.asarray(trajectory['hand'])
    cmd = np.asarray(trajectory['command'])
    start = hand[0]
    if np.max(np.linalg.norm(hand - start, axis=1)) < 0.02:
        return 'never_moves'
    ref = expert['hand']
    k = max(2, len(ref) // 4)
    ref_dir = ref[min(k, len(ref) - 1)] - ref[0]
    own_dir = hand[min(k, len(hand) - 1)] - start
    if np.linalg.norm(ref_dir) > 0.02 and np.linalg.norm(own_dir) > 0.01 and \
            float(ref_dir @ own_dir) / (np.linalg.norm(ref_dir) * np.linalg.norm(own_dir)) < 0.0:
        return 'wrong_direction'
    if expert['closes_gripper'] and cmd.size and np.max(cmd[:, 3]) <= 0.0:
        return 'never_closes_gripper'
    xyz = cmd[:, :3]
    flips = np.mean(np.sign(xyz[1:]) * np.sign(xyz[:-1]) < 0) if len(xyz) > 2 else 0.0
    net = np.linalg.norm(hand[-1] - hand[max(0, len(hand) - 40)])
    if flips > 0.3 and net < 0.03:
        return 'oscillates'
    tail = hand[max(0, len(hand) - 20):]
    if np.linalg.norm(tail[-1] - tail[0]) < 0.01:
        return 'stalls_short' if np.linalg.norm(hand[-1] - ref[-1]) > 0.02 else 'wanders'
    return 'wanders'


def closed_loop(policy, tasks, seed: int, episodes: int, max_steps: int, log, cameras=()) -> tuple:
    from defi_sim.evaluate import EvalConfig, run_inprocess
    config = EvalConfig(tasks=tuple(tasks), episodes=episodes, seed=seed, max_steps=max_steps,
                        cameras=tuple(cameras), record_trajectory=True)
    results, _ = run_inprocess(policy, config, log=log)
    per_task, kinds = {}, {k: 0 for k in FAILURE_KINDS}
    for ep in results:
        per_task.setdefault(ep.task, []).append(bool(ep.success))
        if not ep.success:
            ref = expert_reference(ep.task, ep.seed, max_steps, config.steps_per_observation)
            kinds[classify_failure(ep.trajectory, ref)] += 1
    rates = {t: float(np.mean(v)) for t, v in per_task.items()}
    latencies = [ms for ep in results for ms in ep.inference_ms]
    return rates, kinds, float(np.median(latencies)) if latencies else None


def mean_over(rates: dict) -> float | None:
    kept = [v for t, v in rates.items() if t not in APART]
    return float(np.mean(kept)) if kept else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--checkpoint', required=True)
    ap.add_argument('--cache', help='the training cache (default: the one training/finetune.yaml names)')
    ap.add_argument('--tasks', nargs='+', help='default: every task of the cache')
    ap.add_argument('--episodes', type=int, default=20, help='closed-loop episodes per task and seed set')
    ap.add_argument('--max-steps', type=int, default=300)
    ap.add_argument('--rows', type=int, default=512, help='open-loop rows sampled per split')
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--cameras', nargs='+', default=(),
                    help="'<view>=<MuJoCo camera>' for the policy's views (default: every view on 'corner')")
    ap.add_argument('--label', default='', help='what this checkpoint changed (for the experiments table)')
    ap.add_argument('--skip-seen', action='store_true', help='no closed loop on the demonstrations\' seeds')
    ap.add_argument('--out', help='JSON path (default benchmarks/results/policy_diagnosis.json)')
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings('ignore', message='Constant.*too high')   # Meta-World's experts, every step

    from defi_sim.evaluate import load_eval_policy
    from defi_sim.tasks import EVAL_SEED_OFFSET
    from defi_training.cache import EpisodeCache
    from defi_training.dataset import split_episodes

    checkpoint = Path(args.checkpoint)
    policy = load_eval_policy(checkpoint)
    cache_path, val_fraction, split_seed = training_setup(checkpoint, args.cache)
    cache = EpisodeCache(cache_path)
    train_eps, val_eps = split_episodes(cache, val_fraction, split_seed)
    tasks = args.tasks or cache_tasks(cache)

    ol_train = open_loop(policy, cache, train_eps, args.rows, seed=0)
    ol_val = open_loop(policy, cache, val_eps or train_eps, args.rows, seed=1)
    refs = reference_errors(cache, train_eps, val_eps or train_eps)
    reading = first_frame_reading(policy, cache, val_eps or train_eps)
    quiet = lambda _msg: None  # noqa: E731
    seen_rates, seen_kinds, _ = ({}, {k: 0 for k in FAILURE_KINDS}, None) if args.skip_seen else \
        closed_loop(policy, tasks, 0, args.episodes, args.max_steps, quiet, args.cameras)
    unseen_rates, unseen_kinds, chunk_ms = closed_loop(policy, tasks, EVAL_SEED_OFFSET, args.episodes,
                                                       args.max_steps, quiet, args.cameras)

    print(f'checkpoint {checkpoint}  cache {cache_path}  ({len(train_eps)} train / {len(val_eps)} held-out '
          f'episodes)')
    print('\n| open loop (MSE per action component) | first step | chunk |')
    print('|---|---:|---:|')
    print(f"| training rows | {ol_train['first_step_mse']:.4f} | {ol_train['chunk_mse']:.4f} |")
    print(f"| held-out episodes | {ol_val['first_step_mse']:.4f} | {ol_val['chunk_mse']:.4f} |")
    print(f"| mean-action baseline (held-out) | {refs['mean_action_mse']:.4f} | |")
    print(f"| recording-noise floor | {refs['noise_floor_mse']:.4f} | |")
    print(f"\nreads the image: share of the demonstrated first dx, dy, dz's spread explained, on "
          f"{reading['episodes']} held-out first frames (only the image differs; 0 = ignores it): "
          + ', '.join(f'{t} {v:.2f}' for t, v in reading['explained'].items()))
    print('\n| task | demo seeds | unseen seeds |')
    print('|---|---:|---:|')
    for t in tasks:
        apart = ' (apart)' if t in APART else ''
        seen = f'{seen_rates[t]:.0%}' if t in seen_rates else '-'
        print(f'| {t}{apart} | {seen} | {unseen_rates.get(t, 0.0):.0%} |')
    ms, mu = mean_over(seen_rates), mean_over(unseen_rates)
    print(f"| **mean** (without {', '.join(APART)}) | {'-' if ms is None else f'{ms:.0%}'} | "
          f"{'-' if mu is None else f'{mu:.0%}'} |")
    print('\nfailed episodes: ' + ', '.join(f'{k} {seen_kinds[k] + unseen_kinds[k]}' for k in FAILURE_KINDS))
    print(f'chunk latency median {chunk_ms:.1f} ms' if chunk_ms else '')
    emit('policy_diagnosis', {
        'checkpoint': str(checkpoint), 'cache': str(cache_path), 'label': args.label,
        'episodes_per_task': args.episodes, 'max_steps': args.max_steps,
        'open_loop': {'train': ol_train, 'held_out': ol_val, **refs},
        'first_frame_reading': reading,
        'seen_seeds': {'tasks': seen_rates, 'mean': ms, 'failures': seen_kinds},
        'unseen_seeds': {'tasks': unseen_rates, 'mean': mu, 'failures': unseen_kinds},
        'reported_apart': list(APART), 'chunk_ms_median': chunk_ms}, args.out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
