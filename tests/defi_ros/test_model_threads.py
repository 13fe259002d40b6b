"""The nodes that run the model pick torch's thread count from the CPUs the process may use by
default (torch_threads: 0 = auto), and an explicit torch_threads wins."""
import numpy as np
import pytest
import torch


@pytest.fixture
def checkpoint(tmp_path):
    from defi_core.checkpoint import save_checkpoint
    from defi_core.config import preset
    from defi_core.policy import DefiPolicy
    cfg = preset('tiny', text_encoder='hash')
    a = cfg.action_dim
    stats = {'action': {'mean': np.zeros(a, np.float32), 'std': np.ones(a, np.float32),
                        'min': -np.ones(a, np.float32), 'max': np.ones(a, np.float32)}}
    return save_checkpoint(tmp_path / 'ckpt', DefiPolicy(cfg), cfg, stats)


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_default_is_auto_for_the_nodes_and_the_bringup():
    from defi_policy.bringup import BringupParams
    from defi_ros.model import ModelParams
    assert ModelParams().torch_threads == 0 and BringupParams().torch_threads == 0


def test_auto_follows_the_usable_cpus_and_an_explicit_count_wins(checkpoint, monkeypatch, restore_threads):
    import defi_core.threads as threads
    from defi_ros.model import load_checkpoint_policy
    monkeypatch.delenv('OMP_NUM_THREADS', raising=False)
    monkeypatch.setattr(threads, 'usable_cpus', lambda *a, **k: 3)     # e.g. taskset -c 0-2
    load_checkpoint_policy(str(checkpoint), 'cpu', 0)
    assert torch.get_num_threads() == 2                                 # one CPU left to the rest
    load_checkpoint_policy(str(checkpoint), 'cpu', 1)
    assert torch.get_num_threads() == 1
