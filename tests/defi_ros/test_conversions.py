"""Message <-> numpy conversions of defi_perception (real rclpy message classes)."""
import io

import numpy as np
import pytest


def rgb_image(h=6, w=5, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', 'rgba8', 'mono8'])
def test_image_encodings_with_row_padding(encoding):
    from sensor_msgs.msg import Image

    from defi_ros.conversions import image_msg_to_rgb
    rgb = rgb_image()
    ch = {'rgb8': 3, 'bgr8': 3, 'rgba8': 4, 'mono8': 1}[encoding]
    if encoding == 'rgb8':
        pix = rgb
    elif encoding == 'bgr8':
        pix = rgb[..., ::-1]
    elif encoding == 'rgba8':
        pix = np.concatenate([rgb, np.full((6, 5, 1), 7, np.uint8)], axis=2)
    else:
        pix = rgb[..., :1]
    step = 5 * ch + 3                                   # 3 bytes of padding per row
    rows = np.zeros((6, step), np.uint8)
    rows[:, :5 * ch] = pix.reshape(6, -1)
    msg = Image(encoding=encoding, height=6, width=5, step=step)
    msg.data = rows.tobytes()
    out = image_msg_to_rgb(msg)
    expect = np.repeat(rgb[..., :1], 3, axis=2) if encoding == 'mono8' else rgb
    np.testing.assert_array_equal(out, expect)
    assert image_msg_to_rgb(msg, size=3).shape == (3, 3, 3)


@pytest.mark.parametrize('fmt', ['png', 'jpeg'])
def test_compressed_images(fmt):
    from PIL import Image as PILImage
    from sensor_msgs.msg import CompressedImage

    from defi_ros.conversions import image_msg_to_rgb
    rgb = np.full((8, 8, 3), (200, 30, 90), np.uint8)
    buf = io.BytesIO()
    PILImage.fromarray(rgb).save(buf, format='PNG' if fmt == 'png' else 'JPEG', quality=95)
    msg = CompressedImage(format=fmt)
    msg.data = buf.getvalue()
    out = image_msg_to_rgb(msg)
    assert out.shape == (8, 8, 3) and np.abs(out.astype(int) - rgb).max() <= (0 if fmt == 'png' else 8)


def test_malformed_images_name_the_field():
    from sensor_msgs.msg import CompressedImage, Image

    from defi_ros.conversions import image_msg_to_rgb
    msg = Image(encoding='yuv422', height=2, width=2, step=4)
    msg.data = bytes(8)
    with pytest.raises(ValueError, match='encoding'):
        image_msg_to_rgb(msg)
    msg = Image(encoding='rgb8', height=4, width=4, step=12)
    msg.data = bytes(20)
    with pytest.raises(ValueError, match='data'):
        image_msg_to_rgb(msg)
    comp = CompressedImage(format='png')
    comp.data = b'\x89PNG\r\n\x1a\n' + bytes(10)
    with pytest.raises(ValueError, match='data'):
        image_msg_to_rgb(comp)
    comp.format = 'theora'
    with pytest.raises(ValueError, match='format'):
        image_msg_to_rgb(comp)


def test_feature_latent_and_chunk_round_trips():
    from defi_ros.conversions import (
        chunk_from_msg,
        chunk_to_msg,
        features_from_msg,
        features_to_msg,
        latent_from_msg,
        latent_to_msg,
        ns_to_stamp,
        stamp_to_ns,
    )
    assert stamp_to_ns(ns_to_stamp(1_700_000_000_123_456_789)) == 1_700_000_000_123_456_789
    feats = np.random.default_rng(0).standard_normal((4, 8, 16)).astype(np.float32)
    msg = features_to_msg(feats, 5, 'open', [1, 2, 3, 4])
    np.testing.assert_array_equal(features_from_msg(msg), feats)
    msg.shape = [4, 8, 15]
    with pytest.raises(ValueError, match='data'):
        features_from_msg(msg)
    codes, tokens = latent_from_msg(latent_to_msg(np.array([3, 1]), np.ones((2, 5)), 7))
    assert codes.tolist() == [3, 1] and tokens.shape == (2, 5)
    chunk = chunk_from_msg(chunk_to_msg(np.arange(6).reshape(3, 2), 11, 0.05, ['x', 'y'], 'go'))
    assert chunk.stamp_ns == 11 and chunk.dt_s == pytest.approx(0.05)
    assert chunk.actions.tolist() == [[0, 1], [2, 3], [4, 5]] and chunk.names == ('x', 'y')


def test_policy_features_are_checked_against_the_checkpoint_config():
    from types import SimpleNamespace

    from defi_ros.conversions import features_to_msg, policy_features_from_msg
    cfg = SimpleNamespace(num_future_frames=4, feature_dim=16)
    feats = np.zeros((4, 8, 16), np.float32)
    got, instruction = policy_features_from_msg(features_to_msg(feats, 5, 'open the drawer'), cfg, 'defi/ff')
    assert got.shape == (4, 8, 16) and instruction == 'open the drawer'
    with pytest.raises(ValueError, match=r'defi/ff: shape \[4, 8, 16\] has C=16, the checkpoint expects C=32'):
        policy_features_from_msg(features_to_msg(feats, 5, 'go'), SimpleNamespace(num_future_frames=4,
                                                                                     feature_dim=32), 'defi/ff')
    with pytest.raises(ValueError, match=r'defi/ff: shape .* is not \[T=2'):
        policy_features_from_msg(features_to_msg(feats, 5, 'go'), SimpleNamespace(num_future_frames=2), 'defi/ff')
    with pytest.raises(ValueError, match='defi/ff: empty instruction'):
        policy_features_from_msg(features_to_msg(feats, 5, '  '), cfg, 'defi/ff')
    bad = features_to_msg(feats, 5, 'go')
    bad.shape = [4, 8, 15]
    with pytest.raises(ValueError, match='defi/ff: data'):
        policy_features_from_msg(bad, cfg, 'defi/ff')
