"""Action decoder node: features + latent actions + instruction (+ joint state) -> ActionChunk.

The chunk is stamped with the OBSERVATION time (the camera stamp behind the features), carries dt,
the action names, horizon and action_dim. Features and latent actions are paired by stamp. A chunk
with non-finite values is still published (counted here) so that the executor stops at once.
In defi_bringup (fuse_model_stages) the forward predictor's worker calls decode() in-process
instead, and the features / latent-actions subscriptions are not made.
"""
from __future__ import annotations

import functools
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np
from sensor_msgs.msg import JointState

from defi_core.checkpoint import checkpoint_facts
from defi_core.runtime.safety import all_finite
from defi_core.runtime.worker import LatestWorker
from defi_msgs.msg import ActionChunk, ForwardFeatures, LatentActions
from defi_ros import qos
from defi_ros.bootstrap import run_node
from defi_ros.conversions import chunk_to_msg, latent_from_msg, policy_features_from_msg, stamp_to_ns
from defi_ros.lifecycle import DefiNode
from defi_ros.model import ModelParams, model_call, warm_up_features
from defi_ros.params import param

PAIRING_WINDOW = 8   # stamps kept while waiting for the matching features / latent actions
FALLBACK_DT_S = 0.1  # chunk dt when neither the parameter nor the checkpoint gives one


@dataclass
class ActionDecoderParams(ModelParams):
    features_topic: str = param('defi/forward_features', 'ForwardFeatures in')
    latent_topic: str = param('defi/latent_actions', 'LatentActions in')
    chunk_topic: str = param('defi/action_chunk', 'ActionChunk out')
    joint_states_topic: str = param('joint_states', 'sensor_msgs/JointState: the observation state '
                                    '(when the checkpoint has state_dim > 0)')
    state_names: List[str] = param([], "joints forming the state, matched by name in each JointState; "
                                   "[] = the checkpoint's names if it records them, else the message "
                                   "must carry exactly state_dim positions")
    action_names: List[str] = param([], "names of the chunk columns (ActionChunk.names); [] = the "
                                    "checkpoint's (its training data's), else a0, a1, ...")
    action_dt: float = param(0.0, "seconds between chunk steps; 0 = 1/fps of the checkpoint's training data",
                             min=0.0, max=60.0)
    max_age_s: float = param(1.0, 'features older than this are not decoded (s)', min=0.0, max=3600.0)
    frame_id: str = param('', 'header.frame_id of the chunks')


