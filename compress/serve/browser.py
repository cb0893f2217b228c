"""Headless Chromium over /dashboard: a screenshot, the rendered DOM and any console messages.

Used by tests/test_dashboard_browser.py and benchmarks/dashboard_run.py. Needs a `chromium` (or
`chromium-browser`, `google-chrome`) binary on PATH; `find_chromium()` is None otherwise.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

_CONSOLE = re.compile(r":CONSOLE(?:\(\d+\))?:?\d*\]\s*(.*)")


@dataclass
class Capture:
    dom: str  # the DOM after load (chromium --dump-dom)
    console: list[str]  # console messages (errors, warnings, logs, uncaught exceptions)


def find_chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def _run(binary: str, args: list[str], url: str, timeout_s: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="compress-chromium-") as profile:
        cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
               f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args, url]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)


def capture(url: str, screenshot: Path | None = None, size: tuple[int, int] = (1280, 2400),
            timeout_s: float = 120.0) -> Capture:
    """Load `url` once for the DOM and console, and once more for a PNG screenshot when asked."""
    binary = find_chromium()
    if binary is None:
        raise FileNotFoundError("no chromium binary on PATH")
    dom = _run(binary, ["--dump-dom"], url, timeout_s)
    console = [m.group(1) for m in map(_CONSOLE.search, dom.stderr.splitlines()) if m]
    if screenshot is not None:
        shot = _run(binary, [f"--screenshot={screenshot}", f"--window-size={size[0]},{size[1]}"], url, timeout_s)
        console += [m.group(1) for m in map(_CONSOLE.search, shot.stderr.splitlines()) if m]
        if not Path(screenshot).is_file():
            raise RuntimeError(f"chromium wrote no screenshot: {shot.stderr[-500:]}")
    return Capture(dom.stdout, console)
