"""Router (difficulty -> cheapest good-enough tier, fallbacks), response cache (scoping, TTL,
cache-control) and priority admission, as logic: a fake clock where time matters, no model."""

from __future__ import annotations

import pytest

from compress.manifest import LocalTier, Manifest, Quality, RemoteTier
from compress.serve.batcher import Batcher, SamplingParams, Sequence
from compress.serve.cache import ResponseCache, cache_key, policy, scope
from compress.serve.protocol import APIError
from compress.serve.router import Router, difficulty

EASY = "Hi there"
HARD = ("Prove step by step that this algorithm's complexity is O(n log n), then implement it:\n"
        "def merge_sort(xs):\n    return xs")


def _tier(name, cost, **quality):
    return LocalTier(name=name, path=f"/m/{name}", method="gptq", cost_per_1k_tokens=cost, quality=Quality(**quality))


def test_difficulty_orders_prompts():
    assert difficulty(EASY, 8) < 0.2 < 0.8 < difficulty(HARD, 512) <= 1.0
    assert difficulty(EASY, 8) < difficulty(EASY, 1024)  # asking for a long answer is harder
    assert difficulty("x " * 300, 16) > difficulty("x", 16)


def test_auto_picks_cheapest_tier_good_enough_with_fallbacks():
    m = Manifest(tiers=[_tier("small", 0.001, tasks={"arc": 0.62}), _tier("mid", 0.004, tasks={"arc": 0.66}),
                        _tier("large", 0.02, tasks={"arc": 0.70})])
    r = Router(m, floor=0.8)
    easy = r.route("auto", EASY, 8)
    assert [t.name for t in easy.tiers] == ["small", "mid", "large"]  # small first; the rest are fallbacks
    hard = r.route("auto", HARD, 512)
    assert [t.name for t in hard.tiers] == ["large"] and hard.required_quality > 0.95
    assert [t.name for t in r.route("mid").tiers] == ["mid"] and r.route("mid").difficulty is None
    with pytest.raises(APIError) as e:
        r.route("gpt-5")
    assert e.value.status == 404 and e.value.code == "model_not_found"


def test_quality_from_perplexity_and_unknown_quality():
    m = Manifest(tiers=[_tier("q4", 0.001, perplexity=24.0), _tier("nothing", 0.002),
                        _tier("bf16", 0.01, perplexity=21.0)])
    r = Router(m, floor=0.85)
    assert r.quality == {"q4": pytest.approx(21 / 24), "nothing": None, "bf16": 1.0}
    assert [t.name for t in r.route("auto", EASY, 8).tiers] == ["q4", "bf16"]  # unmeasured tier never auto-picked
    assert [t.name for t in r.route("auto", HARD, 512).tiers] == ["bf16"]
    blind = Router(Manifest(tiers=[_tier("a", None), RemoteTier(name="b", url="http://x/v1", model="m")]))
    assert [t.name for t in blind.route("auto", HARD, 512).tiers] == ["a", "b"]  # nothing measured: cost order


def test_cache_policy_from_cache_control():
    assert policy(None, 60, deterministic=True) == (True, True, 60, None)
    assert policy("no-cache", 60, True)[:2] == (False, True)
    assert policy("no-store", 60, True)[:2] == (False, False)
    assert policy("max-age=5", 60, True) == (True, True, 5.0, 5.0)
    assert policy("max-age=0", 60, True)[:2] == (True, False)  # only fresh-as-now entries; not stored
    assert policy("No-Cache, max-age=7", 60, True) == (False, True, 7.0, 7.0)
    assert policy(None, 60, deterministic=False)[:2] == (False, False)


def test_cache_scoping_ttl_and_byte_bound():
    now = [0.0]
    c = ResponseCache(max_bytes=200, clock=lambda: now[0])
    req = {"model": "auto", "prompt": "hi", "max_tokens": 4, "temperature": 0}
    alice, bob = scope("alice", "sk-1", False), scope("bob", "sk-1", False)
    assert len({alice, bob, scope("alice", "sk-2", False), scope("alice", "sk-1", True)}) == 4
    k_alice = cache_key(alice, "small", req)
    assert cache_key(alice, "small", {**req, "stream": True, "user": "x"}) == k_alice  # transport fields ignored
    assert cache_key(alice, "large", req) != k_alice and cache_key(bob, "small", req) != k_alice
    c.put(k_alice, {"text": "a"}, ttl_s=10)
    assert c.get(k_alice) == {"text": "a"} and c.get(cache_key(bob, "small", req)) is None
    now[0] = 6.0
    assert c.get(k_alice, max_age_s=5) is None and c.get(k_alice) == {"text": "a"}  # too old for this request only
    now[0] = 10.0
    assert c.get(k_alice) is None and len(c) == 0  # expired and dropped
    for i in range(10):  # ~50 bytes each: the oldest are evicted to stay under 200 bytes
        c.put(f"k{i}", {"text": "x" * 30}, ttl_s=100)
    assert c.size_bytes <= 200 and c.get("k9") is not None and c.get("k0") is None


