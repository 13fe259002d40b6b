"""Experiment (policy_diagnosis.md): is the gap between the image policy and the expert compounding
error, states the demonstrations never visit? One round of DAgger: the policy drives the arm, the
scripted expert labels every state it reaches, and the next policy trains on the demonstrations
plus those episodes. Sim only (a real robot would need a person's corrections); not a product feature.

    python benchmarks/experiments/dagger.py CHECKPOINT OUT_CACHE [--demos 200] [--rollouts 50]
        [--rollout-seed 200] [--noise 0.1] [--jobs 2]

OUT_CACHE holds, per task of the checkpoint's training, `--demos` expert demonstrations (seeds
0.., noise on dx, dy, dz, labelled with the executed command: what `defi-sim dataset` writes) and
`--rollouts` policy episodes (seeds `--rollout-seed`.., not evaluation seeds), each row labelled
with the expert's clean command in the state the policy reached. Train on it with the usual
`defi-train finetune ... data.cache=OUT_CACHE` and compare with `benchmarks/policy_diagnosis.py`.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time

import torch

from defi_sim.evaluate import _observation, _policy_state, load_eval_policy, sim_cameras_for
from defi_sim.expert_data import ExpertDataConfig, expert_episode, expert_episodes
from defi_sim.metaworld_env import MetaWorldSim
from defi_sim.tasks import instruction_for

STEPS_PER_OBSERVATION, MAX_STEPS, EXTRA = 2, 500, 10


def rollout_episode(policy, sim, seed: int, config: ExpertDataConfig):
    """The policy drives (a new chunk per observation, its first row executed for one observation
    period, as `defi-eval`); every row is labelled with the expert's command in that state."""
    policy.reset()
    generator = torch.Generator().manual_seed(seed)
    instruction = instruction_for(sim.task)

    def drive(views):
        obs = _observation(policy, views, instruction, _policy_state(policy, sim))
        return policy.predict_action_chunk(obs, generator=generator)[0, 0].detach().numpy()
    return expert_episode(sim, seed, config, driver=drive)


def rollouts(policy, tasks, count: int, first_seed: int, log=print):
    cameras = sim_cameras_for(policy.cfg.cameras)
    config = ExpertDataConfig(tasks=tuple(tasks), image_size=policy.cfg.image_size, cameras=tuple(cameras),
                              steps_per_observation=STEPS_PER_OBSERVATION, max_steps=MAX_STEPS,
                              extra_observations=EXTRA)
    for task in tasks:
        sim = MetaWorldSim(task, seed=first_seed, cameras=cameras, image_size=policy.cfg.image_size,
                           max_episode_steps=MAX_STEPS)
        wins, start = 0, time.monotonic()
        try:
            for e in range(count):
                episode = rollout_episode(policy, sim, first_seed + e, config)
                wins += bool(episode.extra['success'])
                yield episode
        finally:
            sim.close()
        log(f'dagger: {task}: {count} policy episodes, {wins} successful ({time.monotonic() - start:.0f} s)')


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('checkpoint')
    p.add_argument('out')
    p.add_argument('--demos', type=int, default=200)
    p.add_argument('--rollouts', type=int, default=50)
    p.add_argument('--rollout-seed', type=int, default=200)
    p.add_argument('--noise', type=float, default=0.1)
    p.add_argument('--jobs', type=int, default=2)
    args = p.parse_args(argv)

    from defi_training.cache import write_cache
    from defi_training.sources import Report
    policy = load_eval_policy(args.checkpoint)
    tasks = ('reach-v3', 'button-press-topdown-v3', 'drawer-open-v3', 'door-open-v3', 'window-open-v3')
    demos = ExpertDataConfig(tasks=tasks, episodes=args.demos, seed=0, noise_std=args.noise,
                             image_size=policy.cfg.image_size, cameras=tuple(sim_cameras_for(policy.cfg.cameras)),
                             steps_per_observation=STEPS_PER_OBSERVATION)
    episodes = itertools.chain(expert_episodes(demos, args.jobs),
                               rollouts(policy, tasks, args.rollouts, args.rollout_seed))
    cache = write_cache(episodes, args.out, report=Report(), sources=[
        f'expert demos seeds 0..{args.demos - 1} noise {args.noise}',
        f'dagger rollouts of {args.checkpoint} seeds {args.rollout_seed}..{args.rollout_seed + args.rollouts - 1}'])
    print(f'{args.out}: {cache.num_episodes} episodes, {cache.num_frames} frames')
    return 0


if __name__ == '__main__':
    sys.exit(main())
