"""ROS image payloads <-> numpy RGB arrays, without cv_bridge and without ROS.

Used both by the data pipeline (rosbags messages) and by the ROS nodes (rclpy messages): callers
pass the plain fields (encoding, height, width, step, data), so no message type is imported here.
"""
from __future__ import annotations

import io

import numpy as np

__all__ = [
    'ImageDecodeError', 'SUPPORTED_ENCODINGS', 'decode_image', 'decode_compressed',
    'encode_image', 'resize_image',
]


class ImageDecodeError(ValueError):
    """A malformed image payload; the message names the offending field."""


# encoding -> (channels, bytes per channel)
_LAYOUT = {
    'rgb8': (3, 1), 'bgr8': (3, 1), 'rgba8': (4, 1), 'bgra8': (4, 1), 'mono8': (1, 1),
    '8UC1': (1, 1), '8UC3': (3, 1), '8UC4': (4, 1),
    'mono16': (1, 2), '16UC1': (1, 2),
}
SUPPORTED_ENCODINGS = tuple(_LAYOUT)


def _as_uint8_buffer(data) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8) if data.dtype != np.uint8 else data.reshape(-1)
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(data, dtype=np.uint8)
    # rclpy gives array.array('B') or a list of ints for uint8[] fields
    try:
        return np.frombuffer(memoryview(data), dtype=np.uint8)
    except TypeError:
        return np.asarray(data, dtype=np.uint8)


def decode_image(encoding: str, height: int, width: int, step: int, data,
                 is_bigendian: int = 0) -> np.ndarray:
    """Decode a sensor_msgs/Image payload to uint8 RGB [H, W, 3].

    Respects `step` (row stride with padding). 8UC3 is read as bgr8, 8UC4 as bgra8 (OpenCV's order);
    16-bit mono is scaled to 8 bits by its top byte.
    """
    enc = str(encoding).strip()
    if enc not in _LAYOUT:
        raise ImageDecodeError(
            f'encoding: unsupported image encoding {encoding!r} (supported: {", ".join(SUPPORTED_ENCODINGS)})')
    channels, depth = _LAYOUT[enc]
    height, width, step = int(height), int(width), int(step)
    if height <= 0 or width <= 0:
        raise ImageDecodeError(f'height/width: image size must be positive, got {height}x{width}')
    row_bytes = width * channels * depth
    if step < row_bytes:
        raise ImageDecodeError(
            f'step: {step} bytes per row is less than width*channels*bytes = {row_bytes} for {enc}')
    buf = _as_uint8_buffer(data)
    # the last row need not carry its padding
    needed = step * (height - 1) + row_bytes
    if buf.size < needed:
        raise ImageDecodeError(
            f'data: {buf.size} bytes, but {height} rows of step {step} need at least {needed}')
    if buf.size >= step * height:
        rows = buf[:step * height].reshape(height, step)
    else:
        rows = np.lib.stride_tricks.as_strided(buf, shape=(height, step), strides=(step, 1))
    pixels = rows[:, :row_bytes]
    if depth == 2:
        pix16 = pixels.reshape(height, width, 2)
        high = pix16[..., 0] if is_bigendian else pix16[..., 1]
        return np.repeat(np.ascontiguousarray(high)[..., None], 3, axis=2)
    pixels = pixels.reshape(height, width, channels)
    if channels == 1:
        return np.repeat(pixels, 3, axis=2)
    if enc in ('rgb8',):
        return np.ascontiguousarray(pixels)
    if enc in ('rgba8',):
        return np.ascontiguousarray(pixels[..., :3])
    # bgr8 / bgra8 / 8UC3 / 8UC4
    return np.ascontiguousarray(pixels[..., 2::-1])


