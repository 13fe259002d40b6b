"""Simulation figures: Meta-World frames per second (physics + render) per camera size and count,
physics-only steps per second, and the scripted expert's success through the ROS 2 loop.

    python benchmarks/sim.py [--quick] [--out FILE]

The ROS loop is `defi-sim record`: sim node in lockstep + expert node + recorder in one process,
writing real bags (to a temporary folder), so its wall time is the recording throughput too.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault('MUJOCO_GL', 'egl')
os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')

from common import emit, median  # noqa: E402

CAMERA_SETS = {1: ['front=corner'], 2: ['front=corner', 'wrist=gripperPOV']}


def frames_per_second(size: int, cameras: list[str], frames: int) -> float:
    """Control steps per second where each step is physics + rendering every camera."""
    from defi_sim.metaworld_env import MetaWorldSim
    sim = MetaWorldSim('drawer-open-v3', seed=0, cameras=cameras, image_size=size)
    try:
        sim.render()  # the GL context and buffers are created on first use
        rates = []
        for _ in range(3):  # the median of three runs: the machine is shared
            start = time.perf_counter()
            for _ in range(frames // 3):
                sim.step(sim.expert_action())
                sim.render()
            rates.append((frames // 3) / (time.perf_counter() - start))
        return median(rates)
    finally:
        sim.close()


def physics_steps_per_second(steps: int) -> float:
    from defi_sim.metaworld_env import MetaWorldSim
    sim = MetaWorldSim('drawer-open-v3', seed=0, cameras=['front=corner'], image_size=64)
    try:
        start = time.perf_counter()
        for i in range(steps):
            sim.step([0.0, 0.0, 0.0, -1.0] if i % 2 else [0.0, 0.0, 0.0, 1.0])
        return steps / (time.perf_counter() - start)
    finally:
        sim.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--quick', action='store_true', help='fewer frames and episodes (a few minutes)')
    parser.add_argument('--out', default=None, help='JSON result file (default benchmarks/results/sim.json)')
    parser.add_argument('--episodes', type=int, default=None, help='expert episodes per task')
    parser.add_argument('--image-size', type=int, default=96, help='camera size for the ROS loop')
    opts = parser.parse_args()
    frames = 60 if opts.quick else 200
    episodes = opts.episodes or (2 if opts.quick else 10)

    load_at_start = [round(v, 2) for v in os.getloadavg()]
    import torch
    torch.set_num_threads(2)
    from defi_sim.record import record
    from defi_sim.tasks import DEVELOPMENT_TASKS

    print(f'{"size":>6} {"cameras":>8} {"steps/s (physics + render)":>28}')
    fps = {}
    for size in (64, 96, 128):
        for count, cameras in CAMERA_SETS.items():
            value = frames_per_second(size, cameras, frames)
            fps[f'{size}px_{count}cam'] = round(value, 1)
            print(f'{size:>6} {count:>8} {value:>28.1f}')
    physics = physics_steps_per_second(500 if opts.quick else 2000)
    print(f'physics only: {physics:.0f} steps/s')

    print(f'\nexpert through ROS 2 (lockstep sim node + expert node + recorder), {episodes} episodes '
          f'per task, {opts.image_size} px, 1 camera')
    print(f'{"task":<26} {"success":>8} {"obs/episode":>12} {"obs/s":>8}')
    expert = {}
    with tempfile.TemporaryDirectory() as tmp:
        for task in DEVELOPMENT_TASKS:
            results = record(task, episodes, Path(tmp) / task, seed=0,
                             sim_parameters={'image_width': opts.image_size,
                                             'image_height': opts.image_size,
                                             'cameras': CAMERA_SETS[1]},
                             log=lambda *_: None)
            wall = sum(r.wall_s for r in results)  # episodes only, not the node start-up
            observations = sum(r.observations for r in results)
            expert[task] = {'success': sum(r.success for r in results) / len(results),
                            'episodes': len(results),
                            'mean_observations': round(observations / len(results), 1),
                            'observations_per_s': round(observations / wall, 1)}
            e = expert[task]
            print(f'{task:<26} {e["success"]:>8.2f} {e["mean_observations"]:>12.1f} '
                  f'{e["observations_per_s"]:>8.1f}')
    mean_success = sum(e['success'] for e in expert.values()) / len(expert)
    print(f'{"mean":<26} {mean_success:>8.2f}')

    emit('sim', {
        'quick': opts.quick,
        'load_average_at_start': load_at_start,  # the machine is shared: figures scale with load
        'render_plus_physics_fps': fps,
        'physics_steps_per_s': round(physics, 1),
        'expert_ros_loop': {'tasks': expert, 'mean_success': mean_success,
                            'episodes_per_task': episodes, 'image_size': opts.image_size,
                            'steps_per_observation': 2},
        'mujoco_gl': os.environ.get('MUJOCO_GL'),
    }, opts.out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
