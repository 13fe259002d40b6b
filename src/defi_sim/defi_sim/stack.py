"""One description of "sim + bringup": defi_sim_node and defi_bringup (every DeFI node in one
process), each started with

  1. its base parameter file, installed by this package: share/defi_sim/config/sim.yaml (the sim
     node) and share/defi_sim/config/defi_sim.yaml (the DeFI nodes against the sim);
  2. one override file: what the checkpoint decides (image size, one sim camera and one camera topic
     per checkpoint view, the checkpoint path), then the caller's own few values.

Used by `ros2 launch defi_bringup sim.launch.py`, `defi-eval --mode ros` (`make demo`) and
benchmarks/closed_loop.py. Later files override earlier ones (rcl's --params-file order).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

__all__ = ['SimStack', 'config_path', 'checkpoint_overrides', 'merge_sections', 'write_sim_stack',
           'SIM_PARAMS', 'DEFI_PARAMS', 'SIM_NODE', 'SIM_MODULE', 'BRINGUP_MODULE']

PACKAGE = 'defi_sim'
SIM_PARAMS = 'sim.yaml'            # section defi_sim_node
DEFI_PARAMS = 'defi_sim.yaml'      # sections per DeFI node (defi_bringup, forward_predictor, ...)
SIM_NODE = 'defi_sim_node'
SIM_MODULE = 'defi_sim.sim_node'            # `python -m` entry of executable defi_sim_node
BRINGUP_MODULE = 'defi_policy.bringup'      # `python -m` entry of executable defi_bringup


def config_path(name: str) -> Path:
    """An installed parameter file of this package (share/defi_sim/config/<name>)."""
    from ament_index_python.packages import get_package_share_directory
    return Path(get_package_share_directory(PACKAGE)) / 'config' / name


def read_sections(name: str) -> dict:
    """The {node: {parameter: value}} of an installed parameter file."""
    from defi_core.config_io import read_yaml
    doc = read_yaml(config_path(name), 'parameter file')
    return {node: dict(body.get('ros__parameters') or {}) for node, body in doc.items()}


def merge_sections(*layers: Optional[dict]) -> dict:
    """{node: {parameter: value}} layers merged; a later layer wins per parameter."""
    out: dict = {}
    for layer in layers:
        for node, params in (layer or {}).items():
            out.setdefault(node, {}).update(params or {})
    return out


def checkpoint_overrides(checkpoint, cameras: Sequence[str] = ()) -> tuple:
    """(sim node values, bringup sections) that a checkpoint decides: images at its size, one sim
    camera per view ('<view>=<MuJoCo camera>'; `cameras` picks them, default the corner camera),
    the forward predictor on those topics, the checkpoint path for every DeFI node."""
    from defi_sim.description import camera_frame
    from defi_sim.evaluate import sim_cameras_for
    ckpt = Path(checkpoint).expanduser().resolve()
    try:
        cfg = json.loads((ckpt / 'config.json').read_text())['config']
        size, views = int(cfg['image_size']), [str(v) for v in cfg['cameras']]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f'checkpoint {ckpt}: cannot read image_size and cameras from config.json: '
                         f'{exc}') from None
    sim = {'image_width': size, 'image_height': size, 'cameras': sim_cameras_for(views, cameras)}
    bringup = {
        '/**': {'checkpoint': str(ckpt)},
        # features and predicted frames take camera 0's stamp: name its frame (published by the sim)
        # by name ('<view>=<topic>'): the sim publishes camera/<view>/image_raw
        'forward_predictor': {'camera_topics': [f'{v}=camera/{v}/image_raw' for v in views],
                              'frame_id': camera_frame(views[0])},
    }
    return sim, bringup


@dataclass
class SimStack:
    """The parameter files of the two processes, base first."""
    sim_params: list
    bringup_params: list

    def sim_argv(self, python: str, log_levels: Sequence[str] = ()) -> list:
        return [python, '-m', SIM_MODULE] + ros_args(self.sim_params, log_levels)

    def bringup_argv(self, python: str, log_levels: Sequence[str] = ()) -> list:
        return [python, '-m', BRINGUP_MODULE] + ros_args(self.bringup_params, log_levels)


def ros_args(files: Sequence, log_levels: Sequence[str] = ()) -> list:
    out = ['--ros-args']
    for f in files:
        out += ['--params-file', str(f)]
    for level in log_levels:
        out += ['--log-level', level]
    return out


def write_sim_stack(out_dir, checkpoint=None, *, sim: Optional[dict] = None,
                    bringup: Optional[dict] = None, cameras: Sequence[str] = ()) -> SimStack:
    """Write the two override files into `out_dir` (sim_overrides.yaml, bringup_overrides.yaml):
    the checkpoint's values (if given), then `sim` ({parameter: value} of the sim node) and
    `bringup` ({node or '/**': {parameter: value}})."""
    import yaml
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_sim, ckpt_bringup = checkpoint_overrides(checkpoint, cameras) if checkpoint else ({}, {})
    sim_values = merge_sections({SIM_NODE: ckpt_sim}, {SIM_NODE: sim or {}})
    bringup_values = merge_sections(ckpt_bringup, bringup)
    files = []
    for name, values in (('sim_overrides.yaml', sim_values), ('bringup_overrides.yaml', bringup_values)):
        sections = {node: {'ros__parameters': p} for node, p in values.items() if p}
        path = out / name
        path.write_text(yaml.safe_dump(sections, sort_keys=False))
        files.append([path] if sections else [])     # no overrides: no file (an empty one is invalid)
    return SimStack(sim_params=[config_path(SIM_PARAMS), *files[0]],
                    bringup_params=[config_path(DEFI_PARAMS), *files[1]])
