"""A request's state inside the engine: its sampling parameters, its tokens, its KV slot, its timings, and the
`Event`s a step hands back to the front end. Plain data: no torch, no model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

CLASSES = ("interactive", "batch")  # traffic classes; a sequence's priority is its index (lower goes first)
SEED_LIMIT = 2**63  # seeds are int64 on the device: 0 <= seed < SEED_LIMIT


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int  # 0 = prefill only (e.g. to score the prompt with prompt_logprobs)
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False  # benchmarks: always generate max_tokens (vLLM's extension field)
    min_tokens: int = 0  # eos and stop_token_ids are banned until this many tokens are out
    presence_penalty: float = 0.0  # OpenAI: minus this for each token already generated
    frequency_penalty: float = 0.0  # OpenAI: minus this times the token's count in the output
    repetition_penalty: float = 1.0  # HF/vLLM: logits of prompt and output tokens divided (>0) or multiplied (<0)
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias) added to the logits
    logprobs: int | None = None  # None = off; k >= 0: the chosen token's logprob and the top k
    prompt_logprobs: int | None = None  # None = off; k >= 0: each prompt token's logprob (the first is None)

    @property
    def penalized(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0)

    @property
    def plain_greedy(self) -> bool:
        """Greedy with nothing that changes or reads the logits: the graph's own argmax is the answer."""
        return (self.temperature == 0 and not self.penalized and not self.logit_bias and self.logprobs is None
                and not (self.min_tokens and self.max_tokens > 0))

    def problems(self) -> list[str]:
        """What the engine cannot honour (validated once, at admission)."""
        out = []
        if self.max_tokens < 0:
            out.append("max_tokens must be >= 0")
        if self.temperature < 0:
            out.append("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            out.append("top_p must be in (0, 1]")
        if self.top_k < 0:
            out.append("top_k must be >= 0")
        if self.seed is not None and not 0 <= self.seed < SEED_LIMIT:
            out.append(f"seed must be in [0, 2**63), got {self.seed}")
        if self.repetition_penalty <= 0:
            out.append("repetition_penalty must be > 0")
        for k in (self.logprobs, self.prompt_logprobs):
            if k is not None and not 0 <= k <= 20:
                out.append("logprobs must be in [0, 20]")
        return out


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]]  # the k most likely (token id, logprob), best first


@dataclass(eq=False)
class Sequence:
    id: str
    prompt_ids: list[int]
    params: SamplingParams
    arrival: float
    priority: int = 0  # index into CLASSES: 0 = interactive, 1 = batch; lower is admitted first
    output_ids: list[int] = field(default_factory=list)
    text: str = ""  # output text that may be shown (stop strings cut off)
    emitted: int = 0  # characters of `text` already handed out
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error"
    error: str | None = None
    aborted: bool = False
    admitted_at: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    # Prefill progress: prompt tokens already in the KV cache, and how far the next prefill call goes (chunking).
    num_computed: int = 0
    prefill_to: int = 0
    prefilled: bool = False  # prompt done and first token sampled: the sequence decodes from the next step
    detok: Any = None  # the incremental detokenizer's offsets (detokenize.py)
    output_logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs_out: list[TokenLogprob | None] | None = None
    slot: Any = None  # the runner's per-sequence state (its KV slot)
    sink: Any = None  # the front end's per-request queue

    @property
    def cls(self) -> str:
        return CLASSES[self.priority]


@dataclass
class Event:
    """What one step produced for one sequence."""
    seq: Sequence
    delta: str  # new text to hand out
    new_tokens: int
    finished: bool
    token_ids: list[int] = field(default_factory=list)  # the tokens this step appended
    logprobs: list[TokenLogprob] = field(default_factory=list)  # theirs, when asked for
