"""The numerical regression case for defi_core (tiny preset, fixed seeds, hash text encoder).

Regenerate the stored artifact after an intended model change (and say so in the commit):
    python tests/defi_core/regression_case.py
"""
from pathlib import Path

import torch

ARTIFACT = Path(__file__).resolve().parent / 'data' / 'regression_tiny.safetensors'


def compute_outputs() -> dict:
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from core_helpers import make_batch, make_policy, obs_from_batch, tiny_cfg
    torch.set_num_threads(1)
    cfg = tiny_cfg(state_dim=2, cameras=('front', 'wrist'))
    policy = make_policy(cfg, seed=1234).eval()
    batch = make_batch(cfg, 2, seed=42)
    with torch.no_grad():
        lang = policy.encode_instruction(batch['task'])
        feats = policy.forward_features(batch['observation.images'], lang)
        codes, tokens = policy.latent_actions(feats, lang)
        chunk = policy.predict_action_chunk(obs_from_batch(cfg, batch), generator=torch.Generator().manual_seed(7))
        frames = policy.gfdm.sample(batch['observation.images'], lang, steps=2,
                                    generator=torch.Generator().manual_seed(8))
        torch.manual_seed(9)
        gfdm_loss = policy.gfdm.loss(batch)[0]
        torch.manual_seed(9)
        action_loss = policy.compute_loss(batch)[0]
    return {'features': feats[:, :, :8].contiguous(), 'codes': codes, 'latent_tokens': tokens, 'chunk': chunk,
            'frames': frames[:, :, :, :, :8, :8].contiguous(), 'gfdm_loss': gfdm_loss.reshape(1),
            'action_loss': action_loss.reshape(1)}


if __name__ == '__main__':
    from safetensors.torch import save_file
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    save_file(compute_outputs(), str(ARTIFACT))
    print(f'wrote {ARTIFACT}')
