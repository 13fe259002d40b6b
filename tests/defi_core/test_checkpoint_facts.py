"""The training data's facts (fps, camera, action and state names) are typed DefiConfig fields of a
checkpoint (schema 2), read through checkpoint_facts; schema-1 checkpoints are migrated on read."""
import json
import shutil
from pathlib import Path

import pytest

from core_helpers import make_policy, make_stats, tiny_cfg
from defi_core.checkpoint import CheckpointError, checkpoint_facts, load_policy, read_meta, save_checkpoint
from defi_core.config import SCHEMA_VERSION, DefiConfig

SHIPPED = Path(__file__).resolve().parents[2] / 'models' / 'defi_metaworld'


@pytest.fixture(scope='module')
def facts_checkpoint(tmp_path_factory):
    cfg = tiny_cfg(state_dim=2, cameras=('front', 'wrist'), fps=20.0,
                   action_names=('dx', 'dy', 'dz', 'gripper'), state_names=('elbow', 'shoulder'))
    path = tmp_path_factory.mktemp('facts') / 'ckpt'
    return save_checkpoint(path, make_policy(cfg), cfg, make_stats(cfg), extra={'step': 3})


def _as_schema_1(src: Path, dest: Path, fps=None) -> Path:
    """A copy of `src` whose config.json is what schema 1 wrote: no fact fields in the config,
    the data rate (when recorded) in extra.fps."""
    shutil.copytree(src, dest)
    meta = json.loads((dest / 'config.json').read_text())
    for name in ('fps', 'action_names', 'state_names'):
        meta['config'].pop(name)
    meta['schema_version'] = 1
    meta['extra'] = {**meta['extra'], **({} if fps is None else {'fps': fps})}
    (dest / 'config.json').write_text(json.dumps(meta))
    return dest


def test_facts_round_trip_through_save_and_load(facts_checkpoint):
    meta = json.loads((facts_checkpoint / 'config.json').read_text())
    assert meta['schema_version'] == SCHEMA_VERSION == 2 and meta['extra'] == {'step': 3}
    assert meta['config']['fps'] == 20.0 and meta['config']['action_names'] == ['dx', 'dy', 'dz', 'gripper']
    policy = load_policy(facts_checkpoint)
    for facts in (checkpoint_facts(facts_checkpoint), checkpoint_facts(str(facts_checkpoint)),
                  checkpoint_facts(policy), checkpoint_facts(policy.cfg)):
        assert facts.fps == 20.0 and facts.chunk_dt_s == pytest.approx(0.05)
        assert facts.cameras == ('front', 'wrist')
        assert facts.action_names == ('dx', 'dy', 'dz', 'gripper') and facts.state_names == ('elbow', 'shoulder')
    assert not hasattr(policy, 'checkpoint_extra')          # no untyped side channel any more


def test_unknown_facts_are_empty_and_give_no_chunk_dt(tmp_path):
    path = save_checkpoint(tmp_path / 'plain', make_policy(tiny_cfg()))
    facts = checkpoint_facts(path)
    assert (facts.fps, facts.chunk_dt_s, facts.action_names, facts.state_names) == (0.0, None, (), ())
    with pytest.raises(TypeError, match='checkpoint directory, a policy or a DefiConfig'):
        checkpoint_facts(42)


def test_schema_1_checkpoint_is_migrated_on_read(facts_checkpoint, tmp_path):
    old = _as_schema_1(facts_checkpoint, tmp_path / 'v1', fps=40.0)
    meta = read_meta(old)
    assert meta['schema_version'] == SCHEMA_VERSION and meta['migrated_from'] == 1
    assert meta['config']['fps'] == 40.0 and meta['extra'] == {'step': 3}     # extra.fps moved
    facts = checkpoint_facts(old)
    assert facts.fps == 40.0 and facts.chunk_dt_s == pytest.approx(0.025)
    assert facts.action_names == () and facts.state_names == ()              # schema 1 recorded none
    assert checkpoint_facts(load_policy(old)).fps == 40.0
    # without extra.fps: loads, with the rate unknown
    assert checkpoint_facts(_as_schema_1(facts_checkpoint, tmp_path / 'v1_nofps')).chunk_dt_s is None
    bad = _as_schema_1(facts_checkpoint, tmp_path / 'v1_bad', fps='fast')
    with pytest.raises(CheckpointError, match=r"schema_version 1 with extra.fps='fast'"):
        read_meta(bad)


@pytest.mark.parametrize('version, words', [(3, 'newer DeFI'), (0, 'reads schema versions [1, 2]'),
                                            ('2', "unknown schema_version '2'"), (True, 'unknown schema_version True'),
                                            (None, 'unknown schema_version None')])
def test_unknown_schema_version_is_refused_clearly(facts_checkpoint, tmp_path, version, words):
    d = tmp_path / 'odd'
    shutil.copytree(facts_checkpoint, d)
    meta = json.loads((d / 'config.json').read_text())
    meta['schema_version'] = version
    (d / 'config.json').write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match='config.json') as err:
        load_policy(d)
    assert words in str(err.value)


def test_facts_are_validated_and_not_taken_as_extra(tmp_path):
    with pytest.raises(ValueError, match=r'DefiConfig.action_names=.*4 distinct names'):
        tiny_cfg(action_names=('x', 'y'))
    with pytest.raises(ValueError, match=r'DefiConfig.state_names=.*must be empty or 0'):
        tiny_cfg(state_names=('elbow',))
    with pytest.raises(ValueError, match=r'DefiConfig.fps=-1'):
        tiny_cfg(fps=-1.0)
    with pytest.raises(ValueError, match=r'config.action_names: expected a list of strings'):
        DefiConfig.from_dict({'action_names': [1, 2, 3, 4]}, source='config.json', field_prefix='config.')
    policy = make_policy(tiny_cfg())
    with pytest.raises(ValueError, match=r"extra=\['fps'\] are DefiConfig fields.*cfg.replace\(fps="):
        save_checkpoint(tmp_path / 'x', policy, extra={'fps': 10.0})
    assert not (tmp_path / 'x').exists()


def test_shipped_checkpoint_is_current_and_loads():
    """models/defi_metaworld's config.json was rewritten to schema 2 (its weights untouched): the
    data it was trained on is Meta-World's expert data at 40 fps (defi-sim dataset)."""
    meta = json.loads((SHIPPED / 'config.json').read_text())
    assert meta['schema_version'] == SCHEMA_VERSION and 'fps' not in meta['extra']
    facts = checkpoint_facts(SHIPPED)
    assert facts.fps == 40.0 and facts.cameras == ('front',)
    assert facts.action_names == ('dx', 'dy', 'dz', 'gripper')
    assert facts.state_names == ('right_j0', 'right_j1', 'right_j2', 'right_j3', 'right_j4', 'right_j5',
                                 'right_j6', 'r_close', 'l_close')
    policy = load_policy(SHIPPED)
    assert checkpoint_facts(policy) == facts and (policy.cfg.action_dim, policy.cfg.state_dim) == (4, 9)
