"""`run_recipe`: build every tier of a recipe, measure it, write the manifest, the report and the gates.

Layout of the output directory:
    tiers/<name>/           the tier's model (an artifact; the source tier is a plain checkpoint copy)
    tiers/<name>/eval.json  compress eval result      tiers/<name>/bench.json  compress bench result
    tiers/<name>/model.gguf a `runtime: llamacpp` tier's GGUF export (what llama.cpp serves and bench times)
    tiers.yaml              the tier manifest (compress serve reads it)
    report.html             quality vs latency vs size vs cost, with each gate's pass or fail
    gates.json              every gate check;  run-state.json  what each finished step was built from
A step is skipped when its output exists and was built from the same resolved config (the hash in
run-state.json), so an interrupted run resumes where it stopped and an edited recipe redoes only
what changed (and everything downstream of it).
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from compress.artifacts import atomic_dir
from compress.errors import CompressError
from compress.gate import GateCheck, check_gates, tier_dir
from compress.models import checkpoint_dir, resolve
from compress.recipe import Recipe, TierSpec

STATE_FILE = "run-state.json"
GGUF_FILE = "model.gguf"  # inside a runtime-llamacpp tier's folder


@dataclass
class RunResult:
    output: Path
    manifest: Path
    report: Path
    gates: list[GateCheck]
    built: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)


def _hash(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_recipe(recipe: Recipe, output: str | Path | None = None, log: Callable[[str], None] = print) -> RunResult:
    out = Path(output) if output else recipe.output_dir()
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / STATE_FILE
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    resolve(recipe.model)  # a bad model fails before any work
    for t in recipe.tiers:
        if t.runtime == "llamacpp":  # llama-cpp-python missing: one line now, not after the tiers are built
            from compress.bench.llamacpp import check_runtime

            check_runtime(f"tier {t.name} (runtime: llamacpp)")
    device = recipe.device
    result = RunResult(out, out / "tiers.yaml", out / "report.html", [])
    tier_hash: dict[str, str] = {}

    def step(key: str, h: str, target: Path, fn: Callable[[], None], what: str) -> None:
        if state.get(key) == h and target.exists():
            log(f"[skip] {what} (unchanged)")
            result.skipped.append(key)
            return
        log(f"[run ] {what}")
        fn()
        state[key] = h
        tmp = state_path.with_name(f".{STATE_FILE}.tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(state_path)
        result.built.append(key)

    for i, tier in enumerate(recipe.tiers, 1):
        src = recipe.model if tier.from_ is None else str(tier_dir(out, tier.from_))
        upstream = tier_hash.get(tier.from_) if tier.from_ else recipe.model
        h = tier_hash[tier.name] = _hash(tier.model_dump(mode="json", by_alias=True), upstream, device)
        tdir = tier_dir(out, tier.name)
        step(f"build:{tier.name}", h, tdir / "config.json", lambda: _build(tier, src, tdir, device),
             f"tier {i}/{len(recipe.tiers)} {tier.name}: {tier.step} from {src}")
        ev = recipe.eval.model_copy(update={"device": device})
        step(f"eval:{tier.name}", _hash(h, ev.model_dump()), tdir / "eval.json",
             lambda: _eval(tdir, ev), f"eval {tier.name}")
        gguf = tdir / GGUF_FILE if tier.runtime == "llamacpp" else None
        if gguf is not None:
            step(f"export:{tier.name}", h, gguf, lambda: _export(tdir, gguf), f"export {tier.name} to GGUF")
        if recipe.bench is not None:
            bc = recipe.bench.model_copy(update={"device": device})
            step(f"bench:{tier.name}", _hash(h, bc.model_dump()), tdir / "bench.json",
                 lambda: _bench(tdir, bc, gguf), f"bench {tier.name}" + (" on llama.cpp" if gguf else ""))

    from compress.manifest import build_manifest, write_manifest

    paths = [str(tier_dir(out, t.name)) for t in recipe.tiers]
    names = [f"{t.name}={p}" for t, p in zip(recipe.tiers, paths)]
    ggufs = [f"{t.name}={tier_dir(out, t.name) / GGUF_FILE}" for t in recipe.tiers if t.runtime == "llamacpp"]
    manifest = build_manifest(paths, names=names, price_per_gpu_hour=recipe.price_per_hour,
                              price_per_cpu_hour=recipe.price_per_hour, ggufs=ggufs)
    write_manifest(manifest, result.manifest)
    result.gates = check_gates(out, recipe)
    (out / "gates.json").write_text(json.dumps([g.to_dict() for g in result.gates], indent=2) + "\n")
    _report(recipe, out, paths, result.gates, result.report, manifest)
    return result


def _build(tier: TierSpec, src: str, dest: Path, device: str | None) -> None:
    if tier.quantize is not None:
        from compress.quantize import quantize

        quantize(src, tier.quantize, dest, overwrite=True, device=device)
    elif tier.distill is not None:
        from compress.distill.config import make_config
        from compress.distill.train import distill

        distill(make_config(**tier.distill, teacher=src, output=str(dest), overwrite=True, device=device))
    else:  # the source model itself, as a plain checkpoint folder the other steps and the server can read
        ckpt = Path(checkpoint_dir(resolve(src)))
        if not ckpt.is_dir():
            raise CompressError(f"source tier: {src} is a hub id that is not in the local cache")
        with atomic_dir(dest, overwrite=True) as tmp:
            for f in ckpt.iterdir():
                if f.is_file() and f.name not in ("eval.json", "bench.json"):
                    _link_or_copy(f, tmp / f.name)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _eval(tdir: Path, cfg) -> None:
    from compress.evaluate.results import write_json_atomic
    from compress.evaluate.run import evaluate

    write_json_atomic(tdir / "eval.json", evaluate(str(tdir), cfg).model_dump(mode="json"))


def _export(tdir: Path, gguf: Path) -> None:
    """A `runtime: llamacpp` tier's GGUF. A quantized tier's embedding/output head are written as Q8_0, as
    llama.cpp's own Q4_0 writes them: at batch 1 the head is the step's largest matmul (SmolLM2 GPTQ g32, 1 thread:
    2.78x the fp32 source with an F16 head, 3.99x with Q8_0; benchmarks/RESULTS.md). A dense tier stays F16."""
    from compress.export import export_gguf
    from compress.models import quant_method, resolve

    export_gguf(tdir, gguf, overwrite=True, dense_type="q8_0" if quant_method(resolve(str(tdir))) else "f16")


def _bench(tdir: Path, cfg, gguf: Path | None = None) -> None:
    """The tier's bench.json: its checkpoint on our engine, or its GGUF on llama.cpp (runtime llamacpp)."""
    from compress.bench.run import bench
    from compress.evaluate.results import write_json_atomic

    if gguf is not None:
        cfg = cfg.model_copy(update={"runtime": "llamacpp", "decoder": "auto"})
    write_json_atomic(tdir / "bench.json", bench([str(gguf or tdir)], cfg))


