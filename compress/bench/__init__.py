"""Speed and memory benchmarks: `compress bench`.

- `fastpath.py`: how each checkpoint kind is loaded and decoded fastest (static cache, CUDA graphs, kernels);
- `measure.py`: timing one model's prefill/decode per batch size, in-process;
- `worker.py`: one model per subprocess, so peak memory is that model's own;
- `run.py`: `bench(MODELS, BenchConfig)` → the bench JSON (schema_version 1), ratios to the first model.
"""

from compress.bench.run import BenchConfig, bench, load_bench, make_bench_config, parse_batch_sizes

__all__ = ["BenchConfig", "bench", "load_bench", "make_bench_config", "parse_batch_sizes"]
