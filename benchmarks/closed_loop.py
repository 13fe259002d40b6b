"""Closed-loop control rate with async execution, and the peak memory of the bringup.

    python benchmarks/closed_loop.py [--quick] [--seconds S] [--task reach-v3] [--out FILE]

Two real processes on their own ROS_DOMAIN_ID, with the parameters `ros2 launch defi_bringup
sim.launch.py` gives them (defi_sim.stack: the installed sim.yaml and defi_sim.yaml, images and
cameras from the checkpoint) plus this benchmark's overrides:
  defi_sim_node  REAL-TIME mode (physics on a wall-clock timer, the robot keeps moving while the
                 next chunk is computed), the task, an endless episode;
  defi_bringup   the shipped checkpoint (models/defi_metaworld), passthrough executor on
                 defi/action_command at defi_sim.yaml's control_rate_hz.
This process (the "operator") sends one ExecuteInstruction goal, like evaluate_ros.py, and records
for N seconds what the executor actually sends to the robot:
  - command rate on defi/action_command (instantaneous rate = 1 / gap; overall commands/s) vs the
    configured control rate;
  - idle: gaps > 1.5 control periods, all-zero stop commands (with their reason from the executor's
    log), and idle_fraction = share of wall time with no fresh command (a command is fresh for 1.5
    control periods after it arrives, until a stop replaces it) - the "robot must not idle between
    chunks" check;
  - ActionChunk rate and latency (receive wall time - header stamp = camera stamp);
  - VmHWM / VmRSS of the bringup and sim processes (/proc/<pid>/status; both are started as
    `python -m ...`, so the Popen pid is the python process itself).
The goal's success topic is pointed at an unused topic so that a task success does not end the goal
(and stop the robot) in the middle of the measurement; the sim's episode length is unlimited for the
same reason.
"""
from __future__ import annotations

import argparse
import os
import random
import re
import sys
import tempfile
import threading
import time
from itertools import pairwise
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ['ROS_DOMAIN_ID'] = os.environ.get('DEFI_BENCH_DOMAIN', str(random.randint(101, 200)))
os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
os.environ.setdefault('MUJOCO_GL', 'egl')

from common import emit, median, percentile  # noqa: E402
from defi_sim.evaluate_ros import ChildProcess  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
COMMAND_TOPIC = 'defi/action_command'
CHUNK_TOPIC = 'defi/action_chunk'
UNUSED_SUCCESS_TOPIC = 'bench/closed_loop/never_success'
GAP_FACTOR = 1.5          # a gap longer than this many control periods counts as idle
STOP_LOG = re.compile(r'stop commanded: (\w+)')


def read_yaml(path: Path) -> dict:
    import yaml
    try:
        return yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SystemExit(f'closed_loop: cannot read {path}: {exc}') from None


def sim_stack(work: Path, args):
    """The shared "sim + bringup" parameters (defi_sim.stack) with this benchmark's overrides."""
    from defi_sim.stack import write_sim_stack
    sim = {'mode': 'realtime', 'task': args.task, 'seed': 1000,
           'max_episode_steps': 0}          # 0 = endless: the camera must not stop mid-measurement
    executor = {'output_mode': 'passthrough', 'command_topic': COMMAND_TOPIC, 'start_enabled': False}
    if args.control_rate_hz:
        executor['control_rate_hz'] = float(args.control_rate_hz)
    bringup = {
        '/**': {'torch_threads': int(args.torch_threads)},
        'chunk_executor': executor,
        'execute_instruction_server': {'success_topic': UNUSED_SUCCESS_TOPIC},
    }
    if args.control_rate_hz:
        bringup['forward_predictor'] = {'control_rate_hz': float(args.control_rate_hz)}
    return write_sim_stack(work, args.checkpoint, sim=sim, bringup=bringup)


