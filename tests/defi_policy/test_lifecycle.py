"""Lifecycle done the rclpy way: data outputs are lifecycle publishers (silent while inactive),
entities are made in configure and destroyed in cleanup, so cleanup -> new parameters ->
configure applies a new topic and a new timer period."""
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.lifecycle.publisher import LifecyclePublisher
from rclpy.parameter import Parameter

from defi_ros_testkit import Probe, make_executor, params, shutdown

OK = TransitionCallbackReturn.SUCCESS


def control_periods_ns(node, status_period_ns):
    return sorted(t.timer_period_ns for t in node.timers if t.timer_period_ns != status_period_ns)


def test_reconfigure_applies_a_new_command_topic_and_rate(ros_context, spin):
    from geometry_msgs.msg import TwistStamped

    from defi_policy.chunk_executor_node import ChunkExecutorNode
    from defi_ros import qos
    node = ChunkExecutorNode(context=ros_context, parameter_overrides=params(
        output_mode='twist', twist_topic='lc/cmd_a', control_rate_hz=10.0, status_rate_hz=4.0))
    probe = Probe(ros_context)
    for topic in ('lc/cmd_a', 'lc/cmd_b'):
        probe.listen(TwistStamped, topic, qos.RELIABLE)
    ex = make_executor(ros_context, [node, probe.node])
    status_ns = 250_000_000
    try:
        assert node.start()
        assert isinstance(node.cmd_pub, LifecyclePublisher)
        assert control_periods_ns(node, status_ns) == [100_000_000]
        assert spin(ex, lambda: node.count_subscribers('lc/cmd_a') >= 1
                    and node.cmd_pub.get_subscription_count() >= 1, 10.0)
        assert node.trigger_deactivate() == OK    # the stop (zero twist) goes out before the publisher is disabled
        assert spin(ex, lambda: len(probe.msgs('lc/cmd_a')) == 1, 5.0)
        node.stop(node.latch.reason, force=True)        # inactive: a lifecycle publisher sends nothing
        assert node.trigger_cleanup() == OK
        assert node.count_publishers('lc/cmd_a') == 0  # destroyed in cleanup

        node.set_parameters([Parameter('twist_topic', value='lc/cmd_b'),
                             Parameter('control_rate_hz', value=20.0)])
        assert node.trigger_configure() == OK and node.trigger_activate() == OK
        assert control_periods_ns(node, status_ns) == [50_000_000]
        assert spin(ex, lambda: node.cmd_pub.get_subscription_count() >= 1, 10.0)
        assert node.cmd_pub.topic_name == '/lc/cmd_b'
        assert node.trigger_deactivate() == OK
        assert spin(ex, lambda: len(probe.msgs('lc/cmd_b')) == 1, 5.0)
        spin(ex, lambda: False, 0.5)
        assert len(probe.msgs('lc/cmd_a')) == 1         # nothing more on the old topic
    finally:
        shutdown(ex, [node, probe.node])


def test_model_node_reconfigure_applies_a_new_output_topic(ros_context, tiny_checkpoint):
    from defi_policy.latent_action_encoder_node import LatentActionEncoderNode
    node = LatentActionEncoderNode(context=ros_context, parameter_overrides=params(
        checkpoint=str(tiny_checkpoint), latent_topic='lc/latent_a', features_topic='lc/features_a'))
    try:
        assert node.start()
        assert isinstance(node.latent_pub, LifecyclePublisher)
        assert node.count_publishers('lc/latent_a') == 1 and node.count_subscribers('lc/features_a') == 1
        old_worker = node.worker
        assert node.trigger_deactivate() == OK and node.trigger_cleanup() == OK
        assert node.policy is None
        assert node.count_publishers('lc/latent_a') == 0 and node.count_subscribers('lc/features_a') == 0
        node.set_parameters([Parameter('latent_topic', value='lc/latent_b'),
                             Parameter('features_topic', value='lc/features_b')])
        assert node.start()
        assert node.count_publishers('lc/latent_b') == 1 and node.count_subscribers('lc/features_b') == 1
        assert node.count_publishers('lc/latent_a') == 0 and node.worker is not old_worker
    finally:
        node.destroy_node()
