"""ROS message <-> numpy conversions for the DeFI nodes (no cv_bridge).

Image decoding is defi_core.image_codec; this module only reads the message fields. Every error
is a ValueError whose text names the field.
"""
from __future__ import annotations

import array
from typing import Literal, Optional, Sequence

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CompressedImage, Image

from defi_core.image_codec import decode_compressed, decode_image, encode_image, resize_image
from defi_core.runtime.chunk_schedule import Chunk
from defi_msgs.msg import ActionChunk, ForwardFeatures, LatentActions

__all__ = ['stamp_to_ns', 'ns_to_stamp', 'image_msg_to_rgb', 'rgb_to_image_msg', 'float32_array',
           'features_to_msg', 'features_from_msg', 'check_features', 'policy_features_from_msg',
           'latent_to_msg', 'latent_from_msg',
           'chunk_to_msg', 'chunk_from_msg', 'is_compressed_topic', 'string_from_cdr']


def stamp_to_ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> Time:
    ns = int(ns)
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def string_from_cdr(raw: bytes, max_bytes: int = 0) -> str:
    """The `data` of a serialized std_msgs/String, decoded strictly: rclpy's own conversion stops
    at an embedded NUL and replaces invalid UTF-8 without a word, so raw subscriptions use this.
    max_bytes > 0 refuses longer strings before decoding them."""
    raw = bytes(raw)
    if len(raw) < 8:
        raise ValueError(f'data: {len(raw)} bytes, not a serialized string')
    order: Literal['little', 'big'] = 'little' if raw[1] & 1 else 'big'   # CDR encapsulation id: odd = little endian
    offset = 8 if raw[1] in (8, 9) else 4           # delimited XCDR2 carries a DHEADER first
    n = int.from_bytes(raw[offset:offset + 4], order)
    body = raw[offset + 4:offset + 4 + n]
    if n < 1 or len(body) != n or body[-1] != 0:
        raise ValueError(f'data: truncated or malformed string ({len(raw)} bytes, length field {n})')
    if max_bytes > 0 and n - 1 > max_bytes:
        raise ValueError(f'data: {n - 1} bytes, more than the {max_bytes} allowed')
    text = body[:-1]
    if 0 in text:
        raise ValueError(f'data: contains a NUL character at byte {text.index(0)}')
    try:
        return text.decode('utf-8')
    except UnicodeDecodeError as exc:
        raise ValueError(f'data: not valid UTF-8 at byte {exc.start}') from None


def is_compressed_topic(topic: str) -> bool:
    """image_transport's convention: the compressed stream of X is published on X/compressed."""
    return topic.rstrip('/').endswith('/compressed') or topic == 'compressed'


def image_msg_to_rgb(msg, size: Optional[int] = None) -> np.ndarray:
    """sensor_msgs/Image or CompressedImage -> uint8 RGB [H, W, 3], resized to size x size."""
    if isinstance(msg, CompressedImage):
        rgb = decode_compressed(msg.format, msg.data)
    else:
        rgb = decode_image(msg.encoding, msg.height, msg.width, msg.step, msg.data,
                           msg.is_bigendian)
    if size and rgb.shape[:2] != (size, size):
        rgb = resize_image(rgb, size, size)
    return rgb


def rgb_to_image_msg(rgb: np.ndarray, stamp_ns: int, frame_id: str = '',
                     encoding: str = 'rgb8') -> Image:
    enc, h, w, step, data = encode_image(np.ascontiguousarray(rgb), encoding)
    msg = Image(encoding=enc, height=h, width=w, step=step, is_bigendian=0)
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = frame_id
    msg.data = data
    return msg


def float32_array(values) -> array.array:
    """numpy -> array.array('f'), the fast path for float32[] fields (a list would be slow)."""
    out = array.array('f')
    out.frombytes(np.ascontiguousarray(values, dtype=np.float32).tobytes())
    return out


def _float_view(data) -> np.ndarray:
    if isinstance(data, array.array):
        return np.frombuffer(data, dtype=np.float32)
    return np.asarray(data, dtype=np.float32)


