"""Inputs that do not fit are refused with one line naming topic/field/parameter (real rclpy):
JointState count/names, ActionChunk dimension/names, instruction text, unknown parameters."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from defi_ros_testkit import Probe, make_executor, make_tiny_policy, params, shutdown

pytestmark = pytest.mark.timeout(90)


def test_joint_state_with_more_positions_than_the_state_is_refused(ros_context, spin):
    import torch
    from sensor_msgs.msg import JointState

    from defi_msgs.msg import ActionChunk, ForwardFeatures, LatentActions
    from defi_policy.action_decoder_node import ActionDecoderNode
    from defi_ros import qos
    from defi_ros.conversions import features_to_msg, latent_to_msg
    policy = make_tiny_policy(state_dim=2)
    node = ActionDecoderNode(policy=policy, context=ros_context, parameter_overrides=params(max_age_s=5.0))
    probe = Probe(ros_context)
    probe.listen(ActionChunk, 'defi/action_chunk', qos.RELIABLE)
    feats_pub = probe.publisher(ForwardFeatures, 'defi/forward_features', qos.FEATURES)
    lat_pub = probe.publisher(LatentActions, 'defi/latent_actions', qos.RELIABLE)
    js_pub = probe.publisher(JointState, 'joint_states', qos.SENSOR)
    assert node.start()
    ex = make_executor(ros_context, [node, probe.node])
    with torch.inference_mode():
        lang = policy.encode_instruction(['stack the blocks'])
        feats = policy.forward_features(torch.zeros(1, 1, 3, 64, 64, dtype=torch.uint8), lang)
        codes, tokens = policy.latent_actions(feats, lang)

    def send():
        stamp = probe.node.get_clock().now().nanoseconds
        feats_pub.publish(features_to_msg(feats[0].numpy(), stamp, 'stack the blocks'))
        lat_pub.publish(latent_to_msg(codes[0].numpy(), tokens[0].numpy(), stamp))
    try:
        spin(ex, lambda: feats_pub.get_subscription_count() and lat_pub.get_subscription_count()
             and js_pub.get_subscription_count(), timeout_s=3)
        # 12 positions for a 2-D state, no state_names: not "the first 2"
        js_pub.publish(JointState(name=[f'j{i}' for i in range(12)], position=[0.1] * 12))
        assert spin(ex, lambda: node._joint_state is not None, timeout_s=3)
        send()
        spin(ex, lambda: node.counters.malformed_inputs >= 1, timeout_s=3)
        spin(ex, lambda: False, timeout_s=0.3)
        assert probe.msgs('defi/action_chunk') == [], 'a 12-joint state was cut to 2'
        err = node.counters.last_error
        assert err.startswith('joint_states: position: 12 values') and 'state_names' in err
        # names and positions that do not pair up are refused too
        js_pub.publish(JointState(name=['a', 'b', 'c'], position=[0.1, 0.2]))
        spin(ex, lambda: len(node._joint_state.position) == 2, timeout_s=3)
        send()
        assert spin(ex, lambda: 'name/position' in node.counters.last_error, timeout_s=3)
        assert probe.msgs('defi/action_chunk') == []
        # a state that fits is used
        js_pub.publish(JointState(name=['a', 'b'], position=[0.1, 0.2]))
        spin(ex, lambda: list(node._joint_state.name) == ['a', 'b'], timeout_s=3)
        send()
        assert spin(ex, lambda: probe.msgs('defi/action_chunk'), timeout_s=5)
    finally:
        shutdown(ex, [node, probe.node])


def test_chunk_of_another_dimension_or_names_is_not_passed_to_the_robot(ros_context, spin):
    from defi_msgs.msg import ActionChunk
    from defi_policy.chunk_executor_node import ChunkExecutorNode
    from defi_ros import qos
    from defi_ros.conversions import chunk_to_msg
    node = ChunkExecutorNode(context=ros_context, parameter_overrides=params(
        output_mode='passthrough', control_rate_hz=20.0, action_names=['x', 'y', 'z', 'gripper']))
    probe = Probe(ros_context)
    probe.listen(ActionChunk, 'defi/action_command', qos.RELIABLE)
    pub = probe.publisher(ActionChunk, 'defi/action_chunk', qos.RELIABLE)
    assert node.start()
    ex = make_executor(ros_context, [node, probe.node])
    now = lambda: probe.node.get_clock().now().nanoseconds  # noqa: E731
    try:
        assert spin(ex, lambda: pub.get_subscription_count() > 0, timeout_s=3)
        pub.publish(chunk_to_msg(np.full((10, 6), 0.3, np.float32), now(), 0.1,
                                 ['x', 'y', 'z', 'roll', 'pitch', 'yaw']))
        spin(ex, lambda: node.counters.malformed_inputs >= 1, timeout_s=3)
        spin(ex, lambda: False, timeout_s=0.3)
        assert probe.msgs('defi/action_command') == [], 'a 6-D chunk reached a 4-D robot'
        assert node.counters.last_error.startswith('defi/action_chunk: action_dim: 6')
        pub.publish(chunk_to_msg(np.full((10, 4), 0.3, np.float32), now(), 0.1, ['a', 'b', 'c', 'd']))
        assert spin(ex, lambda: node.counters.malformed_inputs >= 2, timeout_s=3)
        assert 'names' in node.counters.last_error and 'action_names' in node.counters.last_error
        pub.publish(chunk_to_msg(np.full((10, 4), 0.3, np.float32), now(), 0.1, ['x', 'y', 'z', 'gripper']))
        assert spin(ex, lambda: probe.msgs('defi/action_command'), timeout_s=3)
    finally:
        shutdown(ex, [node, probe.node])


def cdr_string(data: bytes) -> bytes:
    """A serialized std_msgs/String carrying exactly `data` (rclpy cannot publish such bytes)."""
    return b'\x00\x01\x00\x00' + (len(data) + 1).to_bytes(4, 'little') + data + b'\x00'


def test_instruction_with_invalid_utf8_nul_or_1mb_is_refused(ros_context, spin, tiny_policy):
    from std_msgs.msg import String

    from defi_perception.forward_predictor_node import ForwardPredictorNode
    from defi_ros import qos
    node = ForwardPredictorNode(policy=tiny_policy, context=ros_context,
                                parameter_overrides=params(preview_rate_hz=0.0))
    probe = Probe(ros_context)
    pub = probe.publisher(String, 'instruction', qos.INSTRUCTION)
    assert node.start()
    ex = make_executor(ros_context, [node, probe.node])
    try:
        assert spin(ex, lambda: pub.get_subscription_count() > 0, timeout_s=3)
        cases = [(b'open the dr\xffawer', 'UTF-8'), (b'open the\x00 drawer', 'NUL'),
                 (b'open the drawer ' * 65536, 'more than')]
        for k, (data, why) in enumerate(cases):
            pub.publish(String(data='close the door'))
            assert spin(ex, lambda: node.instruction == 'close the door', timeout_s=3)
            pub.publish(cdr_string(data))
            assert spin(ex, lambda k=k: node.counters.malformed_inputs == k + 1, timeout_s=3), why
            assert node.instruction == '', f'{why}: the instruction was accepted altered'
            assert node.counters.last_error.startswith('instruction: data:') and why in node.counters.last_error
        pub.publish(cdr_string('öffne die Schublade'.encode()))
        assert spin(ex, lambda: node.instruction == 'öffne die Schublade', timeout_s=3)
    finally:
        shutdown(ex, [node, probe.node])


def test_unknown_parameters_are_named_with_their_file(tmp_path):
    params_file = tmp_path / 'params.yaml'
    params_file.write_text("""
