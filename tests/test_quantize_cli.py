"""`compress quantize` bad input: one line on stderr, exit code 2, nothing left behind."""

from __future__ import annotations

import pytest

from compress.cli import main


def run_cli(capsys, *argv):
    capsys.readouterr()  # drop what fixtures printed
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


@pytest.fixture
def no_layers_model(tmp_path, tokenizer):
    from compress.testing import build_tiny_llama

    return build_tiny_llama(tmp_path / "nolayers", tokenizer=tokenizer, layers=0)


def _bad_cases(tmp_path, tiny_model, no_layers_model):
    (tmp_path / "notes.txt").write_text("not a model")
    (tmp_path / "fake.gguf").write_bytes(b"GGUF but not really")
    (tmp_path / "small.txt").write_text("Only a few words of calibration text.")
    (tmp_path / "exists").mkdir()
    m = str(tiny_model)
    return {
        "missing path": ([str(tmp_path / "missing"), "--method", "rtn"], "does not exist"),
        "not a model": ([str(tmp_path / "notes.txt"), "--method", "rtn"], "is not a model"),
        "broken gguf": ([str(tmp_path / "fake.gguf"), "--method", "rtn"], "cannot load as a GGUF"),
        "int8 with 4 bits": ([m, "--method", "int8", "--bits", "4"], "8-bit only"),
        "gptq with 5 bits": ([m, "--method", "gptq", "--bits", "5"], "supports --bits"),
        "rtn with act-order": ([m, "--method", "rtn", "--act-order"], "act-order"),
        "too little calibration": ([m, "--method", "gptq", "--group-size", "32", "--calib", str(tmp_path / "small.txt")],
                                   "calibration data too small"),
        "missing calibration file": ([m, "--method", "gptq", "--calib", str(tmp_path / "nope.jsonl")], "not found"),
        "no linear layers": ([str(no_layers_model), "--method", "rtn"], "no Linear layers"),
    }


def test_bad_inputs_one_line_no_leftovers(tmp_path, capsys, tiny_model, no_layers_model):
    for name, (args, expected) in _bad_cases(tmp_path, tiny_model, no_layers_model).items():
        out = tmp_path / f"out-{name.replace(' ', '_')}"
        code, _, err = run_cli(capsys, "quantize", *args, "--output", str(out))
        assert code == 2, (name, err)
        assert expected in err, (name, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, (name, err)
        assert not out.exists(), name
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == [], leftovers


def test_existing_output_needs_overwrite(tmp_path, capsys, tiny_model):
    out = tmp_path / "art"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = run_cli(capsys, "quantize", str(tiny_model), "--method", "int8-wo", "--output", str(out))
    assert code == 2 and "already exists" in err and (out / "keep.txt").read_text() == "mine"
    with pytest.raises(SystemExit) as exc:  # typer exits 0 on success
        main(["quantize", str(tiny_model), "--method", "int8-wo", "--output", str(out), "--overwrite", "--no-quality"])
    assert exc.value.code in (0, None)
    assert (out / "compress.json").is_file() and not (out / "keep.txt").exists()
    assert "int8-wo" in capsys.readouterr().out
