"""Shared by the dashboard tests: two tiny tiers (fixed seeds) behind a real `compress serve`, and a burst
of mixed traffic (named tiers and `auto`, both classes, streams, cache hits, a bad request)."""

from __future__ import annotations

import concurrent.futures as cf
import json
import shutil
from pathlib import Path

import httpx

from compress.manifest import build_manifest, write_manifest
from compress.testing import build_tiny_llama

KEY = "sk-dash-123"


def tiny_tiers(root: Path, tiny_model: Path, tokenizer, slo_s: float = 5.0) -> Path:
    small = Path(shutil.copytree(tiny_model, root / "tiny-a"))
    large = build_tiny_llama(root / "tiny-b", seed=1, tokenizer=tokenizer)
    (small / "eval.json").write_text(json.dumps({"tasks": {"arc_easy": {"acc": 0.62}}}))
    (large / "eval.json").write_text(json.dumps({"tasks": {"arc_easy": {"acc": 0.70}}}))
    m = build_manifest([str(small), str(large)], costs=["tiny-a=0.001", "tiny-b=0.002"],
                       slos=[f"interactive={slo_s}", "batch=60"])
    return write_manifest(m, root / "tiers.yaml")


def post(url: str, body: dict, key: str | None = KEY, **headers) -> httpx.Response:
    h = {**({"Authorization": f"Bearer {key}"} if key else {}), **headers}
    return httpx.post(url + "/v1/completions", json=body, headers=h, timeout=120)


PROMPTS = ["The quick brown fox", "def foo(x):\n    return", "Once upon a time", "Prove that the sum of two "
           "odd numbers is even, step by step, and explain why.", "import os", "Hi"]


def mixed_burst(url: str, key: str | None = KEY, rounds: int = 2) -> list[httpx.Response]:
    """Concurrent requests: every tier and `auto`, interactive and batch, greedy repeats (cache hits),
    streams, and one request too long for the model (a 400, not counted as served)."""
    bodies = []
    for r in range(rounds):
        for i, p in enumerate(PROMPTS):
            model = ("auto", "tiny-a", "tiny-b")[i % 3]
            bodies.append({"model": model, "prompt": p, "max_tokens": 4 + 2 * i, "temperature": 0,
                           "priority": "batch" if (i + r) % 3 == 0 else "interactive",
                           **({"stream": True} if i == 4 else {})})
    with cf.ThreadPoolExecutor(6) as ex:
        out = list(ex.map(lambda b: post(url, b, key), bodies))
    out.append(post(url, {"model": "tiny-a", "prompt": "x", "max_tokens": 10**6}, key))
    return out
