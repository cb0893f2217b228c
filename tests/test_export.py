"""`compress export --format gguf`: round trips through transformers and llama.cpp, tokenizer ids, refusals,
bad input. llama.cpp tests skip where llama-cpp-python is not installed (`make llamacpp` builds it; not part
of `make setup`)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compress.cli import main
from compress.errors import CompressError
from compress.export import export_gguf
from compress.export.blocks import dequantize_q4_0, q4_0_blocks
from compress.models import load_tokenizer
from compress.quantize import make_config, quantize
from compress.quantize.verify import dequantized_reference, logits, probe_ids, relative_error

# llama.cpp computes Q4_0/Q4_1/Q8_0 dot products against activations it rounds to 8 bits on the fly (F32/F16
# ones in its own order), so its logits differ from the exact dequantized model by that rounding; transformers
# dequantizes the GGUF back to float, which is exact. Measured here (2026-11-29, llama-cpp-python 0.3.36, the
# mixed sample below, ~140 tokens), SmolLM2 Q4_0: max |Δlogit| 5.3% of the logit scale, mean KL 0.005 nats,
# top-1 equal at 92% of positions and at every position whose top-1 leads the top-2 by more than 0.5% of the
# scale (all flips sat on near-ties); SmolLM2's F16 export: 0.19%, KL 5e-6. Bounds with headroom:
LLAMA_CPP_MAX_ERR = {"tiny": 0.05, "smol": 0.10}  # max |Δlogit| / max |reference logit|
LLAMA_CPP_MEAN_KL = 0.02  # nats per position, KL(reference ‖ llama.cpp)
CLEAR_MARGIN = 0.02  # where the reference's top-1 leads by this fraction of the scale, llama.cpp's top-1 must agree
MIXED_TEXT = [
    "The quick brown fox jumps over the lazy dog, twice: 1234567 times.",
    "def add(a, b):\n    return a + b  # sum\n\tprint(f'{a!r}')",
    "Ça coûte 12,50 € — naïve café, 東京タワー, Привет мир, emoji 🤖✨",
    "<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n",
]
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Écris `print(42)` en Python?"}]


def _llama_cpp():
    return pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed (`make llamacpp` builds it; see README, Export)")


def _gguf_transformers_logits(path: Path, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return logits(model.eval(), ids)


def _llama_cpp_run(path: Path):
    llama_cpp = _llama_cpp()
    # A llama-cpp-python built with -march=native on a CPU that reports AMX dies with SIGILL where the
    # sandbox refuses AMX state (seen here: `tilezero` in libggml-cpu). Probe in a child process first, so
    # a bad build skips these tests instead of killing the test run.
    probe = ("import llama_cpp; m = llama_cpp.Llama(model_path=%r, n_ctx=64, verbose=False, n_threads=1); "
             "m.eval([1, 2, 3])" % str(path))
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"llama.cpp cannot run here (exit {r.returncode}; SIGILL = 132/-4: rebuild llama-cpp-python "
                    "with AMX off: `make llamacpp`; see README, Export)")
    return llama_cpp.Llama(model_path=str(path), n_ctx=512, logits_all=True, verbose=False, n_threads=2, seed=0)


def _llama_cpp_logits(llm, ids: torch.Tensor) -> torch.Tensor:
    llm.reset()
    llm.eval(ids[0].tolist())
    return torch.from_numpy(llm.scores[: ids.shape[1]].copy()).unsqueeze(0)


def _mixed_sample(hf_tok) -> list[str]:
    """Prose, code, non-ASCII, and the chat template's rendering with its special tokens."""
    return MIXED_TEXT + [hf_tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)]


def _check_tokenizer(llm, hf_tok) -> None:
    specials = [t for t in ("<|im_start|>", "<|im_end|>") if t in hf_tok.get_vocab()]
    assert specials, "the sample must exercise the chat template's special tokens"
    for text in _mixed_sample(hf_tok):
        ours = llm.tokenize(text.encode(), add_bos=False, special=True)
        assert ours == hf_tok(text, add_special_tokens=False).input_ids, text
    for special in specials:  # one id each, the HF one, not split into text pieces
        assert llm.tokenize(special.encode(), add_bos=False, special=True) == [hf_tok.convert_tokens_to_ids(special)]


