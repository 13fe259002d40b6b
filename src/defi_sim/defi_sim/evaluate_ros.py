"""Closed-loop evaluation through ROS 2: the sim node (lockstep, sim time) and the DeFI bringup run
as real child processes; this process resets the sim through its `sim/reset` service, sends an
ExecuteInstruction goal per episode and reads success from `sim/success`. Latency is camera
message -> ActionChunk. The shared configuration, the in-process runner and the pictures live in
defi_sim.evaluate (see its docstring for how the two modes differ). The two processes get the
parameters of `ros2 launch defi_bringup sim.launch.py` (defi_sim.stack) plus this run's overrides.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

os.environ.setdefault('MUJOCO_GL', 'egl')

import numpy as np  # noqa: E402

from defi_core.image_codec import decode_image  # noqa: E402
from defi_sim.evaluate import (  # noqa: E402
    CONTROL_DT_S,
    EpisodePictures,
    EvalConfig,
    _observation,
    _predict_frames,
    checkpoint_chunk_dt,
    checkpoint_dir,
    load_eval_policy,
    picture_indices,
)
from defi_sim.stack import write_sim_stack  # noqa: E402
from defi_sim.tasks import instruction_for  # noqa: E402

if TYPE_CHECKING:
    from rclpy.action import ActionClient
    from rclpy.client import Client

__all__ = ['run_ros', 'BRINGUP_FAILED_MARK', 'ChildProcess']


def _write_stack(work: Path, checkpoint, config: EvalConfig, chunk_dt: float, threads: int):
    """The shared "sim + bringup" parameters (defi_sim.stack: the installed sim.yaml and
    defi_sim.yaml) with this run's overrides: lockstep on sim time, the episode's task and length,
    the observation rate for the predictor and the executor, the goal ends each episode."""
    rate = 1.0 / config.observation_period_s
    sim = {'mode': 'lockstep', 'task': config.tasks[0], 'seed': int(config.seed),
           'steps_per_observation': int(config.steps_per_observation),
           'max_episode_steps': int(config.max_steps), 'lockstep_timeout_s': 0.5}
    bringup = {
        # every DeFI node follows the sim's /clock, so stamps, ages and control timers agree
        '/**': {'use_sim_time': True, 'torch_threads': int(threads)},
        'forward_predictor': {'control_rate_hz': rate, 'preview_rate_hz': 0.0},
        'action_decoder': {'action_dt': float(chunk_dt)},
        'chunk_executor': {'control_rate_hz': rate, 'start_enabled': False},
        'execute_instruction_server': {'default_timeout_s': 3600.0},
    }
    return write_sim_stack(work, checkpoint, sim=sim, bringup=bringup, cameras=config.cameras)


def private_domain_id(current: str | None, rng=None) -> int:
    """A ROS domain for the evaluation's own graph, never the caller's: its bringup commands an
    arm, and a robot driver (or another test's nodes) on the caller's domain would hear it or
    answer its goals. 101-200 is outside the 0-100 that tests and most setups use."""
    import random
    rng = rng or random.Random()
    taken = int(current) if current and current.strip().isdigit() else None
    return rng.choice([d for d in range(101, 201) if d != taken])


BRINGUP_FAILED_MARK = 'not started:'   # defi_bringup logs this when a node's configure failed


class ChildProcess:
    """A child process (sim node or bringup) with its log file; stopped with SIGINT, then harder
    (`killed` tells whether SIGINT was not enough)."""

    def __init__(self, name: str, argv: list, log_path: Path, env: dict):
        import subprocess
        self.name, self.log_path = name, log_path
        self._log = open(log_path, 'wb')
        self.popen = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.killed = False

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise RuntimeError(f'{self.name} exited with code {self.popen.returncode}; last log lines '
                               f'({self.log_path}):\n{self.tail()}')

    def log_contains(self, text: str) -> bool:
        try:
            return text in self.log_path.read_text(errors='replace')
        except OSError:
            return False

    def tail(self, lines: int = 15) -> str:
        try:
            return '\n'.join(self.log_path.read_text(errors='replace').splitlines()[-lines:])
        except OSError:
            return ''

    def stop(self, timeout_s: float = 5.0) -> None:
        import signal
        import subprocess
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.killed = True
                self.popen.terminate()
                try:
                    self.popen.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    self.popen.kill()
                    self.popen.wait()
        self._log.close()


class _Orchestrator:
    """The evaluation's own rclpy node: resets the sim, sends goals, watches success and the clock."""

    def __init__(self, context, view: str, keep_frames: Callable[[], bool]):
        from action_msgs.msg import GoalStatus  # noqa: F401 - fail early if action msgs are missing
        from rcl_interfaces.srv import SetParameters
        from rclpy.action import ActionClient
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import Image
        from std_msgs.msg import Bool
        from std_srvs.srv import Trigger

        from defi_msgs.action import ExecuteInstruction
        from defi_msgs.msg import ActionChunk, PolicyStatus

        self.node = Node('defi_eval', context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.image_topic = f'camera/{view}/image_raw'
        self.clock_ns = -1
        self.success = False
        self.success_clock_ns = -1
        self.frames: list[tuple[int, np.ndarray]] = []  # (stamp_ns, uint8 [H, W, 3]) of the current episode
        self.image_wall: dict[int, float] = {}         # stamp_ns -> wall time the image arrived
        self.latencies_ms: list[float] = []
        self._keep_frames = keep_frames
        self.node.create_subscription(Clock, '/clock', self._on_clock, reliable)
        self.node.create_subscription(Bool, 'sim/success', self._on_success, reliable)
        self.node.create_subscription(Image, self.image_topic, self._on_image, reliable)
        self.node.create_subscription(ActionChunk, 'defi/action_chunk', self._on_chunk, reliable)
        self.node.create_subscription(PolicyStatus, 'defi/status', self._on_status,
                                      QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT))
        self.node_errors: dict[str, str] = {}  # node name -> last_error of a node in the ERROR state
        self.reset_client: Client[Any, Any] = self.node.create_client(Trigger, 'sim/reset')
        self.params_client: Client[Any, Any] = self.node.create_client(SetParameters,
                                                                        'defi_sim_node/set_parameters')
        self.action_client: ActionClient[Any, Any, Any] = ActionClient(self.node, ExecuteInstruction,
                                                                       'execute_instruction')
        self._goal_cls = ExecuteInstruction.Goal
        self._trigger = Trigger.Request
        self._set_params = SetParameters.Request

    # -- callbacks
    def _on_clock(self, msg) -> None:
        self.clock_ns = max(self.clock_ns, msg.clock.sec * 1_000_000_000 + msg.clock.nanosec)

    def _on_success(self, msg) -> None:
        if msg.data and not self.success and self.clock_ns > self.episode_start_ns:
            self.success = True
            self.success_clock_ns = self.clock_ns

    episode_start_ns = 1 << 62

    def _on_image(self, msg) -> None:
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        self.image_wall[stamp] = time.monotonic()
        if len(self.image_wall) > 500:
            for key in sorted(self.image_wall)[:250]:
                del self.image_wall[key]
        if self._keep_frames() and stamp >= self.episode_start_ns:
            self.frames.append((stamp, decode_image(msg.encoding, msg.height, msg.width, msg.step, msg.data)))

    def _on_status(self, msg) -> None:
        if msg.state == msg.STATE_ERROR:
            self.node_errors[msg.node_name] = msg.last_error

    def _on_chunk(self, msg) -> None:
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        sent = self.image_wall.get(stamp)
        if sent is not None and stamp >= self.episode_start_ns:
            self.latencies_ms.append((time.monotonic() - sent) * 1e3)

    # -- helpers
    def spin_until(self, predicate, timeout_s: float, what: str, procs=()) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if self.node_errors:
                raise RuntimeError(f'while waiting for {what}: DeFI node(s) in the ERROR state: '
                                   + '; '.join(f'{k}: {v}' for k, v in self.node_errors.items()))
            if time.monotonic() > deadline:
                raise RuntimeError(f'timed out after {timeout_s:.0f} s waiting for {what}')
            for proc in procs:
                proc.check_alive()
            self.executor.spin_once(timeout_sec=0.02)

    def call(self, client, request, timeout_s: float, what: str, procs=()):
        future = client.call_async(request)
        self.spin_until(future.done, timeout_s, what, procs)
        return future.result()

    def set_sim_params(self, procs, **values) -> None:
        from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
        req = self._set_params()
        for name, value in values.items():
            if isinstance(value, int):
                pv = ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=value)
            else:
                pv = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=str(value))
            req.parameters.append(Parameter(name=name, value=pv))
        res = self.call(self.params_client, req, 10.0, 'defi_sim_node/set_parameters', procs)
        bad = [r.reason for r in res.results if not r.successful]
        if bad:
            raise RuntimeError(f'defi_sim_node rejected parameters {values}: {bad}')

    def destroy(self) -> None:
        self.action_client.destroy()
        self.executor.shutdown()
        self.node.destroy_node()


