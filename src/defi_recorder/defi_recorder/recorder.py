"""defi-record: record ROS 2 topics to rosbag2 (mcap or sqlite3) on a robot without `ros2 bag`.

    defi-record --topics /camera/front/image_raw /joint_states /defi/action_command --out bags/
                [--storage mcap|sqlite3] [--no-autostart] [--instruction "open the drawer"]

One bag per episode. Episodes start and stop with the std_srvs/Trigger services
`~/start_episode` and `~/stop_episode`, or with Enter on a terminal (Enter toggles, `q` + Enter quits).
Message types are discovered from the graph; subscriptions are raw (the CDR bytes as received are
written as they are, by one rosbags Writer on the executor's thread). The latest `instruction`
(std_msgs/String, transient local) is written at the start of each episode and stored in the bag's
custom metadata. An episode is written to `<out>/.partial/<name>` and moved to `<out>/<name>` when
closed: a crash leaves every earlier episode intact and no half-written bag among them. SIGINT or
SIGTERM closes the open episode cleanly.
"""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, List

import rclpy
import rclpy.executors
import rclpy.utilities

if TYPE_CHECKING:
    from rosbags.interfaces import Connection
    from rosbags.rosbag2 import Writer
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import String
from std_srvs.srv import Trigger

from defi_ros.params import declare_params, param

INSTRUCTION_TOPIC = 'instruction'
STAGING_DIR = '.partial'  # episodes being written live in <out>/.partial/<name>


def _typestore():
    """A rosbags typestore with the defi_msgs types, plus types found in installed .msg files."""
    from defi_training.sources.msg_types import typestore
    return typestore()


def _register_from_share(store, msgtype: str) -> None:
    """Register `pkg/msg/Name` from <prefix>/share/pkg/msg/Name.msg on AMENT_PREFIX_PATH, if found."""
    from rosbags.typesys import get_types_from_msg
    pkg, _, name = msgtype.split('/')
    for prefix in os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep):
        path = Path(prefix) / 'share' / pkg / 'msg' / f'{name}.msg'
        if prefix and path.is_file():
            store.register(get_types_from_msg(path.read_text(), msgtype))
            return
    raise ValueError(f'message type {msgtype} is unknown to rosbags and no {pkg}/msg/{name}.msg was '
                     f'found on AMENT_PREFIX_PATH')


def _message_class(msgtype: str):
    pkg, kind, name = msgtype.split('/')
    return getattr(importlib.import_module(f'{pkg}.{kind}'), name)


def _leading_header(store, msgtype: str) -> bool:
    """Whether the type's first field is a std_msgs/Header (its stamp is then at CDR bytes 4..12)."""
    fields = store.fielddefs[msgtype][1]
    return bool(fields) and fields[0][1][1] == 'std_msgs/msg/Header'


def header_stamp_ns(data: bytes) -> int | None:
    """Stamp of a little-endian CDR message whose first field is a std_msgs/Header."""
    if len(data) < 12 or data[1] != 1:  # encapsulation 0x0001 = CDR little endian
        return None
    sec = int.from_bytes(data[4:8], 'little', signed=True)
    nanosec = int.from_bytes(data[8:12], 'little')
    return sec * 1_000_000_000 + nanosec


