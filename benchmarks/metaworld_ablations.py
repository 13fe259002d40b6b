"""The paper's claims in miniature: DeFI and its ablations on the Meta-World development tasks.

    python benchmarks/metaworld_ablations.py --quick  # tiny preset, 1 seed, K=10, 10 episodes/task (<= 45 min, 2 cores)
    python benchmarks/metaworld_ablations.py          # base preset, 3 seeds, K in {5, 10, 25}, 25 episodes/task (GPU)

Pipeline, every stage with the project's own commands (each logged with its exact command line):
  1. data      `defi-sim dataset`: action-free pretraining video (>= 50 noisy expert episodes per task,
               development tasks + other Meta-World scenes, seeds 500..) and, per seed s and K, K
               labelled demonstrations per development task (seeds 100*s .. 100*s+K-1: disjoint).
  2. pretrain  `defi-train gfdm` and `defi-train gidm` on the action-free cache (once per run).
  3. finetune  `defi-train finetune` per (seed, K, variant), one multi-task language-conditioned
               policy each, the same number of gradient steps for every variant.
  4. evaluate  `defi-eval --mode inprocess` on unseen initial states (seeds 1000 + 100*s ..).
Finished stages are kept in --workdir and reused, so an interrupted run continues where it stopped.
Writes benchmarks/results/metaworld.{json,md,svg}; the JSON line printed last follows the benchmark
contract {"results": [{"variant", "k", "mean", "ci95"}]}. Hand-written analysis lives in
benchmarks/metaworld_notes.md and is copied into the page.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, emit  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEV_TASKS = ('reach-v3', 'push-v3', 'button-press-topdown-v3', 'drawer-open-v3', 'door-open-v3',
             'window-open-v3')
# other scenes for action-free pretraining only (the paper's human videos stand-in)
OTHER_TASKS = ('drawer-close-v3', 'faucet-open-v3', 'plate-slide-v3', 'handle-press-v3',
               'coffee-button-v3', 'lever-pull-v3')
# each variant is one switch away from `full` (defi-train finetune overrides / stage checkpoints)
VARIANTS = {
    'full':             dict(gfdm=True, gidm=True, overrides=()),
    'gfdm_no_pretrain': dict(gfdm=False, gidm=True, overrides=('model.gfdm_pretrained=false',)),
    'gidm_no_pretrain': dict(gfdm=True, gidm=False, overrides=('model.gidm_pretrained=false',)),
    'adapter_only':     dict(gfdm=True, gidm=False, overrides=('model.idm_type=none',)),
    'mlp_idm':          dict(gfdm=True, gidm=False, overrides=('model.idm_type=mlp',)),
    'bc_scratch':       dict(gfdm=False, gidm=False,
                             overrides=('model.backbone=scratch', 'model.idm_type=none')),
}
PRETRAIN_SEED, EVAL_SEED = 500, 1000


@dataclasses.dataclass
class Plan:
    preset: str = 'base'
    seeds: tuple = (0, 1, 2)
    ks: tuple = (5, 10, 25)
    variants: tuple = tuple(VARIANTS)
    eval_episodes: int = 25              # per task per seed
    pretrain_episodes: int = 50          # per task (development + other scenes)
    pretrain_noise: float = 0.3
    demo_noise: float = 0.1
    gfdm_steps: int = 20000
    gidm_steps: int = 10000
    finetune_steps: int = 10000
    # 1e-3, not config/train_finetune.yaml's 1e-4: tuned on the development tasks (tiny, K=10:
    # 13% -> 43% mean success; the policy underfitted its own demonstrations at 1e-4)
    finetune_lr: float = 1e-3
    batch_size: int = 32
    max_steps: int = 300                 # control steps per evaluation episode (12.5 ms each)
    jobs: int = 2                        # stages run side by side (one finetune+eval chain each)
    device: str = 'auto'
    workdir: str = 'data/bench_metaworld'

    @classmethod
    def quick(cls, **kw):
        return cls(**{**dict(preset='tiny', seeds=(0,), ks=(10,), eval_episodes=10, gfdm_steps=2500,
                             gidm_steps=1500, finetune_steps=2500, batch_size=16), **kw})


class Runner:
    """Runs the project's commands, logs each to a file, remembers the exact command lines."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.work = Path(plan.workdir)
        (self.work / 'logs').mkdir(parents=True, exist_ok=True)
        self.commands: list[str] = []
        # stage -> seconds, kept across runs so that a resumed run still reports every stage's time
        self._timings_file = self.work / 'stage_seconds.json'
        self.earlier = json.loads(self._timings_file.read_text()) if self._timings_file.is_file() else {}
        self.timings: dict = {}      # stage -> seconds (from the earlier run for a reused stage)
        self.reused: list = []
        self._lock = threading.Lock()
        cores = os.cpu_count() or 1
        self.threads = max(1, cores // max(1, plan.jobs))

    def run(self, name: str, argv: list, done: bool = False) -> None:
        """Run argv (logged to logs/<name>.log) unless `done` (its output exists from an earlier
        run: listed among the commands all the same, with that run's time)."""
        line = ' '.join(shlex.quote(str(a)) for a in argv)
        with self._lock:
            self.commands.append(line)
            if done:
                self.timings[name] = self.earlier.get(name)
                self.reused.append(name)
        if done:
            return
        env = dict(os.environ, OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
        log = self.work / 'logs' / f'{name}.log'
        t0 = time.monotonic()
        with open(log, 'w') as f:
            f.write(f'$ {line}\n')
            f.flush()
            rc = subprocess.call([str(a) for a in argv], stdout=f, stderr=subprocess.STDOUT,
                                 env=env, cwd=ROOT)
        took = time.monotonic() - t0
        with self._lock:
            self.timings[name] = round(took, 1)
            if rc == 0:
                self.earlier[name] = round(took, 1)
                self._timings_file.write_text(json.dumps(self.earlier, indent=1))
        print(f'[metaworld] {name}: {"ok" if rc == 0 else f"FAILED (exit {rc})"} in {took:.0f} s '
              f'(log {log})', flush=True)
        if rc != 0:
            tail = log.read_text().splitlines()[-15:]
            raise RuntimeError(f'{name} failed (exit {rc}); last lines of {log}:\n' + '\n'.join(tail))

    # ---- 1. data ------------------------------------------------------------------------------
    def data(self) -> None:
        p = self.plan
        af = self.work / 'cache' / 'action_free'
        self.run('data_action_free', [
            'defi-sim', 'dataset', '--tasks', *DEV_TASKS, *OTHER_TASKS,
            '--episodes', p.pretrain_episodes, '--seed', PRETRAIN_SEED, '--noise', p.pretrain_noise,
            '--no-actions', '--image-size', 64, '--jobs', p.jobs, '--out', af, '--overwrite'],
            done=(af / 'meta.json').is_file())
        for s in p.seeds:
            for k in p.ks:
                out = self.labelled(s, k)
                self.run(f'data_labelled_s{s}_k{k}', [
                    'defi-sim', 'dataset', '--tasks', *DEV_TASKS, '--episodes', k,
                    '--seed', 100 * s, '--noise', p.demo_noise, '--image-size', 64,
                    '--jobs', p.jobs, '--out', out, '--overwrite'], done=(out / 'meta.json').is_file())

    def labelled(self, s: int, k: int) -> Path:
        return self.work / 'cache' / f'labelled_s{s}_k{k}'

    # ---- 2. pretraining -----------------------------------------------------------------------
    def common_train_args(self, seed: int) -> list:
        p = self.plan
        return [f'model.preset={p.preset}', 'data.num_workers=0', 'progress=false',
                f'threads={self.threads}', f'device={p.device}', f'batch_size={p.batch_size}',
                f'seed={seed}', 'image_every=0']

    def pretrain(self) -> None:
        p = self.plan
        af = self.work / 'cache' / 'action_free'
        jobs = []
        for stage, steps in (('gfdm', p.gfdm_steps), ('gidm', p.gidm_steps)):
            out = self.work / 'runs' / stage
            jobs.append((f'pretrain_{stage}', [
                'defi-train', stage, '--config', f'config/train_{stage}.yaml', '--out', out,
                f'data.cache={af}', f'steps={steps}', *self.common_train_args(0)],
                (out / 'final' / 'config.json').is_file()))
        with ThreadPoolExecutor(max(1, p.jobs)) as pool:
            for f in [pool.submit(self.run, *job) for job in jobs]:
                f.result()

    # ---- 3 + 4. finetune and evaluate one variant -----------------------------------------------
    def variant(self, s: int, k: int, name: str) -> Path:
        p, spec = self.plan, VARIANTS[name]
        run_dir = self.work / 'runs' / f's{s}_k{k}' / name
        ckpt = run_dir / 'final'
        argv = ['defi-train', 'finetune', '--config', 'config/train_finetune.yaml', '--out', run_dir,
                f'data.cache={self.labelled(s, k)}', 'data.val_fraction=0',
                f'steps={p.finetune_steps}', f'optim.lr={p.finetune_lr}', *self.common_train_args(s),
                *spec['overrides']]
        if spec['gfdm']:
            argv += ['--gfdm', self.work / 'runs' / 'gfdm' / 'final']
        if spec['gidm']:
            argv += ['--gidm', self.work / 'runs' / 'gidm' / 'final']
        self.run(f'finetune_s{s}_k{k}_{name}', argv, done=(ckpt / 'config.json').is_file())
        eval_dir = run_dir / 'eval'
        self.run(f'eval_s{s}_k{k}_{name}', [
            'defi-eval', '--checkpoint', ckpt, '--tasks', *DEV_TASKS, '--episodes', p.eval_episodes,
            '--mode', 'inprocess', '--seed', EVAL_SEED + 100 * s, '--max-steps', p.max_steps,
            '--threads', self.threads, '--device', 'cpu' if p.device == 'auto' else p.device,
            '--out', eval_dir], done=(eval_dir / 'results.json').is_file())
        return eval_dir / 'results.json'


# ------------------------------------------------------------------------------------ results

def outcomes(results_json: Path) -> dict:
    """task -> list of episode outcomes (bools) from a defi-eval results.json."""
    r = json.loads(results_json.read_text())
    out = {}
    for task, t in r['tasks'].items():
        n = int(t['episodes'])
        wins = int(round(float(t['success']) * n))
        out[task] = [True] * wins + [False] * (n - wins)
    return out


def aggregate(plan: Plan, per_run: dict) -> list:
    """One row per (variant, K): mean over tasks and seeds, 95% stratified bootstrap interval."""
    from defi_sim.evaluation import bootstrap_mean_interval
    rows = []
    for name in plan.variants:
        for k in plan.ks:
            strata, seed_means = {}, []
            for s in plan.seeds:
                res = per_run.get((s, k, name))
                if res is None:
                    continue
                for task, oc in res.items():
                    strata[f's{s}/{task}'] = oc
                seed_means.append(sum(sum(v) / len(v) for v in res.values()) / len(res))
            if not strata:
                continue
            mean, lo, hi = bootstrap_mean_interval(strata, seed=0)
            per_task = {}
            for key, oc in strata.items():
                per_task.setdefault(key.split('/', 1)[1], []).extend(oc)
            rows.append({'variant': name, 'k': k, 'mean': round(mean, 4), 'ci95': [round(lo, 4), round(hi, 4)],
                         'seeds': len(seed_means), 'seed_means': [round(m, 4) for m in seed_means],
                         'episodes': sum(len(v) for v in strata.values()),
                         'per_task': {t: round(sum(v) / len(v), 3) for t, v in per_task.items()}})
    return rows


def goals(plan: Plan, rows: list) -> list:
    """(goal, verdict) lines for the issue's three goals, from the measured rows."""
    at = {(r['variant'], r['k']): r['mean'] for r in rows}
    lines = []
    full10 = at.get(('full', 10))
    if full10 is not None:
        ok = full10 >= 0.80
        met = 'MET' if ok and plan.preset == 'base' else 'MISSED'
        lines.append(f"full DeFI >= 80% at K=10 with the base preset: {met} "
                     f"({full10:.0%} with the {plan.preset} preset)")
    for chain in (('full', 'gidm_no_pretrain', 'gfdm_no_pretrain'), ('full', 'adapter_only', 'mlp_idm')):
        for k in plan.ks:
            vals = [at.get((v, k)) for v in chain]
            if None in vals:
                continue
            ok = all(a > b for a, b in pairwise(vals))
            lines.append(f"ordering {' > '.join(chain)} at K={k}: {'HOLDS' if ok else 'DOES NOT HOLD'} "
                         f"({' vs '.join(f'{v:.0%}' for v in vals)})")
    if ('full', 5) in at and ('bc_scratch', 5) in at:
        gap = at[('full', 5)] - at[('bc_scratch', 5)]
        lines.append(f"full beats no pretraining (bc_scratch) by >= 10 points at K=5: "
                     f"{'MET' if gap >= 0.10 else 'MISSED'} ({gap * 100:+.0f} points)")
    else:
        lines.append('full vs bc_scratch at K=5: not run (K=5 is not in this run; the full run has it)')
    return lines


def plot_success_vs_k(plan: Plan, rows: list, path: Path) -> Path:
    """Success vs K per variant (mean and 95% interval) as an SVG drawn with matplotlib.

    The file is the same for the same rows: no date in the metadata, fixed element ids, text kept
    as text (not glyph outlines).
    """
    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state
    from matplotlib.ticker import PercentFormatter

    ks = sorted(plan.ks)
    with matplotlib.rc_context({'svg.hashsalt': 'metaworld', 'svg.fonttype': 'none', 'font.size': 9}):
        fig = Figure(figsize=(5.6, 3.4))
        ax = fig.subplots()
        for i, name in enumerate(plan.variants):
            pts = sorted((r['k'], r) for r in rows if r['variant'] == name)
            if not pts:
                continue
            dx = (i - (len(plan.variants) - 1) / 2) * 0.03   # spread the error bars a little
            x = [ks.index(k) + dx for k, _ in pts]
            mean = [r['mean'] for _, r in pts]
            err = [[r['mean'] - r['ci95'][0] for _, r in pts], [r['ci95'][1] - r['mean'] for _, r in pts]]
            ax.errorbar(x, mean, yerr=err, marker='o', markersize=4, linewidth=2, elinewidth=1,
                        label=name, color=f'C{i % 10}')
        ax.set_xticks(range(len(ks)), [f'K={k}' for k in ks])
        ax.set_xlim(-0.5, len(ks) - 0.5)
        ax.set_ylim(0, 1)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        ax.grid(axis='y', color='#ddd')
        ax.set_xlabel('demonstrations per task')
        ax.set_ylabel('mean success (95% interval)')
        ax.legend(loc='upper left', bbox_to_anchor=(1.02, 1), frameon=False)
        fig.tight_layout()
        fig.savefig(path, format='svg', metadata={'Date': None})
    return path


def markdown(plan: Plan, rows: list, runner: Runner, wall_s: float, mode: str, record: dict) -> str:
    reused = len(runner.reused)
    stage_min = sum(v or 0.0 for v in runner.timings.values()) / 60
    lines = ['# DeFI on Meta-World: the paper\'s claims in miniature', '',
             f"_{record['date']} · {record['machine']} · `{record['command']}` · wall time "
             f"{wall_s / 60:.1f} min ({mode} run; {reused} of {len(runner.timings)} stages reused from "
             f"earlier runs, {stage_min:.0f} min of stage time in all, two stages side by side)_", '',
             f"Preset `{plan.preset}`; seeds {list(plan.seeds)}; K in {list(plan.ks)} demonstrations per task; "
             f"{plan.eval_episodes} evaluation episodes per task per seed on unseen initial states "
             f"(seeds {EVAL_SEED}+100*s..), at most {plan.max_steps} control steps (12.5 ms) each; "
             f"development tasks {', '.join(DEV_TASKS)}.", '',
             f"Pretraining (action-free): {plan.pretrain_episodes} expert episodes per task with action noise "
             f"{plan.pretrain_noise}, from the 6 development tasks and {len(OTHER_TASKS)} other scenes "
             f"({', '.join(OTHER_TASKS)}); GFDM {plan.gfdm_steps} steps, GIDM {plan.gidm_steps} steps. "
             f"Finetuning: {plan.finetune_steps} steps (batch {plan.batch_size}, learning rate "
             f"{plan.finetune_lr:g}) for every variant.", '',
             '## Mean success (95% interval: stratified bootstrap over episodes, strata = seed x task)', '',
             '| variant | ' + ' | '.join(f'K={k}' for k in plan.ks) + ' |',
             '|---|' + '---|' * len(plan.ks)]
    at = {(r['variant'], r['k']): r for r in rows}
    for name in plan.variants:
        cells = []
        for k in plan.ks:
            r = at.get((name, k))
            cells.append('n/a' if r is None else
                         f"**{r['mean']:.0%}** [{r['ci95'][0]:.0%}, {r['ci95'][1]:.0%}]")
        lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
    lines += ['', '![success vs K](metaworld.svg)', '', '## Per task (pooled over seeds)', '',
              '| variant | K | ' + ' | '.join(t.replace('-v3', '') for t in DEV_TASKS) + ' |',
              '|---|---|' + '---|' * len(DEV_TASKS)]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['k']} | " +
                     ' | '.join(f"{r['per_task'].get(t, float('nan')):.0%}" for t in DEV_TASKS) + ' |')
    lines += ['', '## Goals', ''] + [f'- {g}' for g in goals(plan, rows)]
    notes = Path(__file__).resolve().parent / 'metaworld_notes.md'
    if notes.is_file():
        lines += ['', notes.read_text().strip()]
    lines += ['', '## Stage wall times (s)', '', '| stage | s |', '|---|---|']
    lines += [f"| {k} | {v}{' (reused)' if k in runner.reused else ''} |"
              for k, v in sorted(runner.timings.items())]
    lines += ['', '## Exact commands', '', '```'] + runner.commands + ['```', '',
              f'Logs of every command: `{plan.workdir}/logs/`. Re-running the same command reuses '
              'finished stages (delete the work directory to start over).', '']
    return '\n'.join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--quick', action='store_true', help='tiny preset, 1 seed, K=10, 10 episodes/task')
    ap.add_argument('--preset', default=None)
    ap.add_argument('--seeds', type=int, nargs='+', default=None)
    ap.add_argument('--ks', type=int, nargs='+', default=None)
    ap.add_argument('--variants', nargs='+', default=None, choices=list(VARIANTS))
    ap.add_argument('--eval-episodes', type=int, default=None)
    ap.add_argument('--pretrain-episodes', type=int, default=None, help='action-free episodes per task')
    ap.add_argument('--gfdm-steps', type=int, default=None)
    ap.add_argument('--gidm-steps', type=int, default=None)
    ap.add_argument('--finetune-steps', type=int, default=None)
    ap.add_argument('--finetune-lr', type=float, default=None)
    ap.add_argument('--jobs', type=int, default=None, help='commands run side by side (default 2)')
    ap.add_argument('--device', default=None, help='training device: auto | cpu | cuda')
    ap.add_argument('--workdir', default=None, help='data, runs and logs (default data/bench_metaworld[_quick])')
    ap.add_argument('--out', default=None, help='JSON result file (default benchmarks/results/metaworld.json)')
    args = ap.parse_args()
    os.chdir(ROOT)      # work directories and the commands' paths are relative to the repository
    given = {f: getattr(args, f) for f in ('preset', 'eval_episodes', 'pretrain_episodes', 'gfdm_steps', 'gidm_steps',
                                          'finetune_steps', 'finetune_lr', 'jobs', 'device', 'workdir')
             if getattr(args, f) is not None}
    for f in ('seeds', 'ks', 'variants'):
        if getattr(args, f):
            given[f] = tuple(getattr(args, f))
    given.setdefault('workdir', 'data/bench_metaworld' + ('_quick' if args.quick else ''))
    plan = Plan.quick(**given) if args.quick else Plan(**given)
    mode = 'quick' if args.quick else 'full'
    print(f'[metaworld] {mode} run: {plan}', flush=True)

    start = time.monotonic()
    runner = Runner(plan)
    runner.data()
    runner.pretrain()
    chains = [(s, k, v) for s in plan.seeds for k in plan.ks for v in plan.variants]
    per_run, failures = {}, []
    with ThreadPoolExecutor(max(1, plan.jobs)) as pool:
        futures = {pool.submit(runner.variant, *c): c for c in chains}
        for fut, chain in futures.items():
            try:
                per_run[chain] = outcomes(fut.result())
            except RuntimeError as err:       # one broken variant must not hide the others
                failures.append(f'{chain}: {err}')
                print(f'[metaworld] {chain} failed: {err}', file=sys.stderr)
    wall_s = time.monotonic() - start
    rows = aggregate(plan, per_run)
    out_json = Path(args.out) if args.out else RESULTS / 'metaworld.json'
    print(f'\n{"variant":<18}' + ''.join(f'{"K=" + str(k):>22}' for k in plan.ks))
    at = {(r['variant'], r['k']): r for r in rows}
    for name in plan.variants:
        print(f'{name:<18}' + ''.join(
            f"{at[name, k]['mean']:>8.0%} [{at[name, k]['ci95'][0]:.0%}, {at[name, k]['ci95'][1]:.0%}]".rjust(22)
            if (name, k) in at else f'{"n/a":>22}' for k in plan.ks))
    for line in goals(plan, rows):
        print(f'  {line}')
    print(f'[metaworld] {out_json.with_suffix(".md")} ({wall_s / 60:.1f} min)\n', flush=True)
    record = emit('metaworld', {
        'results': [{k: r[k] for k in ('variant', 'k', 'mean', 'ci95')} for r in rows],
        'details': rows, 'mode': mode, 'plan': dataclasses.asdict(plan), 'goals': goals(plan, rows),
        'wall_s': round(wall_s, 1), 'stage_s': runner.timings,
        'reused_stages': runner.reused, 'failures': failures,
    }, out=str(out_json))
    out_json.with_suffix('.md').write_text(markdown(plan, rows, runner, wall_s, mode, record))
    plot_success_vs_k(plan, rows, out_json.with_suffix('.svg'))
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
