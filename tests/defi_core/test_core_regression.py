"""Guards the model's numbers: a fixed-seed tiny policy must reproduce the stored outputs.

If a change to the model is intended, regenerate with `python tests/defi_core/regression_case.py`.
"""
import torch
from safetensors.torch import load_file

from regression_case import ARTIFACT, compute_outputs


def test_outputs_match_stored_artifact():
    expected = load_file(str(ARTIFACT))
    got = compute_outputs()
    assert set(got) == set(expected)
    for key, want in expected.items():
        have = got[key]
        assert have.shape == want.shape and have.dtype == want.dtype, key
        if want.dtype == torch.long:
            assert torch.equal(have, want), key
        else:
            assert torch.allclose(have, want, rtol=1e-4, atol=1e-5), (key, (have - want).abs().max())
    assert expected['codes'].min() >= 0 and torch.isfinite(expected['chunk']).all()
