"""One model's benchmark, in its own process so peak memory (RSS on CPU) is that model's alone.

    python -m compress.bench.worker REQUEST.json RESULT.json

REQUEST holds {"model": spec, "config": BenchConfig fields}; RESULT gets the model's entry, or
{"error": "one line"} (exit code 2) for a CompressError.
"""

from __future__ import annotations

import json
import sys

from compress.errors import CompressError


def main(argv: list[str]) -> int:
    request_path, result_path = argv
    request = json.loads(open(request_path).read())
    from compress.bench.run import BenchConfig, measure_model

    try:
        entry = measure_model(request["model"], BenchConfig(**request["config"]), progress=request.get("progress", False))
        code = 0
    except CompressError as e:
        entry, code = {"error": str(e)}, 2
    with open(result_path, "w") as f:
        json.dump(entry, f)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
