"""Incremental detokenization: each step decodes a few tokens, not the whole output again.

The text of a token depends on its neighbours (SentencePiece's leading-space marker, byte-level BPE pieces of one
UTF-8 character), so a token cannot be decoded alone. As in TGI and vLLM, keep two offsets into the output ids:
`prefix` (text before it is final) and `read` (tokens already turned into text). Each new token decodes the
window `ids[prefix:]` and the window `ids[prefix:read]`; the difference is the new text, unless it ends in a
partial UTF-8 character (U+FFFD), in which case nothing is emitted until the next token completes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass
class DetokState:
    prefix: int = 0
    read: int = 0


def step(decode: Callable[[list[int]], str], ids: list[int], state: DetokState) -> str:
    """The new text that `ids[-1]` (just appended) completes; advances `state`."""
    prefix_text = decode(ids[state.prefix:state.read]) if state.read > state.prefix else ""
    full = decode(ids[state.prefix:])
    if len(full) > len(prefix_text) and not full.endswith("\ufffd"):
        new = full[len(prefix_text):]
        state.prefix, state.read = state.read, len(ids)
        return new
    return ""


def flush(decode: Callable[[list[int]], str], ids: list[int], state: DetokState) -> str:
    """The text still held back when the sequence ends (a trailing partial character is emitted as U+FFFD)."""
    if state.read >= len(ids):
        return ""
    prefix_text = decode(ids[state.prefix:state.read]) if state.read > state.prefix else ""
    new = decode(ids[state.prefix:])[len(prefix_text):]
    state.prefix = state.read = len(ids)
    return new