class ActionDecoderNode(DefiNode):
    params_cls = ActionDecoderParams
    status_row = 2

    def __init__(self, policy=None, node_name: str = 'action_decoder', *, in_process: bool = False,
                 **kwargs):
        super().__init__(node_name, policy=policy, **kwargs)
        self.in_process = in_process     # True: fed by decode() calls, no features/latents topics
        self._lock = threading.Lock()
        self._features: OrderedDict[int, Tuple[np.ndarray, str]] = OrderedDict()  # stamp -> (features, instruction)
        self._latents: OrderedDict[int, np.ndarray] = OrderedDict()               # stamp -> tokens
        self._joint_state = None
        self.state_names: list = []      # setup(): the parameter's, else the checkpoint's

    def setup(self) -> None:
        policy = self.require_policy()
        p, cfg = self.params, policy.cfg
        if p.action_names and len(p.action_names) != cfg.action_dim:
            raise ValueError(f"parameter 'action_names': {len(p.action_names)} names for the "
                             f'checkpoint action_dim {cfg.action_dim}')
        if p.state_names and len(p.state_names) != cfg.state_dim:
            raise ValueError(f"parameter 'state_names': {len(p.state_names)} names for the "
                             f'checkpoint state_dim {cfg.state_dim}')
        if p.action_dt < 0:
            raise ValueError(f"parameter 'action_dt': must be >= 0 (0 = from the checkpoint), got {p.action_dt}")
        facts = checkpoint_facts(policy)
        self.action_dt = p.action_dt or self._checkpoint_dt(facts)
        if p.action_names and facts.action_names and list(p.action_names) != list(facts.action_names):
            self.get_logger().info(f"parameter 'action_names' {list(p.action_names)} renames the "
                                   f"checkpoint's action columns {list(facts.action_names)}")
        self.names = (list(p.action_names) or list(facts.action_names)
                      or [f'a{i}' for i in range(cfg.action_dim)])
        # counts checked: the parameter's above, the checkpoint's by DefiConfig.validate
        self.state_names = list(p.state_names) or list(facts.state_names)
        if cfg.state_dim > 0:
            self.create_subscription(JointState, p.joint_states_topic, self.on_joint_state,
                                     qos.SENSOR, callback_group=self.callbacks)
        self.chunk_pub = self.create_lifecycle_publisher(ActionChunk, p.chunk_topic, qos.RELIABLE)
        if self.in_process:
            return
        self.create_subscription(ForwardFeatures, p.features_topic, self.on_features, qos.FEATURES,
                                 callback_group=self.callbacks)
        self.create_subscription(LatentActions, p.latent_topic, self.on_latent, qos.RELIABLE,
                                 callback_group=self.callbacks)
        self.worker = LatestWorker(self._compute, 'defi-decode',
                                   functools.partial(self.report_failure, 'action decoding'))

    def _checkpoint_dt(self, facts) -> float:
        """1/fps of the data the checkpoint was trained on (its config's fps)."""
        if facts.chunk_dt_s is not None:
            return facts.chunk_dt_s
        self.get_logger().warning(f"the checkpoint records no training fps (config.json config.fps): "
                                  f"chunk dt = {FALLBACK_DT_S} s; set parameter 'action_dt' to the "
                                  'control period of the training data')
        return FALLBACK_DT_S

    def warm_up(self) -> None:
        import torch
        policy = self.require_policy()
        cfg = policy.cfg
        with model_call():
            feats, lang = warm_up_features(policy)
            _, tokens = policy.latent_actions(feats, lang)
            state = torch.zeros(1, cfg.state_dim) if cfg.state_dim > 0 else None
            policy.decode_actions(feats, tokens, lang, state)

    # ---- callbacks ----------------------------------------------------------------------------
    def on_time_jump(self) -> None:
        with self._lock:
            self._features.clear()
            self._latents.clear()
            self._joint_state = None

    def on_joint_state(self, msg: JointState) -> None:
        stamp = stamp_to_ns(msg.header.stamp)
        if stamp and not self.check_stamp(self.params.joint_states_topic, stamp):
            return
        self._joint_state = msg

    def on_features(self, msg: ForwardFeatures) -> None:
        if not self.active:
            return
        try:
            feats, instruction = policy_features_from_msg(msg, self.require_policy().cfg,
                                                          self.params.features_topic)
        except ValueError as exc:
            self.report_error('malformed_inputs', str(exc))
            return
        self._store_and_pair(self._features, stamp_to_ns(msg.header.stamp), (feats, instruction))

    def on_latent(self, msg: LatentActions) -> None:
        if not self.active:
            return
        try:
            _, tokens = latent_from_msg(msg)
        except ValueError as exc:
            self.report_error('malformed_inputs', f'{self.params.latent_topic}: {exc}')
            return
        self._store_and_pair(self._latents, stamp_to_ns(msg.header.stamp), tokens)

    def _store_and_pair(self, pending: OrderedDict, stamp: int, value) -> None:
        """Keep `value` in `pending` (features or latents) and, once both halves of `stamp` are
        there, hand the pair to the worker."""
        with self._lock:
            pending[stamp] = value
            while len(pending) > PAIRING_WINDOW:
                pending.popitem(last=False)
            if stamp not in self._features or stamp not in self._latents:
                return
            feats, instruction = self._features.pop(stamp)
            tokens = self._latents.pop(stamp)
            # anything older can no longer be paired usefully
            for d in (self._features, self._latents):
                for old in [s for s in d if s < stamp]:
                    del d[old]
        ok, state = self.current_state()
        if ok:
            if self.worker is None:     # not reached: an in-process decoder has no such subscriptions
                raise RuntimeError('action decoder: no worker (an in-process decoder is fed by decode())')
            self.worker.submit((stamp, feats, tokens, instruction, state))

    def current_state(self):
        """(True, state [state_dim] or None when the checkpoint has no state), or (False, None)
        after reporting why the latest JointState cannot be used."""
        if self.require_policy().cfg.state_dim <= 0:
            return True, None
        try:
            return True, self._state_vector()
        except ValueError as exc:
            self.report_error('malformed_inputs', f'{self.params.joint_states_topic}: {exc}')
            return False, None

    def _state_vector(self) -> np.ndarray:
        """The state from the latest JointState, by joint name; a message whose names or count do
        not fit is refused (never the first state_dim of more positions)."""
        msg, dim, names = self._joint_state, self.require_policy().cfg.state_dim, self.state_names
        if msg is None:
            raise ValueError(f'no JointState received yet (the checkpoint needs state_dim={dim})')
        pos, msg_names = list(msg.position), list(msg.name)
        if msg_names and len(msg_names) != len(pos):
            raise ValueError(f'name/position: {len(msg_names)} names for {len(pos)} positions')
        if names:
            missing = [n for n in names if n not in msg_names]
            if missing:
                raise ValueError(f"name: joints {missing} (parameter state_names, else the checkpoint's) "
                                 f'are not in the message (it has {msg_names[:16]})')
            pos = [pos[msg_names.index(n)] for n in names]
        elif len(pos) != dim:
            raise ValueError(f'position: {len(pos)} values, the checkpoint needs state_dim={dim}; '
                             f"set parameter 'state_names' to the {dim} joints forming the state "
                             f'(the message has {msg_names[:16]})')
        state = np.asarray(pos, dtype=np.float32)
        if not np.all(np.isfinite(state)):
            raise ValueError('position: non-finite values')
        return state

    # ---- worker thread ------------------------------------------------------------------------
    def _compute(self, item) -> None:
        import torch
        stamp, feats, tokens, instruction, state = item
        with model_call():
            lang = self.require_policy().encode_instruction([instruction])
            self.decode(stamp, torch.from_numpy(feats.copy())[None], torch.from_numpy(tokens.copy())[None],
                        lang, instruction, state)

    def decode(self, stamp: int, feats, tokens, lang, instruction: str, state=None) -> None:
        """features [1, T, N, C] + tokens [1, Q, D] + instruction embedding (+ state [state_dim])
        -> one ActionChunk published, stamped `stamp`; nothing for a stale observation."""
        import torch
        if not self.active:
            return
        now = self.now_ns()
        age_s = (now - stamp) * 1e-9
        source = 'in-process features' if self.in_process else self.params.latent_topic
        if not self.check_stamp(source, stamp, now):
            return
        if age_s > self.params.max_age_s:
            self.report_error('stale_observations', f'{source}: observation is {age_s:.3f} s old '
                              f'(max_age_s={self.params.max_age_s}); no chunk')
            return
        policy = self.require_policy()
        t0 = time.perf_counter()
        # the sampler's noise is seeded by the observation's stamp: the same observation gives the
        # same chunk, so a lockstep sim run (sim-time stamps) repeats exactly, as defi-eval's in-process one
        generator = torch.Generator().manual_seed(int(stamp) & 0x7FFF_FFFF_FFFF_FFFF)
        with model_call():
            state_t = None if state is None else torch.from_numpy(state)[None]
            chunk = policy.decode_actions(feats, tokens, lang, state_t, generator=generator)
        actions = chunk[0].float().cpu().numpy()
        if not all_finite(actions):
            # published anyway: the executor must see it and command a stop now
            self.report_error('non_finite_outputs', f'{self.params.chunk_topic}: decoded chunk has '
                              'non-finite values (the executor will stop)')
        self.chunk_pub.publish(chunk_to_msg(actions, stamp, self.action_dt, self.names,
                                            instruction, self.params.frame_id))
        self.counters.set(decode_ms=(time.perf_counter() - t0) * 1e3,
                          chunk_ms=(self.now_ns() - stamp) * 1e-6)


def main(args=None) -> None:
    run_node(ActionDecoderNode, args)


if __name__ == '__main__':
    main()