class EpisodeBagWriter:
    """One rosbag2 per episode, written under `<out>/.partial/` and moved to `<out>/<name>` when closed."""

    def __init__(self, out_dir: str | Path, storage: str = 'mcap', store=None):
        from rosbags.rosbag2 import StoragePlugin
        plugins = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}
        if storage not in plugins:
            raise ValueError(f'storage={storage!r}: expected one of {sorted(plugins)}')
        self.storage_plugin = plugins[storage]
        self.out_dir = Path(out_dir)
        self.store = store if store is not None else _typestore()
        self.writer: Writer | None = None
        self.path: Path | None = None
        self.connections: dict[str, Connection] = {}
        self.counts: dict[str, int] = {}

    @property
    def active(self) -> bool:
        return self.writer is not None

    def start(self, name: str, custom_data: dict[str, str] | None = None) -> Path:
        from rosbags.rosbag2 import Writer
        if self.active:
            raise RuntimeError(f'episode {self.path} is still open')
        final = self.out_dir / name
        if final.exists():
            raise FileExistsError(f'{final} already exists; choose another output directory or name')
        partial = self.out_dir / STAGING_DIR / name
        if partial.exists():
            raise FileExistsError(f'{partial} exists (an episode that was never closed); move it away')
        partial.parent.mkdir(parents=True, exist_ok=True)
        writer = self.writer = Writer(partial, version=Writer.VERSION_LATEST, storage_plugin=self.storage_plugin)
        writer.open()
        for key, value in (custom_data or {}).items():
            writer.set_custom_data(str(key), str(value))
        self.path, self.connections, self.counts = final, {}, {}
        return final

    def write(self, topic: str, msgtype: str, timestamp_ns: int, data: bytes) -> None:
        writer = self.writer
        if writer is None:
            raise RuntimeError('no episode is open')
        conn = self.connections.get(topic)
        if conn is None:
            if msgtype not in self.store.fielddefs:
                _register_from_share(self.store, msgtype)
            conn = writer.add_connection(topic, msgtype, typestore=self.store)
            self.connections[topic] = conn
        writer.write(conn, int(timestamp_ns), bytes(data))
        self.counts[topic] = self.counts.get(topic, 0) + 1

    def set_custom_data(self, key: str, value: str) -> None:
        if self.writer is not None:
            self.writer.set_custom_data(key, value)

    def stop(self) -> Path | None:
        """Close the episode's bag (finalizing it) and give it its final name."""
        writer, final = self.writer, self.path
        if writer is None or final is None:   # final is set whenever writer is
            return None
        self.writer = None
        writer.close()
        staging = final.parent / STAGING_DIR
        (staging / final.name).rename(final)
        try:
            staging.rmdir()  # only when empty
        except OSError:
            pass
        return final


@dataclass
class RecorderConfig:
    topics: List[str] = param([], 'topics to record (the instruction is always kept)')
    out_dir: str = param('recordings', 'directory of the episode bags (one rosbag2 per episode)')
    storage: str = param('mcap', 'rosbag2 storage: mcap | sqlite3')
    autostart: bool = param(True, 'open the first episode at once (else: ~/start_episode)')
    instruction: str = param('', 'instruction stored when nothing is published on `instruction`')
    episode_prefix: str = param('episode', 'bag folder names: <prefix>_<date>_<time>_<index>')
    stamp_source: str = param('receive', "bag timestamps: 'receive' time | 'header' stamp (where the "
                              "type has one)")
    discovery_period_s: float = param(0.5, 'how often new publishers of the topics are looked for (s)',
                                      min=0.01, max=3600.0)


def qos_for_offers(offered: list) -> QoSProfile:
    """The subscription QoS that receives from every publisher (as `ros2 bag record` adapts):
    reliable only if all offer reliable, transient local only if all offer it."""
    def all_offer(attr, value):
        return bool(offered) and all(getattr(o, attr) == value for o in offered)
    reliability = (ReliabilityPolicy.RELIABLE if all_offer('reliability', ReliabilityPolicy.RELIABLE) or not offered
                   else ReliabilityPolicy.BEST_EFFORT)
    durability = (DurabilityPolicy.TRANSIENT_LOCAL if all_offer('durability', DurabilityPolicy.TRANSIENT_LOCAL)
                  else DurabilityPolicy.VOLATILE)
    return QoSProfile(depth=100, reliability=reliability, durability=durability)