def test_interactive_is_admitted_before_batch():
    b = Batcher(max_batch=1, max_wait_s=0.0, max_queue=10)
    p = SamplingParams(max_tokens=4)
    first_batch, second_batch = Sequence("b1", [1], p, 0.0, priority=1), Sequence("b2", [1], p, 0.1, priority=1)
    inter = Sequence("i1", [1], p, 0.2, priority=0)
    for s in (first_batch, second_batch, inter):
        b.add(s)
    _, admitted = b.schedule(1.0)
    assert [s.id for s in admitted] == ["i1"]
    b.start(admitted)
    b.finish(admitted)
    _, admitted = b.schedule(2.0)
    assert [s.id for s in admitted] == ["b1"]  # first come first served within a class


def test_batch_requests_leave_queue_room_for_interactive_ones():
    from compress.serve.batcher import QueueFull

    b = Batcher(max_batch=1, max_wait_s=0.0, max_queue=8)
    p = SamplingParams(max_tokens=4)
    for i in range(6):  # batch work may take 8 - 8 // 4 = 6 places
        b.add(Sequence(f"b{i}", [1], p, 0.0, priority=1))
    with pytest.raises(QueueFull):
        b.add(Sequence("b6", [1], p, 0.0, priority=1))
    b.add(Sequence("i0", [1], p, 0.0, priority=0))
    b.add(Sequence("i1", [1], p, 0.0, priority=0))
    with pytest.raises(QueueFull):  # the bound itself still holds
        b.add(Sequence("i2", [1], p, 0.0, priority=0))


def test_slo_controller_tightens_sheds_and_recovers():
    from compress.serve.slo import SLOConfig, SLOController, State

    c = SLOController(SLOConfig({"interactive": 2.0, "batch": 30.0}, window_s=10.0, min_samples=5))
    assert c.state(0.0) == State.OK and c.admit("batch", 0.0)
    for i in range(20):
        c.observe("interactive", 0.5, now=i * 0.1)
    assert c.state(2.0) == State.OK and c.wait_scale(2.0) == 1.0 and c.route_floor(0.8, 2.0) == 0.8
    for i in range(20):  # latency creeps up: 1.4 s is 70% of the target
        c.observe("interactive", 1.4, now=3.0 + i * 0.1)
    assert c.state(5.0) == State.TIGHT
    assert c.wait_scale(5.0) == 0.0 and c.route_floor(0.8, 5.0) == pytest.approx(0.65) and c.admit("batch", 5.0)
    for i in range(20):  # 1.8 s = 90%: batch work is refused before the target breaks
        c.observe("interactive", 1.8, now=6.0 + i * 0.1)
    assert c.state(8.0) == State.SHED and not c.admit("batch", 8.0) and c.admit("interactive", 8.0)
    for i in range(40):
        c.observe("interactive", 2.5, now=8.5 + i * 0.01)
    assert c.state(9.0) == State.BREACH and not c.admit("batch", 9.0)
    assert c.admit("interactive", 9.0)  # a probe
    assert not c.admit("interactive", 9.2) and c.admit("interactive", 9.5)  # one per probe_every_s (0.5 s)
    for i in range(5):  # the probes come back fast: recovered, though the window still holds 2.5 s samples
        c.observe("interactive", 0.3, now=10.0 + i * 0.8)
    assert c.state(13.5) == State.BREACH  # the last 5 s (recent_s) still hold slow completions
    assert c.p95("interactive", 14.0) == 2.5 and c.state(14.0) == State.OK and c.admit("batch", 14.0)
    assert c.state(30.0) == State.OK and c.admit("batch", 30.0)  # the window moved on
    for i in range(20):
        c.observe("interactive", 0.3, now=31.0 + i * 0.1)
    assert c.state(33.0) == State.OK
    for i in range(10):  # slow batch work has its own state and never sheds interactive requests
        c.observe("batch", 29.0, now=33.0 + i * 0.1)
    assert c.state(34.0, "batch") == State.SHED and c.state(34.0) == State.OK and c.admit("interactive", 34.0)
    assert SLOController(SLOConfig({"batch": 1.0})).state(0.0) == State.OK  # no interactive target: no action


