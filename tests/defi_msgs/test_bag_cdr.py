"""CDR compatibility: rosbags (types from defi_msgs' own .msg files) <-> rclpy, via real bag files."""
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from rosbags.rosbag2 import Reader, StoragePlugin, Writer

from defi_training.sources.msg_types import typestore
from sample_messages import make_samples, to_plain

MSG_NAMES = ['ForwardFeatures', 'LatentActions', 'ActionChunk', 'PolicyStatus', 'TaskState']
STORAGES = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}


def rosbags_message(store, name, rclpy_msg):
    """Build the rosbags dataclass with the same field values as an rclpy message."""
    plain = to_plain(rclpy_msg)
    import numpy as np
    from rosbags.typesys.stores.ros2_kilted import builtin_interfaces__msg__Time as Time
    from rosbags.typesys.stores.ros2_kilted import std_msgs__msg__Header as Header
    cls = store.types[f'defi_msgs/msg/{name}']
    fields = {}
    for key, value in plain.items():
        if key == 'header':
            fields[key] = Header(stamp=Time(**value['stamp']), frame_id=value['frame_id'])
        elif key in ('data', 'tokens'):
            fields[key] = np.asarray(value, dtype=np.float32)
        elif key == 'values':
            fields[key] = np.asarray(value, dtype=np.float64)
        elif key in ('shape', 'token_shape'):
            fields[key] = np.asarray(value, dtype=np.uint32)
        elif key in ('codes', 'frame_offsets'):
            fields[key] = np.asarray(value, dtype=np.int32)
        else:
            fields[key] = value
    return cls(**fields)


def write_bag(bag, storage, store, serialize):
    """One message of each type, `serialize(name) -> CDR bytes`, into a rosbag2 with `storage`."""
    with Writer(bag, version=9, storage_plugin=STORAGES[storage]) as writer:
        for i, name in enumerate(MSG_NAMES):
            conn = writer.add_connection(f'/defi/{name}', f'defi_msgs/msg/{name}', typestore=store)
            writer.write(conn, 1_000 + i, serialize(name))


@pytest.mark.parametrize('storage', sorted(STORAGES))
def test_rosbags_written_rclpy_read(tmp_path, storage):
    store = typestore('kilted')
    samples = make_samples()
    bag = tmp_path / f'bag_{storage}'
    write_bag(bag, storage, store, lambda name: store.serialize_cdr(
        rosbags_message(store, name, samples[name]), f'defi_msgs/msg/{name}'))

    import defi_msgs.msg as msgs
    seen = set()
    with Reader(bag) as reader:
        assert reader.message_count == len(MSG_NAMES)
        for conn, _, raw in reader.messages():
            name = conn.msgtype.rsplit('/', 1)[-1]
            decoded = deserialize_message(bytes(raw), getattr(msgs, name))
            assert to_plain(decoded) == to_plain(samples[name]), name
            seen.add(name)
    assert seen == set(MSG_NAMES)


@pytest.mark.parametrize('storage', sorted(STORAGES))
def test_rclpy_written_rosbags_read(tmp_path, storage):
    store = typestore('kilted')
    samples = make_samples()
    bag = tmp_path / f'bag_{storage}'
    write_bag(bag, storage, store, lambda name: serialize_message(samples[name]))

    with Reader(bag) as reader:
        got = {conn.msgtype.rsplit('/', 1)[-1]: store.deserialize_cdr(raw, conn.msgtype)
               for conn, _, raw in reader.messages()}
    assert set(got) == set(MSG_NAMES)
    for name in MSG_NAMES:
        assert to_plain(got[name]) == to_plain(samples[name]), name


def test_type_hashes_match_rclpy(ros_context):
    """The RIHS01 hash rosbags computes from our .msg files is the one rclpy advertises on the graph."""
    from rclpy.node import Node

    import defi_msgs.msg as msgs
    store = typestore('kilted')
    node = Node('hash_probe', context=ros_context)
    for name in MSG_NAMES:
        node.create_publisher(getattr(msgs, name), f'defi/hash/{name}', 1)
        info = node.get_publishers_info_by_topic(f'defi/hash/{name}')
        assert len(info) == 1
        advertised = str(info[0].topic_type_hash)
        assert advertised.startswith('RIHS01_')
        assert store.hash_rihs01(f'defi_msgs/msg/{name}') == advertised, name
    node.destroy_node()


@pytest.mark.parametrize('distro', ['humble', 'jazzy', 'kilted'])
def test_tf2_msgs_is_the_upstream_type(ros_context, distro):
    """The tf2_msgs the sim publishes /tf with (vendor/tf2_msgs on the pip wheels) hashes like the
    upstream TFMessage rosbags knows: a system ROS 2's RViz and tf2 tools take it as their own."""
    from rclpy.node import Node
    from tf2_msgs.msg import TFMessage
    node = Node('tf_hash_probe', context=ros_context)
    node.create_publisher(TFMessage, 'defi/hash/tf', 1)
    (info,) = node.get_publishers_info_by_topic('defi/hash/tf')
    assert info.topic_type == 'tf2_msgs/msg/TFMessage'
    assert str(info.topic_type_hash) == typestore(distro).hash_rihs01('tf2_msgs/msg/TFMessage')
    node.destroy_node()


def test_unknown_distro_is_named():
    with pytest.raises(ValueError, match='rolling'):
        typestore('rolling')