def decode_compressed(format: str, data) -> np.ndarray:  # noqa: A002 - the ROS field name
    """Decode a sensor_msgs/CompressedImage payload (jpeg or png) to uint8 RGB [H, W, 3]."""
    from PIL import Image, UnidentifiedImageError
    fmt = str(format).lower()
    # format is e.g. 'jpeg', 'png', 'rgb8; jpeg compressed bgr8'
    if fmt and not any(k in fmt for k in ('jpeg', 'jpg', 'png')):
        raise ImageDecodeError(f'format: unsupported compressed format {format!r} (jpeg or png)')
    buf = _as_uint8_buffer(data)
    if buf.size == 0:
        raise ImageDecodeError('data: empty compressed image')
    try:
        with Image.open(io.BytesIO(buf.tobytes())) as img:
            img.load()
            if img.mode == 'I;16' or img.mode == 'I':
                arr = np.asarray(img, dtype=np.uint32)
                arr8 = (arr >> 8).astype(np.uint8) if arr.max() > 255 else arr.astype(np.uint8)
                return np.repeat(arr8[..., None], 3, axis=2)
            return np.asarray(img.convert('RGB'), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f'data: cannot decode {format!r} image: {exc}') from exc


def encode_image(rgb: np.ndarray, encoding: str = 'rgb8') -> tuple[str, int, int, int, bytes]:
    """uint8 RGB [H, W, 3] -> (encoding, height, width, step, data) for a sensor_msgs/Image."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageDecodeError(f'rgb: expected uint8 [H, W, 3], got {rgb.dtype} {rgb.shape}')
    h, w, _ = rgb.shape
    if encoding == 'rgb8':
        out = rgb
    elif encoding == 'bgr8':
        out = rgb[..., ::-1]
    elif encoding == 'rgba8':
        out = np.concatenate([rgb, np.full((h, w, 1), 255, np.uint8)], axis=2)
    elif encoding == 'bgra8':
        out = np.concatenate([rgb[..., ::-1], np.full((h, w, 1), 255, np.uint8)], axis=2)
    elif encoding == 'mono8':
        out = rgb.mean(axis=2).round().astype(np.uint8)[..., None]
    else:
        raise ImageDecodeError(f'encoding: cannot encode to {encoding!r}')
    out = np.ascontiguousarray(out)
    return encoding, h, w, w * out.shape[2], out.tobytes()


def _area_downscale(rgb: np.ndarray, fy: int, fx: int) -> np.ndarray:
    """Exact rounded block mean for integer factors: strided uint16 adds (numpy's sum over
    non-contiguous axes is ~10x slower)."""
    lead = rgb.shape[:-3]
    h, w, c = rgb.shape[-3:]
    x = rgb.reshape(-1, h // fy, fy, w, c)
    rows = x[:, :, 0].astype(np.uint16)
    for i in range(1, fy):
        rows += x[:, :, i]
    rows = rows.reshape(-1, h // fy, w // fx, fx, c)
    total = rows[:, :, :, 0].copy()
    for j in range(1, fx):
        total += rows[:, :, :, j]
    n = fy * fx
    total += n // 2
    total //= n
    return total.astype(np.uint8).reshape(*lead, h // fy, w // fx, c)


def resize_image(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize uint8 [..., H, W, C] to [..., height, width, C].

    Integer downscale factors use an exact area average (reshape + mean: vectorized and fast over a
    whole batch of frames); anything else goes through Pillow's antialiased bilinear per frame, with a
    box pre-reduction for large factors (reducing_gap: ~2x faster, visually the same).
    """
    rgb = np.asarray(rgb)
    h, w = rgb.shape[-3], rgb.shape[-2]
    if (h, w) == (height, width):
        return rgb
    if h % height == 0 and w % width == 0:
        fy, fx = h // height, w // width
        if fy * fx <= 256:
            return _area_downscale(rgb, fy, fx)
        lead = rgb.shape[:-3]
        blocks = rgb.reshape(*lead, height, fy, width, fx, rgb.shape[-1])
        return blocks.mean(axis=(-4, -2)).round().astype(np.uint8)
    from PIL import Image
    flat = rgb.reshape(-1, h, w, rgb.shape[-1])
    out = np.empty((flat.shape[0], height, width, rgb.shape[-1]), np.uint8)
    for i, frame in enumerate(flat):
        img = Image.fromarray(frame if frame.shape[-1] != 1 else frame[..., 0])
        res = np.asarray(img.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=3.0))
        out[i] = res if res.ndim == 3 else res[..., None]
    return out.reshape(*rgb.shape[:-3], height, width, rgb.shape[-1])