def test_budget_burn_rate_alert_fires_before_the_budget_is_spent():
    from compress.serve.budget import BudgetConfig, BudgetTracker

    alerts = []
    t = BudgetTracker(BudgetConfig(window_s=1000, max_tokens=10_000, spike_min_tokens=10**9), alerts.append)
    assert t.record("sk-a", 100, 0.0, now=100.0) == []  # 1,000 by the end of the window: fine
    out = t.record("sk-a", 1000, 0.0, now=150.0)  # 1,100 in 150 s -> 7,333: still fine
    assert out == []
    out = t.record("sk-a", 1000, 0.0, now=200.0)  # 2,100 in 200 s -> 10,500 projected: alert now
    assert [a.kind for a in out] == ["burn"] and out[0].scope == "global" and "10,500" not in out[0].message
    assert t.record("sk-a", 10, 0.0, now=210.0) == []  # once per window
    assert t.refusal("sk-a", 210.0) is None  # soft budget: nothing refused
    assert "sk-a" not in "".join(a.message for a in alerts)  # keys never appear


def test_budget_hard_limit_per_key_and_new_window():
    from compress.serve.budget import BudgetConfig, BudgetTracker

    t = BudgetTracker(BudgetConfig(window_s=100, key_max_tokens=50, hard=True, spike_min_tokens=10**9))
    out = t.record("sk-a", 60, None, now=10.0)
    assert "exhausted" in [a.kind for a in out]
    assert "API key token budget of 50" in t.refusal("sk-a", 11.0)
    assert t.refusal("sk-b", 11.0) is None  # another key is unaffected
    assert t.refusal("sk-a", 101.0) is None  # a new window


def test_budget_spike_alert():
    from compress.serve.budget import BudgetConfig, BudgetTracker

    t = BudgetTracker(BudgetConfig(window_s=3600, spike_window_s=60, spike_factor=5, spike_min_tokens=500))
    kinds = []
    for minute in range(10):  # steady: 100 tokens a minute
        kinds += [a.kind for a in t.record(None, 100, None, now=minute * 60.0)]
    assert kinds == []
    kinds += [a.kind for a in t.record(None, 2000, None, now=600.0)]  # 20x the usual minute
    assert kinds == ["spike"]


def test_rate_limiter_per_key_sliding_minute():
    from compress.serve.budget import RateLimiter

    r = RateLimiter(per_minute=2)
    assert r.admit("sk-a", 0.0) is None and r.admit("sk-a", 10.0) is None
    assert r.admit("sk-a", 20.0) == pytest.approx(40.0)  # the first one leaves the window at 60 s
    assert r.admit("sk-b", 20.0) is None  # keys have separate allowances
    assert r.admit("sk-a", 60.5) is None


def test_sqlite_cache_is_shared_between_instances_with_ttl_and_bound(tmp_path):
    from compress.serve.cache import SqliteResponseCache

    now = [1000.0]
    db = str(tmp_path / "cache.db")
    a = SqliteResponseCache(db, max_bytes=200, clock=lambda: now[0])
    b = SqliteResponseCache(db, max_bytes=200, clock=lambda: now[0])  # another replica
    a.put("k", {"text": "hello"}, ttl_s=10)
    assert b.get("k") == {"text": "hello"} and b.get("other") is None
    now[0] += 6
    assert b.get("k", max_age_s=5) is None and b.get("k") is not None
    now[0] += 5
    assert a.get("k") is None and len(b) == 0  # expired everywhere
    for i in range(10):
        now[0] += 1
        a.put(f"k{i}", {"text": "x" * 30}, ttl_s=100)
    assert b.size_bytes <= 200 and b.get("k9") is not None and b.get("k0") is None


def test_slo_p95_at_one_instant_is_reused_until_a_new_completion():
    from compress.serve.slo import SLOConfig, SLOController, State

    c = SLOController(SLOConfig({"interactive": 2.0}, min_samples=2))
    c.observe("interactive", 0.1, 1.0)
    c.observe("interactive", 0.2, 1.0)
    assert c.p95("interactive", 1.0) == 0.2 and c.state(1.0) == State.OK
    c.observe("interactive", 3.0, 1.0)  # same instant, new sample: not answered from the memo
    assert c.p95("interactive", 1.0) == 3.0 and c.state(1.0) == State.BREACH
    assert c.p95("interactive", 40.0) is None  # a later instant: the window has moved on
