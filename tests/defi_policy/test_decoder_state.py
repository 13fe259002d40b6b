"""Action decoder with proprioception (state_dim > 0): joint_states is required and selected by name."""
import time

import numpy as np
import pytest

from defi_ros_testkit import Probe, image_msg, make_executor, make_tiny_policy, params, shutdown

pytestmark = pytest.mark.timeout(60)


def test_decoder_needs_joint_states_when_the_checkpoint_has_state(ros_context, spin):
    import torch
    from sensor_msgs.msg import JointState

    from defi_msgs.msg import ActionChunk, ForwardFeatures, LatentActions
    from defi_policy.action_decoder_node import ActionDecoderNode
    from defi_ros import qos
    from defi_ros.conversions import features_to_msg, latent_to_msg
    policy = make_tiny_policy(state_dim=2)
    node = ActionDecoderNode(policy=policy, context=ros_context, parameter_overrides=params(
        state_names=['elbow', 'shoulder'], action_names=['x', 'y', 'z', 'g'], action_dt=0.05,
        max_age_s=5.0))
    probe = Probe(ros_context)
    probe.listen(ActionChunk, 'defi/action_chunk', qos.RELIABLE)
    feats_pub = probe.publisher(ForwardFeatures, 'defi/forward_features', qos.FEATURES)
    lat_pub = probe.publisher(LatentActions, 'defi/latent_actions', qos.RELIABLE)
    js_pub = probe.publisher(JointState, 'joint_states', qos.SENSOR)
    assert node.start()
    ex = make_executor(ros_context, [node, probe.node])
    cfg = policy.cfg
    with torch.inference_mode():
        lang = policy.encode_instruction(['stack the blocks'])
        feats = policy.forward_features(torch.zeros(1, 1, 3, 64, 64, dtype=torch.uint8), lang)
        codes, tokens = policy.latent_actions(feats, lang)

    def send():
        stamp = probe.node.get_clock().now().nanoseconds
        feats_pub.publish(features_to_msg(feats[0].numpy(), stamp, 'stack the blocks'))
        lat_pub.publish(latent_to_msg(codes[0].numpy(), tokens[0].numpy(), stamp))
        return stamp
    try:
        spin(ex, lambda: feats_pub.get_subscription_count() and lat_pub.get_subscription_count()
             and js_pub.get_subscription_count(), timeout_s=3)
        send()
        assert spin(ex, lambda: node.counters.malformed_inputs >= 1, timeout_s=3)
        assert 'joint_states' in node.counters.last_error and probe.msgs('defi/action_chunk') == []
        # a JointState without the named joints is rejected too
        js_pub.publish(JointState(name=['wrist'], position=[0.1]))
        spin(ex, lambda: node._joint_state is not None, timeout_s=3)
        send()
        assert spin(ex, lambda: node.counters.malformed_inputs >= 2, timeout_s=3)
        assert 'state_names' in node.counters.last_error
        js_pub.publish(JointState(name=['shoulder', 'wrist', 'elbow'], position=[0.3, 0.0, -0.2]))
        spin(ex, lambda: len(node._joint_state.name) == 3, timeout_s=3)
        assert node._state_vector().tolist() == pytest.approx([-0.2, 0.3])
        stamp = send()
        assert spin(ex, lambda: probe.msgs('defi/action_chunk'), timeout_s=5)
        c = probe.msgs('defi/action_chunk')[-1]
        assert c.header.stamp.sec * 10**9 + c.header.stamp.nanosec == stamp
        assert (c.horizon, c.action_dim, list(c.names)) == (cfg.horizon, 4, ['x', 'y', 'z', 'g'])
        assert c.dt == pytest.approx(0.05) and np.all(np.isfinite(c.data))
        # the sampler is seeded by the stamp: the same observation decodes to the same chunk, another
        # observation (stamp) to another draw
        chunks = len(probe.msgs('defi/action_chunk'))
        for again in (stamp, stamp + 1):
            node.decode(again, feats, tokens, lang, 'stack the blocks', np.array([-0.2, 0.3], np.float32))
        assert spin(ex, lambda: len(probe.msgs('defi/action_chunk')) >= chunks + 2, timeout_s=5)
        same, other = probe.msgs('defi/action_chunk')[-2:]
        assert list(same.data) == list(c.data) and list(other.data) != list(c.data)
    finally:
        shutdown(ex, [node, probe.node])


def test_fused_bringup_stages_read_joint_states_too(ros_context, spin):
    """defi_bringup's fused stages: the decoder is called in-process, and still needs the state."""
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import String

    from defi_msgs.msg import ActionChunk
    from defi_policy.bringup import build_nodes, start_nodes
    from defi_ros import qos
    nodes = build_nodes(make_tiny_policy(state_dim=2), with_action_server=False, context=ros_context,
                        parameter_overrides=params(state_names=['elbow', 'shoulder'], max_age_s=5.0,
                                                   preview_rate_hz=0.0))
    decoder = nodes[2]
    probe = Probe(ros_context)
    probe.listen(ActionChunk, 'defi/action_chunk', qos.RELIABLE)
    cam = probe.publisher(Image, 'camera/image_raw', qos.SENSOR)
    js_pub = probe.publisher(JointState, 'joint_states', qos.SENSOR)
    probe.publisher(String, 'instruction', qos.INSTRUCTION).publish(String(data='stack the blocks'))
    assert start_nodes(nodes) == []
    ex = make_executor(ros_context, nodes + [probe.node], threads=1)

    def feed_until(predicate, seconds=5.0):
        deadline, k = time.monotonic() + seconds, 0
        while time.monotonic() < deadline and not predicate():
            cam.publish(image_msg(probe.now(), seed=k))
            k += 1
            spin(ex, lambda: False, timeout_s=0.1)
        return predicate()
    try:
        assert feed_until(lambda: decoder.counters.malformed_inputs >= 1)
        assert 'joint_states' in decoder.counters.last_error and probe.msgs('defi/action_chunk') == []
        js_pub.publish(JointState(name=['shoulder', 'elbow'], position=[0.3, -0.2]))
        assert feed_until(lambda: probe.msgs('defi/action_chunk'))
    finally:
        shutdown(ex, nodes + [probe.node])
