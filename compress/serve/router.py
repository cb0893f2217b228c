"""Model id -> tier. Explicit tier ids go to that tier; `auto` goes to the cheapest tier (the
manifest is ordered cheapest first). Difficulty-aware routing and fallback build on this."""

from __future__ import annotations

from compress.manifest import Manifest
from compress.serve.protocol import APIError

AUTO = "auto"


class Router:
    def __init__(self, manifest: Manifest):
        self.manifest = manifest

    def model_ids(self) -> list[str]:
        return [t.name for t in self.manifest.tiers] + [AUTO]

    def route(self, model: str):
        if model == AUTO:
            return self.manifest.tiers[0]
        tier = self.manifest.tier(model)
        if tier is None:
            raise APIError(404, f"The model '{model}' does not exist; this server has: "
                           f"{', '.join(self.model_ids())}", param="model", code="model_not_found")
        return tier
