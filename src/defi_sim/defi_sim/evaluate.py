"""Closed-loop evaluation of a DeFI checkpoint on Meta-World tasks, in-process or through ROS 2.

Both modes run the same policy code (`DefiPolicy.predict_action_chunk`, which the ROS nodes run in
stages) and execute chunks with the same rule as the ROS chunk executor (defi_core.runtime's
ChunkSchedule: step i of a chunk is due at its observation stamp + i*dt, the latest due step is
commanded, a chunk from a newer observation replaces the running one), on the same simulator
timing as the sim node in lockstep mode (an observation every `steps_per_observation` control
steps, the command held in between):

- `run_inprocess(...)`: no ROS; the policy, the schedule and the MetaWorldSim in one loop. Fast and
  deterministic; inference latency is the time of predict_action_chunk.
- `defi_sim.evaluate_ros.run_ros(...)`: the sim node (lockstep, sim time) and the DeFI bringup as real processes; this
  process resets the sim through its `sim/reset` service and sends an ExecuteInstruction goal per
  episode, and reads success from `sim/success`. Latency is camera message -> ActionChunk.

Where the two differ: in-process, the chunk computed from observation k is executed from
observation k + chunk_delay (default 0, like the recorded expert, which answers every observation
at once). Through ROS the lockstep sim waits for a command stamped at or after its observation,
which only the chunk of that observation is, so the two loops step alike: with the shipped
checkpoint's deterministic sampler 79 of 80 episodes end the same way. ROS episode lengths read
one or two steps longer (success is seen at the next observation), the action noise (if any) is
seeded by the observation's stamp instead of the episode's seed, and a chunk later than
`lockstep_timeout_s` lets the sim step with the previous command. `chunk_delay` emulates a
robot's latency in-process.

Both return a list of defi_sim.evaluation.EpisodeResult and (optionally) pictures.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

os.environ.setdefault('MUJOCO_GL', 'egl')

import numpy as np  # noqa: E402

from defi_sim.tasks import EVAL_SEED_OFFSET, check_episode_config, instruction_for  # noqa: E402

__all__ = ['EvalConfig', 'EpisodePictures', 'run_inprocess', 'load_eval_policy',
           'sim_cameras_for', 'frame_offsets_steps', 'write_pictures', 'checkpoint_chunk_dt']

CONTROL_DT_S = 0.0125  # one Meta-World control step (frame_skip 5 x 2.5 ms)


@dataclass
class EvalConfig:
    tasks: tuple[str, ...] = ('reach-v3',)
    episodes: int = 5                  # per task
    seed: int = EVAL_SEED_OFFSET       # first seed; episode e of every task uses seed + e (unseen states)
    max_steps: int = 300               # control steps per episode (12.5 ms each)
    steps_per_observation: int = 2     # control steps between observations, as the sim node
    action_dt_s: float = 0.0           # chunk dt; 0 = one observation period
    replan_every: int = 1              # observations per new chunk (1: a chunk per observation)
    chunk_delay: int = 0               # in-process: observations before a chunk reaches the executor
    cameras: tuple[str, ...] = ()      # '<view>=<mujoco camera>'; () = every policy view on 'corner'
    pictures: bool = False             # prediction strips + an mp4 of the first episode
    picture_steps: tuple[int, ...] = ()  # observation indices for strips; () = first and middle
    gfdm_sampling_steps: int = 0       # 0 = the checkpoint's default
    video_scale: int = 2
    record_trajectory: bool = False    # keep hand position, gripper and command per observation

    def __post_init__(self):
        check_episode_config(self, ('episodes', 'max_steps', 'steps_per_observation', 'replan_every'))
        if self.chunk_delay < 0:
            raise ValueError(f'chunk_delay: must be >= 0, got {self.chunk_delay}')
        if self.action_dt_s < 0:
            raise ValueError(f'action_dt_s: must be >= 0, got {self.action_dt_s}')

    @property
    def observation_period_s(self) -> float:
        return self.steps_per_observation * CONTROL_DT_S

    @property
    def chunk_dt_s(self) -> float:
        return self.action_dt_s or self.observation_period_s


@dataclass
class EpisodePictures:
    """Frames kept for the pictures of one episode (first camera)."""
    task: str
    frames: list = field(default_factory=list)        # uint8 [H, W, 3] per observation
    predictions: dict = field(default_factory=dict)   # observation index -> list of T frames


def checkpoint_dir(checkpoint) -> Path:
    """The checkpoint directory as a Path; a clear error naming it when it holds no config.json."""
    path = Path(checkpoint)
    if not (path / 'config.json').is_file():
        raise FileNotFoundError(f'checkpoint {path}: no config.json there (expected a directory written by '
                                f'defi_core.checkpoint.save_checkpoint / defi-train)')
    return path


def load_eval_policy(checkpoint, device: str = 'cpu'):
    """Load a checkpoint directory for evaluation; a clear error naming the path when missing."""
    path = checkpoint_dir(checkpoint)
    from defi_core.checkpoint import load_policy
    policy = load_policy(str(path), device=device)
    policy.eval()
    return policy


def sim_cameras_for(policy_cameras: Sequence[str], specs: Sequence[str] = ()) -> list:
    """The sim camera specs ('<view>=<mujoco camera>') for the policy's views, in its order."""
    if not specs:
        return [f'{view}=corner' for view in policy_cameras]
    by_name = {str(s).partition('=')[0].strip(): str(s) for s in specs}
    missing = [v for v in policy_cameras if v not in by_name]
    if missing:
        raise ValueError(f'cameras: the policy needs views {list(policy_cameras)}, no spec for {missing} '
                         f'(given {list(specs)})')
    return [by_name[v] for v in policy_cameras]


