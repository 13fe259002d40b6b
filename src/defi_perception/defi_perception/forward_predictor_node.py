"""Forward predictor node: camera(s) + instruction -> GFDM features (and a preview of the future).

- GFDM features of the latest synchronised observation + instruction, at most at control_rate_hz,
  published as defi_msgs/ForwardFeatures on defi/forward_features (stamp = camera stamp).
- Predicted future frames sampled at preview_rate_hz (much lower: it is a full sampling loop) on
  its own worker thread, published as one sensor_msgs/Image strip [now | t+1 ... t+T] (one row per
  camera) on defi/predicted_frames for RViz.
Inference runs on worker threads (latest-wins); ROS callbacks only decode, buffer and hand over.
Frames stamped more than max_future_s ahead of the node's clock are refused (counted, logged with
the topic); when the clock or the camera's stamps go back, the buffers are reset so that fresh
frames are processed again.
"""
from __future__ import annotations

import functools
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String

from defi_core.checkpoint import checkpoint_facts
from defi_core.runtime.camera_sync import CameraSync
from defi_core.runtime.inputs import DEFAULT_MAX_INSTRUCTION_CHARS, check_instruction
from defi_core.runtime.worker import LatestWorker
from defi_msgs.msg import ForwardFeatures, PolicyStatus
from defi_ros import qos
from defi_ros.bootstrap import run_node
from defi_ros.conversions import (
    features_to_msg,
    image_msg_to_rgb,
    is_compressed_topic,
    rgb_to_image_msg,
    stamp_to_ns,
    string_from_cdr,
)
from defi_ros.lifecycle import DefiNode
from defi_ros.model import ModelParams, model_call, warm_up_features
from defi_ros.params import param


def camera_topic_map(entries: Sequence[str], cameras: Sequence[str]) -> Tuple[Dict[str, str], bool]:
    """({checkpoint camera: topic} in the checkpoint's camera order, True when given by position)
    from parameter camera_topics: '<camera>=<topic>' entries, matched by name in any order (a ROS
    topic name never holds '='), or plain topics taken in the checkpoint's camera order."""
    where = "parameter 'camera_topics'"
    entries, cameras = [str(e).strip() for e in entries], list(cameras)
    named = ['=' in e for e in entries]
    if entries and not any(named):
        if len(entries) != len(cameras):
            raise ValueError(f'{where}: {len(entries)} topic(s) {entries} for the checkpoint cameras '
                             f"{cameras}; give one '<camera>=<topic>' per camera (or one topic per "
                             'camera, in this order)')
        return dict(zip(cameras, entries, strict=True)), True
    if not all(named):
        raise ValueError(f"{where}: {entries} mixes '<camera>=<topic>' entries and plain topics; give "
                         f"one '<camera>=<topic>' per checkpoint camera {cameras}")
    given: Dict[str, str] = {}
    for entry in entries:
        name, _, topic = (part.strip() for part in entry.partition('='))
        if not name or not topic:
            raise ValueError(f"{where}: {entry!r} is not '<camera>=<topic>'")
        if name in given:
            raise ValueError(f'{where}: camera {name!r} is given twice')
        given[name] = topic
    unknown = [n for n in given if n not in cameras]
    missing = [c for c in cameras if c not in given]
    if unknown or missing:
        raise ValueError(f'{where}: the checkpoint cameras are {cameras}; '
                         + '; '.join(([f'not a checkpoint camera: {unknown}'] if unknown else [])
                                     + ([f'no topic for {missing}'] if missing else [])))
    return {c: given[c] for c in cameras}, False


@dataclass
class ForwardPredictorParams(ModelParams):
    camera_topics: List[str] = param(
        ['camera/image_raw'], "the image topic of each checkpoint camera, by name: '<camera>=<topic>' "
        "(e.g. 'front=camera/front/image_raw'); plain topics are taken in the checkpoint's camera "
        "order; '.../compressed' topics are read as sensor_msgs/CompressedImage")
    instruction_topic: str = param('instruction', 'std_msgs/String language instruction (latched)')
    features_topic: str = param('defi/forward_features', 'ForwardFeatures out')
    predicted_frames_topic: str = param('defi/predicted_frames',
                                        'Image strip of predicted future frames (now | t+1 ... t+T)')
    control_rate_hz: float = param(10.0, 'observations processed per second (Hz)', min=0.01, max=1000.0)
    preview_rate_hz: float = param(1.0, 'predicted-frame previews per second; 0 = none', min=0.0, max=100.0)
    preview_steps: int = param(0, "sampler steps of the preview; 0 = the checkpoint's", min=0, max=10000)
    max_age_s: float = param(1.0, 'observations older than this are not processed (s)', min=0.0, max=3600.0)
    sync_tolerance_s: float = param(0.1, 'other cameras: frame at most this much older than camera 0 (s)',
                                    min=0.0, max=60.0)
    frame_id: str = param('', 'header.frame_id of the features and the predicted frames')
    max_instruction_chars: int = param(DEFAULT_MAX_INSTRUCTION_CHARS, 'longer instructions are refused',
                                       min=1, max=1_000_000)