class Child(ChildProcess):
    """A node process started as `python -m module` (its pid is the python process), logged to a file."""

    def __init__(self, name: str, module: str, params: list, log_path: Path, log_levels: list):
        self.module = module
        argv = [sys.executable, '-m', module, '--ros-args']
        for p in params:
            argv += ['--params-file', str(p)]
        for level in log_levels:
            argv += ['--log-level', level]
        super().__init__(name, argv, log_path, dict(os.environ, OMP_NUM_THREADS='1'))

    def memory_mb(self) -> dict:
        """VmHWM (peak resident set since start) and VmRSS of the python process, in MB."""
        status = Path(f'/proc/{self.popen.pid}/status')
        cmdline = Path(f'/proc/{self.popen.pid}/cmdline').read_bytes().decode(errors='replace')
        if self.module not in cmdline:
            raise RuntimeError(f'/proc/{self.popen.pid}/cmdline is {cmdline!r}, not {self.module}')
        out = {}
        for line in status.read_text().splitlines():
            key, _, value = line.partition(':')
            if key in ('VmHWM', 'VmRSS'):
                out[key] = int(value.split()[0]) / 1024.0     # kB -> MB
        return out


class Recorder:
    """The operator's rclpy node: the goal, and receive times of commands, chunks and observations."""

    def __init__(self, context, camera_topic: str):
        from rclpy.action import ActionClient
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from rosgraph_msgs.msg import Clock

        from defi_msgs.action import ExecuteInstruction
        from defi_msgs.msg import ActionChunk, PolicyStatus
        from defi_ros import qos

        self.node = Node('closed_loop_bench', context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.lock = threading.Lock()
        self.commands = []       # (monotonic s, is_stop)
        self.chunks = []         # (monotonic s, latency ms)
        self.observations = []   # monotonic s of each /clock (one per sim observation)
        self.status = {}         # node name -> last PolicyStatus
        self.camera_topic = camera_topic
        self.node.create_subscription(ActionChunk, COMMAND_TOPIC, self._on_command, qos.RELIABLE)
        self.node.create_subscription(ActionChunk, CHUNK_TOPIC, self._on_chunk, qos.RELIABLE)
        self.node.create_subscription(Clock, '/clock', self._on_clock,
                                      QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
        self.node.create_subscription(PolicyStatus, 'defi/status', self._on_status, qos.BEST_EFFORT)
        self.action_client = ActionClient(self.node, ExecuteInstruction, 'execute_instruction')
        self.goal_cls = ExecuteInstruction.Goal
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # noqa: BLE001 - the context shutting down ends the spin
            pass

    def _on_command(self, msg) -> None:
        t = time.monotonic()
        is_stop = not any(msg.data)     # passthrough stop = an all-zero action
        with self.lock:
            self.commands.append((t, is_stop))

    def _on_chunk(self, msg) -> None:
        t, wall = time.monotonic(), time.time_ns()
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with self.lock:
            self.chunks.append((t, (wall - stamp) * 1e-6))

    def _on_clock(self, msg) -> None:
        with self.lock:
            self.observations.append(time.monotonic())

    def _on_status(self, msg) -> None:
        with self.lock:
            self.status[msg.node_name] = msg

    def ready(self) -> bool:
        n = self.node
        return (self.action_client.server_is_ready()
                and n.count_subscribers(self.camera_topic) >= 1          # the forward predictor
                and n.count_publishers(COMMAND_TOPIC) >= 1
                and n.count_subscribers(COMMAND_TOPIC) >= 2)            # the sim and this recorder

    def destroy(self) -> None:
        self.action_client.destroy()
        self.executor.shutdown()
        self.node.destroy_node()


def wait_for(predicate, timeout_s: float, what: str, children) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        for child in children:
            child.check_alive()
        if time.monotonic() > deadline:
            tails = '\n'.join(f'--- {c.name} ({c.log_path}):\n{c.tail()}' for c in children)
            raise RuntimeError(f'timed out after {timeout_s:.0f} s waiting for {what}\n{tails}')
        time.sleep(0.05)


def idle_figures(commands, t0: float, t1: float, period: float) -> dict:
    """Rates, gaps and idle time of the commands received in [t0, t1] (monotonic seconds)."""
    inside = [(t, stop) for t, stop in commands if t0 <= t <= t1]
    moving = [t for t, stop in inside if not stop]
    window = t1 - t0
    gaps = [b - a for a, b in pairwise(moving)]
    rates = [1.0 / g for g in gaps if g > 0]
    long_gaps = [g for g in gaps if g > GAP_FACTOR * period]
    # fresh coverage: each moving command covers [t, t + 1.5 periods), cut short by the next event
    # (a stop ends it); measured from the last event before the window too
    events = [(t, stop) for t, stop in commands if t <= t1]
    covered = 0.0
    for (t, stop), nxt in zip(events, events[1:] + [(float('inf'), True)], strict=True):
        if stop:
            continue
        start, end = max(t, t0), min(t + GAP_FACTOR * period, nxt[0], t1)
        covered += max(0.0, end - start)
    return {
        'commands': len(moving),
        'command_rate_hz_overall': round(len(moving) / window, 3),
        'command_rate_hz_median': round(median(rates), 3),
        'command_rate_hz_p5': round(percentile(rates, 5), 3),
        'command_gap_ms_median': round(median(gaps) * 1e3, 2),
        'command_gap_ms_max': round(max(gaps) * 1e3, 2) if gaps else None,
        'gaps_over_1p5_periods': len(long_gaps),
        'gap_time_over_1p5_periods_s': round(sum(long_gaps), 3),
        'stop_commands': sum(1 for _, stop in inside if stop),
        'idle_fraction': round(max(0.0, 1.0 - covered / window), 4),
    }


def end_goal(recorder, handle, timeout_s: float = 5.0) -> dict:
    """Cancel the goal, wait for its result and for the executor's stop command on the topic."""
    t_cancel = time.monotonic()
    cancel = handle.cancel_goal_async()
    result = handle.get_result_async()
    deadline = t_cancel + timeout_s
    while not (cancel.done() and result.done()) and time.monotonic() < deadline:
        time.sleep(0.02)
    out = {'goal_end': (f'{result.result().result.message} (status {result.result().status})'
                        if result.done() else f'no result {timeout_s:.0f} s after the cancel request')}

    def stop_time():
        with recorder.lock:
            return next((t for t, stop in recorder.commands if stop and t >= t_cancel), None)
    while stop_time() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    t_stop = stop_time()
    out['stop_after_cancel_ms'] = round((t_stop - t_cancel) * 1e3, 1) if t_stop is not None else None
    return out


def run(args) -> dict:
    import rclpy

    from defi_sim.stack import DEFI_PARAMS, SIM_PARAMS, config_path
    from defi_sim.tasks import instruction_for

    ckpt_cfg = read_yaml(Path(args.checkpoint) / 'config.json').get('config', {})
    image_size = int(ckpt_cfg.get('image_size', 64))
    sim_cfg = read_yaml(config_path(SIM_PARAMS))['defi_sim_node']['ros__parameters']
    bringup_cfg = read_yaml(config_path(DEFI_PARAMS))
    camera = str(sim_cfg['cameras'][0]).split('=')[0]
    rate = float(args.control_rate_hz or bringup_cfg['chunk_executor']['ros__parameters']['control_rate_hz'])
    period = 1.0 / rate
    sim_obs_hz = 1.0 / (0.0125 * int(sim_cfg['steps_per_observation']))
    figures = {'task': args.task, 'checkpoint': os.path.relpath(Path(args.checkpoint).resolve(), ROOT),
               'seconds': args.seconds, 'control_rate_hz_configured': rate,
               'sim_mode': 'realtime', 'sim_observation_rate_hz_configured': sim_obs_hz,
               'image_size': image_size, 'bringup_torch_threads': int(args.torch_threads),
               'preview_rate_hz': bringup_cfg['forward_predictor']['ros__parameters'].get('preview_rate_hz'),
               'load_average_1min_at_start': round(os.getloadavg()[0], 2)}

    work = Path(tempfile.mkdtemp(prefix='defi_closed_loop_'))
    stack = sim_stack(work, args)
    children, recorder, context, handle = [], None, None, None
    peak_rss = {'defi_bringup': 0.0, 'defi_sim_node': 0.0}
    try:
        children.append(Child('defi_sim_node', 'defi_sim.sim_node', stack.sim_params,
                              work / 'sim_node.log', ['warn']))
        # the executor's stop reasons are logged at info; everything else stays at warn
        children.append(Child('defi_bringup', 'defi_policy.bringup',
                              stack.bringup_params, work / 'bringup.log',
                              ['warn', 'chunk_executor:=info']))
        sim, bringup = children
        context = rclpy.Context()
        rclpy.init(context=context)
        recorder = Recorder(context, f'camera/{camera}/image_raw')
        t_start = time.monotonic()
        wait_for(recorder.ready, args.startup_timeout, 'the sim node and defi_bringup (action server, '
                 'camera and command topics)', children)
        figures['startup_s'] = round(time.monotonic() - t_start, 2)

        goal = recorder.goal_cls(instruction=instruction_for(args.task),
                                 timeout=float(args.seconds + args.startup_timeout + 60))
        t_goal = time.monotonic()
        goal_future = recorder.action_client.send_goal_async(goal)
        wait_for(goal_future.done, 20.0, 'the goal to be accepted', children)
        handle = goal_future.result()
        if not handle.accepted:
            raise RuntimeError(f'execute_instruction rejected the goal; bringup log:\n{bringup.tail()}')

        def first_moving():
            with recorder.lock:
                return any(not stop for _, stop in recorder.commands)
        wait_for(first_moving, args.startup_timeout, f'the first command on {COMMAND_TOPIC}', children)
        with recorder.lock:
            t_first = next(t for t, stop in recorder.commands if not stop)
        figures['goal_to_first_command_s'] = round(t_first - t_goal, 2)
        time.sleep(args.settle)              # the first chunks after warm-up are not steady state
        t0 = time.monotonic()
        log_offset = bringup.log_path.stat().st_size
        while time.monotonic() - t0 < args.seconds:
            for child in children:
                child.check_alive()
                peak_rss[child.name] = max(peak_rss[child.name], child.memory_mb().get('VmRSS', 0.0))
            time.sleep(0.5)
        t1 = time.monotonic()
        mem = {c.name: c.memory_mb() for c in children}   # before any shutdown
        with recorder.lock:
            commands = list(recorder.commands)
            chunks = [(t, lat) for t, lat in recorder.chunks if t0 <= t <= t1]
            observations = [t for t in recorder.observations if t0 <= t <= t1]
            status = dict(recorder.status)
        stop_reasons = {}
        with open(bringup.log_path, 'rb') as f:
            f.seek(log_offset)
            for m in STOP_LOG.finditer(f.read().decode(errors='replace')):
                stop_reasons[m.group(1)] = stop_reasons.get(m.group(1), 0) + 1

        figures.update(idle_figures(commands, t0, t1, period))
        figures['stops_exhausted'] = stop_reasons.get('chunk_exhausted', 0)
        figures['stop_reasons'] = stop_reasons
        latencies = [lat for _, lat in chunks]
        figures['chunks'] = len(chunks)
        figures['chunk_rate_hz'] = round(len(chunks) / (t1 - t0), 3)
        figures['chunk_latency_ms_median'] = round(median(latencies), 1)
        figures['chunk_latency_ms_p95'] = round(percentile(latencies, 95), 1)
        figures['sim_observation_rate_hz'] = round(len(observations) / (t1 - t0), 2)
        ex = status.get('chunk_executor')
        if ex is not None:
            figures['executor_stale_steps_dropped'] = int(ex.stale_steps_dropped)
            figures['executor_stops_commanded'] = int(ex.stops_commanded)
        fp = status.get('forward_predictor')
        if fp is not None:
            figures['predictor_dropped_frames'] = int(fp.dropped_frames)
            figures['features_ms_last'] = round(float(fp.features_ms), 1)
        dec = status.get('action_decoder')
        if dec is not None:
            figures['decode_ms_last'] = round(float(dec.decode_ms), 1)
        figures['bringup_peak_rss_mb'] = round(mem['defi_bringup']['VmHWM'], 1)
        figures['bringup_rss_end_mb'] = round(mem['defi_bringup']['VmRSS'], 1)
        figures['bringup_rss_max_sampled_mb'] = round(peak_rss['defi_bringup'], 1)
        figures['sim_peak_rss_mb'] = round(mem['defi_sim_node']['VmHWM'], 1)
        figures['sim_rss_end_mb'] = round(mem['defi_sim_node']['VmRSS'], 1)
        figures['load_average_1min_at_end'] = round(os.getloadavg()[0], 2)
    finally:
        if handle is not None and handle.accepted and recorder is not None:
            # end the goal before any SIGINT: the executor must command its stop (the robot halts)
            try:
                figures.update(end_goal(recorder, handle))
            except Exception as exc:  # noqa: BLE001 - shutting down anyway
                figures['goal_end'] = f'cancel failed: {type(exc).__name__}: {exc}'
        if recorder is not None:
            recorder.destroy()
        for child in reversed(children):
            child.stop(args.kill_after)
        if context is not None:
            rclpy.try_shutdown(context=context)
    figures['killed_after_sigint'] = [c.name for c in children if c.killed]
    figures['logs'] = str(work)
    return figures


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--quick', action='store_true', help='30 s of closed loop instead of 120 s')
    ap.add_argument('--seconds', type=float, default=None)
    ap.add_argument('--task', default='reach-v3')
    ap.add_argument('--checkpoint', default=str(ROOT / 'models' / 'defi_metaworld'))
    ap.add_argument('--control-rate-hz', type=float, default=0.0,
                    help='executor and predictor rate; 0 = defi_sim.yaml (share/defi_sim/config)')
    ap.add_argument('--torch-threads', type=int, default=1)
    ap.add_argument('--settle', type=float, default=2.0, help='seconds after the first command before measuring')
    ap.add_argument('--startup-timeout', type=float, default=120.0)
    ap.add_argument('--kill-after', type=float, default=10.0,
                    help='seconds after SIGINT before a node process is killed')
    ap.add_argument('--out', default=None)
    args = ap.parse_args()
    args.seconds = args.seconds or (30.0 if args.quick else 120.0)
    if not (Path(args.checkpoint) / 'config.json').is_file():
        raise SystemExit(f'closed_loop: no checkpoint at {args.checkpoint} (config.json missing); '
                         'see models/README.md')
    f = run(args)
    rate = f['control_rate_hz_configured']
    print(f"\nDeFI closed loop, {f['task']}, sim real time, {f['seconds']:.0f} s "
          f"(load average {f['load_average_1min_at_start']} -> {f['load_average_1min_at_end']})")
    print(f"commands/s: {f['command_rate_hz_overall']:.2f} overall, median {f['command_rate_hz_median']:.2f}, "
          f"p5 {f['command_rate_hz_p5']:.2f} (configured {rate:.1f} Hz)")
    print(f"idle: fraction {f['idle_fraction']:.3f}, {f['gaps_over_1p5_periods']} gaps > {GAP_FACTOR} periods "
          f"(max {f['command_gap_ms_max']} ms), {f['stop_commands']} stop commands {f['stop_reasons']}")
    print(f"chunks: {f['chunk_rate_hz']:.2f}/s, latency median {f['chunk_latency_ms_median']:.1f} ms, "
          f"p95 {f['chunk_latency_ms_p95']:.1f} ms; sim observations {f['sim_observation_rate_hz']:.1f}/s "
          f"(configured {f['sim_observation_rate_hz_configured']:.0f})")
    print(f"memory: bringup peak {f['bringup_peak_rss_mb']:.0f} MB (end {f['bringup_rss_end_mb']:.0f} MB), "
          f"sim peak {f['sim_peak_rss_mb']:.0f} MB; killed after SIGINT: {f['killed_after_sigint'] or 'none'}")
    emit('closed_loop', f, args.out)


if __name__ == '__main__':
    main()
