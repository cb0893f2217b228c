"""Evaluating a model behind an OpenAI-compatible endpoint: `compress eval URL#MODEL` (ours, vLLM,
SGLang), with the same `eval.json` as a local evaluation.

- Perplexity: the same windows over the same token stream as a local eval (perplexity.py), each
  window sent as token ids to `/completions` with `echo: true, logprobs: 0, max_tokens: 0`; the
  prompt's token logprobs are the window's log-likelihoods. So the server must use the tokenizer
  given here (`--tokenizer`, which must be the served model's).
- lm-eval tasks: lm-eval's own `local-completions` API model (loglikelihood through echo + logprobs,
  generation through plain completions), on the same local task folders.

The API key, if the endpoint needs one, comes from the environment (`OPENAI_API_KEY`).
"""

from __future__ import annotations

import os
import re

import httpx
import torch

from compress.errors import CompressError

_SPEC = re.compile(r"^(https?://[^#\s]+)#(.+)$")


def parse_spec(spec: str) -> tuple[str, str] | None:
    """(base URL ending in /v1 or as given, model id) for `URL#MODEL`, else None."""
    m = _SPEC.match(str(spec))
    return (m.group(1).rstrip("/"), m.group(2)) if m else None


def _headers() -> dict[str, str]:
    key = os.environ.get("OPENAI_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


class Endpoint:
    """Prompt log-likelihoods from an OpenAI-compatible completions endpoint."""

    def __init__(self, url: str, model: str, timeout_s: float = 600.0):
        self.url, self.model = url, model
        self.client = httpx.Client(base_url=url, headers=_headers(), timeout=httpx.Timeout(timeout_s, connect=10.0))

    def close(self) -> None:
        self.client.close()

    def prompt_logprobs(self, ids: list[int]) -> list[float]:
        """log p(ids[i] | ids[:i]) for i >= 1."""
        body = {"model": self.model, "prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 0, "temperature": 0}
        try:
            r = self.client.post("/completions", json=body)
        except httpx.HTTPError as e:
            raise CompressError(f"{self.url}: unreachable ({type(e).__name__})") from None
        if r.status_code != 200:
            raise CompressError(f"{self.url}: answered {r.status_code}: {r.text[:300]}")
        lps = r.json()["choices"][0]["logprobs"]["token_logprobs"]
        if len(lps) < len(ids) or any(x is None for x in lps[1:len(ids)]):
            raise CompressError(f"{self.url}: the answer holds no logprob for every prompt token "
                                "(the endpoint must support echo with logprobs)")
        return [float(x) for x in lps[1:len(ids)]]


def remote_perplexity(endpoint: Endpoint, tokenizer, texts: list[str], context_len: int, stride: int,
                      max_tokens: int | None, progress: bool = False):
    from compress.data import tokenize_stream
    from compress.evaluate.perplexity import score_stream

    ids = tokenize_stream(tokenizer, texts, max_tokens=max_tokens)

    def window_nll(window: torch.Tensor, n_new: int) -> float:
        return -sum(endpoint.prompt_logprobs(window.tolist())[-n_new:])

    return score_stream(ids, tokenizer, context_len, stride, window_nll, progress)


def remote_tasks(url: str, model: str, tokenizer: str, names: list[str], task_dir, limit, batch_size: int,
                 num_fewshot, seed: int, max_length: int) -> dict[str, dict]:
    if not names:
        return {}
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    from compress.evaluate.harness import run_tasks_on

    key = os.environ.get("OPENAI_API_KEY")
    lm = LocalCompletionsAPI(base_url=f"{url}/completions", model=model, tokenizer=tokenizer,
                             tokenizer_backend="huggingface", tokenized_requests=True, batch_size=batch_size,
                             max_length=max_length, num_concurrent=1, max_retries=2, seed=seed,
                             **({"auth_token": key} if key else {}))
    return run_tasks_on(lm, names, task_dir, limit, num_fewshot, seed)
