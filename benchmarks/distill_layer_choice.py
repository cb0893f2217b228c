"""Which 15 of SmolLM2-135M-Instruct's 30 layers to keep: perplexity of the untrained (truncated) student.

    python benchmarks/distill_layer_choice.py     # ~1 h on one loaded CPU core; writes /tmp/exp/layers.json

Three 512-token texts: WikiText-2 *valid* (first 20k characters), Austen and the Python docs (10k characters from
../shared/data/corpus). Compared: evenly spaced layers (compress's old default), keeping the first a and last 15-a
layers (dropping one contiguous block), ShortGPT's block influence (drop the layers whose output is most similar to
their input), and greedy removal by measured loss (drop the layer whose removal raises the summed log-perplexity
least, repeatedly) — the criterion `compress.distill.student.select_layers_greedy` implements (there on training text).
"""
import sys, time, lzma, json, math
sys.path.insert(0, "/work/main")
import torch
torch.set_num_threads(1)
from compress.models import resolve, load_causal_lm, load_tokenizer
from compress.testing import smollm2_gguf
ref = resolve(str(smollm2_gguf()))
model = load_causal_lm(ref, device="cpu", dtype=torch.float32).eval()
tok = load_tokenizer(ref)
wiki = open("/work/shared/data/wikitext-2/wiki.valid.tokens").read()[:20000]
with lzma.open("/work/shared/data/corpus/austen5.txt.xz", "rt") as f: austen = f.read()[200000:210000]
with lzma.open("/work/shared/data/corpus/python_docs.txt.xz", "rt") as f: pyd = f.read()[500000:510000]
seqs = [tok(t, return_tensors="pt").input_ids[:, :512] for t in (wiki, austen, pyd)]
layers = list(model.model.layers)
N = len(layers)
@torch.no_grad()
def ppl(keep):
    model.model.layers = torch.nn.ModuleList([layers[i] for i in keep])
    model.config.num_hidden_layers = len(keep)
    out = []
    for s in seqs:
        out.append(model(s, labels=s, use_cache=False).loss.item())
    return [round(math.exp(x), 1) for x in out]
t=time.time()
res = {"full": ppl(list(range(N)))}
print("full", res["full"], time.time()-t, flush=True)
K = 15
even = sorted({int(i * (N - 1) / (K - 1) + 0.5) for i in range(K)})
res["even"] = ppl(even); print("even", even, res["even"], flush=True)
for a in range(1, K):
    keep = list(range(a)) + list(range(N - (K - a), N))
    r = ppl(keep); res[f"block a={a}"] = r; print("block", a, r, flush=True)
# block influence
model.model.layers = torch.nn.ModuleList(layers); model.config.num_hidden_layers = N
with torch.no_grad():
    hs = model(seqs[0], output_hidden_states=True, use_cache=False).hidden_states
bi = [1 - torch.nn.functional.cosine_similarity(hs[i], hs[i+1], dim=-1).mean().item() for i in range(N)]
print("BI", [round(b,3) for b in bi])
keep = sorted(sorted(range(N), key=lambda i: -bi[i])[:K])
res["shortgpt"] = ppl(keep); print("shortgpt", keep, res["shortgpt"], flush=True)
# greedy removal by mean log ppl
keep = list(range(N))
while len(keep) > K:
    best = None
    for i in keep:
        cand = [j for j in keep if j != i]
        r = ppl(cand); score = sum(math.log(x) for x in r)
        if best is None or score < best[0]: best = (score, i, r)
    keep.remove(best[1]); print("greedy drop", best[1], len(keep), best[2], flush=True)
res["greedy"] = {"keep": keep, "ppl": ppl(keep)}
print("greedy", keep, res["greedy"], time.time()-t)
import os; os.makedirs("/tmp/exp", exist_ok=True); json.dump(res, open("/tmp/exp/layers.json", "w"), indent=1)
