"""defi-sim record: scripted-expert demonstrations recorded through the ROS 2 topics.

    defi-sim record --task drawer-open --episodes 20 [--noise 0.1] [--seed 0] [--out data/sim]

One process runs three real ROS 2 nodes on one executor: the sim node in lockstep, the expert node
(answers each `sim/task_state` with a `defi/action_command`) and the recorder (raw subscriptions ->
one rosbag2 per episode, bag timestamps = header stamps = sim time). Episode e starts from seed
`seed + e`; keep training seeds below tasks.EVAL_SEED_OFFSET (1000), which evaluation uses.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from defi_sim.tasks import EVAL_SEED_OFFSET, canonical_task_name

DEFAULT_CONFIG = 'share/defi_sim/config/sim.yaml'    # installed by this package (defi_sim.stack)


def _default_config() -> Path | None:
    from defi_sim.stack import SIM_PARAMS, config_path
    try:
        return config_path(SIM_PARAMS)
    except LookupError:      # not built/installed: the dataclass defaults
        return None


def load_sim_parameters(path: str | Path | None) -> dict:
    """The `defi_sim_node: ros__parameters:` mapping of a ROS parameter YAML file ({} if none)."""
    if path is None:
        path = _default_config()
        if path is None or not path.is_file():
            return {}
    from defi_core import config_io
    from defi_sim.sim_node import SimNodeConfig
    path = Path(path)
    doc = config_io.read_yaml(path, 'sim parameter file')
    try:
        params = doc['defi_sim_node']['ros__parameters']
    except (KeyError, TypeError):
        raise ValueError(f'{path}: expected a "defi_sim_node: ros__parameters:" mapping') from None
    try:
        return config_io.check_fields(SimNodeConfig, params)
    except config_io.ConfigError as err:
        raise ValueError(f'{path}: defi_sim_node parameter {err}') from None


@dataclass
class EpisodeRecord:
    path: str
    task: str
    seed: int
    success: bool
    control_steps: int
    observations: int
    messages: dict
    wall_s: float        # reset to saved bag


def _spin_until(executor, predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f'timed out after {timeout_s:.0f} s waiting for {what}')
        executor.spin_once(timeout_sec=0.01)


def record(task: str, episodes: int, out_dir: str | Path, *, noise_std: float = 0.0, seed: int = 0,
           sim_parameters: dict | None = None, storage: str = 'mcap', extra_observations: int = 10,
           episode_timeout_s: float = 120.0, log=print) -> list[EpisodeRecord]:
    """Record `episodes` expert episodes of `task` through ROS 2; one bag per episode in out_dir."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.parameter import Parameter

    from defi_recorder.recorder import RecorderNode
    from defi_sim.expert_node import ExpertNode
    from defi_sim.sim_node import SimNode

    task = canonical_task_name(task)
    if episodes < 1:
        raise ValueError(f'--episodes must be >= 1, got {episodes}')
    if seed + episodes > EVAL_SEED_OFFSET:
        log(f'warning: seeds {seed}..{seed + episodes - 1} reach the evaluation range (>= {EVAL_SEED_OFFSET})')
    params = dict(sim_parameters or {})
    params.update(task=task, seed=seed, mode='lockstep')

    context = rclpy.Context()
    rclpy.init(context=context)
    nodes: list[Node] = []
    try:
        sim = SimNode(context=context,
                      parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
        nodes.append(sim)
        dt = sim.config.steps_per_observation * sim.sim.dt
        expert = ExpertNode(context=context, parameter_overrides=[
            Parameter('task', value=task), Parameter('noise_std', value=float(noise_std)),
            Parameter('noise_seed', value=int(seed)), Parameter('dt', value=float(dt))])
        nodes.append(expert)
        image_topics = [f'camera/{c.name}/image_raw' for c in sim.sim.cameras]
        topics = image_topics + ['joint_states', 'sim/ee_pose', 'sim/success', 'sim/task_state',
                                 'defi/action_command']
        recorder = RecorderNode(context=context, parameter_overrides=[
            Parameter('topics', Parameter.Type.STRING_ARRAY, topics),
            Parameter('out_dir', value=str(out_dir)), Parameter('storage', value=storage),
            Parameter('autostart', value=False), Parameter('stamp_source', value='header')])
        nodes.append(recorder)
        executor = SingleThreadedExecutor(context=context)
        for node in nodes:
            executor.add_node(node)

        # Every link must be matched before the first episode, or its first messages are lost.
        def connected():
            recorder.discover()
            pubs = [sim.image_pubs[c.name] for c in sim.sim.cameras] + [
                sim.joint_pub, sim.pose_pub, sim.success_pub]
            return (len(recorder.subscribed_topics) == len(topics)
                    and all(p.get_subscription_count() >= 1 for p in pubs)
                    and sim.state_pub.get_subscription_count() >= 2
                    and expert.command_pub.get_subscription_count() >= 2)
        _spin_until(executor, connected, 20.0, 'the sim, expert and recorder topics to connect')
        # Drop what the nodes exchanged while connecting.
        sim.paused = True
        settle = time.monotonic() + 0.2
        while time.monotonic() < settle:
            executor.spin_once(timeout_sec=0.01)
        # Another sim or expert on this ROS domain would mix its messages into the recording.
        for topic in topics:
            if sim.count_publishers(topic) > 1:
                raise RuntimeError(
                    f'another node publishes {topic} on ROS domain {context.get_domain_id()}; '
                    f'stop it or record on a free domain (ROS_DOMAIN_ID)')

        results = []
        for episode in range(episodes):
            episode_seed = seed + episode
            name = f'{task}_seed{episode_seed:05d}'
            episode_start = time.monotonic()
            recorder.start_episode(name, {'task': task, 'seed': episode_seed, 'noise_std': noise_std,
                                          'source': 'defi-sim record (metaworld scripted expert)'})
            received0 = dict(recorder.received)
            published0 = dict(sim.published_counts)
            sim.reset_episode(task, episode_seed)
            obs0 = sim.observations_published
            success_at = [None]

            def episode_done(success_at=success_at):
                if sim.sim.success and success_at[0] is None:
                    success_at[0] = sim.observations_published
                if success_at[0] is not None and sim.observations_published - success_at[0] >= extra_observations:
                    return True
                return sim.episode_over()
            _spin_until(executor, episode_done, episode_timeout_s, f'episode {name} to finish')
            sim.paused = True

            # Wait until the recorder holds everything published during the episode.
            def expected(published0=published0):
                counts = {t: n - published0.get(t, 0) for t, n in sim.published_counts.items()
                          if t in topics}
                # the expert answers every observation, the last one too
                counts['defi/action_command'] = counts['sim/task_state']
                return counts

            def all_received(received0=received0):
                got = {t: recorder.received.get(recorder._absolute(t), 0)
                       - received0.get(recorder._absolute(t), 0) for t in topics}
                return all(got[t] >= n for t, n in expected().items())
            _spin_until(executor, all_received, 10.0, f'the recorder to receive episode {name}')
            want = expected()
            extra = {t: n for t, n in recorder.writer.counts.items() if t.lstrip('/') in topics
                     and n != want.get(t.lstrip('/'), n)}
            if extra:
                raise RuntimeError(f'episode {name}: the bag holds more messages than this process '
                                   f'published ({extra}); another node publishes on these topics')
            recorder.writer.set_custom_data('success', str(bool(success_at[0] is not None)).lower())
            recorder.writer.set_custom_data('control_steps', str(sim.sim.steps))
            counts = dict(recorder.writer.counts)
            path = recorder.stop_episode()
            rec = EpisodeRecord(str(path), task, episode_seed, success_at[0] is not None, sim.sim.steps,
                                sim.observations_published - obs0 + 1, counts,
                                round(time.monotonic() - episode_start, 3))
            results.append(rec)
            log(f'{name}: success={rec.success} control_steps={rec.control_steps} '
                f'observations={rec.observations} -> {path}')
        return results
    finally:
        for node in nodes:
            node.destroy_node()
        rclpy.shutdown(context=context)


def _record_main(opts) -> int:
    params = load_sim_parameters(opts.config)
    if opts.overrides:          # sim node parameters as key=value words
        from defi_core import config_io
        from defi_sim.sim_node import SimNodeConfig
        config_io.apply_overrides(params, opts.overrides, SimNodeConfig)
        params = config_io.check_fields(SimNodeConfig, params)
    if opts.cameras:
        params['cameras'] = list(opts.cameras)
    if opts.image_size:
        params['image_width'] = params['image_height'] = int(opts.image_size)
    if opts.steps_per_observation:
        params['steps_per_observation'] = int(opts.steps_per_observation)
    if opts.max_steps:
        params['max_episode_steps'] = int(opts.max_steps)
    task = canonical_task_name(opts.task)
    out = Path(opts.out) / task if opts.out else Path('data') / 'sim' / task
    start = time.monotonic()
    results = record(task, opts.episodes, out, noise_std=opts.noise, seed=opts.seed,
                     sim_parameters=params, storage=opts.storage, extra_observations=opts.extra)
    wall = time.monotonic() - start
    successes = sum(r.success for r in results)
    print(f'{task}: {successes}/{len(results)} expert episodes succeeded, {wall:.1f} s, bags in {out}')
    print(json.dumps({'task': task, 'episodes': len(results), 'success_rate': successes / len(results),
                      'out': str(out), 'wall_s': round(wall, 2)}))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='defi-sim', description='Meta-World simulation tools.')
    sub = parser.add_subparsers(dest='command', required=True)
    rec = sub.add_parser('record', help='record scripted-expert episodes through ROS 2 to rosbag2')
    rec.add_argument('--task', required=True, help='Meta-World v3 task, e.g. drawer-open or drawer-open-v3')
    rec.add_argument('--episodes', type=int, default=10)
    rec.add_argument('--noise', type=float, default=0.0, help='std of Gaussian noise on dx, dy, dz')
    rec.add_argument('--seed', type=int, default=0, help='seed of the first episode (then +1 each)')
    rec.add_argument('--out', default=None, help='output root; bags go to <out>/<task>/ (default data/sim)')
    rec.add_argument('overrides', nargs='*', metavar='key=value',
                     help='defi_sim_node parameters over --config, e.g. mode=lockstep seed=3')
    rec.add_argument('--config', default=None, help=f'sim parameter YAML (default {DEFAULT_CONFIG})')
    rec.add_argument('--cameras', nargs='+', default=None, help='e.g. front=corner wrist=gripperPOV')
    rec.add_argument('--image-size', type=int, default=None)
    rec.add_argument('--steps-per-observation', type=int, default=None)
    rec.add_argument('--max-steps', type=int, default=None, help='control steps per episode at most')
    rec.add_argument('--extra', type=int, default=10, help='observations kept after success')
    rec.add_argument('--storage', choices=('mcap', 'sqlite3'), default='mcap')
    sub.add_parser('tasks', help='list the Meta-World v3 tasks and their instructions')
    from defi_sim.expert_data import add_dataset_parser, dataset_main
    add_dataset_parser(sub)
    opts = parser.parse_args(argv)
    if opts.command == 'tasks':
        from defi_sim.tasks import DEVELOPMENT_TASKS, INSTRUCTIONS
        for task, text in sorted(INSTRUCTIONS.items()):
            print(f'{"*" if task in DEVELOPMENT_TASKS else " "} {task:<30} {text}')
        print('* = development task')
        return 0
    def body():
        try:
            return dataset_main(opts) if opts.command == 'dataset' else _record_main(opts)
        except RuntimeError as err:
            raise ValueError(str(err)) from None
    # one line + exit 2 for bad input, file-system errors (an --out it cannot write) and a
    # failed recording; 130 on Ctrl-C
    from defi_core.cli import run_cli
    return run_cli(f'defi-sim {opts.command}', body, writing=getattr(opts, 'out', None))


if __name__ == '__main__':
    sys.exit(main())
