"""DeFI against LeRobot's ACT and Diffusion Policy: the same demonstrations, the same CPU, the same
training wall-clock budget, and the same closed loop on the same unseen initial states.

    # 10 episodes/task, peers <= 12 min each (<= 60 min, 2 cores)
    python benchmarks/peer_policies.py --quick --defi-train-wall-s S
    # 50 episodes/task, peers get DeFI's whole budget
    python benchmarks/peer_policies.py --defi-train-wall-s S
    # 1 task, 20 steps per peer, 2 episodes: does it all run
    python benchmarks/peer_policies.py --smoke

S is the wall time of DeFI's finetune (`defi-train finetune`) that made --defi-checkpoint; the
peers train that long (--budget-s sets it directly; without either, the finetune time recorded in
benchmarks/results/metaworld.json is used). Stages, each command logged in --workdir/logs:
  1. peer venv  .venv-peers with LeRobot 0.4.4 and the versions in benchmarks/peer_requirements.txt,
                created when missing: the only download (PyPI), never into the project's venv.
  2. export     `defi-data convert --to lerobot` of the cache DeFI was finetuned on (the
                checkpoint's training/finetune.yaml data.cache, or --cache).
  3. train      ACT and Diffusion Policy in .venv-peers (benchmarks/peer_worker.py train: LeRobot's
                own dataset, policy, processors, optimizer preset and training step, stopped by the
                budget). A peer whose run in --workdir has the same settings is reused.
  4. evaluate   every policy through defi_sim.evaluate.run_inprocess on the same tasks and seeds
                (from 1000). A peer runs there as PeerPolicy: DeFI's predict_action_chunk/reset/cfg
                surface in front of a `peer_worker.py serve` process, one observation per call,
                answered with LeRobot's select_action (its own queues decide when to compute a chunk).
LeRobot defaults changed for a peer are listed in the output with the reason. Prints a table and,
last, the JSON line; writes benchmarks/results/peer_policies.{json,md}.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('MUJOCO_GL', 'egl')

from common import RESULTS, cache_tasks, emit, median  # noqa: E402
from peer_venv import LEROBOT_VERSION, WORKER, PeerPolicy, ensure_peer_venv, peer_env, tail  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
QUICK_BUDGET_CAP_S = 720         # per peer: two peers + three evaluations fit in 60 minutes
EPISODES = {'smoke': 2, 'quick': 10, 'full': 50}
SMOKE_STEPS = 20

# LeRobot 0.4.4 defaults changed here: value and reason (printed and saved with the results).
CHANGED = {
    'act': {
        'pretrained_backbone_weights': (None, 'no download at run time (default: ImageNet ResNet-18 weights '
                                              'from the hub)'),
        'n_action_steps': (1, "a new chunk every observation, its first action executed: the loop's rule "
                              'for DeFI as well (default 100: one chunk runs open loop for 2.5 s)'),
    },
    'diffusion': {
        'down_dims': ([256, 512, 1024], 'CPU: half the U-Net width, 76 M parameters instead of 263 M (a '
                                        'training step about 7x faster on 2 cores; default (512, 1024, 2048))'),
        'noise_scheduler_type': ('DDIM', 'CPU: 10 denoising steps per chunk instead of 100 (default DDPM, '
                                         'num_inference_steps = the 100 training timesteps)'),
        'num_inference_steps': (10, 'CPU: see noise_scheduler_type'),
    },
}
# Settings that stay LeRobot's defaults but shape the comparison.
NOTES = [
    'both peers: batch size 8 (lerobot-train default), no image augmentation (default), torch on '
    'the same threads as DeFI, DataLoader num_workers 0 (default 4: 2 cores); no pretrained weights',
    'diffusion: n_obs_steps 2 and n_action_steps 8 (defaults): a new chunk every 8 observations',
    'the peers read the export as LeRobot reads a video dataset (frames decoded per sample with pyav); '
    "the share of their training time spent loading batches is each run's data_fraction",
    'ACT and Diffusion Policy take no instruction: they tell the task from the scene',
]


# ------------------------------------------------------------------------------ data

def finetune_spec(checkpoint: Path) -> dict:
    """The training config a checkpoint keeps of its finetune (training/finetune.yaml), or {}."""
    import yaml
    try:
        return yaml.safe_load((checkpoint / 'training' / 'finetune.yaml').read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def default_cache(checkpoint: Path) -> Path:
    """The cache DeFI's checkpoint was finetuned on."""
    spec = checkpoint / 'training' / 'finetune.yaml'
    cache = (finetune_spec(checkpoint).get('data') or {}).get('cache')
    if not cache:
        raise SystemExit(f'peer_policies: {spec} names no data.cache; give the demonstrations with --cache')
    return (ROOT / cache) if not Path(cache).is_absolute() else Path(cache)


