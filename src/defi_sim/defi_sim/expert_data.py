"""Scripted-expert episodes straight into an episode cache, without ROS (fast data for benchmarks).

`defi-sim record` drives the expert through the ROS topics and writes bags; this writes the same
episodes (same cameras, joint-state names, action names, 40 fps rows, clipped expert commands with
optional noise on dx, dy, dz) directly with defi_training's cache writer, several times faster. One
row per observation: the frames and joint positions at that time, and the command the expert sends
for it, which the sim then holds for `steps_per_observation` control steps (as the sim node does).

    defi-sim dataset --tasks reach push --episodes 50 --seed 500 --noise 0.3 --out data/cache/af
    defi-sim dataset --tasks reach --out data/cache/two_views cameras=[front=corner,wrist=behindGripper]
"""
from __future__ import annotations

import multiprocessing
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .evaluate import CONTROL_DT_S
from .metaworld_env import ARM_JOINTS, MetaWorldSim
from .tasks import EVAL_SEED_OFFSET, check_episode_config

__all__ = ['ExpertDataConfig', 'expert_episode', 'expert_episodes', 'write_expert_cache']

ACTION_NAMES = ('dx', 'dy', 'dz', 'gripper')


@dataclass
class ExpertDataConfig:
    tasks: tuple[str, ...] = ('reach-v3',)
    episodes: int = 10                 # per task; episode e of a task uses seed + e
    seed: int = 0
    noise_std: float = 0.0             # Gaussian noise on dx, dy, dz (never the gripper)
    labels: str = 'executed'           # action labels: 'executed' (the noisy command the arm ran) |
                                       # 'expert' (the expert's clean command there: DART, the
                                       # noise only widens the states the demonstrations visit)
    image_size: int = 64
    cameras: tuple[str, ...] = ('front=corner',)  # '<view>=<MuJoCo camera>'
    steps_per_observation: int = 2     # 12.5 ms control steps per row: 40 fps
    max_steps: int = 500               # control steps per episode at most
    extra_observations: int = 10       # rows kept after success (the robot holding the goal)
    with_actions: bool = True          # False: action-free video (pretraining data)

    def __post_init__(self):
        check_episode_config(self, ('episodes', 'image_size', 'steps_per_observation', 'max_steps'))
        if self.labels not in ('executed', 'expert'):
            raise ValueError(f"labels: expected 'executed' or 'expert', got {self.labels!r}")
        if self.noise_std < 0 or self.extra_observations < 0 or self.seed < 0:
            raise ValueError('noise_std, extra_observations and seed must be >= 0')

    @property
    def fps(self) -> float:
        return 1.0 / (self.steps_per_observation * CONTROL_DT_S)


def expert_episode(sim: MetaWorldSim, seed: int, config: ExpertDataConfig,
                   driver: Callable[[dict], np.ndarray] | None = None):
    """One expert episode on `sim` from the initial state of `seed` -> defi_training Episode.

    driver: views -> command. When given, it moves the arm instead of the expert (DAgger: a policy
    drives) and every row is labelled with the expert's clean command in the state reached."""
    from defi_training.sources import Episode

    sim.reset(seed)
    rng = np.random.default_rng([seed, int(config.noise_std * 1e6)])
    frames: dict[str, list[np.ndarray]] = {c.name: [] for c in sim.cameras}
    states, actions = [], []
    success_row = None
    while True:
        views = sim.render()
        for name, image in views.items():
            frames[name].append(image)
        states.append(sim.joint_positions().astype(np.float32))
        expert = sim.expert_action().astype(np.float64)
        if driver is not None:
            action = np.clip(np.nan_to_num(driver(views)), -1.0, 1.0)
            label = np.clip(expert, -1.0, 1.0)
        else:
            action = expert.copy()
            if config.noise_std > 0:
                action[:3] += rng.normal(0.0, config.noise_std, size=3)
            action = np.clip(action, -1.0, 1.0)
            label = np.clip(expert, -1.0, 1.0) if config.labels == 'expert' else action
        actions.append(label.astype(np.float32))
        row = len(states) - 1
        if success_row is None and sim.success:
            success_row = row
        if success_row is not None and row - success_row >= config.extra_observations:
            break
        if sim.steps >= config.max_steps:
            break
        for _ in range(config.steps_per_observation):
            sim.step(action)
    n = len(states)
    driven = driver is not None
    return Episode(
        source=f'{"policy" if driven else "metaworld"}:{sim.task}:seed{seed}',
        frames={name: np.stack(images) for name, images in frames.items()},
        timestamps=np.arange(n, dtype=np.float64) / config.fps,
        task=sim.instruction,
        state=np.stack(states),
        action=np.stack(actions) if config.with_actions else None,
        state_names=list(ARM_JOINTS),
        action_names=list(ACTION_NAMES) if config.with_actions else [],
        extra={'name': f'{sim.task}_{"policy" if driven else "seed"}{seed:05d}', 'fps': config.fps,
               'success': success_row is not None, 'seed': seed, 'noise_std': 0.0 if driven else config.noise_std,
               'labels': 'expert' if driven else config.labels, 'policy_driven': driven,
               'control_steps': sim.steps})