def run_ros(checkpoint, config: EvalConfig, threads: int = 2, episode_timeout_s: float = 0.0,
            log: Callable[[str], None] = print, work_dir=None):
    """Run the episodes through ROS 2: the sim node (lockstep, sim time) and defi_bringup as child
    processes; -> (episodes, pictures per task, the checkpoint's DefiConfig)."""
    import sys
    import tempfile

    import rclpy

    from defi_core.checkpoint import load_config_from
    from defi_sim.evaluation import EpisodeResult

    checkpoint = checkpoint_dir(checkpoint)
    policy_cfg = load_config_from(checkpoint)
    if policy_cfg.action_dim != 4:
        raise ValueError(f'the checkpoint has action_dim={policy_cfg.action_dim}; Meta-World takes 4')
    chunk_dt = checkpoint_chunk_dt(checkpoint, config)
    if not config.action_dt_s:
        config = EvalConfig(**{**config.__dict__, 'action_dt_s': chunk_dt})
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix='defi_eval_ros_'))
    work.mkdir(parents=True, exist_ok=True)
    stack = _write_stack(work, checkpoint.resolve(), config, chunk_dt, threads)
    domain = private_domain_id(os.environ.get('ROS_DOMAIN_ID'))
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST')
    env.setdefault('MUJOCO_GL', 'egl')
    env['OMP_NUM_THREADS'] = str(max(1, threads))

    control_dt_ns = int(round(CONTROL_DT_S * 1e9))
    wall_budget = episode_timeout_s or max(30.0, config.max_steps * 0.2)

    procs = []
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    orch = None
    episodes, pictures = [], {}
    recording = {'on': False}
    try:
        procs.append(ChildProcess('defi_sim_node', stack.sim_argv(sys.executable, ['warn']),
                                  work / 'sim_node.log', env))
        procs.append(ChildProcess('defi_bringup', stack.bringup_argv(sys.executable, ['warn']),
                                  work / 'bringup.log', env))
        orch = _Orchestrator(context, policy_cfg.cameras[0], lambda: recording['on'])
        node = orch.node
        t0 = time.monotonic()

        def ready():
            if procs[1].log_contains(BRINGUP_FAILED_MARK):
                raise RuntimeError('defi_bringup could not start its nodes')
            return (orch.reset_client.service_is_ready() and orch.params_client.service_is_ready()
                    and orch.action_client.server_is_ready()
                    and node.count_subscribers(orch.image_topic) >= 2
                    and node.count_publishers('defi/action_command') >= 1
                    and node.count_subscribers('defi/action_command') >= 1)
        try:
            orch.spin_until(ready, 120.0, 'the sim node and defi_bringup to start (services, action '
                            'server, topics)', procs)
        except RuntimeError as err:
            tails = '\n'.join(f'--- {p.name} ({p.log_path}):\n{p.tail()}' for p in procs)
            raise RuntimeError(f'{err}\n{tails}') from None
        log(f'ROS 2 graph ready in {time.monotonic() - t0:.1f} s on its own ROS_DOMAIN_ID {domain} '
            f'(logs in {work})')
        for task in config.tasks:
            instruction = instruction_for(task)
            for e in range(config.episodes):
                seed = config.seed + e
                keep = config.pictures and e == 0
                orch.set_sim_params(procs, task=task, seed=seed)
                before = orch.clock_ns
                orch.success, orch.success_clock_ns = False, -1
                orch.frames, orch.latencies_ms = [], []
                orch.episode_start_ns = 1 << 62
                res = orch.call(orch.reset_client, orch._trigger(), 30.0, 'sim/reset', procs)
                if not res.success:
                    raise RuntimeError(f'sim/reset failed: {res.message}')
                orch.spin_until(lambda before=before: orch.clock_ns > before, 10.0,
                                'the first observation after reset', procs)
                orch.episode_start_ns = orch.clock_ns
                recording['on'] = keep
                goal = orch._goal_cls(instruction=instruction, timeout=float(wall_budget))
                goal_future = orch.action_client.send_goal_async(goal)
                end_ns = orch.episode_start_ns + config.max_steps * control_dt_ns
                start_wall = time.monotonic()
                orch.spin_until(lambda end_ns=end_ns, start_wall=start_wall: (
                                    orch.success or orch.clock_ns >= end_ns
                                    or time.monotonic() - start_wall > wall_budget),
                                wall_budget + 5.0, f'episode {task} seed {seed}', procs)
                recording['on'] = False
                # end the goal (if the server has not already): the executor then commands a stop
                orch.spin_until(goal_future.done, 10.0, 'the goal to be accepted', procs)
                handle = goal_future.result()
                if handle is not None and handle.accepted:
                    result_future = handle.get_result_async()
                    if not result_future.done():
                        handle.cancel_goal_async()
                    orch.spin_until(result_future.done, 10.0, 'the goal to end', procs)
                else:
                    raise RuntimeError(f'execute_instruction rejected the goal {instruction!r}; '
                                       f'bringup log {procs[1].log_path}:\n{procs[1].tail()}')
                last_ns = orch.success_clock_ns if orch.success else orch.clock_ns
                length = min(config.max_steps, max(0, (last_ns - orch.episode_start_ns) // control_dt_ns))
                if orch.success:
                    length = max(1, length)
                timed_out = not orch.success and orch.clock_ns < end_ns
                episodes.append(EpisodeResult(task, seed, orch.success, int(length),
                                              list(orch.latencies_ms), instruction))
                log(f'{task} seed {seed}: {"success" if orch.success else "failure"} after {length} steps'
                    f'{" (wall-clock budget exceeded)" if timed_out else ""}, {len(orch.latencies_ms)} chunks, '
                    f'median {np.median(orch.latencies_ms) if orch.latencies_ms else 0:.1f} ms '
                    f'(camera -> chunk), {time.monotonic() - start_wall:.1f} s')
                if keep:
                    pics = EpisodePictures(task)
                    pics.frames = [f for _, f in sorted(orch.frames, key=lambda sf: sf[0])]
                    pictures[task] = pics
    finally:
        if orch is not None:
            orch.destroy()
        for proc in reversed(procs):
            proc.stop()
        rclpy.try_shutdown(context=context)
    if config.pictures and pictures:
        _predict_for_pictures(checkpoint, pictures, config, threads)
    return episodes, pictures, policy_cfg


def _predict_for_pictures(checkpoint, pictures: dict, config: EvalConfig, threads: int) -> None:
    """Sample the GFDM on the recorded frames of the chosen observations (after the ROS run)."""
    import torch
    torch.set_num_threads(max(1, threads))
    policy = load_eval_policy(checkpoint)
    for task, pics in pictures.items():
        if not pics.frames:
            continue
        if len(policy.cfg.cameras) > 1:
            continue  # only the first view is recorded from ROS: the GFDM needs every view
        for k in picture_indices(config, len(pics.frames)):
            obs = _observation(policy, {policy.cfg.cameras[0]: pics.frames[k]}, instruction_for(task), None)
            pics.predictions[k] = _predict_frames(policy, obs, config.gfdm_sampling_steps)
