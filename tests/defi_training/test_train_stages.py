"""The three training stages end to end on real synthetic bags -> real episode caches -> defi_core
checkpoints (tiny preset, a few steps)."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from defi_core.checkpoint import checkpoint_facts, load_component, load_policy, read_meta
from defi_core.models.gfdm import GFDM
from defi_core.models.gidm import GIDM
from defi_training.cache import EpisodeCache, build_cache
from defi_training.checkpointing import list_checkpoints
from defi_training.topic_map import ActionSpec, TopicMap
from defi_training.train import train
from defi_training.train_cli import main as train_main
from defi_training.train_config import apply_overrides, load_train_config
from train_data import synthetic_bags

torch.set_num_threads(1)
FAST = ['model.preset=tiny', 'model.text_encoder=hash', 'batch_size=2', 'threads=1', 'progress=false',
        'log_every=1', 'eval_every=2', 'eval_batches=2', 'ckpt_every=2', 'optim.warmup_steps=0']


@pytest.fixture(scope='module')
def caches(tmp_path_factory):
    """Three real bags (mcap + sqlite3, two instructions) -> a labelled and an action-free cache."""
    root = tmp_path_factory.mktemp('train_data')
    bags = synthetic_bags(root, storages=('mcap', 'sqlite3', 'mcap'))
    labelled = build_cache(bags, root / 'labelled', TopicMap(image_size=32))
    action_free = build_cache(bags, root / 'action_free', TopicMap(image_size=32, action=ActionSpec(source='none')))
    assert labelled.has_actions and not action_free.has_actions and labelled.num_episodes == 3
    return {'labelled': labelled.path, 'action_free': action_free.path, 'root': root}


@pytest.fixture(scope='module')
def stage_runs(caches):
    """gfdm and gidm on the action-free cache (in-process), finetune through the CLI."""
    root = caches['root']
    gfdm_cfg = apply_overrides(load_train_config(None, 'gfdm'), FAST + [
        'steps=4', f'data.cache={caches["action_free"]}', f'out_dir={root / "gfdm"}', 'image_every=2',
        'image_samples=1', 'sample_steps=2', 'data.num_workers=1'])
    gfdm_export = train(gfdm_cfg)
    gidm_cfg = apply_overrides(load_train_config(None, 'gidm'), FAST + [
        'steps=4', f'data.cache={caches["action_free"]}', f'out_dir={root / "gidm"}', 'image_every=2',
        'image_samples=1'])
    gidm_export = train(gidm_cfg)
    rc = train_main(['finetune', '--config', str(Path(__file__).resolve().parents[2] / 'config/train_finetune.yaml'),
                     '--gfdm', str(gfdm_export), '--gidm', str(gidm_export), '--out', str(root / 'finetune'),
                     f'data.cache={caches["labelled"]}', 'steps=4', 'data.num_workers=0', 'amp=none', *FAST])
    assert rc == 0
    return {'gfdm': root / 'gfdm', 'gidm': root / 'gidm', 'finetune': root / 'finetune'}


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / 'metrics.jsonl').read_text().splitlines()]


def _image_tags(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run_dir / 'tb'))
    acc.Reload()
    return acc.Tags()


@pytest.mark.parametrize('stage, kind', [('gfdm', GFDM), ('gidm', GIDM)])
def test_pretraining_stage_writes_loadable_checkpoints_logs_and_images(stage_runs, stage, kind):
    run = stage_runs[stage]
    module = load_component(run / 'final')
    assert isinstance(module, kind)
    assert [p.name for p in list_checkpoints(run)] == ['step_00000002', 'step_00000004']
    assert isinstance(load_component(list_checkpoints(run)[0]), kind)
    # The saved resolved config round-trips and describes this run.
    cfg = load_train_config(run / 'config.yaml')
    assert cfg.stage == stage and cfg.steps == 4 and cfg.out_dir == str(run)
    assert cfg.model['image_size'] == 32 and cfg.model['cameras'] == ['front']
    rows = _metrics(run)
    losses = [r['loss'] for r in rows if 'loss' in r]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert any(math.isfinite(r.get('val_loss', float('nan'))) for r in rows)
    assert all(r['samples_per_s'] > 0 for r in rows if 'samples_per_s' in r)
    tags = _image_tags(run)
    assert {'train/loss', 'train/lr', 'train/samples_per_s', 'val/loss'} <= set(tags['scalars'])
    assert any(t.startswith(f'samples/{stage}') for t in tags['images'])
    split = json.loads((run / 'split.json').read_text())
    assert split['val_episodes'] and not set(split['val_episodes']) & set(split['train_episodes'])


@pytest.mark.parametrize('stage', ['gfdm', 'gidm'])
def test_pretraining_updates_the_stage_weights(stage_runs, stage):
    last = load_file(str(stage_runs[stage] / 'final' / 'model.safetensors'))
    first = load_file(str(stage_runs[stage] / 'checkpoints' / 'step_00000002' / 'model.safetensors'))
    changed = [k for k in last if not torch.equal(last[k], first[k])]
    assert len(changed) > len(last) // 2


def test_finetune_loads_stage_checkpoints_and_exports_a_policy(stage_runs, caches):
    run = stage_runs['finetune']
    policy = load_policy(run / 'final')
    cache = EpisodeCache(caches['labelled'])
    assert policy.cfg.action_dim == cache.meta['action_dim'] and policy.cfg.state_dim == cache.meta['state_dim']
    # The data's facts travel with the checkpoint, typed: the runtime derives the chunk's dt from
    # the fps and names the chunk's columns and the state's joints from it.
    facts = checkpoint_facts(run / 'final')
    assert facts.fps == pytest.approx(cache.meta['fps']) and 'fps' not in read_meta(run / 'final')['extra']
    assert facts.action_names == tuple(cache.meta['action_names'])
    assert len(facts.action_names) == cache.meta['action_dim']
    assert facts.state_names == tuple(cache.meta['state_names'])
    action_free = EpisodeCache(caches['action_free'])
    assert checkpoint_facts(stage_runs['gfdm'] / 'final').fps == pytest.approx(action_free.meta['fps'])
    # The normalization stats were computed from the cache and travel in the checkpoint.
    assert np.allclose(policy.normalizer.stats['action']['max'].numpy(), cache.stats['action']['max'])
    # GFDM is frozen by default: its weights are exactly the gfdm stage export's.
    final = load_file(str(run / 'final' / 'model.safetensors'))
    gfdm = load_file(str(stage_runs['gfdm'] / 'final' / 'model.safetensors'))
    assert all(torch.equal(final['gfdm.' + k], v) for k, v in gfdm.items())
    # GIDM started from the gidm stage export and was finetuned (its trainable parts moved).
    gidm = load_file(str(stage_runs['gidm'] / 'final' / 'model.safetensors'))
    assert torch.equal(final['gidm.frame_embed.weight'], gidm['frame_embed.weight'])   # pretraining-only: frozen
    assert any(not torch.equal(final['gidm.' + k], v) for k, v in gidm.items())
    # The exported policy acts.
    frame = torch.from_numpy(np.array(cache.frames(0, 'front')[0])).permute(2, 0, 1)[None]
    obs = {'observation.images.front': frame, 'task': [cache.task(0)],
           'observation.state': torch.from_numpy(np.array(cache.array(0, 'observation.state')[:1]))}
    chunk = policy.predict_action_chunk(obs)
    assert chunk.shape == (1, policy.cfg.horizon, policy.cfg.action_dim) and torch.isfinite(chunk).all()
    assert load_train_config(run / 'config.yaml').gfdm_checkpoint == str(stage_runs['gfdm'] / 'final')


def test_finetune_ablation_switches_and_clear_errors(caches, tmp_path, capsys):
    # MLP instead of GIDM, GFDM without pretraining (trained): no stage checkpoints needed.
    rc = train_main(['finetune', f'data.cache={caches["labelled"]}', '--out', str(tmp_path / 'mlp'), 'steps=2',
                     'model.idm_type=mlp', 'model.gfdm_pretrained=false', *FAST])
    assert rc == 0
    policy = load_policy(tmp_path / 'mlp' / 'final')
    assert policy.cfg.idm_type == 'mlp' and policy.gidm is None and policy.cfg.gfdm_trainable
    # The default switches need the stage checkpoints, and say how to pass them.
    rc = train_main(['finetune', f'data.cache={caches["labelled"]}', '--out', str(tmp_path / 'x'), 'steps=2', *FAST])
    assert rc == 2 and '--gfdm' in capsys.readouterr().err
    # Finetuning needs labelled data.
    rc = train_main(['finetune', f'data.cache={caches["action_free"]}', '--out', str(tmp_path / 'y'), 'steps=2',
                     'model.gfdm_pretrained=false', 'model.gidm_pretrained=false', *FAST])
    err = capsys.readouterr().err
    assert rc == 2 and str(caches['action_free']) in err and 'actions' in err
    # A model setting that contradicts the cache is named.
    rc = train_main(['gfdm', f'data.cache={caches["action_free"]}', '--out', str(tmp_path / 'z'), 'steps=2',
                     'model.image_size=64', *FAST])
    assert rc == 2 and 'model.image_size' in capsys.readouterr().err


def test_resume_refuses_a_changed_data_layout(stage_runs, capsys):
    # The gidm run finished at step 4; extending it with another batch size cannot continue the same
    # data order, and says so instead of silently training on a different stream.
    rc = train_main(['gidm', '--resume', str(stage_runs['gidm']), 'steps=6', 'batch_size=3'])
    err = capsys.readouterr().err
    assert rc == 2 and 'batch_size 2 -> 3' in err
    assert load_train_config(stage_runs['gidm'] / 'config.yaml').batch_size == 2    # the run is untouched
