"""Longer learning checks than the unit tests can afford (about 2-4 minutes on 1 core).

    python tests/defi_core/learning_sanity.py [--gidm-steps 800] [--gfdm-steps 900]

Synthetic clips (smooth colour blobs translating with one of 8 motions, see core_helpers):
- GIDM: after training on action-free pairs (t, t+k), do held-out pairs of different motions get
  different latent codes? Prints the top codes per motion and a purity figure (share of held-out
  pairs whose code tuple is the majority tuple of their motion and of no other motion).
- GFDM: the instruction names the motion ("move left", ...), so frame t + instruction determine the
  future. Mean squared error (pixels in [0, 1]) of 10-step Heun samples of the 4 future frames of
  held-out clips vs the truth, and of the single denoiser pass at sigma_max (the pass features()
  runs, read out as a prediction), next to two baselines: copying the current frame, the mean image.
Last line: one JSON object with the figures.
"""
import argparse
import json
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import core_helpers  # noqa: E402
from core_helpers import make_batch, tiny_cfg  # noqa: E402
from defi_core.models.gfdm import GFDM  # noqa: E402
from defi_core.models.gidm import GIDM  # noqa: E402

# 1 px per frame: with frame_gap 4 the pair differs by 4 px, blobs are about 8 px wide
core_helpers.MOTIONS[:] = [(0, 1), (0, -1), (1, 0), (-1, 0), (1, 1), (-1, 1), (0, 0), (1, -1)]
MOTION_WORDS = {(0, 1): 'move right', (0, -1): 'move left', (1, 0): 'move down', (-1, 0): 'move up',
                (1, 1): 'move down and right', (-1, 1): 'move up and right', (0, 0): 'stay still',
                (1, -1): 'move down and left'}


def instructed_batch(cfg, b, seed):
    """The instruction names the motion, so the future is determined by frame t + instruction."""
    batch = make_batch(cfg, b, seed=seed)
    batch['task'] = [MOTION_WORDS[core_helpers.MOTIONS[(i + seed) % 8]] for i in range(b)]
    return batch


def gidm_check(steps: int) -> dict:
    cfg = tiny_cfg()
    torch.manual_seed(0)
    model = GIDM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for i in range(steps):
        torch.manual_seed(i)
        loss, logs = model.loss(make_batch(cfg, 16, seed=i))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    table = defaultdict(Counter)
    with torch.no_grad():
        for s in range(20000, 20008):
            b = make_batch(cfg, 16, seed=s)
            codes, _ = model.encode(b['observation.images'], b['gap.images'], b['task'])
            for i in range(16):
                table[core_helpers.MOTIONS[(i + s) % 8]][tuple(codes[i].tolist())] += 1
    owner = {}
    for motion, counter in table.items():
        for codes, n in counter.items():
            if n > owner.get(codes, (None, 0))[1]:
                owner[codes] = (motion, n)
    pure = sum(n for motion, counter in table.items() for codes, n in counter.items() if owner[codes][0] == motion)
    total = sum(sum(c.values()) for c in table.values())
    for motion, counter in table.items():
        print(f'motion {motion}: {counter.most_common(3)}')
    return {'steps': steps, 'final_logs': {k: round(v, 4) for k, v in logs.items()},
            'code_purity': round(pure / total, 3),
            'distinct_code_tuples': len({c for counter in table.values() for c in counter})}


def gfdm_check(steps: int) -> dict:
    cfg = tiny_cfg()
    torch.manual_seed(0)
    model = GFDM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for i in range(steps):
        torch.manual_seed(i)
        loss, _ = model.loss(instructed_batch(cfg, 8, seed=i))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    b = instructed_batch(cfg, 8, seed=99999)
    pred = model.sample(b['observation.images'], b['task'], steps=10, generator=torch.Generator().manual_seed(0))
    truth = b['future.images'].float() / 255
    copy = b['observation.images'].float()[:, None] / 255
    # the one pass at sigma_max (what features() runs) read out as a prediction: the denoiser's
    # estimate of the future from pure noise, i.e. the conditional mean given frame t + instruction
    with torch.no_grad():
        cond = model._cond_images(b['observation.images'])
        noise = torch.randn(truth.shape, generator=torch.Generator().manual_seed(1)) * cfg.sigma_max
        est = model.denoise(noise, cfg.sigma_max, cond, model._lang(b['task']))
        if cfg.gfdm_residual:
            est = est + cond[:, None]
        one_step = ((est.clamp(-1, 1) + 1) / 2 - truth).pow(2).mean()
    return {'steps': steps, 'sample_mse': round(float(((pred - truth) ** 2).mean()), 4),
            'one_step_at_sigma_max_mse': round(float(one_step), 4),
            'copy_current_frame_mse': round(float(((copy - truth) ** 2).mean()), 4),
            'mean_image_mse': round(float(((truth.mean() - truth) ** 2).mean()), 4)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--gidm-steps', type=int, default=800)
    parser.add_argument('--gfdm-steps', type=int, default=900)
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    out = {'gidm': gidm_check(args.gidm_steps), 'gfdm': gfdm_check(args.gfdm_steps),
           'seconds': round(time.time() - t0)}
    print(json.dumps(out))


if __name__ == '__main__':
    main()
