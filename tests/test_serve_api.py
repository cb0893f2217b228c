"""The OpenAI API as evaluation tools use it, against a real `compress serve` on 127.0.0.1 (the
official `openai` client, httpx, raw sockets): logprobs and echo checked against the model's own
log-softmax, n and lists of prompts, penalties and logit bias checked against a reference decode,
unsupported fields, strict types, isolation of a bad request, body-size limit."""

from __future__ import annotations

import concurrent.futures as cf
import json
import time

import httpx
import openai
import pytest
import torch

from compress.manifest import build_manifest, write_manifest
from compress.models import load_causal_lm, load_tokenizer
from tests.serve_helpers import Server, metric

PROMPT = "The quick brown fox"
NO_STORE = {"cache-control": "no-store"}


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    s = Server(write_manifest(build_manifest([str(tiny_model)]), root / "tiers.yaml"), "--max-batch", "8",
               "--max-wait-ms", "20", log=root / "server.log")
    yield s
    assert s.stop() == 0


@pytest.fixture(scope="module")
def tier(server):
    return httpx.get(server.url + "/health").json()["tiers"][0]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def ref(tiny_model):
    """The same model in-process, fp32: log-softmax of its logits, and reference decodes."""
    model, tok = load_causal_lm(tiny_model, "cpu"), load_tokenizer(tiny_model)
    model.float().eval()

    class Ref:
        def __init__(self):
            self.tok = tok

        @torch.no_grad()
        def logprobs(self, ids: list[int]) -> torch.Tensor:
            """[len(ids), V]: row i = log p(next token | ids[:i+1])."""
            return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)

        @torch.no_grad()
        def greedy(self, ids: list[int], n: int, presence=0.0, frequency=0.0, bias=None, stop_at=None) -> list[int]:
            """Greedy with OpenAI's presence/frequency penalties over the generated tokens and a logit bias."""
            out: list[int] = []
            for _ in range(n):
                logits = model(torch.tensor([ids + out])).logits[0, -1].float()
                for t, b in (bias or {}).items():
                    logits[t] += b
                for t in set(out):
                    logits[t] -= presence + frequency * out.count(t)
                out.append(int(logits.argmax()))
            return out

        @torch.no_grad()
        def hf_generate(self, ids: list[int], n: int, **kw) -> list[int]:
            return model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, **kw)[0, len(ids):].tolist()

    return Ref()


def _post(server, path, body, headers=None, **kw):
    return httpx.post(server.url + path, json=body, headers={**NO_STORE, **(headers or {})}, timeout=120, **kw)


def _ids(text: str, tok) -> list[int]:
    return tok(text)["input_ids"]


def test_greedy_logprobs_equal_the_models_log_softmax(server, tier, ref):
    r = _post(server, "/v1/completions", {"model": tier, "prompt": PROMPT, "max_tokens": 6, "temperature": 0,
                                          "logprobs": 3, "ignore_eos": True}).json()
    lp = r["choices"][0]["logprobs"]
    ids = _ids(PROMPT, ref.tok)
    out = ref.greedy(ids, 6)
    table = ref.logprobs(ids + out)
    assert lp["tokens"] == [ref.tok.decode([t]) for t in out]
    for i, t in enumerate(out):
        row = table[len(ids) - 1 + i]
        assert lp["token_logprobs"][i] == pytest.approx(float(row[t]), abs=1e-4)
        top = row.topk(3)
        want = {}
        for v, k in zip(top.values.tolist(), top.indices.tolist()):
            want.setdefault(ref.tok.decode([k]), v)
        assert lp["top_logprobs"][i] == pytest.approx(want, abs=1e-4)
    assert lp["text_offset"][0] == 0 and "".join(lp["tokens"]) == r["choices"][0]["text"]


def test_echo_scores_the_prompt_with_max_tokens_0(server, tier, ref):
    r = _post(server, "/v1/completions", {"model": tier, "prompt": PROMPT, "max_tokens": 0, "echo": True,
                                          "logprobs": 1, "temperature": 0}).json()
    choice, ids = r["choices"][0], _ids(PROMPT, ref.tok)
    assert choice["text"] == PROMPT and r["usage"]["completion_tokens"] == 0
    lp = choice["logprobs"]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None and len(lp["tokens"]) == len(ids)
    table = ref.logprobs(ids)
    direct = [float(table[i - 1, ids[i]]) for i in range(1, len(ids))]
    assert lp["token_logprobs"][1:] == pytest.approx(direct, abs=1e-4)
    # lm-eval's request: token ids, echo, max_tokens 1: prompt logprobs then the generated token's.
    r = _post(server, "/v1/completions", {"model": tier, "prompt": [ids], "max_tokens": 1, "echo": True,
                                          "logprobs": 1, "temperature": 0}).json()
    assert r["choices"][0]["logprobs"]["token_logprobs"][1:len(ids)] == pytest.approx(direct, abs=1e-4)
    assert len(r["choices"][0]["logprobs"]["token_logprobs"]) == len(ids) + 1


