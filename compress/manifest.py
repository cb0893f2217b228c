"""The tier manifest: which models a server offers, what each costs and how good it is.

`tiers.yaml` (schema_version 1) lists one tier per model, cheapest first. A local tier points at a
checkpoint or artifact directory and carries what was *measured* about it: quality from an
`eval.json` beside it, latency/throughput/memory from a `bench.json` beside it, size on disk, and
a cost per 1k generated tokens (price per hour / measured tokens per second, or set by hand). A
remote tier is any OpenAI-compatible endpoint (vLLM, SGLang, another `compress serve`) that the
server proxies. Anything not measured is null ("unknown"), never guessed.

The manifest may name a learned router (`router: router.json`, a path relative to the manifest
file; `compress router train` makes one, `compress manifest --router` sets it): `model: "auto"`
then routes by each tier's predicted success (compress/serve/learned.py). Manifests without it are
read as before.

The manifest may also state service-level objectives per traffic class (`slo: {interactive: {p95_s:
2.0}, batch: {p95_s: 60}}`): end-to-end p95 targets that `compress serve` keeps (its flags override).

A local tier runs on our PyTorch engine (`runtime: torch`, the default) or on llama.cpp (`runtime: llamacpp`,
with `gguf:` the tier's `compress export --format gguf` file; `compress manifest --gguf NAME=FILE` sets both):
the server's scheduling, metrics, cache and SLO are the same for both; only the model step differs. A llama.cpp
tier's speed comes from a `bench.json` measured with `compress bench FILE.gguf --runtime llamacpp`; a bench of
the other runtime is not its speed, so then it stays unknown.

`build_manifest` makes one from model paths; `load_manifest` reads and validates one (unknown keys,
unknown schema_version and missing artifacts are one-line CompressErrors).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import Field, model_validator

from compress.errors import CompressError
from compress.formats import StrictModel as _Strict, check_version, read_yaml_mapping, validate

SCHEMA_VERSION = 1
EVAL_FILE = "eval.json"
BENCH_FILE = "bench.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class Quality(_Strict):
    """Quality numbers as measured by `compress eval` (or at quantization time); null when unknown."""
    perplexity: float | None = None
    bits_per_byte: float | None = None
    tasks: dict[str, float] = {}  # task/metric name -> score (higher is better)
    source: str | None = None  # the file the numbers came from


class Performance(_Strict):
    """Speed numbers as measured by `compress bench`; null when unknown."""
    throughput_tokens_per_s: float | None = None
    latency_ms_per_token: float | None = None
    ttft_ms: float | None = None
    memory_bytes: int | None = None
    device: str | None = None
    source: str | None = None


class _TierBase(_Strict):
    name: str
    cost_per_1k_tokens: float | None = None  # in the manifest's currency; null = unknown
    cost_source: Literal["measured", "manual"] | None = None


Runtime = Literal["torch", "llamacpp"]  # what computes a local tier's steps (compress.serve.engine.load_engine)


class LocalTier(_TierBase):
    kind: Literal["local"] = "local"
    path: str  # the artifact: tokenizer, method, quality (and the weights, for runtime torch)
    method: str  # quantization/distillation method from compress.json, or "source"
    runtime: Runtime = "torch"
    gguf: str | None = None  # runtime llamacpp: the GGUF export of `path` that llama.cpp runs
    quality: Quality = Quality()
    performance: Performance = Performance()
    size_bytes: int | None = None  # of what runs: the GGUF for runtime llamacpp

    @model_validator(mode="after")
    def _runtime_file(self) -> "LocalTier":
        if (self.runtime == "llamacpp") != (self.gguf is not None):
            raise ValueError(f"tier {self.name!r}: runtime llamacpp needs gguf: FILE (and gguf: needs runtime "
                             "llamacpp)")
        return self


class RemoteTier(_TierBase):
    kind: Literal["remote"] = "remote"
    url: str  # base URL of the OpenAI-compatible API, e.g. http://host:8000/v1
    model: str  # the model id to ask the remote for
    api_key_env: str | None = None  # name of the environment variable holding its API key
    quality: Quality = Quality()


Tier = Annotated[Union[LocalTier, RemoteTier], Field(discriminator="kind")]
TrafficClass = Literal["interactive", "batch"]  # compress.serve.sequence.CLASSES


class SLO(_Strict):
    """A latency objective for one traffic class: end-to-end p95 in seconds."""
    p95_s: float = Field(gt=0)


class Manifest(_Strict):
    schema_version: int = SCHEMA_VERSION
    currency: str = "USD"
    slo: dict[TrafficClass, SLO] = {}  # optional; `compress serve --slo-p95 ...` overrides per class
    # Optional learned router (router.json). In the file: relative to the manifest file's folder;
    # in memory (after load_manifest/build_manifest): an absolute path.
    router: str | None = None
    tiers: list[Tier]

    def tier(self, name: str) -> LocalTier | RemoteTier | None:
        return next((t for t in self.tiers if t.name == name), None)


# ---------------------------------------------------------------- reading measurements


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _first(d: dict, *keys: str) -> float | None:
    for k in keys:
        v = _num(d.get(k))
        if v is not None:
            return v
    return None


def _read_json(path: Path) -> dict | None:
    """A JSON object from `path`, or None if the file is missing or not a JSON object."""
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return raw if isinstance(raw, dict) else None


def read_eval_file(path: Path) -> Quality:
    """Quality from an eval JSON that `compress eval` wrote, e.g. for a remote tier
    (`compress eval URL#MODEL --output FILE`): `compress manifest --eval NAME=FILE`."""
    raw = _read_json(path)
    if raw is None or raw.get("kind") != "eval":
        raise CompressError(f"--eval {path}: not an eval JSON written by `compress eval`")
    return _quality_from_eval(path, str(path))


def _quality_from_eval(path: Path, source: str) -> Quality:
    from compress.evaluate.results import load_eval

    ev = load_eval(path)
    ppl = [v for k, v in sorted(ev.metrics.items()) if k.startswith("ppl:")]
    bpb = [v for k, v in sorted(ev.metrics.items()) if k.startswith("bpb:")]
    tasks = {k.replace(":", "/", 1): v for k, v in ev.metrics.items()
             if not k.startswith(("ppl:", "bpb:")) and ev.higher_is_better.get(k, True)}
    return Quality(perplexity=ppl[0] if ppl else None, bits_per_byte=bpb[0] if bpb else None,
                   tasks=tasks, source=source)


def read_quality(directory: Path) -> Quality:
    """Quality from `eval.json` (written by `compress eval`; read defensively: its layout may grow),
    else the perplexity recorded in `compress.json` at creation, else unknown."""
    raw = _read_json(directory / EVAL_FILE)
    if raw is not None and raw.get("kind") == "eval":  # the layout `compress eval` writes
        return _quality_from_eval(directory / EVAL_FILE, EVAL_FILE)
    if raw is not None:
        flat = {**raw, **(raw.get("metrics") if isinstance(raw.get("metrics"), dict) else {})}
        tasks: dict[str, float] = {}
        for key in ("tasks", "results"):
            block = raw.get(key)
            if isinstance(block, dict):
                for task, val in block.items():
                    if _num(val) is not None:
                        tasks[task] = _num(val)
                    elif isinstance(val, dict):
                        for metric, v in val.items():
                            if _num(v) is not None and not metric.endswith("stderr"):
                                tasks[f"{task}/{metric}"] = _num(v)
        ppl = flat.get("perplexity")
        if isinstance(ppl, dict):  # e.g. {"perplexity": {"value": 27.6, "bits_per_byte": 0.9}}
            flat = {**flat, **ppl}
            ppl = ppl.get("value", ppl.get("perplexity"))
        return Quality(perplexity=_num(ppl) or _first(flat, "ppl"),
                       bits_per_byte=_first(flat, "bits_per_byte", "bpb"), tasks=tasks, source=EVAL_FILE)
    meta = _read_json(directory / "compress.json")
    metrics = (meta or {}).get("metrics")
    if isinstance(metrics, dict):
        ppl = _first(metrics, "perplexity", "ppl", "heldout_perplexity")
        if ppl is not None:
            return Quality(perplexity=ppl, bits_per_byte=_first(metrics, "bits_per_byte"), source="compress.json")
    return Quality()


def read_performance(directory: Path, runtime: str = "torch") -> Performance:
    """Speed from `bench.json` in `directory`; unknown when it measured another runtime than the tier's."""
    raw = _read_json(directory / BENCH_FILE)
    if raw is None:
        return Performance()
    if raw.get("kind") == "bench":  # the layout `compress bench` writes: first model, per batch size
        measured = (raw.get("config") or {}).get("runtime", "torch")
        return _bench_performance(directory / BENCH_FILE) if measured == runtime else Performance()
    if runtime != "torch":  # a hand-written file does not say which runtime it timed
        return Performance()
    flat = {**raw, **(raw.get("metrics") if isinstance(raw.get("metrics"), dict) else {})}
    mem = _first(flat, "memory_bytes", "peak_memory_bytes", "peak_mem_bytes")
    device = flat.get("device") if isinstance(flat.get("device"), str) else None
    return Performance(
        throughput_tokens_per_s=_first(flat, "throughput_tokens_per_s", "tokens_per_s", "decode_tokens_per_s", "tok_s"),
        latency_ms_per_token=_first(flat, "latency_ms_per_token", "ms_per_token", "ms_per_step"),
        ttft_ms=_first(flat, "ttft_ms", "prefill_ms"),
        memory_bytes=int(mem) if mem is not None else None, device=device, source=BENCH_FILE)


