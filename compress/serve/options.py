"""`compress serve`'s options as one validated model: what the CLI flags set, and what a recipe's
`serve:` block may hold (the same names as the flags, with `_` for `-`). Unknown keys and bad values
fail before any tier is built. `settings()` turns them into the app's `ServeSettings`."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from compress.errors import CompressError


class ServeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    max_queue: int = Field(64, ge=0)
    max_batch: int = Field(8, ge=1)
    max_wait_ms: float = Field(10.0, ge=0)
    api_key: list[str] | None = None
    api_keys_file: Path | None = None
    rate_limit_rpm: int | None = Field(None, ge=1)
    device: str | None = None
    cache_ttl: float = Field(300.0, ge=0)
    cache_max_mb: float = Field(64.0, gt=0)
    cache_db: Path | None = None
    route_floor: float = Field(0.8, ge=0, le=1)
    route_keep: float = Field(0.95, ge=0, le=1)
    slo_p95: float | None = Field(None, gt=0)
    slo_batch_p95: float | None = Field(None, gt=0)
    slo_window: float = Field(30.0, gt=0)
    budget_tokens: int | None = Field(None, ge=0)
    budget_cost: float | None = Field(None, ge=0)
    key_budget_tokens: int | None = Field(None, ge=0)
    budget_window: float = Field(3600.0, gt=0)
    budget_hard: bool = False
    alert_webhook: str | None = None
    shutdown_timeout: float = Field(60.0, ge=0)
    max_body_mb: float = Field(4.0, gt=0)
    header_timeout: float = Field(10.0, gt=0)
    body_timeout: float = Field(30.0, gt=0)
    max_model_len: int | None = Field(None, ge=16)
    prefill_budget: int | None = Field(None, ge=16)
    engine_process: bool | None = None  # None: a process on a GPU, a thread on a CPU (benchmarks/serve_load.py)

    @model_validator(mode="after")
    def _keys_file(self) -> "ServeOptions":
        if self.api_keys_file is not None and not self.api_keys_file.is_file():
            raise ValueError(f"API keys file not found: {self.api_keys_file}")
        return self

    def keys(self) -> list[str]:
        keys = list(self.api_key or [])
        if self.api_keys_file is not None:
            found = [ln.strip() for ln in self.api_keys_file.read_text().splitlines()
                     if ln.strip() and not ln.strip().startswith("#")]
            if not found:
                raise CompressError(f"{self.api_keys_file}: no API keys in it")
            keys += found
        return keys

    def settings(self, default_device: str):
        from compress.serve.app import ServeSettings
        from compress.serve.budget import BudgetConfig

        budget = None
        if self.budget_tokens is not None or self.budget_cost is not None or self.key_budget_tokens is not None:
            budget = BudgetConfig(window_s=self.budget_window, max_tokens=self.budget_tokens,
                                  max_cost=self.budget_cost, key_max_tokens=self.key_budget_tokens,
                                  hard=self.budget_hard)
        device = self.device or default_device
        # On a GPU the engine thread's Python work and the HTTP side's starve each other on one GIL (RESULTS.md,
        # issue 20); on a small CPU the engine computes on the cores the HTTP side needs, so a process buys nothing.
        process = device.startswith("cuda") if self.engine_process is None else self.engine_process
        slos = {c: v for c, v in (("interactive", self.slo_p95), ("batch", self.slo_batch_p95)) if v is not None}
        return ServeSettings(
            max_queue=self.max_queue, max_batch=self.max_batch, max_wait_ms=self.max_wait_ms, api_keys=self.keys(),
            rate_limit_rpm=self.rate_limit_rpm, device=device, cache_ttl_s=self.cache_ttl,
            cache_max_bytes=int(self.cache_max_mb * (1 << 20)), cache_db=str(self.cache_db) if self.cache_db else None,
            route_floor=self.route_floor, route_keep=self.route_keep, slo_p95_s=slos, slo_window_s=self.slo_window,
            alert_webhook=self.alert_webhook, budget=budget, max_body_bytes=int(self.max_body_mb * (1 << 20)),
            header_timeout_s=self.header_timeout, body_timeout_s=self.body_timeout,
            max_model_len=self.max_model_len, prefill_budget=self.prefill_budget, engine_process=process)


def serve_options(**values) -> ServeOptions:
    """ServeOptions, or a CompressError naming the bad option (`--flag-name: why`)."""
    try:
        return ServeOptions(**values)
    except ValidationError as e:
        err = e.errors()[0]
        name = "--" + "-".join(str(x) for x in err["loc"][:1]).replace("_", "-") if err["loc"] else "serve"
        msg = "unknown option" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        raise CompressError(f"{name}: {msg}") from None
