"""The forward predictor node alone: two synchronised cameras (one compressed), features, preview."""
import io

import numpy as np
import pytest

from defi_ros_testkit import Probe, image_msg, make_executor, make_tiny_policy, params, shutdown

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope='module')
def two_camera_policy():
    return make_tiny_policy(cameras=('front', 'wrist'))


def jpeg_msg(stamp, size=96):
    from PIL import Image as PILImage
    from sensor_msgs.msg import CompressedImage
    buf = io.BytesIO()
    PILImage.fromarray(np.full((size, size, 3), 128, np.uint8)).save(buf, format='JPEG')
    msg = CompressedImage(format='jpeg')
    msg.data = buf.getvalue()
    msg.header.stamp = stamp
    return msg


def test_two_cameras_as_of_sync_features_and_predicted_strip(ros_context, spin, two_camera_policy):
    from builtin_interfaces.msg import Time
    from sensor_msgs.msg import CompressedImage, Image
    from std_msgs.msg import String

    from defi_msgs.msg import ForwardFeatures, PolicyStatus
    from defi_perception.forward_predictor_node import ForwardPredictorNode
    from defi_ros import qos
    # by name, in another order than the checkpoint's cameras
    node = ForwardPredictorNode(policy=two_camera_policy, context=ros_context, parameter_overrides=params(
        camera_topics=['wrist=cam/wrist/image_raw/compressed', 'front=cam/front/image_raw'],
        preview_rate_hz=5.0, preview_steps=2, status_rate_hz=10.0, max_age_s=5.0))
    probe = Probe(ros_context)
    probe.listen(ForwardFeatures, 'defi/forward_features', qos.FEATURES)
    probe.listen(Image, 'defi/predicted_frames', qos.BEST_EFFORT)
    probe.listen(PolicyStatus, 'defi/status', qos.BEST_EFFORT)
    front = probe.publisher(Image, 'cam/front/image_raw', qos.SENSOR)
    wrist = probe.publisher(CompressedImage, 'cam/wrist/image_raw/compressed', qos.SENSOR)
    instr = probe.publisher(String, 'instruction', qos.INSTRUCTION)
    assert node.start()
    ex = make_executor(ros_context, [node, probe.node])
    try:
        spin(ex, lambda: front.get_subscription_count() and wrist.get_subscription_count(), timeout_s=3)
        instr.publish(String(data='pick the cube'))
        spin(ex, lambda: node.instruction, timeout_s=3)
        base = probe.node.get_clock().now().nanoseconds

        def stamp(ms):
            t = base + ms * 1_000_000
            return Time(sec=t // 10**9, nanosec=t % 10**9)
        # the reference camera alone: the wrist camera has nothing yet -> no features, counted
        front.publish(image_msg(stamp(0)))
        spin(ex, lambda: node.counters.stale_observations >= 1, timeout_s=3)
        assert probe.msgs('defi/forward_features') == []
        # wrist 30 ms before front (within sync_tolerance_s = 0.1): features at the front stamp
        wrist.publish(jpeg_msg(stamp(170)))             # 96 px, resized to 64
        spin(ex, lambda: False, timeout_s=0.2)
        front.publish(image_msg(stamp(200)))
        assert spin(ex, lambda: probe.msgs('defi/forward_features'), timeout_s=5)
        f = probe.msgs('defi/forward_features')[0]
        assert f.header.stamp == stamp(200) and f.instruction == 'pick the cube'
        cfg = two_camera_policy.cfg
        assert list(f.shape)[0] == cfg.num_future_frames and len(f.data) == int(np.prod(f.shape))
        # predicted frames: one row per camera, now | t+1 ... t+T
        assert spin(ex, lambda: probe.msgs('defi/predicted_frames'), timeout_s=5)
        strip = probe.msgs('defi/predicted_frames')[-1]
        assert (strip.height, strip.width) == (2 * 64, 64 * (cfg.num_future_frames + 1))
        # a malformed compressed frame is counted and the node keeps going
        bad = jpeg_msg(stamp(250))
        bad.data = bytes(bad.data)[:30]
        wrist.publish(bad)
        assert spin(ex, lambda: node.counters.malformed_inputs >= 1, timeout_s=3)
        assert 'cam/wrist/image_raw/compressed' in node.counters.last_error
        spin(ex, lambda: probe.status_of('forward_predictor') is not None
             and probe.status_of('forward_predictor').malformed_inputs >= 1, timeout_s=3)
        assert probe.status_of('forward_predictor').features_ms > 0
    finally:
        shutdown(ex, [node, probe.node])


def test_wrong_number_of_camera_topics_fails_configure_with_the_parameter_name(ros_context,
                                                                               two_camera_policy):
    from defi_perception.forward_predictor_node import ForwardPredictorNode
    node = ForwardPredictorNode(policy=two_camera_policy, context=ros_context,
                                parameter_overrides=params(camera_topics=['only/one']))
    try:
        assert not node.start()
        assert 'camera_topics' in node.counters.last_error
    finally:
        node.destroy_node()


def test_camera_topics_map_checkpoint_cameras_by_name():
    from defi_perception.forward_predictor_node import camera_topic_map
    cams = ('front', 'wrist')
    assert camera_topic_map(['wrist = w/image_raw', 'front=f/image_raw'], cams) == (
        {'front': 'f/image_raw', 'wrist': 'w/image_raw'}, False)
    # plain topics: the checkpoint's camera order (the older form)
    assert camera_topic_map(['f/image_raw', 'w/image_raw'], cams) == (
        {'front': 'f/image_raw', 'wrist': 'w/image_raw'}, True)
    for entries, words in ((['front=f', 'side=s'], r"not a checkpoint camera: \['side'\]; no topic for \['wrist'\]"),
                           (['front=f'], r"no topic for \['wrist'\]"),
                           (['front=f', 'w/image_raw'], 'mixes'),
                           (['front=f', 'front=g'], "camera 'front' is given twice"),
                           (['front=', 'wrist=w'], "'front=' is not '<camera>=<topic>'"),
                           (['only/one'], r"1 topic\(s\)")):
        with pytest.raises(ValueError, match=words) as err:
            camera_topic_map(entries, cams)
        assert "parameter 'camera_topics'" in str(err.value)


def test_camera_name_not_in_the_checkpoint_fails_configure_naming_its_cameras(ros_context, two_camera_policy):
    from defi_perception.forward_predictor_node import ForwardPredictorNode
    node = ForwardPredictorNode(policy=two_camera_policy, context=ros_context,
                                parameter_overrides=params(camera_topics=['front=f/image_raw', 'side=s/image_raw']))
    try:
        assert not node.start()
        err = node.counters.last_error
        assert 'camera_topics' in err and "['front', 'wrist']" in err and "'side'" in err
    finally:
        node.destroy_node()
