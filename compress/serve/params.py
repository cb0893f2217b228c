"""A validated request -> prompt token ids and the engine's `SamplingParams`, per choice.

- Prompt length is checked *before* tokenizing: a text of c characters has at least
  c / (the longest vocabulary entry) tokens, so a prompt that cannot fit the context is refused
  without spending time or memory on it. Tokenizing then runs in a worker thread, off the event loop.
- Token ids (prompt lists, `logit_bias`, `stop_token_ids`) are checked against the vocabulary.
- A parameter the tier's engine does not have (its `SamplingParams` lacks the field) is refused
  with a 400 naming the request field, never dropped.
"""

from __future__ import annotations

import asyncio
import dataclasses

from compress.serve.sequence import SamplingParams
from compress.serve.protocol import MAX_CHOICES, SEED_LIMIT, APIError

DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default for /v1/completions
_MAX_CHARS: dict[int, int] = {}  # id(tokenizer) -> characters of its longest vocabulary entry


def max_token_chars(tok) -> int:
    """An upper bound on the characters one token decodes to (byte-level and sentencepiece vocabularies
    spell each byte / character of a token as one character of its entry)."""
    key = id(tok)
    if key not in _MAX_CHARS:
        _MAX_CHARS[key] = max((len(t) for t in tok.get_vocab()), default=1) or 1
    return _MAX_CHARS[key]


def check_length(chars: int, tok, max_context: int, param: str) -> None:
    at_least = chars // max_token_chars(tok)
    if at_least >= max_context:
        raise APIError(400, f"prompt has {chars} characters, at least {at_least} tokens; this model's context is "
                       f"{max_context} tokens", param=param, code="context_length_exceeded")


async def completion_prompts(engine, req) -> list[tuple[list[int], str | None]]:
    """[(token ids, the prompt's text or None when given as ids)] for each prompt of the request."""
    prompt, tok, ctx = req.prompt, engine.tokenizer, engine.max_context
    if isinstance(prompt, str):
        prompts: list = [prompt]
    elif prompt and isinstance(prompt[0], int):
        prompts = [prompt]
    else:
        prompts = list(prompt)
    if not prompts:
        raise APIError(400, "prompt is empty", param="prompt")
    if len(prompts) * req.n > MAX_CHOICES:
        raise APIError(400, f"{len(prompts)} prompts x n={req.n} exceeds {MAX_CHOICES} choices per request",
                       param="n")
    texts = [p for p in prompts if isinstance(p, str)]
    for p in texts:
        check_length(len(p), tok, ctx, "prompt")
    encoded = iter(await asyncio.to_thread(lambda: [tok(p)["input_ids"] for p in texts]) if texts else [])
    vocab = len(tok)
    out = []
    for p in prompts:
        if isinstance(p, str):
            ids, text = next(encoded), p
        else:
            ids, text = list(p), None
            if any(not 0 <= i < vocab for i in ids):
                raise APIError(400, f"prompt token ids must be in [0, {vocab})", param="prompt")
        if not ids:
            raise APIError(400, "prompt is empty", param="prompt")
        out.append((ids, text))
    return out


async def chat_prompt(engine, req) -> list[int]:
    tok = engine.tokenizer
    if not getattr(tok, "chat_template", None):
        raise APIError(400, f"model {req.model!r} has no chat template; use /v1/completions", param="model")
    messages = [{"role": m.role, "content": m.text()} for m in req.messages]
    check_length(sum(len(m["content"]) for m in messages), tok, engine.max_context, "messages")

    def render() -> list[int]:
        try:
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # noqa: BLE001 - templates raise on role orders they do not accept
            raise APIError(400, f"chat template rejected the messages: {str(e).splitlines()[0][:200]}",
                           param="messages") from None
        return tok(text, add_special_tokens=False)["input_ids"]

    ids = await asyncio.to_thread(render)
    if not ids:
        raise APIError(400, "messages render to an empty prompt", param="messages")
    return ids


