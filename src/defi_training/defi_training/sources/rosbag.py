"""rosbag2 source (mcap / sqlite3, zstd file or message compression) read with `rosbags`, no ROS.

Every stream is resampled to the fixed rate of the TopicMap with the as-of rule of
defi_core.timesync (latest sample at or before t; older than max_age_s = a gap; never a future
sample). Stamps: header.stamp where the message has a non-zero one (clock 'auto'), else the bag's
receive time; the clock used per topic goes into Episode.extra['clock'].
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from defi_core.image_codec import ImageDecodeError, decode_compressed, decode_image, resize_image
from defi_core.timesync import asof_indices, find_gaps, fixed_rate_times

from ..topic_map import TopicMap
from . import Episode, Report, msg_types

__all__ = ['BadData', 'make_typestore', 'defi_msgs_dir', 'read_bag', 'IMAGE_TYPES', 'STATE_TYPES',
           'ACTION_TYPES']

IMAGE_TYPES = ('sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage')
STATE_TYPES = ('sensor_msgs/msg/JointState', 'std_msgs/msg/Float32MultiArray',
               'std_msgs/msg/Float64MultiArray')
ACTION_TYPES = ('defi_msgs/msg/ActionChunk', 'geometry_msgs/msg/TwistStamped', 'geometry_msgs/msg/Twist',
                'trajectory_msgs/msg/JointTrajectory', 'std_msgs/msg/Float32MultiArray',
                'std_msgs/msg/Float64MultiArray')
TWIST_NAMES = ['linear.x', 'linear.y', 'linear.z', 'angular.x', 'angular.y', 'angular.z']
_RESIZE_BATCH = 64


class BadData(ValueError):
    """The input cannot be used; the message says why (it becomes the skip line)."""


# the shared, cached typestore of sources.msg_types (with defi_msgs registered) and msg folder, under the names
# this module has always offered
make_typestore = msg_types.typestore
defi_msgs_dir = msg_types.defi_msgs_dir


def _stamp_ns(msg) -> int:
    header = getattr(msg, 'header', None)
    if header is None:
        return 0
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


class _Stream:
    """Samples of one topic in one role: receive times, header stamps and decoded values."""

    def __init__(self, topic: str, msgtype: str):
        self.topic = topic
        self.msgtype = msgtype
        self.recv: list[int] = []
        self.stamps: list[int] = []
        self.values: Any = []              # a list while reading; images and vectors become arrays
        self.names: list[str] = []
        self.clock = 'receive'
        self.times = np.zeros(0, np.int64)     # sorted sample times, set by finish()
        self.order = np.zeros(0, np.int64)     # the order that sorts the samples, set by finish()

    def finish(self, clock: str) -> None:
        recv = np.asarray(self.recv, dtype=np.int64)
        stamps = np.asarray(self.stamps, dtype=np.int64)
        has_header = stamps.size > 0 and bool(np.all(stamps > 0))
        if clock == 'header' and not has_header:
            raise BadData(f"topic '{self.topic}' ({self.msgtype}) has no header stamps but clock is 'header'")
        use_header = has_header and clock in ('auto', 'header')
        self.clock = 'header' if use_header else 'receive'
        t = stamps if use_header else recv
        self.order = np.argsort(t, kind='stable')
        self.times = t[self.order]


def _connections_by_topic(reader) -> dict[str, list]:
    out: dict[str, list] = defaultdict(list)
    for c in reader.connections:
        out[c.topic.lstrip('/')].append(c)
    return out


def _check_type(topic: str, conns: list, allowed: tuple[str, ...], role: str) -> str:
    types = {c.msgtype for c in conns}
    if len(types) != 1:
        raise BadData(f"type mismatch: topic '{topic}' ({role}) has several types {sorted(types)}")
    t = types.pop()
    if allowed and t not in allowed:
        raise BadData(f"type mismatch: topic '{topic}' ({role}) is {t}, expected one of {', '.join(allowed)}")
    return t


class _ImageDecoder:
    """Decodes Image/CompressedImage messages and resizes them in vectorized batches."""

    def __init__(self, topic: str, size: int | None):
        self.topic = topic
        self.size = size
        self.pending: list[np.ndarray] = []
        self.done: list[np.ndarray] = []
        self.native_shape: tuple[int, int] | None = None

    def add(self, msg, compressed: bool, index: int) -> None:
        try:
            if compressed:
                rgb = decode_compressed(msg.format, msg.data)
            else:
                rgb = decode_image(msg.encoding, msg.height, msg.width, msg.step, msg.data, msg.is_bigendian)
        except ImageDecodeError as exc:
            raise BadData(f"topic '{self.topic}' message {index}: {exc}") from exc
        if self.native_shape is None:
            self.native_shape = rgb.shape[:2]
        elif rgb.shape[:2] != self.native_shape and self.size is None:
            raise BadData(f"topic '{self.topic}' message {index}: image size changed from "
                          f'{self.native_shape} to {rgb.shape[:2]}')
        if self.pending and rgb.shape != self.pending[0].shape:
            self.flush()
        self.pending.append(rgb)
        if len(self.pending) >= _RESIZE_BATCH:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        batch = np.stack(self.pending)
        self.pending = []
        if self.size is not None:
            batch = resize_image(batch, self.size, self.size)
        self.done.append(batch)

    def result(self) -> np.ndarray:
        self.flush()
        if not self.done:
            return np.zeros((0, 1, 1, 3), np.uint8)
        return np.concatenate(self.done) if len(self.done) > 1 else self.done[0]


def _vector_from(msg, msgtype: str, fields: tuple[str, ...], topic: str, index: int):
    """(values, names) for a state or action message."""
    if msgtype == 'sensor_msgs/msg/JointState':
        parts = []
        names = []
        for f in fields:
            arr = np.asarray(getattr(msg, f), dtype=np.float64)
            if arr.size != len(msg.name):
                raise BadData(f"topic '{topic}' message {index}: JointState.{f} has {arr.size} values "
                              f'for {len(msg.name)} names')
            parts.append(arr)
            names += [f'{n}.{f}' if len(fields) > 1 else str(n) for n in msg.name]
        return np.concatenate(parts) if parts else np.zeros(0), names, list(msg.name)
    if msgtype.endswith('MultiArray'):
        arr = np.asarray(msg.data, dtype=np.float64).reshape(-1)
        return arr, [], None
    if msgtype == 'defi_msgs/msg/ActionChunk':
        h, a = int(msg.horizon), int(msg.action_dim)
        data = np.asarray(msg.data, dtype=np.float64)
        if h < 1 or a < 1 or data.size != h * a:
            raise BadData(f"topic '{topic}' message {index}: ActionChunk data has {data.size} values, "
                          f'expected horizon*action_dim = {h}*{a}')
        return data[:a], [str(n) for n in msg.names], None
    if msgtype in ('geometry_msgs/msg/TwistStamped', 'geometry_msgs/msg/Twist'):
        tw = msg.twist if msgtype.endswith('Stamped') else msg
        return (np.array([tw.linear.x, tw.linear.y, tw.linear.z, tw.angular.x, tw.angular.y, tw.angular.z]),
                list(TWIST_NAMES), None)
    if msgtype == 'trajectory_msgs/msg/JointTrajectory':
        if not msg.points:
            raise BadData(f"topic '{topic}' message {index}: JointTrajectory has no points")
        p = msg.points[0]
        arr = np.asarray(p.positions if len(p.positions) else p.velocities, dtype=np.float64)
        if arr.size != len(msg.joint_names):
            raise BadData(f"topic '{topic}' message {index}: JointTrajectory point has {arr.size} values "
                          f'for {len(msg.joint_names)} joint names')
        return arr, [str(n) for n in msg.joint_names], None
    raise BadData(f"type mismatch: topic '{topic}' is {msgtype}")


def _stack_vectors(stream: _Stream) -> np.ndarray:
    values = stream.values
    if not values:
        return np.zeros((0, 0), np.float32)
    dims = {v.size for v in values}
    if len(dims) != 1:
        raise BadData(f"topic '{stream.topic}': vector length changes within the bag ({sorted(dims)})")
    return np.stack(values).astype(np.float32)


def _image_topics(by_topic: dict) -> str:
    found = sorted(t for t, conns in by_topic.items() if any(c.msgtype in IMAGE_TYPES for c in conns))
    return ', '.join(found) or 'none'


def _align_qos(reader) -> list[str]:
    """Topics whose QoS text in metadata.yaml differs from the storage file's (rosbag2's own test
    bags talker, convert_a): rosbags pairs the two connections by it and then yields none of their
    messages. The storage file's text is taken instead; returns those topics."""
    fixed: set[str] = set()
    bag = getattr(reader, 'storage', None)          # rosbags' reader of a bag folder
    if bag is None:
        return []
    for storage in getattr(bag, 'storages', None) or []:
        for i, conn in enumerate(bag.connections):   # the list reader.connections returns
            same = [x for x in storage.connections if x.topic == conn.topic and x.msgtype == conn.msgtype]
            if same and all(x.ext != conn.ext for x in same):
                bag.connections[i] = conn._replace(ext=same[0].ext)
                fixed.add(conn.topic)
    return sorted(fixed)


