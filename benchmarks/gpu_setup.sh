#!/usr/bin/env bash
# Install the carried wheels (.whl/, see ../shared/GPU.md step 1) into /tmp/site on the GPU machine and pre-build
# gptqmodel's Marlin kernel (~3 min, once per warm machine). Then: source benchmarks/gpu_env.sh
set -euo pipefail
if [ ! -f /tmp/site/.done ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target /tmp/site .whl/pypcre-*.tar.gz
  touch /tmp/site/.done
fi
source "$(dirname "$0")/gpu_env.sh"
python3 -c "from gptqmodel import extension; extension.load(name='marlin_bf16')" 2>&1 | tail -3