def features_to_msg(features: np.ndarray, stamp_ns: int, instruction: str,
                    frame_offsets: Sequence[int] = (), frame_id: str = '') -> ForwardFeatures:
    features = np.asarray(features, dtype=np.float32)
    msg = ForwardFeatures()
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = frame_id
    msg.shape = [int(s) for s in features.shape]
    msg.data = float32_array(features)
    msg.frame_offsets = [int(o) for o in frame_offsets]
    msg.instruction = instruction
    return msg


def features_from_msg(msg: ForwardFeatures) -> np.ndarray:
    shape = tuple(int(s) for s in msg.shape)
    data = _float_view(msg.data)
    if not shape or any(s <= 0 for s in shape):
        raise ValueError(f'shape: expected positive dimensions, got {list(shape)}')
    if int(np.prod(shape)) != data.size:
        raise ValueError(f'data: {data.size} values do not fill shape {list(shape)}')
    return data.reshape(shape)


def check_features(feats: np.ndarray, cfg, topic: str) -> None:
    """Features must be [T, N, C] with the checkpoint's T and C; errors name the topic and field."""
    frames = int(getattr(cfg, 'feature_frames', cfg.num_future_frames))
    if feats.ndim != 3 or feats.shape[0] != frames:
        raise ValueError(f'{topic}: shape {list(feats.shape)} is not [T={frames}, N, C]')
    dim = getattr(cfg, 'feature_dim', None)
    if dim and feats.shape[2] != dim:
        raise ValueError(f'{topic}: shape {list(feats.shape)} has C={feats.shape[2]}, '
                         f'the checkpoint expects C={dim}')


def policy_features_from_msg(msg: ForwardFeatures, cfg, topic: str):
    """(features [T, N, C], instruction) of a ForwardFeatures message received on `topic`, checked
    against the checkpoint's config `cfg`; a ValueError naming the topic and the field otherwise."""
    try:
        feats = features_from_msg(msg)
    except ValueError as exc:
        raise ValueError(f'{topic}: {exc}') from None
    check_features(feats, cfg, topic)
    if not msg.instruction.strip():
        raise ValueError(f'{topic}: empty instruction field')
    return feats, msg.instruction


def latent_to_msg(codes: np.ndarray, tokens: np.ndarray, stamp_ns: int,
                  frame_id: str = '') -> LatentActions:
    tokens = np.asarray(tokens, dtype=np.float32)
    msg = LatentActions()
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = frame_id
    msg.codes = [int(c) for c in np.asarray(codes).reshape(-1)]
    msg.token_shape = [int(s) for s in tokens.shape]
    msg.tokens = float32_array(tokens)
    return msg


def latent_from_msg(msg: LatentActions):
    shape = tuple(int(s) for s in msg.token_shape)
    tokens = _float_view(msg.tokens)
    if not shape or int(np.prod(shape)) != tokens.size:
        raise ValueError(f'tokens: {tokens.size} values do not fill token_shape {list(shape)}')
    return np.asarray(msg.codes, dtype=np.int64), tokens.reshape(shape)


def chunk_to_msg(actions: np.ndarray, stamp_ns: int, dt: float, names: Sequence[str],
                 instruction: str = '', frame_id: str = '') -> ActionChunk:
    actions = np.asarray(actions, dtype=np.float32)
    horizon, action_dim = actions.shape
    msg = ActionChunk()
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = frame_id
    msg.dt = float(dt)
    msg.horizon = int(horizon)
    msg.action_dim = int(action_dim)
    msg.names = list(names)
    msg.data = float32_array(actions)
    msg.instruction = instruction
    return msg


def chunk_from_msg(msg: ActionChunk) -> Chunk:
    return Chunk.from_flat(stamp_to_ns(msg.header.stamp), float(msg.dt), int(msg.horizon),
                           int(msg.action_dim), _float_view(msg.data), list(msg.names),
                           msg.instruction)
