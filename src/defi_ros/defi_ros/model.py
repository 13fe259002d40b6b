"""The model side of the DeFI nodes: `ModelParams` (checkpoint, device, torch threads), loading the
checkpoint they name, and one model call at a time per process (`model_call`, `MODEL_LOCK`) with the
warm-up input of the first stage (`warm_up_features`). torch and the model code load on first use,
never when a node module is imported."""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from pathlib import Path

from .params import CommonParams, param

__all__ = ['ModelParams', 'load_checkpoint_policy', 'MODEL_LOCK', 'model_call', 'warm_up_features']

# One model call at a time per process. The stages of one observation run one after the other
# anyway; letting the worker threads of several nodes call torch concurrently in one process made
# single calls stall for up to 1.2 s (base preset, 2 cores: p95 of decode 219 ms -> 28 ms with
# this lock, dropped frames 15 -> 0 in 20 s at 10 Hz).
MODEL_LOCK = threading.RLock()


@contextlib.contextmanager
def model_call():
    """Serialise model inference in this process and run it without autograd."""
    import torch
    with MODEL_LOCK, torch.inference_mode():
        yield


def warm_up_features(policy):
    """(features, lang) of one black frame per camera and a dummy instruction: the first stage's
    warm-up and the input of the later stages' warm-up. Call it inside model_call()."""
    import torch
    cfg = policy.cfg
    images = torch.zeros(1, len(cfg.cameras), 3, cfg.image_size, cfg.image_size, dtype=torch.uint8)
    lang = policy.encode_instruction(['warm up'])
    return policy.forward_features(images, lang), lang


@dataclass
class ModelParams(CommonParams):
    """Parameters of the nodes that load a model (forward predictor, latent-action encoder,
    action decoder; in defi_bringup the model is loaded once and shared)."""
    checkpoint: str = param('', 'checkpoint directory (config.json + model.safetensors)')
    device: str = param('cpu', 'torch device of the model (cpu, cuda, cuda:1, ...)')
    # 0 = auto (defi_core.threads): the CPUs this process may use less one, at most 4, so the
    # message threads and the work beside the model keep a core (more intra-op threads than free
    # cores were 20x slower per chunk on a loaded 2-core machine)
    torch_threads: int = param(0, 'torch intra-op threads of this process; 0 = auto: the CPUs this '
                               'process may use (affinity) less one, at most 4; OMP_NUM_THREADS wins',
                               min=0, max=1024)


def load_checkpoint_policy(path: str, device: str = 'cpu', torch_threads: int = 0):
    """Load a DefiPolicy from a checkpoint directory; errors name the 'checkpoint' parameter."""
    if not path:
        raise ValueError("parameter 'checkpoint' is empty: set it to a checkpoint directory")
    ckpt = Path(path).expanduser()
    if not ckpt.exists():
        raise FileNotFoundError(f"parameter 'checkpoint': {ckpt} does not exist")
    from defi_core.threads import set_torch_threads
    set_torch_threads(int(torch_threads))
    from defi_core.checkpoint import load_policy
    policy = load_policy(str(ckpt), device=device)
    policy.eval()
    return policy
