"""Experiment (policy_diagnosis.md row 15): does an auxiliary loss that makes the policy's visual
tokens carry the privileged task state (hand, gripper, object pose, goal) improve the closed loop?
Not a product feature: the product code is patched here, for this experiment only.

    python benchmarks/experiments/privileged_aux_loss.py data  OUT_CACHE
    python benchmarks/experiments/privileged_aux_loss.py train OUT_RUN CACHE GFDM_CKPT GIDM_CKPT
    python benchmarks/experiments/privileged_aux_loss.py diag  CHECKPOINT [policy_diagnosis args...]
    python benchmarks/experiments/privileged_aux_loss.py probe RUN_DIR CACHE

data: the default's labelled episodes (5 tasks x 50, seeds 0.., noise 0.1, 64 px) with
observation.state = 9 joints + the 21 privileged values. train: the default's finetune settings;
the action head sees only the joints (the privileged columns are zeroed after normalisation) and
an MLP on the mean Video Former token predicts the privileged values (weight AUX_W, default 1).
diag: policy_diagnosis with the sim's 9 joints as the state. probe: the head's mean error per
privileged value on the run's held-out episodes, in cm.
"""
from __future__ import annotations

import json
import os
import runpy
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
JOINTS, FULL = 9, 30
AUX_W = float(os.environ.get('AUX_W', '1.0'))
TASKS = ('reach-v3', 'button-press-topdown-v3', 'drawer-open-v3', 'door-open-v3', 'window-open-v3')


def patch_policy() -> None:
    from defi_core import policy as P
    init, loss_fn = P.DefiPolicy.__init__, P.DefiPolicy.compute_loss

    def __init__(self, cfg, text_encoder=None):
        init(self, cfg, text_encoder)
        self.aux_head = nn.Sequential(nn.LayerNorm(cfg.vf_dim), nn.Linear(cfg.vf_dim, 128), nn.GELU(),
                                      nn.Linear(128, FULL - JOINTS))

    def norm_state(self, state):
        state = state.to(self.device).float()
        if state.shape[-1] < FULL:          # at run time: the 9 joints only
            state = F.pad(state, (0, FULL - state.shape[-1]))
        return self._require_normalizer().normalize('observation.state', state)

    def _context(self, feats, tokens, lang, state):
        vf = self.video_former(feats)
        self._last_vf = vf
        if state is not None:
            s = norm_state(self, state)
            state = torch.cat([s[:, :JOINTS], torch.zeros_like(s[:, JOINTS:])], -1)
        return self.action_head.encode_context(lang, vf, tokens if self.idm is not None else None, state)

    def compute_loss(self, batch, sigma=None):
        loss, logs = loss_fn(self, batch, sigma)
        target = norm_state(self, batch['observation.state'])[:, JOINTS:]
        aux = F.mse_loss(self.aux_head(self._last_vf.mean(1)), target)
        logs['aux_loss'] = float(aux.detach())
        return loss + AUX_W * aux, logs

    P.DefiPolicy.__init__ = __init__
    P.DefiPolicy._context = _context
    P.DefiPolicy.compute_loss = compute_loss


def make_data(out: str) -> None:
    from defi_sim import expert_data, metaworld_env
    joints = metaworld_env.MetaWorldSim.joint_positions

    def with_privileged(sim):
        o = sim.observation
        return np.concatenate([joints(sim), o[:18], o[36:39]])

    metaworld_env.MetaWorldSim.joint_positions = with_privileged
    expert_data.ARM_JOINTS = tuple(metaworld_env.ARM_JOINTS) + tuple(
        n for n in metaworld_env.observation_names() if not n.startswith('prev_'))
    cfg = expert_data.ExpertDataConfig(tasks=TASKS, episodes=50, seed=0, noise_std=0.1, image_size=64)
    expert_data.write_expert_cache(cfg, out, jobs=1)


def probe(run: str, cache: str) -> None:
    from defi_core.checkpoint import load_policy
    from defi_training.dataset import ClipDataset
    pol = load_policy(f'{run}/final').eval()
    cfg, norm = pol.cfg, pol.normalizer
    val = json.loads(Path(run, 'split.json').read_text())['val_episodes']
    ds = ClipDataset(cache, num_future_frames=cfg.num_future_frames, future_stride=cfg.future_stride,
                     frame_gap=cfg.frame_gap, horizon=cfg.horizon, require_actions=True,
                     cameras=list(cfg.cameras), episodes=val)
    stats = norm.stats['observation.state']
    errs = []
    with torch.no_grad():
        for start in range(0, len(ds), 64):
            batch = torch.utils.data.default_collate([ds[i] for i in range(start, min(len(ds), start + 64))])
            lang = pol.encode_instruction(batch['task'])
            vf = pol.video_former(pol.forward_features(batch['observation.images'], lang))
            pred = pol.aux_head(vf.mean(1)) * stats['std'][JOINTS:] + stats['mean'][JOINTS:]
            errs.append((pred - batch['observation.state'][:, JOINTS:]).abs())
    names = json.loads(Path(cache, 'meta.json').read_text())['state_names'][JOINTS:]
    err_cm = torch.cat(errs).mean(0) * 100
    print(json.dumps({n: round(float(e), 2) for n, e in zip(names, err_cm, strict=True)}))


def main() -> None:
    what, args = sys.argv[1], sys.argv[2:]
    if what == 'data':
        return make_data(args[0])
    patch_policy()
    if what == 'train':
        from defi_training.train_cli import main as train
        out, cache, gfdm, gidm = args[:4]
        sys.exit(train(['finetune', '--config', str(ROOT / 'config/train_finetune.yaml'), '--out', out,
                        '--gfdm', gfdm, '--gidm', gidm, f'data.cache={cache}', 'steps=4000', 'optim.lr=1e-3',
                        'model.vf_queries_per_frame=16', 'model.image_shift_px=4', 'model.preset=tiny',
                        'data.num_workers=0', 'progress=false', *args[4:]]))
    if what == 'probe':
        return probe(*args[:2])
    from defi_sim import evaluate
    evaluate._policy_state = lambda policy, sim: sim.joint_positions()   # patched _context pads them
    sys.argv = [str(ROOT / 'benchmarks/policy_diagnosis.py'), '--checkpoint', *args]
    runpy.run_path(sys.argv[0], run_name='__main__')


if __name__ == '__main__':
    main()
