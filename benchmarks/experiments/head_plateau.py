"""Experiment (policy_diagnosis.md, session 9): on the first frames of button-press demonstrations,
where only the button moves, does the policy's head learn to read dx from the frozen GFDM's
features, and how often? A fresh Video Former, head encoder and decoder (the default's shapes, one
deterministic decoder pass) train on 160 episodes' features by MSE and are scored on 40 others
(share of the first dx, dy, dz's spread explained). Targets:

    first       the first action's dx, dy, dz
    chunk       the whole normalized 10-step chunk (what the policy is trained on)
    chunk_skip  the same, with a linear map of the mean context token added to the decoder's output

    python benchmarks/experiments/head_plateau.py CACHE CHECKPOINT [--seeds 0 1 2] [--steps 600]

CACHE: button-press-topdown demonstrations from the fixed start (defi-sim dataset); CHECKPOINT: a
policy whose GFDM gives the features (e.g. models/defi_metaworld). Whether a run leaves the
starting plateau (explained share 0.00) depends on the random stream, hence several seeds.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

TASK = 'press the button from above'


def run(make_policy, normalizer, lang, feats, state, chunk, target: str, seed: int, steps: int) -> float:
    torch.manual_seed(seed)
    p = make_policy()
    head, vf, cfg = p.action_head, p.video_former, p.cfg
    out = torch.nn.Linear(cfg.head_dim, cfg.horizon * cfg.action_dim)     # the skip (chunk_skip only)
    params = list(vf.parameters()) + list(head.parameters()) + list(out.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3)
    y = normalizer.normalize('action', chunk)
    state_n = normalizer.normalize('observation.state', state)

    def predict(rows):
        ctx = head.encode_context(lang[rows], vf(feats[rows]), None, state_n[rows])
        h = head.action_pos.expand(len(rows), -1, -1)            # learned queries, no noisy chunk
        for blk in head.decoder:
            h = blk(h, ctx)
        pred = head.action_out(head.dec_norm(h))
        if target == 'chunk_skip':
            pred = pred + out(ctx.mean(1)).view_as(pred)
        return pred

    n_train = 160
    for _ in range(steps):
        rows = torch.randint(0, n_train, (32,))
        pred = predict(rows)
        err = (pred[:, 0, :3] - y[rows, 0, :3]) if target == 'first' else (pred - y[rows])
        loss = (err ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        rows = torch.arange(n_train, len(feats))
        first = normalizer.unnormalize('action', predict(rows))[:, 0, :3]
        true = chunk[rows, 0, :3]
        return float(1 - (true - first).var(0).sum() / true.var(0).sum())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('cache')
    ap.add_argument('checkpoint')
    ap.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    ap.add_argument('--steps', type=int, default=600)
    args = ap.parse_args(argv)
    warnings.filterwarnings('ignore')
    torch.set_num_threads(2)
    import dataclasses

    from defi_core.policy import DefiPolicy
    from defi_sim.evaluate import load_eval_policy
    from defi_training.cache import EpisodeCache

    cache = EpisodeCache(args.cache)
    eps = [e for e in range(cache.num_episodes) if cache.task(e) == TASK][:200]
    if len(eps) < 60:
        raise SystemExit(f'{args.cache}: {len(eps)} button-press episodes; need at least 60')
    shipped = load_eval_policy(Path(args.checkpoint))
    if shipped.cfg.state_dim <= 0 or shipped.normalizer is None:
        raise SystemExit(f'{args.checkpoint}: needs a policy with a state and normalization statistics')
    images = torch.stack([torch.from_numpy(np.asarray(cache.frames(e, cache.cameras[0])[1])).permute(2, 0, 1)
                          for e in eps])[:, None]
    state = torch.stack([torch.from_numpy(np.asarray(cache.array(e, 'observation.state')[1])) for e in eps]).float()
    chunk = torch.stack([torch.from_numpy(np.asarray(cache.array(e, 'action')[1:1 + shipped.cfg.horizon]))
                         for e in eps]).float()
    with torch.no_grad():
        lang = shipped.encode_instruction([TASK] * len(eps))
        feats = shipped.forward_features(images, lang)
    cfg = dataclasses.replace(shipped.cfg, idm_type='none')

    def make():
        return DefiPolicy(cfg, text_encoder=shipped.text_encoder)

    print(f'{len(eps)} episodes (160 train), features {tuple(feats.shape)} from {args.checkpoint}, {args.steps} steps')
    print('| target | ' + ' | '.join(f'seed {s}' for s in args.seeds) + ' |')
    print('|---|' + '---:|' * len(args.seeds))
    for target in ('first', 'chunk', 'chunk_skip'):
        row = [run(make, shipped.normalizer, lang, feats, state, chunk, target, s, args.steps) for s in args.seeds]
        print(f'| {target} | ' + ' | '.join(f'{v:.2f}' for v in row) + ' |', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
