"""Debian's `chromium` (headless) opens /dashboard of a real `compress serve` after a burst of mixed
traffic: every panel renders with lines in it, the console stays silent, and the screenshot has content.
Skipped when no chromium is installed (`.ci/run` installs it: apt-get install chromium)."""

from __future__ import annotations

import html
import re

import pytest

from compress.serve import panels as PN
from compress.serve.browser import capture, find_chromium
from tests.dashboard_helpers import KEY, mixed_burst, tiny_tiers
from tests.serve_helpers import Server

pytestmark = pytest.mark.skipif(find_chromium() is None,
                                reason="chromium not installed (apt-get install chromium; .ci/run does)")


def test_dashboard_renders_in_chromium_without_console_errors(tmp_path, tiny_model, tokenizer):
    import matplotlib.image as mpimg

    s = Server(tiny_tiers(tmp_path, tiny_model, tokenizer), "--api-key", KEY, "--budget-tokens", "2000",
               log=tmp_path / "server.log")
    try:
        assert all(r.status_code in (200, 400) for r in mixed_burst(s.url))
        # The key as the Basic-auth password in the URL: what a browser sends after its login prompt.
        url = f"http://dash:{KEY}@127.0.0.1:{s.port}/dashboard?range=hour"
        shot = tmp_path / "dashboard.png"
        got = capture(url, screenshot=shot)
    finally:
        assert s.stop() == 0
    assert got.console == []
    captions = [html.unescape(c).strip() for c in re.findall(r"<figcaption>([^<]+)", got.dom)]
    assert [p.title for p in PN.PANELS] == captions[:len(PN.PANELS)]
    assert "Budget burn rate" in captions and len(re.findall(r'<svg class="chart"', got.dom)) == len(captions)
    assert got.dom.count("<polyline") >= 10 and "tiny-a" in got.dom and "tiny-b" in got.dom
    img = mpimg.imread(shot)  # RGBA floats
    assert img.shape[0] >= 1000 and img.shape[1] >= 1000
    assert len({tuple(px) for px in img[::7, ::7, :3].reshape(-1, 3).round(2).tolist()}) > 20  # not a blank page