class RecorderNode(Node):
    def __init__(self, *, context=None, parameter_overrides=None, **node_kwargs):
        super().__init__('defi_recorder', context=context,
                         parameter_overrides=parameter_overrides, **node_kwargs)
        self.config = declare_params(self, RecorderConfig)   # `topics` [] is checked by the caller
        if self.config.stamp_source not in ('receive', 'header'):
            raise ValueError(f'parameter stamp_source={self.config.stamp_source!r}: expected receive or header')
        self.writer = EpisodeBagWriter(self.config.out_dir, self.config.storage)
        self.store = self.writer.store

        # The instruction is latched: keep the latest one and put it at the start of each episode.
        self.instruction_text = self.config.instruction
        self._instruction_raw: bytes | None = None
        if self.instruction_text:
            string_type = self.store.types['std_msgs/msg/String']
            self._instruction_raw = bytes(self.store.serialize_cdr(
                string_type(data=self.instruction_text), 'std_msgs/msg/String'))
        self._instruction_pending = False
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.create_subscription(String, INSTRUCTION_TOPIC, self._on_instruction, latched, raw=True)

        self._instruction_topic = self._absolute(INSTRUCTION_TOPIC)
        wanted = (self._absolute(t) for t in self.config.topics)
        self._wanted = [t for t in wanted if t != self._instruction_topic]
        self._subscribed: dict[str, str] = {}
        self._recording_subs = []
        self.received: dict[str, int] = {}
        self.episodes: list[Path] = []
        self.episode_index = 0
        self._last_stamp_ns: int | None = None  # latest timestamp written in this episode

        self.create_service(Trigger, '~/start_episode', self._on_start)
        self.create_service(Trigger, '~/stop_episode', self._on_stop)
        self.discover()
        self.create_timer(self.config.discovery_period_s, self.discover)
        if self.config.autostart:
            self.start_episode()

    def _absolute(self, topic: str) -> str:
        from rclpy.expand_topic_name import expand_topic_name
        return expand_topic_name(topic, self.get_name(), self.get_namespace())

    # ------------------------------------------------------------------ discovery
    def discover(self) -> list[str]:
        """Subscribe to every wanted topic that now has a publisher; return those still missing."""
        graph = dict(self.get_topic_names_and_types())
        for topic in self._wanted:
            if topic in self._subscribed or topic not in graph:
                continue
            ros_type = graph[topic][0]  # e.g. 'sensor_msgs/msg/Image'
            if len(graph[topic]) > 1:
                self.get_logger().info(f'{topic} has several types {graph[topic]}; recording {ros_type}')
            try:
                msg_class = _message_class(ros_type)
                if ros_type not in self.store.fielddefs:
                    _register_from_share(self.store, ros_type)
            except (ImportError, AttributeError, ValueError) as err:
                self.get_logger().error(f'cannot record {topic} ({ros_type}): {err}',
                                        throttle_duration_sec=10.0)
                continue
            use_header = self.config.stamp_source == 'header' and _leading_header(self.store, ros_type)
            qos = qos_for_offers([i.qos_profile for i in self.get_publishers_info_by_topic(topic)])
            sub = self.create_subscription(
                msg_class, topic,
                lambda data, topic=topic, t=ros_type, h=use_header: self._on_message(topic, t, h, data),
                qos, raw=True)
            self._recording_subs.append(sub)
            self._subscribed[topic] = ros_type
            self.get_logger().info(f'recording {topic} [{ros_type}] ({qos.reliability.name.lower()}, '
                                   f'{qos.durability.name.lower()})')
        return [t for t in self._wanted if t not in self._subscribed]

    @property
    def subscribed_topics(self) -> dict[str, str]:
        return dict(self._subscribed)

    # ------------------------------------------------------------------ messages
    def _receive_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def _on_instruction(self, data: bytes) -> None:
        from rclpy.serialization import deserialize_message
        self._instruction_raw = bytes(data)
        self.instruction_text = deserialize_message(self._instruction_raw, String).data
        self.received[self._instruction_topic] = self.received.get(self._instruction_topic, 0) + 1
        if self.writer.active:
            self.writer.set_custom_data('instruction', self.instruction_text)
            if self._last_stamp_ns is None:
                self._instruction_pending = True  # written with the episode's first message
            else:
                self._write(self._instruction_topic, 'std_msgs/msg/String',
                            self._stamp_without_header(), self._instruction_raw)

    def _on_message(self, topic: str, msgtype: str, use_header: bool, data: bytes) -> None:
        self.received[topic] = self.received.get(topic, 0) + 1
        if not self.writer.active:
            return
        stamp = header_stamp_ns(data) if use_header else None
        self._write(topic, msgtype, stamp if stamp is not None else self._stamp_without_header(), data)

    def _stamp_without_header(self) -> int:
        # With header stamps (e.g. sim time), a message without a header gets the latest stamp
        # written: it belongs to the observation being published. Otherwise: the receive time.
        if self.config.stamp_source == 'header' and self._last_stamp_ns is not None:
            return self._last_stamp_ns
        return self._receive_ns()

    def _write(self, topic: str, msgtype: str, timestamp_ns: int, data: bytes) -> None:
        if self._instruction_pending and self._instruction_raw is not None:
            # The latched instruction goes first, stamped like the episode's first message.
            self._instruction_pending = False
            if topic != self._instruction_topic:
                self.writer.write(self._instruction_topic, 'std_msgs/msg/String',
                                  timestamp_ns, self._instruction_raw)
        self.writer.write(topic, msgtype, timestamp_ns, data)
        self._last_stamp_ns = timestamp_ns if self._last_stamp_ns is None else max(self._last_stamp_ns, timestamp_ns)

    # ------------------------------------------------------------------ episodes
    def start_episode(self, name: str | None = None, custom_data: dict | None = None) -> Path:
        if self.writer.active:
            raise RuntimeError(f'an episode is already recording to {self.writer.path}')
        if name is None:
            name = f'{self.config.episode_prefix}_{time.strftime("%Y%m%d_%H%M%S")}_{self.episode_index:04d}'
        data = {'instruction': self.instruction_text}
        data.update({str(k): str(v) for k, v in (custom_data or {}).items()})
        path = self.writer.start(name, data)
        self._instruction_pending = True
        self._last_stamp_ns = None
        self.episode_index += 1
        self.get_logger().info(f'episode started: {path}')
        return path

    def stop_episode(self) -> Path | None:
        self._instruction_pending = False
        path = self.writer.stop()
        if path is not None:
            self.episodes.append(path)
            self.get_logger().info(f'episode saved: {path}')
        return path

    def _on_start(self, request, response):
        try:
            response.message, response.success = str(self.start_episode()), True
        except (RuntimeError, OSError) as err:
            response.message, response.success = str(err), False
        return response

    def _on_stop(self, request, response):
        path = self.stop_episode()
        response.success = path is not None
        response.message = str(path) if path is not None else 'no episode was recording'
        return response

    def close(self) -> None:
        self.stop_episode()