def frame_offsets_steps(cfg, frame_dt_s: float, observation_period_s: float) -> list:
    """Offsets, in observations, of the GFDM's predicted frames (frame j is t + (j+1)*s data frames)."""
    per_frame = frame_dt_s / observation_period_s
    return [max(1, int(round((j + 1) * cfg.future_stride * per_frame))) for j in range(cfg.num_future_frames)]


def _policy_state(policy, sim) -> Optional[np.ndarray]:
    """observation.state for policies trained with proprioception, as the ROS action decoder reads
    it from joint_states: the joints the checkpoint names, else the first state_dim positions."""
    from defi_core.checkpoint import checkpoint_facts
    dim = policy.cfg.state_dim
    if dim <= 0:
        return None
    state = sim.joint_positions()
    names = checkpoint_facts(policy).state_names
    if names:
        missing = [n for n in names if n not in sim.joint_names]
        if missing:
            raise ValueError(f"the checkpoint's state joints {missing} are not joints of the sim "
                             f'({", ".join(sim.joint_names)})')
        return state[[list(sim.joint_names).index(n) for n in names]]
    if state.shape[0] < dim:
        raise ValueError(f'the checkpoint expects observation.state of {dim} values; the sim has only '
                         f'{state.shape[0]} joint positions ({", ".join(sim.joint_names)})')
    return state[:dim]


def _observation(policy, frames: dict, instruction: str, state):
    import torch
    obs: dict[str, Any] = {
        f'observation.images.{view}': torch.from_numpy(frames[view]).permute(2, 0, 1)[None].contiguous()
        for view in policy.cfg.cameras}
    obs['task'] = [instruction]
    if state is not None:
        obs['observation.state'] = torch.as_tensor(state, dtype=torch.float32)[None]
    return obs


def _predict_frames(policy, obs, steps: int) -> list:
    import torch

    from defi_sim.evaluation import predicted_frames_for_view
    if policy.gfdm is None:
        return []
    images = policy.images_from_obs(obs)
    with torch.no_grad():
        sample = policy.gfdm.sample(images, obs['task'], steps=steps or None,
                                    generator=torch.Generator().manual_seed(0))
    return predicted_frames_for_view(sample, view=0)