def _qos_warning(topics: list[str]) -> str:
    return (f"the QoS of {', '.join(topics)} in metadata.yaml differs from the storage file's; "
            "read with the storage file's")


def _read_streams(path: Path, tm: TopicMap, store, report: Report | None = None) -> tuple[dict, dict]:
    """Read every needed topic of the bag once. Returns (streams by role, bag info)."""
    from rosbags.rosbag2 import Reader
    with Reader(path) as reader:
        fixed = _align_qos(reader)
        if fixed and report is not None:
            report.warn(path, _qos_warning(fixed))
        by_topic = _connections_by_topic(reader)
        available = ', '.join(sorted(by_topic)) or 'none'
        # role -> (topic, allowed types); TopicMap's checks guarantee the topics a role needs
        roles: dict[str, tuple[str | None, tuple[str, ...]]] = {}
        for cam, topic in tm.cameras.items():
            if not topic:           # e.g. a config for video files, where only the name matters
                raise BadData(f"camera '{cam}' has no topic in the data config: set cameras.{cam}=<image "
                              f'topic> (image topics in the bag: {_image_topics(by_topic)})')
            roles[f'camera:{cam}'] = (topic, IMAGE_TYPES)
        if tm.state.topic:
            roles['state'] = (tm.state.topic, STATE_TYPES)
        if tm.action.source == 'command':
            roles['action'] = (tm.action.topic, ACTION_TYPES)
        optional = {}
        if tm.task.topic:
            optional['task'] = (tm.task.topic, ('std_msgs/msg/String',))
        if tm.success_topic:
            optional['success'] = (tm.success_topic, ('std_msgs/msg/Bool',))
        if tm.episode.split == 'topic':
            roles['episode'] = (tm.episode.topic, ())
        required_state = tm.action.source in ('next_state', 'state_delta')
        streams: dict[str, _Stream] = {}
        topic_roles: dict[str, list[str]] = defaultdict(list)
        for role, (topic, allowed) in roles.items():
            if topic not in by_topic:
                if role == 'state' and not required_state:
                    continue  # state is optional unless actions come from it
                raise BadData(f"missing topic '{topic}' ({role}); the bag has: {available}")
            t = _check_type(topic, by_topic[topic], allowed, role)
            streams[role] = _Stream(topic, t)
            topic_roles[topic].append(role)
        for role, (topic, allowed) in optional.items():
            if topic in by_topic:
                t = _check_type(topic, by_topic[topic], allowed, role)
                streams[role] = _Stream(topic, t)
                topic_roles[topic].append(role)
        decoders = {r: _ImageDecoder(s.topic, tm.image_size) for r, s in streams.items() if r.startswith('camera:')}
        conns = [c for t in topic_roles for c in by_topic[t]]
        counts: dict[str, int] = defaultdict(int)
        joint_order: dict[str, list[str]] = {}
        for conn, recv_ns, raw in reader.messages(connections=conns):
            topic = conn.topic.lstrip('/')
            n = counts[topic]
            counts[topic] += 1
            try:
                msg = store.deserialize_cdr(raw, conn.msgtype)
            except Exception as exc:
                raise BadData(f"topic '{topic}' message {n}: cannot deserialize {conn.msgtype}: {exc}") from exc
            stamp = _stamp_ns(msg)
            for role in topic_roles[topic]:
                s = streams[role]
                s.recv.append(recv_ns)
                s.stamps.append(stamp)
                if role.startswith('camera:'):
                    decoders[role].add(msg, conn.msgtype.endswith('CompressedImage'), n)
                elif role in ('state', 'action'):
                    fields = tm.state.fields if role == 'state' else ('position',)
                    vec, names, joints = _vector_from(msg, conn.msgtype, fields, topic, n)
                    if joints is not None:  # JointState: keep one joint order for the whole bag
                        first = joint_order.setdefault(role, joints)
                        if joints != first:
                            if sorted(joints) != sorted(first):
                                raise BadData(f"topic '{topic}' message {n}: joint names changed "
                                              f'from {first} to {joints}')
                            per = len(joints)
                            perm = [joints.index(j) for j in first]
                            vec = np.concatenate([vec[k * per:(k + 1) * per][perm]
                                                  for k in range(len(fields))])
                            names = s.names
                    if not s.names:
                        s.names = names
                    s.values.append(vec)
                elif role == 'task':
                    s.values.append(str(msg.data))
                elif role == 'success':
                    s.values.append(bool(msg.data))
                else:  # episode marker: a String's text names the episode's task
                    s.values.append(str(msg.data) if hasattr(msg, 'data') and isinstance(msg.data, str) else None)
        custom = getattr(getattr(reader.storage, 'metadata', None), 'custom', None) or {}
        info = {'custom': dict(custom), 'counts': dict(counts)}
    for role, s in streams.items():
        if role.startswith('camera:'):
            s.values = decoders[role].result()
        elif role in ('state', 'action'):
            s.values = _stack_vectors(s)
        s.finish(tm.clock)
        if len(s.recv) == 0 and role not in ('task', 'success'):
            raise BadData(f"topic '{s.topic}' ({role}) has no messages")
    return streams, info


