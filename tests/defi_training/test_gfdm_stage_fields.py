"""Finetuning takes the GFDM stage export's sampler / training / warp settings (GFDM_STAGE_FIELDS)
unless the finetune config sets them, so a warp GFDM loads strictly into the policy."""
import torch

from defi_core.checkpoint import load_state_into, save_checkpoint
from defi_core.config import preset
from defi_core.policy import DefiPolicy
from defi_training.model_setup import gfdm_stage_settings
from defi_training.train_config import load_train_config

torch.set_num_threads(1)


def test_finetune_adopts_the_gfdm_exports_fields(tmp_path):
    stage_cfg = preset('tiny', text_encoder='hash', gfdm_warp_radius=2, sigma_data=0.1, gfdm_sampling_steps=1)
    save_checkpoint(tmp_path / 'gfdm', DefiPolicy(stage_cfg), stage_cfg, component='gfdm')
    cfg = load_train_config(None, 'finetune', [f'gfdm_checkpoint={tmp_path / "gfdm"}'])
    got = gfdm_stage_settings(cfg, {'preset': 'tiny', 'sigma_data': 0.2})
    assert got['gfdm_warp_radius'] == 2 and got['gfdm_sampling_steps'] == 1 and got['sigma_data'] == 0.1
    assert gfdm_stage_settings(cfg, {'gfdm_pretrained': False}) == {}
    assert gfdm_stage_settings(load_train_config(None, 'finetune', []), {}) == {}
    policy_cfg = preset('tiny', text_encoder='hash', **{'sigma_data': 0.2, **got})
    load_state_into(DefiPolicy(policy_cfg), tmp_path / 'gfdm', 'gfdm')      # strict: the warp head is there