def _bench_performance(path: Path) -> Performance:
    """Latency from the smallest batch measured (what one user sees); throughput from the best batch
    (what the machine sells, so cost per 1k tokens assumes the server batches as the bench did)."""
    from compress.bench.run import load_bench

    b = load_bench(path)
    rows = sorted(b["models"][0]["batches"], key=lambda r: r["batch_size"])
    first = rows[0]

    def med(row, key):
        v = row.get(key)
        return _num(v.get("median")) if isinstance(v, dict) else None

    best = max((med(r, "decode_tok_s") or 0.0) for r in rows) or None
    tpot, ttft = med(first, "tpot_s"), med(first, "ttft_s")
    return Performance(
        throughput_tokens_per_s=best,
        latency_ms_per_token=tpot * 1000 if tpot is not None else None,
        ttft_ms=ttft * 1000 if ttft is not None else None,
        memory_bytes=max(int(r["peak_memory_bytes"]) for r in rows if r.get("peak_memory_bytes")) if any(
            r.get("peak_memory_bytes") for r in rows) else None,
        device=b.get("config", {}).get("device"), source=BENCH_FILE)


def cost_per_1k(price_per_hour: float | None, tokens_per_s: float | None) -> float | None:
    if price_per_hour is None or not tokens_per_s:
        return None
    return price_per_hour / (tokens_per_s * 3600.0) * 1000.0


