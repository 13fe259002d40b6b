import numpy as np
import pytest
import torch

from core_helpers import make_policy, tiny_cfg
from defi_core.checkpoint import load_policy, save_checkpoint
from defi_core.models.gfdm import GFDM
from defi_core.models.gidm import GIDM
from defi_core.normalization import Normalizer


def _stats():
    return {'action': {'mean': np.array([1.0, 2.0]), 'std': np.array([2.0, 0.5]),
                       'min': np.array([-1.0, 0.0]), 'max': np.array([3.0, 0.0])},      # 2nd dim constant
            'observation.state': {'mean': np.array([1.0]), 'std': np.array([0.0]),
                                  'min': np.array([0.0]), 'max': np.array([1.0])}}


def test_modes_roundtrip_and_constant_dims():
    norm = Normalizer(_stats())
    a = torch.tensor([[-1.0, 0.0], [3.0, 0.0], [1.0, 0.0]])
    n = norm.normalize('action', a)
    assert torch.allclose(n[:, 0], torch.tensor([-1.0, 1.0, 0.0]))          # min/max -> [-1, 1]
    assert torch.isfinite(n).all()                                            # constant dim: no inf
    assert torch.allclose(norm.unnormalize('action', n), a, atol=1e-5)
    s = torch.tensor([[3.0]])
    assert torch.isfinite(norm.normalize('observation.state', s)).all()       # std 0: clamped
    back = Normalizer.from_tensors(norm.to_tensors(), norm.modes)
    assert back.to_json() == norm.to_json()


def test_bad_stats_are_named():
    with pytest.raises(ValueError, match=r"'action'.*\['max'\]"):
        Normalizer({'action': {'mean': [0], 'std': [1], 'min': [0]}})
    with pytest.raises(ValueError, match='inconsistent'):
        Normalizer({'action': {'mean': [0, 1], 'std': [1], 'min': [0], 'max': [1]}})
    with pytest.raises(KeyError, match='observation.state'):
        Normalizer({'action': {'mean': [0], 'std': [1], 'min': [0], 'max': [1]}}).normalize(
            'observation.state', torch.zeros(1, 1))
    with pytest.raises(ValueError, match='last dim 3'):
        Normalizer(_stats()).normalize('action', torch.zeros(1, 3))


def test_load_policy_overrides_non_weight_fields(tmp_path):
    cfg = tiny_cfg()
    save_checkpoint(tmp_path / 'c', make_policy(cfg))
    p = load_policy(tmp_path / 'c', sampling_steps=3)
    assert p.cfg.sampling_steps == 3
    with pytest.raises(Exception, match='gfdm'):       # a size change cannot load the weights
        load_policy(tmp_path / 'c', gfdm_dim=32)


def test_standalone_stage_modules_train_every_parameter():
    from core_helpers import make_batch
    cfg = tiny_cfg()
    batch = make_batch(cfg, 2)
    for module in (GFDM(cfg), GIDM(cfg)):
        loss, _ = module.loss(batch)
        loss.backward()
        missing = [n for n, p in module.named_parameters() if p.grad is None]
        # GFDM's adaLN-zero gates start at 0 but still receive gradients
        assert not missing, missing
