"""The peers' side of benchmarks/peer_policies.py: the LeRobot venv (.venv-peers) it creates, and
PeerPolicy, a policy served from that venv by `peer_worker.py serve` behind the surface
defi_sim.evaluate.run_inprocess uses. Nothing of LeRobot is imported into the project's Python."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from peer_worker import pack, unpack

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / 'peer_worker.py'
LOCK = Path(__file__).resolve().parent / 'peer_requirements.txt'
LOCK_PYTHON = (3, 11)            # the Python the lock was frozen with
LEROBOT_VERSION = '0.4.4'
TOP_LEVEL_PINS = (f'lerobot=={LEROBOT_VERSION}', 'torch==2.10.0', 'torchvision==0.25.0')


def peer_env(threads: int) -> dict:
    """The environment of a peer process: nothing of the project's Python path, offline hub."""
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'VIRTUAL_ENV', 'PYTHONHOME')}
    env.update(HF_HUB_OFFLINE='1', HF_DATASETS_OFFLINE='1', WANDB_MODE='disabled', PYTHONNOUSERSITE='1',
               OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM='false')
    return env


def peer_versions(python: Path) -> dict | None:
    """{'lerobot', 'torch'} of the peer venv, or None when LeRobot does not import there."""
    code = ('import json, torch; from importlib.metadata import version; '
            'import lerobot.policies.act.modeling_act, lerobot.policies.diffusion.modeling_diffusion; '
            'print(json.dumps({"lerobot": version("lerobot"), "torch": torch.__version__}))')
    try:
        out = subprocess.run([str(python), '-c', code], capture_output=True, text=True, timeout=300,
                             env=peer_env(1))
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def ensure_peer_venv(venv: Path, log_dir: Path) -> tuple[Path, dict]:
    """The peer venv's Python and versions; creates the venv (PyPI) when LeRobot is not there."""
    python = venv / 'bin' / 'python'
    versions = peer_versions(python) if python.exists() else None
    if versions and versions['lerobot'] == LEROBOT_VERSION:
        return python, versions
    log = log_dir / 'peer_venv.log'
    print(f'[peers] installing LeRobot {LEROBOT_VERSION} into {venv} (several GB from PyPI, a few minutes; '
          f'log {log})', flush=True)
    if sys.version_info[:2] == LOCK_PYTHON:
        pins = ['-r', str(LOCK)]
    else:
        # the lock's exact versions were resolved for LOCK_PYTHON; elsewhere pin the top level only
        pins = list(TOP_LEVEL_PINS)
        print(f'[peers] Python {sys.version_info[0]}.{sys.version_info[1]}: {LOCK.name} is for '
              f'{LOCK_PYTHON[0]}.{LOCK_PYTHON[1]}; pinning {", ".join(TOP_LEVEL_PINS)} only', flush=True)
    with open(log, 'w') as f:
        for argv in ([sys.executable, '-m', 'venv', str(venv)] if not python.exists() else [],
                     [str(python), '-m', 'pip', 'install', *pins]):
            if not argv:
                continue
            f.write('$ ' + ' '.join(shlex.quote(a) for a in argv) + '\n')
            f.flush()
            rc = subprocess.call(argv, stdout=f, stderr=subprocess.STDOUT, env=peer_env(2))
            if rc != 0:
                raise RuntimeError(f'installing LeRobot into {venv} failed (exit {rc}): {tail(log)}')
    versions = peer_versions(python)
    if not versions:
        raise RuntimeError(f'LeRobot does not import in {venv} after installing it; see {log}')
    return python, versions


def tail(path: Path, n: int = 12) -> str:
    try:
        lines = [ln for ln in path.read_text(errors='replace').splitlines() if ln.strip()]
    except OSError:
        return f'(no log {path})'
    return f'last lines of {path}:\n' + '\n'.join(lines[-n:])



class PeerPolicy:
    """A LeRobot policy served by `peer_worker.py serve`, with the surface run_inprocess uses:
    `cfg` (cameras, image_size, state_dim, action_dim), `reset()` and `predict_action_chunk(obs)`.
    Each call sends one observation and gets LeRobot's select_action for it, returned as a chunk of
    one action: run it with replan_every=1 and chunk_delay=0 so every observation reaches the policy
    (Diffusion Policy keeps the last two). `model_ms` keeps the times of the calls that computed a chunk."""

    def __init__(self, python: Path, run_dir: Path, cfg, log: Path, threads: int):
        self.cfg = cfg
        self.model_ms: list = []
        self.log = log
        self._episode, self._reset_pending = 0, True
        self._log_file = open(log, 'w')
        self.proc = subprocess.Popen([str(python), str(WORKER), 'serve', '--checkpoint', str(run_dir),
                                      '--threads', str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log_file, text=True, env=peer_env(threads), cwd=ROOT)
        self.kind = self._read()['kind']

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=30)
            raise RuntimeError(f'peer worker exited ({self.proc.returncode}); {tail(self.log)}')
        answer = json.loads(line)
        if 'error' in answer:
            raise RuntimeError(f'peer worker: {answer["error"]}')
        return answer

    def _call(self, request: dict) -> dict:
        self.proc.stdin.write(json.dumps(request) + '\n')
        self.proc.stdin.flush()
        return self._read()

    def reset(self) -> None:
        self._reset_pending = True

    def predict_action_chunk(self, obs, generator=None):
        import torch
        if self._reset_pending:
            # the loop's per-episode generator seeds the peer's sampling too (else the episode index)
            seed = generator.initial_seed() if generator is not None else self._episode
            self._call({'op': 'reset', 'seed': int(seed)})
            self._episode += 1
            self._reset_pending = False
        images = {view: pack(obs[f'observation.images.{view}'][0].permute(1, 2, 0).numpy())
                  for view in self.cfg.cameras}
        state = obs.get('observation.state')
        answer = self._call({'op': 'act', 'images': images, 'task': obs['task'][0],
                             'state': None if state is None else pack(state[0].numpy())})
        if answer['computed']:
            self.model_ms.append(answer['ms'])
        return torch.from_numpy(unpack(answer['action']).copy())[None, None]

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.stdin.write(json.dumps({'op': 'quit'}) + '\n')
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        self._log_file.close()
