"""Batch-1 (M=1) time of one linear layer: bf16 cuBLAS vs gptqmodel's Marlin (GPTQ int4) vs torchao's tinygemm int4.

    python benchmarks/gpu_int4_kernels.py --out $OUT/int4_kernels.json

For each (out, in) shape of a 1B and an 8B Llama (TinyLlama-1.1B: 2048/5632; Llama-3-8B: 4096/14336), a
one-layer Llama with random bf16 weights is packed as GPTQ int4 g128 (round-to-nearest, benchmarks/gpu_bench.py's
`pack_gptq_rtn`) and loaded through `GPTQModel.load(backend=GPTQ_MARLIN)`; the same bf16 weights are also
quantized in memory with torchao `Int4WeightOnlyConfig(group_size=128, int4_packing_format="tile_packed_to_4d")`
(the tinygemm kernel torchao benchmarks on H100). Every call is replayed from a CUDA graph (10 per replay), so
the figure is GPU time per call; bytes/time is the effective weight bandwidth.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from gpu_bench import pack_gptq_rtn  # noqa: E402
from gpu_profile_step import graph_time  # noqa: E402

CONFIGS = {
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_attention_heads=32, num_key_value_heads=4),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8),
}
LINEARS = ("q_proj", "gate_proj", "down_proj")


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--work", default="/tmp/int4_kernels")
    args = ap.parse_args()
    from gptqmodel import BACKEND, GPTQModel
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from compress.testing import train_tokenizer

    rows = []
    for name, shape in CONFIGS.items():
        src, dst = Path(args.work) / f"{name}-bf16", Path(args.work) / f"{name}-gptq"
        torch.manual_seed(0)
        with torch.device("cuda"):
            model = LlamaForCausalLM(LlamaConfig(num_hidden_layers=1, vocab_size=1024, **shape)).to(torch.bfloat16)
        model.generation_config = GenerationConfig(bos_token_id=0, eos_token_id=0, pad_token_id=0)
        model.save_pretrained(src)
        train_tokenizer(256).save_pretrained(src)
        pack_gptq_rtn(src, dst)
        marlin = GPTQModel.load(str(dst), device="cuda:0", backend=BACKEND.GPTQ_MARLIN).model
        for lin in LINEARS:
            dense = getattr(model.model.layers[0].self_attn if lin == "q_proj" else model.model.layers[0].mlp, lin)
            quant = getattr(marlin.model.layers[0].self_attn if lin == "q_proj" else marlin.model.layers[0].mlp, lin)
            x = torch.randn(1, 1, dense.in_features, device="cuda", dtype=torch.bfloat16)
            row = {"model": name, "linear": lin, "out": dense.out_features, "in": dense.in_features}
            row["bf16_us"] = graph_time(lambda: dense(x)) * 1e6
            row["marlin_us"] = graph_time(lambda: quant(x)) * 1e6
            try:
                from torchao.quantization import Int4WeightOnlyConfig, quantize_

                tiny = copy.deepcopy(dense)
                quantize_(tiny, Int4WeightOnlyConfig(group_size=128, int4_packing_format="tile_packed_to_4d"))
                row["tinygemm_us"] = graph_time(lambda: tiny(x)) * 1e6
            except Exception as e:  # noqa: BLE001 - record why, keep the other columns
                row["tinygemm_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            mb = dense.out_features * dense.in_features * 2 / 1e6
            row["bf16_GBps"] = mb * 1e3 / row["bf16_us"]
            row["marlin_speedup"] = row["bf16_us"] / row["marlin_us"]
            if "tinygemm_us" in row:
                row["tinygemm_speedup"] = row["bf16_us"] / row["tinygemm_us"]
            rows.append(row)
            print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
        del model, marlin
        torch.cuda.empty_cache()
    if args.out:
        Path(args.out).write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                              "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
