"""ExecuteInstruction action server: a goal sets the task and runs the policy until success/timeout.

Goal accepted -> publishes the instruction (latched) and enables the executor (defi/enable).
Feedback: elapsed time, chunks executed (ActionChunks seen on defi/action_chunk since the goal
started) and the last chunk latency (receive time - observation stamp).
Succeeds when the success topic (std_msgs/Bool, default sim/success) reports true; aborts on
timeout; on cancel (or at any end) it disables the executor, which commands a stop.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from rclpy.action import ActionServer, CancelResponse, GoalResponse
from std_msgs.msg import Bool, String

from defi_core.runtime.inputs import DEFAULT_MAX_INSTRUCTION_CHARS, check_instruction
from defi_msgs.action import ExecuteInstruction
from defi_msgs.msg import ActionChunk
from defi_ros import qos
from defi_ros.bootstrap import run_node
from defi_ros.conversions import stamp_to_ns
from defi_ros.lifecycle import DefiNode
from defi_ros.params import CommonParams, param

CANCEL_POLL_S = 0.05   # how often a running goal looks for a cancel request


@dataclass
class ExecuteInstructionParams(CommonParams):
    action_name: str = param('execute_instruction', 'name of the ExecuteInstruction action')
    instruction_topic: str = param('instruction', "std_msgs/String out: each goal's instruction (latched)")
    success_topic: str = param('sim/success', 'std_msgs/Bool in: true ends the goal with success')
    chunk_topic: str = param('defi/action_chunk', 'ActionChunk in (counted in the feedback)')
    enable_topic: str = param('defi/enable', 'std_msgs/Bool out: the executor runs while a goal does')
    default_timeout_s: float = param(60.0, 'goal timeout when the goal gives none (s)', min=0.0, max=1e6)
    feedback_rate_hz: float = param(2.0, 'feedback messages per second (Hz)', min=0.01, max=100.0)
    max_instruction_chars: int = param(DEFAULT_MAX_INSTRUCTION_CHARS, 'longer instructions are refused',
                                       min=1, max=1_000_000)


class ExecuteInstructionServer(DefiNode):
    params_cls = ExecuteInstructionParams
    status_row = 4
    needs_policy = False

    def __init__(self, node_name: str = 'execute_instruction_server', **kwargs):
        super().__init__(node_name, **kwargs)
        self._lock = threading.Lock()
        # wakes the goal loop at once on success, a newer goal or shutdown (a plain sleep of one
        # feedback period made every ending wait for it)
        self._wake = threading.Condition(self._lock)
        self._running_goals = 0
        self._success = False
        self._chunks = 0
        self._latency_ms = 0.0
        self._goal_seq = 0

    def setup(self) -> None:
        p = self.params
        self.instruction_pub = self.create_lifecycle_publisher(String, p.instruction_topic, qos.INSTRUCTION)
        # a plain publisher: "disable" must reach the executor also while this node deactivates
        self.enable_pub = self.create_publisher(Bool, p.enable_topic, qos.ENABLE)
        self.create_subscription(Bool, p.success_topic, self.on_success, 10,
                                 callback_group=self.callbacks)
        self.create_subscription(ActionChunk, p.chunk_topic, self.on_chunk, qos.RELIABLE,
                                 callback_group=self.callbacks)
        self.server: ActionServer | None = ActionServer(
            self, ExecuteInstruction, p.action_name, self.execute, goal_callback=self.on_goal,
            cancel_callback=self.on_cancel, callback_group=self.callbacks)

    def teardown(self) -> None:
        # end a running goal first (it aborts when inactive): destroying the server under it, or
        # leaving it running, would hang the executor's shutdown
        with self._wake:
            self.active = False
            self._wake.notify_all()
            self._wake.wait_for(lambda: self._running_goals == 0, timeout=2.0)
        server = getattr(self, 'server', None)
        if server is not None:
            server.destroy()
            self.server = None

    def on_success(self, msg: Bool) -> None:
        if msg.data:
            with self._wake:
                self._success = True
                self._wake.notify_all()

    def on_chunk(self, msg: ActionChunk) -> None:
        with self._lock:
            self._chunks += 1
            self._latency_ms = (self.now_ns() - stamp_to_ns(msg.header.stamp)) * 1e-6

    def on_goal(self, goal) -> GoalResponse:
        if not self.active:
            self.report_error('other', f'{self.params.action_name}: goal rejected, server not active')
            return GoalResponse.REJECT
        if not goal.instruction.strip():
            self.report_error('malformed_inputs', f'{self.params.action_name}: goal rejected: empty instruction')
            return GoalResponse.REJECT
        try:
            check_instruction(goal.instruction, self.params.max_instruction_chars, 'instruction')
        except ValueError as exc:
            self.report_error('malformed_inputs', f'{self.params.action_name}: goal rejected: {exc}')
            return GoalResponse.REJECT
        return GoalResponse.ACCEPT

    def on_cancel(self, goal_handle) -> CancelResponse:
        return CancelResponse.ACCEPT

    def _set_enabled(self, enabled: bool) -> None:
        self.enable_pub.publish(Bool(data=enabled))

    def execute(self, goal_handle):
        goal = goal_handle.request
        with self._wake:
            self._goal_seq += 1
            seq = self._goal_seq          # a newer goal pre-empts this one
            self._chunks, self._latency_ms, self._success = 0, 0.0, False
            self._running_goals += 1
            self._wake.notify_all()
        timeout = goal.timeout if goal.timeout > 0 else self.params.default_timeout_s
        self.instruction_pub.publish(String(data=goal.instruction.strip()))
        self._set_enabled(True)
        result = ExecuteInstruction.Result()
        start = time.monotonic()
        period = 1.0 / max(self.params.feedback_rate_hz, 0.1)
        next_feedback = start
        try:
            while True:
                elapsed = time.monotonic() - start
                if goal_handle.is_cancel_requested:
                    self._set_enabled(False)
                    goal_handle.canceled()
                    result.error_code, result.message = result.ERROR_CANCELED, 'canceled'
                    return result
                if self._goal_seq != seq or not self.active:
                    goal_handle.abort()
                    result.error_code = result.ERROR_CANCELED
                    result.message = 'pre-empted' if self.active else 'the server is shutting down'
                    return result
                if self._success:
                    self._set_enabled(False)
                    goal_handle.succeed()
                    result.success, result.error_code = True, result.ERROR_NONE
                    result.message = f'success after {elapsed:.1f} s'
                    return result
                if elapsed > timeout:
                    self._set_enabled(False)
                    goal_handle.abort()
                    result.error_code = result.ERROR_TIMEOUT
                    result.message = f'timeout after {timeout:.1f} s'
                    return result
                if elapsed >= next_feedback - start:
                    next_feedback += period
                    fb = ExecuteInstruction.Feedback()
                    fb.elapsed = float(elapsed)
                    with self._lock:
                        fb.chunks_executed, fb.last_latency_ms = self._chunks, float(self._latency_ms)
                    goal_handle.publish_feedback(fb)
                # rclpy marks a goal canceling only after on_cancel returns, so a cancel cannot
                # notify this wait: it is polled every CANCEL_POLL_S
                with self._wake:
                    self._wake.wait(min(CANCEL_POLL_S, next_feedback - time.monotonic(),
                                        max(0.01, timeout - elapsed)))
        except Exception as exc:  # noqa: BLE001 - the robot must stop whatever happened
            self._set_enabled(False)
            self.report_error('other', f'{self.params.action_name}: {type(exc).__name__}: {exc}')
            goal_handle.abort()
            result.error_code, result.message = result.ERROR_POLICY_FAILURE, str(exc)
            return result
        finally:
            with self._wake:
                self._running_goals -= 1
                self._wake.notify_all()


def main(args=None) -> None:
    run_node(ExecuteInstructionServer, args, num_threads=3)   # one is held by a running goal


if __name__ == '__main__':
    main()
