"""defi-eval: closed-loop success of a checkpoint on Meta-World tasks.

    defi-eval --checkpoint models/defi_metaworld --tasks reach push --episodes 10 \
        [--mode ros|inprocess] [--seed 1000] [--out outputs/eval] [--pictures]

Writes <out>/results.json and <out>/results.md (see defi_sim.evaluation) and, with --pictures,
<out>/prediction_strip.png and <out>/episode_<task>.mp4. Settings come from the EvalConfig
dataclass (defi_sim.evaluate): defaults, then an optional --config YAML file, then the flags.
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='defi-eval', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--checkpoint', required=True, help='checkpoint directory (config.json, model.safetensors)')
    p.add_argument('--tasks', nargs='+', help='Meta-World tasks, with or without -v3 (default: reach-v3)')
    p.add_argument('--episodes', type=int, help='episodes per task')
    p.add_argument('--mode', choices=('inprocess', 'ros'), default='inprocess',
                   help='inprocess: no ROS, fastest; ros: sim node + DeFI bringup as ROS 2 processes')
    p.add_argument('--seed', type=int, help='first episode seed (default 1000: states unseen in training)')
    p.add_argument('--out', default='outputs/eval', help='output directory')
    p.add_argument('--pictures', action='store_true', help='write the prediction strip PNG and episode mp4s')
    p.add_argument('--max-steps', type=int, dest='max_steps', help='control steps per episode (12.5 ms each)')
    p.add_argument('--steps-per-observation', type=int, dest='steps_per_observation',
                   help='control steps between camera frames (the sim node parameter)')
    p.add_argument('--action-dt', type=float, dest='action_dt_s',
                   help='seconds between actions of a chunk (default: one observation period)')
    p.add_argument('--replan-every', type=int, dest='replan_every',
                   help='in-process: observations per new chunk (1 = every observation)')
    p.add_argument('--chunk-delay', type=int, dest='chunk_delay',
                   help='in-process: observations before a computed chunk is executed (default 0)')
    p.add_argument('--cameras', nargs='+', help="'<view>=<mujoco camera>' per policy view (default <view>=corner)")
    p.add_argument('--picture-steps', type=int, nargs='+', dest='picture_steps',
                   help='observation indices of the prediction strips (default: first and middle)')
    p.add_argument('--config', help='YAML file with EvalConfig fields (flags override it)')
    p.add_argument('--threads', type=int, default=0,
                   help='torch CPU threads of the policy (default 0 = auto: the CPUs this process may '
                        'use, less one for the simulator, at most 4; OMP_NUM_THREADS wins)')
    p.add_argument('--device', default='cpu')
    p.add_argument('--episode-timeout', type=float, default=0.0, dest='episode_timeout_s',
                   help='ros: wall seconds per episode before giving up (0 = from max-steps)')
    return p


def make_config(args):
    from defi_sim.evaluate import EvalConfig
    values = {}
    if args.config:
        import yaml
        path = Path(args.config)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except OSError as err:
            raise SystemExit(f'defi-eval: cannot read --config {path}: {err}') from None
        if not isinstance(loaded, dict):
            raise SystemExit(f'defi-eval: {path}: expected a mapping of EvalConfig fields')
        known = {f.name for f in dataclasses.fields(EvalConfig)}
        unknown = sorted(set(loaded) - known)
        if unknown:
            raise SystemExit(f'defi-eval: {path}: unknown EvalConfig field(s) {unknown}; known: {sorted(known)}')
        values.update(loaded)
    for name in ('tasks', 'episodes', 'seed', 'max_steps', 'steps_per_observation', 'action_dt_s',
                 'replan_every', 'chunk_delay', 'cameras', 'picture_steps'):
        value = getattr(args, name)
        if value is not None:
            values[name] = value
    if args.pictures:
        values['pictures'] = True
    for name in ('tasks', 'cameras', 'picture_steps'):
        if name in values:
            values[name] = tuple(values[name])
    return EvalConfig(**values)


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
