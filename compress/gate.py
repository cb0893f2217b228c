"""Quality gates: does every tier keep what the recipe demands?

A results directory (what `compress run` writes) holds `tiers/<name>/eval.json` and
`tiers/<name>/bench.json` for each tier. For each tier with a gate (recipe `gates.<tier>` or
`gates.default`; never the baseline), every rule is checked against the baseline tier:
- `min_recovery`: recovery ratio (llm-compressor's convention: value/baseline when higher is better,
  baseline/value when lower is better, so 1.0 = no loss) must be at least the limit;
- `max_drop`: absolute loss vs the baseline (in the metric's own unit, worse-direction positive);
- `max_p95_s`: end-to-end p95 latency at the gate's batch size.
Metric names may be globs (`ppl:*`). A rule that matches no measured metric is bad input, not a pass.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from fnmatch import fnmatch
from pathlib import Path

from compress.errors import CompressError
from compress.recipe import Recipe


@dataclass
class GateCheck:
    tier: str
    rule: str  # min_recovery | max_drop | max_p95_s
    metric: str
    limit: float
    value: float
    passed: bool

    @property
    def margin(self) -> float:
        """How far inside (+) or outside (−) the limit the value is."""
        return self.value - self.limit if self.rule == "min_recovery" else self.limit - self.value

    def to_dict(self) -> dict:
        return asdict(self) | {"margin": self.margin}


def tier_dir(results_dir: str | Path, tier: str) -> Path:
    return Path(results_dir) / "tiers" / tier


def check_gates(results_dir: str | Path, recipe: Recipe) -> list[GateCheck]:
    from compress.evaluate.results import load_eval, recovery

    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise CompressError(f"results directory not found: {results_dir}")
    gated = [(t.name, recipe.gate_for(t.name)) for t in recipe.tiers]
    gated = [(name, spec) for name, spec in gated if spec is not None]
    if not gated:
        return []
    if recipe.baseline is None:
        raise CompressError("the recipe has gates but no baseline tier (add a tier with no step or set `baseline`)")
    needs_eval = any(spec.min_recovery or spec.max_drop for _, spec in gated)
    base = load_eval(tier_dir(results_dir, recipe.baseline) / "eval.json") if needs_eval else None
    checks: list[GateCheck] = []
    for name, spec in gated:
        if spec.min_recovery or spec.max_drop:
            ev = load_eval(tier_dir(results_dir, name) / "eval.json")
            hib = base.higher_is_better | ev.higher_is_better
            rec = recovery(ev.metrics, base.metrics, hib)
            for pattern, limit in spec.min_recovery.items():
                for metric in _match(pattern, rec, name):
                    checks.append(GateCheck(name, "min_recovery", metric, limit, rec[metric], rec[metric] >= limit))
            for pattern, limit in spec.max_drop.items():
                shared = {m: ev.metrics[m] for m in ev.metrics if m in base.metrics}
                for metric in _match(pattern, shared, name):
                    v, b = ev.metrics[metric], base.metrics[metric]
                    drop = (b - v) if hib.get(metric, True) else (v - b)
                    checks.append(GateCheck(name, "max_drop", metric, limit, drop, drop <= limit))
        if spec.max_p95_s is not None:
            p95 = _p95(tier_dir(results_dir, name) / "bench.json", spec.batch_size)
            checks.append(GateCheck(name, "max_p95_s", f"e2e_p95@bs{spec.batch_size}", spec.max_p95_s, p95,
                                    p95 <= spec.max_p95_s))
    return checks


def _match(pattern: str, metrics: dict, tier: str) -> list[str]:
    hits = sorted(m for m in metrics if fnmatch(m, pattern))
    if not hits:
        raise CompressError(f"gate for tier {tier}: no measured metric matches '{pattern}' "
                            f"(measured: {', '.join(sorted(metrics)) or 'none'})")
    return hits


def _p95(path: Path, batch_size: int) -> float:
    from compress.bench.run import load_bench

    result = load_bench(path)
    for row in result["models"][0]["batches"]:
        if row["batch_size"] == batch_size:
            return row["e2e_s"]["p95"]
    raise CompressError(f"{path}: no measurement at batch size {batch_size} for the latency gate")
