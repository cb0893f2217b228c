"""Exact-match response cache, scoped per user, with TTLs and a byte bound (LRU).

Key = sha256 over (scope, tier, the normalized request: every field that shapes the answer, JSON
with sorted keys; `stream`, `stream_options` and `user` left out). The scope is the request's `user`
field plus a hash of its API key, so no user is answered from another user's entry; a request
gets the shared scope only by asking (`x-compress-cache-scope: shared`).

Only deterministic requests (temperature 0) are cached. Freshness: a default TTL per server, and
per request `cache-control: max-age=N` (store for N seconds; on lookup, accept only entries younger
than N), `no-cache` (skip the lookup, still store the fresh answer), `no-store` (neither read nor
write). Streaming and non-streaming requests share entries (the stored answer is the completed,
non-streaming body; a streaming hit is replayed as server-sent events by app.py).

Backends: `ResponseCache` (in-process, the default) and `SqliteResponseCache` (a file that several
replicas share).
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


def policy(cache_control: str | None, default_ttl_s: float, deterministic: bool) -> Policy:
    if not deterministic:
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


def _admit(body: dict, ttl_s: float, max_bytes: int) -> bytes | None:
    """The stored form of `body`, or None when it must not be stored (no lifetime, or larger than the cache)."""
    blob = json.dumps(body, separators=(",", ":")).encode()
    return None if ttl_s <= 0 or len(blob) > max_bytes else blob


def _freshness(stored: float, expires: float, now: float, max_age_s: float | None) -> str:
    """'expired' (drop the entry), 'stale' (too old for this request, keep it) or 'fresh'."""
    if now >= expires:
        return "expired"
    if max_age_s is not None and now - stored > max_age_s:
        return "stale"
    return "fresh"


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
            state = _freshness(stored, expires, now, max_age_s)
            if state == "expired":
                self._drop(key)
            if state != "fresh":
                return None
            self._entries.move_to_end(key)
            return json.loads(body)

    def put(self, key: str, body: dict, ttl_s: float) -> None:
        blob = _admit(body, ttl_s, self.max_bytes)
        if blob is None:
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


class SqliteResponseCache:
    """The same cache in a SQLite file, so several server processes (replicas on one host or a shared
    volume) answer from one store. Times are wall-clock (they are compared across processes);
    eviction drops the least recently used entries past `max_bytes`."""

    def __init__(self, path: str, max_bytes: int = 256 << 20, clock: Callable[[], float] = time.time):
        import sqlite3

        self.path, self.max_bytes, self.clock = path, max_bytes, clock
        self._db = sqlite3.connect(path, timeout=10, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, stored REAL, expires REAL, "
                         "used REAL, size INTEGER, body BLOB)")
        self._db.execute("CREATE INDEX IF NOT EXISTS entries_used ON entries(used)")
        self._lock = threading.Lock()

    @property
    def size_bytes(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COALESCE(SUM(size), 0) FROM entries").fetchone()[0]

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]

    def get(self, key: str, max_age_s: float | None = None) -> dict | None:
        now = self.clock()
        with self._lock:
            row = self._db.execute("SELECT stored, expires, body FROM entries WHERE key = ?", (key,)).fetchone()
            if row is None:
                return None
            stored, expires, body = row
            state = _freshness(stored, expires, now, max_age_s)
            if state == "expired":
                self._db.execute("DELETE FROM entries WHERE key = ?", (key,))
            if state != "fresh":
                return None
            self._db.execute("UPDATE entries SET used = ? WHERE key = ?", (now, key))
        return json.loads(body)

    def put(self, key: str, body: dict, ttl_s: float) -> None:
        blob = _admit(body, ttl_s, self.max_bytes)
        if blob is None:
            return
        now = self.clock()
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?)",
                             (key, now, now + ttl_s, now, len(blob), blob))
            self._db.execute("DELETE FROM entries WHERE expires <= ?", (now,))
            total = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM entries").fetchone()[0]
            while total > self.max_bytes:
                k, size = self._db.execute("SELECT key, size FROM entries ORDER BY used LIMIT 1").fetchone()
                self._db.execute("DELETE FROM entries WHERE key = ?", (k,))
                total -= size
