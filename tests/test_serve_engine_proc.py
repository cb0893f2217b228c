"""Process mode (`compress serve --engine-process`, engine_proc.py) against thread mode, on a real server process
driven by real clients: the same greedy tokens, aborts free the slot, a dead engine process fails its in-flight
requests and leaves the server up (degraded), and no engine process outlives the server, whether it stops
cleanly or is killed."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import pickle
import re
import shutil
import signal
import time
from pathlib import Path

import httpx
import openai
import pytest

from compress.errors import CompressError
from compress.manifest import build_manifest, write_manifest
from compress.serve.engine_proc import PipeWriter
from compress.serve.options import serve_options
from compress.testing import build_tiny_llama
from tests.serve_helpers import Server, metric

PROMPTS = ["The quick brown fox", "def foo(x):\n    return", "Once upon a time", "import os"]
NO_STORE = {"cache-control": "no-store"}


@pytest.fixture(scope="module")
def tiers(tmp_path_factory, tiny_model, tokenizer):
    root = tmp_path_factory.mktemp("tiers")
    small = Path(shutil.copytree(tiny_model, root / "tiny-a"))
    large = build_tiny_llama(root / "tiny-b", seed=1, tokenizer=tokenizer)
    return write_manifest(build_manifest([str(small), str(large)]), root / "tiers.yaml")


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (Linux /proc)."""
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = {int(x) for x in (task / "children").read_text().split()}
            except OSError:
                continue
            todo += list(kids - out)
            out |= kids
    return out


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def wait_gone(pids: set[int], timeout: float = 30) -> set[int]:
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return {p for p in pids if alive(p)}


def engine_pids(log: Path) -> dict[str, int]:
    return {t: int(p) for t, p in re.findall(r"tier (\S+): engine process pid (\d+) ready", log.read_text())}


def answers(url: str) -> list[tuple]:
    """Greedy answers from both tiers: non-streamed (text, token strings) and streamed (text), 4 at a time."""
    c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)

    def one(job):
        model, prompt = job
        r = c.completions.create(model=model, prompt=prompt, max_tokens=12, temperature=0, logprobs=0,
                                 extra_headers=NO_STORE)
        s = c.completions.create(model=model, prompt=prompt, max_tokens=12, temperature=0, stream=True,
                                 extra_headers=NO_STORE)
        return (model, prompt, r.choices[0].text, r.choices[0].logprobs.tokens, r.usage.completion_tokens,
                "".join(ch.choices[0].text for ch in s if ch.choices))

    with cf.ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, [(m, p) for m in ("tiny-a", "tiny-b") for p in PROMPTS]))


@pytest.fixture(scope="module")
def proc_server(tiers, tmp_path_factory):
    """Process mode, both tiers. The last test to use it kills one engine, then the server itself."""
    s = Server(tiers, "--engine-process", "--max-batch", "4", "--max-wait-ms", "50",
               log=tmp_path_factory.mktemp("log") / "p.log")
    yield s
    s.stop()


@pytest.mark.slow  # two server processes
def test_process_mode_gives_thread_modes_greedy_tokens_and_metrics(tiers, proc_server, tmp_path):
    thread = Server(tiers, "--engine-thread", "--max-batch", "4", "--max-wait-ms", "50", log=tmp_path / "t.log")
    try:
        want = answers(thread.url)
        assert not {p for p in descendants(thread.proc.pid) if alive(p)}  # no engine process in thread mode
    finally:
        assert thread.stop() == 0
    proc = proc_server
    assert set(engine_pids(proc.log)) == {"tiny-a", "tiny-b"}  # one engine process per tier
    assert "CUDA initialised in the API process: False" in proc.log.read_text()
    got = answers(proc.url)
    text = httpx.get(proc.url + "/metrics").text
    assert got == want  # token for token, both tiers, streamed and not
    assert all(g[4] == 12 and g[2] == g[5] for g in got)
    for tier in ("tiny-a", "tiny-b"):  # engine-side metrics reach the API process's /metrics, per tier
        assert metric(text, "compress_generation_tokens_total", tier=tier) == 12 * 2 * len(PROMPTS)
        assert metric(text, "compress_batch_size_count", tier=tier) > 0
        assert metric(text, "compress_time_to_first_token_seconds_count", tier=tier) == 2 * len(PROMPTS)
        assert metric(text, "compress_running_requests", tier=tier) == 0
    assert httpx.get(proc.url + "/health").json()["status"] == "ok"


