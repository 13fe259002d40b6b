"""`defi_bringup` as a real process (the default way to run): params file + checkpoint from disk,
camera + instruction in, ActionChunk and passthrough commands out; SIGINT commands a stop."""
import os
import signal
import subprocess
import sys
import time

import pytest

from defi_ros_testkit import Probe, image_msg, make_executor, shutdown

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize('executor', ['single', 'multi'])
def test_bringup_process_runs_the_pipeline(ros_context, spin, tiny_checkpoint, tmp_path, executor):
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    from defi_msgs.msg import ActionChunk, PolicyStatus
    from defi_ros import qos
    params = tmp_path / 'params.yaml'
    params.write_text(f"""
/**:
  ros__parameters:
    checkpoint: "{tiny_checkpoint}"
    torch_threads: 1
    status_rate_hz: 5.0
defi_bringup:
  ros__parameters:
    with_action_server: false
    executor: {executor}
forward_predictor:
  ros__parameters:
    camera_topics: ["camera/front/image_raw"]
    preview_rate_hz: 0.0
""")
    # Logs go to a file: an unread pipe fills up and blocks the process on its next log line.
    log = open(tmp_path / 'bringup.log', 'w+')
    proc = subprocess.Popen([sys.executable, '-m', 'defi_policy.bringup', '--ros-args',
                             '--params-file', str(params)], env=dict(os.environ),
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    output = lambda: (tmp_path / 'bringup.log').read_text()[-4000:]  # noqa: E731
    probe = Probe(ros_context)
    probe.listen(ActionChunk, 'defi/action_chunk', qos.RELIABLE)
    probe.listen(ActionChunk, 'defi/action_command', qos.RELIABLE)
    probe.listen(PolicyStatus, 'defi/status', qos.BEST_EFFORT)
    cam = probe.publisher(Image, 'camera/front/image_raw', qos.SENSOR)
    probe.publisher(String, 'instruction', qos.INSTRUCTION).publish(String(data='open the door'))
    ex = make_executor(ros_context, [probe.node], threads=2)
    try:
        deadline = time.monotonic() + 60
        k = 0
        while time.monotonic() < deadline and len(probe.msgs('defi/action_command')) < 2:
            assert proc.poll() is None, output()
            cam.publish(image_msg(probe.now(), seed=k))
            k += 1
            spin(ex, lambda: False, timeout_s=0.1)
        chunks = probe.msgs('defi/action_chunk')
        assert chunks and chunks[-1].horizon == 10 and chunks[-1].action_dim == 4
        names = {m.node_name for m in probe.msgs('defi/status')}
        assert {'forward_predictor', 'latent_action_encoder', 'action_decoder', 'chunk_executor'} <= names
        n = len(probe.msgs('defi/action_command'))
        proc.send_signal(signal.SIGINT)
        assert spin(ex, lambda: any(all(v == 0.0 for v in m.data)
                                    for m in probe.msgs('defi/action_command')[n:]), timeout_s=10)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            pytest.fail('defi_bringup did not exit within 30 s of SIGINT:\n' + output())
        assert proc.returncode == 0, output()
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
        shutdown(ex, [probe.node])


def test_bringup_rejects_an_unknown_executor(tiny_checkpoint):
    proc = subprocess.run([sys.executable, '-m', 'defi_policy.bringup', '--ros-args',
                           '-p', f'checkpoint:={tiny_checkpoint}', '-p', 'executor:=threads'],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "parameter 'executor': 'threads'" in proc.stdout + proc.stderr