def sampling_params(req, chat: bool, n_prompt: int, max_context: int, vocab: int, sample: int = 0) -> SamplingParams:
    """The engine parameters of choice `sample` (0..n-1) for a prompt of `n_prompt` tokens."""
    prompt_param = "messages" if chat else "prompt"
    if n_prompt >= max_context:
        raise APIError(400, f"prompt is {n_prompt} tokens; this model's context is {max_context} tokens",
                       param=prompt_param, code="context_length_exceeded")
    tokens_param = "max_completion_tokens" if chat and req.max_completion_tokens is not None else "max_tokens"
    max_tokens = req.requested_tokens()
    if max_tokens is None:
        max_tokens = max_context - n_prompt if chat else min(DEFAULT_COMPLETION_TOKENS, max_context - n_prompt)
    echo = not chat and req.echo
    if max_tokens < 1 and not echo:
        raise APIError(400, f"{tokens_param} must be at least 1 (0 is allowed with echo: score the prompt only)",
                       param=tokens_param)
    if n_prompt + max_tokens > max_context:
        raise APIError(400, f"prompt ({n_prompt} tokens) + {tokens_param} ({max_tokens}) exceeds this model's "
                       f"context of {max_context} tokens", param=tokens_param, code="context_length_exceeded")
    seed = None
    if req.seed is not None:
        if req.seed + req.n - 1 >= SEED_LIMIT:
            raise APIError(400, "seed + n - 1 must be below 2**63 (each choice takes the next seed)", param="seed")
        seed = req.seed + sample
    bias = tuple(sorted((int(k), float(v)) for k, v in (req.logit_bias or {}).items()))
    if any(t >= vocab for t, _ in bias):
        raise APIError(400, f"logit_bias keys must be token ids in [0, {vocab})", param="logit_bias")
    stop_ids = tuple(req.stop_token_ids or ())
    if any(not 0 <= t < vocab for t in stop_ids):
        raise APIError(400, f"stop_token_ids must be in [0, {vocab})", param="stop_token_ids")
    if chat:
        if req.top_logprobs is not None and not req.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        prompt_logprobs = None
    else:
        logprobs = req.logprobs
        prompt_logprobs = req.logprobs if echo and req.logprobs is not None else None
    wanted = {  # engine field -> (value, its default, the request field that asked for it)
        "max_tokens": (max_tokens, None, tokens_param), "temperature": (req.temperature, None, "temperature"),
        "top_p": (req.top_p, None, "top_p"), "seed": (seed, None, "seed"),
        "stop": (tuple(req.stop_list()), None, "stop"), "ignore_eos": (req.ignore_eos, False, "ignore_eos"),
        "top_k": (max(0, req.top_k), 0, "top_k"), "stop_token_ids": (stop_ids, (), "stop_token_ids"),
        "min_tokens": (req.min_tokens, 0, "min_tokens"),
        "presence_penalty": (req.presence_penalty, 0.0, "presence_penalty"),
        "frequency_penalty": (req.frequency_penalty, 0.0, "frequency_penalty"),
        "repetition_penalty": (req.repetition_penalty, 1.0, "repetition_penalty"),
        "logit_bias": (bias, (), "logit_bias"),
        "logprobs": (logprobs, None, "top_logprobs" if chat and req.top_logprobs else "logprobs"),
        "prompt_logprobs": (prompt_logprobs, None, "echo"),
    }
    have = {f.name for f in dataclasses.fields(SamplingParams)}
    missing = sorted({field for name, (v, default, field) in wanted.items() if name not in have and v != default})
    if max_tokens == 0 and "prompt_logprobs" not in have:
        missing.append(tokens_param)
    if missing:
        raise APIError(400, f"this server's engine does not support {', '.join(missing)}", param=",".join(missing),
                       code="unsupported_field")
    return SamplingParams(**{k: v for k, (v, _, _) in wanted.items() if k in have})
