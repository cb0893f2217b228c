"""Writes compress-dashboard.json (Grafana 10+, schemaVersion 39) over deploy/prometheus/compress-rules.yml.

    python deploy/grafana/make_dashboard.py   # after editing the panels below

Import the JSON in Grafana (Dashboards > New > Import) and pick the Prometheus data source that scrapes
`compress serve` and loads the rules. The `tier` variable filters every per-tier panel.
"""

from __future__ import annotations

import json
from pathlib import Path

T = '{tier=~"$tier"}'
PANELS = [  # (title, unit, [(PromQL, legend)])
    ("Requests/s", "reqps", [(f"tier_class:compress_requests:rate5m{T}", "{{tier}} · {{class}}")]),
    ("End-to-end latency p95 (SLO target dotted)", "s", [
        (f"tier_class:compress_e2e_latency_seconds:p95_5m{T}", "{{tier}} · {{class}}"),
        ("max by (class) (compress_slo_target_seconds)", "SLO {{class}}")]),
    ("End-to-end latency p50", "s", [(f"tier_class:compress_e2e_latency_seconds:p50_5m{T}", "{{tier}} · {{class}}")]),
    ("Time to first token p95 (SLO target dotted)", "s", [
        (f"tier_class:compress_ttft_seconds:p95_5m{T}", "{{tier}} · {{class}}"),
        ("max by (class) (compress_slo_target_seconds)", "SLO {{class}}")]),
    ("Time to first token p50", "s", [(f"tier_class:compress_ttft_seconds:p50_5m{T}", "{{tier}} · {{class}}")]),
    ("Generated tokens/s", "short", [(f"tier_class:compress_generation_tokens:rate5m{T}", "{{tier}} · {{class}}")]),
    ("Cache hit rate", "percentunit", [(f"tier_class:compress_cache_hit:ratio_rate5m{T}", "{{tier}} · {{class}}")]),
    ("Cost per answered request", "short", [(f"tier:compress_cost_per_request:ratio_rate5m{T}", "{{tier}}")]),
    ("Cost per hour", "short", [(f"tier:compress_cost_per_hour:rate1h{T}", "{{tier}}")]),
    ("Budget spent in its window", "percentunit", [
        ("compress_budget_spent / compress_budget_limit", "{{instance}} {{resource}}")]),
    ("Budget burn rate (1 = spends exactly the budget; page > 14.4, ticket > 6)", "short", [
        ("instance:compress_budget_burn_rate:rate5m", "5m {{instance}} {{resource}}"),
        ("instance:compress_budget_burn_rate:rate1h", "1h {{instance}} {{resource}}"),
        ("instance:compress_budget_burn_rate:rate6h", "6h {{instance}} {{resource}}")]),
    ("Latency SLO burn rate (slow share / 5%)", "short", [
        ("class:compress_slo_burn_rate:rate5m", "5m {{class}}"), ("class:compress_slo_burn_rate:rate1h", "1h {{class}}")]),
    ("Sheds and fallbacks per minute", "short", [
        (f"sum by (tier, class) (rate(compress_shed_requests_total{T}[5m])) * 60", "shed {{tier}} · {{class}}"),
        (f"sum by (tier, class) (rate(compress_fallbacks_total{T}[5m])) * 60", "fallback {{tier}} · {{class}}")]),
    ("Routing split (share of requests)", "percentunit", [
        (f"sum by (tier) (tier_class:compress_requests:rate5m{T}) / ignoring (tier) group_left "
         "sum(tier_class:compress_requests:rate5m)", "{{tier}}")]),
    ("Error ratio (5xx)", "percentunit", [("instance:compress_error:ratio_rate5m", "{{instance}}")]),
    ("Tokens/s (all tiers, spike alert at 5x the hour before)", "short", [
        ("instance:compress_tokens:rate5m", "5m {{instance}}"), ("instance:compress_tokens:rate1h", "1h {{instance}}")]),
]


def panel(i: int, title: str, unit: str, targets: list[tuple[str, str]]) -> dict:
    ds = {"type": "prometheus", "uid": "${datasource}"}
    return {"id": i + 1, "type": "timeseries", "title": title, "datasource": ds,
            "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
            "fieldConfig": {"defaults": {"unit": unit, "custom": {"lineWidth": 1, "spanNulls": False}},
                            "overrides": [{"matcher": {"id": "byRegexp", "options": "^SLO .*"},
                                           "properties": [{"id": "custom.lineStyle",
                                                           "value": {"fill": "dot", "dash": [2, 4]}}]}]},
            "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["mean", "max"]},
                        "tooltip": {"mode": "multi"}},
            "targets": [{"refId": chr(65 + j), "datasource": ds, "expr": e, "legendFormat": leg}
                        for j, (e, leg) in enumerate(targets)]}


def dashboard() -> dict:
    return {
        "uid": "compress-serve", "title": "compress serve", "tags": ["compress", "llm"], "schemaVersion": 39,
        "version": 1, "editable": True, "refresh": "30s", "time": {"from": "now-24h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"},
            {"name": "tier", "type": "query", "label": "tier", "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "query": {"query": "label_values(compress_requests_total, tier)", "refId": "tiers"},
             "definition": "label_values(compress_requests_total, tier)", "refresh": 2, "multi": True,
             "includeAll": True, "allValue": ".*", "current": {"text": "All", "value": "$__all"}, "sort": 1}]},
        "panels": [panel(i, *p) for i, p in enumerate(PANELS)],
    }


if __name__ == "__main__":
    out = Path(__file__).with_name("compress-dashboard.json")
    out.write_text(json.dumps(dashboard(), indent=2) + "\n")
    print(f"wrote {out}")
