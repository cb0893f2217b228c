"""Compatibility imports: the scheduler moved to scheduler.py (`Batcher`, `QueueFull`) and the step loop to
engine_core.py (`EngineCore`, the `Runner` protocol); the request types live in sequence.py."""

from compress.serve.engine_core import EngineCore, Runner  # noqa: F401
from compress.serve.scheduler import Batcher, QueueFull  # noqa: F401
from compress.serve.sequence import CLASSES, Event, SamplingParams, Sequence, TokenLogprob  # noqa: F401
