"""One filled-in instance of every defi_msgs message, and a field-by-field comparison."""
import math

import numpy as np


def make_samples():
    from builtin_interfaces.msg import Time
    from std_msgs.msg import Header

    from defi_msgs.msg import ActionChunk, ForwardFeatures, LatentActions, PolicyStatus, TaskState

    def header(frame):
        return Header(stamp=Time(sec=1700000000, nanosec=123456789), frame_id=frame)

    rng = np.random.default_rng(0)
    ff = ForwardFeatures(header=header('camera_front'))
    ff.shape = [3, 4, 8]
    ff.data = rng.standard_normal(96).astype(np.float32).tolist()
    ff.frame_offsets = [0, 4, 8]
    ff.instruction = 'open the drawer'

    la = LatentActions(header=header('camera_front'))
    la.codes = [3, 0, 15, 7]
    la.token_shape = [4, 16]
    la.tokens = rng.standard_normal(64).astype(np.float32).tolist()

    ac = ActionChunk(header=header('base_link'))
    ac.dt = 0.05
    ac.horizon = 10
    ac.action_dim = 4
    ac.names = ['x', 'y', 'z', 'gripper']
    ac.data = rng.uniform(-1, 1, 40).astype(np.float32).tolist()
    ac.instruction = 'press the button from above'

    st = PolicyStatus(header=header(''))
    st.node_name = 'chunk_executor'
    st.state = PolicyStatus.STATE_RUNNING
    st.features_ms, st.latent_ms, st.decode_ms, st.chunk_ms = 3.5, 1.25, 7.0, 11.75
    st.queue_depth, st.dropped_frames, st.stale_steps_dropped, st.stops_commanded = 6, 2, 1, 1
    st.malformed_inputs, st.non_finite_outputs, st.stale_observations, st.errors_total = 4, 1, 3, 8
    st.last_error = "camera/front/image_raw: unknown encoding 'yuv422'"

    ts = TaskState(header=header('world'))
    ts.task = 'drawer-open-v3'
    ts.names = ['hand_x', 'hand_y', 'goal_z']
    ts.values = [0.1, -0.25, 0.3]
    return {'ForwardFeatures': ff, 'LatentActions': la, 'ActionChunk': ac, 'PolicyStatus': st,
            'TaskState': ts}


def to_plain(value):
    """Nested plain-Python view of a message (rclpy or rosbags flavour) for comparison."""
    if hasattr(value, 'get_fields_and_field_types'):
        return {k: to_plain(getattr(value, k)) for k in value.get_fields_and_field_types()}
    if hasattr(value, '__dataclass_fields__'):
        import dataclasses
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                if f.name != '__msgtype__' and not f.name.isupper()}  # ROS constants are upper case
    if isinstance(value, np.ndarray) or hasattr(value, 'tolist') and not isinstance(value, str):
        return [to_plain(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, float):
        return float(np.float32(value)) if math.isfinite(value) else value
    return value