def test_chat_logprobs_with_the_openai_client(client, tier):
    c = client.chat.completions.create(model=tier, messages=[{"role": "user", "content": "Hi"}], max_tokens=5,
                                       temperature=0, logprobs=True, top_logprobs=2, extra_headers=NO_STORE)
    content = c.choices[0].logprobs.content
    assert len(content) == c.usage.completion_tokens and "".join(t.token for t in content) == \
        c.choices[0].message.content
    for t in content:  # greedy: the chosen token is the most likely one
        assert len(t.top_logprobs) == 2 and t.top_logprobs[0].logprob == pytest.approx(t.logprob, abs=1e-6)
        assert t.logprob <= 0


def test_n_choices_and_lists_of_prompts(server, client, tier):
    r = client.completions.create(model=tier, prompt="Once upon", max_tokens=8, temperature=1.0, seed=7, n=3)
    assert sorted(c.index for c in r.choices) == [0, 1, 2] and len({c.text for c in r.choices}) > 1
    again = client.completions.create(model=tier, prompt="Once upon", max_tokens=8, temperature=1.0, seed=7, n=3)
    assert [c.text for c in again.choices] == [c.text for c in r.choices]  # seed, seed+1, seed+2
    prompts = ["Hello", "def foo"]
    alone = [_post(server, "/v1/completions", {"model": tier, "prompt": p, "max_tokens": 5, "temperature": 0})
             .json()["choices"][0]["text"] for p in prompts]
    both = _post(server, "/v1/completions", {"model": tier, "prompt": prompts, "max_tokens": 5, "temperature": 0,
                                             "n": 2}).json()
    assert [c["text"] for c in both["choices"]] == [alone[0], alone[0], alone[1], alone[1]]
    assert [c["index"] for c in both["choices"]] == [0, 1, 2, 3] and both["usage"]["completion_tokens"] == 20
    chunks = list(client.completions.create(model=tier, prompt=prompts, max_tokens=5, temperature=0, stream=True))
    streamed = ["".join(c.choices[0].text for c in chunks if c.choices and c.choices[0].index == i) for i in (0, 1)]
    assert streamed == alone


def test_penalties_and_logit_bias_change_the_answer_as_defined(server, tier, ref):
    ids = _ids(PROMPT, ref.tok)
    body = {"model": tier, "prompt": PROMPT, "max_tokens": 12, "temperature": 0, "ignore_eos": True}

    def ask(**extra) -> list[str]:
        r = _post(server, "/v1/completions", {**body, **extra, "logprobs": 0}).json()
        assert "error" not in r, r
        return r["choices"][0]["logprobs"]["tokens"]

    def text(tokens: list[int]) -> list[str]:
        return [ref.tok.decode([t]) for t in tokens]

    plain = ref.greedy(ids, 12)
    assert ask() == text(plain)
    for kw, ours in (({"presence_penalty": 1.5}, {"presence": 1.5}), ({"frequency_penalty": 0.8}, {"frequency": 0.8})):
        want = ref.greedy(ids, 12, **ours)
        assert want != plain and ask(**kw) == text(want), kw
    want = ref.hf_generate(ids, 12, repetition_penalty=1.5)
    assert want != plain and ask(repetition_penalty=1.5) == text(want)
    banned = {plain[0]: -100.0}
    want = ref.greedy(ids, 12, bias=banned)
    assert want[0] != plain[0] and ask(logit_bias={str(plain[0]): -100}) == text(want)
    assert ask(logit_bias={"7": 100}) == text([7] * 12)
    # stop_token_ids ends the answer at that token; min_tokens bans it until then.
    stop = plain[3]
    r = _post(server, "/v1/completions", {**body, "stop_token_ids": [stop]}).json()["choices"][0]
    first = plain.index(stop)
    assert r["finish_reason"] == "stop" and r["text"] == ref.tok.decode(plain[:first])
    r = _post(server, "/v1/completions", {**body, "stop_token_ids": [stop], "min_tokens": first + 2}).json()
    assert r["usage"]["completion_tokens"] > first


@pytest.mark.parametrize("extra, names", [
    ({"response_format": {"type": "json_object"}}, ["response_format"]),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, ["tools"]),
    ({"suffix": "end"}, ["suffix"]),
    ({"best_of": 3}, ["best_of"]),
    ({"functions": [{"name": "f"}], "min_p": 0.1}, ["functions", "min_p"]),
    ({"frobnicate": True}, ["frobnicate"]),
])
def test_unsupported_fields_get_a_400_naming_them(server, tier, extra, names):
    for path, body in (("/v1/completions", {"model": tier, "prompt": "x"}),
                       ("/v1/chat/completions", {"model": tier, "messages": [{"role": "user", "content": "x"}]})):
        r = _post(server, path, {**body, **extra})
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == ",".join(names) and all(n in err["message"] for n in names)
    harmless = _post(server, "/v1/completions", {"model": tier, "prompt": "x", "max_tokens": 1, "user": "u",
                                                 "metadata": {"a": "b"}, "best_of": 1, "response_format": {"type": "text"}})
    assert harmless.status_code == 200


