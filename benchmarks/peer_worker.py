"""The LeRobot side of benchmarks/peer_policies.py. It runs with .venv-peers' Python (LeRobot 0.4.4
and the torch it pins), never in the project's venv, and imports nothing of the project.

    python benchmarks/peer_worker.py train --kind act|diffusion --dataset DIR --out DIR --budget-s S
        [--overrides JSON] [--batch-size 8] [--max-steps N] [--threads 2]
    python benchmarks/peer_worker.py serve --checkpoint DIR [--threads 2]

train: LeRobot's own pieces as lerobot-train puts them together (make_dataset, make_policy,
make_pre_post_processors, make_optimizer_and_scheduler, the EpisodeAwareSampler for policies that
drop last frames, and lerobot_train.update_policy for each step), with one difference:
it stops on a wall-clock budget instead of a step count. The step count that the LR schedule needs
comes from timing a few steps on a throwaway copy of the policy first (that time is in the
budget). Writes DIR/pretrained_model (as lerobot-train's checkpoints) and DIR/summary.json.

serve: loads DIR/pretrained_model and answers one JSON line per request line on stdin:
    {"op": "reset", "seed": S}       -> {"ok": true}     clears the policy's queues, seeds torch
    {"op": "act", "images": {cam: A}, "state": A, "task": str}
                                     -> {"action": A, "computed": bool, "ms": float}
where A is an array {"dtype", "shape", "b64"}. An action is LeRobot's select_action on the
observation (its queues decide when a new chunk is computed: every call for n_action_steps=1,
every n_action_steps calls otherwise); "computed" says whether this call ran the model and "ms"
is the time of the call. Library output goes to stderr; stdout carries only the answers.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time

START = time.time()

import numpy as np  # noqa: E402

# --------------------------------------------------------------------------- the wire format
# JSON lines with arrays as base64 raw bytes: both venvs have numpy, but of different versions,
# so no pickles between them.

def pack(arr) -> dict:
    a = np.ascontiguousarray(arr)
    return {'dtype': a.dtype.str, 'shape': list(a.shape), 'b64': base64.b64encode(a.tobytes()).decode('ascii')}


def unpack(d: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(d['b64']), dtype=np.dtype(d['dtype'])).reshape(d['shape'])


# --------------------------------------------------------------------------- training

def _train_config(args, steps: int):
    from pathlib import Path

    from lerobot.configs.default import DatasetConfig
    from lerobot.configs.train import TrainPipelineConfig
    from lerobot.policies.factory import make_policy_config
    overrides = json.loads(args.overrides or '{}')
    # draccus would turn JSON lists into the tuples the configs declare
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    policy_cfg = make_policy_config(args.kind, device='cpu', push_to_hub=False, **overrides)
    cfg = TrainPipelineConfig(
        dataset=DatasetConfig(repo_id=f'local/{Path(args.dataset).name}', root=args.dataset,
                              video_backend='pyav'),
        policy=policy_cfg, output_dir=Path(args.out) / 'lerobot_run', steps=steps,
        batch_size=args.batch_size, num_workers=0, seed=args.seed, eval_freq=0)
    cfg.wandb.enable = False
    cfg.validate()
    return cfg


def train(args) -> int:
    import copy
    from pathlib import Path
    from types import SimpleNamespace

    import torch
    from accelerate import Accelerator
    from lerobot.datasets.factory import make_dataset
    from lerobot.datasets.sampler import EpisodeAwareSampler
    from lerobot.datasets.utils import cycle
    from lerobot.optim.factory import make_optimizer_and_scheduler
    from lerobot.policies.factory import make_policy, make_pre_post_processors
    from lerobot.scripts.lerobot_train import update_policy
    from lerobot.utils.random_utils import set_seed

    torch.set_num_threads(args.threads)
    deadline = START + args.budget_s
    out = Path(args.out)
    cfg = _train_config(args, steps=1)
    set_seed(cfg.seed)
    dataset = make_dataset(cfg)
    policy = make_policy(cfg=cfg.policy, ds_meta=dataset.meta)
    pre, post = make_pre_post_processors(policy_cfg=cfg.policy, dataset_stats=dataset.meta.stats)
    if hasattr(cfg.policy, 'drop_n_last_frames'):
        sampler = EpisodeAwareSampler(dataset.meta.episodes['dataset_from_index'],
                                      dataset.meta.episodes['dataset_to_index'],
                                      episode_indices_to_use=dataset.episodes,
                                      drop_n_last_frames=cfg.policy.drop_n_last_frames, shuffle=True)
    else:
        sampler = None
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, shuffle=sampler is None,
                                         sampler=sampler, num_workers=0, drop_last=False)
    batches = cycle(loader)
    accelerator = Accelerator(cpu=True, step_scheduler_with_optimizer=False)
    metrics = SimpleNamespace()          # update_policy only sets attributes on it

    loading = [0.0]                      # seconds spent fetching batches (video decoding included)

    def step(model, optimizer, scheduler):
        t = time.monotonic()
        batch = next(batches)
        loading[0] += time.monotonic() - t
        update_policy(metrics, model, pre(batch), optimizer, cfg.optimizer.grad_clip_norm,
                      accelerator=accelerator, lr_scheduler=scheduler)
        return time.monotonic() - t

    # the step time, on a copy (so the real policy starts from its initialisation)
    probe = copy.deepcopy(policy)
    probe_opt, _ = make_optimizer_and_scheduler(cfg, probe)
    step(probe, probe_opt, None)
    times = [step(probe, probe_opt, None) for _ in range(args.probe_steps)]
    del probe, probe_opt
    step_s = float(np.median(times))
    save_reserve_s = 10.0
    steps = max(1, int((deadline - time.time() - save_reserve_s) / step_s))
    if args.max_steps:
        steps = min(steps, args.max_steps)
    cfg.steps = steps
    optimizer, scheduler = make_optimizer_and_scheduler(cfg, policy)
    policy, optimizer, scheduler = accelerator.prepare(policy, optimizer, scheduler)
    print(f'[{args.kind}] {dataset.num_episodes} episodes, {dataset.num_frames} frames; '
          f'{step_s:.3f} s/step probed -> {steps} steps in the budget', file=sys.stderr, flush=True)
    done, losses, last, loading[0] = 0, [], step_s, 0.0
    t_loop = time.monotonic()
    while done < steps and time.time() + last + save_reserve_s < deadline:
        last = step(policy, optimizer, scheduler)
        done += 1
        losses.append(float(metrics.loss))
        if done % args.log_every == 0:
            print(f'[{args.kind}] step {done}/{steps} loss {np.mean(losses[-args.log_every:]):.4f} '
                  f'({last:.2f} s/step)', file=sys.stderr, flush=True)
    loop_s = time.monotonic() - t_loop
    model_dir = out / 'pretrained_model'
    policy = accelerator.unwrap_model(policy)
    policy.save_pretrained(model_dir)
    cfg.save_pretrained(model_dir)
    pre.save_pretrained(model_dir)
    post.save_pretrained(model_dir)
    summary = {'kind': args.kind, 'steps': done, 'planned_steps': steps, 'probe_step_s': round(step_s, 4),
               'batch_size': cfg.batch_size, 'final_loss': round(float(np.mean(losses[-50:])), 5) if losses else None,
               'train_s': round(time.time() - START, 1), 'budget_s': args.budget_s,
               'loop_s': round(loop_s, 1), 'data_fraction': round(loading[0] / loop_s, 3) if loop_s > 0 else None,
               'params': sum(p.numel() for p in policy.parameters()),
               'policy_config': json.loads(json.dumps(cfg.policy.__dict__, default=str)),
               'lerobot': _version('lerobot'), 'torch': torch.__version__}
    (out / 'summary.json').write_text(json.dumps(summary, indent=1))
    print(f'[{args.kind}] {done} steps in {summary["train_s"]} s, final loss {summary["final_loss"]}',
          file=sys.stderr, flush=True)
    return 0


def _version(dist: str) -> str:
    from importlib.metadata import version
    return version(dist)


# --------------------------------------------------------------------------- serving

class Server:
    def __init__(self, checkpoint: str):
        from pathlib import Path

        from lerobot.configs.policies import PreTrainedConfig
        from lerobot.policies.factory import get_policy_class, make_pre_post_processors
        path = Path(checkpoint) / 'pretrained_model'
        cfg = PreTrainedConfig.from_pretrained(path)
        cfg.device = 'cpu'
        self.policy = get_policy_class(cfg.type).from_pretrained(path, config=cfg)
        self.policy.eval()
        self.pre, self.post = make_pre_post_processors(policy_cfg=cfg, pretrained_path=str(path))
        self.kind = cfg.type

    def _needs_chunk(self) -> bool:
        """Whether select_action will run the model (LeRobot 0.4.4's queues)."""
        p = self.policy
        if self.kind == 'act':
            return p.config.temporal_ensemble_coeff is not None or len(p._action_queue) == 0
        return len(p._queues['action']) == 0

    def reset(self, req) -> dict:
        import torch
        self.policy.reset()
        if req.get('seed') is not None:
            torch.manual_seed(int(req['seed']))      # Diffusion's noise: the same episode twice is the same
        return {'ok': True}

    def act(self, req) -> dict:
        import torch
        obs = {f'observation.images.{cam}': torch.from_numpy(unpack(a).copy()).permute(2, 0, 1)[None].float() / 255.0
               for cam, a in req['images'].items()}
        if req.get('state') is not None:
            obs['observation.state'] = torch.from_numpy(unpack(req['state']).astype(np.float32).copy())[None]
        obs['task'] = [req.get('task', '')]
        computed = self._needs_chunk()
        t = time.perf_counter()
        with torch.inference_mode():
            action = self.post(self.policy.select_action(self.pre(obs)))
        ms = (time.perf_counter() - t) * 1e3
        return {'action': pack(action.reshape(-1).numpy().astype(np.float32)), 'computed': computed, 'ms': ms}


def serve(args) -> int:
    import torch
    torch.set_num_threads(args.threads)
    answers = os.fdopen(os.dup(1), 'w', buffering=1)
    os.dup2(2, 1)            # anything a library prints goes to stderr, not into the answers
    sys.stdout = sys.stderr
    server = Server(args.checkpoint)
    answers.write(json.dumps({'ok': True, 'kind': server.kind}) + '\n')
    for line in sys.stdin:
        req = json.loads(line)
        if req['op'] == 'quit':
            break
        try:
            answer = getattr(server, req['op'])(req)
        except Exception as exc:  # noqa: BLE001 - the caller raises it with the message
            answer = {'error': f'{type(exc).__name__}: {exc}'}
        answers.write(json.dumps(answer) + '\n')
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    sub = ap.add_subparsers(dest='cmd', required=True)
    t = sub.add_parser('train')
    t.add_argument('--kind', required=True, choices=('act', 'diffusion'))
    t.add_argument('--dataset', required=True, help='LeRobot v3 dataset folder')
    t.add_argument('--out', required=True)
    t.add_argument('--budget-s', type=float, required=True, help='wall-clock seconds, from process start')
    t.add_argument('--overrides', default='', help='JSON object of policy config fields')
    t.add_argument('--batch-size', type=int, default=8)
    t.add_argument('--seed', type=int, default=1000)
    t.add_argument('--max-steps', type=int, default=0, help='stop after this many steps (0 = the budget decides)')
    t.add_argument('--probe-steps', type=int, default=5)
    t.add_argument('--log-every', type=int, default=50)
    t.add_argument('--threads', type=int, default=os.cpu_count() or 1)
    s = sub.add_parser('serve')
    s.add_argument('--checkpoint', required=True, help='a train --out folder')
    s.add_argument('--threads', type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    return train(args) if args.cmd == 'train' else serve(args)


if __name__ == '__main__':
    sys.exit(main())
