"""Quantized artifacts stay close to their source (perplexity), and GPTQ and AutoRound stay closer to it than RTN on
the same grid in and out of domain (KL), on a tiny model trained on real text (a random model's weights say nothing
about quality).

The model: a 2-layer Llama (hidden 128) trained for 250 steps on Python standard-library sources plus
the built-in Python docs (training split), fixed seeds. GPTQ calibrates on other stdlib files (code);
it is scored on held-out Python docs prose (out of domain) and on stdlib files it never saw (in domain).
AutoRound (`--method autoround`) gets the same calibration blocks, with 20 tuning steps per block (its default
is 200: enough here to show it adopted and sound, not its best figure; benchmarks/quality_table.py has that).
"""

from __future__ import annotations

import pytest

from compress.data import builtin_texts, split_heldout, tokenize_stream
from compress.evaluate.perplexity import kl_to_source, perplexity
from compress.models import load_causal_lm
from compress.quantize import make_config, quantize
from compress.testing import stdlib_sources, train_tiny_llama, train_tokenizer

CONTEXT, TOKENS = 128, 16384  # scored tokens per text; windows as in `compress eval`
# Stated bounds on held-out perplexity relative to the source (measured on this model: see the asserts'
# messages). int8 is near-lossless; int4 g32 on a 0.5M-parameter model costs a few percent.
MAX_PPL_RATIO = {"int8": 1.02, "int8-wo": 1.02, "gptq": 1.10, "gptq-asym": 1.10, "autoround": 1.10, "rtn": 1.15,
                 "rtn-asym": 1.15}
CALIBRATED = {"gptq": "rtn", "gptq-asym": "rtn-asym", "autoround": "rtn"}  # each must match or beat RTN on its
# own grid, on every text


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    code = stdlib_sources(600_000)
    docs_train, docs_held = split_heldout(builtin_texts())
    tok = train_tokenizer(512, code + docs_train)
    model = train_tiny_llama(root / "model", code + docs_train, tok, steps=250)
    calib_dir = root / "calib-code"
    calib_dir.mkdir()
    for i, text in enumerate(stdlib_sources(300_000, offset=len(code))):  # code the model never trained on
        (calib_dir / f"{i:03d}.txt").write_text(text)
    unseen_code = stdlib_sources(200_000, offset=len(code) + len(list(calib_dir.iterdir())))
    return dict(model=model, tok=tok, calib=str(calib_dir), texts={"docs (out of domain)": docs_held,
                                                                   "code (in domain)": unseen_code})


@pytest.fixture(scope="module")
def scored(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("quantized-trained")
    configs = {
        "source": None,
        "rtn": dict(method="rtn", group_size=32),  # symmetric (signed-peak), as gptq's and autoround's default
        "rtn-asym": dict(method="rtn", group_size=32, sym=False),  # asymmetric, as gptq --asym
        "gptq": dict(method="gptq", group_size=32, calib=trained["calib"], calib_samples=64, calib_seqlen=CONTEXT),
        "gptq-asym": dict(method="gptq", group_size=32, sym=False, calib=trained["calib"], calib_samples=64,
                          calib_seqlen=CONTEXT),
        "autoround": dict(method="autoround", group_size=32, calib=trained["calib"], calib_samples=64,
                          calib_seqlen=CONTEXT, iters=20),
        "int8": dict(method="int8"),
        "int8-wo": dict(method="int8-wo"),
    }
    ppl, kl, source = {}, {}, None
    ids = {k: tokenize_stream(trained["tok"], texts, TOKENS) for k, texts in trained["texts"].items()}
    for name, opts in configs.items():
        path = trained["model"] if opts is None else quantize(
            str(trained["model"]), make_config(**opts), out / name, device="cpu", measure_quality=False).output
        model = load_causal_lm(str(path), device="cpu")
        source = model if source is None else source
        ppl[name] = {k: perplexity(model, trained["tok"], texts, context_len=CONTEXT, max_tokens=TOKENS).perplexity
                     for k, texts in trained["texts"].items()}
        kl[name] = {k: kl_to_source(source, model, t, CONTEXT) for k, t in ids.items()}
    return dict(ppl=ppl, kl=kl)


@pytest.mark.slow
def test_trained_model_learned_the_text(scored):
    """The fixture is a real language model, not noise: far below the uniform 512-token perplexity."""
    assert all(p < 60 for p in scored["ppl"]["source"].values()), scored["ppl"]["source"]


@pytest.mark.slow
@pytest.mark.parametrize("method", list(CALIBRATED))
def test_calibrated_not_worse_than_rtn_in_and_out_of_domain(scored, method):
    """Closer to the source than RTN on the same grid, by KL, on every text. On this model int4 g32 moves
    perplexity by under 1% and either way (RTN on the signed-peak grid scored 0.1% below the source out of domain,
    GPTQ 0.2% above): perplexity cannot rank them here, the next-token distributions' distance can."""
    rtn = CALIBRATED[method]  # the same grid (sym or asym) rounded to nearest
    for text in scored["kl"]["source"]:
        assert scored["kl"][method][text] <= scored["kl"][rtn][text], (method, rtn, text, scored)


@pytest.mark.slow
@pytest.mark.parametrize("method", list(MAX_PPL_RATIO))
def test_each_method_stays_close_to_its_source(scored, method):
    for text, source in scored["ppl"]["source"].items():
        ratio = scored["ppl"][method][text] / source
        assert 1 / MAX_PPL_RATIO[method] <= ratio <= MAX_PPL_RATIO[method], (method, text, ratio, scored)
