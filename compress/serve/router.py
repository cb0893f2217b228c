"""Model id -> the tiers to try, in order.

Explicit tier ids go to that tier only. `auto` picks the cheapest tier (manifest order is cheapest
first) that is good enough for the request; the other tiers that are also good enough are the
fallbacks, tried in cost order when the first choice is full or fails.

With a learned router (the manifest's `router:`, see learned.py), "good enough" is per prompt: the
router predicts each tier's success p_t(prompt), and a tier qualifies when p_t >= keep * max_t p_t
(`keep`, `compress serve --route-keep`, default 0.95: the share of the best predicted success a
request keeps). Manifest tiers the router has no classifier for are judged by the heuristic below.

The heuristic: quality is relative within the manifest: the mean task score when tiers have task
scores, else best perplexity / tier perplexity (1.0 = the best tier). Tiers with no quality
measurement are not picked by `auto` unless no tier has one. Difficulty is a score in [0, 1] from
prompt features (length, requested output length, reasoning/code cues); a request needs quality of
at least `floor + (1 - floor) * difficulty`, so the easiest requests accept any tier within `floor`
of the best and the hardest need the best one.

Under latency pressure the SLO controller lowers both `floor` and `keep` (slo.py), which sends
requests to smaller, faster tiers.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from compress.manifest import Manifest
from compress.serve.protocol import APIError

if TYPE_CHECKING:
    from compress.serve.learned import LearnedRouter

AUTO = "auto"
_HARD_CUES = re.compile(
    r"\b(prove|proof|derive|step[- ]by[- ]step|reason|explain why|analy[sz]e|compare|evaluate|optimi[sz]e|"
    r"algorithm|complexity|theorem|calculate|solve|debug|refactor|implement|translate)\b", re.I)
_CODE = re.compile(r"```|\bdef |\bclass |\breturn\b|[{};]\s*$|=>|\bimport\b", re.M)
_MATH = re.compile(r"[=^∑∫√]|\d+\s*[-+*/]\s*\d+")


@dataclass(frozen=True)
class Decision:
    tiers: list  # first choice, then fallbacks
    difficulty: float | None  # None for an explicit tier id
    required_quality: float | None  # the heuristic's need (None: nothing measured, or explicit id)
    predicted: dict[str, float] | None = None  # learned router: tier -> predicted success
    required_success: float | None = None  # learned router: keep * the best predicted success

    def describe(self) -> str:
        """The decision in one log line."""
        parts = [f"difficulty {self.difficulty:.2f}"] if self.difficulty is not None else []
        if self.predicted is not None:
            parts.append("predicted success " + ", ".join(f"{t} {p:.2f}" for t, p in self.predicted.items())
                         + f"; needs {self.required_success:.2f}")
        if self.required_quality is not None or self.predicted is None:
            parts.append("needs quality " + ("any" if self.required_quality is None else f"{self.required_quality:.2f}"))
        return "; ".join(parts) + " -> " + ", ".join(t.name for t in self.tiers)


def prompt_features(prompt: str, max_tokens: int | None) -> dict[str, float]:
    """The hand-written prompt features, each in [0, 1]: the difficulty score's parts (the learned
    router uses them too)."""
    words = len(prompt.split())
    return {
        "length": min(1.0, math.log1p(words) / math.log1p(400)),  # saturates around 400 words
        "answer_length": min(1.0, math.log1p(max_tokens or 16) / math.log1p(1024)),
        "hard_cues": min(1.0, len(_HARD_CUES.findall(prompt)) / 2),
        "code": 1.0 if _CODE.search(prompt) else 0.0,
        "maths": 1.0 if _MATH.search(prompt) else 0.0,
    }


def difficulty(prompt: str, max_tokens: int | None) -> float:
    """A [0, 1] score: long prompts, long answers, reasoning cues, code and maths make it harder."""
    f = prompt_features(prompt, max_tokens)
    score = (0.25 * f["length"] + 0.2 * f["answer_length"] + 0.4 * f["hard_cues"] + 0.15 * f["code"]
             + 0.1 * f["maths"])
    return round(min(1.0, score), 4)


def quality_scores(manifest: Manifest) -> dict[str, float | None]:
    tiers = manifest.tiers
    tasks = {t.name: sum(t.quality.tasks.values()) / len(t.quality.tasks) for t in tiers if t.quality.tasks}
    if tasks:
        best = max(tasks.values()) or 1.0
        return {t.name: (tasks[t.name] / best if t.name in tasks else None) for t in tiers}
    ppl = {t.name: t.quality.perplexity for t in tiers if t.quality.perplexity}
    if ppl:
        best = min(ppl.values())
        return {t.name: (best / ppl[t.name] if t.name in ppl else None) for t in tiers}
    return {t.name: None for t in tiers}


class Router:
    def __init__(self, manifest: Manifest, floor: float = 0.8, learned: LearnedRouter | None = None,
                 keep: float = 0.95):
        self.manifest, self.floor, self.learned, self.keep = manifest, floor, learned, keep
        self.quality = quality_scores(manifest)

    def model_ids(self) -> list[str]:
        return [t.name for t in self.manifest.tiers] + [AUTO]

    def route(self, model: str, prompt: str = "", max_tokens: int | None = None,
              floor: float | None = None, keep: float | None = None) -> Decision:
        if model != AUTO:
            tier = self.manifest.tier(model)
            if tier is None:
                raise APIError(404, f"The model '{model}' does not exist; this server has: "
                               f"{', '.join(self.model_ids())}", param="model", code="model_not_found")
            return Decision([tier], None, None)
        d = difficulty(prompt, max_tokens)
        floor = self.floor if floor is None else floor
        need = floor + (1 - floor) * d
        known = [t for t in self.manifest.tiers if self.quality[t.name] is not None]
        if self.learned is not None:
            return self._learned(prompt, max_tokens, d, need if known else None,
                                 self.keep if keep is None else keep)
        if not known:  # nothing measured: cheapest first, everything else as fallback
            return Decision(list(self.manifest.tiers), d, None)
        fit = [t for t in known if self.quality[t.name] >= need - 1e-9]
        if not fit:  # nothing is good enough: the best tier there is
            fit = [max(known, key=lambda t: self.quality[t.name])]
        return Decision(fit, d, need)  # manifest order = cheapest first

    def _learned(self, prompt: str, max_tokens: int | None, d: float, need: float | None,
                 keep: float) -> Decision:
        """Tiers with a classifier qualify when p_t >= keep * max p; the others by the heuristic."""
        p = self.learned.predict(prompt, max_tokens)
        p = {t.name: p[t.name] for t in self.manifest.tiers if t.name in p}  # manifest (cost) order
        bar = keep * max(p.values())
        if len(p) == len(self.manifest.tiers):
            need = None  # every tier has a classifier: the heuristic's need plays no part
        fit = [t for t in self.manifest.tiers
               if (p[t.name] >= bar - 1e-12 if t.name in p
                   else need is not None and self.quality[t.name] is not None
                   and self.quality[t.name] >= need - 1e-9)]
        return Decision(fit, d, need, predicted=p, required_success=bar)
