"""Experiment (policy_diagnosis.md, session 8): can the policy learn to read the button's position
from the image at all? A minimal case: the second frame of each button-press demonstration, where
every episode has (nearly) the same arm pose and only the button moves, so dx depends on the image
alone. A from-scratch policy trains on 160 of those frames and is scored on them and on 40 others:
the share of the demonstrated dx's spread that its sampled first action explains, and the same for
a direct linear readout of the head's context.

    python benchmarks/experiments/first_frame_fit.py CACHE [--skip] [--steps N] [--seed S]

CACHE: a cache with button-press-topdown demonstrations from the fixed start (defi-sim dataset).
--skip: model.head_context_skip (a linear map from the mean context token to the chunk, added to
the decoder's output). Whether a run escapes the plateau varies with the random stream: compare
several --seed values. The context readout in the table is a separate linear probe trained on the
detached context: it only measures what the context holds.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings

import numpy as np
import torch

TASK = 'press the button from above'


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('cache')
    ap.add_argument('--skip', action='store_true', help='model.head_context_skip')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--steps', type=int, default=1200)
    args = ap.parse_args(argv)
    warnings.filterwarnings('ignore')
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    from defi_core.config import preset
    from defi_core.policy import DefiPolicy
    from defi_training.cache import EpisodeCache

    cache = EpisodeCache(args.cache)
    eps = [e for e in range(cache.num_episodes) if cache.task(e) == TASK][:200]
    if len(eps) < 50:
        raise SystemExit(f'{args.cache}: {len(eps)} button-press episodes; need at least 50')
    images = torch.stack([torch.from_numpy(np.asarray(cache.frames(e, cache.cameras[0])[1])).permute(2, 0, 1)
                          for e in eps])[:, None]
    state = torch.stack([torch.from_numpy(np.asarray(cache.array(e, 'observation.state')[1])) for e in eps])
    action = torch.stack([torch.from_numpy(np.asarray(cache.array(e, 'action')[1:11])) for e in eps])
    n_train = int(len(eps) * 0.8)
    cfg = preset('tiny', backbone='scratch', idm_type='none', state_dim=state.shape[1], text_encoder='hash',
                 text_dim=32, vf_queries_per_frame=16, head_context_skip=args.skip)
    policy = DefiPolicy(cfg)
    policy.set_normalization(cache.stats)
    probe = torch.nn.Linear(cfg.head_dim, 1)          # what the context holds, whatever trains it
    opt = torch.optim.AdamW(policy.trainable_parameters() + list(probe.parameters()), lr=1e-3)
    dx_norm = policy.normalizer.normalize('action', action[:, 0])[:, 0]

    def context(rows):
        lang = policy.encode_instruction([TASK] * len(rows))
        feats = policy.forward_features(images[rows], lang)
        return policy._context(feats, feats.new_zeros(len(rows), 0, cfg.gidm_dim), lang, state[rows])

    @torch.no_grad()
    def explained(rows) -> tuple[float, float]:
        policy.eval()
        obs = {'observation.images': images[rows], 'observation.state': state[rows], 'task': [TASK] * len(rows)}
        sampled = policy.predict_action_chunk(obs, generator=torch.Generator().manual_seed(0))[:, 0, 0]
        read = probe(context(rows).mean(1))[:, 0]
        policy.train()
        y = dx_norm[rows]
        sampled_n = policy.normalizer.normalize('action', torch.nn.functional.pad(sampled[:, None], (0, 3)))[:, 0]
        return (float(1 - (y - sampled_n).var() / y.var()), float(1 - (y - read).var() / y.var()))

    train_rows, test_rows = torch.arange(n_train), torch.arange(n_train, len(eps))
    print(f'{len(eps)} episodes ({n_train} train), head_context_skip={args.skip}, seed={args.seed}')
    print('| step | sampled dx explained (train / held-out) | context readout (train / held-out) |')
    print('|---:|---|---|')
    t0 = time.time()
    for step in range(args.steps + 1):
        rows = train_rows[torch.randint(0, n_train, (32,))]
        batch = {'observation.images': images[rows], 'observation.state': state[rows], 'action': action[rows],
                 'task': [TASK] * 32}
        loss, _ = policy.compute_loss(batch)
        read_loss = ((probe(context(rows).detach().mean(1))[:, 0] - dx_norm[rows]) ** 2).mean()
        opt.zero_grad()
        (loss + read_loss).backward()
        opt.step()
        if step % 300 == 0:
            (s_tr, r_tr), (s_te, r_te) = explained(train_rows), explained(test_rows)
            print(f'| {step} | {s_tr:.2f} / {s_te:.2f} | {r_tr:.2f} / {r_te:.2f} |  ({time.time() - t0:.0f} s)',
                  flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
