"""QuantizeConfig: the one validated description of a quantization run (defaults live here)."""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict, Field, model_validator

from compress.errors import CompressError


class Method(str, Enum):
    gptq = "gptq"  # Hessian-based error compensation (gptqmodel), packed int4/int8/int3/int2
    rtn = "rtn"  # round-to-nearest, same packing: the baseline GPTQ must beat
    int8 = "int8"  # bitsandbytes LLM.int8(): int8 weights, fp16 outlier columns
    int8_wo = "int8-wo"  # torchao int8 weight-only, per output channel


PACKED_BITS = {2, 3, 4, 8}  # what gptqmodel's GPTQ format packs


class QuantizeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", use_enum_values=True)

    method: Method
    bits: int | None = None  # None: the method's native width (4 for gptq/rtn, 8 for int8/int8-wo)
    group_size: int = 128  # -1: one scale per output channel
    act_order: bool = False  # GPTQ: quantize columns in order of decreasing Hessian diagonal
    sym: bool = True
    damp: float = Field(0.01, gt=0, lt=1)  # fraction of mean(diag(H)) added to H's diagonal
    calib: str | None = None  # data spec (compress.data); None = the built-in offline text
    calib_samples: int = Field(128, ge=1)
    calib_seqlen: int = Field(512, ge=16)
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> "QuantizeConfig":
        m = Method(self.method)
        if self.bits is None:
            self.bits = 8 if m in (Method.int8, Method.int8_wo) else 4
        if m in (Method.int8, Method.int8_wo) and self.bits != 8:
            raise ValueError(f"method {m.value} is 8-bit only; got --bits {self.bits}")
        if m in (Method.gptq, Method.rtn) and self.bits not in PACKED_BITS:
            raise ValueError(f"method {m.value} supports --bits {sorted(PACKED_BITS)}; got {self.bits}")
        if self.group_size != -1 and self.group_size < 8:
            raise ValueError(f"--group-size must be -1 (per channel) or >= 8; got {self.group_size}")
        if m == Method.rtn and self.act_order:
            raise ValueError("--act-order needs calibration data: it applies to gptq, not rtn")
        return self

    @property
    def uses_calibration(self) -> bool:
        return self.method == Method.gptq.value


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
