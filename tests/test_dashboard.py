"""The serving history, /dashboard, /dashboard/history and the weekly review (`compress report --serve`).

History logic runs on a real ServeMetrics registry with a fake clock; the page and the review run
against a real `compress serve` (two tiny tiers) on 127.0.0.1 after a burst of mixed traffic."""

from __future__ import annotations

import base64
import html
import importlib.util
import re

import httpx
import pytest
import yaml

from compress.errors import CompressError
from compress.serve import panels as PN
from compress.serve.history import FIELDS, IDX, History
from compress.serve.metrics import ServeMetrics
from tests.dashboard_helpers import KEY, mixed_burst, tiny_tiers
from tests.serve_helpers import Server, metric


class Clock:
    def __init__(self, t: float = 1_700_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_history_minutes_roll_into_bounded_hours():
    m, clock = ServeMetrics(), Clock(3600 * 470_000)  # on an hour boundary
    h = History(m.registry, minutes=30, hours=3, clock=clock, start_thread=False)
    for minute in range(150):  # 2.5 hours, one request per minute on alternating tiers
        tier = "a" if minute % 2 else "b"
        m.requests.labels(tier, "200", "interactive").inc()
        m.cost.labels(tier, "interactive").inc(0.5)
        m.e2e.labels(tier, "interactive").observe(0.3)
        h.tick()  # the minute's sampler read
        clock.t += 60
    assert len(h.minutes) == 30 and len(h.hours) == 2  # bounded; the third hour is still open
    assert [f.start for f in h.hours] == [clock.t - 150 * 60, clock.t - 90 * 60]
    total = lambda frames: sum(PN.requests(c) for f in frames for c in f.cells.values())  # noqa: E731
    assert total(h.hours) == 120  # every request of the first two hours, once
    # A range the minutes no longer cover is read from the hours; one the minutes cover, per minute.
    assert total(h.frames(clock.t - 150 * 60, clock.t + 1, 3600)) == 150
    last10 = h.frames(clock.t - 600, clock.t + 1, 60)
    assert total(last10) == 10 and all(f.span_s <= 60 for f in last10)
    row = {r["tier"]: r for r in PN.summary_rows(last10)}["a"]
    assert row["cost_req"] == pytest.approx(0.5) and row["requests"] == 5
    assert 0.25 < row["e2e_p95"] <= 0.5  # inside the (0.25, 0.5] bucket, as histogram_quantile answers


def test_quantile_matches_histogram_quantile():
    import numpy as np

    c = np.zeros(len(FIELDS))
    e0 = IDX["e2e_le_0.01"]
    # 10 observations in (0.1, 0.25], 10 in (0.25, 0.5]: cumulative buckets as Prometheus stores them
    for i, le in enumerate((0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, float("inf"))):
        c[e0 + i] = 0 if le <= 0.1 else 10 if le <= 0.25 else 20
    assert PN.quantile(c, 0.5, e0) == pytest.approx(0.25)
    assert PN.quantile(c, 0.95, e0) == pytest.approx(0.25 + 0.25 * 9 / 10)


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model, tokenizer):
    root = tmp_path_factory.mktemp("dash")
    s = Server(tiny_tiers(root, tiny_model, tokenizer), "--api-key", KEY, "--budget-cost", "0.05",
               "--budget-window", "3600", "--max-wait-ms", "50", log=root / "server.log")
    answers = mixed_burst(s.url)
    assert sorted({r.status_code for r in answers}) == [200, 400]
    yield s
    assert s.stop() == 0


