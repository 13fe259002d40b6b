"""Checks of free-form inputs before they reach the model (ROS-free)."""
from __future__ import annotations

__all__ = ['check_instruction', 'DEFAULT_MAX_INSTRUCTION_CHARS']

# Instructions are a sentence or two; the text encoders read at most a few hundred tokens, and an
# instruction is copied into every ActionChunk and ForwardFeatures message.
DEFAULT_MAX_INSTRUCTION_CHARS = 1000


def check_instruction(text: str, max_chars: int = DEFAULT_MAX_INSTRUCTION_CHARS,
                      field: str = 'data') -> str:
    """`text` unchanged, or a ValueError naming `field` when it holds a NUL, characters that were
    not valid UTF-8 (rclpy turns those into U+FFFD), or more than max_chars characters (0 = no
    bound)."""
    if '\x00' in text:
        raise ValueError(f'{field}: contains a NUL character at {text.index(chr(0))}')
    if '\ufffd' in text:
        raise ValueError(f'{field}: not valid UTF-8 (replacement character at {text.index(chr(0xfffd))})')
    if max_chars > 0 and len(text) > max_chars:
        raise ValueError(f'{field}: {len(text)} characters, more than max_instruction_chars={max_chars}')
    return text
