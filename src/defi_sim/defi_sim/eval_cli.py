"""defi-eval: closed-loop success of a checkpoint on Meta-World tasks.

    defi-eval --checkpoint models/defi_metaworld --tasks reach push --episodes 10 \
        [--mode ros|inprocess] [--seed 1000] [--out outputs/eval] [--pictures] [key=value ...]

Writes <out>/results.json and <out>/results.md (see defi_sim.evaluation) and, with --pictures,
<out>/prediction_strip.png and <out>/episode_<task>.mp4. Settings come from the EvalConfig
dataclass (defi_sim.evaluate): defaults, then an optional --config YAML file, then `key=value`
words (`chunk_delay=3`, `cameras=[front=corner,wrist=gripperPOV]`) and the shortcut flags.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

os.environ.setdefault('MUJOCO_GL', 'egl')
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')


SHORTCUTS = ('tasks', 'episodes', 'seed', 'max_steps')    # flags that set one EvalConfig key each


def build_parser() -> argparse.ArgumentParser:
    from defi_core.config_io import describe
    from defi_sim.evaluate import EvalConfig
    keys = ['evaluation keys (key=value; default shown):'] + describe(EvalConfig)
    p = argparse.ArgumentParser(prog='defi-eval', description=__doc__.split('\n\n')[0], epilog='\n'.join(keys),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('overrides', nargs='*', metavar='key=value',
                   help='evaluation settings, e.g. chunk_delay=3 cameras=[front=corner] (listed below)')
    p.add_argument('--checkpoint', required=True, help='checkpoint directory (config.json, model.safetensors)')
    p.add_argument('--config', help='YAML file of evaluation keys (key=value words and flags override it)')
    p.add_argument('--tasks', nargs='+', help='shortcut for tasks=[...]: Meta-World tasks, with or without -v3')
    p.add_argument('--episodes', type=int, help='shortcut for episodes=N: episodes per task')
    p.add_argument('--seed', type=int, help='shortcut for seed=N: first episode seed (default 1000: unseen states)')
    p.add_argument('--max-steps', type=int, dest='max_steps', help='shortcut for max_steps=N (12.5 ms control steps)')
    p.add_argument('--pictures', action='store_true', help='shortcut for pictures=true: prediction strip PNG, mp4s')
    p.add_argument('--mode', choices=('inprocess', 'ros'), default='inprocess',
                   help='inprocess: no ROS, fastest; ros: sim node + DeFI bringup as ROS 2 processes')
    p.add_argument('--out', default='outputs/eval', help='output directory')
    p.add_argument('--threads', type=int, default=0,
                   help='torch CPU threads of the policy (default 0 = auto: the CPUs this process may '
                        'use, less one for the simulator, at most 4; OMP_NUM_THREADS wins)')
    p.add_argument('--device', default='cpu')
    p.add_argument('--episode-timeout', type=float, default=0.0, dest='episode_timeout_s',
                   help='ros: wall seconds per episode before giving up (0 = from max-steps)')
    return p


def make_config(args):
    """EvalConfig: defaults, then --config, then key=value words and the shortcut flags."""
    from defi_core import config_io
    from defi_sim.evaluate import EvalConfig
    overrides = list(args.overrides)
    overrides += [config_io.format_override(key, getattr(args, key))
                  for key in SHORTCUTS if getattr(args, key) is not None]
    if args.pictures:
        overrides.append('pictures=true')
    return config_io.load(EvalConfig, args.config, overrides, what='--config')


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from defi_core.cli import run_cli
    # one line + exit 2 for bad input and file-system errors (a read-only --out), 130 on Ctrl-C
    return run_cli('defi-eval', lambda: _run(args), writing=args.out)


def _run(args) -> int:
    try:
        config = make_config(args)
    except ValueError as err:
        print(f'defi-eval: {err}', file=sys.stderr)
        return 2

    from defi_core.threads import set_torch_threads
    threads = set_torch_threads(max(0, args.threads))
    print(f'defi-eval: {threads} torch thread(s)' + ('' if args.threads > 0 else ' (auto; --threads N sets it)'),
          flush=True)
    from defi_sim.evaluate import checkpoint_chunk_dt, load_eval_policy, run_inprocess, write_pictures
    from defi_sim.evaluate_ros import run_ros
    from defi_sim.evaluation import results_markdown, summarize, write_results

    out = Path(args.out)
    start = time.monotonic()
    if Path(args.checkpoint, 'config.json').is_file():
        config = dataclasses.replace(config, action_dt_s=checkpoint_chunk_dt(args.checkpoint, config))
    if args.mode == 'inprocess':
        try:
            policy = load_eval_policy(args.checkpoint, device=args.device)
        except (FileNotFoundError, ValueError) as err:
            print(f'defi-eval: {err}', file=sys.stderr)
            return 2
        episodes, pictures = run_inprocess(policy, config)
        policy_cfg = policy.cfg
    else:
        try:
            episodes, pictures, policy_cfg = run_ros(args.checkpoint, config, threads=threads,
                                                     episode_timeout_s=args.episode_timeout_s,
                                                     work_dir=out / 'ros_logs')
        except (FileNotFoundError, ValueError, RuntimeError) as err:
            print(f'defi-eval: {err}', file=sys.stderr)
            return 2
    results = summarize(episodes, checkpoint=args.checkpoint, mode=args.mode)
    json_path, md_path = write_results(results, out)
    print(results_markdown(results))
    if config.pictures:
        write_pictures(pictures, policy_cfg, config, out)
    print(f'results: {json_path} and {md_path} ({time.monotonic() - start:.0f} s)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