def _assert_close(ours: torch.Tensor, reference: torch.Tensor, max_err: float) -> None:
    """llama.cpp's logits against the artifact's: bounded error, small KL, same top-1 wherever it is clear."""
    assert relative_error(ours, reference) < max_err
    logp, logq = reference.log_softmax(-1), ours.log_softmax(-1)
    assert (logp.exp() * (logp - logq)).sum(-1).mean() < LLAMA_CPP_MEAN_KL
    top2 = reference.topk(2, -1).values
    clear = (top2[..., 0] - top2[..., 1]) > CLEAR_MARGIN * reference.abs().max()
    assert clear.float().mean() > 0.4  # the check below must cover a good share of positions to mean anything
    assert torch.equal(ours.argmax(-1)[clear], reference.argmax(-1)[clear])


def _sample_ids(hf_tok) -> torch.Tensor:
    return hf_tok("\n".join(_mixed_sample(hf_tok)), return_tensors="pt", add_special_tokens=False).input_ids


@pytest.fixture(scope="module")
def tiny_rtn(tmp_path_factory, tiny_model):
    out = tmp_path_factory.mktemp("export")
    arts = {}
    for name, sym in (("sym", True), ("asym", False)):
        cfg = make_config(method="rtn", bits=4, group_size=32, sym=sym)
        arts[name] = Path(quantize(str(tiny_model), cfg, out / name, device="cpu", measure_quality=False).output)
    return arts


def test_q4_0_blocks_encode_ggml_layout():
    q = torch.randint(0, 16, (3, 64))
    s = torch.rand(3, 2).half()
    blocks = q4_0_blocks(q, s, 32)
    assert blocks.shape == (3, 2 * 18)
    assert blocks[0, 2] == (q[0, 0] | (q[0, 16] << 4))  # qs[0] = q[0] | q[16] << 4
    expect = s.float().repeat_interleave(32, 1) * (q.float() - 8)
    assert torch.equal(dequantize_q4_0(blocks, 64), expect)


@pytest.mark.parametrize("kind", ["sym", "asym"])
def test_tiny_int4_round_trip_in_transformers(tiny_rtn, kind, tmp_path):
    out = tmp_path / f"{kind}.gguf"
    result = export_gguf(tiny_rtn[kind], out)
    assert result.file_type == ("Q4_0" if kind == "sym" else "Q4_1")
    assert "pre = gpt-2" in result.tokenizer
    ids = probe_ids(load_tokenizer(tiny_rtn[kind]))
    reference = logits(dequantized_reference(tiny_rtn[kind]), ids)
    err = relative_error(_gguf_transformers_logits(out, ids), reference)
    if kind == "sym":
        assert err == 0.0 and result.max_abs_weight_change == 0.0  # Q4_0 is the GPTQ grid, bit for bit
    else:
        assert err < 1e-3 and result.notes  # only m = −d·z is rounded to fp16, and the export says so


def test_tiny_dense_and_int8_round_trip(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "dense.gguf"
    assert export_gguf(tiny_model, out).file_type == "F32"
    ids = probe_ids(load_tokenizer(tiny_model))
    plain = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32).eval()
    assert relative_error(_gguf_transformers_logits(out, ids), logits(plain, ids)) < 1e-6
    art = quantize(str(tiny_model), make_config(method="int8-wo"), tmp_path / "int8", device="cpu",
                   measure_quality=False).output
    result = export_gguf(art, tmp_path / "int8.gguf")
    assert result.file_type == "Q8_0" and result.tensor_types["Q8_0"] == 14
    in_artifact = AutoModelForCausalLM.from_pretrained(art, dtype=torch.bfloat16).eval()  # bf16 activations
    assert relative_error(_gguf_transformers_logits(tmp_path / "int8.gguf", ids), logits(in_artifact, ids)) < 0.02


