import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from core_helpers import make_batch, make_policy, make_stats, obs_from_batch, tiny_cfg
from defi_core.checkpoint import (
    CheckpointError,
    load_component,
    load_policy,
    load_state_into,
    read_meta,
    save_checkpoint,
)
from defi_core.config import SCHEMA_VERSION
from defi_core.models.gfdm import GFDM
from defi_core.models.gidm import GIDM


def _chunk(policy, cfg, batch):
    return policy.predict_action_chunk(obs_from_batch(cfg, batch), generator=torch.Generator().manual_seed(3))


def test_save_load_bit_identical(tmp_path):
    cfg = tiny_cfg(state_dim=2, cameras=('front', 'wrist'))
    policy = make_policy(cfg).eval()
    batch = make_batch(cfg, 2)
    # train a step so the VQ usage buffer and weights differ from a fresh init
    policy.train()
    loss, _ = policy.compute_loss(batch)
    loss.backward()
    with torch.no_grad():
        for p in policy.trainable_parameters():
            p -= 0.01 * p.grad
    policy.eval()
    path = save_checkpoint(tmp_path / 'ckpt', policy, cfg, make_stats(cfg), extra={'step': 1})
    assert sorted(p.name for p in path.iterdir()) == ['config.json', 'model.safetensors', 'stats.json',
                                                      'stats.safetensors']
    meta = json.loads((path / 'config.json').read_text())
    assert meta['schema_version'] == SCHEMA_VERSION and meta['kind'] == 'policy' and meta['extra'] == {'step': 1}
    loaded = load_policy(path)
    assert not loaded.training
    for (n, a), (m, b) in zip(policy.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert n == m and torch.equal(a, b), n
    assert torch.equal(_chunk(policy, cfg, batch), _chunk(loaded, cfg, batch))
    assert loaded.normalizer.to_json() == policy.normalizer.to_json()
    # overwrite in place (atomic replace) works and leaves no temp dirs behind
    save_checkpoint(tmp_path / 'ckpt', loaded)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['ckpt']


def test_stage_checkpoints_load_into_the_policy_by_name(tmp_path):
    cfg = tiny_cfg()
    torch.manual_seed(11)
    gfdm, gidm = GFDM(cfg), GIDM(cfg)
    save_checkpoint(tmp_path / 'gfdm', gfdm)
    save_checkpoint(tmp_path / 'gidm', gidm)
    assert read_meta(tmp_path / 'gfdm')['kind'] == 'gfdm'
    assert not (tmp_path / 'gfdm' / 'stats.safetensors').exists()
    policy = make_policy(cfg)
    load_state_into(policy, tmp_path / 'gfdm', component='gfdm')
    load_state_into(policy, tmp_path / 'gidm', component='gidm')
    for k, v in gfdm.state_dict().items():
        assert torch.equal(policy.gfdm.state_dict()[k], v)
    for k, v in gidm.state_dict().items():
        assert torch.equal(policy.gidm.state_dict()[k], v)
    assert not any(p.requires_grad for p in policy.gfdm.parameters())    # still frozen
    # a policy's components saved with component= round-trip as standalone modules
    save_checkpoint(tmp_path / 'from_policy', policy, component='gidm')
    standalone = load_component(tmp_path / 'from_policy')
    assert isinstance(standalone, GIDM) and all(p.requires_grad for p in standalone.parameters())
    with pytest.raises(CheckpointError, match="kind is 'gidm', expected 'gfdm'"):
        load_state_into(policy, tmp_path / 'gidm', component='gfdm')
    with pytest.raises(CheckpointError, match='load_policy needs a policy'):
        load_policy(tmp_path / 'gfdm')
    with pytest.raises(CheckpointError, match='has no gidm'):
        load_state_into(make_policy(tiny_cfg(idm_type='none')), tmp_path / 'gidm', component='gidm')


def test_errors_name_the_bad_key_shape_schema(tmp_path):
    cfg = tiny_cfg()
    policy = make_policy(cfg)
    good = save_checkpoint(tmp_path / 'good', policy)

    def variant(name):
        import shutil
        d = tmp_path / name
        shutil.copytree(good, d)
        return d
    # unknown schema
    d = variant('schema')
    meta = json.loads((d / 'config.json').read_text())
    meta['schema_version'] = 99
    (d / 'config.json').write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match='schema_version 99'):
        load_policy(d)
    # missing key
    d = variant('missing')
    t = load_file(str(d / 'model.safetensors'))
    del t['action_head.action_out.weight']
    save_file(t, str(d / 'model.safetensors'))
    with pytest.raises(CheckpointError, match='action_head.action_out.weight'):
        load_policy(d)
    # wrong shape
    d = variant('shape')
    t = load_file(str(d / 'model.safetensors'))
    t['video_former.queries'] = torch.zeros(1, 2, 3)
    save_file(t, str(d / 'model.safetensors'))
    with pytest.raises(CheckpointError, match=r"video_former.queries.*\(1, 2, 3\)"):
        load_policy(d)
    # unexpected key
    d = variant('extra')
    t = load_file(str(d / 'model.safetensors'))
    t['surprise.weight'] = torch.zeros(1)
    save_file(t, str(d / 'model.safetensors'))
    with pytest.raises(CheckpointError, match='surprise.weight'):
        load_policy(d)
    # config field that does not exist
    d = variant('field')
    meta = json.loads((d / 'config.json').read_text())
    meta['config']['wings'] = 2
    (d / 'config.json').write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match='wings'):
        load_policy(d)
    # no stats: loud
    d = variant('nostats')
    (d / 'stats.safetensors').unlink()
    with pytest.raises(CheckpointError, match='normalization statistics'):
        load_policy(d)
    with pytest.raises(ValueError, match='needs normalization stats'):
        save_checkpoint(tmp_path / 'x', make_policy(cfg, stats=False))
    with pytest.raises(CheckpointError, match='config.json'):
        load_policy(tmp_path)              # a directory without config.json


