"""Model id -> the tiers to try, in order.

Explicit tier ids go to that tier only. `auto` estimates how hard the request is and picks the
cheapest tier whose measured quality meets that difficulty; the other tiers that also meet it are
the fallbacks, tried in cost order when the first choice is full or fails.

Quality is relative within the manifest: the mean task score when tiers have task scores, else
best perplexity / tier perplexity (1.0 = the best tier). Tiers with no quality measurement are not
picked by `auto` unless no tier has one. Difficulty is a score in [0, 1] from prompt features
(length, requested output length, reasoning/code cues); a request needs quality of at least
`floor + (1 - floor) * difficulty`, so the easiest requests accept any tier within `floor` of the
best and the hardest need the best one.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from compress.manifest import Manifest
from compress.serve.protocol import APIError

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
    required_quality: float | None


def difficulty(prompt: str, max_tokens: int | None) -> float:
    """A [0, 1] score: long prompts, long answers, reasoning cues, code and maths make it harder."""
    words = len(prompt.split())
    score = 0.25 * min(1.0, math.log1p(words) / math.log1p(400))  # saturates around 400 words
    score += 0.2 * min(1.0, math.log1p(max_tokens or 16) / math.log1p(1024))
    score += min(0.4, 0.2 * len(_HARD_CUES.findall(prompt)))
    score += 0.15 if _CODE.search(prompt) else 0.0
    score += 0.1 if _MATH.search(prompt) else 0.0
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
    def __init__(self, manifest: Manifest, floor: float = 0.8):
        self.manifest, self.floor = manifest, floor
        self.quality = quality_scores(manifest)

    def model_ids(self) -> list[str]:
        return [t.name for t in self.manifest.tiers] + [AUTO]

    def route(self, model: str, prompt: str = "", max_tokens: int | None = None,
              floor: float | None = None) -> Decision:
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
        if not known:  # nothing measured: cheapest first, everything else as fallback
            return Decision(list(self.manifest.tiers), d, None)
        fit = [t for t in known if self.quality[t.name] >= need - 1e-9]
        if not fit:  # nothing is good enough: the best tier there is
            fit = [max(known, key=lambda t: self.quality[t.name])]
        return Decision(fit, d, need)  # manifest order = cheapest first