def run_logged(name: str, argv: list, log_dir: Path, env=None, timeout=None) -> float:
    """Run argv with its output in log_dir/name.log; -> wall seconds. A failure raises with the log's tail."""
    log = log_dir / f'{name}.log'
    line = ' '.join(shlex.quote(str(a)) for a in argv)
    t0 = time.monotonic()
    with open(log, 'w') as f:
        f.write(f'$ {line}\n')
        f.flush()
        try:
            rc = subprocess.call([str(a) for a in argv], stdout=f, stderr=subprocess.STDOUT, env=env,
                                 cwd=ROOT, timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = 'timeout'
    took = time.monotonic() - t0
    print(f'[peers] {name}: {"ok" if rc == 0 else f"FAILED ({rc})"} in {took:.0f} s (log {log})', flush=True)
    if rc != 0:
        raise RuntimeError(f'{name} failed ({rc}); {tail(log)}')
    return took


# ------------------------------------------------------------------------------ training

def train_peer(kind: str, python: Path, dataset: Path, work: Path, log_dir: Path, plan: dict) -> dict:
    """Train one peer (or reuse a finished run with the same settings); -> its summary + wall time."""
    out = work / kind
    overrides = {k: v for k, (v, _) in CHANGED[kind].items()}
    signature = {'kind': kind, 'overrides': overrides, 'budget_s': plan['budget_s'], 'max_steps': plan['max_steps'],
                 'cache': str(plan['cache']), 'cache_created': plan['cache_created'], 'threads': plan['threads'],
                 'lerobot': LEROBOT_VERSION}
    sig_file, summary_file = out / 'signature.json', out / 'summary.json'
    if summary_file.is_file() and sig_file.is_file() and json.loads(sig_file.read_text()) == signature:
        summary = json.loads(summary_file.read_text())
        print(f'[peers] train_{kind}: reused {out} ({summary["steps"]} steps, {summary["wall_s"]} s)', flush=True)
        return summary
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    argv = [python, WORKER, 'train', '--kind', kind, '--dataset', dataset, '--out', out,
            '--budget-s', plan['budget_s'], '--overrides', json.dumps(overrides), '--threads', plan['threads']]
    if plan['max_steps']:
        argv += ['--max-steps', plan['max_steps']]
    print(f'[peers] train_{kind}: {plan["budget_s"]:.0f} s of wall clock'
          + (f', at most {plan["max_steps"]} steps' if plan['max_steps'] else ''), flush=True)
    wall = run_logged(f'train_{kind}', argv, log_dir, env=peer_env(plan['threads']),
                      timeout=plan['budget_s'] + 900)
    summary = json.loads(summary_file.read_text())
    summary['wall_s'] = round(wall, 1)
    summary_file.write_text(json.dumps(summary, indent=1))
    sig_file.write_text(json.dumps(signature))
    return summary


# ------------------------------------------------------------------------------ evaluation

def peer_cfg(defi_cfg, export: Path):
    """The observation surface of the export (cameras, image size, state and action sizes) as a
    DefiConfig: DeFI's own when given (it was trained on the same cache), else the defaults."""
    from defi_core.config import DefiConfig
    info = json.loads((export / 'meta' / 'info.json').read_text())
    feats = info['features']
    cams = tuple(k.split('.', 2)[2] for k, f in feats.items() if f['dtype'] in ('video', 'image'))
    size = feats[f'observation.images.{cams[0]}']['shape'][0]
    state = feats.get('observation.state', {}).get('shape', [0])[0]
    fields = dict(image_size=size, cameras=cams, state_dim=state, action_dim=feats['action']['shape'][0])
    return dataclasses.replace(defi_cfg, **fields) if defi_cfg is not None else DefiConfig(**fields)


def evaluate(name: str, policy, config, out_dir: Path) -> dict:
    from defi_sim.evaluate import run_inprocess
    from defi_sim.evaluation import summarize, write_results
    t0 = time.monotonic()
    lines = []

    def log(line):
        lines.append(line)
        print(f'[peers] eval_{name}: {line}', flush=True)
    episodes, _ = run_inprocess(policy, config, log=log)
    (out_dir / 'episodes.log').parent.mkdir(parents=True, exist_ok=True)
    (out_dir / 'episodes.log').write_text('\n'.join(lines) + '\n')
    results = summarize(episodes, checkpoint=name, mode='inprocess')
    write_results(results, out_dir)
    loop_ms = [ms for ep in episodes for ms in ep.inference_ms]
    print(f'[peers] eval_{name}: mean {results["mean_success"]:.0%} over {len(episodes)} episodes in '
          f'{time.monotonic() - t0:.0f} s ({out_dir})', flush=True)
    return {'results': results, 'loop_ms': loop_ms, 'eval_s': round(time.monotonic() - t0, 1)}


# ------------------------------------------------------------------------------ report

def budget_from(args) -> tuple[float, str]:
    if args.budget_s:
        return float(args.budget_s), '--budget-s'
    if args.defi_train_wall_s:
        return float(args.defi_train_wall_s), "DeFI's finetune wall time (--defi-train-wall-s)"
    rec = RESULTS / 'metaworld.json'
    stage = 'finetune_s0_k10_full'
    try:
        wall = float(json.loads(rec.read_text())['stage_s'][stage])
    except (OSError, ValueError, KeyError, TypeError):
        raise SystemExit("peer_policies: give DeFI's finetune wall time with --defi-train-wall-s "
                         '(or --budget-s)') from None
    return wall, (f"DeFI's finetune wall time in {rec.relative_to(ROOT)} ({stage}); give the one of the "
                  'checkpoint under test with --defi-train-wall-s')


def row_for(name: str, ev: dict, train_wall_s, steps, chunk_ms: list, tasks: list) -> dict:
    r = ev['results']
    per_task = {t: round(r['tasks'][t]['success'], 4) for t in tasks if t in r['tasks']}
    others = [v for t, v in per_task.items() if t != 'reach-v3']
    return {
        'name': name, 'mean': round(r['mean_success'], 4), 'ci95': [round(x, 4) for x in r['ci95']],
        'tasks': per_task, 'train_wall_s': None if train_wall_s is None else round(float(train_wall_s), 1),
        'chunk_ms_median': round(median(chunk_ms), 2) if chunk_ms else None,
        'train_steps': steps,
        'mean_without_reach': round(sum(others) / len(others), 4) if others and len(others) < len(per_task) else None,
        'tasks_ci95': {t: [round(x, 4) for x in r['tasks'][t]['ci95']] for t in per_task},
        'episodes': sum(r['tasks'][t]['episodes'] for t in per_task),
        'loop_ms_median': round(median(ev['loop_ms']), 2) if ev['loop_ms'] else None,
        'eval_s': ev['eval_s'],
    }


def table(rows: list, tasks: list) -> list:
    short = [t.replace('-v3', '') for t in tasks]
    head = ['policy', 'train wall s', 'steps', 'chunk ms', *short, 'mean [95% CI]', 'mean w/o reach']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for r in rows:
        cells = [r['name'], f"{r['train_wall_s']:.0f}" if r['train_wall_s'] is not None else 'n/a',
                 str(r['train_steps']) if r['train_steps'] is not None else 'n/a',
                 f"{r['chunk_ms_median']:.1f}" if r['chunk_ms_median'] is not None else 'n/a',
                 *[f"{r['tasks'][t]:.0%}" for t in tasks],
                 f"**{r['mean']:.0%}** [{r['ci95'][0]:.0%}, {r['ci95'][1]:.0%}]",
                 f"{r['mean_without_reach']:.0%}" if r['mean_without_reach'] is not None else '-']
        lines.append('| ' + ' | '.join(cells) + ' |')
    return lines


def changed_lines() -> list:
    return [f'- {kind}: `{key}` = {json.dumps(value)}: {why}'
            for kind, changes in CHANGED.items() for key, (value, why) in changes.items()]


def markdown(record: dict, rows: list, tasks: list) -> str:
    p = record['plan']
    lines = ['# DeFI against LeRobot ACT and Diffusion Policy (same data, CPU, budget and loop)', '',
             f"_{record['date']} · {record['machine']} · peers: LeRobot {record['peer_versions']['lerobot']}, "
             f"torch {record['peer_versions']['torch']} · `{record['command']}` · wall time "
             f"{record['wall_s'] / 60:.1f} min ({record['mode']} run)_", '',
             f"Demonstrations: `{p['cache']}` ({p['cache_episodes']} episodes), exported with "
             f"`defi-data convert --to lerobot`. Training budget per peer: {p['budget_s']:.0f} s of wall clock "
             f"({p['budget_source']})" + (f", at most {p['max_steps']} steps" if p['max_steps'] else '') + '. '
             f"Evaluation: {p['episodes']} episodes per task in-process on seeds {p['seed']}.. "
             f"(unseen), at most {p['max_env_steps']} control steps of 12.5 ms. Chunk ms: median time of a "
             'call that computed a chunk (peers: in their worker, without the pipe).', '',
             *table(rows, tasks), '',
             'Mean: unweighted over tasks, 95% interval by stratified bootstrap over episodes; per task '
             'the Wilson interval is in the JSON. reach-v3 is reported apart (`mean w/o reach`): its goal is '
             'a marker about one pixel wide at 64 px.', '',
             'Steps: the same wall-clock budget buys each policy as many steps as its size allows on this '
             "machine (column `steps`); LeRobot's defaults train ACT and Diffusion Policy for 100 k steps on a "
             'GPU, so on a short CPU budget this compares what each policy learns in that time, not fully '
             'trained policies.', '',
             '## LeRobot defaults changed', '', *changed_lines(), '', '## Kept as LeRobot has them', '',
             *[f'- {n}' for n in NOTES], '']
    return '\n'.join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    mode_group = ap.add_mutually_exclusive_group()
    mode_group.add_argument('--quick', action='store_true', help='10 episodes per task, peers <= 12 min each')
    mode_group.add_argument('--smoke', action='store_true', help=f'1 task, {SMOKE_STEPS} steps per peer, 2 episodes')
    ap.add_argument('--defi-checkpoint', default=None,
                    help='DeFI checkpoint under test (default models/defi_metaworld)')
    ap.add_argument('--defi-train-wall-s', type=float, default=None,
                    help="wall seconds of the DeFI finetune that made the checkpoint: the peers' budget")
    ap.add_argument('--budget-s', type=float, default=None, help='training wall seconds per peer (overrides)')
    ap.add_argument('--cache', default=None, help="episode cache (default: the checkpoint's finetune data.cache)")
    ap.add_argument('--tasks', nargs='+', default=None, help="Meta-World tasks to evaluate (default: the cache's)")
    ap.add_argument('--episodes', type=int, default=None, help='evaluation episodes per task')
    ap.add_argument('--peers', nargs='+', default=['act', 'diffusion'], choices=list(CHANGED))
    ap.add_argument('--threads', type=int, default=os.cpu_count() or 1, help='torch threads, every policy')
    ap.add_argument('--peer-venv', default=None, help='the peers\' venv (default .venv-peers)')
    ap.add_argument('--workdir', default=None, help='export, peer runs, logs (default data/bench_peers[_mode])')
    ap.add_argument('--out', default=None, help='JSON result file (default benchmarks/results/peer_policies.json; '
                    '--smoke: in the work directory)')
    args = ap.parse_args()
    # paths given on the command line are the caller's; the defaults are the repository's
    for name in ('defi_checkpoint', 'cache', 'workdir', 'out', 'peer_venv'):
        if getattr(args, name):
            setattr(args, name, str(Path(getattr(args, name)).resolve()))
    os.chdir(ROOT)
    mode = 'smoke' if args.smoke else 'quick' if args.quick else 'full'
    start = time.monotonic()

    import torch

    from defi_sim.evaluate import EvalConfig, checkpoint_chunk_dt, load_eval_policy
    from defi_training.cache import EpisodeCache
    torch.set_num_threads(max(1, args.threads))

    checkpoint = Path(args.defi_checkpoint or 'models/defi_metaworld')
    cache_path = Path(args.cache) if args.cache else default_cache(checkpoint)
    try:
        cache = EpisodeCache(cache_path)
    except Exception as exc:  # noqa: BLE001 - one line that names the cache
        raise SystemExit(f'peer_policies: cannot read the episode cache {cache_path}: {exc}') from None
    tasks = list(args.tasks or cache_tasks(cache))
    if mode == 'smoke' and not args.tasks:
        tasks = tasks[:1]
    budget_s, budget_source = budget_from(args)
    if mode == 'quick' and budget_s > QUICK_BUDGET_CAP_S:
        budget_source += f'; capped at {QUICK_BUDGET_CAP_S} s for --quick (DeFI had {budget_s:.0f} s)'
        budget_s = float(QUICK_BUDGET_CAP_S)
    plan = {'budget_s': budget_s, 'budget_source': budget_source, 'max_steps': SMOKE_STEPS if mode == 'smoke' else 0,
            'cache': str(cache_path), 'cache_created': cache.meta.get('created'),
            'cache_episodes': cache.num_episodes, 'threads': args.threads,
            'episodes': args.episodes or EPISODES[mode], 'tasks': tasks}
    config = EvalConfig(tasks=tuple(tasks), episodes=plan['episodes'])
    plan.update(seed=config.seed, max_env_steps=config.max_steps)
    work = Path(args.workdir or f'data/bench_peers{"" if mode == "full" else "_" + mode}')
    log_dir = work / 'logs'
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f'[peers] {mode} run: tasks {tasks}, {plan["episodes"]} episodes per task, peers {args.peers}, '
          f'budget {budget_s:.0f} s per peer ({budget_source}); work in {work}', flush=True)
    print('[peers] LeRobot defaults changed:\n' + '\n'.join(changed_lines()), flush=True)

    venv = Path(args.peer_venv or ROOT / '.venv-peers')
    python, versions = ensure_peer_venv(venv, log_dir)
    print(f'[peers] peer venv {venv}: LeRobot {versions["lerobot"]}, torch {versions["torch"]}', flush=True)

    # 2. export (about 30 s; the peers' observation surface is read from it too)
    export = work / 'lerobot'
    run_logged('export', ['defi-data', 'convert', '--to', 'lerobot', cache_path, '--out', export, '--overwrite'],
               log_dir)

    # 3. train
    summaries = {kind: train_peer(kind, python, export, work, log_dir, plan) for kind in args.peers}

    # 4. evaluate
    defi = load_eval_policy(checkpoint)
    defi_config = dataclasses.replace(config, action_dt_s=checkpoint_chunk_dt(checkpoint, config))
    evals = {'defi': evaluate('defi', defi, defi_config, work / 'eval' / 'defi')}
    rows = [row_for('defi', evals['defi'], args.defi_train_wall_s, finetune_spec(checkpoint).get('steps'),
                    evals['defi']['loop_ms'], tasks)]
    rows[0]['batch_size'] = finetune_spec(checkpoint).get('batch_size')
    fps = float(json.loads((export / 'meta' / 'info.json').read_text())['fps'])
    cfg = peer_cfg(defi.cfg, export)
    for kind in args.peers:
        peer = PeerPolicy(python, work / kind, cfg, log_dir / f'serve_{kind}.log', args.threads)
        try:
            ev = evaluate(kind, peer, dataclasses.replace(config, action_dt_s=1.0 / fps), work / 'eval' / kind)
        finally:
            peer.close()
        s = summaries[kind]
        rows.append(row_for(kind, ev, s['wall_s'], s['steps'], peer.model_ms, tasks))
        rows[-1]['settings_changed'] = {k: v for k, (v, _) in CHANGED[kind].items()}
        rows[-1].update(params=s.get('params'), data_fraction=s.get('data_fraction'), batch_size=s.get('batch_size'))
    wall_s = time.monotonic() - start

    print()
    for line in table(rows, tasks):
        print(line)
    print('\nLeRobot defaults changed for the peers:\n' + '\n'.join(changed_lines()))
    print('Kept as LeRobot has them:\n' + '\n'.join(f'- {n}' for n in NOTES))
    print(f'[peers] {mode} run done in {wall_s / 60:.1f} min\n', flush=True)
    # a smoke run's figures mean nothing: they stay in its work directory unless --out says otherwise
    out_json = Path(args.out) if args.out else (work if mode == 'smoke' else RESULTS) / 'peer_policies.json'
    record = emit('peer_policies', {
        'policies': rows, 'mode': mode, 'plan': plan, 'peer_versions': versions, 'wall_s': round(wall_s, 1),
        'changed': {kind: {k: {'value': v, 'why': why} for k, (v, why) in CHANGED[kind].items()}
                    for kind in args.peers},
        'notes': NOTES, 'defi_checkpoint': str(checkpoint),
    }, out=str(out_json))
    out_json.with_suffix('.md').write_text(markdown(record, rows, tasks))
    return 0


if __name__ == '__main__':
    sys.exit(main())
