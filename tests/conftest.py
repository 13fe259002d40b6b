"""Shared test setup: an isolated DDS domain per test session, and rclpy helpers."""
import os
import random
import time

import pytest

# Each pytest session talks on its own DDS domain, on localhost only, so parallel runs on one
# machine never see each other's topics.
os.environ.setdefault('ROS_DOMAIN_ID', str(random.Random(os.getpid()).randint(1, 100)))
os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
os.environ.setdefault('MUJOCO_GL', 'egl')


@pytest.fixture
def ros_context():
    """A fresh rclpy context per test, shut down afterwards."""
    import rclpy
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    yield ctx
    try:
        rclpy.shutdown(context=ctx)
    except Exception:
        pass


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """A freshly initialised tiny DeFI policy saved as a checkpoint (hash text encoder, unit stats)."""
    import numpy as np

    from defi_core.checkpoint import save_checkpoint
    from defi_core.config import preset
    from defi_core.policy import DefiPolicy
    cfg = preset('tiny', text_encoder='hash')
    a = cfg.action_dim
    stats = {'action': {'mean': np.zeros(a, np.float32), 'std': np.ones(a, np.float32),
                        'min': -np.ones(a, np.float32), 'max': np.ones(a, np.float32)}}
    return save_checkpoint(tmp_path / 'ckpt', DefiPolicy(cfg), cfg, stats)


def spin_until(executor, predicate, timeout_s=10.0, step_s=0.02):
    """Spin `executor` until predicate() is true; return whether it became true in time."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        executor.spin_once(timeout_sec=step_s)
    return predicate()


@pytest.fixture
def spin():
    return spin_until
