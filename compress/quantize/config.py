"""QuantizeConfig: the one validated description of a quantization run (defaults live here).

Every option either applies to the chosen method or is refused before any model loads: `None`
means "not given", the validator fills in the method's defaults for the options that apply and
rejects a given option that does not. `model_dump(exclude_none=True)` is then exactly what applied,
and that is what `compress.json` records.
"""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict, Field, model_validator

from compress.errors import CompressError


class Method(str, Enum):
    gptq = "gptq"  # Hessian-based error compensation (gptqmodel), packed int2/3/4/8
    rtn = "rtn"  # round-to-nearest, same packing: the baseline GPTQ must beat
    int8 = "int8"  # bitsandbytes LLM.int8(): int8 weights, fp16 outlier columns
    int8_wo = "int8-wo"  # torchao int8 weight-only, per output channel
    autoround = "autoround"  # auto-round's SignRound: rounding and clipping tuned per block, same packing as gptq


PACKED_BITS = {2, 3, 4, 8}  # what gptqmodel's GPTQ format packs (3 bits span 32-bit words; verify unpacks all)

# Each option, the methods it applies to, and its default there. An option given for a method
# outside its set is refused; one not given gets the default only where it applies.
PACKED = {"gptq", "rtn", "autoround"}  # methods whose artifact is a GPTQ v1 checkpoint
CALIBRATED = {"gptq", "autoround"}
# A default may differ by method ({method: default}). GPTQ's mse 2.0 / mix won the int4 table on the bf16-trained
# reference (benchmarks/RESULTS.md, "int4 quality on a bf16-trained reference", H200, 2026-11-30): each alone helped
# (mse +16.0%, mix +13.8% at g64 against +23.7%); act-order hurt (+36.7%). The grid is symmetric (signed peak, grid.py)
# since session 12: on the reference it beats asym at g32 (+6.9% vs +7.8%, 5 and 4 runs), trails it by 0.6 points at
# g64 (+9.2% vs +8.6%, 4 and 3 runs), stores no zero points (g64 = 4.25 bits in compressed-tensors, g32 = GGUF
# Q4_0) and runs on Marlin in bf16; asym wins only on sources already on an asymmetric 4-bit grid (a Q4_1 GGUF).
APPLIES: dict[str, tuple[set[str], object]] = {
    "group_size": (PACKED, 128),
    "sym": (PACKED, True),
    "act_order": ({"gptq"}, False),
    "damp": ({"gptq"}, 0.01),
    "mse": ({"gptq"}, 2.0),  # 0 = scale from the group's max; P > 0 = gptqmodel's shrunk-scale search minimising Σ|ŵ−w|^P
    # a data spec (compress.data): mix = four offline domains (compress.data_mix); builtin = the Python docs alone
    "calib": (CALIBRATED, {"gptq": "mix", "autoround": "builtin"}),
    "calib_samples": (CALIBRATED, 128),
    "calib_seqlen": (CALIBRATED, 512),
    "seed": (CALIBRATED, 0),
    "bits_budget": ({"gptq"}, None),
    "iters": ({"autoround"}, 200),  # auto-round's default tuning steps per decoder block
    "lr": ({"autoround"}, None),  # None: auto-round's own schedule (1/iters); recorded only when given
}
_FLAGS = {"group_size": "--group-size", "sym": "--sym/--asym", "act_order": "--act-order", "damp": "--damp",
          "mse": "--mse", "calib": "--calib", "calib_samples": "--calib-samples", "calib_seqlen": "--calib-seqlen",
          "seed": "--seed", "bits_budget": "--bits-budget", "iters": "--iters", "lr": "--lr"}
_WHY = {"rtn": "rtn rounds each weight alone, with no calibration data",
        "gptq": "gptq solves each layer with its Hessian, with no tuning steps",
        "autoround": "autoround tunes rounding by signed gradient descent, with no Hessian or per-layer widths",
        "int8": "int8 (LLM.int8) has a fixed per-row int8 scheme",
        "int8-wo": "int8-wo has a fixed per-channel int8 scheme"}
_WHY_OPTION = {  # where an option's refusal has its own reason
    ("mse", "rtn"): "gptqmodel 7.6's RTN config drops `mse`, so the scale search would not run",
    ("mse", "autoround"): "auto-round tunes its own clipping range",
}
BUDGET_RANGE = (4.0, 16.0)  # smallest width we choose (4) .. the source precision (16)


class QuantizeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", use_enum_values=True)

    method: Method
    bits: int | None = None  # None: the method's native width (4 for gptq/rtn, 8 for int8/int8-wo)
    group_size: int | None = None  # -1: one scale per output channel
    act_order: bool | None = None  # GPTQ: quantize columns in order of decreasing Hessian diagonal
    sym: bool | None = None
    damp: float | None = Field(None, gt=0, lt=1)  # fraction of mean(diag(H)) added to H's diagonal
    mse: float | None = Field(None, ge=0, le=10)  # GPTQ: norm P of the scale search (gptqmodel `mse`); 0 = off
    calib: str | None = None
    calib_samples: int | None = Field(None, ge=1)
    calib_seqlen: int | None = Field(None, ge=16)
    seed: int | None = None
    bits_budget: float | None = None  # average bits per quantized-linear weight, scales and zeros included
    iters: int | None = Field(None, ge=1)  # autoround: tuning steps per block (0 would be auto-round's RTN)
    lr: float | None = Field(None, gt=0)  # autoround: learning rate of the rounding offsets and clipping

    @model_validator(mode="after")
    def _check(self) -> "QuantizeConfig":
        m = Method(self.method).value
        if m in ("gptq", "autoround") and self.group_size == -1 and self.sym is False:  # GPTQ v1 asym per channel
            raise ValueError(f"method {m} refuses --group-size -1 with --asym: that checkpoint fails the reload "
                             "check (logits >100% off on the tiny model); use a group size or --sym")
        for name, (methods, default) in APPLIES.items():
            given = getattr(self, name)
            if given is not None and m not in methods:
                why = _WHY_OPTION.get((name, m), _WHY.get(m, ""))
                raise ValueError(f"{_FLAGS[name]} does not apply to --method {m}: {why}"
                                 f" (it applies to {', '.join(sorted(methods))})")
            if given is None and m in methods:
                setattr(self, name, default[m] if isinstance(default, dict) else default)
        self._check_bits(m)
        if self.group_size is not None and self.group_size != -1 and self.group_size < 8:
            raise ValueError(f"--group-size must be -1 (per channel) or >= 8; got {self.group_size}")
        return self

    def _check_bits(self, m: str) -> None:
        if self.bits_budget is not None:
            lo, hi = BUDGET_RANGE
            if self.bits is not None:
                raise ValueError("give --bits or --bits-budget, not both (the budget picks each layer's width)")
            if not lo < self.bits_budget <= hi:
                raise ValueError(f"--bits-budget must be above {lo:g} (the smallest width, 4 bits, plus its scales) "
                                 f"and at most {hi:g}; got {self.bits_budget:g}")
            return
        if self.bits is None:
            self.bits = 8 if m in ("int8", "int8-wo") else 4
        if m in ("int8", "int8-wo") and self.bits != 8:
            raise ValueError(f"method {m} is 8-bit only; got --bits {self.bits}")
        if m in PACKED and self.bits not in PACKED_BITS:
            raise ValueError(f"method {m} supports --bits {sorted(PACKED_BITS)}; got {self.bits}")
        if m == "autoround" and self.bits == 8 and not self.sym:
            raise ValueError("method autoround refuses 8-bit --asym: auto-round's GPTQ export is symmetric at 8 bits")

    @property
    def packed(self) -> bool:
        """The artifact is a GPTQ v1 checkpoint (packed codes, scales, zeros)."""
        return self.method in PACKED

    @property
    def uses_calibration(self) -> bool:
        return self.method in CALIBRATED

    @property
    def base_bits(self) -> int:
        """The width of every quantized layer the budget does not widen."""
        return 4 if self.bits_budget is not None else int(self.bits)

    def applied(self) -> dict:
        """The options that applied to this run (what compress.json records)."""
        return self.model_dump(mode="json", exclude_none=True)


def make_config(**kwargs) -> QuantizeConfig:
    """Build a QuantizeConfig, turning validation errors into one-line CompressErrors."""
    from pydantic import ValidationError

    try:
        return QuantizeConfig(**kwargs)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(map(str, err["loc"]))
        msg = err["msg"].removeprefix("Value error, ")
        raise CompressError(f"invalid quantize option{' ' + loc if loc else ''}: {msg}") from e