# ---------------------------------------------------------------- building


def _local_tier(name: str, spec: str, price_gpu: float | None, price_cpu: float | None,
                gguf: str | None = None) -> LocalTier:
    """A local tier from its artifact; with `gguf`, run by llama.cpp from that export of it."""
    from compress.artifacts import METADATA_FILE, dir_size_bytes, read_meta
    from compress.models import checkpoint_dir, resolve

    ref = resolve(spec)
    if ref.kind == "hub":
        raise CompressError(f"{spec}: a tier must be a local checkpoint, artifact or .gguf (or a remote URL)")
    directory = Path(checkpoint_dir(ref))
    method = read_meta(directory).method if (directory / METADATA_FILE).is_file() else "source"
    runtime = "llamacpp" if gguf is not None else "torch"
    if gguf is not None:
        gguf = str(check_gguf(gguf, f"--gguf {name}"))
    perf = read_performance(directory, runtime)
    price = price_gpu if (perf.device or "").startswith("cuda") else price_cpu
    cost = cost_per_1k(price, perf.throughput_tokens_per_s)
    size = Path(gguf).stat().st_size if gguf is not None else dir_size_bytes(directory)
    return LocalTier(name=name, path=str(directory), method=method, runtime=runtime, gguf=gguf,
                     quality=read_quality(directory), performance=perf, size_bytes=size, cost_per_1k_tokens=cost,
                     cost_source="measured" if cost is not None else None)


def check_gguf(path: str | Path, where: str) -> Path:
    """`path` as an absolute path if it is a GGUF file (by its magic bytes), else one CompressError line."""
    p = Path(path)
    if not p.is_file():
        raise CompressError(f"{where}: GGUF file not found at {p}")
    with open(p, "rb") as f:
        if f.read(4) != b"GGUF":
            raise CompressError(f"{where}: {p} is not a GGUF file")
    return p.resolve()


def _split_pairs(pairs: list[str], what: str) -> dict[str, str]:
    out = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep or not key or not value:
            raise CompressError(f"{what} {p!r}: expected NAME=VALUE")
        out[key] = value
    return out


