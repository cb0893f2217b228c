"""Text sources and token blocks for calibration, distillation and evaluation.

A data spec is one of:
- `builtin` (the default): the Python documentation topics that ship inside every CPython
  (`pydoc_data.topics`, ~465k characters of real English prose and code), so nothing needs a network;
- `mix`: four offline domains (Python docs, stdlib code, MMLU worked answers, package READMEs), each
  capped at 450k characters (`compress.data_mix`): the multi-domain calibration text;
- a local file: `.txt` (one document), `.jsonl` (one JSON object per line with a `text` field,
  or a JSON string per line), optionally `.xz`/`.gz` compressed; or a directory of such files;
- a Hugging Face dataset, `name[:config[:split]]` (default split `train`), for users with the hub.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import random
from pathlib import Path

import torch

from compress.errors import CompressError

BUILTIN = "builtin"
_TEXT_SUFFIXES = {".txt", ".jsonl", ".md", ".rst"}


def builtin_texts() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[k].strip() for k in sorted(topics) if topics[k].strip()]


def load_texts(spec: str | None = None, text_field: str = "text") -> list[str]:
    """Documents from a data spec (see module docstring); never empty."""
    spec = spec or BUILTIN
    if spec == BUILTIN:
        return builtin_texts()
    if spec == "mix":
        from compress.data_mix import mix_texts

        return mix_texts()
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file() and _base_suffix(f) in _TEXT_SUFFIXES)
        if not files:
            raise CompressError(f"data directory {spec} has no .txt/.jsonl files")
        texts = [t for f in files for t in _read_file(f, text_field)]
    elif path.is_file():
        texts = _read_file(path, text_field)
    elif spec.startswith((".", "/", "~")) or _base_suffix(path) in _TEXT_SUFFIXES:
        raise CompressError(f"data file not found: {spec}")
    else:
        texts = _load_dataset(spec, text_field)
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise CompressError(f"no text in {spec}")
    return texts


def split_heldout(texts: list[str], fraction: float = 0.1) -> tuple[list[str], list[str]]:
    """Deterministic document-level split (by content hash), so held-out text never trains or calibrates."""
    train, held = [], []
    for t in texts:
        bucket = int(hashlib.sha256(t.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        (held if bucket < fraction else train).append(t)
    if not held or not train:  # tiny inputs: fall back to a tail split
        cut = max(1, int(len(texts) * (1 - fraction)))
        train, held = texts[:cut], texts[cut:] or texts[-1:]
    return train, held


def token_blocks(tokenizer, texts: list[str], n_blocks: int, seqlen: int, seed: int = 0,
                 source: str = "data") -> torch.Tensor:
    """`n_blocks` random non-overlapping windows of `seqlen` tokens from the concatenated texts. [n, seqlen]"""
    ids = tokenize_stream(tokenizer, texts, max_tokens=None)
    available = len(ids) // seqlen
    if available < n_blocks:
        raise CompressError(
            f"{source} too small: {len(ids)} tokens make {available} blocks of {seqlen}, "
            f"{n_blocks} needed (add data or lower the sample count/length)"
        )
    starts = sorted(random.Random(seed).sample(range(available), n_blocks))
    return torch.stack([ids[s * seqlen:(s + 1) * seqlen] for s in starts])


def tokenize_stream(tokenizer, texts: list[str], max_tokens: int | None = None) -> torch.Tensor:
    """Documents joined by EOS into one token stream. [T]"""
    sep = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    out: list[int] = []
    for t in texts:
        out.extend(tokenizer(t, add_special_tokens=False)["input_ids"])
        out.extend(sep)
        if max_tokens is not None and len(out) >= max_tokens:
            return torch.tensor(out[:max_tokens], dtype=torch.long)
    return torch.tensor(out, dtype=torch.long)


def _base_suffix(path: Path) -> str:
    suffixes = path.suffixes
    if suffixes and suffixes[-1] in {".xz", ".gz"}:
        suffixes = suffixes[:-1]
    return suffixes[-1].lower() if suffixes else ""


def _open_text(path: Path):
    if path.suffix == ".xz":
        return lzma.open(path, "rt", encoding="utf-8", errors="replace")
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def _read_file(path: Path, text_field: str) -> list[str]:
    kind = _base_suffix(path)
    try:
        with _open_text(path) as f:
            if kind != ".jsonl":
                return [f.read()]
            texts = []
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                if isinstance(row, str):
                    texts.append(row)
                elif isinstance(row, dict) and isinstance(row.get(text_field), str):
                    texts.append(row[text_field])
                else:
                    raise CompressError(f"{path}:{lineno}: expected a string or an object with a '{text_field}' string")
            return texts
    except json.JSONDecodeError as e:
        raise CompressError(f"{path}: invalid JSON line ({e.msg})") from e
    except (OSError, EOFError, lzma.LZMAError) as e:
        raise CompressError(f"cannot read {path}: {e}") from e


def _load_dataset(spec: str, text_field: str) -> list[str]:
    name, _, rest = spec.partition(":")
    config, _, split = rest.partition(":")
    try:
        import datasets

        ds = datasets.load_dataset(name, config or None, split=split or "train")
    except Exception as e:  # noqa: BLE001 - offline, unknown name, bad config: all "cannot load"
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise CompressError(f"cannot load dataset '{spec}' (not a local file; hub offline?): {msg}") from e
    if text_field not in ds.column_names:
        raise CompressError(f"dataset '{spec}' has no '{text_field}' column (columns: {ds.column_names})")
    return [t for t in ds[text_field] if isinstance(t, str)]
