"""Latent-action encoder node: ForwardFeatures -> GIDM latent actions (defi_msgs/LatentActions)."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from defi_core.runtime.safety import all_finite
from defi_core.runtime.worker import LatestWorker
from defi_msgs.msg import ForwardFeatures, LatentActions
from defi_perception import qos
from defi_perception.conversions import latent_to_msg, policy_features_from_msg, stamp_to_ns
from defi_perception.node_base import (CommonParams, DefiNode, model_call, run_node,
                                      warm_up_features)


@dataclass
class LatentEncoderParams(CommonParams):
    features_topic: str = 'defi/forward_features'
    latent_topic: str = 'defi/latent_actions'
    frame_id: str = ''


class LatentActionEncoderNode(DefiNode):
    params_cls = LatentEncoderParams
    status_row = 1

    def __init__(self, policy=None, node_name: str = 'latent_action_encoder', **kwargs):
        super().__init__(node_name, policy=policy, **kwargs)
        self._lock = threading.Lock()
        self._last_stamp = -1          # newest observation taken: older or repeated ones are skipped

    def setup(self) -> None:
        p = self.params
        self.features_sub = self.create_subscription(ForwardFeatures, p.features_topic, self.on_features,
                                                     qos.FEATURES, callback_group=self.callbacks)
        self.latent_pub = self.create_publisher(LatentActions, p.latent_topic, qos.RELIABLE)
        self.worker = LatestWorker(self._compute, 'defi-latent', lambda exc: self.report_error(
            'other', f'latent actions failed: {type(exc).__name__}: {exc}'))

    def warm_up(self) -> None:
        with model_call():
            self.policy.latent_actions(*warm_up_features(self.policy))

    def local_inputs(self) -> dict:
        return {self.features_sub.topic_name: lambda msg: self.on_features(msg, inline=True)}

    def on_features(self, msg: ForwardFeatures, inline: bool = False) -> None:
        """DDS callback (computes on the worker), or in-process handoff (computes right here)."""
        if not self.active:
            return
        stamp = stamp_to_ns(msg.header.stamp)
        with self._lock:
            if stamp <= self._last_stamp:      # the DDS copy of a handed-over message
                return
            self._last_stamp = stamp
        try:
            feats, instruction = policy_features_from_msg(msg, self.policy.cfg, self.params.features_topic)
        except ValueError as exc:
            self.report_error('malformed_inputs', str(exc))
            return
        if inline:
            self.worker.run_here((stamp, feats, instruction))
        else:
            self.worker.submit((stamp, feats, instruction))

    def _compute(self, item) -> None:
        import torch
        stamp, feats, instruction = item
        t0 = time.perf_counter()
        with model_call():
            lang = self.policy.encode_instruction([instruction])
            codes, tokens = self.policy.latent_actions(torch.from_numpy(feats.copy())[None], lang)
        tokens = tokens[0].float().cpu().numpy()
        if not all_finite(tokens):
            self.report_error('non_finite_outputs', 'latent actions: non-finite tokens; not published')
            return
        self.publish(self.latent_pub, latent_to_msg(codes[0].cpu().numpy(), tokens, stamp, self.params.frame_id))
        self.counters.set(latent_ms=(time.perf_counter() - t0) * 1e3)


def main(args=None) -> None:
    run_node(LatentActionEncoderNode, args)


if __name__ == '__main__':
    main()
