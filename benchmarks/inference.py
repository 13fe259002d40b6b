"""DeFI inference latency on the CPU: GFDM features, GIDM latent actions, Video Former, action head
and the whole predict_action_chunk, for the tiny and base presets, plus parameter counts.

    python benchmarks/inference.py [--quick] [--out FILE] [--threads 2] [--presets tiny,base]

Setting: torch on 2 threads, batch 1, one 64 px camera, 4-D actions, horizon 10, 10 head sampling
steps, random weights (latency does not depend on training). Each figure is the median over
repeated calls after warm-up; the machine is shared, so medians, not means.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault('HF_HUB_OFFLINE', '1')

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common import emit, median, percentile  # noqa: E402


def count(module) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def timed(fn, reps: int, warmup: int = 3):
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    return out


def bench_preset(name: str, reps: int, text_encoder: str) -> dict:
    from defi_core.config import preset
    from defi_core.policy import DefiPolicy
    cfg = preset(name, action_dim=4, cameras=('front',), text_encoder=text_encoder)
    torch.manual_seed(0)
    policy = DefiPolicy(cfg).eval()
    a = cfg.action_dim
    policy.set_normalization({'action': {'mean': np.zeros(a), 'std': np.ones(a), 'min': -np.ones(a),
                                         'max': np.ones(a)}})
    img = torch.randint(0, 256, (1, 3, cfg.image_size, cfg.image_size), dtype=torch.uint8)
    obs = {'observation.images.front': img, 'task': ['open the drawer']}
    images = img[:, None]
    with torch.inference_mode():
        lang = policy.encode_instruction(obs['task'])
        feats = policy.forward_features(images, lang)
        _, tokens = policy.latent_actions(feats, lang)
        vf_tokens = policy.video_former(feats)
        ctx = policy.action_head.encode_context(lang, vf_tokens, tokens)
        ms = {
            'gfdm_features_ms': timed(lambda: policy.forward_features(images, lang), reps),
            'gidm_ms': timed(lambda: policy.latent_actions(feats, lang), reps),
            'video_former_ms': timed(lambda: policy.video_former(feats), reps),
            'action_head_ms': timed(lambda: policy.action_head.sample(policy.action_head.encode_context(
                lang, vf_tokens, tokens)), reps),
            'chunk_ms': timed(lambda: policy.predict_action_chunk(obs), reps),
        }
    row = {f'{k[:-3]}_ms_median': round(median(v), 2) for k, v in ms.items()}
    row['chunk_ms_p90'] = round(percentile(ms['chunk_ms'], 90), 2)
    row['params'] = count(policy)
    row['params_by_component'] = {
        'gfdm': count(policy.gfdm), 'coupling': count(policy.coupling), 'gidm': count(policy.gidm),
        # the policy freezes exactly GIDM's pretraining-only parts (apply_trainable_flags)
        'gidm_used_in_policy': sum(p.numel() for p in policy.gidm.parameters() if p.requires_grad),
        'video_former': count(policy.video_former), 'action_head': count(policy.action_head)}
    row['shapes'] = {'features': list(feats.shape), 'video_former_tokens': list(vf_tokens.shape),
                     'latent_tokens': list(tokens.shape), 'context_tokens': list(ctx.shape)}
    row['config'] = {k: getattr(cfg, k) for k in ('image_size', 'patch_size', 'num_future_frames', 'gfdm_dim',
                                                  'gfdm_depth', 'gfdm_feature_layer', 'head_dim', 'horizon',
                                                  'sampling_steps')}
    row['reps'] = reps
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--quick', action='store_true', help='fewer repetitions (well under a minute)')
    parser.add_argument('--out', default=None, help='JSON result file (default benchmarks/results/inference.json)')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--presets', default='tiny,base')
    parser.add_argument('--text-encoder', default='minilm', choices=['minilm', 'hash'],
                        help='text encoding is cached per instruction, so it does not enter the timings')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reps = 15 if args.quick else 60
    results = {}
    for name in args.presets.split(','):
        results[name] = bench_preset(name, reps, args.text_encoder)
    cols = ['gfdm_features', 'gidm', 'video_former', 'action_head', 'chunk']
    print(f'{"preset":8s} {"params":>10s} ' + ' '.join(f'{c + " ms":>17s}' for c in cols) + f' {"chunk p90":>10s}')
    for name, r in results.items():
        print(f'{name:8s} {r["params"]:>10,d} ' + ' '.join(f'{r[c + "_ms_median"]:>17.2f}' for c in cols)
              + f' {r["chunk_ms_p90"]:>10.2f}')
    print('(medians over repeated batch-1 calls; the chunk = features + GIDM + Video Former + head + '
          'normalization; target: base chunk <= 50 ms on 2 threads)')
    emit('inference', {'quick': args.quick, 'threads': args.threads, **results}, args.out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