def build_manifest(models: list[str], *, names: list[str] = (), costs: list[str] = (), api_key_envs: list[str] = (),
                   price_per_gpu_hour: float | None = None, price_per_cpu_hour: float | None = None,
                   currency: str = "USD", slos: list[str] = (), router: str | Path | None = None,
                   evals: list[str] = (), ggufs: list[str] = ()) -> Manifest:
    """One tier per MODEL (a checkpoint/artifact dir, a .gguf, or `URL#MODEL_ID` for a remote
    OpenAI-compatible endpoint), ordered cheapest first (unknown cost last, then by size); `router`:
    a router.json for `auto` (its tiers must be among these); `evals`: NAME=FILE, a tier's quality from an
    eval JSON (how a remote tier gets one: `compress eval URL#MODEL --output FILE`); `ggufs`: NAME=FILE, the tier
    runs on llama.cpp from FILE, a `compress export --format gguf` of its artifact."""
    if not models:
        raise CompressError("give at least one model, artifact or remote URL#MODEL")
    name_of = {v: k for k, v in _split_pairs(list(names), "--name").items()}
    manual_cost = _split_pairs(list(costs), "--cost")
    key_env = _split_pairs(list(api_key_envs), "--api-key-env")
    gguf_of = _split_pairs(list(ggufs), "--gguf")
    tiers: list[LocalTier | RemoteTier] = []
    for spec in models:
        if spec.startswith(("http://", "https://")):
            url, sep, model = spec.partition("#")
            if not sep or not model:
                raise CompressError(f"remote tier {spec!r}: expected URL#MODEL_ID, e.g. http://host:8000/v1#llama")
            name = name_of.get(spec) or model.replace("/", "-")
            tiers.append(RemoteTier(name=name, url=url.rstrip("/"), model=model, api_key_env=key_env.get(name)))
        else:
            name = name_of.get(spec) or Path(spec.rstrip("/")).name.removesuffix(".gguf")
            tiers.append(_local_tier(name, spec, price_per_gpu_hour, price_per_cpu_hour, gguf_of.pop(name, None)))
    for t in tiers:
        if t.name in manual_cost:
            try:
                t.cost_per_1k_tokens, t.cost_source = float(manual_cost[t.name]), "manual"
            except ValueError:
                raise CompressError(f"--cost {t.name}={manual_cost[t.name]}: not a number") from None
    unknown = set(manual_cost) - {t.name for t in tiers}
    if unknown:
        raise CompressError(f"--cost names unknown tier(s): {', '.join(sorted(unknown))}")
    if gguf_of:
        raise CompressError(f"--gguf names unknown or remote tier(s): {', '.join(sorted(gguf_of))}")
    eval_files = _split_pairs(list(evals), "--eval")
    unknown = set(eval_files) - {t.name for t in tiers}
    if unknown:
        raise CompressError(f"--eval names unknown tier(s): {', '.join(sorted(unknown))}")
    for t in tiers:
        if t.name in eval_files:
            t.quality = read_eval_file(Path(eval_files[t.name]))
    tiers.sort(key=lambda t: (t.cost_per_1k_tokens is None, t.cost_per_1k_tokens or 0.0,
                              getattr(t, "size_bytes", None) or 0))
    slo = {}
    for cls, value in _split_pairs(list(slos), "--slo").items():
        try:
            slo[cls] = SLO(p95_s=float(value))
        except ValueError:
            raise CompressError(f"--slo {cls}={value}: expected a positive number of seconds") from None
    manifest = validate(Manifest, {"currency": currency, "slo": slo, "tiers": tiers}, "--slo")
    _check(manifest, "manifest")
    if router is not None:
        from compress.serve.learned import load_router

        load_router(router, [t.name for t in manifest.tiers])  # fails here, not when serving
        manifest.router = str(Path(router).resolve())  # made relative to the manifest when written
    return manifest


def _check(m: Manifest, where: str) -> None:
    seen = set()
    for t in m.tiers:
        if not _NAME.match(t.name) or t.name == "auto":
            raise CompressError(f"{where}: bad tier name {t.name!r} (letters, digits, . _ -; 'auto' is reserved)")
        if t.name in seen:
            raise CompressError(f"{where}: duplicate tier name {t.name!r} (use --name NAME=MODEL)")
        seen.add(t.name)
    if not m.tiers:
        raise CompressError(f"{where}: no tiers")


def write_manifest(m: Manifest, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = m.model_dump(mode="json", exclude={"router"} if m.router is None else None)
    if m.router is not None:  # stored relative to the manifest, so the two can move together
        raw["router"] = os.path.relpath(Path(m.router).resolve(), path.parent.resolve())
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("# compress tier manifest: cheapest tier first; null = not measured\n"
                   + yaml.safe_dump(raw, sort_keys=False))
    tmp.replace(path)
    return path


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate a manifest; every problem is one CompressError line."""
    path = Path(path)
    raw = read_yaml_mapping(path, "manifest", "expected a mapping with schema_version and tiers")
    check_version(raw, path, SCHEMA_VERSION)
    m = validate(Manifest, raw, path)
    _check(m, str(path))
    if m.router is not None:
        m.router = str((path.parent / m.router).resolve())  # an absolute path in the file stays as it is
        if not Path(m.router).is_file():
            raise CompressError(f"{path}: router not found at {m.router}")
    for t in m.tiers:
        if isinstance(t, LocalTier) and not (Path(t.path) / "config.json").is_file():
            raise CompressError(f"{path}: tier {t.name!r}: artifact not found at {t.path}")
        if isinstance(t, LocalTier) and t.gguf is not None:
            t.gguf = str(check_gguf(path.parent / t.gguf, f"{path}: tier {t.name!r}"))
    return m
