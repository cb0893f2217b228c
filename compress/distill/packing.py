"""Training data for distillation: texts -> train/held-out token blocks -> a resumable batch order.

Documents are cut into pieces of about `_PIECE_CHARS` characters at paragraph breaks first, so a
corpus given as one big file still gets a real held-out split (compress.data splits by document
hash). Pieces are tokenized in batches, joined by EOS, and packed into fixed-length blocks with no
padding. The batch order is a pure function of (seed, global micro-step), so a resumed run only
needs the step counter to continue on exactly the same data, and every process of a distributed
run takes its own slice of each global batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from compress.data import load_texts, split_heldout
from compress.errors import CompressError

_PIECE_CHARS = 20_000


@dataclass
class DistillData:
    train: torch.Tensor  # [N, S] token blocks
    heldout: torch.Tensor  # [M, S]
    train_tokens: int
    heldout_tokens: int


def split_pieces(texts: list[str], size: int = _PIECE_CHARS) -> list[str]:
    out: list[str] = []
    for text in texts:
        start = 0
        while start < len(text):
            end = min(start + size, len(text))
            if end < len(text):  # prefer a paragraph, then a line break, to cut at
                cut = text.rfind("\n\n", start + size // 2, end)
                cut = cut if cut > 0 else text.rfind("\n", start + size // 2, end)
                end = cut + 1 if cut > 0 else end
            piece = text[start:end]
            if piece.strip():
                out.append(piece)
            start = end
    return out


def tokenize(tokenizer, texts: list[str], batch: int = 256) -> torch.Tensor:
    """Texts joined by EOS into one stream. [T]"""
    sep = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids: list[int] = []
    for i in range(0, len(texts), batch):
        for row in tokenizer(texts[i:i + batch], add_special_tokens=False)["input_ids"]:
            ids.extend(row)
            ids.extend(sep)
    return torch.tensor(ids, dtype=torch.long)


def blocks(ids: torch.Tensor, seq_len: int, limit: int | None = None) -> torch.Tensor:
    n = len(ids) // seq_len
    if limit is not None:
        n = min(n, max(1, limit // seq_len))
    return ids[: n * seq_len].view(n, seq_len)


def load_data(specs: list[str], tokenizer, seq_len: int, heldout_fraction: float, eval_tokens: int) -> DistillData:
    texts = [t for spec in specs for t in load_texts(spec)]
    train_texts, held_texts = split_heldout(split_pieces(texts), heldout_fraction)
    # A source given twice (to weight it up) trains twice, but is validated once: its copies hash alike,
    # so they all land on the same side of the split.
    held_texts = list(dict.fromkeys(held_texts))
    train_ids, held_ids = tokenize(tokenizer, train_texts), tokenize(tokenizer, held_texts)
    train, held = blocks(train_ids, seq_len), blocks(held_ids, seq_len, eval_tokens)
    if len(train) == 0 or len(held) == 0:
        raise CompressError(
            f"data too small: {len(train_ids)} training and {len(held_ids)} held-out tokens do not fill one "
            f"block of --seq-len {seq_len} each (add data or lower --seq-len)"
        )
    return DistillData(train, held, len(train_ids), len(held_ids))


def batch_indices(step: int, n_blocks: int, batch_size: int, world_size: int, rank: int, seed: int) -> torch.Tensor:
    """Block indices for this process at global micro-step `step`: epoch-wise shuffles of all blocks. [B]"""
    per_step = batch_size * world_size
    first = step * per_step + rank * batch_size
    out = []
    cached_epoch, perm = -1, None
    for k in range(first, first + batch_size):
        epoch = k // n_blocks
        if epoch != cached_epoch:
            g = torch.Generator().manual_seed(seed * 100_003 + epoch)
            perm, cached_epoch = torch.randperm(n_blocks, generator=g), epoch
        out.append(perm[k % n_blocks])
    return torch.stack(out)