@pytest.mark.parametrize("body, param", [
    ({"prompt": "x", "max_tokens": True}, "max_tokens"),
    ({"prompt": "x", "max_tokens": "4"}, "max_tokens"),
    ({"prompt": "x", "stream": "yes"}, "stream"),
    ({"prompt": "x", "temperature": "0"}, "temperature"),
    ({"prompt": "x", "seed": 2**64}, "seed"),
    ({"prompt": "x", "seed": -1}, "seed"),
    ({"prompt": "x", "logprobs": 21}, "logprobs"),
    ({"prompt": "x", "logit_bias": {"abc": 1}}, "logit_bias"),
    ({"prompt": "x", "logit_bias": {"99999": 1}}, "logit_bias"),
    ({"prompt": "x", "n": 0}, "n"),
    ({"prompt": [1, "a"]}, "prompt"),
    ({"prompt": "x", "stop_token_ids": [10**6]}, "stop_token_ids"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
])
def test_strict_types_and_ranges_name_the_field(server, tier, body, param):
    r = _post(server, "/v1/completions", {"model": tier, **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_chat_edge_cases(server, tier):
    msgs = [{"role": "user", "content": "x"}]
    r = _post(server, "/v1/chat/completions", {"model": tier, "messages": msgs, "max_completion_tokens": 0})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_completion_tokens"
    r = _post(server, "/v1/chat/completions", {"model": tier, "messages": msgs, "top_logprobs": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "top_logprobs"
    raw = b'{"model": "%s", "prompt": "x\\ud800y"}' % tier.encode()
    r = httpx.post(server.url + "/v1/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    r = httpx.post(server.url + "/v1/completions", content=b'{"model": "x", "prompt": ',
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] is None and "JSON" in r.json()["error"]["message"]


def test_a_bad_seed_fails_alone_while_others_complete(server, tier):
    good = {"model": tier, "prompt": "poison", "max_tokens": 4, "temperature": 0.8, "seed": 1}
    bad = {**good, "seed": 1180591620717411303424}
    with cf.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(_post, server, "/v1/completions", b) for b in (good, bad, good, good)]
        rs = [f.result() for f in futures]
    assert [r.status_code for r in rs] == [200, 400, 200, 200]
    assert rs[1].json()["error"]["param"] == "seed"
    assert all(r.json()["usage"]["completion_tokens"] == 4 for r in rs if r.status_code == 200)


def test_a_huge_body_gets_413_without_stalling_health(server, tier):
    blob = json.dumps({"model": tier, "prompt": "x", "junk": "y" * (20 << 20)}).encode()
    with cf.ThreadPoolExecutor(1) as pool:
        big = pool.submit(httpx.post, server.url + "/v1/completions", content=blob,
                          headers={"content-type": "application/json"}, timeout=60)
        t0 = time.monotonic()
        assert httpx.get(server.url + "/health", timeout=10).status_code == 200
        assert time.monotonic() - t0 < 2.0
        r = big.result()
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunks():  # no Content-Length: refused once the bytes read pass the limit
        yield b'{"model": "x", "prompt": "'
        for _ in range(10):
            yield b"y" * (1 << 20)

    r = httpx.post(server.url + "/v1/completions", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    # A prompt far beyond the context is refused before it is tokenized.
    r = _post(server, "/v1/completions", {"model": tier, "prompt": "word " * 400_000})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


def test_every_status_is_counted(server, tier):
    before = httpx.get(server.url + "/metrics").text
    assert _post(server, "/v1/completions", {"model": tier, "prompt": "x", "suffix": "y"}).status_code == 400
    assert _post(server, "/v1/completions", {"model": "nope", "prompt": "x"}).status_code == 404
    after = httpx.get(server.url + "/metrics").text
    assert metric(after, "compress_requests_total", status="400") == metric(before, "compress_requests_total",
                                                                            status="400") + 1
    assert metric(after, "compress_requests_total", status="404", tier="none") == \
        metric(before, "compress_requests_total", status="404", tier="none") + 1


def test_logprob_answers_are_cached_only_when_greedy(server, tier):
    body = {"model": tier, "prompt": "Cache my logprobs", "max_tokens": 4, "logprobs": 2}
    first = httpx.post(server.url + "/v1/completions", json={**body, "temperature": 0})
    again = httpx.post(server.url + "/v1/completions", json={**body, "temperature": 0})
    assert (first.headers["x-compress-cache"], again.headers["x-compress-cache"]) == ("miss", "hit")
    assert again.json()["choices"] == first.json()["choices"]
    other = httpx.post(server.url + "/v1/completions", json={**body, "temperature": 0, "logprobs": 1})
    assert other.headers["x-compress-cache"] == "miss"  # the cache key holds the new fields
    sampled = httpx.post(server.url + "/v1/completions", json={**body, "temperature": 0.5, "seed": 3})
    assert sampled.headers.get("x-compress-cache") is None