def _parse_args(argv):
    parser = argparse.ArgumentParser(prog='defi-record', description=__doc__.split('\n\n')[0])
    parser.add_argument('--topics', nargs='+', default=None, help='topics to record')
    parser.add_argument('--out', default=None, help='output directory (one bag per episode)')
    parser.add_argument('--storage', choices=('mcap', 'sqlite3'), default=None)
    parser.add_argument('--no-autostart', action='store_true', help='wait for start_episode / Enter')
    parser.add_argument('--instruction', default=None, help='instruction when none is published')
    parser.add_argument('--stamp-source', choices=('receive', 'header'), default=None)
    return parser.parse_known_args(argv)


def main(args=None):
    from defi_core.cli import run_cli
    # an --out it cannot write: one line naming it and exit 2 (the bag is still closed first)
    return run_cli('defi-record', lambda: _main(args))


def _main(args=None):
    argv = sys.argv[1:] if args is None else list(args)
    ros_argv = rclpy.utilities.remove_ros_args(['defi-record'] + argv)[1:]
    opts, _ = _parse_args(ros_argv)
    from rclpy.parameter import Parameter
    overrides = []
    if opts.topics:
        overrides.append(Parameter('topics', Parameter.Type.STRING_ARRAY, opts.topics))
    for name, value in (('out_dir', opts.out), ('storage', opts.storage),
                        ('instruction', opts.instruction), ('stamp_source', opts.stamp_source)):
        if value is not None:
            overrides.append(Parameter(name, value=value))
    if opts.no_autostart:
        overrides.append(Parameter('autostart', value=False))

    # Our own signal handling: the bag must be closed, not abandoned, on SIGINT / SIGTERM.
    from rclpy.signals import SignalHandlerOptions
    rclpy.init(args=['defi-record'] + argv, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    toggle = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    node = RecorderNode(parameter_overrides=overrides)
    if not node.config.topics:
        node.get_logger().error('no topics to record: pass --topics or the `topics` parameter')
        node.destroy_node()
        rclpy.shutdown()
        return 2

    if sys.stdin is not None and sys.stdin.isatty():
        def read_keys():
            print('Enter: start/stop an episode, q + Enter: quit', flush=True)
            for line in sys.stdin:
                if line.strip().lower() == 'q':
                    stop.set()
                    return
                toggle.set()
        threading.Thread(target=read_keys, daemon=True).start()

    executor = rclpy.executors.SingleThreadedExecutor()
    executor.add_node(node)
    try:
        while not stop.is_set():
            executor.spin_once(timeout_sec=0.05)
            if toggle.is_set():  # the writer is only touched on this thread
                toggle.clear()
                node.stop_episode() if node.writer.active else node.start_episode()
        # Take what has already arrived before closing, so nothing received is lost.
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.01)
    finally:
        node.close()
        executor.shutdown()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
