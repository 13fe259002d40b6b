"""Shared helpers of the DeFI ROS node tests: a tiny random-weight policy, a probe node, images."""
from __future__ import annotations

import threading
import time

import numpy as np

ACTION_DIM = 4


def tiny_stats(action_dim=ACTION_DIM, state_dim=0):
    def block(d):
        return {'mean': np.zeros(d, np.float32), 'std': np.ones(d, np.float32),
                'min': -np.ones(d, np.float32), 'max': np.ones(d, np.float32)}
    stats = {'action': block(action_dim)}
    if state_dim:
        stats['observation.state'] = block(state_dim)
    return stats


def make_tiny_policy(cameras=('front',), state_dim=0):
    import torch

    from defi_core.config import preset
    from defi_core.policy import DefiPolicy
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = preset('tiny', action_dim=ACTION_DIM, cameras=tuple(cameras), state_dim=state_dim,
                 text_encoder='hash')
    policy = DefiPolicy(cfg).eval()
    policy.set_normalization(tiny_stats(ACTION_DIM, state_dim))
    return policy


def save_tiny_checkpoint(path, policy):
    from defi_core.checkpoint import save_checkpoint
    save_checkpoint(str(path), policy, policy.cfg, tiny_stats(policy.cfg.action_dim, policy.cfg.state_dim))
    return str(path)


def image_msg(stamp, size=64, encoding='rgb8', seed=0, frame_id='camera'):
    from sensor_msgs.msg import Image

    from defi_core.image_codec import encode_image
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    enc, h, w, step, data = encode_image(rgb, encoding)
    msg = Image(encoding=enc, height=h, width=w, step=step)
    msg.data = data
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    return msg


def params(**values):
    from rclpy.parameter import Parameter
    return [Parameter(k, value=v) for k, v in values.items()]


class Probe:
    """A plain node that publishes inputs and records what comes out (thread-safe lists)."""

    def __init__(self, context, name='probe'):
        from rclpy.node import Node
        self.node = Node(name, context=context)
        self.lock = threading.Lock()
        self.got: dict = {}
        self.times: dict = {}
        self.pubs: dict = {}

    def listen(self, msg_type, topic, qos):
        self.got[topic] = []
        self.times[topic] = []

        def cb(msg, topic=topic):
            with self.lock:
                self.got[topic].append(msg)
                self.times[topic].append(time.monotonic())
        self.node.create_subscription(msg_type, topic, cb, qos)

    def publisher(self, msg_type, topic, qos):
        self.pubs[topic] = self.node.create_publisher(msg_type, topic, qos)
        return self.pubs[topic]

    def msgs(self, topic):
        with self.lock:
            return list(self.got[topic])

    def status_of(self, node_name):
        msgs = [m for m in self.msgs('defi/status') if m.node_name == node_name]
        return msgs[-1] if msgs else None

    def now(self):
        return self.node.get_clock().now().to_msg()


def make_executor(context, nodes, threads=6):
    """threads=1: a SingleThreadedExecutor, as defi_bringup runs its pipeline nodes."""
    from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
    ex = (SingleThreadedExecutor(context=context) if threads == 1
          else MultiThreadedExecutor(num_threads=threads, context=context))
    for n in nodes:
        ex.add_node(n)
    return ex


def shutdown(executor, nodes):
    executor.shutdown(timeout_sec=2.0)
    for n in nodes:
        try:
            n.destroy_node()
        except Exception:
            pass