/**:
  ros__parameters:
    camera_topics: ["camera/front/image_raw"]
    max_agee_s: 2.0
chunk_executor:
  ros__parameters:
    contrl_rate_hz: 5.0
defi_bringup:
  ros__parameters:
    with_action_server: false
""")
    log_path = tmp_path / 'bringup.log'
    log = open(log_path, 'w+')
    proc = subprocess.Popen([sys.executable, '-m', 'defi_policy.bringup', '--ros-args',
                             '--params-file', str(params_file), '-p', 'dry_rn:=true'],
                            env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and 'not started' not in log_path.read_text():
            assert proc.poll() is None, log_path.read_text()
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        out = log_path.read_text()
        lines = [line for line in out.splitlines() if 'is not a parameter' in line]
        assert any(f"'contrl_rate_hz' (from {params_file}) is not a parameter of node 'chunk_executor'"
                   in line for line in lines), out
        assert sum("'max_agee_s'" in line and str(params_file) in line for line in lines) == 1, out
        assert sum("'dry_rn' (from the command line" in line for line in lines) == 1, out
        assert not any('camera_topics' in line for line in lines), out    # a sibling declares it
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()


def test_goal_with_an_unreadable_or_huge_instruction_is_rejected(ros_context, spin):
    from rclpy.action import ActionClient

    from defi_msgs.action import ExecuteInstruction
    from defi_policy.execute_instruction_server import ExecuteInstructionServer
    server = ExecuteInstructionServer(context=ros_context)
    probe = Probe(ros_context)
    assert server.start()
    client = ActionClient(probe.node, ExecuteInstruction, 'execute_instruction')
    ex = make_executor(ros_context, [server, probe.node])
    try:
        assert spin(ex, lambda: client.server_is_ready(), timeout_s=5)
        for k, text in enumerate(['open the dr\ufffdawer', 'open the drawer ' * 1000]):
            fut = client.send_goal_async(ExecuteInstruction.Goal(instruction=text, timeout=5.0))
            assert spin(ex, fut.done, timeout_s=5)
            assert not fut.result().accepted, text[:40]
            assert server.counters.malformed_inputs == k + 1
            assert server.counters.last_error.startswith('execute_instruction: goal rejected: instruction:')
    finally:
        client.destroy()
        shutdown(ex, [server, probe.node])


def test_wrong_typed_parameter_in_a_params_file_is_one_line_and_exit_2(tmp_path):
    params_file = tmp_path / 'params.yaml'
    params_file.write_text('chunk_executor:\n  ros__parameters:\n    control_rate_hz: fast\n')
    proc = subprocess.run([sys.executable, '-m', 'defi_policy.bringup', '--ros-args',
                           '--params-file', str(params_file)], capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert 'Traceback' not in out and "parameter 'control_rate_hz': cannot read 'fast'" in out, out