class ForwardPredictorNode(DefiNode):
    params_cls = ForwardPredictorParams

    def __init__(self, policy=None, node_name: str = 'forward_predictor', **kwargs):
        super().__init__(node_name, policy=policy, **kwargs)
        self.instruction = ''
        self.camera_topics: Dict[str, str] = {}     # setup(): checkpoint camera -> its image topic
        self._lock = threading.Lock()
        self._last_submitted_ns = -1
        self.features_worker: LatestWorker | None = None
        self.preview_worker: LatestWorker | None = None     # stays None without a preview
        # defi_bringup's fused model stages: called with (stamp, features, lang, instruction) on
        # the features worker, under the model lock, before the features are published
        self.downstream: Callable[[int, Any, Any, str], None] | None = None

    # ---- lifecycle hooks ----------------------------------------------------------------------
    def setup(self) -> None:
        policy = self.require_policy()
        p, cfg = self.params, policy.cfg
        cameras = checkpoint_facts(policy).cameras
        self.camera_topics, by_position = camera_topic_map(p.camera_topics, cameras)
        if by_position and len(cameras) > 1:
            # the order is easy to get wrong and nothing would notice: the views would just swap
            self.get_logger().warning(
                f"parameter 'camera_topics': plain topics taken in the checkpoint's camera order "
                f"({', '.join(f'{c}={t}' for c, t in self.camera_topics.items())}); give them by name, "
                f"'<camera>=<topic>'")
        if p.control_rate_hz <= 0:
            raise ValueError(f"parameter 'control_rate_hz': must be > 0, got {p.control_rate_hz}")
        self.sync = CameraSync(cfg.cameras, p.sync_tolerance_s)
        self.image_size = int(cfg.image_size)
        stride = int(getattr(cfg, 'future_stride', 1))
        frames = int(getattr(cfg, 'feature_frames', cfg.num_future_frames))
        self.frame_offsets = [(j + 1) * stride for j in range(frames)] if frames > 1 else [0]
        for cam, topic in self.camera_topics.items():
            msg_type = CompressedImage if is_compressed_topic(topic) else Image
            self.create_subscription(msg_type, topic, functools.partial(self.on_image, cam, topic),
                                     qos.SENSOR, callback_group=self.callbacks)
        # raw: rclpy's String conversion silently cuts at a NUL and replaces invalid UTF-8
        self.create_subscription(String, p.instruction_topic, self.on_instruction, qos.INSTRUCTION,
                                 callback_group=self.callbacks, raw=True)
        self.features_pub = self.create_lifecycle_publisher(ForwardFeatures, p.features_topic, qos.FEATURES)
        self.features_worker = LatestWorker(self._compute_features, 'defi-features',
                                            functools.partial(self.report_failure, 'forward features'))
        if p.preview_rate_hz > 0 and getattr(policy, 'gfdm', None) is not None:
            self.preview_pub = self.create_lifecycle_publisher(Image, p.predicted_frames_topic, qos.BEST_EFFORT)
            self.preview_worker = LatestWorker(self._compute_preview, 'defi-preview',
                                               functools.partial(self.report_failure, 'predicted frames'))
            self.create_timer(1.0 / p.preview_rate_hz, self._on_preview_timer,
                              callback_group=self.timer_group)

    def warm_up(self) -> None:
        with model_call():
            warm_up_features(self.require_policy())

    def teardown(self) -> None:
        for w in (self.features_worker, self.preview_worker):
            if w is not None:
                w.close()

    def fill_status(self, msg: PolicyStatus) -> None:
        if self.features_worker is not None:
            msg.dropped_frames = self.features_worker.dropped + self.counters.dropped_frames
            msg.queue_depth = int(self.features_worker.busy)

    # ---- callbacks ----------------------------------------------------------------------------
    def on_instruction(self, raw: bytes) -> None:
        topic, limit = self.params.instruction_topic, self.params.max_instruction_chars
        try:
            # 4 bytes per character at most: longer data cannot be within the limit
            text = check_instruction(string_from_cdr(raw, 4 * limit), limit).strip()
        except ValueError as exc:
            # the old task must not go on under a new, unreadable instruction
            self.instruction = ''
            self.report_error('malformed_inputs', f'{topic}: {exc}; instruction refused (no '
                              'features until a valid one arrives)')
            return
        if not text:
            self.report_error('malformed_inputs', f"{self.params.instruction_topic}: empty instruction "
                              '(no features are computed until a non-empty one arrives)')
        self.instruction = text

    def on_time_jump(self) -> None:
        if not self._configured:
            return                  # nothing buffered before setup()
        with self._lock:
            self.sync.clear()
            self._last_submitted_ns = -1

    def on_image(self, camera: str, topic: str, msg) -> None:
        if not self.active:
            return
        now = self.now_ns()
        stamp = stamp_to_ns(msg.header.stamp) or now
        if not self.check_stamp(topic, stamp, now):
            return
        try:
            rgb = image_msg_to_rgb(msg, self.image_size)
        except ValueError as exc:
            self.report_error('malformed_inputs', f'{topic}: {exc}')
            return
        with self._lock:
            if camera == self.sync.reference and stamp < self._last_submitted_ns:
                back_s = (self._last_submitted_ns - stamp) * 1e-9
                if back_s <= self.params.max_future_s:
                    # delivered out of order: a newer frame was processed already
                    self.counters.set(dropped_frames=self.counters.dropped_frames + 1)
                    return
                # the camera's time went back (a restarted driver or sim): start over from here
                self.get_logger().warning(f'{topic}: stamps went back {back_s:.3f} s; camera '
                                          'buffers reset', throttle_duration_sec=2.0)
                self.sync.clear()
                self._last_submitted_ns = -1
            self.sync.push(camera, stamp, rgb)
            if camera != self.sync.reference or not self.instruction:
                return
            # 0.75: a 10 Hz camera with jitter still gives every frame; 30 Hz gives every third
            if stamp - self._last_submitted_ns < 0.75e9 / self.params.control_rate_hz:
                return
            obs = self.sync.observation(stamp)
            if obs is None:
                self.report_error('stale_observations', f'camera {self.sync.last_missing!r}: no frame '
                                  f'within sync_tolerance_s={self.params.sync_tolerance_s} of '
                                  f'{topic} stamp {stamp * 1e-9:.3f}')
                return
            self._last_submitted_ns = stamp
        if self.features_worker is None:
            raise RuntimeError('forward predictor: camera frame before setup() made the features worker')
        self.features_worker.submit((stamp, obs[1], self.instruction))

    def _on_preview_timer(self) -> None:
        if not self.active or not self.instruction or self.preview_worker is None:
            return
        with self._lock:
            obs = self.sync.observation()
        if obs is not None:
            self.preview_worker.submit((obs[0], obs[1], self.instruction))

    # ---- worker threads -----------------------------------------------------------------------
    def _images(self, frames):
        import torch
        return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)[None]   # [1, V, 3, H, W]

    def _compute_features(self, item) -> None:
        stamp, frames, instruction = item
        now = self.now_ns()
        age_s = (now - stamp) * 1e-9
        topic = self.camera_topics[self.sync.reference]
        if not self.check_stamp(topic, stamp, now):
            return      # the clock went back while this frame waited
        if age_s > self.params.max_age_s:
            self.report_error('stale_observations', f'{topic}: observation is '
                              f'{age_s:.3f} s old (max_age_s={self.params.max_age_s}); skipped')
            return
        policy = self.require_policy()
        t0 = time.perf_counter()
        with model_call():
            lang = policy.encode_instruction([instruction])
            feats = policy.forward_features(self._images(frames), lang)
            if not bool(feats.isfinite().all()):
                self.report_error('non_finite_outputs', 'forward features: non-finite values; not published')
                return
            self.counters.set(features_ms=(time.perf_counter() - t0) * 1e3)
            if self.downstream is not None:
                self.downstream(stamp, feats, lang, instruction)
        # fused: the chunk is out already; the features are only for whoever listens
        if self.downstream is None or self.features_pub.get_subscription_count() > 0:
            self.features_pub.publish(features_to_msg(feats[0].float().cpu().numpy(), stamp, instruction,
                                                      self.frame_offsets, self.params.frame_id))

    def _compute_preview(self, item) -> None:
        stamp, frames, instruction = item
        steps = self.params.preview_steps or None
        policy = self.require_policy()
        gfdm = policy.gfdm
        if gfdm is None:
            return      # not reached: setup() makes the preview worker only for a policy with a GFDM
        with model_call():
            lang = policy.encode_instruction([instruction])
        # the model lock is taken per denoising step, so the control path waits at most one step
        # instead of a whole sampling loop (measured at 1 Hz, 10 steps, base: the whole loop under
        # the lock dropped 21 of 201 frames, p95 306 ms)
        # run every step; only the last one's frames are shown
        (future,) = deque(_one_step_at_a_time(gfdm.sample_steps(self._images(frames), lang, steps=steps)),
                          maxlen=1)
        future = future[0].float().cpu().numpy()           # [T, V, 3, H, W] in [0, 1]
        if future.ndim == 4:                               # [T, 3, H, W]: one view
            future = future[:, None]
        rows = []
        for v, now in enumerate(frames):
            preds = [np.clip(future[t, v].transpose(1, 2, 0) * 255.0 + 0.5, 0, 255).astype(np.uint8)
                     for t in range(future.shape[0])]
            rows.append(np.concatenate([now] + preds, axis=1))
        strip = np.concatenate(rows, axis=0)
        self.preview_pub.publish(rgb_to_image_msg(strip, stamp, self.params.frame_id))


def _one_step_at_a_time(steps):
    """Advance a step generator (GFDM.sample_steps) under the process's model lock, releasing the
    lock between steps."""
    while True:
        with model_call():
            item = next(steps, _DONE)
        if item is _DONE:
            return
        yield item
        time.sleep(0.0005)          # let a waiting control-path call take the lock first


_DONE = object()


def main(args=None) -> None:
    run_node(ForwardPredictorNode, args)


if __name__ == '__main__':
    main()
