"""defi-record as a real subprocess: signals close the bag with every received message; services
start and stop episodes; a crash leaves earlier episodes intact."""
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

rclpy = pytest.importorskip('rclpy')
from rclpy.duration import Duration  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from rosbags.rosbag2 import Reader  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from defi_msgs.msg import ActionChunk  # noqa: E402
from defi_training.sources.msg_types import typestore  # noqa: E402

RELIABLE = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)


def start_recorder(out, *extra):
    cmd = [sys.executable, '-m', 'defi_recorder.recorder', '--topics', '/rt/joints', '/rt/chunk',
           '--out', str(out), *extra]
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


class Source:
    def __init__(self, context):
        self.node = rclpy.create_node('recorder_source', context=context)
        self.joints = self.node.create_publisher(JointState, '/rt/joints', RELIABLE)
        self.chunks = self.node.create_publisher(ActionChunk, '/rt/chunk', RELIABLE)
        self.instruction = self.node.create_publisher(String, '/instruction', LATCHED)
        self.instruction.publish(String(data='stack the blocks'))
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.sent = 0

    def publish(self, n, acked=True):
        for _ in range(n):
            js = JointState(name=['j0'], position=[float(self.sent)])
            js.header.stamp.sec = self.sent
            self.joints.publish(js)
            chunk = ActionChunk(horizon=1, action_dim=2, data=[float(self.sent), 0.5])
            self.chunks.publish(chunk)
            self.sent += 1
        if not acked:
            return
        # acknowledged = received by the recorder's reader (FastDDS acks on its heartbeat: ~3 s)
        assert self.joints.wait_for_all_acked(Duration(seconds=10))
        assert self.chunks.wait_for_all_acked(Duration(seconds=10))

    def call(self, spin, service):
        client = self.node.create_client(Trigger, service)
        assert spin(self.executor, client.service_is_ready, 15.0), f'{service} never appeared'
        future = client.call_async(Trigger.Request())
        assert spin(self.executor, future.done, 10.0)
        self.node.destroy_client(client)
        return future.result()


def wait_connected(source, spin):
    assert spin(source.executor, lambda: source.joints.get_subscription_count() >= 1
                and source.chunks.get_subscription_count() >= 1, 20.0), 'recorder never subscribed'


def bag_contents(path):
    store = typestore()
    out = {}
    with Reader(path) as reader:
        for conn, _t, raw in reader.messages():
            out.setdefault(conn.topic, []).append(store.deserialize_cdr(raw, conn.msgtype))
    return out


def finished_bags(out):
    return sorted(p for p in out.iterdir() if not p.name.startswith('.'))


@pytest.mark.parametrize('sig,storage', [(signal.SIGINT, 'mcap'), (signal.SIGTERM, 'sqlite3')])
def test_signal_closes_the_bag_with_every_received_message(ros_context, spin, tmp_path, sig, storage):
    source = Source(ros_context)
    proc = start_recorder(tmp_path, '--storage', storage)
    try:
        wait_connected(source, spin)
        source.publish(40)
        proc.send_signal(sig)  # at once: acknowledged but maybe not yet written
        output, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, output
    finally:
        if proc.poll() is None:
            proc.kill()
    bags = finished_bags(tmp_path)
    assert len(bags) == 1 and not (tmp_path / '.partial').exists()
    msgs = bag_contents(bags[0])
    assert [m.position[0] for m in msgs['/rt/joints']] == [float(i) for i in range(40)]
    assert [m.data[0] for m in msgs['/rt/chunk']] == [float(i) for i in range(40)]
    assert [m.data for m in msgs['/instruction']] == ['stack the blocks']
    meta = yaml.safe_load((bags[0] / 'metadata.yaml').read_text())['rosbag2_bagfile_information']
    assert meta['custom_data']['instruction'] == 'stack the blocks'
    assert meta['storage_identifier'] == storage


def test_services_start_and_stop_episodes_and_a_crash_keeps_earlier_ones(ros_context, spin, tmp_path):
    source = Source(ros_context)
    proc = start_recorder(tmp_path, '--no-autostart')
    try:
        wait_connected(source, spin)
        source.publish(3, acked=False)  # no episode open: not recorded
        time.sleep(1.0)
        assert source.call(spin, '/defi_recorder/start_episode').success
        source.publish(5, acked=False)
        time.sleep(1.0)  # let the recorder take them before the stop request
        stop = source.call(spin, '/defi_recorder/stop_episode')
        assert stop.success
        assert not source.call(spin, '/defi_recorder/stop_episode').success  # nothing open
        assert source.call(spin, '/defi_recorder/start_episode').success
        source.publish(4, acked=False)
        time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)  # a crash in the middle of the second episode
        proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    bags = finished_bags(tmp_path)
    assert [str(p) for p in bags] == [stop.message]
    msgs = bag_contents(bags[0])
    assert [m.position[0] for m in msgs['/rt/joints']] == [3.0, 4.0, 5.0, 6.0, 7.0]
    assert [m.data for m in msgs['/instruction']] == ['stack the blocks']
    # the interrupted episode stays out of the way, under .partial
    assert len(list((tmp_path / '.partial').iterdir())) == 1


def test_no_topics_is_a_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, '-m', 'defi_recorder.recorder', '--out', str(tmp_path)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and 'no topics to record' in proc.stderr + proc.stdout


def test_enter_toggles_episodes_and_q_quits(tmp_path):
    import pty
    master, slave = pty.openpty()  # a terminal on stdin: keypresses are read
    proc = subprocess.Popen([sys.executable, '-m', 'defi_recorder.recorder', '--topics', '/rt/none',
                             '--out', str(tmp_path)], stdin=slave, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    os.close(slave)

    def wait_for(text):
        for line in proc.stdout:
            if text in line:
                return line
        raise AssertionError(f'recorder exited before printing {text!r}')
    try:
        wait_for('episode started')  # autostart
        wait_for('Enter: start/stop')
        os.write(master, b'\n')
        wait_for('episode saved')
        os.write(master, b'\n')
        wait_for('episode started')
        os.write(master, b'q\n')
        proc.wait(timeout=20)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert len(finished_bags(tmp_path)) == 2