def test_dashboard_needs_the_api_key_and_browsers_get_a_basic_prompt(server):
    r = httpx.get(server.url + "/dashboard")
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
    assert r.json()["error"]["code"] == "invalid_api_key"
    bad = base64.b64encode(b"me:wrong").decode()
    assert httpx.get(server.url + "/dashboard", headers={"Authorization": f"Basic {bad}"}).status_code == 401
    assert httpx.get(server.url + "/dashboard/history").status_code == 401
    ok = base64.b64encode(f"me:{KEY}".encode()).decode()
    assert httpx.get(server.url + "/dashboard", headers={"Authorization": f"Basic {ok}"}).status_code == 200
    r = httpx.get(server.url + "/dashboard?range=week", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "range"


def test_dashboard_page_is_self_contained_with_every_panel(server):
    for rng in ("hour", "day"):
        page = httpx.get(server.url + f"/dashboard?range={rng}", headers={"Authorization": f"Bearer {KEY}"}).text
        assert "<script" not in page and not re.search(r'(src|href)="(https?:)?//', page)  # nothing to fetch
        captions = [html.unescape(c).strip() for c in re.findall(r"<figcaption>([^<]+)", page)]
        for p in PN.PANELS:
            assert p.title in captions
        assert {"Routing split: share of each class's requests", "Budget spent in its window",
                "Budget burn rate"} <= set(captions)
        assert page.count("<polyline") + page.count("<circle") >= 10  # lines drawn, not empty panels
        assert "SLO interactive" in page  # the target line on the latency panels
        for tier in ("tiny-a", "tiny-b"):
            assert f"<td>{tier}</td><td>interactive</td>" in page


def test_history_json_agrees_with_metrics(server):
    text = httpx.get(server.url + "/metrics").text
    assert metric(text, "compress_budget_limit", resource="cost") == 0.05
    assert metric(text, "compress_slo_requests_total") > 0
    data = httpx.get(server.url + "/dashboard/history", params={"step": 60, "start": 0, "end": 2e9 - 1},
                     headers={"Authorization": f"Bearer {KEY}"})
    assert data.status_code == 400  # too many steps
    data = httpx.get(server.url + "/dashboard/history", params={"step": 3600},
                     headers={"Authorization": f"Bearer {KEY}"}).json()
    assert data["kind"] == "compress-serve-history" and data["fields"] == list(FIELDS)
    for tier in ("tiny-a", "tiny-b"):
        for cls in ("interactive", "batch"):
            got = {f: 0.0 for f in ("ok", "cost", "gen_tokens", "cache_hits")}
            for frame in data["frames"]:
                for cell in frame["cells"]:
                    if (cell["tier"], cell["class"]) == (tier, cls):
                        for f in got:
                            got[f] += cell["values"][IDX[f]]
            want = {"ok": metric(text, "compress_requests_total", tier=tier, status="200", **{"class": cls}),
                    "cost": metric(text, "compress_cost_total", tier=tier, **{"class": cls}),
                    "gen_tokens": metric(text, "compress_generation_tokens_total", tier=tier, **{"class": cls}),
                    "cache_hits": metric(text, "compress_cache_lookups_total", tier=tier, result="hit",
                                         **{"class": cls})}
            assert got == pytest.approx(want), (tier, cls)
    assert metric(text, "compress_cache_lookups_total", result="hit") >= 1


def test_weekly_review_from_the_server(server, tmp_path, capsys):
    from compress.cli import main

    out = tmp_path / "weekly.html"
    with pytest.raises(SystemExit) as e:
        main(["report", "--serve", server.url, "--api-key", KEY, "--period", "1h", "--output", str(out)])
    assert e.value.code == 0
    page = out.read_text()
    assert "Per tier, with the change from the previous period" in page and "<script" not in page
    table = page.split('<table class="tiers">')[1].split("</table>")[0]
    assert "<td>tiny-a</td>" in table and "<td>tiny-b</td>" in table
    assert table.count('<span class="muted">new</span>') >= 2  # nothing in the hour before: every figure is new
    with pytest.raises(CompressError, match="refused the API key"):
        from compress.review import write_review

        write_review(tmp_path / "x.html", serve_url=server.url, api_key="nope", period_s=3600)
    with pytest.raises(SystemExit) as e:
        main(["report", "--serve", server.url, "--prometheus", "http://127.0.0.1:9", "--output", str(tmp_path / "y.html")])
    assert e.value.code == 2 and "exactly one source" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["report", "--serve", server.url, "--period", "soon", "--output", str(tmp_path / "y.html")])
    assert e.value.code == 2 and not (tmp_path / "y.html").exists()


def test_grafana_board_is_generated_and_filters_by_tier():
    import json

    from tests.serve_helpers import REPO

    spec = importlib.util.spec_from_file_location("make_dashboard", REPO / "deploy/grafana/make_dashboard.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    board = json.loads((REPO / "deploy/grafana/compress-dashboard.json").read_text())
    assert board == gen.dashboard()  # the committed JSON is what the generator writes
    tier = {v["name"]: v for v in board["templating"]["list"]}["tier"]
    assert tier["includeAll"] and "label_values(compress_requests_total, tier)" in tier["definition"]
    groups = yaml.safe_load((REPO / "deploy/prometheus/compress-rules.yml").read_text())["groups"]
    recorded = {r["record"] for g in groups for r in g["rules"] if "record" in r}
    per_tier = [t["expr"] for p in board["panels"] for t in p["targets"] if "$tier" in t["expr"]]
    assert len(per_tier) >= 10
    for p in board["panels"]:
        for t in p["targets"]:
            for name in re.findall(r"\b([a-z_]+:[a-z0-9_]+:[a-z0-9_]+)\b", t["expr"]):
                assert name in recorded, name  # every recorded series the board reads exists