def picture_indices(config: EvalConfig, num_frames: int) -> list:
    """Observation indices of the prediction strips: the chosen ones, else the first and the middle
    of the episode as it ran (a short successful episode still gets its middle)."""
    chosen = config.picture_steps or (0, num_frames // 2)
    return sorted({k for k in chosen if 0 <= k < num_frames})


def run_inprocess(policy, config: EvalConfig, log: Callable[[str], None] = print):
    """Run config.episodes episodes per task in-process; -> (episodes, pictures per task)."""
    import torch

    from defi_core.runtime import Chunk, ChunkSchedule
    from defi_sim.evaluation import EpisodeResult
    from defi_sim.metaworld_env import MetaWorldSim

    cfg = policy.cfg
    if cfg.action_dim != 4:
        raise ValueError(f'the checkpoint has action_dim={cfg.action_dim}; Meta-World takes 4 '
                         '([dx, dy, dz, gripper])')
    cameras = sim_cameras_for(cfg.cameras, config.cameras)
    period_ns = int(round(config.observation_period_s * 1e9))
    chunk_dt = config.chunk_dt_s
    episodes, pictures = [], {}
    for task in config.tasks:
        sim = MetaWorldSim(task, seed=config.seed, cameras=cameras, image_size=cfg.image_size,
                           max_episode_steps=config.max_steps)
        instruction = instruction_for(task)
        try:
            for e in range(config.episodes):
                seed = config.seed + e
                sim.reset(seed)
                policy.reset()
                schedule = ChunkSchedule()
                pending = []                     # (observation index it arrives at, chunk)
                command = np.zeros(4)
                latencies = []
                # The action head's noise comes from a generator seeded by the episode's seed, so
                # the same checkpoint on the same seeds gives the same episodes (on one machine and
                # torch build: float reductions may differ across CPUs, and through ROS the timing
                # of chunks is not deterministic).
                generator = torch.Generator().manual_seed(seed)
                trajectory: Optional[dict[str, list]] = (
                    {'hand': [], 'gripper': [], 'command': []} if config.record_trajectory else None)
                keep = config.pictures and e == 0
                pics = EpisodePictures(task) if keep else None
                kept_views: list = []            # every view of every observation (pictures)
                success, k = False, 0
                while sim.steps < config.max_steps and not success:
                    now_ns = k * period_ns
                    replan = k % config.replan_every == 0
                    # rendering is most of a step's cost: only for a new chunk or the pictures
                    frames = sim.render() if replan or keep else None
                    if replan:
                        assert frames is not None           # rendered for a new chunk (above)
                        obs = _observation(policy, frames, instruction, _policy_state(policy, sim))
                        t0 = time.perf_counter()
                        actions = policy.predict_action_chunk(obs, generator=generator)
                        latencies.append((time.perf_counter() - t0) * 1e3)
                        pending.append((k + config.chunk_delay,
                                        Chunk(now_ns, chunk_dt, actions[0].detach().cpu().numpy())))
                    while pending and pending[0][0] <= k:   # chunks whose computation has finished
                        schedule.offer(pending.pop(0)[1])
                    if keep:
                        kept_views.append(frames)
                    # the chunk executor's tick: the latest step due by now + half a period;
                    # a used-up chunk or a non-finite action commands a stop (zero action)
                    step = schedule.step(now_ns, lead_ns=period_ns // 2)
                    if step is not None:
                        command = step.action if np.all(np.isfinite(step.action)) else np.zeros(4)
                    elif schedule.exhausted():
                        command = np.zeros(4)
                    if trajectory is not None:
                        trajectory['hand'].append(sim.observation[:3].tolist())
                        trajectory['gripper'].append(float(sim.observation[3]))
                        trajectory['command'].append(np.clip(command, -1.0, 1.0).tolist())
                    # zero-order hold for one observation period, as the sim node in lockstep
                    for _ in range(config.steps_per_observation):
                        result = sim.step(np.clip(command, -1.0, 1.0))
                        if result.success:
                            success = True
                            break
                        if result.truncated:
                            break
                    k += 1
                if pics is not None:                # keep: this episode's pictures
                    kept_views.append(sim.render())
                    pics.frames = [views[cfg.cameras[0]] for views in kept_views]
                    for k in picture_indices(config, len(kept_views)):
                        obs = _observation(policy, kept_views[k], instruction, None)
                        pics.predictions[k] = _predict_frames(policy, obs, config.gfdm_sampling_steps)
                    pictures[task] = pics
                result_ep = EpisodeResult(task, seed, success, sim.steps, latencies, instruction)
                if trajectory is not None:
                    trajectory['hand'].append(sim.observation[:3].tolist())
                    result_ep.trajectory = trajectory
                episodes.append(result_ep)
                log(f'{task} seed {seed}: {"success" if success else "failure"} after {sim.steps} steps, '
                    f'{len(latencies)} chunks, median {np.median(latencies) if latencies else 0:.1f} ms')
        finally:
            sim.close()
    return episodes, pictures


def write_pictures(pictures: dict, policy_cfg, config: EvalConfig, out_dir, log=print) -> list:
    """The prediction strip PNG (all tasks, chosen steps) and one mp4 per task; -> written paths."""
    from defi_sim.evaluation import PredictionRecord, save_prediction_strips, write_video
    out = Path(out_dir)
    written = []
    offsets = frame_offsets_steps(policy_cfg, config.chunk_dt_s, config.observation_period_s)
    records = []
    for task, pics in pictures.items():
        for k, predicted in sorted(pics.predictions.items()):
            if not predicted or k >= len(pics.frames):
                continue
            real = [pics.frames[k + o] for o in offsets if k + o < len(pics.frames)]
            records.append(PredictionRecord(step=k * config.steps_per_observation, current=pics.frames[k],
                                            predicted=predicted, real=real,
                                            offsets=[o * config.steps_per_observation for o in offsets],
                                            task=task))
        if pics.frames:
            path = write_video(out / f'episode_{task}.mp4', pics.frames,
                               fps=1.0 / config.observation_period_s, scale=config.video_scale)
            written.append(path)
            log(f'wrote {path}')
    if records:
        path = save_prediction_strips(out / 'prediction_strip.png', records, scale=2)
        written.insert(0, path)
        log(f'wrote {path}')
    return written


def checkpoint_chunk_dt(checkpoint, config: EvalConfig) -> float:
    """Seconds between chunk steps: action_dt_s, else 1/fps of the checkpoint's training data
    (its config's fps, when training recorded it), else one observation period (in the sim, unlike
    on a robot, the observation period is known)."""
    if config.action_dt_s:
        return config.action_dt_s
    from defi_core.checkpoint import CheckpointError, checkpoint_facts
    try:
        dt = checkpoint_facts(checkpoint).chunk_dt_s
    except CheckpointError:
        dt = None       # unreadable: loading the policy next reports why, as a clear error
    return dt or config.observation_period_s
