"""`compress quantize` bad input: one line on stderr, exit code 2, nothing left behind.

Every option that does not apply to the method is refused up front (before a model loads, except
the budget floor, which needs the model's shapes), so compress.json never records an ignored option."""

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
        "rtn with act-order": ([m, "--method", "rtn", "--act-order"], "--act-order does not apply to --method rtn"),
        "rtn with damp": ([m, "--method", "rtn", "--damp", "0.05"], "--damp does not apply to --method rtn"),
        "rtn with calib": ([m, "--method", "rtn", "--calib", "builtin"], "--calib does not apply"),
        "rtn with calib samples": ([m, "--method", "rtn", "--calib-samples", "8"], "--calib-samples does not apply"),
        "rtn with seed": ([m, "--method", "rtn", "--seed", "1"], "--seed does not apply"),
        "rtn with mse": ([m, "--method", "rtn", "--mse", "2"], "--mse does not apply to --method rtn: gptqmodel 7.6's RTN"),
        "autoround with mse": ([m, "--method", "autoround", "--mse", "2"], "--mse does not apply to --method autoround"),
        "gptq with negative mse": ([m, "--method", "gptq", "--mse", "-1"], "mse: Input should be greater than or equal to 0"),
        "rtn with budget": ([m, "--method", "rtn", "--bits-budget", "4.5"], "--bits-budget does not apply"),
        "int8 with group size": ([m, "--method", "int8", "--group-size", "64"], "--group-size does not apply to --method int8"),
        "int8-wo with asym": ([m, "--method", "int8-wo", "--asym"], "--sym/--asym does not apply to --method int8-wo"),
        "int8-wo with sym": ([m, "--method", "int8-wo", "--sym"], "--sym/--asym does not apply"),
        "int8 with act-order": ([m, "--method", "int8", "--act-order"], "--act-order does not apply"),
        "int8 with damp": ([m, "--method", "int8", "--damp", "0.1"], "--damp does not apply"),
        "int8-wo with calib": ([m, "--method", "int8-wo", "--calib", "builtin"], "--calib does not apply"),
        "int8-wo with seed": ([m, "--method", "int8-wo", "--seed", "3"], "--seed does not apply"),
        "budget below 4 bits": ([m, "--method", "gptq", "--bits-budget", "3.5"], "--bits-budget must be above 4"),
        "budget of exactly 4": ([m, "--method", "gptq", "--bits-budget", "4"], "--bits-budget must be above 4"),
        "budget above 16": ([m, "--method", "gptq", "--bits-budget", "16.5"], "at most 16"),
        "budget with bits": ([m, "--method", "gptq", "--bits", "4", "--bits-budget", "4.5"], "not both"),
        "budget under the g128 floor": ([m, "--method", "gptq", "--bits-budget", "4.1", "--calib-samples", "4",
                                         "--calib-seqlen", "64"], "below uniform 4-bit"),
        "too little calibration": ([m, "--method", "gptq", "--group-size", "32", "--calib", str(tmp_path / "small.txt")],
                                   "calibration data too small"),
        "missing calibration file": ([m, "--method", "gptq", "--calib", str(tmp_path / "nope.jsonl")], "not found"),
        "no linear layers": ([str(no_layers_model), "--method", "rtn"], "no Linear layers"),
        "autoround with damp": ([m, "--method", "autoround", "--damp", "0.05"], "--damp does not apply to --method autoround"),
        "autoround with act-order": ([m, "--method", "autoround", "--act-order"], "--act-order does not apply to --method autoround"),
        "autoround with budget": ([m, "--method", "autoround", "--bits-budget", "4.5"], "--bits-budget does not apply to --method autoround"),
        "autoround with 5 bits": ([m, "--method", "autoround", "--bits", "5"], "supports --bits"),
        "autoround 8-bit asym": ([m, "--method", "autoround", "--bits", "8", "--asym"], "refuses 8-bit --asym"),
        "autoround per-channel asym": ([m, "--method", "autoround", "--group-size", "-1", "--asym"],
                                       "refuses --group-size -1 with --asym"),
        "autoround with 0 iters": ([m, "--method", "autoround", "--iters", "0"], "iters: Input should be greater than or equal to 1"),
        "autoround with negative lr": ([m, "--method", "autoround", "--lr", "-0.1"], "lr: Input should be greater than 0"),
        "autoround too little calibration": ([m, "--method", "autoround", "--calib", str(tmp_path / "small.txt")],
                                             "calibration data too small"),
        "gptq with iters": ([m, "--method", "gptq", "--iters", "10"], "--iters does not apply to --method gptq"),
        "rtn with lr": ([m, "--method", "rtn", "--lr", "0.01"], "--lr does not apply to --method rtn"),
        "int8-wo with iters": ([m, "--method", "int8-wo", "--iters", "10"], "--iters does not apply to --method int8-wo"),
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
