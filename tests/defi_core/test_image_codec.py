"""decode_image / decode_compressed / resize_image on real payloads."""
import io

import numpy as np
import pytest
from PIL import Image

from defi_core.image_codec import ImageDecodeError, decode_compressed, decode_image, encode_image, resize_image

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)


def _padded(pixels: np.ndarray, pad: int) -> tuple[int, bytes]:
    h = pixels.shape[0]
    rows = pixels.reshape(h, -1)
    step = rows.shape[1] + pad
    out = np.zeros((h, step), np.uint8)
    out[:, :rows.shape[1]] = rows
    out[:, rows.shape[1]:] = 0xAB  # padding must never leak into pixels
    return step, out.tobytes()


@pytest.mark.parametrize('pad', [0, 3])
def test_rgb8_bgr8_rgba8_bgra8_mono8_with_step_padding(pad):
    step, data = _padded(RGB, pad)
    assert np.array_equal(decode_image('rgb8', 5, 7, step, data), RGB)
    step, data = _padded(RGB[..., ::-1].copy(), pad)
    assert np.array_equal(decode_image('bgr8', 5, 7, step, data), RGB)
    rgba = np.concatenate([RGB, np.full((5, 7, 1), 9, np.uint8)], axis=2)
    step, data = _padded(rgba, pad)
    assert np.array_equal(decode_image('rgba8', 5, 7, step, data), RGB)
    bgra = np.concatenate([RGB[..., ::-1], np.full((5, 7, 1), 9, np.uint8)], axis=2)
    step, data = _padded(bgra, pad)
    assert np.array_equal(decode_image('bgra8', 5, 7, step, data), RGB)
    mono = RGB[..., 0].copy()
    step, data = _padded(mono, pad)
    out = decode_image('mono8', 5, 7, step, data)
    assert out.shape == (5, 7, 3) and np.array_equal(out[..., 1], mono) and np.array_equal(out[..., 2], mono)


def test_last_row_without_padding_and_array_inputs():
    step, data = _padded(RGB, 4)
    short = data[:-4]
    assert np.array_equal(decode_image('rgb8', 5, 7, step, short), RGB)
    assert np.array_equal(decode_image('rgb8', 5, 7, 21, np.frombuffer(RGB.tobytes(), np.uint8)), RGB)
    assert np.array_equal(decode_image('rgb8', 5, 7, 21, bytearray(RGB.tobytes())), RGB)


def test_mono16_uses_high_byte_and_endianness():
    vals = np.array([[0x1234, 0xFF00]], dtype='<u2')
    out = decode_image('mono16', 1, 2, 4, vals.tobytes(), is_bigendian=0)
    assert out[0, 0, 0] == 0x12 and out[0, 1, 0] == 0xFF
    out = decode_image('mono16', 1, 2, 4, vals.astype('>u2').tobytes(), is_bigendian=1)
    assert out[0, 0, 0] == 0x12


@pytest.mark.parametrize('args, field', [
    (('yuv422', 5, 7, 21, RGB.tobytes()), 'encoding'),
    (('rgb8', 5, 7, 20, RGB.tobytes()), 'step'),
    (('rgb8', 5, 7, 21, RGB.tobytes()[:-1]), 'data'),
    (('rgb8', 0, 7, 21, b''), 'height'),
])
def test_malformed_raises_naming_the_field(args, field):
    with pytest.raises(ImageDecodeError, match=field):
        decode_image(*args)
    assert issubclass(ImageDecodeError, ValueError)


def test_compressed_png_lossless_and_jpeg_close():
    buf = io.BytesIO()
    Image.fromarray(RGB).save(buf, format='PNG')
    assert np.array_equal(decode_compressed('png', buf.getvalue()), RGB)
    smooth = np.tile(np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None], (32, 1, 3))
    buf = io.BytesIO()
    Image.fromarray(smooth).save(buf, format='JPEG', quality=95)
    out = decode_compressed('rgb8; jpeg compressed bgr8', buf.getvalue())
    assert out.shape == (32, 32, 3)
    assert np.abs(out.astype(int) - smooth).mean() < 3
    with pytest.raises(ImageDecodeError, match='data'):
        decode_compressed('jpeg', b'not a jpeg at all')
    with pytest.raises(ImageDecodeError, match='format'):
        decode_compressed('tiff', buf.getvalue())


@pytest.mark.parametrize('enc', ['rgb8', 'bgr8', 'rgba8', 'bgra8'])
def test_encode_decode_round_trip(enc):
    encoding, h, w, step, data = encode_image(RGB, enc)
    assert np.array_equal(decode_image(encoding, h, w, step, data), RGB)


def test_resize_integer_factor_is_area_mean_over_batches():
    frames = RNG.integers(0, 256, size=(3, 8, 12, 3), dtype=np.uint8)
    out = resize_image(frames, 4, 6)
    expect = frames.reshape(3, 4, 2, 6, 2, 3).astype(np.float64).mean(axis=(2, 4))
    assert out.shape == (3, 4, 6, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(np.float64) - expect).max() <= 0.5
    # non-integer factor goes through Pillow and keeps shape / dtype
    out2 = resize_image(frames[0], 5, 5)
    assert out2.shape == (5, 5, 3) and out2.dtype == np.uint8
    assert resize_image(frames, 8, 12) is frames