def _apply_order(stream: _Stream):
    if isinstance(stream.values, np.ndarray):
        return stream.values[stream.order]
    return [stream.values[i] for i in stream.order]


def _bag_task(info: dict) -> str | None:
    """The instruction from the bag's metadata (custom_data), if the recorder stored one."""
    custom = info.get('custom') or {}
    for key in ('instruction', 'task'):
        if custom.get(key):
            return str(custom[key])
    return None


def read_bag(path: str | Path, tm: TopicMap, report: Report, typestore=None) -> Iterator[Episode]:
    """Episodes of one bag (a bag folder, or a single .mcap/.db3 file); bad bags are skipped."""
    path = Path(path)
    store = typestore or make_typestore()
    try:
        streams, info = _read_streams(path, tm, store, report)
    except BadData as exc:
        report.skip(path, str(exc))
        return
    except Exception as exc:  # truncated/corrupt storage, unreadable metadata ...
        report.skip(path, f'cannot read bag: {type(exc).__name__}: {exc}')
        return
    try:
        episodes = list(_episodes(path, tm, streams, info, report))
    except BadData as exc:
        report.skip(path, str(exc))
        return
    yield from episodes


def _episodes(path: Path, tm: TopicMap, streams: dict, info: dict, report: Report) -> Iterator[Episode]:
    max_age = int(round(tm.max_age_s * 1e9))
    cams = [r for r in streams if r.startswith('camera:')]
    need = list(cams) + [r for r in ('state', 'action') if r in streams]
    if tm.action.source in ('next_state', 'state_delta') and 'state' not in streams:
        raise BadData(f"missing topic '{tm.state.topic}' (state, needed for actions)")
    values = {r: _apply_order(s) for r, s in streams.items()}
    clocks = {s.topic: s.clock for s in streams.values()}
    first = max(int(streams[r].times[0]) for r in need)
    last = max(int(streams[r].times[-1]) for r in need)
    # episode boundaries
    bag_task = _bag_task(info)
    if tm.episode.split == 'topic':
        ep = streams['episode']
        starts = [int(t) for t in ep.times]
        texts = list(values['episode'])
        bounds = [(s, (starts[i + 1] - 1 if i + 1 < len(starts) else last), texts[i])
                  for i, s in enumerate(starts)]
    else:
        bounds = [(first, last, None)]
    task_times = streams['task'].times if 'task' in streams else np.zeros(0, np.int64)
    task_vals = values.get('task', [])
    state_names = streams['state'].names if 'state' in streams else []
    for k, (b0, b1, text) in enumerate(bounds):
        start = max(b0, first)
        end = min(b1, last)
        where = f'{path} episode {k}'
        if end < start:
            report.skip(where, 'empty episode: no overlap of all required streams')
            continue
        q = fixed_rate_times(start, end, tm.fps)
        idx = {r: asof_indices(streams[r].times, q, max_age) for r in need}
        valid = np.all(np.stack([idx[r] >= 0 for r in need]), axis=0)
        # task: the episode marker's text, else the latest instruction at or before the start
        # (instructions stay valid until replaced), else the first one inside the episode
        task = text
        if task is None and len(task_times):
            j = int(asof_indices(task_times, np.array([start]), 1 << 62)[0])
            inside = np.nonzero((task_times > start) & (task_times <= end))[0]
            task = task_vals[j] if j >= 0 else (task_vals[int(inside[0])] if inside.size else None)
        if task is None:
            task = bag_task if bag_task is not None else tm.task.default
        if not valid.any():
            report.skip(where, f'empty episode: no frame has all of {need} within max_age_s={tm.max_age_s}')
            continue
        runs = _runs(valid)
        segs = runs if tm.gap_policy == 'split' else [np.nonzero(valid)[0]]
        gaps = len(runs) - 1
        success = None
        if 'success' in streams and len(streams['success'].times):
            st = streams['success'].times
            sv = np.asarray(values['success'], dtype=bool)
            sel = (st >= start) & (st <= end + max_age)
            success = bool(sv[sel].any())
        elif str((info.get('custom') or {}).get('success', '')).lower() in ('true', 'false'):
            success = info['custom']['success'].lower() == 'true'
        for si, rows in enumerate(segs):
            seg_where = where if len(segs) == 1 else f'{where} segment {si}'
            if rows.size < tm.min_episode_frames:
                report.skip(seg_where, f'empty episode: {rows.size} frame(s) between gaps, '
                                       f'fewer than min_episode_frames={tm.min_episode_frames}')
                continue
            qs = q[rows]
            frames = {r.split(':', 1)[1]: values[r][idx[r][rows]] for r in cams}
            state = values['state'][idx['state'][rows]] if 'state' in streams else None
            action = None
            action_names: list[str] = []
            if tm.action.source == 'command':
                action = values['action'][idx['action'][rows]]
                action_names = list(streams['action'].names)
            elif tm.action.source in ('next_state', 'state_delta'):
                assert state is not None      # required_state: _read_streams found the state topic
                nxt = np.concatenate([state[1:], state[-1:]])
                action = nxt if tm.action.source == 'next_state' else nxt - state
                action_names = list(state_names)
            extra = {
                'clock': clocks, 'start_time_ns': int(qs[0]), 'segment': si, 'num_segments': len(segs),
                'gaps': gaps, 'gap_policy': tm.gap_policy, 'success': success, 'bag_episode': k,
            }
            yield Episode(
                source=str(path), frames=frames, timestamps=(qs - qs[0]) / 1e9, task=str(task),
                state=None if state is None else np.asarray(state, np.float32),
                action=None if action is None else np.asarray(action, np.float32),
                state_names=list(state_names), action_names=action_names, extra=extra)


