"""ROS 2 latency of the DeFI runtime: camera publish -> ActionChunk received.

    python benchmarks/ros_latency.py [--quick] [--preset base] [--out FILE]

Each way is fed one 64 px camera at 10 Hz by a probe in THIS process (the "robot"):
  model-only      predict_action_chunk on the same frames, no ROS (the floor);
  composed        defi_bringup: every node in one process, one model (the default way to run);
  composed_multi  the same with executor:=multi (every node on one MultiThreadedExecutor);
  separate        one process per node (forward predictor, latent encoder, decoder, executor).
Latency = receive time of the ActionChunk stamped with a frame's stamp - publish time of that
frame. Dropped = frames that never got a chunk (the predictor keeps only the newest frame when the
model is busy). Random weights, 4-D actions, preview sampling off (it would compete for the CPU),
PolicyStatus at the nodes' default 2 Hz, as shipped (5 Hz added ~0.5-2 ms: the status timers
compete with the model for the GIL).
"""
from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ['ROS_DOMAIN_ID'] = os.environ.get('DEFI_BENCH_DOMAIN', str(random.randint(101, 200)))
os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')

import numpy as np  # noqa: E402

from common import emit, median, percentile  # noqa: E402

RATE_HZ = 10.0
CAMERA_TOPIC = 'bench/camera/image_raw'
INSTRUCTION = 'open the drawer'


def make_checkpoint(preset_name: str, out_dir: Path, torch_threads: int):
    import torch

    from defi_core.checkpoint import save_checkpoint
    from defi_core.config import preset
    from defi_core.policy import DefiPolicy
    torch.set_num_threads(torch_threads)
    torch.manual_seed(0)
    cfg = preset(preset_name, action_dim=4, cameras=('front',), text_encoder='hash')
    policy = DefiPolicy(cfg).eval()
    block = {'mean': np.zeros(4, np.float32), 'std': np.ones(4, np.float32),
             'min': -np.ones(4, np.float32), 'max': np.ones(4, np.float32)}
    policy.set_normalization({'action': block})
    save_checkpoint(str(out_dir), policy, cfg, {'action': block})
    return policy, cfg


def model_only(policy, cfg, seconds: float):
    """predict_action_chunk at 10 Hz (or as fast as it goes when slower)."""
    import torch
    rng = np.random.default_rng(0)
    lat, dropped, sent = [], 0, 0
    start = time.monotonic()
    next_t = start
    while time.monotonic() - start < seconds:
        now = time.monotonic()
        if now < next_t:
            time.sleep(next_t - now)
        frame = torch.from_numpy(rng.integers(0, 255, (1, 3, cfg.image_size, cfg.image_size),
                                              dtype=np.uint8))
        t0 = time.perf_counter()
        with torch.inference_mode():      # as the nodes run it
            policy.predict_action_chunk({'observation.images.front': frame, 'task': [INSTRUCTION]})
        lat.append((time.perf_counter() - t0) * 1e3)
        sent += 1
        next_t += 1.0 / RATE_HZ
        late = int((time.monotonic() - next_t) * RATE_HZ)
        if late > 0:                      # frames that arrived while the model was busy
            dropped += late
            next_t += late / RATE_HZ
    return lat, dropped, sent + dropped


def params_file(path: Path, ckpt: Path, threads: int) -> Path:
    text = f"""
/**:
  ros__parameters:
    checkpoint: "{ckpt}"
    torch_threads: {threads}
    status_marker_frame: ""
forward_predictor:
  ros__parameters:
    camera_topics: ["{CAMERA_TOPIC}"]
    preview_rate_hz: 0.0
    control_rate_hz: {RATE_HZ}
    max_age_s: 5.0
action_decoder:
  ros__parameters:
    max_age_s: 5.0
chunk_executor:
  ros__parameters:
    dry_run: true
    max_age_s: 5.0
defi_bringup:
  ros__parameters:
    with_action_server: false
"""
    path.write_text(text)
    return path


