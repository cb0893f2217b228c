"""What an answered request costs, and where that is recorded: the cost metric, the budgets, and
budget alerts (a log line, a metric and an optional webhook). Cost is per 1k tokens, prompt plus
completion: `(prompt_tokens + completion_tokens) / 1000 x the tier's cost_per_1k_tokens`."""

from __future__ import annotations

import asyncio
import logging
import time

import httpx

from compress.serve.budget import Alert, BudgetConfig, BudgetTracker
from compress.serve.metrics import ServeMetrics

log = logging.getLogger("compress.serve")


def cost(tier, use: dict) -> float | None:
    """The request's cost in the manifest's currency (None: the tier has no price)."""
    if tier is None or tier.cost_per_1k_tokens is None:
        return None
    return (use.get("total_tokens") or 0) / 1000.0 * tier.cost_per_1k_tokens


class Accounts:
    def __init__(self, metrics: ServeMetrics, budget: BudgetConfig | None, alert_webhook: str | None):
        self.metrics, self.alert_webhook = metrics, alert_webhook
        self.budget = BudgetTracker(budget, self.on_alert, start=time.time()) if budget else None

    def charge(self, ctx, tier, use: dict) -> float | None:
        """Account for an answered request (cost metric, budgets); sets and returns its cost."""
        ctx.cost = c = cost(tier, use)
        ctx.prompt_tokens = int(use.get("prompt_tokens") or 0)
        ctx.completion_tokens = int(use.get("completion_tokens") or 0)
        if c is not None:
            self.metrics.cost.labels(tier.name, ctx.cls).inc(c)
        if self.budget is not None:
            self.budget.record(ctx.api_key, int(use.get("total_tokens") or 0), c, time.time())
        return c

    def on_alert(self, alert: Alert) -> None:
        log.warning("budget alert (%s): %s", alert.kind, alert.message)
        self.metrics.budget_alerts.labels(alert.kind).inc()
        if not self.alert_webhook:
            return
        payload, url = {"kind": alert.kind, "scope": alert.scope, "message": alert.message}, self.alert_webhook

        async def post():
            try:
                async with httpx.AsyncClient(timeout=5) as c:
                    await c.post(url, json=payload)
            except httpx.HTTPError as e:
                log.warning("alert webhook failed: %s", type(e).__name__)

        try:
            asyncio.get_running_loop().create_task(post())
        except RuntimeError:
            pass