def _report(recipe: Recipe, out: Path, paths: list[str], gates: list[GateCheck], dest: Path, manifest) -> None:
    from compress.report import collect, render

    evals = [Path(p) / "eval.json" for p in paths if (Path(p) / "eval.json").is_file()]
    benches = [Path(p) / "bench.json" for p in paths if (Path(p) / "bench.json").is_file()]
    page = render(collect([str(e) for e in evals], [str(b) for b in benches]), title=f"compress run: {recipe.name}")
    rows = "".join(
        f"<tr><td>{html.escape(g.tier)}</td><td>{g.rule}</td><td>{html.escape(g.metric)}</td><td>{g.limit:g}</td>"
        f"<td>{g.value:.4g}</td><td style='color:{'green' if g.passed else 'red'}'>{'pass' if g.passed else 'FAIL'}</td></tr>"
        for g in gates)
    section = ("<h2>Gates</h2>" + ("<table><tr><th>tier</th><th>rule</th><th>metric</th><th>limit</th><th>value</th>"
               f"<th>result</th></tr>{rows}</table>" if gates else "<p>No gates in this recipe.</p>"))
    def fmt(v, spec):
        return "unknown" if v is None else format(v, spec)

    tiers = "".join(
        f"<tr><td>{html.escape(t.name)}</td><td>{fmt(t.cost_per_1k_tokens, '.5f')}</td>"
        f"<td>{fmt(t.quality.perplexity, '.3f')}</td><td>{fmt(t.performance.throughput_tokens_per_s, '.1f')}</td>"
        f"<td>{fmt(t.size_bytes and t.size_bytes / 2**20, '.1f')}</td></tr>" for t in manifest.tiers)
    section += (f"<h2>Tiers and cost ({html.escape(manifest.currency)} per 1k generated tokens, cheapest first)</h2>"
                "<table><tr><th>tier</th><th>cost / 1k tokens</th><th>perplexity</th><th>best decode tok/s</th>"
                f"<th>size MiB</th></tr>{tiers}</table>")
    page = page.replace("</body></html>", section + "</body></html>")
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.write_text(page)
    tmp.replace(dest)