@pytest.mark.slow  # a server process
def test_abort_frees_the_only_slot_queue_bound_then_clean_shutdown_leaves_no_process(tiers, tmp_path):
    s = Server(tiers, "--engine-process", "--max-batch", "1", "--max-queue", "1", "--max-wait-ms", "0",
               log=tmp_path / "s.log")
    try:
        kids = descendants(s.proc.pid)
        assert set(engine_pids(s.log).values()) <= kids
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0)
        before = c.completions.create(model="tiny-a", prompt="Hi", max_tokens=8, temperature=0,
                                      extra_headers=NO_STORE).choices[0].text
        with httpx.stream("POST", s.url + "/v1/completions", timeout=60,
                          json={"model": "tiny-a", "prompt": "Once upon a time", "max_tokens": 900,
                                "temperature": 0, "stream": True}) as r:
            lines = r.iter_lines()
            assert any(next(lines).startswith("data: ") for _ in range(4))
        # With one slot, the next request is only admitted once the aborted one has left the engine.
        after = c.with_options(timeout=60).completions.create(model="tiny-a", prompt="Hi", max_tokens=8,
                                                              temperature=0, extra_headers=NO_STORE)
        assert after.choices[0].text == before and after.usage.completion_tokens == 8
        text = httpx.get(s.url + "/metrics").text
        assert metric(text, "compress_running_requests", tier="tiny-a") == 0
        assert metric(text, "compress_requests_total", tier="tiny-a", status="499") == 1
        # The queue lives in the engine process: a full one still answers 429 (the engine's refusal).
        body = {"model": "tiny-a", "prompt": "Once upon a time", "max_tokens": 40, "temperature": 0}
        with cf.ThreadPoolExecutor(6) as pool:
            got = list(pool.map(lambda _: httpx.post(s.url + "/v1/completions", json=body, headers=NO_STORE,
                                                     timeout=60), range(6)))
        codes = sorted(a.status_code for a in got)
        assert 429 in codes and 200 in codes and set(codes) <= {200, 429}
        refused = next(a for a in got if a.status_code == 429)
        assert refused.json()["error"]["code"] == "queue_full" and int(refused.headers["retry-after"]) >= 1
        assert len({a.json()["choices"][0]["text"] for a in got if a.status_code == 200}) == 1
    finally:
        assert s.stop() == 0
    assert not wait_gone(kids), "processes outlived the server"


@pytest.mark.slow  # kills proc_server's engine of tiny-a, then proc_server itself
def test_dead_engine_fails_in_flight_requests_server_stays_up_and_killed_server_leaves_no_process(proc_server):
    s = proc_server
    pids = engine_pids(s.log)
    with httpx.stream("POST", s.url + "/v1/completions", timeout=60,
                      json={"model": "tiny-a", "prompt": "Once upon a time", "max_tokens": 1000,
                            "temperature": 0, "stream": True}) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
        os.kill(pids["tiny-a"], signal.SIGKILL)
        events = [ln[6:] for ln in lines if ln.startswith("data: ")]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert "engine process of tier 'tiny-a' died (killed by SIGKILL)" in error["message"]
    health = httpx.get(s.url + "/health")
    assert health.status_code == 200 and health.json()["status"] == "degraded"
    assert health.json()["down"] == {"tiny-a": "killed by SIGKILL"}
    dead = httpx.post(s.url + "/v1/completions", json={"model": "tiny-a", "prompt": "x", "max_tokens": 2})
    assert dead.status_code == 503 and dead.json()["error"]["code"] == "engine_down"
    ok = httpx.post(s.url + "/v1/completions", json={"model": "tiny-b", "prompt": "x", "max_tokens": 2},
                    timeout=60)
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 2
    auto = httpx.post(s.url + "/v1/completions", json={"model": "auto", "prompt": "x", "max_tokens": 2},
                      timeout=60)  # first choice tiny-a (the cheapest) is down: falls back to tiny-b
    assert auto.status_code == 200 and auto.headers["x-compress-tier"] == "tiny-b"
    assert re.search(r"tier tiny-a: the engine process \(pid \d+\) died: killed by SIGKILL", s.log.read_text())
    # The API process killed outright: its engine process (and the resource tracker) notice and exit.
    kids = descendants(s.proc.pid)
    assert pids["tiny-b"] in kids
    s.proc.kill()
    s.proc.wait(10)
    assert not wait_gone(kids), "processes outlived a killed server"


def test_engine_mode_option_is_validated():
    assert serve_options(engine_process=False).settings("cuda").engine_process is False
    assert serve_options(engine_process=True).settings("cpu").engine_process is True
    assert serve_options().settings("cuda").engine_process is True  # the default: a process on a GPU
    assert serve_options().settings("cpu").engine_process is False  # and a thread on a CPU
    assert serve_options(device="cuda").settings("cpu").engine_process is True
    with pytest.raises(CompressError, match="--engine-process"):
        serve_options(engine_process="sometimes")


@pytest.mark.parametrize("flags, device, process", [([], "cpu", False), ([], "cuda", True),
                                                     (["--engine-process"], "cpu", True),
                                                     (["--engine-thread"], "cuda", False)])
def test_cli_forwards_the_engine_mode(monkeypatch, flags, device, process):
    from typer.testing import CliRunner

    import compress.serve.app as serve_app
    from compress.cli import _register, app

    _register()
    seen = {}
    monkeypatch.setattr(serve_app, "serve", lambda manifest, settings, **kw: seen.update(settings=settings))
    r = CliRunner().invoke(app, ["serve", "tiers.yaml", "--device", device, *flags])
    assert r.exit_code == 0, r.output
    assert seen["settings"].engine_process is process and seen["settings"].device == device


def test_pipe_writer_never_blocks_the_loop_and_keeps_order():
    """More than a pipe holds (~64 KiB on Linux), sent from the event loop while nobody reads: `send` returns at once,
    the rest goes out as a reader (another thread here; the engine process in serving) drains the pipe."""
    reader, writer_end = mp.get_context("spawn").Pipe(duplex=False)
    msgs = [("add", i, list(range(i % 50, 2000)), None, 0, 0.0) for i in range(64)]  # ~8 KiB each pickled

    async def main():
        w = PipeWriter(writer_end, asyncio.get_running_loop())
        for m in msgs:  # a blocking write would wait here forever: the reader starts only below
            w.send(m)
        assert w.unsent and w.waiting  # the pipe is full: the rest waits for room
        got = await asyncio.to_thread(lambda: [pickle.loads(reader.recv_bytes()) for _ in msgs])
        await asyncio.sleep(0)
        return got, w

    got, w = asyncio.run(main())
    assert got == msgs and not w.unsent and not w.waiting
