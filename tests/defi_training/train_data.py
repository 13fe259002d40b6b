"""Synthetic recordings shared by the training tests (real rosbag2 files, written by rosbags)."""
from defi_training.synthetic import write_synthetic_bag

INSTRUCTIONS = ('push the block', 'open the drawer')


def synthetic_bags(root, storages=('mcap', 'sqlite3', 'mcap'), instructions=INSTRUCTIONS) -> list:
    """One 2 s, 10 fps, 32 px bag per entry of `storages` under root/bag<i>; bag i is recorded with
    storages[i], instruction instructions[i % len(instructions)] and seed i."""
    bags = []
    for i, storage in enumerate(storages):
        bags.append(root / f'bag{i}')
        write_synthetic_bag(bags[-1], storage=storage, duration_s=2.0, fps=10, image_size=32,
                            instructions=(instructions[i % len(instructions)],), seed=i)
    return bags