def test_dense_type_q8_0_requantizes_only_the_dense_matrices_and_says_so(tiny_rtn, tmp_path):
    """--dense-type q8_0: a GPTQ tier's embedding (tied output head) becomes Q8_0 like llama.cpp's own Q4_0 has it;
    the int4 layers stay bit for bit; the change is reported and bounded by Q8_0's half step plus the fp16 rounding
    of the block scale (up to 127 steps × 2^-11)."""
    from gguf import GGUFReader

    out = tmp_path / "q8emb.gguf"
    result = export_gguf(tiny_rtn["sym"], out, dense_type="q8_0")
    types = {t.name: t.tensor_type.name for t in GGUFReader(str(out)).tensors}
    assert types["token_embd.weight"] == "Q8_0" and result.file_type == "Q4_0"
    assert {v for k, v in types.items() if k.startswith("blk.")} == {"Q4_0", "F32"}  # int4 layers and norms
    embed = dequantized_reference(tiny_rtn["sym"]).model.embed_tokens.weight
    step = embed.abs().max().item() / 127
    assert 0 < result.max_abs_weight_change <= step * (0.5 + 127 / 2048)
    assert any("re-quantized to Q8_0" in n for n in result.notes)
    ids = probe_ids(load_tokenizer(tiny_rtn["sym"]))
    reference = logits(dequantized_reference(tiny_rtn["sym"]), ids)
    assert 0 < relative_error(_gguf_transformers_logits(out, ids), reference) < 0.01
    with pytest.raises(CompressError, match="dense type"):
        export_gguf(tiny_rtn["sym"], tmp_path / "bad.gguf", dense_type="q4_k")


@pytest.mark.parametrize("kind", ["sym", "asym", "dense"])
def test_tiny_export_runs_in_llama_cpp(tiny_rtn, tiny_model, kind, tmp_path):
    """Q4_0 (RTN sym), Q4_1 (asym) and F32 (the dense model) exports: llama.cpp loads them, tokenizes like the HF
    tokenizer and computes the artifact's logits within the stated bounds."""
    from transformers import AutoModelForCausalLM

    art = tiny_model if kind == "dense" else tiny_rtn[kind]
    out = tmp_path / f"{kind}.gguf"
    export_gguf(art, out)
    llm = _llama_cpp_run(out)
    tok = load_tokenizer(art)
    _check_tokenizer(llm, tok)
    ids = _sample_ids(tok)
    model = (AutoModelForCausalLM.from_pretrained(str(art), dtype=torch.float32).eval() if kind == "dense"
             else dequantized_reference(art))
    _assert_close(_llama_cpp_logits(llm, ids), logits(model, ids), LLAMA_CPP_MAX_ERR["tiny"])


def _edited(src: Path, dst: Path, **qc) -> Path:
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    for key, value in qc.items():
        if key == "model_type":
            config[key] = value
        else:
            config["quantization_config"][key] = value
    (dst / "config.json").write_text(json.dumps(config))
    return dst


@pytest.mark.parametrize("edit,message", [
    ({"desc_act": True}, "act-order GPTQ is not exported"),
    ({"bits": 3}, "GPTQ 3-bit is not exported"),
    ({"group_size": 16}, "group size 16 is not a multiple of 32"),
    ({"checkpoint_format": "gptq_v2"}, "format 'gptq_v2' is not exported"),
    ({"quant_method": "bitsandbytes"}, "bitsandbytes checkpoints are not exported"),
    ({"model_type": "gpt2"}, "supports Llama-family models"),
])
def test_unsupported_layouts_refused(tiny_rtn, tmp_path, edit, message):
    bad = _edited(tiny_rtn["sym"], tmp_path / "bad", **edit)
    with pytest.raises(CompressError, match=message):
        export_gguf(bad, tmp_path / "out.gguf")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".out.gguf*"))  # nothing half-written


def _cli(capsys, *argv):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    captured = capsys.readouterr()
    return exc.value.code, captured.err


def test_cli_bad_input_one_line(tiny_rtn, tmp_path, capsys):
    cases = [
        ([str(tmp_path / "missing"), "--output", str(tmp_path / "a.gguf")], "is not an artifact directory"),
        ([str(tiny_rtn["sym"]), "--output", str(tmp_path / "a.bin")], "must end in .gguf"),
        ([str(tiny_rtn["sym"]), "--output", str(tmp_path / "a.gguf"), "--format", "onnx"], "onnx"),
    ]
    (tmp_path / "exists.gguf").write_text("x")
    cases.append(([str(tiny_rtn["sym"]), "--output", str(tmp_path / "exists.gguf")], "already exists"))
    for argv, message in cases:
        code, err = _cli(capsys, "export", *argv)
        assert code == 2 and message in err, (argv, err)
        assert "Traceback" not in err
        if "--format" not in argv:
            assert len(err.strip().splitlines()) == 1, err


