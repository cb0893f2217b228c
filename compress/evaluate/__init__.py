"""Quality measurement: perplexity / bits per byte, and lm-evaluation-harness tasks.

- `perplexity.py`: sliding-window perplexity and bits per byte of one loaded model on texts;
- `harness.py`: lm-eval tasks (registered names and local YAML task folders) on a loaded model;
- `results.py`: the `eval.json` schema, recovery ratios against a baseline;
- `run.py`: `evaluate(MODEL, EvalConfig)`, which ties them together.
"""

from compress.evaluate.perplexity import PerplexityResult, perplexity

__all__ = ["PerplexityResult", "perplexity"]