def _runs(mask: np.ndarray) -> list[np.ndarray]:
    """Index arrays of the maximal runs of True in mask."""
    idx = np.nonzero(mask)[0]
    if idx.size == 0:
        return []
    breaks = np.nonzero(np.diff(idx) > 1)[0] + 1
    return np.split(idx, breaks)


def inspect_bag(path: str | Path) -> dict:
    """Per-topic facts from a bag without decoding payloads: type, count, rate, duration, gaps."""
    from rosbags.rosbag2 import Reader
    path = Path(path)
    times: dict[str, list[int]] = defaultdict(list)
    with Reader(path) as reader:
        fixed = _align_qos(reader)
        types = {c.topic: c.msgtype for c in reader.connections}
        meta = {'storage': _storage_of(path), 'compression': reader.compression_mode or 'none',
                'message_count': reader.message_count}
        if fixed:
            meta['warnings'] = [_qos_warning(fixed)]
        for conn, t, _ in reader.messages():
            times[conn.topic].append(t)
    topics = {}
    for topic, mtype in sorted(types.items()):
        st = np.asarray(sorted(times.get(topic, [])), dtype=np.int64)
        n = int(st.size)
        dur = float((st[-1] - st[0]) / 1e9) if n > 1 else 0.0
        rate = (n - 1) / dur if dur > 0 else 0.0
        gaps = []
        max_gap = 0.0
        if n > 2:
            d = np.diff(st)
            max_gap = float(d.max() / 1e9)
            med = float(np.median(d))
            gaps = [(float((a - st[0]) / 1e9), float((b - a) / 1e9)) for a, b in find_gaps(st, int(3 * med))]
        topics[topic] = {'type': mtype, 'count': n, 'rate_hz': rate, 'duration_s': dur,
                         'max_gap_s': max_gap, 'gaps': gaps}
    all_t = [x for v in times.values() for x in v]
    meta['duration_s'] = float((max(all_t) - min(all_t)) / 1e9) if len(all_t) > 1 else 0.0
    meta['topics'] = topics
    return meta


def _storage_of(path: Path) -> str:
    if path.is_file():
        return 'mcap' if path.suffix == '.mcap' else 'sqlite3'
    files = [f.suffix for f in path.iterdir()]
    if any(s == '.mcap' for s in files) or any(f.name.endswith('.mcap.zstd') for f in path.iterdir()):
        return 'mcap'
    return 'sqlite3'
