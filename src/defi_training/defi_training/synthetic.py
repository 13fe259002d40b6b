"""Synthetic rosbag2 recordings written with `rosbags` (tests, benchmarks, demos without a robot).

The content makes alignment checkable: camera sample i is an image whose red channel is
i % 256 everywhere (it survives area resizing exactly), joint state sample i has position[0] = i,
and command sample i has action[0] = i. Header stamps are the sample times; the bag receive time
is `latency_s` later.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from defi_core.image_codec import encode_image
from defi_training.sources.msg_types import typestore

if TYPE_CHECKING:
    from rosbags.interfaces import Connection

__all__ = ['SyntheticBag', 'write_synthetic_bag', 'synthetic_image']

START_NS = 1_700_000_000_000_000_000


def synthetic_image(i: int, size: int, camera_index: int = 0) -> np.ndarray:
    """uint8 [size, size, 3]: red = i % 256, green = camera marker, blue = a diagonal gradient."""
    img = np.empty((size, size, 3), np.uint8)
    img[..., 0] = i % 256
    img[..., 1] = (40 * camera_index + 20) % 256
    yy, xx = np.mgrid[0:size, 0:size]
    img[..., 2] = ((xx + yy) * 255 // max(1, 2 * size - 2)).astype(np.uint8)
    return img


@dataclass
class SyntheticBag:
    path: Path
    camera_times_ns: dict[str, np.ndarray] = field(default_factory=dict)
    state_times_ns: np.ndarray | None = None
    action_times_ns: np.ndarray | None = None
    instruction_times_ns: list[int] = field(default_factory=list)
    instructions: list[str] = field(default_factory=list)


def _times(start_ns: int, duration_s: float, rate: float, jitter: float, rng, gaps) -> np.ndarray:
    n = int(np.floor(duration_s * rate + 1e-9))
    t = start_ns + np.round(np.arange(n) * 1e9 / rate).astype(np.int64)
    if jitter:
        t = t + np.round(rng.uniform(-jitter, jitter, n) * 1e9 / rate).astype(np.int64)
        t = np.sort(t)
    for g0, g1 in gaps or ():
        keep = (t < start_ns + int(g0 * 1e9)) | (t >= start_ns + int(g1 * 1e9))
        t = t[keep]
    return t


def write_synthetic_bag(
    path: str | Path, *, storage: str = 'mcap', compression: str | None = None,
    duration_s: float = 3.0, fps: float = 10.0, image_size: int = 32, cameras=('front',),
    encoding: str = 'rgb8', step_padding: int = 0, compressed_format: str | None = None,
    state_dim: int = 4, action: str | None = 'chunk', action_dim: int = 4, chunk_horizon: int = 1,
    instructions=('push the block',), instruction_in_metadata: str | None = None,
    camera_rate: float | None = None, state_rate: float | None = None, action_rate: float | None = None,
    jitter: float = 0.0, camera_gaps=(), latency_s: float = 0.005, success: bool | None = True,
    header_stamps: bool = True, topic_prefix: str = '/', seed: int = 0, distro: str = 'kilted',
) -> SyntheticBag:
    """Write a bag like the simulator records: camera/<name>/image_raw, joint_states,
    defi/action_command (ActionChunk | TwistStamped | JointTrajectory | None), instruction,
    sim/success. With several instructions the bag holds one episode per instruction (evenly spaced).
    """
    from rosbags.rosbag2 import Writer
    from rosbags.rosbag2.enums import CompressionFormat, CompressionMode, StoragePlugin

    store = typestore(distro)
    T = store.types
    Time = T['builtin_interfaces/msg/Time']
    Header = T['std_msgs/msg/Header']
    rng = np.random.default_rng(seed)
    path = Path(path)
    out = SyntheticBag(path=path)
    lat = int(latency_s * 1e9)

    def header(t_ns: int, frame: str = ''):
        if not header_stamps:
            return Header(stamp=Time(sec=0, nanosec=0), frame_id=frame)
        return Header(stamp=Time(sec=int(t_ns // 1_000_000_000), nanosec=int(t_ns % 1_000_000_000)), frame_id=frame)

    plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
    writer = Writer(path, version=9, storage_plugin=plugin)
    if compression:
        modes = {'file': CompressionMode.FILE, 'message': CompressionMode.MESSAGE,
                 'storage': CompressionMode.STORAGE}   # storage: zstd chunks inside mcap / sqlite3
        if compression not in modes:
            raise ValueError(f'compression: {compression!r} is not one of {sorted(modes)}')
        writer.set_compression(modes[compression], CompressionFormat.ZSTD)
    if instruction_in_metadata is not None:
        writer.set_custom_data('instruction', instruction_in_metadata)
    records: list[tuple[int, Connection, bytes]] = []  # (receive time, connection, cdr)
    with writer:
        def conn(topic, msgtype):
            return writer.add_connection(topic_prefix + topic, msgtype, typestore=store)

        for ci, cam in enumerate(cameras):
            if compressed_format:
                c = conn(f'camera/{cam}/image_raw/compressed', 'sensor_msgs/msg/CompressedImage')
            else:
                c = conn(f'camera/{cam}/image_raw', 'sensor_msgs/msg/Image')
            times = _times(START_NS, duration_s, camera_rate or fps, jitter, rng, camera_gaps)
            out.camera_times_ns[cam] = times
            for i, t in enumerate(times):
                rgb = synthetic_image(i, image_size, ci)
                if compressed_format:
                    from PIL import Image as PILImage
                    buf = io.BytesIO()
                    PILImage.fromarray(rgb).save(buf, format='PNG' if compressed_format == 'png' else 'JPEG',
                                                 quality=95)
                    msg = T['sensor_msgs/msg/CompressedImage'](
                        header=header(int(t), cam), format=compressed_format,
                        data=np.frombuffer(buf.getvalue(), np.uint8))
                else:
                    msg = _image_msg(T, header(int(t), cam), rgb, encoding, step_padding)
                records.append((int(t) + lat, c, store.serialize_cdr(msg, msg.__msgtype__)))
        if state_dim:
            c = conn('joint_states', 'sensor_msgs/msg/JointState')
            times = _times(START_NS, duration_s, state_rate or fps, jitter, rng, ())
            out.state_times_ns = times
            names = [f'joint{j}' for j in range(state_dim)]
            for i, t in enumerate(times):
                pos = np.array([i] + [np.sin(i / 5 + j) for j in range(1, state_dim)], np.float64)
                msg = T['sensor_msgs/msg/JointState'](
                    header=header(int(t)), name=names, position=pos, velocity=np.zeros(state_dim),
                    effort=np.zeros(0))
                records.append((int(t) + lat, c, store.serialize_cdr(msg, msg.__msgtype__)))
        if action:
            times = _times(START_NS, duration_s, action_rate or fps, jitter, rng, ())
            out.action_times_ns = times
            if action == 'chunk':
                c = conn('defi/action_command', 'defi_msgs/msg/ActionChunk')
            elif action == 'twist':
                c = conn('defi/action_command', 'geometry_msgs/msg/TwistStamped')
            elif action == 'trajectory':
                c = conn('defi/action_command', 'trajectory_msgs/msg/JointTrajectory')
            else:
                raise ValueError(f'action: unknown kind {action!r}')
            for i, t in enumerate(times):
                vec = np.array([i] + [0.1 * j + 0.01 * i for j in range(1, action_dim)], np.float64)
                if action == 'chunk':
                    data = np.concatenate([vec + 1000 * h for h in range(chunk_horizon)]).astype(np.float32)
                    msg = T['defi_msgs/msg/ActionChunk'](
                        header=header(int(t)), dt=float(1 / fps), horizon=chunk_horizon, action_dim=action_dim,
                        names=[f'a{j}' for j in range(action_dim)], data=data, instruction='')
                elif action == 'twist':
                    v = np.resize(vec, 6)
                    Vector3 = T['geometry_msgs/msg/Vector3']
                    msg = T['geometry_msgs/msg/TwistStamped'](
                        header=header(int(t)), twist=T['geometry_msgs/msg/Twist'](
                            linear=Vector3(x=v[0], y=v[1], z=v[2]), angular=Vector3(x=v[3], y=v[4], z=v[5])))
                else:
                    Duration = T['builtin_interfaces/msg/Duration']
                    pt = T['trajectory_msgs/msg/JointTrajectoryPoint'](
                        positions=vec, velocities=np.zeros(0), accelerations=np.zeros(0), effort=np.zeros(0),
                        time_from_start=Duration(sec=0, nanosec=int(1e9 / fps)))
                    msg = T['trajectory_msgs/msg/JointTrajectory'](
                        header=header(int(t)), joint_names=[f'joint{j}' for j in range(action_dim)], points=[pt])
                records.append((int(t) + lat, c, store.serialize_cdr(msg, msg.__msgtype__)))
        if instructions:
            c = conn('instruction', 'std_msgs/msg/String')
            for k, text in enumerate(instructions):
                t = START_NS + int(k * duration_s / len(instructions) * 1e9)
                out.instruction_times_ns.append(t)
                out.instructions.append(text)
                msg = T['std_msgs/msg/String'](data=text)
                records.append((t, c, store.serialize_cdr(msg, msg.__msgtype__)))
        if success is not None:
            c = conn('sim/success', 'std_msgs/msg/Bool')
            t_end = START_NS + int(duration_s * 1e9) - 1
            for t, val in ((START_NS, False), (t_end, bool(success))):
                msg = T['std_msgs/msg/Bool'](data=val)
                records.append((t, c, store.serialize_cdr(msg, msg.__msgtype__)))
        records.sort(key=lambda r: r[0])
        for t, c, cdr in records:
            writer.write(c, t, cdr)
    return out


def _image_msg(T, header, rgb: np.ndarray, encoding: str, pad: int):
    """A sensor_msgs/Image of `rgb` (image_codec.encode_image) with `pad` bytes after each row.

    mono8 carries the red channel (the sample index), so alignment stays checkable in grey too.
    """
    if encoding == 'mono8':
        rgb = np.repeat(rgb[..., :1], 3, axis=2)      # grey whose value is the red channel
    encoding, h, w, step, data = encode_image(rgb, encoding)
    buf = np.zeros((h, step + pad), np.uint8)
    buf[:, :step] = np.frombuffer(data, np.uint8).reshape(h, step)
    return T['sensor_msgs/msg/Image'](header=header, height=h, width=w, encoding=encoding, is_bigendian=0,
                                      step=step + pad, data=buf.reshape(-1))
