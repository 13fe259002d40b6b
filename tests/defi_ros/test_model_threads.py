"""The nodes that run the model pick torch's thread count from the CPUs the process may use by
default (torch_threads: 0 = auto), and an explicit torch_threads wins."""
import pytest
import torch


@pytest.fixture
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint


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
