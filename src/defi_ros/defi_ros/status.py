"""A DeFI node's health as messages: a PolicyStatus turned into the /diagnostics entry
(diagnostic_msgs) and the RViz text marker on defi/status_marker. DefiNode.publish_status sends the
three at `status_rate_hz`."""
from __future__ import annotations

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from visualization_msgs.msg import Marker

from defi_msgs.msg import PolicyStatus

__all__ = ['STATE_NAMES', 'diagnostics', 'status_marker']

STATE_NAMES = {0: 'unconfigured', 1: 'idle', 2: 'running', 3: 'STOPPED', 4: 'ERROR'}


def diagnostics(msg: PolicyStatus, counters: dict) -> DiagnosticArray:
    """The /diagnostics message of a PolicyStatus: ERROR in the error state, WARN after any error or
    when stopped, else OK. `counters` (StatusCounters.snapshot()) adds the counts PolicyStatus has
    no field for."""
    level = DiagnosticStatus.OK
    if msg.state == PolicyStatus.STATE_ERROR:
        level = DiagnosticStatus.ERROR
    elif msg.errors_total or msg.state == PolicyStatus.STATE_STOPPED:
        level = DiagnosticStatus.WARN
    diag = DiagnosticStatus(level=level, name=f'defi: {msg.node_name}',
                            hardware_id='defi', message=msg.last_error or 'ok')
    diag.values = [KeyValue(key=k, value=str(getattr(msg, k))) for k in (
        'state', 'features_ms', 'latent_ms', 'decode_ms', 'chunk_ms', 'queue_depth',
        'dropped_frames', 'stale_steps_dropped', 'stops_commanded', 'malformed_inputs',
        'non_finite_outputs', 'stale_observations', 'errors_total')]
    diag.values += [KeyValue(key=k, value=str(counters[k])) for k in ('future_stamps', 'clock_jumps')]
    arr = DiagnosticArray()
    arr.header.stamp = msg.header.stamp
    arr.status = [diag]
    return arr


def status_marker(msg: PolicyStatus, frame_id: str, row: int) -> Marker:
    """A text marker in `frame_id` with the node's state, latencies and errors; `row` stacks the
    nodes' lines (red after an error)."""
    m = Marker(type=Marker.TEXT_VIEW_FACING, action=Marker.ADD, ns='defi_status', id=row)
    m.header.frame_id = frame_id
    m.header.stamp = msg.header.stamp
    m.pose.position.z = 1.0 + 0.07 * (5 - row)
    m.pose.orientation.w = 1.0
    m.scale.z = 0.05
    bad = msg.state == PolicyStatus.STATE_ERROR or msg.errors_total > 0
    m.color.r, m.color.g, m.color.b, m.color.a = (1.0, 0.3, 0.3, 1.0) if bad else (0.9, 0.9, 0.9, 1.0)
    m.text = (f'{msg.node_name}: {STATE_NAMES.get(msg.state, msg.state)}  '
              f'feat {msg.features_ms:.0f} dec {msg.decode_ms:.0f} chunk {msg.chunk_ms:.0f} ms  '
              f'err {msg.errors_total}' + (f'  ({msg.last_error[:60]})' if msg.last_error else ''))
    m.lifetime.sec = 3
    return m