def _task_episodes(args) -> list:
    task, config = args
    sim = MetaWorldSim(task, seed=config.seed, cameras=config.cameras, image_size=config.image_size,
                       max_episode_steps=config.max_steps)
    try:
        return [expert_episode(sim, config.seed + e, config) for e in range(config.episodes)]
    finally:
        sim.close()


def expert_episodes(config: ExpertDataConfig, jobs: int = 1) -> Iterator:
    """Every episode of every task, task by task; `jobs` processes render tasks in parallel."""
    work = [(task, config) for task in config.tasks]
    if jobs <= 1 or len(work) == 1:
        for item in work:
            yield from _task_episodes(item)
        return
    # spawn: a fresh interpreter per worker (MuJoCo's GL context must not be forked)
    with multiprocessing.get_context('spawn').Pool(min(jobs, len(work))) as pool:
        for episodes in pool.imap(_task_episodes, work):
            yield from episodes


def write_expert_cache(config: ExpertDataConfig, out_dir: str | Path, jobs: int = 1,
                       overwrite: bool = False, log=print):
    """Generate the episodes and write them as an episode cache (atomically) -> EpisodeCache."""
    from defi_training.cache import write_cache
    from defi_training.sources import Report

    if config.seed + config.episodes > EVAL_SEED_OFFSET:
        log(f'warning: seeds {config.seed}..{config.seed + config.episodes - 1} reach the evaluation '
            f'range (>= {EVAL_SEED_OFFSET})')
    report = Report()
    cache = write_cache(expert_episodes(config, jobs), out_dir, report=report, overwrite=overwrite,
                        sources=[f'defi-sim dataset {t} seeds {config.seed}..'
                                 f'{config.seed + config.episodes - 1} noise {config.noise_std} '
                                 f'labels {config.labels}'
                                 for t in config.tasks])
    successes = sum(bool(cache.episode_info(e).get('success')) for e in range(cache.num_episodes))
    log(f'{out_dir}: {cache.num_episodes} episodes ({successes} successful), {cache.num_frames} frames '
        f'at {cache.fps:g} fps, {len(config.tasks)} tasks')
    return cache


# flag -> ExpertDataConfig key: the shortcuts `defi-sim dataset` keeps (everything else: key=value)
SHORTCUTS = {'tasks': 'tasks', 'episodes': 'episodes', 'seed': 'seed', 'noise': 'noise_std',
             'image_size': 'image_size', 'cameras': 'cameras', 'max_steps': 'max_steps',
             'extra': 'extra_observations'}


def dataset_config(opts) -> ExpertDataConfig:
    """ExpertDataConfig from the key=value words and the shortcut flags."""
    from defi_core import config_io
    overrides = list(opts.overrides)
    overrides += [config_io.format_override(key, getattr(opts, flag))
                  for flag, key in SHORTCUTS.items() if getattr(opts, flag) is not None]
    if opts.no_actions:
        overrides.append('with_actions=false')
    return config_io.load(ExpertDataConfig, None, overrides)


def dataset_main(opts) -> int:
    write_expert_cache(dataset_config(opts), opts.out, jobs=opts.jobs, overwrite=opts.overwrite)
    return 0


def add_dataset_parser(sub) -> None:
    import argparse

    from defi_core.config_io import describe
    p = sub.add_parser('dataset', help='scripted-expert episodes straight into an episode cache (no ROS)',
                       epilog='\n'.join(['dataset keys (key=value; default shown):'] + describe(ExpertDataConfig)),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('overrides', nargs='*', metavar='key=value', help='dataset settings (listed below)')
    p.add_argument('--tasks', nargs='+', help='shortcut for tasks=[...]: Meta-World v3 tasks')
    p.add_argument('--episodes', type=int, help='shortcut for episodes=N: episodes per task')
    p.add_argument('--seed', type=int, help='shortcut for seed=N: seed of the first episode of each task')
    p.add_argument('--noise', type=float, help='shortcut for noise_std=X: noise on dx, dy, dz')
    p.add_argument('--image-size', type=int, help='shortcut for image_size=N')
    p.add_argument('--cameras', nargs='+', help='shortcut for cameras=[...], e.g. front=corner')
    p.add_argument('--max-steps', type=int, help='shortcut for max_steps=N')
    p.add_argument('--extra', type=int, help='shortcut for extra_observations=N')
    p.add_argument('--no-actions', action='store_true', help='shortcut for with_actions=false (pretraining video)')
    p.add_argument('--jobs', type=int, default=1, help='processes (one task each at a time)')
    p.add_argument('--out', required=True, help='cache directory to create')
    p.add_argument('--overwrite', action='store_true')
