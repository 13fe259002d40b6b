"""The chunk dt defaults to 1/fps of the checkpoint's training data; an explicit action_dt wins.
The chunk's names default to the checkpoint's action names; a schema-1 checkpoint's extra.fps
still gives the dt (migrated on read)."""
import json

import numpy as np
import pytest

from defi_ros_testkit import Probe, make_executor, params, save_tiny_checkpoint, shutdown, tiny_stats

pytestmark = pytest.mark.timeout(60)
NAMES = ['dx', 'dy', 'dz', 'gripper']


@pytest.fixture(scope='module')
def fps20_checkpoint(tmp_path_factory, tiny_policy):
    from defi_core.checkpoint import save_checkpoint
    path = tmp_path_factory.mktemp('ckpt') / 'fps20'
    cfg = tiny_policy.cfg.replace(fps=20.0, action_names=NAMES[:tiny_policy.cfg.action_dim])
    save_checkpoint(str(path), tiny_policy, cfg, tiny_stats(tiny_policy.cfg.action_dim, 0))
    return str(path)


@pytest.fixture(scope='module')
def schema1_fps40_checkpoint(tmp_path_factory, tiny_policy):
    """What defi-train wrote before schema 2: no names, the rate in extra.fps."""
    path = tmp_path_factory.mktemp('ckpt') / 'v1'
    save_tiny_checkpoint(path, tiny_policy)
    meta = json.loads((path / 'config.json').read_text())
    for name in ('fps', 'action_names', 'state_names'):
        meta['config'].pop(name)
    meta.update(schema_version=1, extra={'fps': 40.0})
    (path / 'config.json').write_text(json.dumps(meta))
    return str(path)


def _one_chunk(ros_context, spin, policy, node_params):
    """Publish one features + latent pair to an action decoder; the chunk it publishes."""
    import torch

    from defi_msgs.msg import ActionChunk, ForwardFeatures, LatentActions
    from defi_policy.action_decoder_node import ActionDecoderNode
    from defi_ros import qos
    from defi_ros.conversions import features_to_msg, latent_to_msg
    node = ActionDecoderNode(context=ros_context, parameter_overrides=params(max_age_s=5.0, **node_params))
    probe = Probe(ros_context)
    probe.listen(ActionChunk, 'defi/action_chunk', qos.RELIABLE)
    feats_pub = probe.publisher(ForwardFeatures, 'defi/forward_features', qos.FEATURES)
    lat_pub = probe.publisher(LatentActions, 'defi/latent_actions', qos.RELIABLE)
    assert node.start(), node.counters.last_error
    ex = make_executor(ros_context, [node, probe.node])
    with torch.inference_mode():
        lang = policy.encode_instruction(['push the puck'])
        feats = policy.forward_features(torch.zeros(1, 1, 3, 64, 64, dtype=torch.uint8), lang)
        codes, tokens = policy.latent_actions(feats, lang)
    try:
        spin(ex, lambda: feats_pub.get_subscription_count() and lat_pub.get_subscription_count(), timeout_s=3)
        stamp = probe.node.get_clock().now().nanoseconds
        feats_pub.publish(features_to_msg(feats[0].numpy(), stamp, 'push the puck'))
        lat_pub.publish(latent_to_msg(codes[0].numpy(), tokens[0].numpy(), stamp))
        assert spin(ex, lambda: probe.msgs('defi/action_chunk'), timeout_s=5)
        chunk = probe.msgs('defi/action_chunk')[-1]
        assert np.all(np.isfinite(chunk.data))
        # the base node reports the inference worker's drops in defi/status
        node.worker.dropped = 3
        assert node.status_message().dropped_frames == 3
        return chunk
    finally:
        shutdown(ex, [node, probe.node])


def test_chunk_dt_and_names_default_to_the_checkpoint(ros_context, spin, tiny_policy, fps20_checkpoint):
    from defi_core.checkpoint import checkpoint_facts
    assert checkpoint_facts(fps20_checkpoint).fps == 20.0
    chunk = _one_chunk(ros_context, spin, tiny_policy, {'checkpoint': fps20_checkpoint})
    assert chunk.dt == pytest.approx(0.05)
    assert list(chunk.names) == NAMES[:tiny_policy.cfg.action_dim]


def test_schema_1_checkpoint_gives_its_extra_fps(ros_context, spin, tiny_policy, schema1_fps40_checkpoint):
    chunk = _one_chunk(ros_context, spin, tiny_policy, {'checkpoint': schema1_fps40_checkpoint})
    assert chunk.dt == pytest.approx(0.025)
    assert list(chunk.names) == [f'a{i}' for i in range(tiny_policy.cfg.action_dim)]   # none recorded


def test_explicit_action_dt_and_names_override_the_checkpoint(ros_context, spin, tiny_policy,
                                                              fps20_checkpoint):
    names = [f'joint{i}' for i in range(tiny_policy.cfg.action_dim)]
    chunk = _one_chunk(ros_context, spin, tiny_policy, {'checkpoint': fps20_checkpoint, 'action_dt': 0.2,
                                                        'action_names': names})
    assert chunk.dt == pytest.approx(0.2) and list(chunk.names) == names


def test_checkpoint_without_fps_falls_back_to_0_1_s(ros_context, spin, tiny_policy, tiny_checkpoint):
    chunk = _one_chunk(ros_context, spin, tiny_policy, {'checkpoint': tiny_checkpoint})
    assert chunk.dt == pytest.approx(0.1)
