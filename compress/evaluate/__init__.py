"""Quality measurement: perplexity / bits per byte, and lm-evaluation-harness tasks."""

from compress.evaluate.perplexity import PerplexityResult, perplexity

__all__ = ["PerplexityResult", "perplexity"]