def test_cli_writes_the_file(tiny_rtn, tmp_path, capsys):
    code, _ = _cli(capsys, "export", str(tiny_rtn["sym"]), "--output", str(tmp_path / "m.gguf"))
    assert code in (0, None) and (tmp_path / "m.gguf").stat().st_size > 0


@pytest.fixture(scope="module")
def smol_gptq32(tmp_path_factory, smollm2_gguf):
    """SmolLM2 GPTQ int4 g32 on a small calibration set: the export's fidelity, not GPTQ's quality, is tested."""
    out = tmp_path_factory.mktemp("smol-export")
    cfg = make_config(method="gptq", bits=4, group_size=32, sym=True, calib_samples=8, calib_seqlen=128)  # sym: Q4_0
    return Path(quantize(str(smollm2_gguf), cfg, out / "gptq32", device="cpu", measure_quality=False).output)


@pytest.mark.slow
def test_smollm2_export_round_trip(smol_gptq32, tmp_path):
    """SmolLM2 GPTQ g32 → Q4_0: exact in transformers; in llama.cpp, the HF token ids and close logits."""
    out = tmp_path / "smol-q4_0.gguf"
    result = export_gguf(smol_gptq32, out)
    assert result.file_type == "Q4_0" and result.max_abs_weight_change == 0.0
    assert "copied from the source GGUF" in result.tokenizer
    tok = load_tokenizer(smol_gptq32)
    ids = _sample_ids(tok)
    reference = logits(dequantized_reference(smol_gptq32), ids)
    assert relative_error(_gguf_transformers_logits(out, ids), reference) < 1e-4  # bf16 embeddings → F16: exact
    llm = _llama_cpp_run(out)
    _check_tokenizer(llm, tok)
    _assert_close(_llama_cpp_logits(llm, ids), reference, LLAMA_CPP_MAX_ERR["smol"])


def _gguf_special_ids(path: Path) -> dict[str, int]:
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields
    return {k: int(fields[f"tokenizer.ggml.{k}_token_id"].contents()) for k in ("bos", "eos")
            if f"tokenizer.ggml.{k}_token_id" in fields}


def test_export_eos_is_the_one_generation_stops_on(tiny_model, tmp_path):
    """A tokenizer whose eos disagrees with generation_config.json (what generation stops on): the GGUF gets
    generation_config's, which llama.cpp then stops on; where the two agree, nothing changes."""
    tok = load_tokenizer(tiny_model)
    model = Path(shutil.copytree(tiny_model, tmp_path / "m"))
    other = next(i for i in range(5) if i != tok.eos_token_id)
    for named, want in ((other, other), ([tok.eos_token_id, other], tok.eos_token_id)):
        (model / "generation_config.json").write_text(json.dumps({"eos_token_id": named}))
        out = export_gguf(model, tmp_path / f"m-{want}.gguf").output
        assert _gguf_special_ids(Path(out))["eos"] == want


@pytest.mark.slow
def test_smollm2_conversion_keeps_the_sources_eos(smollm2_gguf, tmp_path):
    """The cached HF conversion of the SmolLM2 GGUF said eos = 1 (`<|im_start|>`, transformers' GGUF tokenizer),
    its generation_config 2 (`<|im_end|>`), so its F16 export wrote eos = 1 and llama.cpp never stopped at the
    end of a turn. Now the conversion takes the GGUF's own special ids and the export keeps them."""
    from compress.models import checkpoint_dir, resolve

    converted = Path(checkpoint_dir(resolve(str(smollm2_gguf))))
    tok = load_tokenizer(converted)
    generation = json.loads((converted / "generation_config.json").read_text())
    assert (tok.bos_token_id, tok.eos_token_id, generation["eos_token_id"]) == (1, 2, 2)
    assert tok.convert_ids_to_tokens(2) == "<|im_end|>"
    assert _gguf_special_ids(smollm2_gguf) == {"bos": 1, "eos": 2}
    out = export_gguf(converted, tmp_path / "smol-f16.gguf")
    assert out.file_type == "F16" and _gguf_special_ids(Path(out.output)) == {"bos": 1, "eos": 2}
