"""Latent-action encoder node: ForwardFeatures -> GIDM latent actions (defi_msgs/LatentActions).

Run alone it subscribes to the features topic. In defi_bringup (fuse_model_stages) it is called
in-process by the forward predictor's worker instead (encode()), and LatentActions are published
only while somebody subscribes (RViz, a recorder, a decoder in another process)."""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass

from defi_core.runtime.worker import LatestWorker
from defi_msgs.msg import ForwardFeatures, LatentActions
from defi_ros import qos
from defi_ros.bootstrap import run_node
from defi_ros.conversions import latent_to_msg, policy_features_from_msg, stamp_to_ns
from defi_ros.lifecycle import DefiNode
from defi_ros.model import ModelParams, model_call, warm_up_features
from defi_ros.params import param


@dataclass
class LatentEncoderParams(ModelParams):
    features_topic: str = param('defi/forward_features', 'ForwardFeatures in')
    latent_topic: str = param('defi/latent_actions', 'LatentActions out')
    frame_id: str = param('', 'header.frame_id of the latent actions')


class LatentActionEncoderNode(DefiNode):
    params_cls = LatentEncoderParams
    status_row = 1

    def __init__(self, policy=None, node_name: str = 'latent_action_encoder', *,
                 in_process: bool = False, **kwargs):
        super().__init__(node_name, policy=policy, **kwargs)
        self.in_process = in_process     # True: fed by encode() calls, no features subscription

    def setup(self) -> None:
        p = self.params
        self.latent_pub = self.create_lifecycle_publisher(LatentActions, p.latent_topic, qos.RELIABLE)
        if self.in_process:
            return
        self.create_subscription(ForwardFeatures, p.features_topic, self.on_features, qos.FEATURES,
                                 callback_group=self.callbacks)
        self.worker = LatestWorker(self._compute, 'defi-latent',
                                   functools.partial(self.report_failure, 'latent actions'))

    def warm_up(self) -> None:
        with model_call():
            policy = self.require_policy()
            policy.latent_actions(*warm_up_features(policy))

    def on_features(self, msg: ForwardFeatures) -> None:
        if not self.active:
            return
        try:
            feats, instruction = policy_features_from_msg(msg, self.require_policy().cfg,
                                                          self.params.features_topic)
        except ValueError as exc:
            self.report_error('malformed_inputs', str(exc))
            return
        if self.worker is None:     # not reached: an in-process encoder has no features subscription
            raise RuntimeError('latent-action encoder: no worker (an in-process encoder is fed by encode())')
        self.worker.submit((stamp_to_ns(msg.header.stamp), feats, instruction))

    def _compute(self, item) -> None:
        import torch
        stamp, feats, instruction = item
        with model_call():
            lang = self.require_policy().encode_instruction([instruction])
            self.encode(stamp, torch.from_numpy(feats.copy())[None], lang)

    def encode(self, stamp: int, feats, lang):
        """features [1, T, N, C] + instruction embedding -> latent-action tokens [1, Q, D] (None if
        not finite or not active); publishes LatentActions when somebody listens."""
        if not self.active:
            return None
        policy = self.require_policy()
        t0 = time.perf_counter()
        with model_call():
            codes, tokens = policy.latent_actions(feats, lang)
        if not bool(tokens.isfinite().all()):
            self.report_error('non_finite_outputs', 'latent actions: non-finite tokens; not published')
            return None
        self.counters.set(latent_ms=(time.perf_counter() - t0) * 1e3)
        if not self.in_process or self.latent_pub.get_subscription_count() > 0:
            self.latent_pub.publish(latent_to_msg(codes[0].cpu().numpy(), tokens[0].float().cpu().numpy(),
                                                  stamp, self.params.frame_id))
        return tokens


def main(args=None) -> None:
    run_node(LatentActionEncoderNode, args)


if __name__ == '__main__':
    main()