def start_processes(mode: str, params: Path):
    args = ['--ros-args', '--params-file', str(params), '--log-level', 'warn']
    if mode == 'composed_multi':
        args += ['-p', 'executor:=multi']
    mods = (['defi_policy.bringup'] if mode.startswith('composed') else
            ['defi_perception.forward_predictor_node', 'defi_policy.latent_action_encoder_node',
             'defi_policy.action_decoder_node', 'defi_policy.chunk_executor_node'])
    return [subprocess.Popen([sys.executable, '-m', m] + args) for m in mods]


def stop_processes(procs):
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


def through_ros(mode: str, params: Path, cfg, seconds: float, startup_timeout: float = 180.0):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    from defi_msgs.msg import ActionChunk, PolicyStatus
    from defi_ros import qos
    from defi_ros.conversions import rgb_to_image_msg, stamp_to_ns

    procs = start_processes(mode, params)
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = Node('latency_probe', context=ctx)
    sent, received = {}, {}
    lock = threading.Lock()

    def on_chunk(msg):
        t = time.monotonic()
        with lock:
            received.setdefault(stamp_to_ns(msg.header.stamp), t)
    node.create_subscription(ActionChunk, 'defi/action_chunk', on_chunk, qos.RELIABLE)
    stage_ms = {'features_ms': [], 'latent_ms': [], 'decode_ms': []}
    last_status = {}
    measuring = threading.Event()

    def on_status(msg):
        # per-stage model time measured inside the nodes over the same period: the ROS share of
        # the latency is the rest (robust to the machine's load changing between modes)
        if not measuring.is_set():
            return
        last_status[msg.node_name] = msg
        for key, values in stage_ms.items():
            v = getattr(msg, key)
            if v > 0 and msg.node_name in ('forward_predictor', 'latent_action_encoder', 'action_decoder'):
                values.append(v)
    node.create_subscription(PolicyStatus, 'defi/status', on_status, qos.BEST_EFFORT)
    cam = node.create_publisher(Image, CAMERA_TOPIC, qos.SENSOR)
    instr = node.create_publisher(String, 'instruction', qos.INSTRUCTION)
    instr.publish(String(data=INSTRUCTION))
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    spinner = threading.Thread(target=ex.spin, daemon=True)
    spinner.start()
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (cfg.image_size, cfg.image_size, 3), dtype=np.uint8) for _ in range(8)]

    def publish(k):
        stamp = node.get_clock().now().nanoseconds
        cam.publish(rgb_to_image_msg(frames[k % len(frames)], stamp, 'camera'))
        return stamp
    try:
        # start-up: wait for the first chunk (model loading + warm-up happen in the nodes)
        deadline = time.monotonic() + startup_timeout
        k = 0
        while not received and time.monotonic() < deadline:
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f'{mode}: a node process exited during start-up')
            publish(k)
            k += 1
            time.sleep(1.0 / RATE_HZ)
        if not received:
            raise RuntimeError(f'{mode}: no ActionChunk within {startup_timeout} s')
        time.sleep(1.0)
        with lock:
            received.clear()
        measuring.set()
        start = time.monotonic()
        next_t = start
        while time.monotonic() - start < seconds:
            now = time.monotonic()
            if now < next_t:
                time.sleep(next_t - now)
            stamp = publish(k)
            sent[stamp] = time.monotonic()
            k += 1
            next_t += 1.0 / RATE_HZ
        time.sleep(2.0)
        with lock:
            got = dict(received)
    finally:
        ex.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)
        stop_processes(procs)
    lat = [(got[s] - t) * 1e3 for s, t in sent.items() if s in got]
    compute = sum(median(v) for v in stage_ms.values() if v)
    # where frames were lost: each node's own counters (worker replaced a pending item, errors)
    where = {name: {'dropped_frames': st.dropped_frames, 'errors_total': st.errors_total,
                    'last_error': st.last_error[:120]} for name, st in sorted(last_status.items())}
    print(f'{mode}: node counters {where}', file=sys.stderr)
    return lat, len(sent) - len(lat), len(sent), compute


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--quick', action='store_true', help='15 s per mode instead of 60 s')
    ap.add_argument('--preset', default='base')
    ap.add_argument('--seconds', type=float, default=None)
    ap.add_argument('--torch-threads', type=int, default=1)
    ap.add_argument('--modes', default='model,composed,composed_multi,separate')
    ap.add_argument('--out', default=None)
    args = ap.parse_args()
    seconds = args.seconds or (15.0 if args.quick else 60.0)
    modes = args.modes.split(',')
    rows, figures = [], {'preset': args.preset, 'rate_hz': RATE_HZ, 'seconds_per_mode': seconds}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / 'ckpt'
        policy, cfg = make_checkpoint(args.preset, ckpt, args.torch_threads)
        figures['image_size'] = cfg.image_size
        params = params_file(Path(tmp) / 'params.yaml', ckpt, args.torch_threads)
        ros_modes = [m for m in modes if m != 'model']
        model_lat, model_dropped, model_total = [], 0, 0

        def run_model(secs):
            nonlocal model_dropped, model_total
            lat, dropped, total = model_only(policy, cfg, secs)
            model_lat.extend(lat)
            model_dropped += dropped
            model_total += total
        if 'model' in modes:
            model_only(policy, cfg, 1.0)              # warm-up
            # half before and half after the ROS runs: the shared machine's load drifts
            run_model(seconds / 2 if ros_modes else seconds)
        for mode in ros_modes:
            lat, dropped, total, compute = through_ros(mode, params, cfg, seconds)
            figures[f'{mode}_stage_compute_ms_median'] = round(compute, 2)
            figures[f'{mode}_ros_share_ms_median'] = round(median(lat) - compute, 2)
            figures[f'{mode}_ms_median'] = round(median(lat), 2)
            figures[f'{mode}_ms_p95'] = round(percentile(lat, 95), 2)
            figures[f'{mode}_dropped'] = dropped
            figures[f'{mode}_frames'] = total
            rows.append((mode, median(lat), percentile(lat, 95), dropped, total))
        if 'model' in modes:
            if ros_modes:
                run_model(seconds / 2)
            figures['model_ms_median'] = round(median(model_lat), 2)
            figures['model_ms_p95'] = round(percentile(model_lat, 95), 2)
            figures['model_dropped'] = model_dropped
            figures['model_frames'] = model_total
            rows.insert(0, ('model', median(model_lat), percentile(model_lat, 95), model_dropped, model_total))
    if 'model_ms_median' in figures and 'composed_ms_median' in figures:
        figures['overhead_ms_median'] = round(figures['composed_ms_median'] - figures['model_ms_median'], 2)
    for mode in ('composed_multi', 'separate'):
        if f'{mode}_ms_median' in figures and 'model_ms_median' in figures:
            figures[f'{mode}_overhead_ms_median'] = round(
                figures[f'{mode}_ms_median'] - figures['model_ms_median'], 2)
    figures['dropped'] = figures.get('composed_dropped', 0)
    print(f'\nDeFI ROS latency, preset {args.preset}, {cfg.image_size} px, {RATE_HZ:.0f} Hz, {seconds:.0f} s per mode')
    print(f"{'mode':<15} {'median ms':>10} {'p95 ms':>10} {'dropped':>8} {'frames':>7}")
    for mode, med, p95, dropped, total in rows:
        print(f'{mode:<15} {med:>10.1f} {p95:>10.1f} {dropped:>8d} {total:>7d}')
    if 'overhead_ms_median' in figures:
        print(f"composed overhead over model-only: {figures['overhead_ms_median']:+.1f} ms (median)")
    for mode in ros_modes:
        if f'{mode}_ros_share_ms_median' in figures:
            print(f"{mode}: model stages {figures[f'{mode}_stage_compute_ms_median']:.1f} ms "
                  f"(medians measured in the nodes), the rest {figures[f'{mode}_ros_share_ms_median']:+.1f} ms")
    emit('ros_latency', figures, args.out)


if __name__ == '__main__':
    main()
