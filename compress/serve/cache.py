"""Exact-match response cache, scoped per user, with TTLs and a byte bound (LRU).

Key = sha256 over (scope, tier, the normalized request: every field that shapes the answer, JSON
with sorted keys; `stream`, `stream_options` and `user` left out). The scope is the request's `user`
field plus a hash of its API key, so no user is answered from another user's entry; a request
gets the shared scope only by asking (`x-compress-cache-scope: shared`).

Only deterministic requests (temperature 0) are cached. Freshness: a default TTL per server, and
per request `cache-control: max-age=N` (store for N seconds; on lookup, accept only entries younger
than N), `no-cache` (skip the lookup, still store the fresh answer), `no-store` (neither read nor
write). Streaming requests are neither looked up nor stored.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from typing import Callable, NamedTuple

SHARED = "shared"


class Policy(NamedTuple):
    read: bool
    write: bool
    ttl_s: float
    max_age_s: float | None  # lookup accepts only entries at most this old


def policy(cache_control: str | None, default_ttl_s: float, deterministic: bool, stream: bool) -> Policy:
    if not deterministic or stream:
        return Policy(False, False, 0.0, None)
    read = write = True
    ttl, max_age = default_ttl_s, None
    for part in (cache_control or "").lower().split(","):
        name, _, value = part.strip().partition("=")
        if name == "no-store":
            read = write = False
        elif name == "no-cache":
            read = False
        elif name == "max-age":
            try:
                max_age = ttl = max(0.0, float(value))
            except ValueError:
                pass
    return Policy(read, write and ttl > 0, ttl, max_age)


def scope(user: str | None, api_key: str | None, shared: bool) -> str:
    if shared:
        return SHARED
    key = hashlib.sha256(api_key.encode()).hexdigest()[:16] if api_key else "-"
    return json.dumps([user or "", key])


def cache_key(scope_: str, tier: str, request: dict) -> str:
    body = {k: v for k, v in request.items() if k not in ("stream", "stream_options", "user", "model")}
    blob = json.dumps([scope_, tier, body], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class ResponseCache:
    """In-process LRU bounded by the bytes of the stored JSON bodies."""

    def __init__(self, max_bytes: int = 64 << 20, clock: Callable[[], float] = time.monotonic):
        self.max_bytes, self.clock = max_bytes, clock
        self._entries: OrderedDict[str, tuple[float, float, bytes]] = OrderedDict()  # key -> (stored, expires, body)
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, max_age_s: float | None = None) -> dict | None:
        now = self.clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            stored, expires, body = entry
            if now >= expires:
                self._drop(key)
                return None
            if max_age_s is not None and now - stored > max_age_s:
                return None
            self._entries.move_to_end(key)
            return json.loads(body)

    def put(self, key: str, body: dict, ttl_s: float) -> None:
        blob = json.dumps(body, separators=(",", ":")).encode()
        if ttl_s <= 0 or len(blob) > self.max_bytes:
            return
        now = self.clock()
        with self._lock:
            if key in self._entries:
                self._drop(key)
            self._entries[key] = (now, now + ttl_s, blob)
            self._bytes += len(blob)
            while self._bytes > self.max_bytes:
                self._drop(next(iter(self._entries)))

    def _drop(self, key: str) -> None:
        _, _, blob = self._entries.pop(key)
        self._bytes -= len(blob)