def test_no_pickle_anywhere():
    root = Path(__file__).resolve().parents[2] / 'src' / 'defi_core' / 'defi_core'
    for path in root.rglob('*.py'):
        text = path.read_text()
        assert 'import pickle' not in text and 'torch.save(' not in text, path
        assert 'torch.load(' not in text or 'weights_only=True' in text, path


def test_wrong_typed_config_field_names_the_file_and_field(tmp_path):
    cfg = tiny_cfg()
    path = save_checkpoint(tmp_path / 'ckpt', make_policy(cfg), cfg, make_stats(cfg))
    meta = json.loads((path / 'config.json').read_text())
    meta['config']['horizon'] = 'ten'
    (path / 'config.json').write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as err:
        load_policy(path)
    assert str(err.value) == f"{path / 'config.json'}: config.horizon: expected an integer, got 'ten'"
    meta['config']['horizon'] = 10
    meta['config']['cameras'] = 'front'
    (path / 'config.json').write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"config\.cameras: expected a list of strings, got 'front'"):
        load_policy(path)


@pytest.mark.parametrize('bad', [float('nan'), float('inf')])
def test_non_finite_weights_are_refused_naming_the_file(tmp_path, bad):
    cfg = tiny_cfg()
    policy = make_policy(cfg)
    path = save_checkpoint(tmp_path / 'ckpt', policy, cfg, make_stats(cfg))
    gfdm = save_checkpoint(tmp_path / 'gfdm', policy, cfg, component='gfdm')
    for ckpt in (path, gfdm):
        tensors = load_file(str(ckpt / 'model.safetensors'))
        key = sorted(k for k, v in tensors.items() if v.is_floating_point())[-1]
        tensors[key].view(-1)[0] = bad
        save_file(tensors, str(ckpt / 'model.safetensors'), metadata={'schema_version': '1', 'kind': 'x'})
    with pytest.raises(CheckpointError, match=rf"^{path / 'model.safetensors'}: weight .* holds NaN or infinite"):
        load_policy(path)
    with pytest.raises(CheckpointError, match='holds NaN or infinite'):
        load_state_into(make_policy(cfg), gfdm, 'gfdm')
    with pytest.raises(CheckpointError, match='holds NaN or infinite'):
        load_component(gfdm)
