"""The recorder subscribes with the QoS its publishers offer (as `ros2 bag record` does): a
best-effort camera is recorded, and a transient-local topic's message published before the
recorder started is recorded too."""
import pytest

rclpy = pytest.importorskip('rclpy')
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from rosbags.rosbag2 import Reader  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from defi_recorder.recorder import RecorderNode, qos_for_offers  # noqa: E402

LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)


def test_qos_for_offers():
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    got = qos_for_offers([reliable, qos_profile_sensor_data])
    assert (got.reliability, got.durability) == (ReliabilityPolicy.BEST_EFFORT, DurabilityPolicy.VOLATILE)
    got = qos_for_offers([LATCHED])
    assert (got.reliability, got.durability) == (ReliabilityPolicy.RELIABLE, DurabilityPolicy.TRANSIENT_LOCAL)
    got = qos_for_offers([LATCHED, reliable])
    assert (got.reliability, got.durability) == (ReliabilityPolicy.RELIABLE, DurabilityPolicy.VOLATILE)


def test_records_a_best_effort_camera_and_a_latched_topic(ros_context, spin, tmp_path):
    source = rclpy.create_node('qos_source', context=ros_context)
    camera = source.create_publisher(Image, '/qos/camera/image_raw', qos_profile_sensor_data)
    latched = source.create_publisher(String, '/qos/map_name', LATCHED)
    latched.publish(String(data='kitchen'))          # before the recorder exists
    recorder = RecorderNode(context=ros_context, parameter_overrides=[
        Parameter('topics', value=['/qos/camera/image_raw', '/qos/map_name']),
        Parameter('out_dir', value=str(tmp_path)), Parameter('discovery_period_s', value=0.1)])
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(source)
    executor.add_node(recorder)
    try:
        assert spin(executor, lambda: len(recorder.subscribed_topics) == 2 and camera.get_subscription_count() >= 1,
                    15.0), 'the recorder never subscribed'
        sent = 0

        def publish_and_check():
            nonlocal sent
            img = Image(height=2, width=2, encoding='rgb8', step=6, data=bytes(12))
            img.header.frame_id = 'camera'
            camera.publish(img)
            sent += 1
            return recorder.received.get('/qos/camera/image_raw', 0) >= 5
        assert spin(executor, publish_and_check, 15.0, step_s=0.05), \
            f'best-effort camera not recorded ({sent} sent, {recorder.received})'
        assert spin(executor, lambda: recorder.received.get('/qos/map_name', 0) >= 1, 10.0), \
            'the latched message published before the recorder started was not recorded'
        bag = recorder.stop_episode()
    finally:
        executor.shutdown()
        recorder.close()
        recorder.destroy_node()
        source.destroy_node()
    with Reader(bag) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
    assert counts['/qos/camera/image_raw'] >= 5 and counts['/qos/map_name'] == 1
