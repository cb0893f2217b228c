"""Series added for the dashboards and alert rules (deploy/prometheus), beside those of metrics.py.

- `compress_slo_requests_total{tier, class, result}`: completed requests of a class with a p95 target,
  `result` = `good` (end-to-end latency within the target) or `slow`. A p95 target allows 5% slow
  requests, so slow / all / 0.05 is the SLO's burn rate (Google SRE workbook, ch. 5).
- `compress_budget_limit{resource}` (tokens, cost), `compress_budget_window_seconds` and
  `compress_budget_spent{resource}` (global, current window): what the budget burn rules divide by.
  Read from the server's BudgetTracker at scrape time; absent when no budget is set.

Registered on the app's own registry, so /metrics exports them with the rest.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily

from compress.serve.budget import BudgetTracker

SLO_ALLOWED_SLOW = 0.05  # a p95 target: 5% of requests may be slower


class BudgetCollector:
    """Prometheus collector over a BudgetTracker's configuration and current global window."""

    def __init__(self, tracker: BudgetTracker):
        self.tracker = tracker

    def collect(self):
        c = self.tracker.config
        tokens, cost, _elapsed = self.tracker.spent(time.time())
        limit = GaugeMetricFamily("compress_budget_limit", "Global budget per window, by resource.",
                                  labels=["resource"])
        spent = GaugeMetricFamily("compress_budget_spent", "Global spend in the current budget window.",
                                  labels=["resource"])
        for resource, cap, used in (("tokens", c.max_tokens, tokens), ("cost", c.max_cost, cost)):
            if cap is not None:
                limit.add_metric([resource], float(cap))
                spent.add_metric([resource], float(used))
        yield limit
        yield spent
        yield GaugeMetricFamily("compress_budget_window_seconds", "Budget window length.", value=c.window_s)


class ExtraSeries:
    """The SLO good/slow counter and (with a budget) the budget gauges, on `registry`."""

    def __init__(self, registry: CollectorRegistry, slo_targets: dict[str, float],
                 budget: BudgetTracker | None = None):
        self.slo_targets = dict(slo_targets)
        self.slo_requests = Counter("compress_slo_requests", "Completed requests of a class with a p95 target, "
                                    "by whether they met it (good) or not (slow).", ["tier", "class", "result"],
                                    registry=registry)
        if budget is not None:
            registry.register(BudgetCollector(budget))

    def observe(self, tier: str, cls: str, latency_s: float) -> None:
        target = self.slo_targets.get(cls)
        if target is not None:
            self.slo_requests.labels(tier, cls, "good" if latency_s <= target else "slow").inc()
