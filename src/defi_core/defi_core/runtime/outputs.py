"""Pure mapping of one action row to robot command fields (no ROS types here).

- twist: six action components -> linear x/y/z, angular x/y/z of a geometry_msgs/TwistStamped for
  MoveIt Servo (delta_twist_cmds); which component feeds which axis is configured by name.
- joint trajectory: the action components named like the controller's joints -> one point.
- passthrough: the row itself (a horizon-1 chunk for the simulator).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import numpy as np

__all__ = ['TwistAxes', 'resolve_twist_axes', 'twist_components', 'joint_positions',
           'zero_action']

TWIST_FIELDS = ('linear.x', 'linear.y', 'linear.z', 'angular.x', 'angular.y', 'angular.z')


@dataclass(frozen=True)
class TwistAxes:
    """Index of the action component feeding each twist field (-1 = always zero)."""
    indices: tuple

    def __post_init__(self):
        if len(self.indices) != 6:
            raise ValueError(f'twist_axes: need 6 entries, got {len(self.indices)}')


def resolve_twist_axes(action_names: Sequence[str], axes: Sequence[str], action_dim: int) -> TwistAxes:
    """Map 6 entries (action names, decimal indices, or '' for zero) to action indices.

    Raises ValueError naming twist_axes when an entry names nothing or no entry maps at all.
    """
    if len(axes) != 6:
        raise ValueError(f'twist_axes: need 6 entries (linear xyz, angular xyz), got {len(axes)}')
    names = list(action_names)
    out = []
    for field_name, entry in zip(TWIST_FIELDS, axes, strict=True):
        entry = str(entry).strip()
        if entry == '':
            out.append(-1)
        elif entry in names:
            out.append(names.index(entry))
        elif entry.lstrip('-').isdigit():
            idx = int(entry)
            if not 0 <= idx < action_dim:
                raise ValueError(f'twist_axes: {field_name} -> index {idx} outside action_dim {action_dim}')
            out.append(idx)
        else:
            out.append(-1)
    if all(i < 0 for i in out):
        raise ValueError(f'twist_axes: none of {list(axes)} matches the action names {names}')
    return TwistAxes(tuple(out))


def twist_components(action: np.ndarray, axes: TwistAxes, linear_scale: float = 1.0,
                     angular_scale: float = 1.0) -> List[float]:
    """[lx, ly, lz, ax, ay, az] from one action row."""
    action = np.asarray(action, dtype=np.float64).reshape(-1)
    out = []
    for k, idx in enumerate(axes.indices):
        scale = linear_scale if k < 3 else angular_scale
        out.append(0.0 if idx < 0 else float(action[idx]) * scale)
    return out


def joint_positions(action: np.ndarray, action_names: Sequence[str],
                    joint_names: Sequence[str]) -> List[float]:
    """Positions ordered like joint_names (every joint must be an action component)."""
    action = np.asarray(action, dtype=np.float64).reshape(-1)
    if not joint_names:
        return [float(v) for v in action]
    names = list(action_names)
    missing = [j for j in joint_names if j not in names]
    if missing:
        raise ValueError(f'joint_names: {missing} are not action components {names}')
    return [float(action[names.index(j)]) for j in joint_names]


def zero_action(action_dim: int) -> np.ndarray:
    return np.zeros(int(action_dim), dtype=np.float64)
