"""Prometheus metrics for `compress serve` (prefix `compress_`, base units; never user ids as labels).

Every per-request metric carries `tier` and `class` (the traffic class: interactive or batch);
engine gauges (queue depth, running, batch size) carry `tier` only, as they describe the engine.
One registry per app, so several apps in one process do not collide."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401 - re-exported for the /metrics handler

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServeMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("compress_requests", "Requests answered, by tier, HTTP status and class.",
                                ["tier", "status", "class"], registry=r)
        self.e2e = Histogram("compress_e2e_request_latency_seconds", "End-to-end request latency.",
                             ["tier", "class"], buckets=_LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("compress_time_to_first_token_seconds", "Time to first token.",
                              ["tier", "class"], buckets=_LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("compress_inter_token_latency_seconds", "Time between output tokens.",
                             ["tier", "class"], buckets=_ITL_BUCKETS, registry=r)
        self.queue_time = Histogram("compress_queue_time_seconds", "Time from arrival to admission into a batch.",
                                    ["tier", "class"], buckets=_LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("compress_prompt_tokens", "Prompt tokens processed.", ["tier", "class"], registry=r)
        self.generation_tokens = Counter("compress_generation_tokens", "Tokens generated.", ["tier", "class"], registry=r)
        self.queue_depth = Gauge("compress_queue_depth", "Requests waiting for a batch slot.", ["tier"], registry=r)
        self.running = Gauge("compress_running_requests", "Requests in the running batch.", ["tier"], registry=r)
        self.cache = Counter("compress_cache_lookups", "Response cache lookups, by result (hit/miss).",
                             ["tier", "class", "result"], registry=r)
        self.fallbacks = Counter("compress_fallbacks", "Requests passed on to the next tier, by the failing "
                                 "tier and its status.", ["tier", "class", "status"], registry=r)
        self.cost = Counter("compress_cost", "Cost of answered requests in the manifest's currency.",
                            ["tier", "class"], registry=r)
        self.shed = Counter("compress_shed_requests", "Requests refused by the SLO controller, by the "
                            "tier they were routed to.", ["tier", "class"], registry=r)
        self.slo_state = Gauge("compress_slo_state", "SLO state per class (interactive drives the controller): "
                               "0 ok, 1 tight, 2 shedding batch, 3 shedding all.", ["class"], registry=r)
        self.slo_p95 = Gauge("compress_slo_p95_seconds", "Rolling p95 end-to-end latency the SLO controller sees "
                             "(NaN: too few recent samples).", ["class"], registry=r)
        self.slo_target = Gauge("compress_slo_target_seconds", "p95 end-to-end latency target.", ["class"],
                                registry=r)
        self.budget_alerts = Counter("compress_budget_alerts", "Budget alerts, by kind (burn, exhausted, spike).",
                                     ["kind"], registry=r)
        self.graphed = Gauge("compress_engine_cuda_graphs", "1 when the tier's decode step replays CUDA graphs, 0 "
                             "when it runs eagerly (a CPU, or a kernel that cannot be captured, e.g. LLM.int8()).",
                             ["tier"], registry=r)
        self.prefill_tokens_step = Histogram("compress_prefill_tokens_per_step", "Prompt tokens prefilled in one "
                                             "engine step (bounded by the prefill budget: the running batch's "
                                             "stall).", ["tier"], buckets=(16, 64, 256, 512, 1024, 2048, 4096, 8192),
                                             registry=r)
        self.batch_size = Histogram("compress_batch_size", "Sequences per joint decode step.", ["tier"],
                                    buckets=_BATCH_BUCKETS, registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
