"""rosbags typestores that know the defi_msgs interfaces (ROS-free: reads the .msg files).

Bag I/O, so it lives with the bag reader (sources.rosbag); the bag recorder (defi_perception) and
the tests that read bags use it too."""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from rosbags.typesys import Stores, get_types_from_msg, get_typestore

STORES = {
    'humble': Stores.ROS2_HUMBLE,
    'jazzy': Stores.ROS2_JAZZY,
    'kilted': Stores.ROS2_KILTED,
}


def defi_msgs_dir() -> Path:
    """Directory holding defi_msgs' .msg files: the installed share dir, else the source tree."""
    for prefix in os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep):
        candidate = Path(prefix) / 'share' / 'defi_msgs' / 'msg'
        if prefix and candidate.is_dir():
            return candidate
    # src/defi_training/defi_training/sources/msg_types.py -> src/defi_msgs/msg
    candidate = Path(__file__).resolve().parents[3] / 'defi_msgs' / 'msg'
    if candidate.is_dir():
        return candidate
    raise FileNotFoundError(
        'defi_msgs .msg files not found: source install/setup.bash or run from the source tree')


@lru_cache(maxsize=None)
def typestore(distro: str = 'kilted'):
    """A rosbags typestore for `distro` with every defi_msgs message registered."""
    try:
        store = get_typestore(STORES[distro.lower()])
    except KeyError:
        raise ValueError(f'unknown ROS distro {distro!r}; expected one of {sorted(STORES)}') from None
    types = {}
    for path in sorted(defi_msgs_dir().glob('*.msg')):
        types.update(get_types_from_msg(path.read_text(), f'defi_msgs/msg/{path.stem}'))
    store.register(types)
    return store
