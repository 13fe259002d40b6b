"""Regenerates benchmarks/results/README.md, the one-page performance report, from the JSON files
the benchmark scripts wrote (`make bench` runs them first). A figure no script has produced yet is
listed as missing rather than left out."""
from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / 'results'


def load(name):
    path = RESULTS / f'{name}.json'
    return json.loads(path.read_text()) if path.exists() else None


def provenance(record):
    return f"_{record['date']} · {record['machine']} · `{record['command']}`_"


def fmt(value, digits=1):
    if value is None:
        return 'n/a'
    if isinstance(value, float):
        return f'{value:.{digits}f}'
    return str(value)


def inference_section(r):
    lines = ['## Chunk inference latency (model only, per component)', provenance(r), '',
             '| preset | params | GFDM features ms | GIDM ms | Video Former ms | action head ms '
             '| whole chunk ms (median) |',
             '|---|---|---|---|---|---|---|']
    for preset in ('tiny', 'base'):
        p = r.get(preset)
        if p:
            lines.append(f"| {preset} | {p['params'] / 1e6:.2f} M | {fmt(p['gfdm_features_ms_median'])} | "
                         f"{fmt(p['gidm_ms_median'])} | {fmt(p['video_former_ms_median'])} | "
                         f"{fmt(p['action_head_ms_median'])} | **{fmt(p['chunk_ms_median'])}** |")
    lines += ['', 'Target: base whole chunk <= 50 ms median on 2 cores. Peers on the same machines '
              '(measured earlier): LeRobot ACT 35-42 ms, Diffusion Policy 1.0-1.1 s at 10 steps.']
    return lines


ROS_PATHS = (('model only (`predict_action_chunk`)', 'model'), ('composed bringup (one process)', 'composed'),
             ('composed, `executor:=multi` (one MultiThreadedExecutor)', 'composed_multi'),
             ('separate processes', 'separate'))


def ros_section(r):
    return ['## ROS 2 pipeline overhead (camera publish -> ActionChunk received)', provenance(r), '',
            '| path | median ms | p95 ms | dropped |', '|---|---|---|---|',
            *(f"| {path} | {fmt(r.get(f'{key}_ms_median'))} | {fmt(r.get(f'{key}_ms_p95'))} "
              f"| {r.get(f'{key}_dropped', 'n/a')} |" for path, key in ROS_PATHS),
            '', f"Overhead of the composed pipeline over model-only: **{fmt(r.get('overhead_ms_median'))} ms** "
            f"median (target <= 5 ms); preset {r.get('preset')}, {fmt(r.get('rate_hz'))} Hz."]


def data_section(r):
    lines = ['## Bag -> cache throughput', provenance(r), '',
             f"{r['bag']['frames']} frames of {r['bag']['image']} ({r['bag']['storage']}) into a "
             f"{r['cache']['image_size']} px cache: **{fmt(r['cache_frames_per_s'], 0)} frames/s** "
             f"({fmt(r.get('cache_MB_per_s'))} MB/s); plain rosbags read + deserialize of the same bag: "
             f"{fmt(r['raw_read_frames_per_s'], 0)} frames/s; ratio {fmt(r['ratio'], 3)} (target >= 1500 frames/s)."]
    train = r.get('train_samples_per_s')
    lines += ['', '## Training throughput (samples/s)']
    if train:
        presets = sorted({p for stage in train.values() for p in stage})
        lines += ['| stage | ' + ' | '.join(presets) + ' |', '|---' * (len(presets) + 1) + '|']
        for stage, by_preset in train.items():
            lines.append(f'| {stage} | ' + ' | '.join(fmt(by_preset.get(p)) for p in presets) + ' |')
    else:
        lines.append('not measured in this run (`python benchmarks/data.py` without `--skip-train`).')
    return lines


def sim_section(r):
    lines = ['## Simulation', provenance(r), '', '| camera setup | render + physics steps/s |', '|---|---|']
    for key, fps in r['render_plus_physics_fps'].items():
        lines.append(f'| {key} | {fmt(fps)} |')
    lines += ['', f"Physics alone: {fmt(r['physics_steps_per_s'], 0)} steps/s.", '',
              '| task (scripted expert through ROS 2) | success | episodes |', '|---|---|---|']
    for task, t in r.get('expert_ros_loop', {}).get('tasks', {}).items():
        lines.append(f"| {task} | {fmt(t['success'], 2)} | {t['episodes']} |")
    return lines


