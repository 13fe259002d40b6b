import json

import pytest

from defi_core.config import SCHEMA_VERSION, DefiConfig, load_config, preset, save_config
from defi_core.policy import DefiPolicy


def test_presets_and_overrides():
    cfg = preset('tiny', action_dim=7, cameras=['front', 'wrist'], horizon=12)
    assert cfg.action_dim == 7 and cfg.cameras == ('front', 'wrist') and cfg.horizon == 12
    assert cfg.num_views == 2 and cfg.tokens_per_frame == 2 * (64 // 8) ** 2
    assert preset('base').gfdm_dim > preset('tiny').gfdm_dim
    assert preset('large').image_size > preset('base').image_size
    assert SCHEMA_VERSION >= 1


def test_unknown_preset_and_fields_are_named():
    with pytest.raises(ValueError, match='huge'):
        preset('huge')
    with pytest.raises(ValueError, match='not_a_field'):
        preset('tiny', not_a_field=1)
    with pytest.raises(ValueError, match='idm_type'):
        preset('tiny', idm_type='lstm')
    with pytest.raises(ValueError, match='image_size'):
        preset('tiny', image_size=60)
    with pytest.raises(ValueError, match='text_dim'):
        preset('tiny', text_dim=64)            # MiniLM gives 384
    with pytest.raises(ValueError, match='scratch'):
        preset('tiny', backbone='scratch')     # needs idm_type='none'


def test_yaml_and_json_roundtrip(tmp_path):
    cfg = preset('tiny', action_dim=6, cameras=('a', 'b'), train_gfdm=True)
    for name in ('m.yaml', 'm.json'):
        save_config(cfg, tmp_path / name)
        assert load_config(tmp_path / name) == cfg
    (tmp_path / 'p.yaml').write_text('preset: base\naction_dim: 3\n')
    cfg2 = load_config(tmp_path / 'p.yaml')
    assert cfg2.preset_name == 'base' and cfg2.action_dim == 3 and cfg2.gfdm_dim == preset('base').gfdm_dim
    (tmp_path / 'bad.json').write_text(json.dumps({'horizon': 4, 'typo_field': 1}))
    with pytest.raises(ValueError, match=r'bad.json.*typo_field'):
        load_config(tmp_path / 'bad.json')


def test_ablation_switches_build_the_right_modules():
    p = DefiPolicy(preset('tiny', text_encoder='hash', idm_type='none'))
    assert p.gidm is None and p.coupling is None and p.idm is None
    p = DefiPolicy(preset('tiny', text_encoder='hash', idm_type='mlp'))
    assert p.gidm is None and type(p.idm).__name__ == 'MLPIDM'
    p = DefiPolicy(preset('tiny', text_encoder='hash', backbone='scratch', idm_type='none'))
    assert p.gfdm is None and p.image_encoder is not None
    assert preset('tiny', gfdm_pretrained=False).gfdm_trainable
    assert preset('tiny', train_gfdm=True).gfdm_trainable
    assert not preset('tiny').gfdm_trainable


def test_param_budgets():
    def count(name):
        return sum(p.numel() for p in DefiPolicy(preset(name, text_encoder='hash')).parameters())
    assert count('tiny') < 2_000_000
    assert count('tiny') < count('base')


def test_gap_index_follows_frame_gap_and_stride():
    assert DefiConfig(num_future_frames=4, future_stride=1, frame_gap=4).gap_feature_index == 3
    assert DefiConfig(num_future_frames=8, future_stride=2, frame_gap=8).gap_feature_index == 3
    assert DefiConfig(num_future_frames=4, future_stride=1, frame_gap=30).gap_feature_index == 3
