"""The `mix` data spec: a multi-domain calibration text built only from what ships with our dependencies.

Calibrating GPTQ on one domain (the built-in Python docs) fits each layer's Hessian to that domain; on
SmolLM2 it then lost to RTN on WikiText-2. `mix` spans four domains, all offline, of similar size so no
domain dominates:

- `docs`: the `builtin` spec as it is (the Python documentation topics inside every CPython, 465k characters),
  whole documents, so a document `split_heldout` holds out of `builtin` is held out of `mix` too;
- `code`: Python standard-library sources (`*.py` of the stdlib directory, sorted by name, the first
  `DOC_CHARS` characters of each);
- `knowledge`: lm-eval's MMLU chain-of-thought few-shot prompts (57 subjects, from law to virology:
  questions with worked English answers; `lm_eval/tasks/mmlu/flan_cot_fewshot/_cot_prompts.json`);
- `readmes`: the long descriptions (PyPI READMEs, Markdown prose) of the packages named in `README_PACKAGES`,
  our direct dependencies, from their installed metadata (the first `DOC_CHARS` characters of each).

Deterministic for a given environment: fixed sources, fixed order, fixed caps; the versions pinned in
constraints.txt fix the `readmes` and `knowledge` text. The other three domains are capped at `DOMAIN_CHARS`
characters and cut into pieces of at most `PIECE_CHARS` characters at line ends (so `split_heldout`, which
splits by document, holds out ~10% of each); the four domains' documents are interleaved round robin.
"""

from __future__ import annotations

import json
from pathlib import Path

from compress.errors import CompressError

MIX = "mix"
DOMAIN_CHARS = 450_000  # code, knowledge, readmes: about the size of docs (465k), so no domain dominates
DOC_CHARS = 20_000  # per source file or README: many files rather than a few long ones (_pydecimal.py is 230k)
PIECE_CHARS = 8_000  # documents are cut into pieces (at line ends) so the held-out split is fine-grained
README_PACKAGES = ("torch", "transformers", "accelerate", "safetensors", "gptqmodel", "optimum", "bitsandbytes",
                   "torchao", "datasets", "lm_eval", "typer", "rich", "pydantic", "fastapi", "uvicorn", "httpx",
                   "matplotlib", "scipy", "auto-round", "numpy", "tokenizers", "huggingface_hub")


def stdlib_sources(max_chars: int = 1_000_000, offset: int = 0) -> list[str]:
    """Python standard-library sources of this interpreter (real code that ships offline), one text per
    file, sorted by path, test packages left out; files are taken from the `offset`-th on until `max_chars`."""
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if p.is_file())
    texts, total = [], 0
    for p in files[offset:]:
        text = p.read_text(encoding="utf-8", errors="replace")
        texts.append(text)
        total += len(text)
        if total >= max_chars:
            break
    return texts


def mmlu_cot_prompts() -> list[str]:
    """lm-eval's MMLU chain-of-thought few-shot prompts, one text per subject (sorted)."""
    import importlib.util

    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise CompressError("the 'mix' calibration data needs lm_eval (a compress dependency): pip install lm_eval")
    path = Path(list(spec.submodule_search_locations)[0]) / "tasks" / "mmlu" / "flan_cot_fewshot" / "_cot_prompts.json"
    if not path.is_file():
        raise CompressError(f"the 'mix' calibration data needs {path}, which this lm_eval version lacks")
    prompts = json.loads(path.read_text(encoding="utf-8"))
    return [prompts[k].strip() for k in sorted(prompts)]


def package_readmes(names: tuple[str, ...] = README_PACKAGES) -> list[str]:
    """Installed packages' long descriptions (README text), in the order of `names`; missing ones skipped."""
    import importlib.metadata as md

    texts = []
    for name in names:
        try:
            meta = md.metadata(name)
        except md.PackageNotFoundError:
            continue
        text = meta.get_payload() or meta.get("Description") or ""
        if text.strip():
            texts.append(text.strip())
    return texts


def domains() -> dict[str, list[str]]:
    """Each domain's documents (see the module docstring)."""
    from compress.data import builtin_texts

    raw = {"code": [t[:DOC_CHARS] for t in stdlib_sources(10 * DOMAIN_CHARS)], "knowledge": mmlu_cot_prompts(),
           "readmes": [t[:DOC_CHARS] for t in package_readmes()]}
    cut = {name: [p for d in _cap(docs, DOMAIN_CHARS) for p in _pieces(d, PIECE_CHARS)] for name, docs in raw.items()}
    return {"docs": builtin_texts()} | cut


def mix_texts() -> list[str]:
    """The four domains' documents, interleaved round robin (see the module docstring)."""
    parts = list(domains().values())
    return [p[i] for i in range(max(map(len, parts))) for p in parts if i < len(p)]


def _cap(docs: list[str], chars: int) -> list[str]:
    out, n = [], 0
    for d in docs:
        if n >= chars:
            break
        out.append(d[: chars - n])
        n += len(out[-1])
    return out


def _pieces(text: str, size: int) -> list[str]:
    """`text` cut at line ends into pieces of at most `size` characters (a longer line is cut where it must)."""
    out = []
    while len(text) > size:
        cut = text.rfind("\n", 0, size) + 1 or size
        out.append(text[:cut])
        text = text[cut:]
    return out + [text] if text.strip() else out