def closed_loop_section(r):
    rate = r['control_rate_hz_configured']
    reasons = ', '.join(f'{k} {v}' for k, v in sorted(r.get('stop_reasons', {}).items())) or 'none'
    killed = r.get('killed_after_sigint') or []
    return ['## Closed loop: control rate with async execution, bringup memory', provenance(r), '',
            f"`defi_sim_node` (real time, {r['task']}) and `defi_bringup` ({r['checkpoint']}, "
            "the sim stack: share/defi_sim/config/sim.yaml + defi_sim.yaml) as two processes, "
            f"one ExecuteInstruction goal, {fmt(r['seconds'], 0)} s "
            f"measured on `defi/action_command`; load average {r.get('load_average_1min_at_start')} -> "
            f"{r.get('load_average_1min_at_end')}.", '',
            '| figure | value |', '|---|---|',
            f"| commands/s overall (configured {fmt(rate)} Hz) | **{fmt(r['command_rate_hz_overall'], 2)}** |",
            f"| instantaneous command rate median / p5 (Hz) | {fmt(r['command_rate_hz_median'], 2)} / "
            f"{fmt(r['command_rate_hz_p5'], 2)} |",
            f"| idle_fraction (no fresh command for > 1.5 periods) | **{fmt(r['idle_fraction'], 3)}** |",
            f"| gaps > 1.5 control periods (longest gap) | {r['gaps_over_1p5_periods']} "
            f"({fmt(r.get('command_gap_ms_max'), 0)} ms) |",
            f"| stop commands in the window (exhausted chunk) | {r['stop_commands']} ({r['stops_exhausted']}); "
            f"reasons: {reasons} |",
            f"| ActionChunks/s | {fmt(r['chunk_rate_hz'], 2)} |",
            f"| chunk latency median / p95 (receive - camera stamp) | {fmt(r['chunk_latency_ms_median'])} / "
            f"{fmt(r['chunk_latency_ms_p95'])} ms |",
            f"| sim observations/s (configured {fmt(r.get('sim_observation_rate_hz_configured'), 0)}) | "
            f"{fmt(r.get('sim_observation_rate_hz'), 1)} |",
            f"| bringup peak RSS (VmHWM) / at the end | **{fmt(r['bringup_peak_rss_mb'], 0)} MB** / "
            f"{fmt(r.get('bringup_rss_end_mb'), 0)} MB |",
            f"| sim node peak RSS (VmHWM) | {fmt(r['sim_peak_rss_mb'], 0)} MB |",
            f"| stop command after the goal's cancel | {fmt(r.get('stop_after_cancel_ms'), 0)} ms |",
            f"| killed after SIGINT (hung > 10 s) | {', '.join(killed) or 'none'} |",
            '', 'Target: the robot never idles between chunks: idle_fraction ~0, command rate = configured '
            'rate, no chunk_exhausted stops.']


def metaworld_section(r):
    ks = sorted({row['k'] for row in r['results']})
    variants = list(dict.fromkeys(row['variant'] for row in r['results']))
    at = {(row['variant'], row['k']): row for row in r['results']}
    plan = r.get('plan', {})
    stages = r.get('stage_s', {})          # seconds per stage (a reused one: from its earlier run)
    reused = len(r.get('reused_stages', []))
    stage_min = sum(v or 0.0 for v in stages.values()) / 60
    lines = ['## Closed-loop success on Meta-World (DeFI and its ablations)', provenance(r), '',
             f"{r.get('mode', '?')} run: preset `{plan.get('preset')}`, seeds {plan.get('seeds')}, "
             f"{plan.get('eval_episodes')} episodes per task per seed, 6 development tasks; "
             f"{stage_min:.0f} min of stage time ({reused} of {len(stages)} stages reused from earlier "
             f"runs; this invocation {r.get('wall_s', 0) / 60:.1f} min). Details, per-task table, plot, "
             'analysis and the exact commands: [metaworld.md](metaworld.md).', '',
             '| variant | ' + ' | '.join(f'K={k}' for k in ks) + ' |', '|---|' + '---|' * len(ks)]
    for v in variants:
        cells = [f"{at[v, k]['mean']:.0%} [{at[v, k]['ci95'][0]:.0%}, {at[v, k]['ci95'][1]:.0%}]"
                 if (v, k) in at else 'n/a' for k in ks]
        lines.append(f'| {v} | ' + ' | '.join(cells) + ' |')
    lines += [''] + [f'- {g}' for g in r.get('goals', [])]
    return lines


def peers_section(r):
    tasks = sorted({t for p in r['policies'] for t in p['tasks']})
    lines = ['## DeFI against LeRobot ACT and Diffusion Policy (same data, budget and loop)', provenance(r), '',
             'Unseen seeds, in-process; what the budget means for the peers and the settings changed in '
             'them: [peer_policies.md](peer_policies.md).', '',
             '| policy | train wall s | steps | chunk ms | ' + ' | '.join(tasks) + ' | mean [95% CI] |',
             '|---|---|---|---|' + '---|' * len(tasks) + '---|']
    for p in r['policies']:
        cells = [f"{p['tasks'][t]:.0%}" if t in p['tasks'] else 'n/a' for t in tasks]
        lines.append(f"| {p['name']} | {fmt(p['train_wall_s'], 0)} | {fmt(p.get('train_steps'))} | "
                     f"{fmt(p['chunk_ms_median'])} | " + ' | '.join(cells) +
                     f" | **{p['mean']:.0%}** [{p['ci95'][0]:.0%}, {p['ci95'][1]:.0%}] |")
    return lines


def main():
    sections = [('inference', inference_section), ('ros_latency', ros_section),
                ('data', data_section), ('sim', sim_section), ('closed_loop', closed_loop_section),
                ('metaworld', metaworld_section), ('peer_policies', peers_section)]
    out = ['# Performance report', '',
           'Generated by `python benchmarks/report.py` from the JSON files beside it (`make bench` runs '
           'every benchmark in quick mode first). Each section names its machine, command and date; '
           'compare figures only within one section: these machines are shared and noisy.', '']
    missing = []
    for name, render in sections:
        record = load(name)
        if record is None:
            missing.append(name)
            continue
        out += render(record) + ['']
    extra = [] if 'closed_loop' not in missing else [
        'closed-loop control rate with async execution', 'peak memory of the bringup']
    missing = [m for m in missing if m != 'closed_loop']
    if missing or extra:
        out += ['## Not measured yet', ''] + [f'- {m}' for m in missing + extra] + ['']
    (RESULTS / 'README.md').write_text('\n'.join(out))
    print(f'wrote {RESULTS / "README.md"}')


if __name__ == '__main__':
    main()
