"""Meta-World v3 task names, the natural-language instruction of each, and the development tasks."""
from __future__ import annotations

# One instruction per task, written the way a person would ask for it; the policy is conditioned on it.
INSTRUCTIONS: dict[str, str] = {
    'assembly-v3': 'put the ring on the peg',
    'basketball-v3': 'dunk the ball into the basket',
    'bin-picking-v3': 'move the cube from one bin to the other',
    'box-close-v3': 'put the lid on the box',
    'button-press-topdown-v3': 'press the button from above',
    'button-press-topdown-wall-v3': 'press the button from above, behind the wall',
    'button-press-v3': 'press the button from the front',
    'button-press-wall-v3': 'press the button behind the wall',
    'coffee-button-v3': 'press the button on the coffee machine',
    'coffee-pull-v3': 'pull the mug away from the coffee machine',
    'coffee-push-v3': 'push the mug under the coffee machine',
    'dial-turn-v3': 'turn the dial',
    'disassemble-v3': 'take the ring off the peg',
    'door-close-v3': 'close the door',
    'door-lock-v3': 'lock the door by turning the lock',
    'door-open-v3': 'open the door',
    'door-unlock-v3': 'unlock the door by turning the lock',
    'hand-insert-v3': 'insert the hand into the hole',
    'drawer-close-v3': 'close the drawer',
    'drawer-open-v3': 'open the drawer',
    'faucet-open-v3': 'turn the faucet on',
    'faucet-close-v3': 'turn the faucet off',
    'hammer-v3': 'hammer the nail into the wall',
    'handle-press-side-v3': 'press the handle down from the side',
    'handle-press-v3': 'press the handle down',
    'handle-pull-side-v3': 'pull the handle up from the side',
    'handle-pull-v3': 'pull the handle up',
    'lever-pull-v3': 'pull the lever up',
    'pick-place-wall-v3': 'pick up the puck and place it at the goal behind the wall',
    'pick-out-of-hole-v3': 'pick the peg out of the hole',
    'pick-place-v3': 'pick up the puck and place it at the goal',
    'plate-slide-v3': 'slide the plate into the cabinet',
    'plate-slide-side-v3': 'slide the plate into the cabinet from the side',
    'plate-slide-back-v3': 'slide the plate out of the cabinet',
    'plate-slide-back-side-v3': 'slide the plate out of the cabinet sideways',
    'peg-insert-side-v3': 'insert the peg into the hole from the side',
    'peg-unplug-side-v3': 'unplug the peg sideways',
    'soccer-v3': 'kick the ball into the goal',
    'stick-push-v3': 'grasp the stick and push the box with it',
    'stick-pull-v3': 'grasp the stick and pull the box with it',
    'push-v3': 'push the puck to the goal',
    'push-wall-v3': 'push the puck around the wall to the goal',
    'push-back-v3': 'pull the puck back to the goal',
    'reach-v3': 'reach the goal position',
    'reach-wall-v3': 'reach the goal position behind the wall',
    'shelf-place-v3': 'place the puck on the shelf',
    'sweep-into-v3': 'sweep the puck into the hole',
    'sweep-v3': 'sweep the puck off the table',
    'window-open-v3': 'open the window',
    'window-close-v3': 'close the window',
}

# The tasks the project develops and benchmarks on (short horizons, reliable experts).
DEVELOPMENT_TASKS: tuple[str, ...] = (
    'reach-v3', 'push-v3', 'button-press-topdown-v3', 'drawer-open-v3', 'door-open-v3',
    'window-open-v3',
)

# Seeds at or above this value are never used for recording training data: evaluation on them
# measures generalisation to unseen initial states.
EVAL_SEED_OFFSET = 1000


def canonical_task_name(name: str) -> str:
    """'drawer-open', 'drawer-open-v3' -> 'drawer-open-v3'; a clear error for an unknown task."""
    full = name if name.endswith('-v3') else f'{name}-v3'
    if full not in INSTRUCTIONS:
        raise ValueError(f'unknown Meta-World v3 task {name!r}; known tasks: {", ".join(sorted(INSTRUCTIONS))}')
    return full


def check_episode_config(cfg, counts) -> None:
    """The checks an episode config shares (EvalConfig, ExpertDataConfig): cfg.tasks made canonical
    (at least one), and every field named in `counts` >= 1. ValueErrors name the field."""
    cfg.tasks = tuple(canonical_task_name(t) for t in cfg.tasks)
    if not cfg.tasks:
        raise ValueError('tasks: name at least one Meta-World task')
    for name in counts:
        if getattr(cfg, name) < 1:
            raise ValueError(f'{name}: must be >= 1, got {getattr(cfg, name)}')


def instruction_for(task: str) -> str:
    """The natural-language instruction for a Meta-World task name (with or without '-v3')."""
    return INSTRUCTIONS[canonical_task_name(task)]
