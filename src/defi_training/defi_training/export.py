"""The export at the end of a stage (and inside every run checkpoint): a defi_core checkpoint of
the whole policy (finetune) or of the stage's component (gfdm / gidm)."""
from __future__ import annotations

from pathlib import Path

__all__ = ['export_policy']


def export_policy(policy, model_cfg, stage: str, stats: dict, path: Path) -> None:
    """A defi_core checkpoint: the whole policy (finetune) or the stage's component (gfdm / gidm;
    load_component opens it, finetune loads it with load_state_into). The data's facts (fps for the
    chunk's dt, action and state names) travel in model_cfg (build_model_config)."""
    from defi_core.checkpoint import save_checkpoint
    if stage == 'finetune':
        save_checkpoint(path, policy, model_cfg, stats or None)
    else:
        save_checkpoint(path, policy, model_cfg, component=stage)
