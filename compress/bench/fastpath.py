"""The one place that decides how a model decodes in a benchmark: the fastest path each backend offers.

Eager `generate` with a dynamic KV cache mostly measures Python and kernel-launch overhead, which hides
what int4/int8 kernels buy (optimum's own GPTQ benchmark shows int4 no faster than fp16 that way). So:

| device | checkpoint | load | decoder (`auto`) |
|---|---|---|---|
| cuda | dense (bf16) | transformers | `graph`: static KV cache, the torch.compile'd decode step captured as one CUDA graph |
| cuda | GPTQ | `GPTQModel.load(backend=MARLIN)`, TRITON when a layer's K is not a multiple of the group size | `graph` |
| cuda | torchao int8-wo | transformers (bf16 activations) | `graph` |
| cuda | bitsandbytes int8 | transformers (fp16 activations) | `graph` tried; LLM.int8() syncs with the host, so capture fails and the same static loop runs eagerly |
| cpu | GPTQ 4-bit (g32-256 dividing K), torchao int8-wo | `compress.quantize.cpu_kernels.load_cpu_fast`: bf16, aten int4/int8 pack kernels | `generate` |
| cpu | other | `load_causal_lm` | `generate`: eager, dynamic cache (inductor on CPU compiles for minutes per shape) |

Decoders: `generate` (transformers' `generate`, eager, dynamic cache), `compile` (`generate` with a static
cache and `torch.compile(mode="reduce-overhead")`: dynamo breaks its graph at every quantized linear, see
`compress.bench.static_decode`), `graph` (`compress.bench.static_decode.StaticGreedy`, CUDA only: the decode
step compiled by inductor without its own CUDA graphs and the eager step are both captured, and the faster
is kept), `graph-eager` (the eager step only). A step that fails to compile or capture is recorded with its
reason; with none captured the same loop runs eagerly. Every choice is written into the result (`decode_path`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from compress import runtime
from compress.errors import CompressError
from compress.models import ModelRef, checkpoint_dir, load_causal_lm, load_dtype, quant_method, read_config

DECODERS = ("auto", "generate", "compile", "graph", "graph-eager")


@dataclass
class DecodePath:
    device: str
    dtype: str
    loader: str  # transformers | gptqmodel
    backend: str | None  # quantization kernel family requested (marlin, triton, ...), None for dense
    decoder: str  # generate | compile | graph | graph-eager (what was asked for, after "auto" is resolved)
    cache: str  # static | dynamic
    compile: bool  # torch.compile of the decode step requested (decoder "compile")
    compile_mode: str | None
    compiled: bool = False  # a compiled step actually ran (set after warm-up)
    graphed: bool = False  # the decode step was captured as a CUDA graph and replayed (decoders "graph*")
    graph_step: str | None = None  # which captured step was kept: "compiled" or "eager" (the faster one here)
    tried: dict[str, float] = field(default_factory=dict)  # per batch size, each captured step's ms/token
    kernels: dict[str, int] = field(default_factory=dict)  # linear-layer class → count
    fallback: str | None = None  # why the compiled or captured path was abandoned, if it was

    def to_dict(self) -> dict:
        return asdict(self)


def check_decoder(decoder: str) -> None:
    if decoder not in DECODERS:
        raise CompressError(f"--decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")


def resolve_decoder(decoder: str, device: str) -> str:
    """The decoder `auto` means on `device`; an error for one that cannot run there."""
    check_decoder(decoder)
    on_cuda = device.startswith("cuda")
    if decoder == "auto":
        return "graph" if on_cuda else "generate"
    if decoder.startswith("graph") and not on_cuda:
        raise CompressError("--decoder graph captures CUDA graphs: it needs --device cuda")
    return decoder


def load_for_decode(ref: ModelRef, device: str, decoder: str = "auto"):
    """(model, DecodePath) for the fastest decode path of `ref` on `device`."""
    decoder = resolve_decoder(decoder, device)
    method = quant_method(ref)
    on_cuda = device.startswith("cuda")
    dtype = load_dtype(ref, device)
    loader, backend = "transformers", None
    if on_cuda and method == "gptq":
        model, backend = _load_gptq_cuda(ref, device)
        loader = "gptqmodel"
    elif not on_cuda and ref.is_local and method in ("gptq", "torchao") and _cpu_fast_ok(ref):
        from compress.quantize.cpu_kernels import load_cpu_fast

        model = load_cpu_fast(checkpoint_dir(ref))
        loader = "compress.quantize.cpu_kernels"
        backend = "aten int4pack (bf16)" if method == "gptq" else "aten int8pack (bf16)"
    else:
        model = load_causal_lm(ref, device=device, dtype=dtype)
        if method == "gptq":
            backend = "torch (gptqmodel, eager dequant)"
        elif method == "bitsandbytes":
            backend = "bitsandbytes int8"
        elif method == "torchao":
            backend = "torchao int8 weight-only"
    gc = model.generation_config
    want_compile = decoder == "compile"
    if want_compile:
        from transformers import CompileConfig

        gc.cache_implementation = "static"
        # reduce-overhead = CUDA graphs on the decode step; fullgraph off so kernels that break the graph
        # (custom quantized ops) still run, in pieces, rather than failing.
        gc.compile_config = CompileConfig(fullgraph=False, dynamic=False, mode="reduce-overhead" if on_cuda else "default")
        if not on_cuda:
            gc.compile_config._compile_all_devices = True
    else:
        gc.disable_compile = True
    path = DecodePath(
        device=device, dtype=str(next(model.parameters()).dtype).removeprefix("torch."), loader=loader,
        backend=backend, decoder=decoder, cache="dynamic" if decoder == "generate" else "static",
        compile=want_compile or decoder == "graph", compile_mode=gc.compile_config.mode if want_compile else None, kernels=linear_kernels(model),
    )
    return model, path


def _cpu_fast_ok(ref: ModelRef) -> bool:
    from compress.quantize.cpu_kernels import fast_cpu_reason

    return fast_cpu_reason(read_config(ref)) is None


def to_eager(model, path: DecodePath, reason: str) -> None:
    """Abandon the compiled path (after a failure in warm-up) and record why."""
    model.generation_config.disable_compile = True
    model.generation_config.compile_config = None
    path.compile, path.compile_mode, path.fallback = False, None, reason[:300]
    torch._dynamo.reset()


def mark_compiled(model, path: DecodePath) -> None:
    path.compiled = getattr(model, "_compiled_call", None) is not None and not model.generation_config.disable_compile


def linear_kernels(model) -> dict[str, int]:
    """Which class implements each Linear-like layer (names the int4/int8 kernel actually used)."""
    counts: Counter[str] = Counter()
    for module in model.modules():
        name = type(module).__name__
        if isinstance(module, torch.nn.Linear) or "Linear" in name or hasattr(module, "qweight"):
            counts[name] += 1
    return dict(counts)


def _gptq_backend(ref: ModelRef) -> str:
    """Marlin when every quantized layer's input width is a multiple of the group size, else Triton."""
    cfg = read_config(ref)
    group = (cfg.get("quantization_config") or {}).get("group_size", 128)
    widths = {cfg.get("hidden_size"), cfg.get("intermediate_size")}
    if group in (-1, None) or all(w and w % group == 0 for w in widths):
        return "marlin"
    return "triton"


def _load_gptq_cuda(ref: ModelRef, device: str):
    from gptqmodel import BACKEND, GPTQModel

    name = _gptq_backend(ref)
    backend = BACKEND.GPTQ_MARLIN if name == "marlin" else BACKEND.GPTQ_TRITON
    wrapped = GPTQModel.load(checkpoint_dir(ref), device=device, backend=backend)
    model = wrapped.model
    model.eval()
    return model, name


def size_on_disk(ref: ModelRef) -> int | None:
    if ref.kind == "gguf":
        return Path(ref.path).stat().st_size
    if not ref.is_local:
        return None
    return sum(f.stat().st_size for f in Path(ref.path).glob("*") if f.suffix in (".safetensors", ".bin"))


def default_device() -> str:
    return runtime.default_device()
